// The output parsers of `moep serve` (src/server/tool_calls.h): each family's tool-call format, <think> reasoning,
// output that is not the format (returned as content), and the stream splitter, which must send what a whole parse
// gives, as deltas, whatever the pieces the text arrives in.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "server/tool_calls.h"

namespace moep::server {
namespace {

OutputFormat tools(ToolCallFormat f) {
  OutputFormat o;
  o.tools = f;
  return o;
}

std::string read_template(const std::string& name) {
  std::ifstream f(std::string(MOEP_TESTDATA_DIR) + "/chat_templates/" + name);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Streams `text` in pieces cut at random places; returns what the deltas add up to.
ParsedOutput stream_in_pieces(const OutputFormat& f, const std::string& text, std::mt19937& rng) {
  int ids = 0;
  OutputStream st(f, [&] { return "id" + std::to_string(ids++); });
  ParsedOutput got;
  auto add = [&](const OutputDelta& d) {
    got.reasoning += d.reasoning;
    got.content += d.content;
    for (const ToolCallDelta& t : d.tool_calls) {
      if (t.index == got.tool_calls.size()) {
        EXPECT_FALSE(t.name.empty()) << "the first delta of a call names it";
        got.tool_calls.push_back({t.id, t.name, "", true, false});
      }
      ASSERT_LT(t.index, got.tool_calls.size());
      if (t.index + 1 != got.tool_calls.size()) ADD_FAILURE() << "a delta for an earlier call";
      got.tool_calls[t.index].arguments += t.arguments;
    }
  };
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = 1 + rng() % 7;
    add(st.push(std::string_view(text).substr(i, n)));
    i += n;
  }
  add(st.finish());
  return got;
}

// The whole parse, checked against the stream of the same text in random pieces (several cuttings).
ParsedOutput parse_both(const OutputFormat& f, const std::string& text) {
  const ParsedOutput whole = parse_output(f, text, false);
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 8; ++trial) {
    const ParsedOutput s = stream_in_pieces(f, text, rng);
    EXPECT_EQ(s.reasoning, whole.reasoning) << text;
    EXPECT_EQ(s.content, whole.content) << text;
    EXPECT_EQ(s.tool_calls.size(), whole.tool_calls.size()) << text;
    for (size_t k = 0; k < std::min(s.tool_calls.size(), whole.tool_calls.size()); ++k) {
      EXPECT_EQ(s.tool_calls[k].name, whole.tool_calls[k].name) << text;
      EXPECT_EQ(s.tool_calls[k].arguments, whole.tool_calls[k].arguments) << text;
    }
  }
  return whole;
}

void expect_call(const ParsedOutput& p, size_t k, const std::string& name, const std::string& args_json) {
  ASSERT_GT(p.tool_calls.size(), k);
  EXPECT_EQ(p.tool_calls[k].name, name);
  EXPECT_TRUE(p.tool_calls[k].done);
  EXPECT_EQ(nlohmann::json::parse(p.tool_calls[k].arguments), nlohmann::json::parse(args_json))
      << p.tool_calls[k].arguments;
}

TEST(ToolCalls, DetectsTheFormatFromTheTemplate) {
  EXPECT_EQ(detect_output_format(read_template("qwen3.jinja"), "").tools, ToolCallFormat::Hermes);
  EXPECT_TRUE(detect_output_format(read_template("qwen3.jinja"), "").think);
  EXPECT_EQ(detect_output_format(read_template("mistral_7b_instruct_v0.3_tools_2024.jinja"), "").tools,
            ToolCallFormat::Mistral);
  EXPECT_EQ(detect_output_format(read_template("deepseek_v3.jinja"), "").tools, ToolCallFormat::DeepSeekV3);
  EXPECT_EQ(detect_output_format(read_template("dbrx_instruct.jinja"), "").tools, ToolCallFormat::None);
  EXPECT_FALSE(detect_output_format(read_template("dbrx_instruct.jinja"), "").think);
  EXPECT_EQ(detect_output_format("<|start_header_id|>ipython {\"name\": function name, \"parameters\": ...}", "").tools,
            ToolCallFormat::Llama3);
  EXPECT_TRUE(detect_output_format("{{ content.split('</think>')[-1] }}", "").think);  // DeepSeek-R1 distills
  // The prompt opened <think> (Qwen3 thinking, DeepSeek-R1): the output starts inside it.
  EXPECT_TRUE(detect_output_format("<think>", "<|im_start|>assistant\n<think>\n").starts_in_think);
  EXPECT_FALSE(detect_output_format("<think>", "<|im_start|>assistant\n<think>\n\n</think>\n\n").starts_in_think);
}

TEST(ToolCalls, Hermes) {
  const OutputFormat f = tools(ToolCallFormat::Hermes);
  ParsedOutput p = parse_both(f, "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                                 "\"Paris\", \"days\": [1, 2]}}\n</tool_call>");
  EXPECT_EQ(p.content, "Let me check.");
  expect_call(p, 0, "get_weather", R"({"city": "Paris", "days": [1, 2]})");
  EXPECT_EQ(p.tool_calls[0].arguments, R"({"city": "Paris", "days": [1, 2]})");  // as written
  p = parse_both(f, "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"s\": \"}{</tool_call>\\\"\"}}\n</tool_call>\n"
                    "<tool_call>\n{\"arguments\": {}, \"name\": \"b\"}\n</tool_call>");
  EXPECT_EQ(p.content, "");
  expect_call(p, 0, "a", R"({"s": "}{</tool_call>\""})");
  expect_call(p, 1, "b", "{}");
  // Quoted arguments are the text they hold; no arguments are {}.
  p = parse_both(f, "<tool_call>{\"name\": \"q\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>");
  expect_call(p, 0, "q", R"({"x": 1})");
  p = parse_both(f, "<tool_call>{\"name\": \"n\"}</tool_call>");
  expect_call(p, 0, "n", "{}");
  // Only the first call when parallel calls are off.
  OutputFormat one = f;
  one.max_tool_calls = 1;
  p = parse_both(one, "<tool_call>{\"name\": \"a\"}</tool_call><tool_call>{\"name\": \"b\"}</tool_call>");
  ASSERT_EQ(p.tool_calls.size(), 1u);
  EXPECT_EQ(p.tool_calls[0].name, "a");
}

