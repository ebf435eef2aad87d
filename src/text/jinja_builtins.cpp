// Builtins of the Jinja interpreter: attribute and item lookup as jinja2's ImmutableSandboxedEnvironment does
// it, Python operators, methods of str/dict/list, filters and tests.
#include <algorithm>
#include <cerrno>
#include <cfenv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

#include "text/jinja_value.h"

namespace moep::jinja::detail {
namespace {

Value unsafe_attribute(const Value& obj, const std::string& name) {
  return Value::undefined("access to attribute '" + name + "' of '" + type_name(obj) + "' object is unsafe.");
}

Value no_attribute(const Value& obj, const std::string& name) {
  return Value::undefined(py_string_repr(object_type_repr(obj)) + " has no attribute " + py_string_repr(name));
}

Value no_element(const Value& obj, const Value& key) {
  return Value::undefined(object_type_repr(obj) + " has no element " + py_repr(key));
}

// --- str helpers (code point aware) -------------------------------------------------------------------------------

std::string strip_chars(const std::string& s, const Value& chars, bool left, bool right) {
  std::u32string u = utf8_decode(s);
  std::u32string set;
  bool whitespace = chars.is_none() || chars.is_undefined();
  if (!whitespace) {
    if (!chars.is_string()) throw_error("strip arg must be None or str");
    set = utf8_decode(chars.s);
  }
  auto strip_it = [&](char32_t c) { return whitespace ? py_isspace(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return utf8_encode(std::u32string_view(u).substr(b, e - b));
}

std::string str_upper(const std::string& s) {
  std::string out;
  for (char32_t c : utf8_decode(s)) {
    if (c == 0xDF) out += "SS";
    else utf8_append(out, to_upper(c));
  }
  return out;
}

std::string str_lower(const std::string& s) {
  std::string out;
  for (char32_t c : utf8_decode(s)) utf8_append(out, to_lower(c));
  return out;
}

bool is_cased(char32_t c) { return is_cased_lower(c) || is_cased_upper(c); }

// Python's str.title(): a cased character after an uncased one starts a word.
std::string str_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (char32_t c : utf8_decode(s)) {
    char32_t m = prev_cased ? to_lower(c) : to_upper(c);
    utf8_append(out, m);
    prev_cased = is_cased(c);
  }
  return out;
}

std::string str_capitalize(const std::string& s) {
  std::u32string u = utf8_decode(s);
  std::string out;
  for (size_t k = 0; k < u.size(); ++k) utf8_append(out, k == 0 ? to_upper(u[k]) : to_lower(u[k]));
  return out;
}

// jinja2's title filter: words begin after runs of -, whitespace, (, {, [, <.
std::string jinja_title(const std::string& s) {
  std::u32string u = utf8_decode(s);
  std::string out;
  bool word_start = true;
  for (char32_t c : u) {
    bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c);
    if (sep) {
      utf8_append(out, c);
      word_start = true;
    } else {
      utf8_append(out, word_start ? to_upper(c) : to_lower(c));
      word_start = false;
    }
  }
  return out;
}

Value split_whitespace(const std::string& s, int64_t maxsplit, bool from_right) {
  std::u32string u = utf8_decode(s);
  List parts;
  if (!from_right) {
    size_t k = 0, n = u.size();
    while (true) {
      while (k < n && py_isspace(u[k])) ++k;
      if (k >= n) break;
      if (maxsplit >= 0 && int64_t(parts.size()) == maxsplit) {
        size_t e = n;
        while (e > k && py_isspace(u[e - 1])) --e;
        parts.push_back(Value::string(utf8_encode(u.substr(k, e - k))));
        break;
      }
      size_t b = k;
      while (k < n && !py_isspace(u[k])) ++k;
      parts.push_back(Value::string(utf8_encode(u.substr(b, k - b))));
    }
  } else {
    size_t k = u.size();
    while (true) {
      while (k > 0 && py_isspace(u[k - 1])) --k;
      if (k == 0) break;
      if (maxsplit >= 0 && int64_t(parts.size()) == maxsplit) {
        size_t b = 0;
        while (b < k && py_isspace(u[b])) ++b;
        parts.push_back(Value::string(utf8_encode(u.substr(b, k - b))));
        break;
      }
      size_t e = k;
      while (k > 0 && !py_isspace(u[k - 1])) --k;
      parts.push_back(Value::string(utf8_encode(u.substr(k, e - k))));
    }
    std::reverse(parts.begin(), parts.end());
  }
  return Value::make_list(std::move(parts));
}

Value split_sep(const std::string& s, const std::string& sep, int64_t maxsplit, bool from_right) {
  if (sep.empty()) throw_error("empty separator");
  List parts;
  if (!from_right) {
    size_t b = 0;
    while (maxsplit < 0 || int64_t(parts.size()) < maxsplit) {
      size_t p = s.find(sep, b);
      if (p == std::string::npos) break;
      parts.push_back(Value::string(s.substr(b, p - b)));
      b = p + sep.size();
    }
    parts.push_back(Value::string(s.substr(b)));
  } else {
    size_t e = s.size();
    while (maxsplit < 0 || int64_t(parts.size()) < maxsplit) {
      if (e < sep.size()) break;
      size_t p = s.rfind(sep, e - sep.size());
      if (p == std::string::npos) break;
      parts.push_back(Value::string(s.substr(p + sep.size(), e - p - sep.size())));
      e = p;
    }
    parts.push_back(Value::string(s.substr(0, e)));
    std::reverse(parts.begin(), parts.end());
  }
  return Value::make_list(std::move(parts));
}

std::string str_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts `repl` before every character and at the end
    std::u32string u = utf8_decode(s);
    int64_t done = 0;
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (k < u.size()) utf8_append(out, u[k]);
    }
    return out;
  }
  size_t b = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t p = s.find(old, b);
    if (p == std::string::npos) break;
    out.append(s, b, p - b);
    out += repl;
    b = p + old.size();
    ++done;
  }
  out.append(s, b, std::string::npos);
  return out;
}

int64_t cp_index(const std::string& s, size_t byte_pos) { return int64_t(utf8_length(std::string_view(s).substr(0, byte_pos))); }

std::string require_str(const Value& v, const char* what) {
  if (!v.is_string()) throw_error(std::string(what) + " must be str, not " + type_name(v));
  return v.s;
}

// A finite float truncated to an integer. Python's ints have no bound; moep's are 64-bit, so a float beyond them is
// a template error (converting it would be undefined behaviour, found by fuzz_chat_template).
int64_t trunc_to_int(double d, const char* what) {
  const double t = std::trunc(d);
  if (!(t >= -0x1p63 && t < 0x1p63))
    throw_error(std::string(what) + ": " + std::to_string(d) + " is beyond the 64-bit integers templates compute with");
  return int64_t(t);
}


