// The Jinja interpreter's value model: UTF-8 helpers, Python truthiness/equality/ordering, str()/repr(), and
// json.dumps as Python writes it.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "text/jinja_value.h"

namespace moep::jinja::detail {

void throw_error(const std::string& what) { throw RenderError(what); }

RenderBudget*& current_budget() {
  thread_local RenderBudget* budget = nullptr;
  return budget;
}

void charge_steps(int64_t n) {
  RenderBudget* b = current_budget();
  if (!b) return;
  b->steps_left -= n;
  if (b->steps_left < 0)
    throw_error("rendering took more than " + std::to_string(b->max_steps) +
                " steps (loop iterations, calls, list and dict elements built; the limit is RenderOptions::max_steps)");
  // A clock read per step (tens of ns): a step may be slow, so counting them alone would not bound the time.
  if (b->deadline && std::chrono::steady_clock::now() > *b->deadline)
    throw_error("rendering ran past its deadline (RenderOptions::deadline; the server's --request-timeout)");
}

void check_size(size_t bytes) {
  const RenderBudget* b = current_budget();
  if (b && bytes > b->max_bytes)
    throw_error("rendering made a string or an output of more than " + std::to_string(b->max_bytes) +
                " bytes (the limit is RenderOptions::max_output_bytes)");
}

void check_stack() {
  const RenderBudget* b = current_budget();
  char here;
  if (b && &here < b->stack_floor)
    throw_error("calls or values nested too deeply: rendering used all the stack it may (" +
                std::to_string(b->stack_bytes >> 10) + " KiB at most)");
}

void Value::release_nested(Value& v) {
  // Containers whose last reference goes away wait here; the outermost release destroys them one at a time, and
  // the releases their destruction starts only add to the queue.
  thread_local std::vector<std::shared_ptr<void>> pending;
  thread_local bool draining = false;
  auto defer = [](auto& p) {
    if (p && p.use_count() == 1) pending.push_back(std::move(p));
  };
  defer(v.list);
  defer(v.dict);
  defer(v.obj);
  if (draining) return;
  draining = true;
  while (!pending.empty()) {
    std::shared_ptr<void> last = std::move(pending.back());
    pending.pop_back();
    last.reset();
  }
  draining = false;
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

Value* Dict::find(std::string_view key) {
  for (auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  if (Value* slot = find(key)) {
    *slot = std::move(v);
    return;
  }
  items.emplace_back(key, std::move(v));
}

namespace {
constexpr char kIntKeyMark = '\xff';
}

std::string dict_key(const Value& key) {
  if (key.is_string()) return key.s;
  // A bool key is the int it equals, as Python hashes True like 1.
  if (key.is_integer()) return kIntKeyMark + std::to_string(key.as_int());
  throw_error("dict keys must be strings or integers here (got " + type_name(key) + ")");
}

Value key_value(const std::string& k) {
  if (!k.empty() && k[0] == kIntKeyMark) return Value::integer(std::stoll(k.substr(1)));
  return Value::string(k);
}

Value Value::function(std::string name, std::function<Value(CallArgs&)> fn) {
  Value v;
  v.kind = Kind::Callable;
  v.fn = std::make_shared<Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

const Value* CallArgs::kwarg(std::string_view name) const {
  for (const auto& [k, v] : kwargs)
    if (k == name) return &v;
  return nullptr;
}

Value CallArgs::get(size_t pos, std::string_view name, Value def) const {
  const Value* kw = name.empty() ? nullptr : kwarg(name);
  if (pos < args.size()) {
    if (kw) throw_error("got multiple values for argument '" + std::string(name) + "'");
    return args[pos];
  }
  if (kw) return *kw;
  return def;
}

void CallArgs::check(std::string_view fn_name, size_t max_pos, std::initializer_list<std::string_view> names) const {
  if (args.size() > max_pos)
    throw_error(std::string(fn_name) + "() takes at most " + std::to_string(max_pos) + " positional arguments (" +
                std::to_string(args.size()) + " given)");
  for (const auto& [k, v] : kwargs)
    if (std::find(names.begin(), names.end(), k) == names.end())
      throw_error(std::string(fn_name) + "() got an unexpected keyword argument '" + k + "'");
}

// --- UTF-8 -------------------------------------------------------------------------------------------------------

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {  // invalid byte: keep it as U+FFFD rather than fail
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// str.isspace() / the \s of Python's re module.
bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Simple case mappings for ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic and fullwidth Latin. Other scripts
// are left unchanged (Python would map a few more).
char32_t to_upper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c == 0xB5) return 0x39C;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x131) return 'I';
    if (c == 0x17F) return 'S';
    if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c - 1 : c;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c : c - 1;
    return c;
  }
  if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 32;
  if (c == 0x3C2) return 0x3A3;
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 37;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 63;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  if (c >= 0xFF41 && c <= 0xFF5A) return c - 32;
  return c;
}

char32_t to_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
  if (c == 0x178) return 0xFF;
  if (c >= 0x100 && c <= 0x17F) {
    if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c : c + 1;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c + 1 : c;
    return c;
  }
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;
  return c;
}

