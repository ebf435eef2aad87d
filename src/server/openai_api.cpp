#include "server/openai_api.h"
#include "moep_commit.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

namespace moep::server {

using ojson = nlohmann::ordered_json;

namespace {

const char* kFingerprint = "moep-" MOEP_GIT_COMMIT;

const char* type_name(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::object: return "an object";
    case ojson::value_t::number_integer:
    case ojson::value_t::number_unsigned: return "an integer";
    case ojson::value_t::number_float: return "a number";
    default: return "an unsupported value";
  }
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const ojson& got) {
  throw ApiError(400, "'" + param + "' must be " + expected + ", got " + type_name(got), "invalid_request_error",
                 param, "invalid_type");
}

[[noreturn]] void bad_value(const std::string& param, const std::string& what) {
  throw ApiError(400, "'" + param + "' " + what, "invalid_request_error", param, "invalid_value");
}

[[noreturn]] void unsupported(const std::string& param, const std::string& what) {
  throw ApiError(400, "'" + param + "' " + what, "invalid_request_error", param, "unsupported_parameter");
}

// The member `key` of `body`, or nullptr when absent or null (OpenAI treats null as "not given").
const ojson* member(const ojson& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string fmt_number(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

double get_number(const ojson& v, const std::string& param, double lo, double hi, bool lo_open = false) {
  if (!v.is_number()) wrong_type(param, "a number", v);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    bad_value(param, "must be in " + std::string(lo_open ? "(" : "[") + fmt_number(lo) + ", " + fmt_number(hi) +
                         "], got " + fmt_number(x));
  return x;
}

// An integer (a JSON number with no fractional part) in [lo, hi].
int64_t get_integer(const ojson& v, const std::string& param, int64_t lo, int64_t hi) {
  if (!v.is_number()) wrong_type(param, "an integer", v);
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    x = u > uint64_t(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max() : int64_t(u);
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9e15) wrong_type(param, "an integer", v);
    x = int64_t(d);
  }
  if (x < lo || x > hi)
    bad_value(param, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(x));
  return x;
}

bool get_bool(const ojson& v, const std::string& param) {
  if (!v.is_boolean()) wrong_type(param, "a boolean", v);
  return v.get<bool>();
}

// Message content: a string, null, or an array of {"type": "text", "text": "..."} parts (joined by newlines).
std::string message_content(const ojson& c, const std::string& param) {
  if (c.is_null()) return "";
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) wrong_type(param, "a string or an array of content parts", c);
  std::string text;
  for (size_t i = 0; i < c.size(); ++i) {
    const std::string p = param + "[" + std::to_string(i) + "]";
    const ojson& part = c[i];
    if (!part.is_object()) wrong_type(p, "an object {\"type\": \"text\", \"text\": ...}", part);
    const ojson* type = member(part, "type");
    if (!type || !type->is_string()) wrong_type(p + ".type", "a string", type ? *type : ojson());
    if (type->get<std::string>() != "text")
      unsupported(p + ".type", "'" + type->get<std::string>() + "' is not supported (only text content parts are)");
    const ojson* t = member(part, "text");
    if (!t || !t->is_string()) wrong_type(p + ".text", "a string", t ? *t : ojson());
    if (i) text += "\n";
    text += t->get<std::string>();
  }
  return text;
}

std::string get_string(const ojson* v, const std::string& param) {
  if (!v) throw ApiError(400, "'" + param + "' is required", "invalid_request_error", param, "missing_required_parameter");
  if (!v->is_string()) wrong_type(param, "a string", *v);
  return v->get<std::string>();
}

// An assistant message's tool_calls: [{"id", "type": "function", "function": {"name", "arguments": JSON text}}].
ojson parse_message_tool_calls(const ojson& calls, const std::string& param) {
  if (!calls.is_array()) wrong_type(param, "an array of tool calls", calls);
  ojson out = ojson::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string p = param + "[" + std::to_string(i) + "]";
    const ojson& c = calls[i];
    if (!c.is_object()) wrong_type(p, "an object {\"id\", \"type\": \"function\", \"function\": {...}}", c);
    ojson o = ojson::object();
    if (const ojson* id = member(c, "id")) o["id"] = get_string(id, p + ".id");
    const ojson* type = member(c, "type");
    if (type && get_string(type, p + ".type") != "function") bad_value(p + ".type", "must be \"function\"");
    o["type"] = "function";
    const ojson* fn = member(c, "function");
    if (!fn) throw ApiError(400, "'" + p + ".function' is required", "invalid_request_error", p + ".function",
                            "missing_required_parameter");
    if (!fn->is_object()) wrong_type(p + ".function", "an object {\"name\", \"arguments\"}", *fn);
    ojson f = ojson::object();
    f["name"] = get_string(member(*fn, "name"), p + ".function.name");
    const ojson* args = member(*fn, "arguments");
    f["arguments"] = args ? get_string(args, p + ".function.arguments") : std::string("{}");
    o["function"] = std::move(f);
    out.push_back(std::move(o));
  }
  return out;
}