// Python str % args for the conversions templates use: %s %r %d %i %f %%.
std::string percent_format(const std::string& fmt, const Value& args) {
  List vals = args.kind == Kind::Tuple ? *args.list : List{args};
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out.push_back(fmt[k]);
      continue;
    }
    if (++k >= fmt.size()) throw_error("incomplete format");
    std::string spec;
    while (k < fmt.size() && std::string_view("-+ #0123456789.").find(fmt[k]) != std::string_view::npos) spec.push_back(fmt[k++]);
    if (k >= fmt.size()) throw_error("incomplete format");
    char conv = fmt[k];
    if (conv == '%') {
      out.push_back('%');
      continue;
    }
    if (next >= vals.size()) throw_error("not enough arguments for format string");
    const Value& v = vals[next++];
    char buf[512];
    if (conv == 's' || conv == 'r') {
      std::string text = conv == 's' ? py_str(v) : py_repr(v);
      std::snprintf(buf, sizeof buf, ("%" + spec + "s").c_str(), text.c_str());
      out += buf;
    } else if (conv == 'd' || conv == 'i') {
      if (!v.is_number()) throw_error("%d format: a real number is required, not " + type_name(v));
      std::snprintf(buf, sizeof buf, ("%" + spec + "lld").c_str(), (long long)(v.kind == Kind::Float ? trunc_to_int(v.f, "%d") : v.as_int()));
      out += buf;
    } else if (conv == 'f' || conv == 'e' || conv == 'g') {
      if (!v.is_number()) throw_error("must be real number, not " + type_name(v));
      std::snprintf(buf, sizeof buf, ("%" + spec + conv).c_str(), v.as_double());
      out += buf;
    } else {
      throw_error(std::string("unsupported format character '") + conv + "'");
    }
  }
  if (next < vals.size() && args.kind == Kind::Tuple) throw_error("not all arguments converted during string formatting");
  return out;
}

// str.format with {} / {0} / {name}, optional !r/!s and a format spec of [[fill]align][width][.precision][type].
std::string format_field(const Value& v, const std::string& spec) {
  if (spec.empty()) return py_str(v);
  size_t k = 0;
  char fill = ' ', align = 0;
  if (spec.size() >= 2 && std::string_view("<>^").find(spec[1]) != std::string_view::npos) {
    fill = spec[0];
    align = spec[1];
    k = 2;
  } else if (std::string_view("<>^").find(spec[0]) != std::string_view::npos) {
    align = spec[0];
    k = 1;
  }
  size_t width = 0;
  while (k < spec.size() && std::isdigit(static_cast<unsigned char>(spec[k]))) {
    width = width * 10 + size_t(spec[k++] - '0');
    check_size(width);  // padded to it below
  }
  int precision = -1;
  if (k < spec.size() && spec[k] == '.') {
    precision = 0;
    ++k;
    while (k < spec.size() && std::isdigit(static_cast<unsigned char>(spec[k]))) precision = precision * 10 + (spec[k++] - '0');
  }
  char type = k < spec.size() ? spec[k++] : 0;
  if (k != spec.size()) throw_error("unsupported format spec '" + spec + "'");
  std::string text;
  char buf[512];
  if (type == 'f' || type == 'e' || type == 'g' || type == '%') {
    if (!v.is_number()) throw_error("unknown format code '" + std::string(1, type) + "' for object of type '" + type_name(v) + "'");
    double x = v.as_double() * (type == '%' ? 100 : 1);
    std::snprintf(buf, sizeof buf, ("%." + std::to_string(precision < 0 ? 6 : precision) + (type == '%' ? 'f' : type)).c_str(), x);
    text = buf;
    if (type == '%') text += "%";
  } else if (type == 'd') {
    if (!v.is_integer()) throw_error("unknown format code 'd' for object of type '" + type_name(v) + "'");
    text = std::to_string(v.as_int());
  } else {
    text = py_str(v);
    if (precision >= 0) text = utf8_encode(utf8_decode(text).substr(0, size_t(precision)));
  }
  if (!align) align = (v.is_number() && !v.is_string()) ? '>' : '<';
  size_t len = utf8_length(text);
  if (len < width) {
    size_t pad = width - len;
    size_t left = align == '>' ? pad : align == '^' ? pad / 2 : 0;
    text = std::string(left, fill) + text + std::string(pad - left, fill);
  }
  return text;
}

std::string str_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '}') {
      if (k + 1 < fmt.size() && fmt[k + 1] == '}') ++k;
      else throw_error("Single '}' encountered in format string");
      out.push_back('}');
      continue;
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out.push_back('{');
      ++k;
      continue;
    }
    size_t close = fmt.find('}', k);
    if (close == std::string::npos) throw_error("Single '{' encountered in format string");
    std::string field = fmt.substr(k + 1, close - k - 1);
    k = close;
    std::string spec, conv;
    if (size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conv = field.substr(bang + 1);
      field.resize(bang);
    }
    Value v;
    if (field.empty()) {
      if (auto_index >= args.args.size()) throw_error("Replacement index " + std::to_string(auto_index) + " out of range for positional args tuple");
      v = args.args[auto_index++];
    } else if (std::all_of(field.begin(), field.end(), [](char d) { return std::isdigit(static_cast<unsigned char>(d)); })) {
      size_t idx = size_t(std::stoul(field));
      if (idx >= args.args.size()) throw_error("Replacement index " + field + " out of range for positional args tuple");
      v = args.args[idx];
    } else {
      const Value* kw = args.kwarg(field);
      if (!kw) throw_error("KeyError: " + py_string_repr(field));
      v = *kw;
    }
    if (conv == "r") v = Value::string(py_repr(v));
    else if (conv == "s") v = Value::string(py_str(v));
    out += format_field(v, spec);
  }
  return out;
}

bool starts_or_ends(const std::string& s, const Value& affix, bool start) {
  auto one = [&](const Value& a) {
    std::string x = require_str(a, start ? "startswith first arg" : "endswith first arg");
    if (x.size() > s.size()) return false;
    return start ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.kind == Kind::Tuple) {
    for (const Value& a : *affix.list)
      if (one(a)) return true;
    return false;
  }
  return one(affix);
}

int64_t int_arg(const Value& v, const char* what) {
  if (!v.is_integer()) throw_error(std::string(what) + ": an integer is required, not " + type_name(v));
  return v.as_int();
}

