// The OpenAI wire format of /v1/chat/completions and /v1/completions: request bodies parsed and checked into what
// the scheduler needs, and the JSON of responses, stream chunks and errors. Pure functions of JSON and strings: no
// HTTP, no engine, so that they can be tested alone (tests/unit/test_server_api.cpp).
//
// Every refusal is an ApiError carrying the HTTP status and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}; the message names the field and what was expected.
#pragma once

#include <cstdint>
#include <optional>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "runtime/sampler.h"
#include "server/tool_calls.h"
#include "text/json_grammar.h"

namespace moep::server {

// A request refused: HTTP status + OpenAI's error fields (param and code may be empty: null in the JSON).
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string param = "",
           std::string code = "")
      : std::runtime_error(message), status_(status), type_(std::move(type)), param_(std::move(param)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string type_, param_, code_;
};

// {"error": {"message": ..., "type": ..., "param": ... | null, "code": ... | null}}
nlohmann::ordered_json error_json(const ApiError& e);
// error_json(e) as text, ready to send.
std::string error_body(const ApiError& e);

enum class Endpoint { Chat, Completion };

// tool_choice: "auto" (the model decides), "none" (no tools: they are not shown to the model and its output is not
// parsed for calls), "required" (at least one call), or {"type": "function", "function": {"name": ...}} (that one).
enum class ToolChoice { Auto, None, Required, Function };

// What the server allows and what it assumes when a request says nothing.
struct RequestLimits {
  std::string model_id;            // the one model served; "model" must name it (or be absent)
  int64_t max_context = 4096;      // prompt + max_tokens must fit (the engine's context per sequence)
  int32_t max_tokens_cap = 4096;   // largest max_tokens a request may ask for
  int32_t default_max_tokens = 256;  // when a request gives none (then cut to the context left)
  size_t max_stop_strings = 16;
  size_t max_stop_length = 256;    // bytes per stop string
  int64_t vocab_size = 0;          // logit_bias token ids must be below it (0: not checked here)
  size_t max_logit_bias = 300;     // entries of logit_bias
  SamplingParams defaults;         // temperature, top_k, top_p, min_p, repetition_penalty when absent
};

struct ApiRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;                  // as the server names it (the request's, or model_id when absent)
  nlohmann::ordered_json messages;    // Chat: [{"role", "content" (string or null), ...}], content parts joined
  std::string prompt;                 // Completion
  SamplingParams params;              // max_tokens: as asked; decided by fit_to_context when absent
  bool max_tokens_given = false;
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage: a last chunk with usage and no choices
  // -1: no logprobs. Else how many alternatives each token lists (0..20): Chat's top_logprobs (with
  // "logprobs": true), Completions' "logprobs": N.
  int32_t logprobs = -1;
  // Chat: the request's tools, checked ([{"type": "function", "function": {"name", "description"?,
  // "parameters"?, "strict"?}}]); null when none were given.
  nlohmann::ordered_json tools;
  ToolChoice tool_choice = ToolChoice::Auto;
  std::string tool_choice_name;       // ToolChoice::Function: the tool named (one of `tools`)
  bool parallel_tool_calls = true;    // false: at most one call is returned
  // chat_template_kwargs (as vLLM takes it): more variables for the template, e.g. {"enable_thinking": false}.
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();
  // response_format json_object / json_schema: the grammar the output is held to (null: free text).
  std::shared_ptr<const JsonGrammar> grammar;
};

// What a request demands of the model's tool calls. The seam for constrained decoding: a grammar that forces a
// call (any of `allowed`, or the one named) plugs in where server.cpp builds the GenerationRequest from it. Until
// then `required` is only asked of the model through the template, and its output is parsed like any other.
struct ToolCallConstraint {
  bool required = false;              // tool_choice "required" or a named function
  std::vector<std::string> allowed;   // the names the call may have (all tools, or the one named)
  bool parallel = true;               // parallel_tool_calls
  const nlohmann::ordered_json* tools = nullptr;  // the request's tools (their parameters' JSON schemas)
};
ToolCallConstraint tool_call_constraint(const ApiRequest& req);

// A tool call forced by tool_choice "required" or a named function: the model's turn starts with `prefix` (the
// family's call marker, put at the end of the prompt), then writes JSON held to `grammar` (the call, or Mistral's
// list of calls, with the tools' parameter schemas), and `suffix` closes the call once the JSON is whole. The
// response's text is prefix + output + suffix, parsed like any other. A tool whose parameters use a schema keyword
// the grammar does not support gets any object as its arguments (`relaxed` names it).
struct ForcedToolCall {
  std::string prefix, suffix;
  std::shared_ptr<const JsonGrammar> grammar;
  std::vector<std::string> relaxed;
};
// Nothing when no call is required, or the format has no forced form (DeepSeek-V3, a template without tools):
// then the model is only asked, through its template.
std::optional<ForcedToolCall> forced_tool_call(ToolCallFormat format, const ToolCallConstraint& c);

