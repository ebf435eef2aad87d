// Internal to the Jinja interpreter (jinja*.cpp): the value model, Python-like operations on it, and the
// builtins (filters, tests, methods, globals). Not part of moep's API.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace moep::jinja::detail {

// An error while rendering; the evaluator adds the template name and line. `raised` marks raise_exception().
struct RenderError : std::runtime_error {
  explicit RenderError(const std::string& what, bool from_raise = false) : std::runtime_error(what), raised(from_raise) {}
  bool raised;
};

[[noreturn]] void throw_error(const std::string& what);

// The limits of the render running on this thread (Template::render installs them; outside a render nothing is
// limited). A template comes with a model from anyone and runs on every chat request: these bound its work, its
// memory and its recursion, each failing with a RenderError that names the limit.
struct RenderBudget {
  int64_t max_steps = 0;
  int64_t steps_left = 0;  // loop iterations, calls and filters, elements of lists and dicts built
  size_t max_bytes = 0;    // the output, and any one string
  const char* stack_floor = nullptr;  // rendering may not grow the stack below this address
  size_t stack_bytes = 0;             // how far below the render's start that is
  std::optional<std::chrono::steady_clock::time_point> deadline;  // RenderOptions::deadline
};
// The budget installed on this thread, or null.
RenderBudget*& current_budget();
// Counts n steps; throws when the budget's steps are spent.
void charge_steps(int64_t n);
// Throws when a string (or the output) of `bytes` would exceed the budget's size limit.
void check_size(size_t bytes);
// Throws when the stack has grown past the budget's floor: recursion of any kind (nested calls, deep values)
// ends in an error, never at the stack's end.
void check_stack();

enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Object, Callable };

struct Value;
struct CallArgs;
using List = std::vector<Value>;

// A Python dict with string or integer keys, in insertion order. An integer key is held as its text after a 0xFF
// byte (dict_key/key_value convert), which no key from JSON or from a template string literal can start with (they
// are UTF-8); the conversion is canonical, so equal keys find each other.
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(const std::string& key, Value v);
};

// An object with attributes: a jinja2 Namespace (assignable) or a loop context.
struct Object {
  std::string type_name;  // "Namespace" or "LoopContext"
  Dict attrs;
  bool assignable = false;
};

struct Callable {
  std::string name;
  std::function<Value(CallArgs&)> fn;
};

struct Value {
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // String; for Undefined, the error raised when it is used (jinja2's UndefinedError text)
  // A String that is markupsafe's Markup (from |safe): a plain string joined to it with + or % is HTML-escaped
  // first, as Markup.__add__/__radd__/__mod__ do whatever the environment's autoescape; ~ makes a plain str
  // (transformers' environment has autoescape off, where jinja2 compiles ~ to str_join).
  bool markup = false;
  std::shared_ptr<List> list;  // List, Tuple
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Object> obj;
  std::shared_ptr<Callable> fn;

  static Value undefined(std::string hint) { Value v; v.s = std::move(hint); return v; }
  static Value none() { Value v; v.kind = Kind::None; return v; }
  static Value boolean(bool x) { Value v; v.kind = Kind::Bool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.kind = Kind::Int; v.i = x; return v; }
  static Value number(double x) { Value v; v.kind = Kind::Float; v.f = x; return v; }
  static Value string(std::string x) { check_size(x.size()); Value v; v.kind = Kind::String; v.s = std::move(x); return v; }
  static Value make_list(List items = {}) {
    charge_steps(int64_t(items.size()));
    Value v; v.kind = Kind::List; v.list = std::make_shared<List>(std::move(items)); return v;
  }
  static Value make_tuple(List items) { Value v = make_list(std::move(items)); v.kind = Kind::Tuple; return v; }
  static Value make_dict(Dict d = {}) {
    charge_steps(int64_t(d.items.size()));
    Value v; v.kind = Kind::Dict; v.dict = std::make_shared<Dict>(std::move(d)); return v;
  }
  static Value function(std::string name, std::function<Value(CallArgs&)> fn);
  static Value markup_string(std::string x) { Value v = string(std::move(x)); v.markup = true; return v; }

