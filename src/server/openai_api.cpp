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
    o["content"] = content_it == msg.end() ? std::string() : message_content(*content_it, p + ".content");
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
  if (const ojson* l = member(body, "logprobs")) {
    const bool asked = l->is_boolean() ? l->get<bool>() : l->is_number() ? l->get<double>() > 0 : true;
    if (asked) unsupported("logprobs", "is not supported");
  }
  if (const ojson* t = member(body, "top_logprobs"))
    if (!t->is_number() || t->get<double>() != 0) unsupported("top_logprobs", "is not supported");
  for (const char* key : {"tools", "functions"})
    if (const ojson* t = member(body, key))
      if (!t->is_array() || !t->empty()) unsupported(key, "is not supported (no tool calling)");
  if (const ojson* lb = member(body, "logit_bias"))
    if (!lb->is_object() || !lb->empty()) unsupported("logit_bias", "is not supported");
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
  if (endpoint == Endpoint::Chat)
    r.messages = parse_messages(body);
  else
    r.prompt = parse_prompt(body);
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
  if (const ojson* v = member(body, "stream")) r.stream = get_bool(*v, "stream");
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

ojson completion_json(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                      const std::string& text, const std::string& finish_reason, const Usage& usage) {
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
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = reason_json(finish_reason);
  j["choices"] = ojson::array({std::move(choice)});
  j["usage"] = usage_json(usage);
  return j;
}

ojson chunk_json(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                 const std::string& text, const std::string& finish_reason, bool first_chunk) {
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
  choice["logprobs"] = nullptr;
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
