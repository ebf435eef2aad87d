// The OpenAI request/response layer of `moep serve` alone (no HTTP, no engine): what each request body becomes,
// which bodies are refused with which status, param and code, the shape of responses and stream chunks, the
// Prometheus text, and the API-key comparison.
#include <gtest/gtest.h>

#include <string>

#include "server/metrics.h"
#include "server/openai_api.h"

namespace moep::server {
namespace {

using ojson = nlohmann::ordered_json;

RequestLimits limits() {
  RequestLimits l;
  l.model_id = "demo";
  l.max_context = 100;
  l.max_tokens_cap = 50;
  l.default_max_tokens = 20;
  return l;
}

// The ApiError that parsing `body` throws (status 0 if none).
ApiError refusal(Endpoint ep, const std::string& body) {
  try {
    parse_request(ep, body, limits());
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "no error");
}

TEST(ServerApi, ChatRequestBecomesMessagesAndParams) {
  const ApiRequest r = parse_request(Endpoint::Chat, R"({
      "model": "demo", "stream": true, "stream_options": {"include_usage": true},
      "messages": [{"role": "developer", "content": "be brief"},
                   {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                   {"role": "assistant", "content": null},
                   {"role": "user", "content": "c", "name": "bob"}],
      "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "min_p": 0.2, "repetition_penalty": 1.3,
      "seed": 42, "stop": ["x", "", "yy"], "n": 1, "presence_penalty": 0, "logprobs": false, "user": "u1",
      "unknown_field": {"ignored": true}})",
                                     limits());
  EXPECT_EQ(r.model, "demo");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0]["role"], "system");  // developer -> system
  EXPECT_EQ(r.messages[1]["content"], "a\nb");
  EXPECT_EQ(r.messages[2]["content"], "");
  EXPECT_EQ(r.messages[3]["name"], "bob");
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_EQ(r.params.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.params.top_p, 0.9f);
  EXPECT_EQ(r.params.top_k, 3);
  EXPECT_FLOAT_EQ(r.params.min_p, 0.2f);
  EXPECT_FLOAT_EQ(r.params.repetition_penalty, 1.3f);
  EXPECT_EQ(r.params.seed, 42u);
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"x", "yy"}));  // empty stop strings dropped
}

TEST(ServerApi, DefaultsAndSeeds) {
  RequestLimits l = limits();
  l.defaults.temperature = 0.3f;
  l.defaults.top_k = 7;
  ApiRequest r = parse_request(Endpoint::Completion, R"({"prompt": "hi"})", l);
  EXPECT_EQ(r.model, "demo");  // absent model: the one served
  EXPECT_EQ(r.prompt, "hi");
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FALSE(r.stream);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.3f);
  EXPECT_EQ(r.params.top_k, 7);
  EXPECT_EQ(r.params.seed, 0u);  // random
  // seed 0 is a fixed seed (the sampler's 0 would mean random); negative seeds are fine.
  EXPECT_NE(parse_request(Endpoint::Completion, R"({"prompt": "hi", "seed": 0})", l).params.seed, 0u);
  EXPECT_EQ(parse_request(Endpoint::Completion, R"({"prompt": "hi", "seed": -1})", l).params.seed, ~uint64_t(0));
  // null means absent; top_k -1 means off; max_completion_tokens wins over max_tokens; a one-string list is a prompt.
  r = parse_request(Endpoint::Completion,
                    R"({"prompt": ["hi"], "temperature": null, "top_k": -1, "max_tokens": 3,
                        "max_completion_tokens": 4, "stop": "s", "max_tokens_ignored": 1})",
                    l);
  EXPECT_EQ(r.prompt, "hi");
  EXPECT_FLOAT_EQ(r.params.temperature, 0.3f);
  EXPECT_EQ(r.params.top_k, 0);
  EXPECT_EQ(r.params.max_tokens, 4);
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"s"});
  EXPECT_EQ(parse_request(Endpoint::Completion, R"({"prompt": "x", "max_tokens": 5.0})", l).params.max_tokens, 5);
}

