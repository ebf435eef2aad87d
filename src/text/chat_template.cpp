#include "text/chat_template.h"

#include <algorithm>
#include <filesystem>
#include <regex>

#include "core/error.h"
#include "io/gguf.h"
#include "text/gguf_tokenizer.h"
#include "core/file_read.h"

namespace moep {
namespace {

namespace fs = std::filesystem;

std::string read_template(const fs::path& path) {
  return read_regular_file(path.string(), kMaxChatTemplateBytes, "a chat template");
}

nlohmann::ordered_json read_json(const fs::path& path) {
  // tokenizer_config.json or chat_template.json: templates, special tokens, sometimes every added token.
  const std::string text = read_regular_file(path.string(), kMaxTokenizerConfigBytes, path.filename().string());
  check_json_depth(text, kMaxJsonDepth, path.string());
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": not valid JSON (", e.what(), ")");
  }
}

std::shared_ptr<const jinja::Template> parse(const std::string& text, const std::string& name) {
  return std::make_shared<const jinja::Template>(text, name);
}

// The content of a special token entry: "text" or {"content": "text", ...}; nullopt for null/absent.
std::optional<std::string> token_content(const nlohmann::ordered_json& v, const std::string& what) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail(what, ": expected a string or an object with a string \"content\"");
}

}  // namespace

namespace {

bool is_gguf_file(const fs::path& p) {
  std::error_code ec;
  return p.extension() == ".gguf" && fs::is_regular_file(p, ec);
}

nlohmann::ordered_json read_tokenizer_config(const fs::path& config_path) {
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (fs::exists(config_path)) {
    config = read_json(config_path);
    if (!config.is_object()) fail(config_path.string(), ": expected a JSON object");
  }
  return config;
}

// Special tokens, as transformers' special_tokens_map exposes them to the template.
std::vector<std::pair<std::string, std::string>> config_special_tokens(const nlohmann::ordered_json& config,
                                                                       const fs::path& config_path) {
  std::vector<std::pair<std::string, std::string>> tokens;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    if (!config.contains(key)) continue;
    if (auto content = token_content(config[key], config_path.string() + ": \"" + key + "\""))
      tokens.emplace_back(key, *content);
  }
  return tokens;
}

std::vector<std::pair<std::string, std::string>> gguf_special_token_texts(const GgufFile& file) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!file.has("tokenizer.ggml.tokens")) return out;
  const std::vector<std::string> tokens = file.get_string_array("tokenizer.ggml.tokens");
  const GgufSpecialTokens ids = gguf_special_tokens(file);
  for (const auto& [name, id] : {std::pair{"bos_token", ids.bos}, std::pair{"eos_token", ids.eos},
                                 std::pair{"unk_token", ids.unk}, std::pair{"pad_token", ids.pad}})
    if (id >= 0 && size_t(id) < tokens.size()) out.emplace_back(name, tokens[size_t(id)]);
  return out;
}

}  // namespace

ChatTemplate ChatTemplate::from_string(const std::string& jinja_source, const std::string& bos_token,
                                       const std::string& eos_token, const std::string& name) {
  ChatTemplate t;
  t.source = name;
  t.templates.emplace_back("default", parse(jinja_source, name));
  if (!bos_token.empty()) t.special_tokens.emplace_back("bos_token", bos_token);
  if (!eos_token.empty()) t.special_tokens.emplace_back("eos_token", eos_token);
  return t;
}

ChatTemplate ChatTemplate::from_gguf(const GgufFile& file) {
  ChatTemplate t;
  t.source = file.files().front()->path();
  if (!file.has("tokenizer.chat_template") && !file.has("tokenizer.chat_templates"))
    fail(t.source, ": no chat template (expected tokenizer.chat_template in the GGUF metadata)");
  if (file.has("tokenizer.chat_template"))
    t.templates.emplace_back("default", parse(file.get_string("tokenizer.chat_template"), t.source + " tokenizer.chat_template"));
  if (file.has("tokenizer.chat_templates"))
    for (const std::string& name : file.get_string_array("tokenizer.chat_templates")) {
      const std::string key = "tokenizer.chat_template." + name;
      t.templates.emplace_back(name, parse(file.get_string(key), t.source + " " + key));
    }
  t.special_tokens = gguf_special_token_texts(file);
  return t;
}

