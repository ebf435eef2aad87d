// Tests of the Jinja interpreter (src/text/jinja.h).
//
// tests/data/chat_templates/jinja_cases.json holds the bulk of the cases: a template, an optional context, and
// the output expected from jinja2 as transformers configures it (derived by reasoning about jinja2's
// semantics), or the error expected. tests/reference/make_chat_vectors.py renders the same cases with jinja2
// itself into jinja_vectors.json; when that file is present every case is also checked against jinja2's output.
#include <gtest/gtest.h>

#include <chrono>
#include <set>

#include <fstream>
#include <sstream>

#include "test_util.h"
#include "text/jinja.h"

namespace moep {
namespace {

using nlohmann::ordered_json;

std::string render(const std::string& src, const ordered_json& vars = ordered_json::object(), const jinja::RenderOptions& opt = {}) {
  return jinja::Template(src, "test").render(vars, opt);
}

std::optional<ordered_json> read_json_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  return ordered_json::parse(ss.str());
}

// Renders one case; returns the output, or "ERROR: <what>" / "RAISED: <message>".
std::string run_case(const ordered_json& c) {
  ordered_json ctx = c.contains("context") ? c["context"] : ordered_json::object();
  try {
    return render(c["template"].get<std::string>(), ctx);
  } catch (const jinja::TemplateRaised& e) {
    return "RAISED: " + e.message();
  } catch (const Error& e) {
    return std::string("ERROR: ") + e.what();
  }
}

TEST(Jinja, CasesMatchExpectedOutputs) {
  auto cases = read_json_file(test::testdata_path("chat_templates/jinja_cases.json"));
  ASSERT_TRUE(cases.has_value()) << "missing tests/data/chat_templates/jinja_cases.json";
  ASSERT_GT(cases->size(), 100u);
  for (const auto& c : *cases) {
    const std::string name = c["name"].get<std::string>();
    std::string got = run_case(c);
    if (c.contains("expected")) {
      EXPECT_EQ(got, c["expected"].get<std::string>()) << name << "\ntemplate: " << c["template"].get<std::string>();
    } else if (c.contains("raises")) {
      EXPECT_EQ(got, "RAISED: " + c["raises"].get<std::string>()) << name;
    } else {
      EXPECT_EQ(got.rfind("ERROR: ", 0), 0u) << name << ": expected an error, got output '" << got << "'";
      EXPECT_NE(got.find(c["error"].get<std::string>()), std::string::npos) << name << ": " << got;
    }
  }
}

// The same cases rendered by jinja2 (transformers' environment) on the reference machine.
TEST(Jinja, CasesMatchJinja2) {
  auto vectors = read_json_file(test::testdata_path("chat_templates/jinja_vectors.json"));
  if (!vectors) GTEST_SKIP() << "tests/data/chat_templates/jinja_vectors.json not generated yet (run tests/reference/make_chat_vectors.py)";
  // Where jinja2 prints a Python object this interpreter does not model (a sliced range prints as
  // "range(3, 5)"; here ranges are lists). Checked against the hand-derived output in the test above.
  const std::set<std::string> known_differences = {"slices"};
  size_t checked = 0;
  for (const auto& c : *vectors) {
    const std::string name = c["name"].get<std::string>();
    if (known_differences.count(name)) continue;
    std::string got = run_case(c);
    if (c.contains("expected")) {
      EXPECT_EQ(got, c["expected"].get<std::string>()) << name << "\ntemplate: " << c["template"].get<std::string>();
    } else if (c.contains("raises")) {
      EXPECT_EQ(got, "RAISED: " + c["raises"].get<std::string>()) << name;
    } else {
      EXPECT_EQ(got.rfind("ERROR: ", 0), 0u) << name << ": jinja2 raised " << c.value("error", "") << ", we rendered '" << got << "'";
    }
    ++checked;
  }
  EXPECT_GT(checked, 0u);
}

// Falsy input to select/map & co., integer dict keys and Markup semantics, each rendered by jinja2 itself
// (tests/reference/make_jinja_fix_vectors.py); these are where moep once differed from jinja2 on real templates.
TEST(Jinja, FixesMatchJinja2) {
  auto doc = read_json_file(test::testdata_path("chat_templates/jinja_fix_vectors.json"));
  ASSERT_TRUE(doc.has_value()) << "missing tests/data/chat_templates/jinja_fix_vectors.json";
  const ordered_json& cases = (*doc)["cases"];
  ASSERT_GE(cases.size(), 30u);
  size_t errors = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"].get<std::string>();
    const std::string got = run_case(c);
    if (c.contains("expected")) {
      EXPECT_EQ(got, c["expected"].get<std::string>()) << name << "\ntemplate: " << c["template"].get<std::string>();
    } else {
      ++errors;
      EXPECT_EQ(got.rfind("ERROR: ", 0), 0u) << name << ": jinja2 raised " << c["error"] << ", we rendered '" << got << "'";
    }
  }
  EXPECT_GE(errors, 2u);  // a list as a key and Markup + int
}

