// Chat templates of Hugging Face checkpoints: load them from a model directory and render a conversation into the
// prompt text exactly as transformers' tokenizer.apply_chat_template(messages, tokenize=False, ...) does.
//
// Where the template comes from (as transformers reads a checkpoint):
//   1. chat_template.jinja in the model directory (newer checkpoints); extra named templates in
//      additional_chat_templates/<name>.jinja;
//   2. else "chat_template" in tokenizer_config.json: a string, or a list of {"name", "template"};
//   3. else "chat_template" in chat_template.json (older processor checkpoints).
// A GGUF file has it in its metadata: tokenizer.chat_template, and named ones as tokenizer.chat_template.<name>
// listed in tokenizer.chat_templates; bos_token, eos_token, unk_token and pad_token are the texts of the tokens
// that tokenizer.ggml.*_token_id names (as llama.cpp passes them).
// Special tokens (bos_token, eos_token, unk_token, pad_token, ...) come from tokenizer_config.json; each may be a
// string or an AddedToken object {"content": ...}; null or absent means the template sees it as undefined.
//
// What the template sees when rendering: messages, tools (null unless `extra` has it), documents (null),
// add_generation_prompt, the special tokens, then every key of `extra` (e.g. enable_thinking), which wins.
// With several named templates, "tool_use" is chosen when `extra` has non-null "tools" and the checkpoint has
// one, else "default" (transformers' rule); a list without "default" is an error.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/jinja.h"

namespace moep {

class GgufFile;

struct ChatTemplate {
  // Named templates, parsed; a single template is named "default".
  std::vector<std::pair<std::string, std::shared_ptr<const jinja::Template>>> templates;
  // Special tokens by name ("bos_token", "eos_token", ...), in tokenizer_config.json order.
  std::vector<std::pair<std::string, std::string>> special_tokens;
  std::string source;  // where it was loaded from, for messages

  // Reads the template from `model_dir`. Throws moep::Error naming the directory when there is none, when
  // tokenizer_config.json is not valid JSON, or (with line and column) when a template has a syntax error.
  // `model_dir` may also be a .gguf file (any part of a split model).
  static ChatTemplate load(const std::string& model_dir);
  // The template of `template_file` (a Jinja file, e.g. from --chat-template) with the special tokens of
  // `model_dir` (as load() finds them; none when the model has no tokenizer_config.json). The model need not have a
  // template of its own. Throws moep::Error naming the file when it cannot be read or has a syntax error.
  static ChatTemplate load_override(const std::string& model_dir, const std::string& template_file);
  // load_override() when `template_file` is not empty, else load().
  static ChatTemplate load(const std::string& model_dir, const std::string& template_file);
  // Reads the template from a GGUF file's metadata. Throws moep::Error naming the file when it has none.
  static ChatTemplate from_gguf(const GgufFile& file);
  // One template from its text, with optional bos/eos tokens (empty string = not set).
  static ChatTemplate from_string(const std::string& jinja_source, const std::string& bos_token = "",
                                  const std::string& eos_token = "", const std::string& name = "chat template");

  // The template render_chat would use for these extra variables.
  const jinja::Template& select(const nlohmann::ordered_json& extra) const;
  const std::string* special_token(const std::string& name) const;
};

// Renders `messages` (a JSON array of message objects). Key order inside messages and tools matters for
// templates that print them with tojson, as in Python; nlohmann::json sorts keys, so prefer ordered_json.
// Throws moep::Error for bad input or a template error, jinja::TemplateRaised when the template calls
// raise_exception (e.g. roles that do not alternate).
std::string render_chat(const ChatTemplate& tmpl, const nlohmann::ordered_json& messages, bool add_generation_prompt,
                        const nlohmann::ordered_json& extra = nlohmann::ordered_json::object(),
                        const jinja::RenderOptions& options = {});
std::string render_chat(const ChatTemplate& tmpl, const nlohmann::json& messages, bool add_generation_prompt,
                        const nlohmann::json& extra = nlohmann::json::object());

// OpenAI-style messages made ready for the template render_chat would use with `extra`, by what that template's text
// does with them (templates disagree, and transformers passes messages as they are):
//  - tool_calls[].function.arguments, JSON text in the API, stays text when the template concatenates it with +
//    (DeepSeek-V3) or tests `arguments is string` (Qwen); else it becomes the object it encodes (Mistral and
//    Llama 3.1 print it with |tojson). Arguments that are not a JSON object stay text.
//  - a null or absent content becomes "", which templates concatenate, except in an assistant message with
//    tool_calls when the template tests the content with `is none` (DeepSeek-V3 marks tool-call turns so).
// Everything else is kept.
nlohmann::ordered_json template_messages(const ChatTemplate& tmpl, const nlohmann::ordered_json& messages,
                                         const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());

}  // namespace moep