Value str_method(const std::string& s, const std::string& name, CallArgs& a) {
  auto arg = [&](size_t pos, std::string_view kw, Value def = Value::none()) { return a.get(pos, kw, std::move(def)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return Value::string(strip_chars(s, arg(0, ""), name != "rstrip", name != "lstrip"));
  if (name == "split" || name == "rsplit") {
    Value sep = arg(0, "sep"), maxsplit = arg(1, "maxsplit", Value::integer(-1));
    int64_t m = int_arg(maxsplit, "maxsplit");
    if (sep.is_none()) return split_whitespace(s, m, name == "rsplit");
    return split_sep(s, require_str(sep, "sep"), m, name == "rsplit");
  }
  if (name == "splitlines") {
    bool keepends = truthy(arg(0, "keepends", Value::boolean(false)));
    std::u32string u = utf8_decode(s);
    List lines;
    size_t b = 0;
    for (size_t k = 0; k < u.size(); ++k) {
      char32_t c = u[k];
      bool brk = c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
                 c == 0x2028 || c == 0x2029;
      if (!brk) continue;
      size_t end = k;
      if (c == '\r' && k + 1 < u.size() && u[k + 1] == '\n') ++k;
      lines.push_back(Value::string(utf8_encode(u.substr(b, (keepends ? k + 1 : end) - b))));
      b = k + 1;
    }
    if (b < u.size()) lines.push_back(Value::string(utf8_encode(u.substr(b))));
    return Value::make_list(std::move(lines));
  }
  if (name == "startswith" || name == "endswith") return Value::boolean(starts_or_ends(s, arg(0, ""), name == "startswith"));
  if (name == "replace") {
    Value count = arg(2, "count", Value::integer(-1));
    return Value::string(str_replace(s, require_str(arg(0, ""), "replace() argument 1"), require_str(arg(1, ""), "replace() argument 2"),
                                     int_arg(count, "count")));
  }
  if (name == "upper") return Value::string(str_upper(s));
  if (name == "lower" || name == "casefold") return Value::string(str_lower(s));
  if (name == "title") return Value::string(str_title(s));
  if (name == "capitalize") return Value::string(str_capitalize(s));
  if (name == "swapcase") {
    std::string out;
    for (char32_t c : utf8_decode(s)) utf8_append(out, is_cased_upper(c) ? to_lower(c) : to_upper(c));
    return Value::string(out);
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    std::string sub = require_str(arg(0, ""), "must be str");
    size_t p = (name == "find" || name == "index") ? s.find(sub) : s.rfind(sub);
    if (p == std::string::npos) {
      if (name == "index" || name == "rindex") throw_error("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(cp_index(s, p));
  }
  if (name == "count") {
    std::string sub = require_str(arg(0, ""), "must be str");
    if (sub.empty()) return Value::integer(int64_t(utf8_length(s)) + 1);
    int64_t n = 0;
    for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
    return Value::integer(n);
  }
  if (name == "join") {
    std::string out;
    List items = iterate(arg(0, ""));
    for (size_t k = 0; k < items.size(); ++k) {
      if (!items[k].is_string()) throw_error("sequence item " + std::to_string(k) + ": expected str instance, " + type_name(items[k]) + " found");
      if (k) out += s;
      out += items[k].s;
    }
    return Value::string(out);
  }
  if (name == "format") return Value::string(str_format(s, a));
  if (name == "removeprefix" || name == "removesuffix") {
    std::string x = require_str(arg(0, ""), "argument");
    bool pre = name == "removeprefix";
    if (starts_or_ends(s, Value::string(x), pre)) return Value::string(pre ? s.substr(x.size()) : s.substr(0, s.size() - x.size()));
    return Value::string(s);
  }
  if (name == "partition" || name == "rpartition") {
    std::string sep = require_str(arg(0, ""), "sep");
    if (sep.empty()) throw_error("empty separator");
    size_t p = name == "partition" ? s.find(sep) : s.rfind(sep);
    if (p == std::string::npos)
      return name == "partition" ? Value::make_tuple({Value::string(s), Value::string(""), Value::string("")})
                                 : Value::make_tuple({Value::string(""), Value::string(""), Value::string(s)});
    return Value::make_tuple({Value::string(s.substr(0, p)), Value::string(sep), Value::string(s.substr(p + sep.size()))});
  }
  if (name == "center" || name == "ljust" || name == "rjust" || name == "zfill") {
    int64_t width = int_arg(arg(0, ""), "width");
    std::string fill = name == "zfill" ? "0" : a.args.size() > 1 ? require_str(a.args[1], "fillchar") : " ";
    int64_t len = int64_t(utf8_length(s));
    if (width <= len) return Value::string(s);
    check_size(size_t(width));  // padded to it below
    int64_t pad = width - len;
    int64_t left = name == "rjust" || name == "zfill" ? pad : name == "ljust" ? 0 : pad / 2 + (pad & width & 1);
    std::string out;
    for (int64_t k = 0; k < left; ++k) out += fill;
    if (name == "zfill" && !s.empty() && (s[0] == '-' || s[0] == '+')) out = s.substr(0, 1) + out + s.substr(1);
    else out += s;
    for (int64_t k = 0; k < pad - left; ++k) out += fill;
    return Value::string(out);
  }
  auto all_of_cp = [&](auto pred) {
    std::u32string u = utf8_decode(s);
    return !u.empty() && std::all_of(u.begin(), u.end(), pred);
  };
  if (name == "isdigit" || name == "isdecimal" || name == "isnumeric") return Value::boolean(all_of_cp([](char32_t c) { return c >= '0' && c <= '9'; }));
  if (name == "isalpha") return Value::boolean(all_of_cp([](char32_t c) { return is_cased(c) || c >= 0x80; }));
  if (name == "isalnum") return Value::boolean(all_of_cp([](char32_t c) { return is_cased(c) || c >= 0x80 || (c >= '0' && c <= '9'); }));
  if (name == "isspace") return Value::boolean(all_of_cp(py_isspace));
  if (name == "islower" || name == "isupper") {
    bool any = false, ok = true;
    for (char32_t c : utf8_decode(s)) {
      if (!is_cased(c)) continue;
      any = true;
      if (name == "islower" ? is_cased_upper(c) && !is_cased_lower(c) : is_cased_lower(c)) ok = false;
    }
    return Value::boolean(any && ok);
  }
  throw_error("'str' object has no attribute '" + name + "'");
}

const char* const kStrMethods[] = {"strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith",
                                   "replace", "upper", "lower", "casefold", "title", "capitalize", "swapcase", "find",
                                   "rfind", "index", "rindex", "count", "join", "format", "removeprefix", "removesuffix",
                                   "partition", "rpartition", "center", "ljust", "rjust", "zfill", "isdigit", "isdecimal",
                                   "isnumeric", "isalpha", "isalnum", "isspace", "islower", "isupper"};

bool in_list(const std::string& name, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (name == n) return true;
  return false;
}

Value dict_method(const std::shared_ptr<Dict>& d, const std::string& name, CallArgs& a) {
  if (name == "get") {
    Value key = a.get(0, ""), def = a.get(1, "", Value::none());
    if (!key.is_string() && !key.is_integer()) return def;
    const Value* v = d->find(dict_key(key));
    return v ? *v : def;
  }
  if (name == "items") {
    List out;
    for (const auto& [k, v] : d->items) out.push_back(Value::make_tuple({key_value(k), v}));
    return Value::make_list(std::move(out));
  }
  if (name == "keys") {
    List out;
    for (const auto& kv : d->items) out.push_back(key_value(kv.first));
    return Value::make_list(std::move(out));
  }
  if (name == "values") {
    List out;
    for (const auto& kv : d->items) out.push_back(kv.second);
    return Value::make_list(std::move(out));
  }
  if (name == "copy") return Value::make_dict(*d);
  throw_error("'dict' object has no attribute '" + name + "'");
}

Value list_method(const Value& self, const std::string& name, CallArgs& a) {
  const List& l = *self.list;
  if (name == "index") {
    Value x = a.get(0, "");
    for (size_t k = 0; k < l.size(); ++k)
      if (py_equal(l[k], x)) return Value::integer(int64_t(k));
    throw_error(py_repr(x) + " is not in list");
  }
  if (name == "count") {
    Value x = a.get(0, "");
    int64_t n = 0;
    for (const Value& v : l) n += py_equal(v, x);
    return Value::integer(n);
  }
  if (name == "copy") return Value::make_list(l);
  throw_error("'list' object has no attribute '" + name + "'");
}

}  // namespace

// --- Attribute and item lookup --------------------------------------------------------------------------------------

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (!name.empty() && name[0] == '_') return unsafe_attribute(obj, name);
  switch (obj.kind) {
    case Kind::String:
      for (const char* m : kStrMethods)
        if (name == m) {
          std::string self = obj.s;
          return Value::function("str." + name, [self, name](CallArgs& a) { return str_method(self, name, a); });
        }
      return no_attribute(obj, name);
    case Kind::Dict: {
      if (in_list(name, {"get", "items", "keys", "values", "copy"})) {
        auto d = obj.dict;
        return Value::function("dict." + name, [d, name](CallArgs& a) { return dict_method(d, name, a); });
      }
      if (in_list(name, {"pop", "popitem", "setdefault", "update", "clear", "fromkeys"})) return unsafe_attribute(obj, name);
      if (const Value* v = obj.dict->find(name)) return *v;
      return no_attribute(obj, name);
    }
    case Kind::List:
    case Kind::Tuple: {
      if (in_list(name, {"index", "count"}) || (obj.kind == Kind::List && name == "copy")) {
        Value self = obj;
        return Value::function(type_name(obj) + "." + name, [self, name](CallArgs& a) { return list_method(self, name, a); });
      }
      if (obj.kind == Kind::List && in_list(name, {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"}))
        return unsafe_attribute(obj, name);
      return no_attribute(obj, name);
    }
    case Kind::Object: {
      if (const Value* v = obj.obj->attrs.find(name)) return *v;
      return Value::undefined(py_string_repr("jinja2.utils." + obj.obj->type_name + " object") + " has no attribute " + py_string_repr(name));
    }
    default: return no_attribute(obj, name);
  }
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) fail_undefined(obj);
  switch (obj.kind) {
    case Kind::List:
    case Kind::Tuple:
    case Kind::String: {
      if (!key.is_integer()) break;
      int64_t idx = key.as_int();
      if (obj.kind == Kind::String) {
        std::u32string u = utf8_decode(obj.s);
        int64_t n = int64_t(u.size());
        if (idx < 0) idx += n;
        if (idx < 0 || idx >= n) return no_element(obj, key);
        return Value::string(utf8_encode(u.substr(size_t(idx), 1)));
      }
      int64_t n = int64_t(obj.list->size());
      if (idx < 0) idx += n;
      if (idx < 0 || idx >= n) return no_element(obj, key);
      return (*obj.list)[size_t(idx)];
    }
    case Kind::Dict:
      if (key.is_string() || key.is_integer()) {
        if (const Value* v = obj.dict->find(dict_key(key))) return *v;
      }
      break;
    default: break;
  }
  if (key.is_string()) {
    Value attr = get_attr(obj, key.s);
    if (!attr.is_undefined() || attr.s.rfind("access to attribute", 0) == 0) return attr;
    return no_attribute(obj, key.s);
  }
  return no_element(obj, key);
}

Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (!obj.is_sequence() && !obj.is_string()) return Value::undefined(object_type_repr(obj) + " has no element slice");
  auto bound = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (!v.is_integer()) throw_error(std::string("slice ") + what + " must be an integer or None");
    return v.as_int();
  };
  std::optional<int64_t> start = bound(start_v, "start"), stop = bound(stop_v, "stop"), step_o = bound(step_v, "step");
  int64_t step = step_o.value_or(1);
  if (step == 0) throw_error("slice step cannot be zero");
  std::u32string chars;
  int64_t n;
  if (obj.is_string()) {
    chars = utf8_decode(obj.s);
    n = int64_t(chars.size());
  } else {
    n = int64_t(obj.list->size());
  }
  auto adjust = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t b = adjust(start, step < 0 ? n - 1 : 0), e = adjust(stop, step < 0 ? -1 : n);
  std::vector<size_t> idx;
  if (step > 0)
    for (int64_t k = b; k < e; k += step) idx.push_back(size_t(k));
  else
    for (int64_t k = b; k > e; k += step) idx.push_back(size_t(k));
  if (obj.is_string()) {
    std::u32string out;
    for (size_t k : idx) out.push_back(chars[k]);
    return Value::string(utf8_encode(out));
  }
  List out;
  for (size_t k : idx) out.push_back((*obj.list)[k]);
  Value r = Value::make_list(std::move(out));
  r.kind = obj.kind;
  return r;
}

Value call_value(const Value& callee, CallArgs& args) {
  if (callee.kind == Kind::Callable) return callee.fn->fn(args);
  if (callee.is_undefined()) fail_undefined(callee);
  throw_error("'" + type_name(callee) + "' object is not callable");
}

// --- Operators ------------------------------------------------------------------------------------------------------

namespace {

[[noreturn]] void unsupported(std::string_view op, const Value& a, const Value& b) {
  if (op == "+" && (a.is_string() || a.is_sequence()))
    throw_error("can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " + type_name(a));
  throw_error("unsupported operand type(s) for " + std::string(op) + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

void check_overflow(bool overflow) {
  if (overflow) throw_error("integer overflow (Python would use a big integer)");
}

Value repeat(const Value& seq, int64_t times) {
  if (times < 0) times = 0;
  // Sized before it is built: the string against the size limit, the list's elements against the steps.
  const size_t unit = seq.is_string() ? seq.s.size() : seq.list->size();
  size_t total = 0;
  if (__builtin_mul_overflow(unit, size_t(times), &total) || total > size_t(INT64_MAX))
    throw_error("repeated " + type_name(seq) + " too long");
  if (seq.is_string()) {
    check_size(total);
    std::string out;
    for (int64_t k = 0; k < times; ++k) out += seq.s;
    return Value::string(out);
  }
  charge_steps(int64_t(total));
  List out;
  for (int64_t k = 0; k < times; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
  Value r = Value::make_list(std::move(out));
  r.kind = seq.kind;
  return r;
}

// Markup's operators: the other operand of + is escaped (unless it is Markup too), the arguments of % are escaped,
// * repeats; the result stays Markup.
Value markup_op(std::string_view op, const Value& a, const Value& b) {
  auto escaped = [](const Value& v) { return v.markup ? v.s : escape_html(v.s); };
  if (op == "+") {
    if (!a.is_string() || !b.is_string()) unsupported(op, a, b);
    return Value::markup_string(escaped(a) + escaped(b));
  }
  if (op == "*") {
    Value plain_a = a, plain_b = b;
    plain_a.markup = plain_b.markup = false;
    Value r = binary_op(op, plain_a, plain_b);
    r.markup = r.is_string();
    return r;
  }
  // %: only a Markup format string escapes its arguments; a plain format string with a Markup argument is str's %.
  if (!a.markup) {
    Value plain_b = b;
    plain_b.markup = false;
    return binary_op(op, a, plain_b);
  }
  auto escape_arg = [](const Value& v) {
    if (!v.is_string() || v.markup) return v;
    return Value::markup_string(escape_html(v.s));
  };
  Value args = b;
  if (b.kind == Kind::Tuple) {
    List items;
    for (const Value& x : *b.list) items.push_back(escape_arg(x));
    args = Value::make_tuple(std::move(items));
  } else {
    args = escape_arg(b);
  }
  return Value::markup_string(percent_format(a.s, args));
}

}  // namespace

Value binary_op(std::string_view op, const Value& a, const Value& b) {
  if (op == "~") return Value::string(py_str(a) + py_str(b));
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if ((a.markup || b.markup) && (op == "+" || op == "*" || op == "%")) return markup_op(op, a, b);
  bool nums = a.is_number() && b.is_number();
  bool ints = nums && a.is_integer() && b.is_integer();
  if (op == "+") {
    if (ints) {
      int64_t r = 0;
      check_overflow(__builtin_add_overflow(a.as_int(), b.as_int(), &r));
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) return Value::string(a.s + b.s);
    if (a.is_sequence() && a.kind == b.kind) {
      List out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      Value r = Value::make_list(std::move(out));
      r.kind = a.kind;
      return r;
    }
    unsupported(op, a, b);
  }
  if (op == "-") {
    if (ints) {
      int64_t r = 0;
      check_overflow(__builtin_sub_overflow(a.as_int(), b.as_int(), &r));
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() - b.as_double());
    unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) {
      int64_t r = 0;
      check_overflow(__builtin_mul_overflow(a.as_int(), b.as_int(), &r));
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_sequence()) && b.is_integer()) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_sequence()) && a.is_integer()) return repeat(b, a.as_int());
    unsupported(op, a, b);
  }
  if (op == "/") {
    if (!nums) unsupported(op, a, b);
    if (b.as_double() == 0) throw_error("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (op == "%" && a.is_string()) return Value::string(percent_format(a.s, b));
    if (!nums) unsupported(op, a, b);
    if (ints) {
      int64_t x = a.as_int(), y = b.as_int();
      if (y == 0) throw_error(op == "%" ? "integer modulo by zero" : "integer division or modulo by zero");
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return Value::integer(op == "%" ? r : q);
    }
    // CPython's float_divmod.
    double x = a.as_double(), y = b.as_double();
    if (y == 0) throw_error(op == "%" ? "float modulo" : "float floor division by zero");
    double mod = std::fmod(x, y), div = (x - mod) / y;
    if (mod != 0) {
      if ((y < 0) != (mod < 0)) {
        mod += y;
        div -= 1.0;
      }
    } else {
      mod = std::copysign(0.0, y);
    }
    double floordiv;
    if (div != 0) {
      floordiv = std::floor(div);
      if (div - floordiv > 0.5) floordiv += 1.0;
    } else {
      floordiv = std::copysign(0.0, x / y);
    }
    return Value::number(op == "%" ? mod : floordiv);
  }
  if (op == "**") {
    if (!nums) unsupported(op, a, b);
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), e = b.as_int(), r = 1;
      while (e > 0) {
        if (e & 1) check_overflow(__builtin_mul_overflow(r, base, &r));
        e >>= 1;
        if (e) check_overflow(__builtin_mul_overflow(base, base, &base));
      }
      return Value::integer(r);
    }
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  throw_error("unknown operator " + std::string(op));
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Kind::Undefined: return false;
    case Kind::String:
      if (!item.is_string()) throw_error("'in <string>' requires string as left operand, not " + type_name(item));
      return container.s.find(item.s) != std::string::npos;
    case Kind::List:
    case Kind::Tuple:
      for (const Value& v : *container.list)
        if (py_equal(v, item)) return true;
      return false;
    case Kind::Dict:
      return (item.is_string() || item.is_integer()) && container.dict->find(dict_key(item)) != nullptr;
    default: throw_error("argument of type '" + type_name(container) + "' is not iterable");
  }
}