TEST(ServerApi, RefusalsNameTheField) {
  struct Case {
    Endpoint ep;
    const char* body;
    int status;
    const char* param;
    const char* code;
  };
  const Endpoint C = Endpoint::Chat, P = Endpoint::Completion;
  const Case cases[] = {
      {C, R"({"messages": [)", 400, "", "invalid_json"},
      {C, R"([1])", 400, "", "invalid_json"},
      {C, R"("text")", 400, "", "invalid_json"},
      {C, R"({})", 400, "messages", "missing_required_parameter"},
      {C, R"({"messages": {}})", 400, "messages", "invalid_type"},
      {C, R"({"messages": []})", 400, "messages", "invalid_value"},
      {C, R"({"messages": [1]})", 400, "messages[0]", "invalid_type"},
      {C, R"({"messages": [{"content": "x"}]})", 400, "messages[0].role", "missing_required_parameter"},
      {C, R"({"messages": [{"role": 1, "content": "x"}]})", 400, "messages[0].role", "invalid_type"},
      {C, R"({"messages": [{"role": "bot", "content": "x"}]})", 400, "messages[0].role", "invalid_value"},
      {C, R"({"messages": [{"role": "user"}]})", 400, "messages[0].content", "missing_required_parameter"},
      {C, R"({"messages": [{"role": "user", "content": 3}]})", 400, "messages[0].content", "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400,
       "messages[0].content[0].type", "unsupported_parameter"},
      {C, R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]})", 400,
       "messages[0].content[0].text", "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x", "name": 5}]})", 400, "messages[0].name", "invalid_type"},
      {C, R"({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})", 404, "model", "model_not_found"},
      {C, R"({"model": 1, "messages": [{"role": "user", "content": "x"}]})", 400, "model", "invalid_type"},
      {P, R"({})", 400, "prompt", "missing_required_parameter"},
      {P, R"({"prompt": 5})", 400, "prompt", "invalid_type"},
      {P, R"({"prompt": ["a", "b"]})", 400, "prompt", "unsupported_parameter"},
      {P, R"({"prompt": [1, 2, 3]})", 400, "prompt", "unsupported_parameter"},
      {P, R"({"prompt": "x", "max_tokens": "5"})", 400, "max_tokens", "invalid_type"},
      {P, R"({"prompt": "x", "max_tokens": 5.5})", 400, "max_tokens", "invalid_type"},
      {P, R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens", "invalid_value"},
      {P, R"({"prompt": "x", "max_tokens": 51})", 400, "max_tokens", "invalid_value"},
      {P, R"({"prompt": "x", "max_completion_tokens": 1e300})", 400, "max_completion_tokens", "invalid_type"},
      {P, R"({"prompt": "x", "temperature": "1"})", 400, "temperature", "invalid_type"},
      {P, R"({"prompt": "x", "temperature": 2.5})", 400, "temperature", "invalid_value"},
      {P, R"({"prompt": "x", "top_p": 0})", 400, "top_p", "invalid_value"},
      {P, R"({"prompt": "x", "top_p": 1.5})", 400, "top_p", "invalid_value"},
      {P, R"({"prompt": "x", "top_k": -2})", 400, "top_k", "invalid_value"},
      {P, R"({"prompt": "x", "min_p": -0.1})", 400, "min_p", "invalid_value"},
      {P, R"({"prompt": "x", "repetition_penalty": 0})", 400, "repetition_penalty", "invalid_value"},
      {P, R"({"prompt": "x", "seed": 1.5})", 400, "seed", "invalid_type"},
      {P, R"({"prompt": "x", "stream": 1})", 400, "stream", "invalid_type"},
      {P, R"({"prompt": "x", "stream_options": {"include_usage": "yes"}})", 400, "stream_options.include_usage",
       "invalid_type"},
      {P, R"({"prompt": "x", "stop": 1})", 400, "stop", "invalid_type"},
      {P, R"({"prompt": "x", "stop": ["a", null]})", 400, "stop[1]", "invalid_type"},
      {P, R"({"prompt": "x", "ignore_eos": "no"})", 400, "ignore_eos", "invalid_type"},
      {P, R"({"prompt": "x", "n": 2})", 400, "n", "unsupported_parameter"},
      {P, R"({"prompt": "x", "best_of": 3})", 400, "best_of", "unsupported_parameter"},
      {P, R"({"prompt": "x", "logprobs": 21})", 400, "logprobs", "invalid_value"},
      {P, R"({"prompt": "x", "logprobs": true})", 400, "logprobs", "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", 400, "logprobs", "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})", 400, "top_logprobs",
       "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", 400,
       "top_logprobs", "invalid_value"},
      {P, R"({"prompt": "x", "echo": true})", 400, "echo", "unsupported_parameter"},
      {P, R"({"prompt": "x", "suffix": "end"})", 400, "suffix", "unsupported_parameter"},
      {P, R"({"prompt": "x", "frequency_penalty": 1})", 400, "frequency_penalty", "unsupported_parameter"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": {}})", 400, "tools", "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{}]})", 400, "tools[0].type",
       "missing_required_parameter"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]})", 400,
       "tools[0].type", "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})", 400,
       "tools[0].function", "missing_required_parameter"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {}}]})", 400,
       "tools[0].function.name", "missing_required_parameter"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "a b"}}]})",
       400, "tools[0].function.name", "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f",
       "parameters": []}}]})", 400, "tools[0].function.parameters", "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}},
       {"type": "function", "function": {"name": "f"}}]})", 400, "tools[1].function.name", "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}],
       "tool_choice": {"type": "function", "function": {"name": "g"}}})", 400, "tool_choice", "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})", 400, "tool_choice",
       "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}],
       "tool_choice": "always"})", 400, "tool_choice", "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": "no"})", 400,
       "parallel_tool_calls", "invalid_type"},
      {C, R"({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function",
       "function": {"name": "f", "arguments": {"x": 1}}}]}]})", 400, "messages[0].tool_calls[0].function.arguments",
       "invalid_type"},
      {C, R"({"messages": [{"role": "assistant", "tool_calls": {}}]})", 400, "messages[0].tool_calls", "invalid_type"},
      {C, R"({"messages": [{"role": "tool", "content": "x", "tool_call_id": 3}]})", 400, "messages[0].tool_call_id",
       "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]})", 400, "functions",
       "unsupported_parameter"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"a": 5}})", 400, "logit_bias",
       "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"-1": 5}})", 400, "logit_bias",
       "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"7": 101}})", 400, "logit_bias.7",
       "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"7": "up"}})", 400, "logit_bias.7",
       "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": [1]})", 400, "logit_bias",
       "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}})", 400,
       "response_format.type", "invalid_value"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}})", 400,
       "response_format.json_schema", "missing_required_parameter"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
          "json_schema": {"schema": {"type": "object"}}}})", 400, "response_format.json_schema.name",
       "missing_required_parameter"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
          "json_schema": {"name": "a", "schema": "object"}}})", 400, "response_format.json_schema.schema",
       "invalid_type"},
      {C, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
          "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"age": {"type": "integer",
          "minimum": 0}}}}}})", 400, "response_format.json_schema.schema.properties.age.minimum", "invalid_schema"},
      {P, R"({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "a",
          "schema": {"type": "array", "items": {"type": "nope"}}}}})", 400,
       "response_format.json_schema.schema.items.type", "invalid_schema"},
  };
  for (const Case& c : cases) {
    const ApiError e = refusal(c.ep, c.body);
    EXPECT_EQ(e.status(), c.status) << c.body << " -> " << e.what();
    EXPECT_EQ(e.param(), c.param) << c.body << " -> " << e.what();
    EXPECT_EQ(e.code(), c.code) << c.body << " -> " << e.what();
    EXPECT_EQ(e.type(), "invalid_request_error") << c.body;
  }
  // Accepted: the defaults of options not implemented.
  EXPECT_EQ(refusal(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}], "tools": [], "n": 1,
      "response_format": {"type": "text"}, "logit_bias": {}, "frequency_penalty": 0.0, "top_logprobs": 0})")
                .status(),
            0);
}

