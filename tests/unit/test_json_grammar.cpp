// Constrained decoding (text/json_grammar.h): the matcher on accepted and refused strings, schema errors that name
// the field, token masks against a brute-force check of every token (tokens that span several JSON symbols
// included), and random walks under the mask whose output an independent validator (below, not the grammar)
// checks against the schema.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "runtime/sampler.h"
#include "json_schema_check.h"
#include "test_util.h"
#include "text/json_grammar.h"
#include "text/tokenizer.h"

namespace moep {
namespace {

using ojson = nlohmann::ordered_json;

std::shared_ptr<const JsonGrammar> grammar(const char* schema) { return JsonGrammar::from_schema(ojson::parse(schema)); }

bool matches(const std::shared_ptr<const JsonGrammar>& g, std::string_view text) {
  JsonMatcher m(g);
  return m.advance(text) && m.accepting();
}

TEST(JsonGrammar, MatcherAcceptsAndRefuses) {
  auto g = grammar(test::kNested);
  EXPECT_TRUE(matches(g, R"({"name":"Ann","age":3,"address":{"city":"Oslo","zip":null}})"));
  EXPECT_TRUE(matches(g, "{\n  \"name\": \"\\u00e9\\n\", \"age\": -0, \"address\": {\"city\": \"x\", \"zip\": \"1\"},"
                         " \"score\": 1.5e-3\n}"));
  EXPECT_FALSE(matches(g, R"({"age":3,"name":"Ann","address":{"city":"Oslo","zip":null}})"));  // order
  EXPECT_FALSE(matches(g, R"({"name":"Ann","age":3})"));                                       // required
  EXPECT_FALSE(matches(g, R"({"name":"Ann","age":3.5,"address":{"city":"Oslo","zip":null}})"));  // integer
  EXPECT_FALSE(matches(g, R"({"name":"Ann","age":3,"address":{"city":"","zip":null}})"));      // minLength
  EXPECT_FALSE(matches(g, R"({"name":"0123456789abc","age":3,"address":{"city":"O","zip":null}})"));  // maxLength
  EXPECT_FALSE(matches(g, R"({"name":"Ann","age":3,"address":{"city":"O","zip":null},"x":1})"));  // additional
  EXPECT_FALSE(matches(g, R"( {"name":"A","age":3,"address":{"city":"O","zip":null}})"));  // leading space
  EXPECT_FALSE(matches(g, R"({"name":"A","age":03,"address":{"city":"O","zip":null}})"));  // leading zero
  EXPECT_FALSE(matches(g, "{\"name\":\"a\tb\",\"age\":3,\"address\":{\"city\":\"O\",\"zip\":null}}"));  // raw tab
  EXPECT_FALSE(matches(g, R"({"name":"\ud800","age":3,"address":{"city":"O","zip":null}})"));  // lone surrogate
  EXPECT_FALSE(matches(g, "{\"name\":\"\xC3\",\"age\":3,\"address\":{\"city\":\"O\",\"zip\":null}}"));  // bad UTF-8
  EXPECT_FALSE(matches(g, "{\n\n\"name\":\"A\",\"age\":3,\"address\":{\"city\":\"O\",\"zip\":null}}"));  // 2 newlines
  EXPECT_FALSE(matches(g, R"({"name":"A","age":3,"address":{"city":"O","zip":null}} )"));  // trailing space
  JsonMatcher m(g);
  EXPECT_TRUE(m.advance(R"({"name":"A","age":12)"));
  EXPECT_FALSE(m.accepting());
  EXPECT_FALSE(m.advance("x"));                     // refused: the state is unchanged
  EXPECT_TRUE(m.advance(R"(,"address":{"city":"O","zip":"ab"}})"));
  EXPECT_TRUE(m.complete());
  EXPECT_FALSE(m.advance("}"));

  auto e = grammar(test::kEnums);
  EXPECT_TRUE(matches(e, R"({"color":"dark red","size":10,"ok":false,"kind":"fixed","mood":"sad"})"));
  EXPECT_TRUE(matches(e, R"({"color":"red","size":null,"ok":true,"kind":"fixed","mood":-12})"));
  EXPECT_FALSE(matches(e, R"({"color":"dark","size":1,"ok":true,"kind":"fixed","mood":1})"));
  EXPECT_FALSE(matches(e, R"({"color":"red","size":3,"ok":true,"kind":"fixed","mood":1})"));
  EXPECT_FALSE(matches(e, R"({"color":"red","size":1,"ok":true,"kind":"fixe","mood":1})"));
  EXPECT_FALSE(matches(e, R"({"color":"red","size":1,"ok":true,"kind":"fixed","mood":"glad"})"));

  auto a = grammar(test::kArrays);
  EXPECT_TRUE(matches(a, R"({"tags":["a","b"],"matrix":[]})"));
  EXPECT_TRUE(matches(a, R"({"tags":["a","b","c","d"],"matrix":[[1],[2,3,4]]})"));
  EXPECT_FALSE(matches(a, R"({"tags":["a"],"matrix":[]})"));
  EXPECT_FALSE(matches(a, R"({"tags":["a","b","c","d","e"],"matrix":[]})"));
  EXPECT_FALSE(matches(a, R"({"tags":["a","b"],"matrix":[[]]})"));
  EXPECT_FALSE(matches(a, R"({"tags":["a","b"],"matrix":[[1],[2],[3]]})"));

  auto any = JsonGrammar::any_object();
  EXPECT_TRUE(matches(any, R"({"a":[1,{"b":null},"c",true,-2.5E+10],"":{}})"));
  EXPECT_TRUE(matches(any, "{}"));
  EXPECT_FALSE(matches(any, "[1]"));  // json_object: an object at the top
  EXPECT_FALSE(matches(any, R"({"a":1,})"));
  EXPECT_FALSE(matches(any, R"({"a" 1})"));
  // Generic values nest only so deep (a random model could otherwise open brackets forever).
  std::string deep = "{\"a\":";
  for (int i = 0; i < JsonGrammar::kMaxDepth; ++i) deep += "[";
  JsonMatcher dm(any);
  EXPECT_FALSE(dm.advance(deep));

  auto empty = grammar(R"({"type": "object", "additionalProperties": false})");
  EXPECT_TRUE(matches(empty, "{}"));
  EXPECT_TRUE(matches(empty, "{ }"));
  EXPECT_FALSE(matches(empty, R"({"a": 1})"));
  EXPECT_TRUE(matches(grammar(R"({"type": "object"})"), R"({"a": 1})"));

  // A top-level number is whole after any digit, and may still grow.
  auto num = grammar(R"({"type": "number"})");
  JsonMatcher nm(num);
  EXPECT_TRUE(nm.advance("-12"));
  EXPECT_TRUE(nm.accepting());
  EXPECT_FALSE(nm.complete());
  EXPECT_TRUE(nm.advance(".5"));
  EXPECT_TRUE(nm.accepting());
}

TEST(JsonGrammar, SchemaErrorsNameTheField) {
  auto error_of = [](const char* schema) -> std::pair<std::string, std::string> {
    try {
      JsonGrammar::from_schema(ojson::parse(schema));
    } catch (const JsonSchemaError& e) {
      return {e.path(), e.what()};
    }
    return {"<none>", ""};
  };
  auto [p1, m1] = error_of(R"({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}})");
  EXPECT_EQ(p1, "properties.a.pattern");
  EXPECT_NE(m1.find("'pattern' is not supported"), std::string::npos) << m1;
  EXPECT_NE(m1.find("supported: type, properties"), std::string::npos) << m1;
  auto [p2, m2] = error_of(R"({"type": "strin"})");
  EXPECT_EQ(p2, "type");
  EXPECT_NE(m2.find("expected one of object, array, string"), std::string::npos) << m2;
  EXPECT_EQ(error_of(R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})").first, "required[0]");
  EXPECT_EQ(error_of(R"({"type": "array", "minItems": 3, "maxItems": 2})").first, "minItems");
  EXPECT_EQ(error_of(R"({"type": "array", "maxItems": -1})").first, "maxItems");
  EXPECT_EQ(error_of(R"({"anyOf": [{"type": "string"}, {"type": "string", "maxLength": 2}]})").first, "anyOf");
  EXPECT_EQ(error_of(R"({"type": "object", "additionalProperties": {"type": "string"}})").first,
            "additionalProperties");
  EXPECT_EQ(error_of(R"({"enum": []})").first, "enum");
  EXPECT_EQ(error_of(R"({"$ref": "#/defs/a"})").first, "$ref");
  EXPECT_EQ(error_of(R"([1])").first, "");
  EXPECT_EQ(error_of(R"({"type": "object", "properties": {"a": {"type": "array", "items": [{}]}}})").first,
            "properties.a.items");
  std::string deep = "{}";
  for (int i = 0; i < JsonGrammar::kMaxDepth; ++i) deep = R"({"type": "array", "items": )" + deep + "}";
  EXPECT_NE(error_of(deep.c_str()).second.find("nests deeper"), std::string::npos);
  std::string deep_any = "{}";  // anyOfs nest no frames, but must not recurse without bound either
  for (int i = 0; i < 5000; ++i) deep_any = R"({"anyOf": [)" + deep_any + "]}";
  EXPECT_NE(error_of(deep_any.c_str()).second.find("nests deeper"), std::string::npos);
  // Annotations are accepted and ignored.
  EXPECT_EQ(error_of(R"({"type": "string", "description": "d", "title": "t", "default": "x"})").first, "<none>");
}

// A vocabulary of tokens that span several JSON symbols, with the masks they must get.
TEST(JsonGrammar, MaskOfTokensSpanningSymbols) {
  const std::vector<std::string> bytes = {"{", "}", "\"", "{\"", "\":", "name", "na", "me\":\"", "x\"}", "\"}",
                                          "1", "12", ",\"", " ", "\n", "}}", "", "\":\"", "age", "<eos>"};
  auto id = [&](std::string_view t) { return int32_t(std::find(bytes.begin(), bytes.end(), t) - bytes.begin()); };
  std::vector<std::string> table = bytes;
  table[size_t(id("<eos>"))] = "";  // the end token spells nothing
  auto vocab = std::make_shared<TokenVocabulary>(table, 70, std::vector<int32_t>{id("<eos>")});
  GrammarMasker gm(grammar(R"({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})"),
                   vocab);
  auto allowed = [&]() {
    std::vector<std::string> out;
    const auto m = gm.mask();
    for (size_t i = 0; i < bytes.size(); ++i)
      if ((m[i / 64] >> (i % 64)) & 1) out.push_back(bytes[i]);
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(allowed(), (V{"{", "{\""}));
  ASSERT_TRUE(gm.accept(id("{\"")));
  EXPECT_EQ(allowed(), (V{"name", "na"}));
  EXPECT_FALSE(gm.accept(id("age")));
  ASSERT_TRUE(gm.accept(id("na")));
  EXPECT_EQ(allowed(), (V{"me\":\""}));  // "me" ends the key, then ':' and the value's opening quote
  ASSERT_TRUE(gm.accept(id("me\":\"")));
  // Inside the string: any text; x"} closes the string and the object at once; ": closes the string but a colon
  // cannot follow a value.
  EXPECT_EQ(allowed(), (V{"{", "}", "\"", "{\"", "name", "na", "x\"}", "\"}", "1", "12", ",\"", " ", "}}", "age"}));
  ASSERT_TRUE(gm.accept(id("x\"}")));
  EXPECT_TRUE(gm.complete());
  EXPECT_EQ(allowed(), (V{"<eos>"}));  // complete: only the end
  EXPECT_TRUE(gm.accept(id("<eos>")));
  EXPECT_GT(gm.cache_misses(), 0u);
}

// The mask equals a brute-force check of every token of a real byte-level vocabulary, along random walks.
TEST(JsonGrammar, MaskMatchesBruteForceOnGpt2Vocabulary) {
  const Tokenizer tok = Tokenizer::load(test::testdata_path("tokenizers/gpt2"));
  const int32_t eos = tok.token_to_id("<|endoftext|>");
  auto vocab = TokenVocabulary::from_tokenizer(tok, tok.vocab_size() + 7, {eos});
  EXPECT_EQ(vocab->bytes(tok.token_to_id("\xC4\xA0{")), " {");  // GPT-2's alphabet mapped back to bytes
  const char* kFree = R"({"type": "object", "properties": {"s": {"type": "string"}, "any": {}},
                           "required": ["s", "any"]})";
  const std::string tools = JsonGrammar::any_tool_call_schema({{"get_weather", ojson::parse(test::kNested)},
                                                                {"get_time", ojson::parse(test::kEnums)}})
                                .dump();
  for (const char* schema : {test::kNested, test::kEnums, test::kArrays, kFree, tools.c_str(), ""}) {
    auto g = *schema ? grammar(schema) : JsonGrammar::any_object();
    std::mt19937 rng(7);
    GrammarMasker gm(g, vocab);
    for (int step = 0; step < 25 && !gm.complete(); ++step) {
      const auto mask = gm.mask();
      std::vector<int32_t> allowed;
      for (int32_t t = 0; t < int32_t(vocab->rows()); ++t) {
        bool expect = false;
        if (t == eos) {
          expect = gm.accepting();
        } else if (!vocab->bytes(t).empty() && !tok.is_special(t)) {
          JsonMatcher m(g);
          m.state() = gm.matcher().state();
          expect = m.advance(vocab->bytes(t));
        }
        const bool got = (mask[size_t(t) / 64] >> (t % 64)) & 1;
        ASSERT_EQ(got, expect) << "token " << t << " '" << vocab->bytes(t) << "' at step " << step;
        if (got) allowed.push_back(t);
      }
      ASSERT_FALSE(allowed.empty());
      // Prefer long tokens so that the walk crosses symbols within a token.
      std::sort(allowed.begin(), allowed.end(),
                [&](int32_t a, int32_t b) { return vocab->bytes(a).size() > vocab->bytes(b).size(); });
      const size_t pick = std::uniform_int_distribution<size_t>(0, std::min<size_t>(allowed.size(), 20) - 1)(rng);
      ASSERT_TRUE(gm.accept(allowed[pick]));
    }
  }
}

TEST(JsonGrammar, TokenBytesOfSentencePieceAndByteLevelTokens) {
  const Tokenizer spm = Tokenizer::load(test::testdata_path("tokenizers/llama-spm"));
  EXPECT_EQ(spm.token_bytes(spm.token_to_id("<0x0A>")), "\n");  // byte fallback
  EXPECT_EQ(spm.token_bytes(spm.token_to_id("<0xE2>")), "\xE2");  // part of a character, as it is
  EXPECT_EQ(spm.token_bytes(spm.token_to_id("\xE2\x96\x81the")), " the");  // U+2581 is a space mid-sequence
  const Tokenizer bl = Tokenizer::load(test::testdata_path("tokenizers/gpt2"));
  EXPECT_EQ(bl.token_bytes(bl.token_to_id("\xC4\x8A")), "\n");  // GPT-2's alphabet
  EXPECT_EQ(bl.token_bytes(bl.token_to_id("<|endoftext|>")), "<|endoftext|>");  // an added token is its text
  EXPECT_EQ(bl.token_bytes(-1), "");
  // A vocabulary leaves special tokens out: they never spell JSON.
  auto vocab = TokenVocabulary::from_tokenizer(bl, bl.vocab_size(), {});
  EXPECT_EQ(vocab->bytes(bl.token_to_id("<|endoftext|>")), "");
}

// Sampling with random logits under the mask always gives JSON that parses and validates (the model-level version
// of this, through the scheduler and a random-weight model, is in tests/model/test_constrained.cpp).
TEST(JsonGrammar, RandomLogitsGiveValidJson) {
  const Tokenizer tok = Tokenizer::load(test::testdata_path("tokenizers/gpt2"));
  const int32_t eos = tok.token_to_id("<|endoftext|>");
  const int64_t V = tok.vocab_size();
  auto vocab = TokenVocabulary::from_tokenizer(tok, V, {eos});
  for (const char* schema : {test::kNested, test::kEnums, test::kArrays}) {
    const ojson s = ojson::parse(schema);
    auto g = JsonGrammar::from_schema(s);
    for (uint32_t seed = 1; seed <= 10; ++seed) {
      GrammarMasker gm(g, vocab);
      SamplingParams sp;
      sp.seed = seed;
      sp.temperature = 1.f;
      sp.top_k = 0;
      sp.top_p = 1.f;
      sp.min_p = 0.f;
      Sampler sampler(V, sp);
      std::string out;
      std::vector<float> logits;
      for (int step = 0; step < 400; ++step) {
        logits = test::random_floats(size_t(V), seed * 1000 + uint32_t(step), -2.f, 2.f);
        const int32_t t = sampler.sample(logits.data(), {}, gm.mask());
        if (t == eos) break;
        ASSERT_TRUE(gm.accept(t));
        out += vocab->bytes(t);
        if (gm.complete()) break;
      }
      ASSERT_TRUE(gm.complete()) << "seed " << seed << ": " << out;
      const ojson v = ojson::parse(out);  // throws if it does not parse
      EXPECT_EQ(test::validate_json(v, s), "") << out;
    }
  }
}

TEST(JsonGrammar, SamplerNeverLeavesTheMask) {
  const int64_t V = 300;
  std::vector<uint64_t> mask((V + 63) / 64, 0);
  for (int t : {3, 77, 150, 299}) mask[size_t(t) / 64] |= uint64_t(1) << (t % 64);
  for (float temp : {0.f, 0.7f}) {
    SamplingParams sp = SamplingParams::greedy();
    sp.temperature = temp;
    sp.seed = 5;
    Sampler s(V, sp);
    for (int i = 0; i < 50; ++i) {
      auto logits = test::random_floats(size_t(V), uint32_t(i + 1), -3.f, 3.f);
      logits[10] = 100.f;  // the best token overall is not allowed
      auto copy = logits;
      const int32_t t = s.sample(logits.data(), {}, mask);
      ASSERT_TRUE(t == 3 || t == 77 || t == 150 || t == 299) << t;
      if (temp == 0.f) {
        int32_t best = 3;
        for (int c : {77, 150, 299})
          if (copy[size_t(c)] > copy[size_t(best)]) best = c;
        EXPECT_EQ(t, best);
      }
    }
  }
}

TEST(JsonGrammar, ToolCallSchemaForcesNameAndArguments) {
  const ojson params = ojson::parse(R"({"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"], "additionalProperties": false})");
  auto g = JsonGrammar::from_schema(JsonGrammar::tool_call_schema("get_weather", params));
  EXPECT_TRUE(matches(g, R"({"name": "get_weather", "arguments": {"city": "Paris"}})"));
  EXPECT_FALSE(matches(g, R"({"name": "get_time", "arguments": {"city": "Paris"}})"));
  EXPECT_FALSE(matches(g, R"({"name": "get_weather", "arguments": {}})"));
  auto any_args = JsonGrammar::from_schema(JsonGrammar::tool_call_schema("f", nullptr));
  EXPECT_TRUE(matches(any_args, R"({"name":"f","arguments":{"x":[1]}})"));
  // tool_choice "required" over several tools: the name picks the arguments' schema.
  const ojson time_params = ojson::parse(R"({"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                            "required": ["zone"], "additionalProperties": false})");
  auto either = JsonGrammar::from_schema(
      JsonGrammar::any_tool_call_schema({{"get_weather", params}, {"get_time", time_params}, {"get", nullptr}}));
  EXPECT_TRUE(matches(either, R"({"name": "get_weather", "arguments": {"city": "Oslo"}})"));
  EXPECT_TRUE(matches(either, R"({"name": "get_time", "arguments": {"zone": "CET"}})"));
  EXPECT_TRUE(matches(either, R"({"name": "get", "arguments": {"anything": [true]}})"));
  EXPECT_FALSE(matches(either, R"({"name": "get_time", "arguments": {"city": "Oslo"}})"));
  EXPECT_FALSE(matches(either, R"({"name": "get_weather", "arguments": {"zone": "CET"}})"));
  EXPECT_FALSE(matches(either, R"({"name": "get_date", "arguments": {}})"));
  EXPECT_FALSE(matches(either, R"({"arguments": {}, "name": "get"})"));
  // Objects that no first property tells apart are refused.
  EXPECT_THROW(grammar(R"({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                                     {"type": "object", "properties": {"a": {"const": "x"}}, "required": ["a"]}]})"),
               JsonSchemaError);
  EXPECT_THROW(grammar(R"({"anyOf": [{"type": "object", "properties": {"k": {"const": "x"}}, "required": ["k"]},
                                     {"type": "object", "properties": {"k": {"enum": ["y", "x"]}}, "required": ["k"]}]})"),
               JsonSchemaError);
}

}  // namespace
}  // namespace moep