bool valid_tool_name(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  return true;
}

// "tools": [{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}].
ojson parse_tools(const ojson& t) {
  if (!t.is_array()) wrong_type("tools", "an array of tools", t);
  ojson out = ojson::array();
  std::vector<std::string> names;
  for (size_t i = 0; i < t.size(); ++i) {
    const std::string p = "tools[" + std::to_string(i) + "]";
    const ojson& tool = t[i];
    if (!tool.is_object()) wrong_type(p, "an object {\"type\": \"function\", \"function\": {\"name\": ...}}", tool);
    const ojson* type = member(tool, "type");
    if (!type) throw ApiError(400, "'" + p + ".type' is required", "invalid_request_error", p + ".type",
                              "missing_required_parameter");
    if (!type->is_string()) wrong_type(p + ".type", "the string \"function\"", *type);
    if (type->get<std::string>() != "function")
      bad_value(p + ".type", "must be \"function\" (the only kind of tool supported), got '" +
                                 type->get<std::string>().substr(0, 64) + "'");
    const ojson* fn = member(tool, "function");
    if (!fn) throw ApiError(400, "'" + p + ".function' is required", "invalid_request_error", p + ".function",
                            "missing_required_parameter");
    if (!fn->is_object()) wrong_type(p + ".function", "an object {\"name\", \"description\", \"parameters\"}", *fn);
    const std::string name = get_string(member(*fn, "name"), p + ".function.name");
    if (!valid_tool_name(name))
      bad_value(p + ".function.name", "must be 1 to 64 letters, digits, '_' or '-', got '" + name.substr(0, 80) + "'");
    if (std::find(names.begin(), names.end(), name) != names.end())
      bad_value(p + ".function.name", "'" + name + "' names an earlier tool too");
    names.push_back(name);
    if (const ojson* d = member(*fn, "description")) get_string(d, p + ".function.description");
    if (const ojson* params = member(*fn, "parameters"))
      if (!params->is_object()) wrong_type(p + ".function.parameters", "an object (a JSON schema)", *params);
    if (const ojson* strict = member(*fn, "strict")) get_bool(*strict, p + ".function.strict");
    out.push_back(tool);
  }
  return out;
}

void parse_tool_choice(const ojson& body, ApiRequest& r) {
  const ojson* c = member(body, "tool_choice");
  const bool has_tools = r.tools.is_array() && !r.tools.empty();
  if (c) {
    if (c->is_string()) {
      const std::string v = c->get<std::string>();
      if (v == "auto") r.tool_choice = ToolChoice::Auto;
      else if (v == "none") r.tool_choice = ToolChoice::None;
      else if (v == "required") r.tool_choice = ToolChoice::Required;
      else bad_value("tool_choice", "must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}, got '" + v.substr(0, 64) + "'");
    } else if (c->is_object()) {
      const ojson* type = member(*c, "type");
      if (!type || !type->is_string() || type->get<std::string>() != "function")
        bad_value("tool_choice.type", "must be \"function\"");
      const ojson* fn = member(*c, "function");
      if (!fn || !fn->is_object()) wrong_type("tool_choice.function", "an object {\"name\": ...}", fn ? *fn : ojson());
      r.tool_choice = ToolChoice::Function;
      r.tool_choice_name = get_string(member(*fn, "name"), "tool_choice.function.name");
      bool known = false;
      for (const ojson& t : has_tools ? r.tools : ojson::array())
        known = known || t["function"]["name"] == r.tool_choice_name;
      if (!known)
        bad_value("tool_choice", "names the function '" + r.tool_choice_name.substr(0, 80) +
                                     "', which is not one of the request's tools");
    } else {
      wrong_type("tool_choice", "a string or an object", *c);
    }
  }
  if (r.tool_choice == ToolChoice::Required && !has_tools)
    bad_value("tool_choice", "is \"required\" but the request has no tools");
  if (const ojson* p = member(body, "parallel_tool_calls")) r.parallel_tool_calls = get_bool(*p, "parallel_tool_calls");
}