ChatTemplate ChatTemplate::load_override(const std::string& model_dir, const std::string& template_file) {
  ChatTemplate t;
  t.source = template_file;
  t.templates.emplace_back("default", parse(read_template(template_file), template_file));
  const fs::path dir(model_dir);
  if (is_gguf_file(dir))
    t.special_tokens = gguf_special_token_texts(GgufFile::open(model_dir));
  else if (fs::is_directory(dir))
    t.special_tokens = config_special_tokens(read_tokenizer_config(dir / "tokenizer_config.json"),
                                             dir / "tokenizer_config.json");
  return t;
}

ChatTemplate ChatTemplate::load(const std::string& model_dir, const std::string& template_file) {
  return template_file.empty() ? load(model_dir) : load_override(model_dir, template_file);
}

ChatTemplate ChatTemplate::load(const std::string& model_dir) {
  const fs::path dir(model_dir);
  if (is_gguf_file(dir)) return from_gguf(GgufFile::open(model_dir));
  if (!fs::is_directory(dir)) fail(model_dir, ": not a directory (expected a model directory with tokenizer_config.json)");
  ChatTemplate t;
  t.source = model_dir;
  const fs::path config_path = dir / "tokenizer_config.json";
  const nlohmann::ordered_json config = read_tokenizer_config(config_path);
  t.special_tokens = config_special_tokens(config, config_path);

  const fs::path jinja_path = dir / "chat_template.jinja";
  if (fs::exists(jinja_path)) {
    t.templates.emplace_back("default", parse(read_template(jinja_path), jinja_path.string()));
    const fs::path extra_dir = dir / "additional_chat_templates";
    if (fs::is_directory(extra_dir)) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(extra_dir))
        if (e.path().extension() == ".jinja") files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) t.templates.emplace_back(f.stem().string(), parse(read_template(f), f.string()));
    }
    return t;
  }

  nlohmann::ordered_json tmpl;
  std::string where = config_path.string();
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    tmpl = config["chat_template"];
  } else if (fs::exists(dir / "chat_template.json")) {
    where = (dir / "chat_template.json").string();
    nlohmann::ordered_json j = read_json(dir / "chat_template.json");
    if (j.is_object() && j.contains("chat_template")) tmpl = j["chat_template"];
  }
  if (tmpl.is_null())
    fail(model_dir, ": no chat template (expected chat_template.jinja, or \"chat_template\" in tokenizer_config.json)");
  if (tmpl.is_string()) {
    t.templates.emplace_back("default", parse(tmpl.get<std::string>(), where + " chat_template"));
  } else if (tmpl.is_array()) {
    for (const auto& entry : tmpl) {
      if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("template") ||
          !entry["template"].is_string())
        fail(where, ": \"chat_template\" list entries must be {\"name\": string, \"template\": string}");
      std::string name = entry["name"].get<std::string>();
      t.templates.emplace_back(name, parse(entry["template"].get<std::string>(), where + " chat_template '" + name + "'"));
    }
    if (t.templates.empty()) fail(where, ": \"chat_template\" is an empty list");
  } else {
    fail(where, ": \"chat_template\" must be a string or a list of {\"name\", \"template\"}");
  }
  return t;
}