TEST(ServerApi, LogprobsRequestsAndJson) {
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  EXPECT_EQ(parse_request(Endpoint::Chat, "{" + msgs + "}", limits()).logprobs, -1);
  EXPECT_EQ(parse_request(Endpoint::Chat, "{" + msgs + R"(, "logprobs": false, "top_logprobs": 0})", limits()).logprobs, -1);
  EXPECT_EQ(parse_request(Endpoint::Chat, "{" + msgs + R"(, "logprobs": true})", limits()).logprobs, 0);
  EXPECT_EQ(parse_request(Endpoint::Chat, "{" + msgs + R"(, "logprobs": true, "top_logprobs": 20})", limits()).logprobs, 20);
  EXPECT_EQ(parse_request(Endpoint::Completion, R"({"prompt": "x", "logprobs": 3})", limits()).logprobs, 3);
  EXPECT_EQ(parse_request(Endpoint::Completion, R"({"prompt": "x", "logprobs": null})", limits()).logprobs, -1);

  TokenLogprobs a, b;
  a.token = 7;
  a.logprob = -0.5f;
  a.n_top = 2;
  a.top_ids = {7, 9};
  a.top_logprobs = {-0.5f, -1.5f};
  b.token = 9;
  b.logprob = -2.f;
  b.n_top = 2;
  b.top_ids = {8, 9};
  b.top_logprobs = {-0.25f, -2.f};
  const std::vector<TokenLogprobs> toks = {a, b};
  auto text = [](int32_t id) { return id == 7 ? std::string("h\xc3\xa9") : id == 8 ? std::string("x") : std::string(" y"); };
  const ojson chat = chat_logprobs_json(toks, 1, text);
  ASSERT_EQ(chat["content"].size(), 2u);
  EXPECT_EQ(chat["content"][0]["token"], "h\xc3\xa9");
  EXPECT_EQ(chat["content"][0]["bytes"], ojson::parse("[104, 195, 169]"));
  EXPECT_FLOAT_EQ(chat["content"][0]["logprob"].get<float>(), -0.5f);
  ASSERT_EQ(chat["content"][1]["top_logprobs"].size(), 1u);  // n_top 1 of the 2 recorded
  EXPECT_EQ(chat["content"][1]["top_logprobs"][0]["token"], "x");
  EXPECT_TRUE(chat["refusal"].is_null());
  int64_t offset = 10;
  const ojson legacy = completion_logprobs_json(toks, 2, text, &offset);
  EXPECT_EQ(legacy["tokens"], ojson::parse(R"(["h\u00e9", " y"])"));
  EXPECT_EQ(legacy["text_offset"], ojson::parse("[10, 12]"));  // "hé" is 2 code points
  EXPECT_EQ(offset, 14);
  EXPECT_FLOAT_EQ(legacy["top_logprobs"][1]["x"].get<float>(), -0.25f);
  EXPECT_FLOAT_EQ(legacy["token_logprobs"][1].get<float>(), -2.f);
  const ojson whole = completion_json(Endpoint::Chat, "id", 1, "demo", "hé y", "stop", Usage{1, 2}, chat);
  EXPECT_EQ(whole["choices"][0]["logprobs"], chat);
  EXPECT_TRUE(completion_json(Endpoint::Chat, "id", 1, "demo", "t", "stop", Usage{})["choices"][0]["logprobs"].is_null());
}