bool is_cased_lower(char32_t c) { return to_upper(c) != c || c == 0xDF; }
bool is_cased_upper(char32_t c) { return to_lower(c) != c; }

// --- Python semantics --------------------------------------------------------------------------------------------

[[noreturn]] void fail_undefined(const Value& v) { throw_error(v.s.empty() ? "value is undefined" : v.s); }

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return v.b;
    case Kind::Int: return v.i != 0;
    case Kind::Float: return v.f != 0;
    case Kind::String: return !v.s.empty();
    case Kind::List:
    case Kind::Tuple: return !v.list->empty();
    case Kind::Dict: return !v.dict->items.empty();
    case Kind::Object:
    case Kind::Callable: return true;
  }
  return false;
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Object: return v.obj->type_name;
    case Kind::Callable: return "function";
  }
  return "object";
}

std::string object_type_repr(const Value& v) {
  if (v.is_none()) return "None";
  return type_name(v) + " object";
}

bool py_equal(const Value& a, const Value& b) {
  check_stack();
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Float || b.kind == Kind::Float) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::Undefined:
    case Kind::None: return true;
    case Kind::String: return a.s == b.s;
    case Kind::List:
    case Kind::Tuple: {
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!py_equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    }
    case Kind::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* other = b.dict->find(k);
        if (!other || !py_equal(v, *other)) return false;
      }
      return true;
    }
    case Kind::Object: return a.obj == b.obj;
    case Kind::Callable: return a.fn == b.fn;
    default: return false;
  }
}

int py_compare(const Value& a, const Value& b) {
  check_stack();
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Float || b.kind == Kind::Float) {
      double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : (y < x ? 1 : 0);
    }
    int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : (y < x ? 1 : 0);
  }
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if (a.kind == Kind::String && b.kind == Kind::String) return a.s < b.s ? -1 : (b.s < a.s ? 1 : 0);  // UTF-8 order = code point order
  if (a.kind == b.kind && a.is_sequence()) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (py_equal((*a.list)[k], (*b.list)[k])) continue;
      return py_compare((*a.list)[k], (*b.list)[k]);
    }
    return a.list->size() < b.list->size() ? -1 : (a.list->size() > b.list->size() ? 1 : 0);
  }
  throw_error("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

std::string py_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);  // shortest round trip
  std::string_view sci(buf, size_t(res.ptr - buf));
  std::string out;
  if (sci.front() == '-') {
    out.push_back('-');
    sci.remove_prefix(1);
  }
  size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e))
    if (c != '.') digits.push_back(c);
  int exp10 = std::atoi(std::string(sci.substr(e + 1)).c_str());
  int decpt = exp10 + 1;  // digits are d.ddd × 10^exp10 = 0.dddd × 10^decpt
  int nd = int(digits.size());
  if (decpt > -4 && decpt <= 16) {  // Python's repr switches to exponent notation outside this range
    if (decpt <= 0) {
      out += "0." + std::string(size_t(-decpt), '0') + digits;
    } else if (decpt >= nd) {
      out += digits + std::string(size_t(decpt - nd), '0') + ".0";
    } else {
      out += digits.substr(0, size_t(decpt)) + "." + digits.substr(size_t(decpt));
    }
  } else {
    out += digits.substr(0, 1);
    if (nd > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += ebuf;
  }
  return out;
}

// repr() of a str: single quotes unless the text has ' and no ", escapes for controls.
std::string py_string_repr(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos, has_double = s.find('"') != std::string_view::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : utf8_decode(s)) {
    if (c == char32_t(q) || c == '\\') {
      out.push_back('\\');
      out.push_back(char(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F || (c >= 0x80 && c < 0xA0) || c == 0xAD || c == 0x2028 || c == 0x2029) {
      char buf[16];
      std::snprintf(buf, sizeof buf, c < 0x100 ? "\\x%02x" : "\\u%04x", unsigned(c));
      out += buf;
    } else {
      utf8_append(out, c);
    }
  }
  out.push_back(q);
  return out;
}

static std::string repr_sequence(const Value& v) {
  bool tuple = v.kind == Kind::Tuple;
  std::string out = tuple ? "(" : "[";
  for (size_t k = 0; k < v.list->size(); ++k) {
    if (k) out += ", ";
    out += py_repr((*v.list)[k]);
  }
  if (tuple && v.list->size() == 1) out += ",";
  out += tuple ? ")" : "]";
  return out;
}

std::string py_repr(const Value& v) {
  check_stack();
  switch (v.kind) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "None";
    case Kind::Bool: return v.b ? "True" : "False";
    case Kind::Int: return std::to_string(v.i);
    case Kind::Float: return py_float_repr(v.f);
    case Kind::String: return py_string_repr(v.s);
    case Kind::List:
    case Kind::Tuple: return repr_sequence(v);
    case Kind::Dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        out += py_repr(key_value(k)) + ": " + py_repr(x);
      }
      return out + "}";
    }
    case Kind::Object: {
      if (v.obj->type_name == "Namespace") return "<Namespace " + py_repr(Value::make_dict(v.obj->attrs)) + ">";
      return "<" + v.obj->type_name + ">";
    }
    case Kind::Callable: return "<function " + v.fn->name + ">";
  }
  return "";
}