// The variables besides messages that a chat request gives its template: chat_template_kwargs, then "tools" when
// the request has tools and tool_choice is not "none".
nlohmann::ordered_json template_extra(const ApiRequest& req);

// Parses and checks a request body. Throws ApiError: 400 for malformed JSON, a field of the wrong type or out of
// range (param names the field, e.g. "messages[1].content"), or an unsupported option (n > 1, presence/frequency
// penalties, ...); 404 (code model_not_found) for another model. response_format {"type": "json_object"} or
// {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} compiles the grammar (text/json_grammar.h);
// a malformed or unsupported schema is a 400 whose param is the schema's field
// ("response_format.json_schema.schema.properties.age.minimum").
// Unknown fields are ignored.
ApiRequest parse_request(Endpoint endpoint, std::string_view body, const RequestLimits& limits);

// Once the prompt is tokenized: sets params.max_tokens when the request gave none (default_max_tokens, cut to the
// context left) and checks prompt + max_tokens against the context. Throws ApiError 400 with code
// context_length_exceeded when it does not fit.
void fit_to_context(ApiRequest& req, int64_t prompt_tokens, const RequestLimits& limits);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// The text of one token as logprobs show it (the server decodes the one id with its tokenizer).
using TokenTextFn = std::function<std::string(int32_t)>;
// Chat's choices[].logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
// "bytes"}, ... n_top]}, ...], "refusal": null}. "bytes" are the UTF-8 bytes of the token's text.
nlohmann::ordered_json chat_logprobs_json(std::span<const TokenLogprobs> tokens, int32_t n_top,
                                          const TokenTextFn& token_text);
// Completions' legacy choices[].logprobs: {"tokens", "token_logprobs", "top_logprobs": [{text: logprob, ...}],
// "text_offset"}. text_offset counts code points of the completion before each token, from *offset (which it
// advances, so that stream chunks continue where the last one ended).
nlohmann::ordered_json completion_logprobs_json(std::span<const TokenLogprobs> tokens, int32_t n_top,
                                                const TokenTextFn& token_text, int64_t* offset);

// A chat answer split by tool_calls.h: {"role": "assistant", "content": text, or null when there are tool calls and
// no text, "reasoning_content" (when there is some), "tool_calls": [{"id", "type": "function", "function": {"name",
// "arguments"}}] (when there are some)}.
nlohmann::ordered_json chat_message_json(const ParsedOutput& out);
// "chat.completion" with that message; finish_reason "tool_calls" replaces "stop" when there are calls.
nlohmann::ordered_json chat_completion_json(const std::string& id, int64_t created, const std::string& model,
                                            const ParsedOutput& out, const std::string& finish_reason,
                                            const Usage& usage, const nlohmann::ordered_json& logprobs = nullptr);
// A "chat.completion.chunk" with a delta: "role" (first_chunk), "content", "reasoning_content", "tool_calls":
// [{"index", "id", "type", "function": {"name", "arguments"}}] (id, type and name in a call's first delta only).
nlohmann::ordered_json chat_delta_chunk_json(const std::string& id, int64_t created, const std::string& model,
                                             const OutputDelta& delta, const std::string& finish_reason,
                                             bool first_chunk, const nlohmann::ordered_json& logprobs = nullptr);

// One whole (non-streamed) answer: "chat.completion" or "text_completion". `logprobs`: the choice's logprobs
// (null when not asked for).
nlohmann::ordered_json completion_json(Endpoint endpoint, const std::string& id, int64_t created,
                                       const std::string& model, const std::string& text,
                                       const std::string& finish_reason, const Usage& usage,
                                       const nlohmann::ordered_json& logprobs = nullptr);
// One stream chunk with text (Chat: {"delta": {"content": text}}; first_chunk adds "role": "assistant").
// finish_reason empty: null.
nlohmann::ordered_json chunk_json(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                                  const std::string& text, const std::string& finish_reason, bool first_chunk,
                                  const nlohmann::ordered_json& logprobs = nullptr);
// The chunk after the last one when stream_options.include_usage: "choices": [] and "usage".
nlohmann::ordered_json usage_chunk_json(Endpoint endpoint, const std::string& id, int64_t created,
                                        const std::string& model, const Usage& usage);
// GET /v1/models and GET /v1/models/{id}.
nlohmann::ordered_json model_json(const std::string& model_id, int64_t created, int64_t max_context);
nlohmann::ordered_json models_json(const std::string& model_id, int64_t created, int64_t max_context);

// "data: <json>\n\n" (a server-sent event); invalid UTF-8 is replaced, never thrown on.
std::string sse_event(const nlohmann::ordered_json& j);
// JSON text for a response body; invalid UTF-8 is replaced, never thrown on.
std::string dump_json(const nlohmann::ordered_json& j);

// Constant-time comparison of an "Authorization" header value with "Bearer <key>" (scheme case-insensitive).
bool bearer_matches(std::string_view authorization, std::string_view key);

}  // namespace moep::server