TEST(ServerApi, ToolsToolChoiceAndToolMessages) {
  const ApiRequest r = parse_request(Endpoint::Chat, R"({
      "messages": [{"role": "user", "content": "weather?"},
                   {"role": "assistant", "content": null, "reasoning_content": "use the tool",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "18C"}],
      "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "now"}}],
      "tool_choice": {"type": "function", "function": {"name": "now"}}, "parallel_tool_calls": false})",
                                     limits());
  ASSERT_EQ(r.tools.size(), 2u);
  EXPECT_EQ(r.tools[0]["function"]["parameters"]["properties"]["city"]["type"], "string");
  EXPECT_EQ(r.tool_choice, ToolChoice::Function);
  EXPECT_EQ(r.tool_choice_name, "now");
  EXPECT_FALSE(r.parallel_tool_calls);
  EXPECT_TRUE(r.messages[1]["content"].is_null());
  EXPECT_EQ(r.messages[1]["reasoning_content"], "use the tool");
  EXPECT_EQ(r.messages[1]["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(r.messages[2]["tool_call_id"], "call_1");
  EXPECT_EQ(template_extra(r)["tools"], r.tools);
  const ToolCallConstraint c = tool_call_constraint(r);
  EXPECT_TRUE(c.required);
  EXPECT_EQ(c.allowed, std::vector<std::string>{"now"});
  EXPECT_FALSE(c.parallel);
  EXPECT_EQ(c.tools, &r.tools);

  const std::string base = R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]})";
  const ApiRequest req = parse_request(Endpoint::Chat, base.substr(0, base.size() - 1) + R"(, "tool_choice": "required"})", limits());
  EXPECT_EQ(req.tool_choice, ToolChoice::Required);
  EXPECT_EQ(tool_call_constraint(req).allowed, (std::vector<std::string>{"f", "g"}));
  const ApiRequest none = parse_request(Endpoint::Chat, base.substr(0, base.size() - 1) + R"(, "tool_choice": "none"})", limits());
  EXPECT_FALSE(template_extra(none).contains("tools"));  // "none": the model is not shown the tools
  EXPECT_FALSE(tool_call_constraint(none).required);
  const ApiRequest kw = parse_request(
      Endpoint::Chat, base.substr(0, base.size() - 1) + R"(, "chat_template_kwargs": {"enable_thinking": false}})", limits());
  EXPECT_EQ(template_extra(kw)["enable_thinking"], false);
  EXPECT_EQ(template_extra(kw)["tools"].size(), 2u);
  EXPECT_EQ(refusal(Endpoint::Chat, base.substr(0, base.size() - 1) + R"(, "chat_template_kwargs": {"tools": []}})").param(),
            "chat_template_kwargs.tools");
  EXPECT_EQ(refusal(Endpoint::Chat, base.substr(0, base.size() - 1) + R"(, "chat_template_kwargs": 1})").param(),
            "chat_template_kwargs");
  const ApiRequest autoc = parse_request(Endpoint::Chat, base, limits());
  EXPECT_EQ(autoc.tool_choice, ToolChoice::Auto);
  EXPECT_FALSE(tool_call_constraint(autoc).required);
}