TEST(Jinja, SyntaxErrorNamesLineAndColumn) {
  try {
    jinja::Template("line one\n{% if x %}\n  {{ 1 + }}\n{% endif %}", "my_template");
    FAIL() << "expected a syntax error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("my_template: syntax error at line 3, column 10"), std::string::npos) << what;
  }
}

TEST(Jinja, UnclosedBlockIsReported) {
  try {
    jinja::Template("{% for m in messages %}\n{{ m }}\n", "t");
    FAIL() << "expected a syntax error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("endfor"), std::string::npos) << what;
    EXPECT_NE(what.find("'for' tag"), std::string::npos) << what;
  }
}

TEST(Jinja, RuntimeErrorNamesLine) {
  jinja::Template t("a\nb\n{{ 'x' + 1 }}", "rt");
  try {
    t.render(ordered_json::object());
    FAIL() << "expected a runtime error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("rt: line 3:"), std::string::npos) << what;
    EXPECT_NE(what.find("can only concatenate str"), std::string::npos) << what;
  }
}

TEST(Jinja, RaiseExceptionCarriesTheMessage) {
  jinja::Template t("{% if messages | length == 0 %}{{ raise_exception('No messages!') }}{% endif %}ok", "r");
  EXPECT_EQ(t.render({{"messages", {1}}}), "ok");
  try {
    t.render({{"messages", ordered_json::array()}});
    FAIL() << "expected TemplateRaised";
  } catch (const jinja::TemplateRaised& e) {
    EXPECT_EQ(e.message(), "No messages!");
    EXPECT_NE(std::string(e.what()).find("r: raise_exception at line 1: No messages!"), std::string::npos) << e.what();
  }
}

TEST(Jinja, StrftimeNowUsesTheGivenTime) {
  jinja::RenderOptions opt;
  std::tm tm{};
  tm.tm_year = 2024 - 1900;
  tm.tm_mon = 6;  // July
  tm.tm_mday = 26;
  tm.tm_hour = 12;
  tm.tm_isdst = -1;
  opt.now = std::mktime(&tm);  // local time, as strftime_now formats local time
  EXPECT_EQ(render("Today Date: {{ strftime_now('%d %b %Y') }}", ordered_json::object(), opt), "Today Date: 26 Jul 2024");
}

TEST(Jinja, TemplateIsReusableAndIndependentBetweenRenders) {
  jinja::Template t("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", "t");
  EXPECT_EQ(t.render({{"messages", {1, 2, 3}}}), "3");
  EXPECT_EQ(t.render({{"messages", {1}}}), "1");
  EXPECT_EQ(t.render(nullptr), "0");
}

TEST(Jinja, VariablesMustBeAnObject) { EXPECT_THROW(jinja::Template("x", "t").render(ordered_json::array()), Error); }