std::string py_str(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return "";
    case Kind::String: return v.s;
    default: return py_repr(v);
  }
}

List iterate(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return {};
    case Kind::List:
    case Kind::Tuple: return *v.list;
    case Kind::Dict: {
      List keys;
      keys.reserve(v.dict->items.size());
      for (const auto& kv : v.dict->items) keys.push_back(key_value(kv.first));
      return keys;
    }
    case Kind::String: {
      List chars;
      for (char32_t c : utf8_decode(v.s)) {
        std::string one;
        utf8_append(one, c);
        chars.push_back(Value::string(std::move(one)));
      }
      return chars;
    }
    default: throw_error("'" + type_name(v) + "' object is not iterable");
  }
}

int64_t py_len(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return 0;
    case Kind::String: return int64_t(utf8_length(v.s));
    case Kind::List:
    case Kind::Tuple: return int64_t(v.list->size());
    case Kind::Dict: return int64_t(v.dict->items.size());
    default: throw_error("object of type '" + type_name(v) + "' has no len()");
  }
}

// --- JSON ---------------------------------------------------------------------------------------------------------

static void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out.push_back('"');
  auto escape_u = [&](unsigned c) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "\\u%04x", c);
    out += buf;
  };
  for (char32_t c : utf8_decode(s)) {
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (c < 0x20) {
      escape_u(unsigned(c));
    } else if (ensure_ascii && c > 0x7E) {
      if (c >= 0x10000) {
        char32_t v = c - 0x10000;
        escape_u(unsigned(0xD800 + (v >> 10)));
        escape_u(unsigned(0xDC00 + (v & 0x3FF)));
      } else {
        escape_u(unsigned(c));
      }
    } else {
      utf8_append(out, c);
    }
  }
  out.push_back('"');
}

static void json_value(std::string& out, const Value& v, const JsonOptions& opt, int level) {
  check_stack();
  switch (v.kind) {
    case Kind::None: out += "null"; return;
    case Kind::Bool: out += v.b ? "true" : "false"; return;
    case Kind::Int: out += std::to_string(v.i); return;
    case Kind::Float:
      if (std::isnan(v.f)) out += "NaN";
      else if (std::isinf(v.f)) out += v.f > 0 ? "Infinity" : "-Infinity";
      else out += py_float_repr(v.f);
      return;
    case Kind::String: json_string(out, v.s, opt.ensure_ascii); return;
    case Kind::List:
    case Kind::Tuple:
    case Kind::Dict: {
      bool is_dict = v.kind == Kind::Dict;
      size_t n = is_dict ? v.dict->items.size() : v.list->size();
      if (n == 0) {
        out += is_dict ? "{}" : "[]";
        return;
      }
      std::string newline_indent;
      if (opt.indent) {
        newline_indent = "\n";
        for (int k = 0; k <= level; ++k) newline_indent += *opt.indent;
      }
      out.push_back(is_dict ? '{' : '[');
      out += newline_indent;
      std::vector<size_t> order(n);
      for (size_t k = 0; k < n; ++k) order[k] = k;
      if (is_dict && opt.sort_keys)
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t x, size_t y) { return v.dict->items[x].first < v.dict->items[y].first; });
      for (size_t k = 0; k < n; ++k) {
        if (k) out += opt.item_separator + newline_indent;
        if (is_dict) {
          const auto& kv = v.dict->items[order[k]];
          json_string(out, py_str(key_value(kv.first)), opt.ensure_ascii);  // json.dumps writes int keys as text
          out += opt.key_separator;
          json_value(out, kv.second, opt, level + 1);
        } else {
          json_value(out, (*v.list)[k], opt, level + 1);
        }
      }
      if (opt.indent) {
        out.push_back('\n');
        for (int k = 0; k < level; ++k) out += *opt.indent;
      }
      out.push_back(is_dict ? '}' : ']');
      return;
    }
    default: throw_error("Object of type " + type_name(v) + " is not JSON serializable");
  }
}

std::string to_json(const Value& v, const JsonOptions& opt) {
  std::string out;
  json_value(out, v, opt, 0);
  return out;
}

Value from_json(const nlohmann::ordered_json& j) {
  check_stack();
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) return Value::number(double(u));
      return Value::integer(int64_t(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::number(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& x : j) items.push_back(from_json(x));
      return Value::make_list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      d.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) d.items.emplace_back(it.key(), from_json(it.value()));
      return Value::make_dict(std::move(d));
    }
    default: return Value::none();  // binary / discarded: not produced by JSON text
  }
}

}  // namespace moep::jinja::detail