TEST(ServerApi, ToolCallResponseShapes) {
  ParsedOutput out;
  out.reasoning = "thinking";
  out.tool_calls.push_back({"call_x", "get_weather", "{\"city\": \"Paris\"}", true, true});
  const ojson j = chat_completion_json("id", 1, "demo", out, "stop", Usage{3, 4});
  const ojson& m = j["choices"][0]["message"];
  EXPECT_TRUE(m["content"].is_null());
  EXPECT_EQ(m["reasoning_content"], "thinking");
  EXPECT_EQ(m["tool_calls"][0]["id"], "call_x");
  EXPECT_EQ(m["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(m["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(chat_completion_json("id", 1, "demo", out, "length", Usage{})["choices"][0]["finish_reason"], "length");
  ParsedOutput text_only;
  text_only.content = "hi";
  const ojson t = chat_completion_json("id", 1, "demo", text_only, "stop", Usage{});
  EXPECT_EQ(t["choices"][0]["message"]["content"], "hi");
  EXPECT_FALSE(t["choices"][0]["message"].contains("tool_calls"));
  EXPECT_FALSE(t["choices"][0]["message"].contains("reasoning_content"));
  EXPECT_EQ(t["choices"][0]["finish_reason"], "stop");

  OutputDelta first;
  first.tool_calls.push_back({0, "call_x", "get_weather", "{\"ci"});
  const ojson c1 = chat_delta_chunk_json("id", 1, "demo", first, "", false);
  const ojson& d1 = c1["choices"][0]["delta"];
  EXPECT_FALSE(d1.contains("content"));
  EXPECT_EQ(d1["tool_calls"][0]["index"], 0);
  EXPECT_EQ(d1["tool_calls"][0]["id"], "call_x");
  EXPECT_EQ(d1["tool_calls"][0]["type"], "function");
  EXPECT_EQ(d1["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(d1["tool_calls"][0]["function"]["arguments"], "{\"ci");
  OutputDelta more;
  more.reasoning = "r";
  more.tool_calls.push_back({0, "", "", "ty\": 1}"});
  const ojson c2 = chat_delta_chunk_json("id", 1, "demo", more, "", false);
  const ojson& d2 = c2["choices"][0]["delta"];
  EXPECT_FALSE(d2["tool_calls"][0].contains("id"));
  EXPECT_FALSE(d2["tool_calls"][0]["function"].contains("name"));
  EXPECT_EQ(d2["tool_calls"][0]["function"]["arguments"], "ty\": 1}");
  EXPECT_EQ(d2["reasoning_content"], "r");
}

TEST(ServerApi, LogitBias) {
  RequestLimits l = limits();
  l.vocab_size = 1000;
  const ApiRequest r = parse_request(
      Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"7": 100, "999": -2.5}})", l);
  EXPECT_EQ(r.params.logit_bias, (std::vector<std::pair<int32_t, float>>{{7, 100.f}, {999, -2.5f}}));
  try {
    parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1000": 1}})", l);
    FAIL() << "no error";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param(), "logit_bias");
    EXPECT_NE(std::string(e.what()).find("[0, 1000)"), std::string::npos) << e.what();
  }
}