ojson parse_messages(const ojson& body) {
  const ojson* m = member(body, "messages");
  if (!m) throw ApiError(400, "'messages' is required", "invalid_request_error", "messages", "missing_required_parameter");
  if (!m->is_array()) wrong_type("messages", "an array of messages", *m);
  if (m->empty()) bad_value("messages", "must contain at least one message");
  ojson out = ojson::array();
  for (size_t i = 0; i < m->size(); ++i) {
    const std::string p = "messages[" + std::to_string(i) + "]";
    const ojson& msg = (*m)[i];
    if (!msg.is_object()) wrong_type(p, "an object", msg);
    const ojson* role = member(msg, "role");
    if (!role) throw ApiError(400, "'" + p + ".role' is required", "invalid_request_error", p + ".role",
                              "missing_required_parameter");
    if (!role->is_string()) wrong_type(p + ".role", "a string", *role);
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system message; templates know "system"
    if (r != "system" && r != "user" && r != "assistant" && r != "tool")
      bad_value(p + ".role", "must be one of system, developer, user, assistant, tool; got '" + r + "'");
    auto content_it = msg.find("content");
    if (content_it == msg.end() && r != "assistant")
      throw ApiError(400, "'" + p + ".content' is required", "invalid_request_error", p + ".content",
                     "missing_required_parameter");
    ojson o = ojson::object();
    o["role"] = r;
    const ojson* calls = r == "assistant" ? member(msg, "tool_calls") : nullptr;
    const bool no_content = content_it == msg.end() || content_it->is_null();
    // An assistant turn that only calls tools keeps its null content (template_messages decides what the
    // template sees).
    if (no_content && calls && calls->is_array() && !calls->empty())
      o["content"] = nullptr;
    else
      o["content"] = content_it == msg.end() ? std::string() : message_content(*content_it, p + ".content");
    if (calls) o["tool_calls"] = parse_message_tool_calls(*calls, p + ".tool_calls");
    if (r == "assistant")
      if (const ojson* rc = member(msg, "reasoning_content")) {
        if (!rc->is_string()) wrong_type(p + ".reasoning_content", "a string", *rc);
        o["reasoning_content"] = *rc;
      }
    // Only plain fields are passed to the template (nothing nested that a template could walk without bound).
    for (const char* key : {"name", "tool_call_id"})
      if (const ojson* v = member(msg, key)) {
        if (!v->is_string()) wrong_type(p + "." + key, "a string", *v);
        o[key] = *v;
      }
    out.push_back(std::move(o));
  }
  return out;
}

std::string parse_prompt(const ojson& body) {
  const ojson* p = member(body, "prompt");
  if (!p) throw ApiError(400, "'prompt' is required", "invalid_request_error", "prompt", "missing_required_parameter");
  if (p->is_string()) return p->get<std::string>();
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) return (*p)[0].get<std::string>();
  if (p->is_array())
    unsupported("prompt", "must be a string (a batch of prompts or token ids is not supported; send one request each)");
  wrong_type("prompt", "a string", *p);
}

std::vector<std::string> parse_stop(const ojson& body, const RequestLimits& limits) {
  std::vector<std::string> stops;
  const ojson* s = member(body, "stop");
  if (!s) return stops;
  auto add = [&](const ojson& v, const std::string& param) {
    if (!v.is_string()) wrong_type(param, "a string", v);
    std::string t = v.get<std::string>();
    if (t.size() > limits.max_stop_length)
      bad_value(param, "is longer than " + std::to_string(limits.max_stop_length) + " bytes");
    if (!t.empty()) stops.push_back(std::move(t));
  };
  if (s->is_string()) {
    add(*s, "stop");
  } else if (s->is_array()) {
    if (s->size() > limits.max_stop_strings)
      bad_value("stop", "has " + std::to_string(s->size()) + " strings; at most " +
                            std::to_string(limits.max_stop_strings) + " are allowed");
    for (size_t i = 0; i < s->size(); ++i) add((*s)[i], "stop[" + std::to_string(i) + "]");
  } else {
    wrong_type("stop", "a string or an array of strings", *s);
  }
  return stops;
}

// Chat: "logprobs": bool and "top_logprobs": 0..20 (which needs logprobs true). Completions: "logprobs": 0..20.
int32_t parse_logprobs(const ojson& body, Endpoint endpoint) {
  const ojson* l = member(body, "logprobs");
  if (endpoint == Endpoint::Completion) {
    if (!l) return -1;
    return int32_t(get_integer(*l, "logprobs", 0, TokenLogprobs::kMaxTop));
  }
  const bool on = l && get_bool(*l, "logprobs");
  const ojson* t = member(body, "top_logprobs");
  if (!t) return on ? 0 : -1;
  const int32_t n = int32_t(get_integer(*t, "top_logprobs", 0, TokenLogprobs::kMaxTop));
  if (!on && n > 0) bad_value("top_logprobs", "needs \"logprobs\": true");
  return on ? n : -1;
}