const jinja::Template& ChatTemplate::select(const nlohmann::ordered_json& extra) const {
  if (templates.empty()) fail(source, ": no chat template loaded");
  if (templates.size() == 1) return *templates.front().second;
  auto find = [&](const std::string& name) -> const jinja::Template* {
    for (const auto& [n, t] : templates)
      if (n == name) return t.get();
    return nullptr;
  };
  bool has_tools = extra.is_object() && extra.contains("tools") && !extra["tools"].is_null();
  if (has_tools)
    if (const jinja::Template* t = find("tool_use")) return *t;
  if (const jinja::Template* t = find("default")) return *t;
  std::string names;
  for (const auto& [n, t] : templates) names += (names.empty() ? "" : ", ") + n;
  fail(source, ": several chat templates (", names, ") and none named \"default\"");
}

const std::string* ChatTemplate::special_token(const std::string& name) const {
  for (const auto& [k, v] : special_tokens)
    if (k == name) return &v;
  return nullptr;
}

std::string render_chat(const ChatTemplate& tmpl, const nlohmann::ordered_json& messages, bool add_generation_prompt,
                        const nlohmann::ordered_json& extra, const jinja::RenderOptions& options) {
  if (!messages.is_array()) fail("render_chat: messages must be a JSON array of message objects");
  for (const auto& m : messages)
    if (!m.is_object()) fail("render_chat: every message must be a JSON object, got ", m.type_name());
  if (!extra.is_null() && !extra.is_object()) fail("render_chat: extra variables must be a JSON object");
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  vars["messages"] = messages;
  vars["tools"] = nullptr;
  vars["documents"] = nullptr;
  vars["add_generation_prompt"] = add_generation_prompt;
  for (const auto& [k, v] : tmpl.special_tokens) vars[k] = v;
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = it.value();
  return tmpl.select(extra).render(vars, options);
}

std::string render_chat(const ChatTemplate& tmpl, const nlohmann::json& messages, bool add_generation_prompt,
                        const nlohmann::json& extra) {
  // Converting through text keeps values exactly; object keys come out sorted, as nlohmann::json holds them.
  nlohmann::ordered_json m, x = nlohmann::ordered_json::object();
  try {
    m = nlohmann::ordered_json::parse(messages.dump());
    if (!extra.is_null()) x = nlohmann::ordered_json::parse(extra.dump());
  } catch (const nlohmann::json::exception& e) {
    fail("render_chat: messages or extra variables are not valid JSON text (", e.what(), ")");
  }
  return render_chat(tmpl, m, add_generation_prompt, x);
}

nlohmann::ordered_json template_messages(const ChatTemplate& tmpl, const nlohmann::ordered_json& messages,
                                         const nlohmann::ordered_json& extra) {
  nlohmann::ordered_json out = messages;
  if (!out.is_array()) return out;
  const std::string& text = tmpl.select(extra).source();
  // Text when the template concatenates the arguments (`+ tool['function']['arguments']`) or takes text itself
  // (`arguments is string`); an object for everything else (`arguments|tojson`, `{"arguments": ...}|tojson`).
  static const std::regex text_arguments(
      R"((\+\s*[\w.\[\]'"]*arguments\b)|(arguments['"\]]*\s*\+)|(arguments\s+is\s+string))");
  static const std::regex null_content(R"(content('\])?\s+is\s+none)");
  const bool want_object = !std::regex_search(text, text_arguments);
  const bool keep_null = std::regex_search(text, null_content);
  for (auto& m : out) {
    if (!m.is_object()) continue;
    const bool calls = m.contains("tool_calls") && m["tool_calls"].is_array() && !m["tool_calls"].empty();
    if ((!m.contains("content") || m["content"].is_null()) && !(calls && keep_null)) m["content"] = "";
    if (!calls || !want_object) continue;
    for (auto& call : m["tool_calls"]) {
      if (!call.is_object() || !call.contains("function") || !call["function"].is_object()) continue;
      auto& fn = call["function"];
      if (!fn.contains("arguments") || !fn["arguments"].is_string()) continue;
      const std::string& text = fn["arguments"].get_ref<const std::string&>();
      nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (parsed.is_object()) fn["arguments"] = std::move(parsed);
    }
  }
  return out;
}

}  // namespace moep