TEST(ServerApi, ResponseFormatCompilesTheGrammar) {
  const RequestLimits l = limits();
  ApiRequest r = parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_object"}})", l);
  ASSERT_NE(r.grammar, nullptr);
  JsonMatcher any(r.grammar);
  EXPECT_TRUE(any.advance(R"({"a": [1, "b"]})") && any.complete());
  r = parse_request(Endpoint::Completion, R"({"prompt": "x", "response_format": {"type": "json_schema",
      "json_schema": {"name": "p", "strict": true, "schema": {"type": "object", "properties": {"n": {"enum": [1, 2]}},
      "required": ["n"], "additionalProperties": false}}}})", l);
  ASSERT_NE(r.grammar, nullptr);
  JsonMatcher m(r.grammar);
  EXPECT_FALSE(m.advance(R"({"n": 3})"));
  EXPECT_TRUE(m.advance(R"({"n": 2})") && m.complete());
  EXPECT_EQ(parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "text"}})", l).grammar, nullptr);
  // The message names the field and says which keywords are supported.
  const ApiError e = refusal(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}], "response_format":
      {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "format": "date"}}}})");
  EXPECT_NE(std::string(e.what()).find("'response_format.json_schema.schema.format': the keyword 'format' is not "
                                       "supported (supported: type, properties"),
            std::string::npos)
      << e.what();
}

TEST(ServerApi, StopStringLimits) {
  std::string many = R"({"prompt": "x", "stop": [)";
  for (int i = 0; i < 17; ++i) many += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\"";
  many += "]}";
  EXPECT_EQ(refusal(Endpoint::Completion, many).param(), "stop");
  EXPECT_EQ(refusal(Endpoint::Completion, R"({"prompt": "x", "stop": ")" + std::string(300, 'a') + "\"}").param(),
            "stop");
}

TEST(ServerApi, FitToContext) {
  const RequestLimits l = limits();  // context 100, default 20, cap 50
  ApiRequest r = parse_request(Endpoint::Completion, R"({"prompt": "x"})", l);
  fit_to_context(r, 10, l);
  EXPECT_EQ(r.params.max_tokens, 20);  // the default
  r = parse_request(Endpoint::Completion, R"({"prompt": "x"})", l);
  fit_to_context(r, 95, l);
  EXPECT_EQ(r.params.max_tokens, 5);  // cut to the context left
  r = parse_request(Endpoint::Completion, R"({"prompt": "x", "max_tokens": 50})", l);
  fit_to_context(r, 50, l);  // exactly fits
  EXPECT_EQ(r.params.max_tokens, 50);
  r = parse_request(Endpoint::Completion, R"({"prompt": "x", "max_tokens": 50})", l);
  try {
    fit_to_context(r, 51, l);
    FAIL() << "no error";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.code(), "context_length_exceeded");
    EXPECT_EQ(e.param(), "prompt");
    EXPECT_NE(std::string(e.what()).find("maximum context length is 100 tokens"), std::string::npos) << e.what();
  }
  r = parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}]})", l);
  try {
    fit_to_context(r, 100, l);  // no room for even one token
    FAIL() << "no error";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.code(), "context_length_exceeded");
    EXPECT_EQ(e.param(), "messages");
  }
  r = parse_request(Endpoint::Completion, R"({"prompt": ""})", l);
  EXPECT_THROW(fit_to_context(r, 0, l), ApiError);
}

