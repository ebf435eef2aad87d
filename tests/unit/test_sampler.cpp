#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <algorithm>

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

TEST(Sampler, LogitBiasComesFirst) {
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.f, 2.f);
  std::vector<float> logits(100);
  for (float& x : logits) x = normal(rng);
  const int32_t favoured = int32_t(rng() % 100);
  SamplingParams p = SamplingParams::greedy();
  p.logit_bias = {{favoured, 100.f}};
  Sampler s(100, p);
  std::vector<float> l = logits;
  EXPECT_EQ(s.sample(l.data(), {}), favoured);
  // With a repetition penalty, the bias is added before it (the token once seen falls back), and -100 bans.
  p.logit_bias = {{favoured, 100.f}, {int32_t((favoured + 1) % 100), 60.f}};
  p.repetition_penalty = 100.f;
  Sampler r(100, p);
  l = logits;
  const int32_t ctx[1] = {favoured};
  EXPECT_EQ(r.sample(l.data(), ctx), (favoured + 1) % 100);
  SamplingParams bad = SamplingParams::greedy();
  bad.logit_bias = {{100, 1.f}};
  EXPECT_THROW(Sampler(100, bad), Error);
  bad.logit_bias = {{1, 101.f}};
  EXPECT_THROW(bad.validate(), Error);
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

// token_logprobs against a double-precision reference (full sort, log-sum-exp), on fresh random logits with
// deliberate ties.
TEST(Sampler, TokenLogprobsMatchLogSoftmaxOfTheRawLogits) {
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.f, 3.f);
  for (int trial = 0; trial < 20; ++trial) {
    const size_t V = 50 + size_t(rng() % 2000);
    std::vector<float> logits(V);
    for (float& x : logits) x = normal(rng);
    logits[rng() % V] = logits[rng() % V];  // a tie somewhere
    double mx = -1e300;
    for (float x : logits) mx = std::max(mx, double(x));
    double sum = 0;
    for (float x : logits) sum += std::exp(double(x) - mx);
    const double lse = mx + std::log(sum);
    std::vector<int32_t> order(V);
    for (size_t i = 0; i < V; ++i) order[i] = int32_t(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    const int32_t n_top = int32_t(rng() % 21);
    const int32_t token = int32_t(rng() % V);
    TokenLogprobs out;
    token_logprobs(logits, token, n_top, out);
    ASSERT_EQ(out.token, token);
    EXPECT_NEAR(out.logprob, double(logits[size_t(token)]) - lse, 1e-4);
    ASSERT_EQ(out.n_top, n_top);
    double mass = 0;
    for (int32_t k = 0; k < n_top; ++k) {
      EXPECT_EQ(out.top_ids[size_t(k)], order[size_t(k)]) << "rank " << k;
      EXPECT_NEAR(out.top_logprobs[size_t(k)], double(logits[size_t(order[size_t(k)])]) - lse, 1e-4);
      if (k) {
        EXPECT_GE(out.top_logprobs[size_t(k - 1)], out.top_logprobs[size_t(k)]);
      }
      mass += std::exp(double(out.top_logprobs[size_t(k)]));
    }
    EXPECT_LE(mass, 1.0 + 1e-5);
  }
  // Greedy picks the first of the top list, ties included.
  std::vector<float> tied = {1.f, 3.f, 3.f, 0.f};
  TokenLogprobs out;
  token_logprobs(tied, 1, 2, out);
  EXPECT_EQ(out.top_ids[0], 1);
  EXPECT_EQ(out.top_ids[1], 2);
  Sampler greedy(4, SamplingParams::greedy());
  std::vector<float> copy = tied;
  EXPECT_EQ(greedy.sample(copy.data(), {}), out.top_ids[0]);
}

TEST(StopStrings, HoldBackWhatMayStartAStopString) {
  EXPECT_EQ(stop_safe_prefix("hello wor", {"world"}), 6u);
  EXPECT_EQ(stop_safe_prefix("hello", {"xyz"}), 5u);
  EXPECT_EQ(stop_safe_prefix("ab<", {"<|end|>", "b<|"}), 1u);
  EXPECT_EQ(stop_safe_prefix("", {"a"}), 0u);
}

}  // namespace
}  // namespace moep