// --- Filters ----------------------------------------------------------------------------------------------------------

namespace {

// The attribute getter of jinja2's make_attrgetter: dotted parts, digits as indexes, each via getitem.
Value lookup_attribute(const Value& item, const Value& attribute, const Value& def) {
  Value cur = item;
  std::vector<Value> parts;
  if (attribute.is_string()) {
    size_t b = 0;
    while (true) {
      size_t p = attribute.s.find('.', b);
      std::string part = attribute.s.substr(b, p == std::string::npos ? std::string::npos : p - b);
      bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
      parts.push_back(digits ? Value::integer(std::stoll(part)) : Value::string(part));
      if (p == std::string::npos) break;
      b = p + 1;
    }
  } else {
    parts.push_back(attribute);
  }
  for (const Value& part : parts) {
    cur = get_item(cur, part);
    if (cur.is_undefined() && !def.is_undefined()) return def;
  }
  return cur;
}

}  // namespace

std::string escape_html(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

namespace {

// Sort/compare key: case-folded strings unless case_sensitive (jinja2's ignore_case).
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(str_lower(v.s));
  return v;
}

Value f_abs(const Value& v, CallArgs& a) {
  a.check("abs", 0, {});
  if (v.kind == Kind::Float) return Value::number(std::fabs(v.f));
  if (v.is_integer()) return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
  if (v.is_undefined()) fail_undefined(v);
  throw_error("bad operand type for abs(): '" + type_name(v) + "'");
}

Value f_attr(const Value& v, CallArgs& a) {
  a.check("attr", 1, {"name"});
  Value name = a.get(0, "name");
  if (!name.is_string()) return Value::undefined("attribute name must be a string");
  if (v.kind == Kind::Dict && !in_list(name.s, {"get", "items", "keys", "values", "copy"})) return no_attribute(v, name.s);
  return get_attr(v, name.s);
}

Value f_capitalize(const Value& v, CallArgs& a) {
  a.check("capitalize", 0, {});
  return Value::string(str_capitalize(py_str(v)));
}

Value f_center(const Value& v, CallArgs& a) {
  a.check("center", 1, {"width"});
  CallArgs c;
  c.args.push_back(a.get(0, "width", Value::integer(80)));
  return str_method(py_str(v), "center", c);
}

Value f_default(const Value& v, CallArgs& a) {
  a.check("default", 2, {"default_value", "boolean"});
  Value def = a.get(0, "default_value", Value::string("")), boolean = a.get(1, "boolean", Value::boolean(false));
  if (v.is_undefined() || (truthy(boolean) && !truthy(v))) return def;
  return v;
}

Value f_dictsort(const Value& v, CallArgs& a) {
  a.check("dictsort", 3, {"case_sensitive", "by", "reverse"});
  if (v.kind != Kind::Dict) {
    if (v.is_undefined()) fail_undefined(v);
    throw_error("dictsort: expected a mapping, got " + type_name(v));
  }
  bool cs = truthy(a.get(0, "case_sensitive", Value::boolean(false)));
  Value by = a.get(1, "by", Value::string("key"));
  bool rev = truthy(a.get(2, "reverse", Value::boolean(false)));
  int pos = by.is_string() && by.s == "key" ? 0 : by.is_string() && by.s == "value" ? 1 : -1;
  if (pos < 0) throw_error("You can only sort by either \"key\" or \"value\"");
  List items;
  for (const auto& [k, x] : v.dict->items) items.push_back(Value::make_tuple({key_value(k), x}));
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    int c = py_compare(sort_key((*x.list)[size_t(pos)], cs), sort_key((*y.list)[size_t(pos)], cs));
    return rev ? c > 0 : c < 0;
  });
  return Value::make_list(std::move(items));
}