TEST(ServerApi, ResponseShapes) {
  const ojson chat = completion_json(Endpoint::Chat, "chatcmpl-1", 1700000000, "demo", "hello", "stop", {5, 2});
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], "hello");
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(chat["usage"]["total_tokens"], 7);
  const ojson text = completion_json(Endpoint::Completion, "cmpl-1", 1, "demo", "hi", "length", {1, 1});
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "hi");
  EXPECT_TRUE(text["choices"][0]["logprobs"].is_null());

  const ojson first = chunk_json(Endpoint::Chat, "c", 1, "demo", "", "", true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], (ojson{{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const ojson last = chunk_json(Endpoint::Chat, "c", 1, "demo", "", "length", false);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  const ojson usage = usage_chunk_json(Endpoint::Chat, "c", 1, "demo", {3, 4});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);
  EXPECT_EQ(sse_event(ojson{{"a", 1}}), "data: {\"a\":1}\n\n");
  // Invalid UTF-8 never throws: it is replaced.
  EXPECT_NO_THROW(dump_json(ojson{{"t", std::string("\xff\xfe")}}));

  const ojson models = models_json("demo", 5, 100);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "demo");
  EXPECT_EQ(models["data"][0]["object"], "model");

  const ojson err = error_json(ApiError(404, "no such model", "invalid_request_error", "model", "model_not_found"));
  EXPECT_EQ(err.dump(),
            R"({"error":{"message":"no such model","type":"invalid_request_error","param":"model","code":"model_not_found"}})");
  EXPECT_EQ(error_json(ApiError(400, "bad")).dump(),
            R"({"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}})");
}

TEST(ServerApi, BearerKey) {
  EXPECT_TRUE(bearer_matches("Bearer sk-1", "sk-1"));
  EXPECT_TRUE(bearer_matches("bearer   sk-1 ", "sk-1"));
  EXPECT_FALSE(bearer_matches("Bearer sk-2", "sk-1"));
  EXPECT_FALSE(bearer_matches("Bearer sk-1x", "sk-1"));
  EXPECT_FALSE(bearer_matches("Bearer sk-", "sk-1"));
  EXPECT_FALSE(bearer_matches("sk-1", "sk-1"));
  EXPECT_FALSE(bearer_matches("Basic sk-1", "sk-1"));
  EXPECT_FALSE(bearer_matches("Bearer ", ""));
}

TEST(ServerMetrics, PrometheusText) {
  Metrics m;
  m.count_http("/v1/completions", 200);
  m.count_http("/v1/completions", 200);
  m.count_http("/v1/completions", 400);
  m.count_generation("length", 0.2);
  m.count_generation("cancelled", 0);
  SchedulerStats s;
  s.requests_submitted = 3;
  s.completion_tokens = 40;
  s.steps = 4;
  s.step_seconds = 2.0;
  s.compute_seconds = 1.5;
  s.comm_seconds = 0.5;
  s.queued = 1;
  s.active = 2;
  ServerInfo info;
  info.model_id = "de\"mo";
  info.n_ranks = 2;
  const std::string t = m.render(s, info);
  auto has = [&](const std::string& line) { return t.find("\n" + line + "\n") != std::string::npos; };
  EXPECT_TRUE(has("moep_http_requests_total{route=\"/v1/completions\",code=\"200\"} 2")) << t;
  EXPECT_TRUE(has("moep_http_requests_total{route=\"/v1/completions\",code=\"400\"} 1")) << t;
  EXPECT_TRUE(has("moep_generations_total{finish_reason=\"cancelled\"} 1")) << t;
  EXPECT_TRUE(has("moep_time_to_first_token_seconds_bucket{le=\"0.1\"} 0")) << t;
  EXPECT_TRUE(has("moep_time_to_first_token_seconds_bucket{le=\"0.25\"} 1")) << t;
  EXPECT_TRUE(has("moep_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1")) << t;
  EXPECT_TRUE(has("moep_time_to_first_token_seconds_count 1")) << t;
  EXPECT_TRUE(has("moep_completion_tokens_total 40")) << t;
  EXPECT_TRUE(has("moep_queue_length 1")) << t;
  EXPECT_TRUE(has("moep_active_sequences 2")) << t;
  EXPECT_TRUE(has("moep_ranks 2")) << t;
  EXPECT_TRUE(has("moep_step_compute_seconds_mean 0.375")) << t;
  EXPECT_TRUE(has("moep_step_communication_seconds_mean 0.125")) << t;
  EXPECT_TRUE(has("# TYPE moep_steps_total counter")) << t;
  EXPECT_NE(t.find("model=\"de\\\"mo\""), std::string::npos) << t;  // label values escaped
}

}  // namespace
}  // namespace moep::server

