// A compact Jinja2 interpreter for Hugging Face chat templates.
//
// It renders the subset of Jinja2 that chat templates use, with the environment `transformers` builds in
// apply_chat_template (utils/chat_template_utils.py, _compile_jinja_template):
//   ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, generation tag]),
//   default Undefined, keep_trailing_newline=False, globals raise_exception(msg) and strftime_now(fmt), and the
//   `tojson` filter replaced by json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
// Values behave like the Python objects jinja2 would see: dicts keep their key order, strings are sequences of
// code points, ints and floats stay distinct, str() and repr() print as Python does.
//
// Supported: {{ }}, {% %}, {# #}, whitespace control (- and +), raw; if/elif/else, for (loop.*, else, `if`
// filter, tuple targets, break/continue), set (names, tuples, ns.attr, block set), macro/call (varargs,
// kwargs, caller), filter blocks, with, generation. Expressions: literals, lists, dicts, tuples,
// attribute/subscript/slices, arithmetic, ~, comparisons (chained), and/or/not, in/not in, is-tests, ternaries,
// filters, calls with *args/**kwargs, methods of str/dict/list. Globals: namespace, range, dict,
// raise_exception, strftime_now. Filters and tests: see jinja_builtins.cpp.
// Dict keys are strings or integers (Seed-OSS's thinking-budget table). |safe (and |escape) make markupsafe Markup
// values: a plain string joined to one with + or % is HTML-escaped, ~ gives a plain string (autoescape is off).
// Not supported (a clear error): template inheritance/includes/imports, recursive loops, dict keys of other types,
// {% do %} (also an error in transformers' environment, which lacks the `do` extension).
// Known differences: filters that jinja2 implements as generators (select, map, ...) return lists here (on falsy
// input they return an empty list without looking at their arguments, as jinja2's generators yield nothing);
// str methods and filters other than |string on a Markup value give plain strings;
// upper/lower/title know the case mappings of Latin, Greek and Cyrillic only; ints are 64-bit (overflow is an
// error, where Python would switch to big integers).
//
// Thread-safety: a parsed Template is immutable; render() may run on several threads at once.
#pragma once

#include <chrono>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moep::jinja {

// Thrown when a template calls raise_exception(message). what() is the full one-line error (template name and
// line); message() is the template's own text, as jinja2's TemplateError would carry it.
class TemplateRaised : public Error {
 public:
  TemplateRaised(const std::string& what, std::string message) : Error(what), message_(std::move(message)) {}
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

struct RenderOptions {
  // The time strftime_now() formats (local time); nullopt means now.
  std::optional<std::time_t> now;
  // The budget of one render: a template comes with a model, from anyone, and runs on every chat request. Steps
  // are loop iterations, calls (macros, functions, methods), filters and tests, and elements of the lists and dicts
  // built; max_output_bytes bounds the output and any one string. The defaults are far above what real chat
  // templates use (the largest stored under tests/data takes a few thousand steps for a long conversation) and stop
  // a runaway template within about a second. Exceeding either is a moep::Error naming the template and the limit.
  int64_t max_steps = 500'000;
  size_t max_output_bytes = size_t(32) << 20;
  // A time by which rendering must be done (the server's --request-timeout): past it, a step throws moep::Error
  // saying so. Steps can be slow (a loop copying a long string), so the step budget alone does not bound the time.
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

namespace detail {
struct Program;
}

class Template {
 public:
  // Parses `source`. A syntax error throws moep::Error "<name>: syntax error at line L, column C: <what>".
  explicit Template(std::string_view source, std::string name = "template");
  ~Template();
  Template(const Template&) = delete;
  Template& operator=(const Template&) = delete;
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `variables` (a JSON object, or null for none). A runtime error throws moep::Error
  // "<name>: line L: <what>"; raise_exception(msg) throws TemplateRaised.
  std::string render(const nlohmann::ordered_json& variables, const RenderOptions& options = {}) const;

  const std::string& name() const { return name_; }
  // The template's text (line endings normalized).
  const std::string& source() const { return source_; }

 private:
  std::string name_;
  std::string source_;  // normalized source, for line numbers in runtime errors
  std::unique_ptr<const detail::Program> program_;
};

}  // namespace moep::jinja