TEST(ToolCalls, Mistral) {
  const OutputFormat f = tools(ToolCallFormat::Mistral);
  ParsedOutput p = parse_both(f, "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, "
                                 "\"id\": \"abcDEF123\"}, {\"name\": \"now\", \"arguments\": {}}]");
  EXPECT_EQ(p.content, "");
  expect_call(p, 0, "get_weather", R"({"city": "Paris"})");
  EXPECT_EQ(p.tool_calls[0].id, "abcDEF123");
  expect_call(p, 1, "now", "{}");
  p = parse_both(f, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]now[CALL_ID]x1y2z3w4v[ARGS]{}");
  expect_call(p, 0, "get_weather", R"({"city": "Paris"})");
  expect_call(p, 1, "now", "{}");
  EXPECT_EQ(p.tool_calls[1].id, "x1y2z3w4v");
}

TEST(ToolCalls, Llama3) {
  const OutputFormat f = tools(ToolCallFormat::Llama3);
  ParsedOutput p = parse_both(f, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}");
  EXPECT_EQ(p.content, "");
  expect_call(p, 0, "get_weather", R"({"city": "Paris"})");
  p = parse_both(f, "<|python_tag|>{\"type\": \"function\", \"name\": \"a\", \"parameters\": {\"x\": 1}}; "
                    "{\"name\": \"b\", \"parameters\": {}}");
  expect_call(p, 0, "a", R"({"x": 1})");
  expect_call(p, 1, "b", "{}");
  // JSON that is not a call, and text, are the answer.
  p = parse_both(f, "{\"answer\": 42}");
  EXPECT_EQ(p.content, "{\"answer\": 42}");
  EXPECT_TRUE(p.tool_calls.empty());
  p = parse_both(f, "The weather is {\"name\": \"x\"} nice.");
  EXPECT_EQ(p.content, "The weather is {\"name\": \"x\"} nice.");
  EXPECT_TRUE(p.tool_calls.empty());
}

TEST(ToolCalls, DeepSeekV3) {
  const OutputFormat f = tools(ToolCallFormat::DeepSeekV3);
  ParsedOutput p = parse_both(
      f, "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": "
         "\"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>now\n```json\n{}\n```"
         "<｜tool▁call▁end｜><｜tool▁calls▁end｜>");
  EXPECT_EQ(p.content, "Checking.");
  expect_call(p, 0, "get_weather", R"({"city": "Paris"})");
  expect_call(p, 1, "now", "{}");
  // V3.1: name<｜tool▁sep｜>arguments.
  p = parse_both(f, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\"}"
                    "<｜tool▁call▁end｜><｜tool▁calls▁end｜>");
  expect_call(p, 0, "get_weather", R"({"city": "Oslo"})");
}