namespace moep::server {
namespace {

TEST(ServerApi, ForcedToolCallPerFormat) {
  const ApiRequest r = parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                 "properties": {"n": {"type": "integer", "minimum": 0}}}}},
                {"type": "function", "function": {"name": "g", "parameters": {"type": "object",
                 "properties": {"s": {"enum": ["a", "b"]}}, "required": ["s"]}}}],
      "tool_choice": "required"})", limits());
  const ToolCallConstraint c = tool_call_constraint(r);
  EXPECT_FALSE(forced_tool_call(ToolCallFormat::DeepSeekV3, c).has_value());  // no forced form: only asked
  EXPECT_FALSE(forced_tool_call(ToolCallFormat::None, c).has_value());
  auto accepts = [](const ForcedToolCall& f, const std::string& s) {
    JsonMatcher m(f.grammar);
    return m.advance(s) && m.complete();
  };
  const auto hermes = forced_tool_call(ToolCallFormat::Hermes, c);
  ASSERT_TRUE(hermes.has_value());
  EXPECT_EQ(hermes->prefix, "<tool_call>\n");
  EXPECT_EQ(hermes->suffix, "\n</tool_call>");
  // f's "minimum" is beyond the grammar: f's arguments are relaxed to any object.
  EXPECT_EQ(hermes->relaxed, std::vector<std::string>{"f"});
  EXPECT_TRUE(accepts(*hermes, R"({"name": "g", "arguments": {"s": "b"}})"));
  EXPECT_FALSE(accepts(*hermes, R"({"name": "g", "arguments": {"s": "c"}})"));
  EXPECT_FALSE(accepts(*hermes, R"({"name": "g", "arguments": {"s": "a", "t": 1}})"));  // undeclared key
  EXPECT_FALSE(accepts(*hermes, R"({"name": "h", "arguments": {}})"));
  EXPECT_TRUE(accepts(*hermes, R"({"name": "f", "arguments": {"x": [1]}})"));
  const auto llama = forced_tool_call(ToolCallFormat::Llama3, c);
  ASSERT_TRUE(llama.has_value());
  EXPECT_TRUE(llama->prefix.empty());
  EXPECT_TRUE(accepts(*llama, R"({"name": "g", "parameters": {"s": "a"}})"));
  EXPECT_FALSE(accepts(*llama, R"({"name": "g", "arguments": {"s": "a"}})"));
  const auto mistral = forced_tool_call(ToolCallFormat::Mistral, c);
  ASSERT_TRUE(mistral.has_value());
  EXPECT_EQ(mistral->prefix, "[TOOL_CALLS] ");
  EXPECT_TRUE(accepts(*mistral, R"([{"name": "g", "arguments": {"s": "a"}}, {"name": "f", "arguments": {}}])"));
  EXPECT_FALSE(accepts(*mistral, R"([])"));
  // A named function, one call only.
  const ApiRequest named = parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}, "parallel_tool_calls": false})", limits());
  const auto one = forced_tool_call(ToolCallFormat::Mistral, tool_call_constraint(named));
  ASSERT_TRUE(one.has_value());
  EXPECT_TRUE(accepts(*one, R"([{"name": "g", "arguments": {"k": 1}}])"));
  EXPECT_FALSE(accepts(*one, R"([{"name": "f", "arguments": {}}])"));
  EXPECT_FALSE(accepts(*one, R"([{"name": "g", "arguments": {}}, {"name": "g", "arguments": {}}])"));
  // "auto": nothing forced.
  const ApiRequest autoc = parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f"}}]})", limits());
  EXPECT_FALSE(forced_tool_call(ToolCallFormat::Hermes, tool_call_constraint(autoc)).has_value());
}

}  // namespace
}  // namespace moep::server