  Value() = default;
  Value(const Value&) = default;
  Value(Value&&) noexcept = default;
  Value& operator=(const Value&) = default;
  Value& operator=(Value&&) noexcept = default;
  // A template can nest values as deep as its steps allow (a loop of `set ns.x = [ns.x]`): the last reference to
  // a list, dict or object is released through a queue (release_nested), so that destroying a deep value never
  // recurses through its levels.
  ~Value() {
    if (list || dict || obj) release_nested(*this);
  }
  static void release_nested(Value& v);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  bool is_integer() const { return kind == Kind::Int || kind == Kind::Bool; }
  bool is_sequence() const { return kind == Kind::List || kind == Kind::Tuple; }
  int64_t as_int() const { return kind == Kind::Bool ? int64_t(b) : i; }
  double as_double() const { return kind == Kind::Float ? f : double(as_int()); }
};

struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
  // Argument `pos` (positional index) or keyword `name`; `def` when absent. Throws if given both ways.
  Value get(size_t pos, std::string_view name, Value def = Value()) const;
  const Value* kwarg(std::string_view name) const;
  // Fails if there are positional arguments beyond `max_pos` or keywords not in `names`.
  void check(std::string_view fn_name, size_t max_pos, std::initializer_list<std::string_view> names) const;
};

// The Dict key of a string or an integer value (other key types throw: unsupported here, as jinja2 templates use
// none); the key's value back from its Dict key.
std::string dict_key(const Value& key);
Value key_value(const std::string& dict_key);
// markupsafe.escape of a string: & < > ' " as HTML entities.
std::string escape_html(std::string_view s);

// --- UTF-8 ---------------------------------------------------------------------------------------------------
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void utf8_append(std::string& out, char32_t cp);
size_t utf8_length(std::string_view s);
bool py_isspace(char32_t c);
char32_t to_upper(char32_t c);
char32_t to_lower(char32_t c);
bool is_cased_lower(char32_t c);
bool is_cased_upper(char32_t c);

// --- Python semantics -------------------------------------------------------------------------------------------
bool truthy(const Value& v);
bool py_equal(const Value& a, const Value& b);
// -1, 0, 1 as Python's < would order them; throws TypeError text for unorderable types.
int py_compare(const Value& a, const Value& b);
std::string type_name(const Value& v);         // Python's type name: "str", "dict", "NoneType", ...
std::string object_type_repr(const Value& v);  // jinja2's object_type_repr: "dict object", "None", ...
std::string py_str(const Value& v);            // str(v); Undefined -> ""
std::string py_repr(const Value& v);           // repr(v)
std::string py_float_repr(double d);
std::string py_string_repr(std::string_view s);
[[noreturn]] void fail_undefined(const Value& v);
// The items a for loop (or list()) visits: list/tuple items, dict keys, string characters; Undefined -> none.
List iterate(const Value& v);
int64_t py_len(const Value& v);

struct JsonOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: one line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonOptions& opt);
Value from_json(const nlohmann::ordered_json& j);

// --- Builtins ---------------------------------------------------------------------------------------------------
using FilterFn = Value (*)(const Value& input, CallArgs& args);
using TestFn = bool (*)(const Value& input, CallArgs& args);
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);
// `obj.name` as the sandboxed environment resolves it: a method of str/dict/list, else an item, else Undefined.
Value get_attr(const Value& obj, const std::string& name);
// `obj[key]`: an item, else (for string keys) an attribute, else Undefined.
Value get_item(const Value& obj, const Value& key);
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
Value call_value(const Value& callee, CallArgs& args);

// Arithmetic as Python does it (TypeError/ZeroDivisionError -> RenderError).
Value binary_op(std::string_view op, const Value& a, const Value& b);
bool contains(const Value& container, const Value& item);

}  // namespace moep::jinja::detail