TEST(ToolCalls, WhatDoesNotParseIsContent) {
  const std::pair<ToolCallFormat, std::string> cases[] = {
      {ToolCallFormat::Hermes, "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": }}\n</tool_call>"},
      {ToolCallFormat::Hermes, "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}"},  // never closed
      {ToolCallFormat::Hermes, "<tool_call>not json</tool_call>"},
      {ToolCallFormat::Hermes, "<tool_call>{\"arguments\": {}}</tool_call>"},  // no name
      {ToolCallFormat::Mistral, "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {]"},
      {ToolCallFormat::Mistral, "[TOOL_CALLS] nonsense without args"},
      {ToolCallFormat::DeepSeekV3, "<｜tool▁calls▁begin｜>garbage"},
      {ToolCallFormat::Llama3, "<|python_tag|>print(1)"},
  };
  for (const auto& [format, text] : cases) {
    const ParsedOutput p = parse_output(tools(format), text, false);
    EXPECT_TRUE(p.tool_calls.empty()) << text;
    EXPECT_EQ(p.content, text) << format_name(format);
  }
  // Plain answers, and text that only looks like the start of a marker, come through whole.
  for (const std::string& text : {std::string("Hello <tool"), std::string("a < b and [TOOL_C"), std::string("")}) {
    const ParsedOutput p = parse_both(tools(ToolCallFormat::Hermes), text);
    EXPECT_EQ(p.content, text);
  }
}

TEST(ToolCalls, PlainAnswersStreamAsTheyCome) {
  OutputStream st(OutputFormat(), [] { return std::string("unused"); });
  EXPECT_EQ(st.push("Hello <tool").content, "Hello <tool");  // no format: nothing is held back
  EXPECT_EQ(st.push(" \n").content, " \n");
  EXPECT_TRUE(st.finish().empty());
  EXPECT_EQ(parse_both(OutputFormat(), "a <think> b \n").content, "a <think> b \n");
}

TEST(ToolCalls, StreamSendsTheNameFirstThenArgumentDeltas) {
  int n = 0;
  OutputStream st(tools(ToolCallFormat::Hermes), [&] { return "call_" + std::to_string(n++); });
  OutputDelta d = st.push("Sure.\n<tool");
  EXPECT_EQ(d.content, "Sure.");  // "<tool" is held back: it may begin a call
  EXPECT_TRUE(d.tool_calls.empty());
  d = st.push("_call>\n{\"name\": \"get_wea");
  EXPECT_TRUE(d.empty());  // the name is not whole yet
  d = st.push("ther\", \"arguments\": {\"ci");
  ASSERT_EQ(d.tool_calls.size(), 1u);
  EXPECT_EQ(d.tool_calls[0].name, "get_weather");
  EXPECT_EQ(d.tool_calls[0].id, "call_0");
  EXPECT_EQ(d.tool_calls[0].arguments, "{\"ci");
  d = st.push("ty\": \"Paris\"}}\n</tool_call>");
  ASSERT_EQ(d.tool_calls.size(), 1u);
  EXPECT_TRUE(d.tool_calls[0].name.empty());
  EXPECT_EQ(d.tool_calls[0].arguments, "ty\": \"Paris\"}");
  EXPECT_TRUE(st.finish().empty());
  ASSERT_EQ(st.tool_calls().size(), 1u);
  EXPECT_EQ(st.tool_calls()[0].arguments, "{\"city\": \"Paris\"}");
}

TEST(ToolCalls, Reasoning) {
  OutputFormat f;
  f.think = true;
  ParsedOutput p = parse_both(f, "<think>\nLet me think.\n</think>\n\nThe answer is 4.");
  EXPECT_EQ(p.reasoning, "Let me think.");
  EXPECT_EQ(p.content, "The answer is 4.");
  f.starts_in_think = true;  // the prompt opened <think>
  p = parse_both(f, "Hmm, 2+2.\n</think>\n\n4");
  EXPECT_EQ(p.reasoning, "Hmm, 2+2.");
  EXPECT_EQ(p.content, "4");
  p = parse_both(f, "cut off while thinking");  // max_tokens ended it inside
  EXPECT_EQ(p.reasoning, "cut off while thinking");
  EXPECT_EQ(p.content, "");
  f.starts_in_think = false;
  p = parse_both(f, "No thinking here.");
  EXPECT_EQ(p.reasoning, "");
  EXPECT_EQ(p.content, "No thinking here.");
  // Reasoning, then a tool call (Qwen3).
  f.tools = ToolCallFormat::Hermes;
  p = parse_both(f, "<think>\nneeds a tool\n</think>\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n"
                    "</tool_call>");
  EXPECT_EQ(p.reasoning, "needs a tool");
  EXPECT_EQ(p.content, "");
  expect_call(p, 0, "f", R"({"a": 1})");
}

}  // namespace
}  // namespace moep::server
