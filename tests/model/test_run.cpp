// `moep run` end to end: greedy generation through the sampler and the generation loop equals the reference
// greedy tokens of transformers; a fixed seed gives the same text twice; bad input gets a clear error.
#include <gtest/gtest.h>

#include <cctype>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace moep {
namespace {

std::string csv(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// Runs a command and captures its standard output only.
int run_stdout(const std::string& cmd, std::string* out) { return test::run_command("{ " + cmd + " 2>/dev/null; }", out); }

std::string last_line(const std::string& s) {
  const size_t end = s.find_last_not_of('\n');
  const size_t begin = s.rfind('\n', end);
  return s.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1) + 1);
}

TEST(Run, GreedyEqualsTransformersReference) {
  for (const std::string fx : {"dbrx_bf16", "qwen2_moe_f32", "olmoe_bf16"}) {
    std::ifstream f(test::fixture_dir(fx) + "/reference.json");
    const auto ref = nlohmann::json::parse(f);
    for (const auto& c : ref["cases"]) {
      std::string out;
      const int st = run_stdout(test::moep_binary() + " run " + test::fixture_dir(fx) + " --prompt-ids " +
                                           csv(c["prompt"].get<std::vector<int32_t>>()) +
                                           " --print-ids --temp 0 --ignore-eos -n 24 --threads 2",
                                       &out);
      ASSERT_EQ(st, 0) << out;
      EXPECT_EQ(last_line(out), csv(c["greedy"].get<std::vector<int32_t>>())) << fx;
    }
  }
}

class RunText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    std::string out;
    const int st = test::run_command(test::moep_binary() + " synth " + dir_->str() +
                                         "/m --preset demo --layers 2 --tokenizer " +
                                         test::testdata_path("tokenizers/gpt2/tokenizer.json"),
                                     &out);
    ASSERT_EQ(st, 0) << out;
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string model() { return dir_->str() + "/m"; }
  static test::TempDir* dir_;
};
test::TempDir* RunText::dir_ = nullptr;

TEST_F(RunText, FixedSeedGivesTheSameTextTwice) {
  const std::string cmd = test::moep_binary() + " run " + model() +
                          " -p 'The capital of France is' -n 20 --seed 1234 --temp 1.0";
  std::string a, b, c;
  ASSERT_EQ(run_stdout(cmd, &a), 0) << a;
  ASSERT_EQ(run_stdout(cmd, &b), 0) << b;
  EXPECT_EQ(a, b);
  EXPECT_GT(a.size(), std::string("The capital of France is").size());
  ASSERT_EQ(test::run_command(test::moep_binary() + " run " + model() +
                                  " -p 'The capital of France is' -n 20 --seed 999 --temp 1.0",
                              &c),
            0);
  EXPECT_NE(a, c);  // another seed, other text (20 tokens from a 50k vocabulary)
}

TEST_F(RunText, SaysTheWeightsAreRandom) {
  std::string out;
  ASSERT_EQ(test::run_command(test::moep_binary() + " run " + model() + " -p hi -n 2", &out), 0) << out;
  EXPECT_NE(out.find("RANDOM weights"), std::string::npos) << out;
}

TEST_F(RunText, EmptyPromptAndBadFlagsAreClearErrors) {
  std::string out;
  EXPECT_EQ(test::run_command(test::moep_binary() + " run " + model() + " -p ''", &out), 1);
  EXPECT_NE(out.find("the prompt is empty"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(test::moep_binary() + " run " + model() + " -p hi --top-p 0", &out), 1);
  EXPECT_NE(out.find("top_p must be in (0, 1]"), std::string::npos) << out;
  EXPECT_NE(test::run_command(test::moep_binary() + " run " + model() + " -p hi --temp abc", &out), 0);
  EXPECT_NE(out.find("--temp"), std::string::npos) << out;
}

TEST_F(RunText, MissingTokenizerIsAClearError) {
  test::TempDir d;
  std::string out;
  // A fixture has no tokenizer.json.
  EXPECT_EQ(test::run_command(test::moep_binary() + " run " + test::fixture_dir("mixtral_f32") + " -p hi", &out), 1);
  EXPECT_NE(out.find("tokenizer.json"), std::string::npos) << out;
}

TEST_F(RunText, StopStringEndsTheOutput) {
  // Generate once, pick a word from the output as a stop string, generate again with it.
  std::string a;
  const std::string base = test::moep_binary() + " run " + model() + " -p 'Hello' -n 30 --seed 5 --temp 0.9";
  ASSERT_EQ(run_stdout(base, &a), 0);
  const std::string gen = a.substr(5);
  ASSERT_GT(gen.size(), 20u);
  // A window of four letters from the second half (no quotes, no partial UTF-8 characters).
  std::string stop;
  for (size_t i = gen.size() / 2; i + 4 <= gen.size() && stop.empty(); ++i) {
    bool letters = true;
    for (size_t j = i; j < i + 4; ++j) letters &= std::isalpha(static_cast<unsigned char>(gen[j])) != 0;
    if (letters) stop = gen.substr(i, 4);
  }
  ASSERT_FALSE(stop.empty()) << gen;
  std::string b;
  ASSERT_EQ(run_stdout(base + " --stop '" + stop + "'", &b), 0);
  const std::string cut = gen.substr(0, gen.find(stop));
  EXPECT_EQ(b, "Hello" + cut);
}

// `moep bench --paired N` alternates N extra decode steps with plain reads of as many weight bytes and reports
// the ratio of the two rates, pair by pair: the JSON carries the count and a median inside the spread.
TEST_F(RunText, BenchPairsDecodeStepsWithPlainReads) {
  const test::TempDir out_dir;
  const std::string json_path = out_dir.str() + "/bench.json";
  std::string out;
  ASSERT_EQ(test::run_command(test::moep_binary() + " bench " + model() + " --prompt 2 --gen 3 --paired 5 --threads 2 --json " +
                                  json_path,
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("paired: 5 more decode steps"), std::string::npos) << out;
  std::ifstream f(json_path);
  const auto j = nlohmann::json::parse(f);
  ASSERT_EQ(j["paired"]["steps"].get<int>(), 5);
  const double lo = j["paired"]["decode_over_read_min"], mid = j["paired"]["decode_over_read_median"],
               hi = j["paired"]["decode_over_read_max"];
  EXPECT_GT(lo, 0.0);
  EXPECT_LE(lo, mid);
  EXPECT_LE(mid, hi);
  EXPECT_LT(hi, 1000.0);  // finite, and no step of zero bytes or zero time
  EXPECT_GT(j["achieved_gbs"].get<double>(), 0.0);
  EXPECT_GT(j["weights_read_gbs"].get<double>(), 0.0);

  // --paired 0: no pairs, no line.
  ASSERT_EQ(test::run_command(test::moep_binary() + " bench " + model() + " --prompt 2 --gen 2 --paired 0 --threads 1", &out), 0)
      << out;
  EXPECT_EQ(out.find("paired:"), std::string::npos) << out;
}

}  // namespace
}  // namespace moep