Value f_escape(const Value& v, CallArgs& a) {
  a.check("escape", 0, {});
  if (v.markup) return v;
  return Value::markup_string(escape_html(py_str(v)));
}

Value f_forceescape(const Value& v, CallArgs& a) {
  a.check("forceescape", 0, {});
  return Value::markup_string(escape_html(py_str(v)));
}

Value f_first(const Value& v, CallArgs& a) {
  a.check("first", 0, {});
  List items = iterate(v);
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Value f_last(const Value& v, CallArgs& a) {
  a.check("last", 0, {});
  List items = iterate(v);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

std::optional<double> parse_float(std::string text) {
  std::string t = strip_chars(text, Value::none(), true, true);
  t.erase(std::remove(t.begin(), t.end(), '_'), t.end());
  if (t.empty()) return std::nullopt;
  std::string lower = str_lower(t);
  if (lower == "inf" || lower == "+inf" || lower == "infinity" || lower == "+infinity") return HUGE_VAL;
  if (lower == "-inf" || lower == "-infinity") return -HUGE_VAL;
  if (lower == "nan" || lower == "+nan" || lower == "-nan") return NAN;
  char* end = nullptr;
  double d = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size() || lower.find('x') != std::string::npos) return std::nullopt;
  return d;
}

Value f_float(const Value& v, CallArgs& a) {
  a.check("float", 1, {"default"});
  Value def = a.get(0, "default", Value::number(0.0));
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_string())
    if (auto d = parse_float(v.s)) return Value::number(*d);
  return def;
}