// "logit_bias": {"<token id>": bias in [-100, 100], ...}.
std::vector<std::pair<int32_t, float>> parse_logit_bias(const ojson& body, const RequestLimits& limits) {
  std::vector<std::pair<int32_t, float>> out;
  const ojson* lb = member(body, "logit_bias");
  if (!lb) return out;
  if (!lb->is_object()) wrong_type("logit_bias", "an object {\"<token id>\": bias}", *lb);
  if (lb->size() > limits.max_logit_bias)
    bad_value("logit_bias", "has " + std::to_string(lb->size()) + " entries; at most " +
                                std::to_string(limits.max_logit_bias) + " are allowed");
  for (auto it = lb->begin(); it != lb->end(); ++it) {
    const std::string& key = it.key();
    const std::string p = "logit_bias." + key;
    int64_t id = -1;
    if (!key.empty() && key.size() <= 10 && key.find_first_not_of("0123456789") == std::string::npos) id = std::stoll(key);
    if (id < 0 || (limits.vocab_size > 0 && id >= limits.vocab_size))
      bad_value("logit_bias", "has the key '" + key + "': keys must be token ids" +
                                  (limits.vocab_size > 0 ? " in [0, " + std::to_string(limits.vocab_size) + ")" : ""));
    out.emplace_back(int32_t(id), float(get_number(it.value(), p, -100.0, 100.0)));
  }
  return out;
}

// Options of the OpenAI API that moep does not implement: refused when they ask for something, accepted when
// they ask for the default.
void refuse_unsupported(const ojson& body, Endpoint endpoint) {
  if (const ojson* n = member(body, "n"))
    if (get_integer(*n, "n", 1, 1 << 20) != 1) unsupported("n", "must be 1 (one choice per request)");
  if (const ojson* b = member(body, "best_of"))
    if (get_integer(*b, "best_of", 1, 1 << 20) != 1) unsupported("best_of", "must be 1");
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (const ojson* v = member(body, key))
      if (get_number(*v, key, -2.0, 2.0) != 0.0)
        unsupported(key, "is not supported (use repetition_penalty instead)");
  for (const char* key : {"functions", "function_call"})
    if (const ojson* t = member(body, key))
      if (!t->is_array() || !t->empty()) unsupported(key, "is not supported (the legacy form: use tools and tool_choice)");
  if (endpoint == Endpoint::Completion) {
    if (const ojson* e = member(body, "echo"))
      if (get_bool(*e, "echo")) unsupported("echo", "is not supported");
    if (const ojson* s = member(body, "suffix")) {
      if (!s->is_string()) wrong_type("suffix", "a string", *s);
      if (!s->get<std::string>().empty()) unsupported("suffix", "is not supported");
    }
  }
}

// response_format: null for free text, else the grammar of the JSON asked for.
std::shared_ptr<const JsonGrammar> parse_response_format(const ojson& body) {
  const ojson* rf = member(body, "response_format");
  if (!rf) return nullptr;
  if (!rf->is_object()) wrong_type("response_format", "an object", *rf);
  const ojson* t = member(*rf, "type");
  if (!t) throw ApiError(400, "'response_format.type' is required", "invalid_request_error", "response_format.type",
                         "missing_required_parameter");
  if (!t->is_string()) wrong_type("response_format.type", "a string", *t);
  const std::string type = t->get<std::string>();
  if (type == "text") return nullptr;
  if (type == "json_object") return JsonGrammar::any_object();
  if (type != "json_schema")
    bad_value("response_format.type", "must be one of text, json_object, json_schema; got '" + type + "'");
  const ojson* js = member(*rf, "json_schema");
  if (!js) throw ApiError(400, "'response_format.json_schema' is required with type json_schema",
                          "invalid_request_error", "response_format.json_schema", "missing_required_parameter");
  if (!js->is_object()) wrong_type("response_format.json_schema", "an object", *js);
  const ojson* name = member(*js, "name");
  if (!name) throw ApiError(400, "'response_format.json_schema.name' is required", "invalid_request_error",
                            "response_format.json_schema.name", "missing_required_parameter");
  if (!name->is_string()) wrong_type("response_format.json_schema.name", "a string", *name);
  if (const ojson* strict = member(*js, "strict")) get_bool(*strict, "response_format.json_schema.strict");
  const ojson* schema = member(*js, "schema");
  if (!schema) return JsonGrammar::from_schema(ojson::object());  // no schema: any JSON value
  if (!schema->is_object()) wrong_type("response_format.json_schema.schema", "an object (a JSON Schema)", *schema);
  try {
    return JsonGrammar::from_schema(*schema);
  } catch (const JsonSchemaError& e) {
    const std::string param = "response_format.json_schema.schema" + (e.path().empty() ? "" : "." + e.path());
    throw ApiError(400, "'" + param + "': " + e.reason(), "invalid_request_error", param, "invalid_schema");
  }
}

