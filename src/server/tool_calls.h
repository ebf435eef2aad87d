// What a chat model wrote, split into reasoning, content and tool calls, for each family's format. Pure functions of
// strings (no HTTP, no engine): tested alone in tests/server/test_tool_calls.cpp.
//
// Formats (the model's side; chosen from the chat template's text by detect_output_format):
//   Hermes/Qwen   <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>   (one block per call)
//   Mistral       [TOOL_CALLS] [{"name": "f", "arguments": {...}, "id": "..."}, ...]     (v0.3, list form)
//                 [TOOL_CALLS]f[ARGS]{...}  or  [TOOL_CALLS]f[CALL_ID]id[ARGS]{...}      (newer, one per call)
//   Llama 3       {"name": "f", "parameters": {...}}  as the whole answer (maybe after <|python_tag|>); calls
//                 may be separated by ';'
//   DeepSeek-V3   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{...}\n```<｜tool▁call▁end｜>
//                 ...<｜tool▁calls▁end｜>   (V3.1: <｜tool▁call▁begin｜>f<｜tool▁sep｜>{...}<｜tool▁call▁end｜>)
//   Reasoning     <think>...</think> before the answer (DeepSeek-R1, Qwen3); the prompt may open <think> already,
//                 so that the output starts inside it.
// A tool call's arguments are the JSON text of the model's value, as written. Output that does not parse as the
// format says (a broken JSON value, a call never closed) is returned as content, never an error.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace moep::server {

enum class ToolCallFormat { None, Hermes, Mistral, Llama3, DeepSeekV3 };

const char* format_name(ToolCallFormat f);

struct OutputFormat {
  ToolCallFormat tools = ToolCallFormat::None;  // None: no tool calls are looked for
  bool think = false;           // <think>...</think> is reasoning
  bool starts_in_think = false; // the prompt opened <think>: the output begins inside it
  size_t max_tool_calls = 64;   // parallel_tool_calls false: 1 (later calls are dropped)
};

// The format a template's text implies: its tool-call markers (<tool_call>, [TOOL_CALLS], <｜tool▁calls▁begin｜>, or
// Llama 3's "parameters" JSON with <|start_header_id|>), and <think> or </think> for reasoning. `rendered_prompt` decides
// starts_in_think: it ends with an open <think> (whitespace after it allowed).
OutputFormat detect_output_format(std::string_view template_text, std::string_view rendered_prompt);

struct ParsedToolCall {
  std::string id;         // as the model wrote it (Mistral), else empty: the server assigns one
  std::string name;
  std::string arguments;  // JSON text (the value as written; "{}" when the model gave none)
  bool name_done = false; // partial parses: the name is complete (arguments may still grow)
  bool done = false;      // the call is complete
};

struct ParsedOutput {
  std::string reasoning;
  std::string content;
  std::vector<ParsedToolCall> tool_calls;
};

// Parses a whole output (`partial` false), or the output so far (`partial` true). A partial parse keeps back
// whatever may still change: text that may begin a marker, trailing whitespace, a call's name until it is whole;
// so each field of a later parse of a longer text extends the field of an earlier one (what OutputStream relies on).
ParsedOutput parse_output(const OutputFormat& format, std::string_view text, bool partial);

// A piece of a streamed answer, as OpenAI's chunk deltas carry it.
struct ToolCallDelta {
  size_t index = 0;
  std::string id, name;   // set in the first delta of a call only
  std::string arguments;  // the next piece of the arguments' JSON text
};
struct OutputDelta {
  std::string reasoning, content;
  std::vector<ToolCallDelta> tool_calls;
  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
};

// Splits a streamed answer into deltas: push() each text piece as it comes, finish() at the end. A tool call is
// sent as its name (with an id from `make_id` when the model gave none) once the name is whole, then its
// arguments as they grow. Text that may start a marker is held back until it is decided.
class OutputStream {
 public:
  OutputStream(OutputFormat format, std::function<std::string()> make_id);
  OutputDelta push(std::string_view piece);
  OutputDelta finish();
  // The tool calls sent so far (ids as sent), complete after finish().
  const std::vector<ParsedToolCall>& tool_calls() const { return sent_calls_; }

 private:
  OutputDelta diff(const ParsedOutput& now);

  OutputFormat format_;
  std::function<std::string()> make_id_;
  std::string text_;
  size_t reasoning_sent_ = 0, content_sent_ = 0;
  std::vector<ParsedToolCall> sent_calls_;  // name/id as sent; arguments: the text sent so far
};

}  // namespace moep::server