Value f_int(const Value& v, CallArgs& a) {
  a.check("int", 2, {"default", "base"});
  Value def = a.get(0, "default", Value::integer(0));
  int64_t base = int_arg(a.get(1, "base", Value::integer(10)), "base");
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_integer()) return Value::integer(v.as_int());
  if (v.kind == Kind::Float) {
    if (!std::isfinite(v.f)) return def;
    return Value::integer(trunc_to_int(v.f, "int"));
  }
  if (v.is_string()) {
    std::string t = strip_chars(v.s, Value::none(), true, true);
    std::string digits;
    for (char c : t)
      if (c != '_') digits.push_back(c);
    if (!digits.empty()) {
      char* end = nullptr;
      errno = 0;
      long long x = std::strtoll(digits.c_str(), &end, int(base));
      if (end == digits.c_str() + digits.size() && errno == 0 && t.find("__") == std::string::npos) return Value::integer(x);
    }
    if (auto d = parse_float(v.s); d && std::isfinite(*d)) return Value::integer(trunc_to_int(*d, "int"));
  }
  return def;
}

Value f_indent(const Value& v, CallArgs& a) {
  a.check("indent", 3, {"width", "first", "blank"});
  Value width = a.get(0, "width", Value::integer(4));
  bool first = truthy(a.get(1, "first", Value::boolean(false))), blank = truthy(a.get(2, "blank", Value::boolean(false)));
  const size_t indent_width = width.is_string() ? width.s.size() : size_t(std::max<int64_t>(0, int_arg(width, "width")));
  check_size(indent_width);
  std::string indention = width.is_string() ? width.s : std::string(indent_width, ' ');
  CallArgs none;
  Value lines_v = str_method(py_str(v) + "\n", "splitlines", none);
  const List& lines = *lines_v.list;
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) rv += (k ? "\n" + indention : "") + lines[k].s;
  } else {
    rv = lines.empty() ? "" : lines[0].s;
    for (size_t k = 1; k < lines.size(); ++k) rv += "\n" + (lines[k].s.empty() ? "" : indention) + lines[k].s;
  }
  if (first) rv = indention + rv;
  return Value::string(rv);
}

Value f_items(const Value& v, CallArgs& a) {
  a.check("items", 0, {});
  if (v.is_undefined()) return Value::make_list();
  if (v.kind != Kind::Dict) throw_error("Can only get item pairs from a mapping.");
  CallArgs none;
  return dict_method(v.dict, "items", none);
}

Value f_join(const Value& v, CallArgs& a) {
  a.check("join", 2, {"d", "attribute"});
  Value d = a.get(0, "d", Value::string("")), attribute = a.get(1, "attribute", Value::none());
  std::string sep = py_str(d), out;
  List items = iterate(v);
  for (size_t k = 0; k < items.size(); ++k) {
    if (k) out += sep;
    out += py_str(attribute.is_none() ? items[k] : lookup_attribute(items[k], attribute, Value()));
  }
  return Value::string(out);
}

Value f_length(const Value& v, CallArgs& a) {
  a.check("length", 0, {});
  return Value::integer(py_len(v));
}

Value f_list(const Value& v, CallArgs& a) {
  a.check("list", 0, {});
  return Value::make_list(iterate(v));
}

Value f_lower(const Value& v, CallArgs& a) {
  a.check("lower", 0, {});
  return Value::string(str_lower(py_str(v)));
}

Value f_upper(const Value& v, CallArgs& a) {
  a.check("upper", 0, {});
  return Value::string(str_upper(py_str(v)));
}

Value apply_filter(const std::string& name, const Value& v, CallArgs& args) {
  FilterFn f = find_filter(name);
  if (!f) throw_error("No filter named " + py_string_repr(name) + ".");
  return f(v, args);
}

bool apply_test(const std::string& name, const Value& v, CallArgs& args) {
  TestFn t = find_test(name);
  if (!t) throw_error("No test named " + py_string_repr(name) + ".");
  return t(v, args);
}

// jinja2's map, select, reject, selectattr and rejectattr are generators that begin with `if value:`: falsy input
// (none, undefined, 0, an empty string) yields nothing, and their arguments are not even looked at.
Value f_map(const Value& v, CallArgs& a) {
  if (!truthy(v)) return Value::make_list();
  List items = iterate(v), out;
  if (const Value* attribute = a.kwarg("attribute")) {
    Value def;
    if (const Value* d = a.kwarg("default")) def = *d;
    for (const Value& x : items) out.push_back(lookup_attribute(x, *attribute, def));
    return Value::make_list(std::move(out));
  }
  if (a.args.empty()) throw_error("map requires a filter argument");
  if (!a.args[0].is_string()) throw_error("map: the filter name must be a string");
  std::string name = a.args[0].s;
  CallArgs rest;
  rest.args.assign(a.args.begin() + 1, a.args.end());
  rest.kwargs = a.kwargs;
  for (const Value& x : items) {
    CallArgs copy = rest;
    out.push_back(apply_filter(name, x, copy));
  }
  return Value::make_list(std::move(out));
}

Value select_or_reject(const Value& v, CallArgs& a, bool select, bool by_attr) {
  if (!truthy(v)) return Value::make_list();
  List items = iterate(v), out;
  size_t k = 0;
  Value attribute;
  if (by_attr) {
    if (a.args.empty()) throw_error("Missing parameter for attribute name");
    attribute = a.args[k++];
  }
  std::optional<std::string> test;
  if (k < a.args.size()) {
    if (!a.args[k].is_string()) throw_error("the test name must be a string");
    test = a.args[k++].s;
  }
  CallArgs rest;
  rest.args.assign(a.args.begin() + std::min(k, a.args.size()), a.args.end());
  rest.kwargs = a.kwargs;
  for (const Value& x : items) {
    Value target = by_attr ? lookup_attribute(x, attribute, Value()) : x;
    bool ok;
    if (test) {
      CallArgs copy = rest;
      ok = apply_test(*test, target, copy);
    } else {
      ok = truthy(target);
    }
    if (ok == select) out.push_back(x);
  }
  return Value::make_list(std::move(out));
}