ojson usage_json(const Usage& u) {
  ojson j = ojson::object();
  j["prompt_tokens"] = u.prompt_tokens;
  j["completion_tokens"] = u.completion_tokens;
  j["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  return j;
}

ojson head_json(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model, bool chunk) {
  ojson j = ojson::object();
  j["id"] = id;
  j["object"] = endpoint == Endpoint::Chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  j["created"] = created;
  j["model"] = model;
  j["system_fingerprint"] = kFingerprint;
  return j;
}

ojson reason_json(const std::string& r) { return r.empty() ? ojson() : ojson(r); }

}  // namespace

ojson error_json(const ApiError& e) {
  ojson err = ojson::object();
  err["message"] = e.what();
  err["type"] = e.type();
  err["param"] = e.param().empty() ? ojson() : ojson(e.param());
  err["code"] = e.code().empty() ? ojson() : ojson(e.code());
  ojson j = ojson::object();
  j["error"] = std::move(err);
  return j;
}

std::string error_body(const ApiError& e) { return dump_json(error_json(e)); }

ApiRequest parse_request(Endpoint endpoint, std::string_view body_text, const RequestLimits& limits) {
  ojson body;
  try {
    body = ojson::parse(body_text.begin(), body_text.end());
  } catch (const nlohmann::json::exception& e) {
    throw ApiError(400, std::string("We could not parse the JSON body of your request: ") + e.what(),
                   "invalid_request_error", "", "invalid_json");
  }
  if (!body.is_object())
    throw ApiError(400, std::string("The request body must be a JSON object, got ") + type_name(body),
                   "invalid_request_error", "", "invalid_json");

  ApiRequest r;
  r.endpoint = endpoint;
  r.model = limits.model_id;
  if (const ojson* m = member(body, "model")) {
    if (!m->is_string()) wrong_type("model", "a string", *m);
    if (m->get<std::string>() != limits.model_id)
      throw ApiError(404, "The model '" + m->get<std::string>() + "' does not exist (this server serves '" +
                              limits.model_id + "')",
                     "invalid_request_error", "model", "model_not_found");
  }
  if (endpoint == Endpoint::Chat) {
    r.messages = parse_messages(body);
    if (const ojson* t = member(body, "tools")) r.tools = parse_tools(*t);
    parse_tool_choice(body, r);
    if (const ojson* k = member(body, "chat_template_kwargs")) {
      if (!k->is_object()) wrong_type("chat_template_kwargs", "an object", *k);
      for (const char* reserved : {"messages", "tools", "add_generation_prompt"})
        if (k->contains(reserved))
          bad_value(std::string("chat_template_kwargs.") + reserved, "is set by the server, not by the request");
      r.template_kwargs = *k;
    }
  } else {
    r.prompt = parse_prompt(body);
  }
  refuse_unsupported(body, endpoint);
  r.grammar = parse_response_format(body);

  SamplingParams& p = r.params;
  p = limits.defaults;
  p.stop.clear();
  const int64_t cap = limits.max_tokens_cap;
  const ojson* mt = member(body, "max_completion_tokens");
  const char* mt_name = "max_completion_tokens";
  if (!mt) {
    mt = member(body, "max_tokens");
    mt_name = "max_tokens";
  }
  if (mt) {
    const int64_t v = get_integer(*mt, mt_name, 1, std::numeric_limits<int64_t>::max());
    if (v > cap)
      throw ApiError(400, std::string("'") + mt_name + "' is " + std::to_string(v) + "; this server allows at most " +
                              std::to_string(cap),
                     "invalid_request_error", mt_name, "invalid_value");
    p.max_tokens = int32_t(v);
    r.max_tokens_given = true;
  }
  if (const ojson* v = member(body, "temperature")) p.temperature = float(get_number(*v, "temperature", 0.0, 2.0));
  if (const ojson* v = member(body, "top_p")) p.top_p = float(get_number(*v, "top_p", 0.0, 1.0, true));
  if (const ojson* v = member(body, "top_k")) {
    const int64_t k = get_integer(*v, "top_k", -1, std::numeric_limits<int32_t>::max());
    p.top_k = k < 0 ? 0 : int32_t(k);  // -1 means off, as in vLLM
  }
  if (const ojson* v = member(body, "min_p")) p.min_p = float(get_number(*v, "min_p", 0.0, 1.0));
  if (const ojson* v = member(body, "repetition_penalty"))
    p.repetition_penalty = float(get_number(*v, "repetition_penalty", 0.0, 100.0, true));
  if (const ojson* v = member(body, "seed")) {
    const int64_t s = get_integer(*v, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
    // The sampler takes 0 as "pick a random seed"; a request's seed 0 is a fixed seed like any other.
    p.seed = s == 0 ? 0x9e3779b97f4a7c15ull : uint64_t(s);
  } else {
    p.seed = 0;
  }
  if (const ojson* v = member(body, "ignore_eos")) p.ignore_eos = get_bool(*v, "ignore_eos");
  p.stop = parse_stop(body, limits);
  p.logit_bias = parse_logit_bias(body, limits);
  if (const ojson* v = member(body, "stream")) r.stream = get_bool(*v, "stream");
  r.logprobs = parse_logprobs(body, endpoint);
  if (const ojson* so = member(body, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    if (const ojson* iu = member(*so, "include_usage")) r.include_usage = get_bool(*iu, "stream_options.include_usage");
  }
  return r;
}

void fit_to_context(ApiRequest& req, int64_t prompt_tokens, const RequestLimits& limits) {
  const char* what = req.endpoint == Endpoint::Chat ? "messages" : "prompt";
  if (prompt_tokens <= 0) bad_value(what, "is empty (it gives no tokens)");
  const int64_t ctx = limits.max_context;
  const int64_t wanted = req.max_tokens_given ? req.params.max_tokens : 1;
  if (prompt_tokens + wanted > ctx) {
    throw ApiError(400,
                   "This model's maximum context length is " + std::to_string(ctx) + " tokens. However, you requested " +
                       std::to_string(prompt_tokens + wanted) + " tokens (" + std::to_string(prompt_tokens) + " in the " +
                       what + ", " + std::to_string(wanted) + " in the completion). Please reduce the length of the " +
                       what + " or completion.",
                   "invalid_request_error", what, "context_length_exceeded");
  }
  if (!req.max_tokens_given)
    req.params.max_tokens = int32_t(std::min<int64_t>({limits.default_max_tokens, limits.max_tokens_cap, ctx - prompt_tokens}));
}

namespace {

ojson bytes_json(const std::string& s) {
  ojson b = ojson::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

ojson chat_logprobs_json(std::span<const TokenLogprobs> tokens, int32_t n_top, const TokenTextFn& token_text) {
  ojson content = ojson::array();
  for (const TokenLogprobs& t : tokens) {
    const std::string text = token_text(t.token);
    ojson e = ojson::object();
    e["token"] = text;
    e["logprob"] = t.logprob;
    e["bytes"] = bytes_json(text);
    ojson top = ojson::array();
    for (int32_t k = 0; k < std::min(n_top, t.n_top); ++k) {
      const std::string alt = token_text(t.top_ids[size_t(k)]);
      ojson a = ojson::object();
      a["token"] = alt;
      a["logprob"] = t.top_logprobs[size_t(k)];
      a["bytes"] = bytes_json(alt);
      top.push_back(std::move(a));
    }
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  ojson j = ojson::object();
  j["content"] = std::move(content);
  j["refusal"] = nullptr;
  return j;
}

ojson completion_logprobs_json(std::span<const TokenLogprobs> tokens, int32_t n_top, const TokenTextFn& token_text,
                               int64_t* offset) {
  ojson toks = ojson::array(), lps = ojson::array(), tops = ojson::array(), offsets = ojson::array();
  for (const TokenLogprobs& t : tokens) {
    const std::string text = token_text(t.token);
    toks.push_back(text);
    lps.push_back(t.logprob);
    offsets.push_back(*offset);
    *offset += code_points(text);
    ojson top = ojson::object();
    for (int32_t k = 0; k < std::min(n_top, t.n_top); ++k) {
      const std::string alt = token_text(t.top_ids[size_t(k)]);
      if (!top.contains(alt)) top[alt] = t.top_logprobs[size_t(k)];  // a dict: the likelier of equal texts stays
    }
    tops.push_back(std::move(top));
  }
  ojson j = ojson::object();
  j["tokens"] = std::move(toks);
  j["token_logprobs"] = std::move(lps);
  j["top_logprobs"] = std::move(tops);
  j["text_offset"] = std::move(offsets);
  return j;
}

ToolCallConstraint tool_call_constraint(const ApiRequest& req) {
  ToolCallConstraint c;
  c.parallel = req.parallel_tool_calls;
  if (!req.tools.is_array() || req.tools.empty() || req.tool_choice == ToolChoice::None) return c;
  c.tools = &req.tools;
  c.required = req.tool_choice == ToolChoice::Required || req.tool_choice == ToolChoice::Function;
  for (const ojson& t : req.tools) {
    const std::string name = t["function"]["name"].get<std::string>();
    if (req.tool_choice != ToolChoice::Function || name == req.tool_choice_name) c.allowed.push_back(name);
  }
  return c;
}

std::optional<ForcedToolCall> forced_tool_call(ToolCallFormat format, const ToolCallConstraint& c) {
  if (!c.required || !c.tools || c.allowed.empty()) return std::nullopt;
  ForcedToolCall f;
  std::string args_key = "arguments";
  switch (format) {
    case ToolCallFormat::Hermes: f.prefix = "<tool_call>\n"; f.suffix = "\n</tool_call>"; break;
    case ToolCallFormat::Mistral: f.prefix = "[TOOL_CALLS] "; break;
    case ToolCallFormat::Llama3: args_key = "parameters"; break;
    case ToolCallFormat::DeepSeekV3:
    case ToolCallFormat::None: return std::nullopt;
  }
  // One call's schema per allowed tool: {"name": <const>, args_key: <its parameters>}, in this order.
  ojson alternatives = ojson::array();
  for (const ojson& t : *c.tools) {
    const std::string name = t["function"]["name"].get<std::string>();
    if (std::find(c.allowed.begin(), c.allowed.end(), name) == c.allowed.end()) continue;
    const ojson* params = t["function"].contains("parameters") ? &t["function"]["parameters"] : nullptr;
    auto call = [&](const ojson& p) {
      return ojson{{"type", "object"},
                   {"properties", {{"name", {{"const", name}}}, {args_key, p}}},
                   {"required", {"name", args_key}},
                   {"additionalProperties", false}};
    };
    // The arguments hold the declared properties only (as OpenAI's strict function calling), so that a model
    // cannot wander off into keys of its own.
    ojson declared = params && params->is_object() ? *params : ojson{{"type", "object"}};
    if (declared.contains("properties") && !declared.contains("additionalProperties"))
      declared["additionalProperties"] = false;
    ojson one = call(declared);
    try {
      JsonGrammar::from_schema(one);
    } catch (const JsonSchemaError&) {
      one = call(ojson{{"type", "object"}});
      f.relaxed.push_back(name);
    }
    alternatives.push_back(std::move(one));
  }
  ojson schema = alternatives.size() == 1 ? alternatives[0] : ojson{{"anyOf", alternatives}};
  if (format == ToolCallFormat::Mistral) {
    ojson list = {{"type", "array"}, {"items", schema}, {"minItems", 1}};
    if (!c.parallel) list["maxItems"] = 1;
    schema = std::move(list);
  }
  try {
    f.grammar = JsonGrammar::from_schema(schema);
  } catch (const JsonSchemaError& e) {
    throw ApiError(400, std::string("tool_choice: the tools' calls cannot be forced together: ") + e.what(),
                   "invalid_request_error", "tools");
  }
  return f;
}

ojson template_extra(const ApiRequest& req) {
  ojson extra = req.template_kwargs.is_object() ? req.template_kwargs : ojson::object();
  if (req.tools.is_array() && !req.tools.empty() && req.tool_choice != ToolChoice::None) extra["tools"] = req.tools;
  return extra;
}

ojson chat_message_json(const ParsedOutput& out) {
  ojson msg = ojson::object();
  msg["role"] = "assistant";
  msg["content"] = out.content.empty() && !out.tool_calls.empty() ? ojson() : ojson(out.content);
  if (!out.reasoning.empty()) msg["reasoning_content"] = out.reasoning;
  if (!out.tool_calls.empty()) {
    ojson calls = ojson::array();
    for (const ParsedToolCall& c : out.tool_calls) {
      ojson fn = ojson::object();
      fn["name"] = c.name;
      fn["arguments"] = c.arguments;
      ojson call = ojson::object();
      call["id"] = c.id;
      call["type"] = "function";
      call["function"] = std::move(fn);
      calls.push_back(std::move(call));
    }
    msg["tool_calls"] = std::move(calls);
  }
  return msg;
}

ojson chat_completion_json(const std::string& id, int64_t created, const std::string& model, const ParsedOutput& out,
                           const std::string& finish_reason, const Usage& usage, const ojson& logprobs) {
  ojson j = head_json(Endpoint::Chat, id, created, model, false);
  ojson choice = ojson::object();
  choice["index"] = 0;
  choice["message"] = chat_message_json(out);
  choice["logprobs"] = logprobs;
  choice["finish_reason"] =
      reason_json(finish_reason == "stop" && !out.tool_calls.empty() ? std::string("tool_calls") : finish_reason);
  j["choices"] = ojson::array({std::move(choice)});
  j["usage"] = usage_json(usage);
  return j;
}

ojson chat_delta_chunk_json(const std::string& id, int64_t created, const std::string& model, const OutputDelta& d,
                            const std::string& finish_reason, bool first_chunk, const ojson& logprobs) {
  ojson j = head_json(Endpoint::Chat, id, created, model, true);
  ojson delta = ojson::object();
  if (first_chunk) delta["role"] = "assistant";
  if (first_chunk || !d.content.empty()) delta["content"] = d.content;
  if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
  if (!d.tool_calls.empty()) {
    ojson calls = ojson::array();
    for (const ToolCallDelta& t : d.tool_calls) {
      ojson call = ojson::object();
      call["index"] = t.index;
      ojson fn = ojson::object();
      if (!t.name.empty()) {
        call["id"] = t.id;
        call["type"] = "function";
        fn["name"] = t.name;
      }
      fn["arguments"] = t.arguments;
      call["function"] = std::move(fn);
      calls.push_back(std::move(call));
    }
    delta["tool_calls"] = std::move(calls);
  }
  ojson choice = ojson::object();
  choice["index"] = 0;
  choice["delta"] = std::move(delta);
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = reason_json(finish_reason);
  j["choices"] = ojson::array({std::move(choice)});
  return j;
}

ojson completion_json(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                      const std::string& text, const std::string& finish_reason, const Usage& usage,
                      const ojson& logprobs) {
  ojson j = head_json(endpoint, id, created, model, false);
  ojson choice = ojson::object();
  choice["index"] = 0;
  if (endpoint == Endpoint::Chat) {
    ojson msg = ojson::object();
    msg["role"] = "assistant";
    msg["content"] = text;
    choice["message"] = std::move(msg);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = reason_json(finish_reason);
  j["choices"] = ojson::array({std::move(choice)});
  j["usage"] = usage_json(usage);
  return j;
}

ojson chunk_json(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                 const std::string& text, const std::string& finish_reason, bool first_chunk, const ojson& logprobs) {
  ojson j = head_json(endpoint, id, created, model, true);
  ojson choice = ojson::object();
  choice["index"] = 0;
  if (endpoint == Endpoint::Chat) {
    ojson delta = ojson::object();
    if (first_chunk) delta["role"] = "assistant";
    if (first_chunk || !text.empty()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = reason_json(finish_reason);
  j["choices"] = ojson::array({std::move(choice)});
  return j;
}

ojson usage_chunk_json(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                       const Usage& usage) {
  ojson j = head_json(endpoint, id, created, model, true);
  j["choices"] = ojson::array();
  j["usage"] = usage_json(usage);
  return j;
}

ojson model_json(const std::string& model_id, int64_t created, int64_t max_context) {
  ojson m = ojson::object();
  m["id"] = model_id;
  m["object"] = "model";
  m["created"] = created;
  m["owned_by"] = "moep";
  m["max_model_len"] = max_context;
  return m;
}

ojson models_json(const std::string& model_id, int64_t created, int64_t max_context) {
  ojson j = ojson::object();
  j["object"] = "list";
  j["data"] = ojson::array({model_json(model_id, created, max_context)});
  return j;
}

std::string dump_json(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

std::string sse_event(const ojson& j) { return "data: " + dump_json(j) + "\n\n"; }

bool bearer_matches(std::string_view authorization, std::string_view key) {
  constexpr std::string_view scheme = "bearer ";
  if (authorization.size() < scheme.size()) return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (char(std::tolower(static_cast<unsigned char>(authorization[i]))) != scheme[i]) return false;
  std::string_view given = authorization.substr(scheme.size());
  while (!given.empty() && given.front() == ' ') given.remove_prefix(1);
  while (!given.empty() && (given.back() == ' ' || given.back() == '\t')) given.remove_suffix(1);
  // Time depends on the lengths only, not on where the first difference is.
  unsigned diff = given.size() == key.size() ? 0u : 1u;
  const size_t n = std::max(given.size(), key.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char a = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    const unsigned char b = i < key.size() ? static_cast<unsigned char>(key[i]) : 0;
    diff |= unsigned(a ^ b);
  }
  return diff == 0 && !key.empty();
}

}  // namespace moep::server
