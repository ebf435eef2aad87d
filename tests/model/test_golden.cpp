// Golden tests: every fixture (a tiny random-weight checkpoint written by transformers, see
// tests/reference/make_fixtures.py) against the logits and greedy tokens transformers computed from the same
// files. Whole prompt at once and one token at a time through the KV cache.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "io/npy.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace moep {
namespace {

struct Case {
  std::vector<int32_t> prompt, greedy, logits_tokens;
  std::string logits_file;
};

std::vector<Case> load_cases(const std::string& dir) {
  std::ifstream f(dir + "/reference.json");
  const auto j = nlohmann::json::parse(f);
  std::vector<Case> cases;
  for (const auto& c : j["cases"])
    cases.push_back({c["prompt"].get<std::vector<int32_t>>(), c["greedy"].get<std::vector<int32_t>>(),
                     c["logits_tokens"].get<std::vector<int32_t>>(), c["logits_file"].get<std::string>()});
  return cases;
}

std::unique_ptr<Engine> make_engine(const std::string& dir, int threads, int64_t rows) {
  EngineOptions o;
  o.model_dir = dir;
  o.threads = threads;
  o.limits.max_rows = rows;
  o.limits.max_ctx = 64;
  o.limits.n_slots = 2;
  return Engine::create(o, std::make_unique<LocalCommunicator>());
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, LogitsMatchTransformersWholeAndIncremental) {
  const std::string dir = test::fixture_dir(GetParam());
  auto engine = make_engine(dir, 2, 64);
  const int64_t V = engine->config().vocab_size;
  for (const Case& c : load_cases(dir)) {
    const NpyArray ref = read_npy_f32(dir + "/" + c.logits_file);
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{int64_t(c.logits_tokens.size()), V}));
    for (bool incremental : {false, true}) {
      std::vector<float> got(ref.data.size());
      engine->run_sequence(c.logits_tokens, 0, 0, true, incremental, got.data());
      for (size_t t = 0; t < c.logits_tokens.size(); ++t) {
        const double err = test::rel_l2(&got[t * V], &ref.data[t * V], size_t(V));
        EXPECT_LE(err, 1e-4) << GetParam() << " position " << t << (incremental ? " incremental" : " whole");
      }
    }
  }
}

TEST_P(Golden, GreedyTokensMatchTransformers) {
  const std::string dir = test::fixture_dir(GetParam());
  auto engine = make_engine(dir, 1, 32);
  const int64_t V = engine->config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(V));
  for (const Case& c : load_cases(dir)) {
    engine->run_sequence(c.prompt, 0, 0, false, false, logits.data());
    std::vector<int32_t> out;
    int32_t pos = int32_t(c.prompt.size());
    for (size_t i = 0; i < c.greedy.size(); ++i) {
      const int32_t tok = argmax(logits.data(), V);
      out.push_back(tok);
      engine->run_sequence({tok}, 0, pos++, false, false, logits.data());
    }
    EXPECT_EQ(out, c.greedy) << GetParam();
  }
}

// Two sequences decoded together in one batch give what each gives alone.
TEST_P(Golden, BatchedSlotsMatchSeparateRuns) {
  const std::string dir = test::fixture_dir(GetParam());
  auto engine = make_engine(dir, 2, 64);
  const int64_t V = engine->config().vocab_size;
  const auto cases = load_cases(dir);
  const Case& a = cases[1];
  const Case& b = cases[2];
  // Reference: each alone, whole sequence.
  std::vector<float> ref_a(a.logits_tokens.size() * V), ref_b(b.logits_tokens.size() * V);
  engine->run_sequence(a.logits_tokens, 0, 0, true, false, ref_a.data());
  engine->run_sequence(b.logits_tokens, 1, 0, true, false, ref_b.data());
  // Interleaved: one row of each per step, while both have tokens left.
  const size_t n = std::max(a.logits_tokens.size(), b.logits_tokens.size());
  std::vector<float> step(2 * V);
  for (size_t i = 0; i < n; ++i) {
    std::vector<BatchRow> rows;
    std::vector<std::pair<int, size_t>> which;
    if (i < a.logits_tokens.size()) {
      rows.push_back({a.logits_tokens[i], 0, int32_t(i), true});
      which.push_back({0, i});
    }
    if (i < b.logits_tokens.size()) {
      rows.push_back({b.logits_tokens[i], 1, int32_t(i), true});
      which.push_back({1, i});
    }
    engine->transformer().forward(rows, step.data());
    for (size_t r = 0; r < rows.size(); ++r) {
      const float* ref = which[r].first == 0 ? &ref_a[which[r].second * V] : &ref_b[which[r].second * V];
      EXPECT_LE(test::rel_l2(&step[r * V], ref, size_t(V)), 1e-5) << GetParam() << " step " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::ValuesIn(test::fixture_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moep