Value f_select(const Value& v, CallArgs& a) { return select_or_reject(v, a, true, false); }
Value f_reject(const Value& v, CallArgs& a) { return select_or_reject(v, a, false, false); }
Value f_selectattr(const Value& v, CallArgs& a) { return select_or_reject(v, a, true, true); }
Value f_rejectattr(const Value& v, CallArgs& a) { return select_or_reject(v, a, false, true); }

Value min_max(const Value& v, CallArgs& a, bool want_max) {
  a.check(want_max ? "max" : "min", 2, {"case_sensitive", "attribute"});
  bool cs = truthy(a.get(0, "case_sensitive", Value::boolean(false)));
  Value attribute = a.get(1, "attribute", Value::none());
  List items = iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  auto key = [&](const Value& x) { return sort_key(attribute.is_none() ? x : lookup_attribute(x, attribute, Value()), cs); };
  for (size_t k = 1; k < items.size(); ++k) {
    int c = py_compare(key(items[k]), key(items[best]));
    if (want_max ? c > 0 : c < 0) best = k;
  }
  return items[best];
}

Value f_max(const Value& v, CallArgs& a) { return min_max(v, a, true); }
Value f_min(const Value& v, CallArgs& a) { return min_max(v, a, false); }

Value f_replace(const Value& v, CallArgs& a) {
  a.check("replace", 3, {"old", "new", "count"});
  Value count = a.get(2, "count", Value::none());
  return Value::string(str_replace(py_str(v), py_str(a.get(0, "old")), py_str(a.get(1, "new")), count.is_none() ? -1 : int_arg(count, "count")));
}

Value f_reverse(const Value& v, CallArgs& a) {
  a.check("reverse", 0, {});
  if (v.is_string()) {
    std::u32string u = utf8_decode(v.s);
    std::reverse(u.begin(), u.end());
    return Value::string(utf8_encode(u));
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::make_list(std::move(items));
}

Value f_round(const Value& v, CallArgs& a) {
  a.check("round", 2, {"precision", "method"});
  int64_t precision = int_arg(a.get(0, "precision", Value::integer(0)), "precision");
  Value method = a.get(1, "method", Value::string("common"));
  if (!v.is_number()) throw_error("round: expected a number, got " + type_name(v));
  double x = v.as_double(), scale = std::pow(10.0, double(precision));
  if (!method.is_string()) throw_error("method must be common, ceil or floor");
  if (method.s == "ceil") return Value::number(std::ceil(x * scale) / scale);
  if (method.s == "floor") return Value::number(std::floor(x * scale) / scale);
  if (method.s != "common") throw_error("method must be common, ceil or floor");
  int old = std::fegetround();
  std::fesetround(FE_TONEAREST);  // Python's round() rounds half to even
  double r = std::nearbyint(x * scale) / scale;
  std::fesetround(old);
  return Value::number(r);
}

Value f_safe(const Value& v, CallArgs& a) {
  a.check("safe", 0, {});
  return Value::markup_string(py_str(v));
}

Value f_sort(const Value& v, CallArgs& a) {
  a.check("sort", 3, {"reverse", "case_sensitive", "attribute"});
  bool rev = truthy(a.get(0, "reverse", Value::boolean(false))), cs = truthy(a.get(1, "case_sensitive", Value::boolean(false)));
  Value attribute = a.get(2, "attribute", Value::none());
  List items = iterate(v);
  auto key = [&](const Value& x) { return sort_key(attribute.is_none() ? x : lookup_attribute(x, attribute, Value()), cs); };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    int c = py_compare(key(x), key(y));
    return rev ? c > 0 : c < 0;
  });
  return Value::make_list(std::move(items));
}

Value f_string(const Value& v, CallArgs& a) {
  a.check("string", 0, {});
  if (v.markup) return v;  // soft_str keeps a Markup as it is
  return Value::string(py_str(v));
}

Value f_sum(const Value& v, CallArgs& a) {
  a.check("sum", 2, {"attribute", "start"});
  Value attribute = a.get(0, "attribute", Value::none()), total = a.get(1, "start", Value::integer(0));
  for (const Value& x : iterate(v)) total = binary_op("+", total, attribute.is_none() ? x : lookup_attribute(x, attribute, Value()));
  return total;
}

Value f_title(const Value& v, CallArgs& a) {
  a.check("title", 0, {});
  return Value::string(jinja_title(py_str(v)));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
Value f_tojson(const Value& v, CallArgs& a) {
  a.check("tojson", 4, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions opt;
  opt.ensure_ascii = truthy(a.get(0, "ensure_ascii", Value::boolean(false)));
  Value indent = a.get(1, "indent", Value::none());
  if (indent.is_string()) opt.indent = indent.s;
  else if (indent.is_integer()) opt.indent = std::string(size_t(std::max<int64_t>(0, indent.as_int())), ' ');
  else if (!indent.is_none()) throw_error("tojson: indent must be an int, a str or None");
  if (opt.indent) opt.item_separator = ",";
  Value separators = a.get(2, "separators", Value::none());
  if (!separators.is_none()) {
    if (!separators.is_sequence() || separators.list->size() != 2 || !(*separators.list)[0].is_string() || !(*separators.list)[1].is_string())
      throw_error("tojson: separators must be a (item_separator, key_separator) pair of strings");
    opt.item_separator = (*separators.list)[0].s;
    opt.key_separator = (*separators.list)[1].s;
  }
  opt.sort_keys = truthy(a.get(3, "sort_keys", Value::boolean(false)));
  if (v.is_undefined()) throw_error("Object of type Undefined is not JSON serializable");
  return Value::string(to_json(v, opt));
}

Value f_trim(const Value& v, CallArgs& a) {
  a.check("trim", 1, {"chars"});
  return Value::string(strip_chars(py_str(v), a.get(0, "chars", Value::none()), true, true));
}

Value f_unique(const Value& v, CallArgs& a) {
  a.check("unique", 2, {"case_sensitive", "attribute"});
  bool cs = truthy(a.get(0, "case_sensitive", Value::boolean(false)));
  Value attribute = a.get(1, "attribute", Value::none());
  List out, seen;
  for (const Value& x : iterate(v)) {
    Value key = sort_key(attribute.is_none() ? x : lookup_attribute(x, attribute, Value()), cs);
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return py_equal(s, key); })) continue;
    seen.push_back(key);
    out.push_back(x);
  }
  return Value::make_list(std::move(out));
}

Value f_wordcount(const Value& v, CallArgs& a) {
  a.check("wordcount", 0, {});
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : utf8_decode(py_str(v))) {
    bool w = c == '_' || (c >= '0' && c <= '9') || is_cased(c) || c >= 0x80;
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::integer(n);
}

