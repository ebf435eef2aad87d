// moep template MODEL [--messages FILE] [--tools FILE] [--chat-template FILE]
// Prints the prompt the model's chat template renders (what `moep serve` would tokenize for a chat request), and on
// stderr its token count. Runs no model: it reads the template and the tokenizer only.
//
// --messages: a JSON array of messages, or a whole chat request body ({"messages": [...], "tools": [...], ...}),
// whose "tools" are used when --tools is not given. Without it, one user message ("Hello!").
// --tools: a JSON array of tools ({"type": "function", "function": {...}}), passed to the template as `tools`.
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/file_read.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moep::cli {

namespace {

nlohmann::ordered_json read_json_file(const std::string& path, const char* flag) {
  const std::string text = read_regular_file(path, size_t(64) << 20, flag);
  check_json_depth(text, kMaxJsonDepth, path);
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(flag, " ", path, ": not valid JSON (", e.what(), ")");
  }
}

}  // namespace

void register_template(CLI::App& app) {
  struct Opts {
    std::string model, messages, tools, chat_template;
    bool no_generation_prompt = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("template", "Print the prompt a chat template renders, and its token count (stderr)");
  cmd->add_option("model", o->model, "Model directory (tokenizer.json, tokenizer_config.json) or a .gguf file")
      ->required();
  cmd->add_option("--messages", o->messages,
                  "JSON file: an array of messages, or a chat request body with \"messages\" (and \"tools\")");
  cmd->add_option("--tools", o->tools, "JSON file: an array of tools, passed to the template");
  cmd->add_option("--chat-template", o->chat_template, "Jinja file to use instead of the model's chat template");
  cmd->add_flag("--no-generation-prompt", o->no_generation_prompt,
                "Render without add_generation_prompt (the assistant's turn is not opened)");
  cmd->callback([o] {
    nlohmann::ordered_json messages = nlohmann::ordered_json::array(
        {nlohmann::ordered_json{{"role", "user"}, {"content", "Hello!"}}});
    nlohmann::ordered_json extra = nlohmann::ordered_json::object();
    if (!o->messages.empty()) {
      nlohmann::ordered_json m = read_json_file(o->messages, "--messages");
      if (m.is_object()) {
        if (!m.contains("messages") || !m["messages"].is_array())
          fail("--messages ", o->messages, ": expected an array of messages or an object with a \"messages\" array");
        if (m.contains("tools") && !m["tools"].is_null()) extra["tools"] = m["tools"];
        messages = m["messages"];
      } else if (m.is_array()) {
        messages = std::move(m);
      } else {
        fail("--messages ", o->messages, ": expected an array of messages or an object with a \"messages\" array");
      }
    }
    if (!o->tools.empty()) {
      nlohmann::ordered_json t = read_json_file(o->tools, "--tools");
      if (!t.is_array()) fail("--tools ", o->tools, ": expected a JSON array of tools");
      extra["tools"] = std::move(t);
    }
    const ChatTemplate tmpl = ChatTemplate::load(o->model, o->chat_template);
    const std::string prompt = render_chat(tmpl, template_messages(tmpl, messages, extra), !o->no_generation_prompt, extra);
    const Tokenizer tokenizer = Tokenizer::load(o->model);
    const size_t n_tokens = tokenizer.encode(prompt, /*add_special_tokens=*/false).size();
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "\nmoep template: %zu tokens (template: %s)\n", n_tokens, tmpl.source.c_str());
  });
}

}  // namespace moep::cli
