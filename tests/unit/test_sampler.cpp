#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "test_util.h"

namespace moep {
namespace {

std::vector<float> logits_from_probs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(float(std::log(x)));
  return l;
}

// Empirical distribution of many draws.
std::map<int32_t, double> draw(const std::vector<float>& logits, SamplingParams sp, int n, uint64_t seed = 99) {
  sp.seed = seed;
  Sampler s(int64_t(logits.size()), sp);
  std::map<int32_t, double> freq;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    freq[s.sample(l.data(), {})] += 1.0 / n;
  }
  return freq;
}

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  Sampler s(5, SamplingParams::greedy());
  std::vector<float> l = {0.1f, 2.f, -1.f, 2.f, 0.f};
  EXPECT_EQ(s.sample(l.data(), {}), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  const auto logits = test::random_floats(1000, 3, -3.f, 3.f);
  SamplingParams sp;
  sp.seed = 42;
  Sampler a(1000, sp), b(1000, sp);
  for (int i = 0; i < 200; ++i) {
    auto la = logits, lb = logits;
    ASSERT_EQ(a.sample(la.data(), {}), b.sample(lb.data(), {}));
  }
}

TEST(Sampler, TemperatureOneFollowsTheDistribution) {
  const std::vector<double> p = {0.5, 0.3, 0.15, 0.05};
  SamplingParams sp;
  sp.temperature = 1.f;
  sp.top_k = 0;
  sp.top_p = 1.f;
  sp.min_p = 0.f;
  const auto f = draw(logits_from_probs(p), sp, 40000);
  for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(f.count(int32_t(i)) ? f.at(int32_t(i)) : 0.0, p[i], 0.01) << i;
}

TEST(Sampler, TopKTopPMinPCutTheTail) {
  const std::vector<double> p = {0.4, 0.3, 0.2, 0.06, 0.04};
  SamplingParams sp;
  sp.temperature = 1.f;
  sp.top_p = 1.f;
  sp.min_p = 0.f;
  sp.top_k = 2;
  auto f = draw(logits_from_probs(p), sp, 20000);
  EXPECT_EQ(f.size(), 2u);
  EXPECT_NEAR(f[0], 0.4 / 0.7, 0.02);
  sp.top_k = 0;
  sp.top_p = 0.85f;  // 0.4 + 0.3 + 0.2 = 0.9 >= 0.85: three tokens
  f = draw(logits_from_probs(p), sp, 20000);
  EXPECT_EQ(f.size(), 3u);
  sp.top_p = 1.f;
  sp.min_p = 0.5f;  // keep p >= 0.2: three tokens
  f = draw(logits_from_probs(p), sp, 20000);
  EXPECT_EQ(f.size(), 3u);
}

TEST(Sampler, RepetitionPenaltyDemotesSeenTokens) {
  SamplingParams sp = SamplingParams::greedy();
  sp.repetition_penalty = 2.f;
  Sampler s(3, sp);
  std::vector<float> l = {1.0f, 0.8f, -5.f};
  const std::vector<int32_t> ctx = {0};
  EXPECT_EQ(s.sample(l.data(), ctx), 1);  // 1.0 / 2 = 0.5 < 0.8
  std::vector<float> neg = {-1.0f, -1.5f, -5.f};
  EXPECT_EQ(s.sample(neg.data(), ctx), 1);  // -1.0 * 2 = -2 < -1.5
}

TEST(Sampler, BadParametersAreRefused) {
  SamplingParams sp;
  sp.top_p = 0.f;
  EXPECT_THROW(sp.validate(), Error);
  sp = {};
  sp.temperature = -1.f;
  EXPECT_THROW(sp.validate(), Error);
  sp = {};
  sp.min_p = 2.f;
  EXPECT_THROW(sp.validate(), Error);
}

TEST(StopStrings, HoldBackWhatMayStartAStopString) {
  EXPECT_EQ(stop_safe_prefix("hello wor", {"world"}), 6u);
  EXPECT_EQ(stop_safe_prefix("hello", {"xyz"}), 5u);
  EXPECT_EQ(stop_safe_prefix("ab<", {"<|end|>", "b<|"}), 1u);
  EXPECT_EQ(stop_safe_prefix("", {"a"}), 0u);
}

}  // namespace
}  // namespace moep