Value f_format(const Value& v, CallArgs& a) {
  if (!a.kwargs.empty() && !a.args.empty()) throw_error("can't handle positional and keyword arguments at the same time");
  return Value::string(percent_format(py_str(v), Value::make_tuple(a.args)));
}

const std::unordered_map<std::string_view, FilterFn>& filters() {
  static const std::unordered_map<std::string_view, FilterFn> table = {
      {"abs", f_abs},           {"attr", f_attr},         {"capitalize", f_capitalize}, {"center", f_center},
      {"count", f_length},      {"d", f_default},         {"default", f_default},       {"dictsort", f_dictsort},
      {"e", f_escape},          {"escape", f_escape},     {"first", f_first},           {"float", f_float},
      {"forceescape", f_forceescape}, {"format", f_format},    {"indent", f_indent},         {"int", f_int},
      {"items", f_items},       {"join", f_join},         {"last", f_last},             {"length", f_length},
      {"list", f_list},         {"lower", f_lower},       {"map", f_map},               {"max", f_max},
      {"min", f_min},           {"reject", f_reject},     {"rejectattr", f_rejectattr}, {"replace", f_replace},
      {"reverse", f_reverse},   {"round", f_round},       {"safe", f_safe},             {"select", f_select},
      {"selectattr", f_selectattr}, {"sort", f_sort},     {"string", f_string},         {"sum", f_sum},
      {"title", f_title},       {"tojson", f_tojson},     {"trim", f_trim},             {"unique", f_unique},
      {"upper", f_upper},       {"wordcount", f_wordcount},
  };
  return table;
}

// --- Tests -------------------------------------------------------------------------------------------------------------

bool t_defined(const Value& v, CallArgs&) { return !v.is_undefined(); }
bool t_undefined(const Value& v, CallArgs&) { return v.is_undefined(); }
bool t_none(const Value& v, CallArgs&) { return v.is_none(); }
bool t_boolean(const Value& v, CallArgs&) { return v.kind == Kind::Bool; }
bool t_true(const Value& v, CallArgs&) { return v.kind == Kind::Bool && v.b; }
bool t_false(const Value& v, CallArgs&) { return v.kind == Kind::Bool && !v.b; }
bool t_integer(const Value& v, CallArgs&) { return v.kind == Kind::Int; }
bool t_float(const Value& v, CallArgs&) { return v.kind == Kind::Float; }
bool t_number(const Value& v, CallArgs&) { return v.is_number(); }
bool t_string(const Value& v, CallArgs&) { return v.is_string(); }
bool t_mapping(const Value& v, CallArgs&) { return v.kind == Kind::Dict; }
bool t_iterable(const Value& v, CallArgs&) {
  return v.is_undefined() || v.is_string() || v.is_sequence() || v.kind == Kind::Dict || (v.kind == Kind::Object && v.obj->type_name == "LoopContext");
}
bool t_sequence(const Value& v, CallArgs&) { return v.is_undefined() || v.is_string() || v.is_sequence() || v.kind == Kind::Dict; }
bool t_callable(const Value& v, CallArgs&) { return v.kind == Kind::Callable || v.is_undefined() || (v.kind == Kind::Object && v.obj->type_name == "LoopContext"); }
bool t_escaped(const Value&, CallArgs&) { return false; }

Value one_arg(CallArgs& a, const char* test) {
  if (a.args.size() + a.kwargs.size() != 1) throw_error(std::string(test) + "() takes exactly one argument");
  return a.args.empty() ? a.kwargs[0].second : a.args[0];
}

bool t_sameas(const Value& v, CallArgs& a) {
  Value o = one_arg(a, "sameas");
  if (v.kind != o.kind) return false;
  switch (v.kind) {
    case Kind::None:
    case Kind::Undefined: return true;
    case Kind::Bool: return v.b == o.b;
    case Kind::Int: return v.i == o.i;
    case Kind::Float: return false;
    case Kind::String: return v.s == o.s;
    case Kind::List:
    case Kind::Tuple: return v.list == o.list;
    case Kind::Dict: return v.dict == o.dict;
    case Kind::Object: return v.obj == o.obj;
    case Kind::Callable: return v.fn == o.fn;
  }
  return false;
}

bool t_odd(const Value& v, CallArgs& a) {
  a.check("odd", 0, {});
  return py_equal(binary_op("%", v, Value::integer(2)), Value::integer(1));
}
bool t_even(const Value& v, CallArgs& a) {
  a.check("even", 0, {});
  return py_equal(binary_op("%", v, Value::integer(2)), Value::integer(0));
}
bool t_divisibleby(const Value& v, CallArgs& a) { return py_equal(binary_op("%", v, one_arg(a, "divisibleby")), Value::integer(0)); }
bool t_lower(const Value& v, CallArgs&) {
  CallArgs none;
  return truthy(str_method(py_str(v), "islower", none));
}
bool t_upper(const Value& v, CallArgs&) {
  CallArgs none;
  return truthy(str_method(py_str(v), "isupper", none));
}
bool t_eq(const Value& v, CallArgs& a) { return py_equal(v, one_arg(a, "eq")); }
bool t_ne(const Value& v, CallArgs& a) { return !py_equal(v, one_arg(a, "ne")); }
bool t_lt(const Value& v, CallArgs& a) { return py_compare(v, one_arg(a, "lt")) < 0; }
bool t_le(const Value& v, CallArgs& a) { return py_compare(v, one_arg(a, "le")) <= 0; }
bool t_gt(const Value& v, CallArgs& a) { return py_compare(v, one_arg(a, "gt")) > 0; }
bool t_ge(const Value& v, CallArgs& a) { return py_compare(v, one_arg(a, "ge")) >= 0; }
bool t_in(const Value& v, CallArgs& a) { return contains(one_arg(a, "in"), v); }

const std::unordered_map<std::string_view, TestFn>& tests() {
  static const std::unordered_map<std::string_view, TestFn> table = {
      {"defined", t_defined},   {"undefined", t_undefined}, {"none", t_none},         {"boolean", t_boolean},
      {"true", t_true},         {"false", t_false},         {"integer", t_integer},   {"float", t_float},
      {"number", t_number},     {"string", t_string},       {"mapping", t_mapping},   {"iterable", t_iterable},
      {"sequence", t_sequence}, {"callable", t_callable},   {"sameas", t_sameas},     {"escaped", t_escaped},
      {"odd", t_odd},           {"even", t_even},           {"divisibleby", t_divisibleby}, {"lower", t_lower},
      {"upper", t_upper},       {"eq", t_eq},               {"equalto", t_eq},        {"==", t_eq},
      {"ne", t_ne},             {"!=", t_ne},               {"lt", t_lt},             {"lessthan", t_lt},
      {"<", t_lt},              {"le", t_le},               {"<=", t_le},             {"gt", t_gt},
      {"greaterthan", t_gt},    {">", t_gt},                {"ge", t_ge},             {">=", t_ge},
      {"in", t_in},
  };
  return table;
}

}  // namespace

FilterFn find_filter(std::string_view name) {
  auto it = filters().find(name);
  return it == filters().end() ? nullptr : it->second;
}

TestFn find_test(std::string_view name) {
  auto it = tests().find(name);
  return it == tests().end() ? nullptr : it->second;
}

}  // namespace moep::jinja::detail