TEST(Jinja, RecursiveMacroIsBounded) {
  jinja::Template t("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "t");
  try {
    t.render(ordered_json::object());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nested too deeply"), std::string::npos) << e.what();
  }
}

TEST(Jinja, RecursiveMacroRendersNestedData) {
  // The shape of templates that print JSON schemas with a recursive macro.
  const char* src =
      "{%- macro show(v) -%}"
      "{%- if v is mapping -%}{{ '{' }}{% for k, x in v | items %}{{ k }}:{{ show(x) }}{{ ',' if not loop.last }}{% endfor %}{{ '}' }}"
      "{%- elif v is iterable and v is not string -%}[{% for x in v %}{{ show(x) }}{{ ',' if not loop.last }}{% endfor %}]"
      "{%- else -%}{{ v }}{%- endif -%}"
      "{%- endmacro -%}"
      "{{ show(data) }}";
  EXPECT_EQ(render(src, {{"data", {{"a", {1, 2}}, {"b", {{"c", "x"}}}}}}), "{a:[1,2],b:{c:x}}");
}

TEST(Jinja, DeepNestingIsASyntaxErrorNotACrash) {
  std::string src = "{{ " + std::string(2000, '(') + "1" + std::string(2000, ')') + " }}";
  EXPECT_THROW(jinja::Template(src, "deep"), Error);
}

// The error of rendering `src` (or of parsing it), "" if it renders.
std::string render_error(const std::string& src, const jinja::RenderOptions& opt = {}) {
  try {
    render(src, ordered_json::object(), opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string repeated(const std::string& piece, int n) {
  std::string out;
  out.reserve(piece.size() * size_t(n));
  for (int i = 0; i < n; ++i) out += piece;
  return out;
}

// The deep-nesting inputs of issue 21, each a stack overflow before: an error naming the template and the limit.
TEST(JinjaLimits, DeepNestingIsAnErrorNamingTheLimit) {
  const std::string ifs = repeated("{% if true %}", 100000) + "x" + repeated("{% endif %}", 100000);
  std::string m = render_error(ifs);
  EXPECT_NE(m.find("test: syntax error"), std::string::npos) << m;
  EXPECT_NE(m.find("nested more than 300 levels deep"), std::string::npos) << m;
  for (const std::string& chain : {"{{ 'x'" + repeated("|trim", 100000) + " }}", "{{ 1" + repeated(" + 1", 100000) + " }}",
                                   "{{ x" + repeated(".a", 100000) + " }}", "{{ f" + repeated("()", 100000) + " }}"}) {
    m = render_error(chain);
    EXPECT_NE(m.find("expression nested more than 300 levels deep"), std::string::npos) << m.substr(0, 300);
  }
  // Below the limit, chains render.
  EXPECT_EQ(render("{{ 1" + repeated(" + 1", 250) + " }}"), "251");
  EXPECT_EQ(render("{{ ' x '" + repeated("|trim", 250) + " }}"), "x");
  EXPECT_EQ(render(repeated("{% if true %}", 250) + "y" + repeated("{% endif %}", 250)), "y");
}

// A value nested 100,000 deep by a loop: printing it recursed to the stack's end, and so did destroying it.
TEST(JinjaLimits, DeepValuesAreAnErrorAndAreFreedWithoutRecursion) {
  const std::string src =
      "{% set ns = namespace(x=0) %}{% for i in range(99999) %}{% set ns.x = [ns.x] %}{% endfor %}";
  EXPECT_EQ(render(src + "done"), "done");  // built and destroyed
  const std::string m = render_error(src + "{{ ns.x }}");
  EXPECT_NE(m.find("test: line 1: calls or values nested too deeply"), std::string::npos) << m;
  EXPECT_NE(m.find("KiB at most"), std::string::npos) << m;
  EXPECT_NE(render_error(src + "{{ ns.x | tojson }}").find("nested too deeply"), std::string::npos);
  EXPECT_NE(render_error(src + "{{ ns.x == ns.x }}").find("nested too deeply"), std::string::npos);
}

TEST(JinjaLimits, RunawayTemplatesStopWithinTwoSeconds) {
  struct Case {
    const char* what;
    std::string src;
    const char* error;
  };
  const std::vector<Case> cases = {
      {"nested range(99999) loops", "{% for i in range(99999) %}{% for j in range(99999) %}{{ i }}{% endfor %}{% endfor %}",
       "more than 500000 steps"},
      {"a list appended to in a loop",
       "{% set ns = namespace(l=[]) %}{% for i in range(99999) %}{% for j in range(99999) %}{% set ns.l = ns.l + [j] %}"
       "{% endfor %}{% endfor %}",
       "more than 500000 steps"},
      {"a string doubled in a loop",
       "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
       "more than 33554432 bytes"},
      {"output without end", "{% for i in range(99999) %}{{ 'x' * 1000 }}{% endfor %}", "more than 33554432 bytes"},
      {"a huge repetition", "{{ 'x' * 1000000000000 }}", "more than 33554432 bytes"},
      {"a huge list repetition", "{{ ([1] * 1000000000000) | length }}", "steps"},
      {"a huge padding", "{{ 'x' | center(1000000000000) }}", "more than 33554432 bytes"},
      {"a recursive macro fed by loops",
       "{% macro f(n) %}{% for i in range(1000) %}{{ f(n + 1) if n < 5 }}{% endfor %}{% endmacro %}{{ f(0) }}", "steps"},
  };
  for (const Case& c : cases) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string m = render_error(c.src);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(m.find("test: line"), std::string::npos) << c.what << ": " << m;
    EXPECT_NE(m.find(c.error), std::string::npos) << c.what << ": " << m;
    EXPECT_LT(seconds, 2.0) << c.what;
  }
}

TEST(JinjaLimits, BudgetIsOverridable) {
  const std::string loop = "{% for i in range(100) %}{{ i % 10 }}{% endfor %}";
  jinja::RenderOptions small;
  small.max_steps = 150;  // range's 100 elements and 100 iterations
  EXPECT_NE(render_error(loop, small).find("more than 150 steps"), std::string::npos) << render_error(loop, small);
  small.max_steps = 250;
  EXPECT_EQ(render(loop, ordered_json::object(), small).size(), 100u);
  jinja::RenderOptions tiny_output;
  tiny_output.max_output_bytes = 50;
  EXPECT_NE(render_error(loop, tiny_output).find("more than 50 bytes"), std::string::npos);
  // A larger budget lets more run: 2,000 x 1,000 iterations are more than the default allows.
  const std::string big = "{% for i in range(2000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}ok";
  EXPECT_NE(render_error(big).find("steps"), std::string::npos);
  jinja::RenderOptions large;
  large.max_steps = 10'000'000;
  EXPECT_EQ(render(big, ordered_json::object(), large), "ok");
}

// A deadline cuts off a render whose steps are few but slow (each copies 32 MB: minutes in all, far under the step
// budget), soon after it passes; a render that ends in time is untouched.
TEST(JinjaLimits, DeadlineCutsOffSlowSteps) {
  const std::string slow = "{% set s = 'x' * 16000000 %}{% for i in range(99999) %}{% set t = s ~ s %}{% endfor %}ok";
  jinja::RenderOptions o;
  o.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string m = render_error(slow, o);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(m.find("deadline"), std::string::npos) << m;
  EXPECT_LT(seconds, 1.5);
  o.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  EXPECT_EQ(render("{% for i in range(100) %}{% endfor %}ok", ordered_json::object(), o), "ok");
}

}  // namespace
}  // namespace moep
