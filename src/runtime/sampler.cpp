#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace moep {

void SamplingParams::validate() const {
  if (!(temperature >= 0.f) || temperature > 100.f) fail("temperature must be in [0, 100], got ", temperature);
  if (top_k < 0) fail("top_k must be >= 0, got ", top_k);
  if (!(top_p > 0.f && top_p <= 1.f)) fail("top_p must be in (0, 1], got ", top_p);
  if (!(min_p >= 0.f && min_p <= 1.f)) fail("min_p must be in [0, 1], got ", min_p);
  if (!(repetition_penalty > 0.f) || repetition_penalty > 100.f)
    fail("repetition_penalty must be in (0, 100], got ", repetition_penalty);
  if (max_tokens < 0) fail("max_tokens must be >= 0, got ", max_tokens);
  for (const auto& [token, bias] : logit_bias) {
    if (token < 0) fail("logit_bias: token id ", token, " is negative");
    if (!(bias >= -100.f && bias <= 100.f)) fail("logit_bias: the bias of token ", token, " must be in [-100, 100], got ", bias);
  }
}

void token_logprobs(std::span<const float> logits, int32_t token, int32_t n_top, TokenLogprobs& out) {
  const size_t V = logits.size();
  MOEP_ASSERT(token >= 0 && size_t(token) < V, "token_logprobs: token ", token, " outside the vocabulary of ", V);
  n_top = std::clamp<int32_t>(n_top, 0, TokenLogprobs::kMaxTop);
  float mx = -INFINITY;
  for (float x : logits) mx = std::max(mx, x);
  double sum = 0;
  int32_t filled = 0;
  for (size_t i = 0; i < V; ++i) {
    const float x = logits[i];
    sum += std::exp(double(x - mx));
    if (n_top == 0 || (filled == n_top && !(x > out.top_logprobs[size_t(n_top - 1)]))) continue;
    // Insert into the sorted top list (strictly greater moves ahead, so among equal logits the lower id stays first).
    int32_t at = filled < n_top ? filled++ : n_top - 1;
    while (at > 0 && x > out.top_logprobs[size_t(at - 1)]) {
      out.top_logprobs[size_t(at)] = out.top_logprobs[size_t(at - 1)];
      out.top_ids[size_t(at)] = out.top_ids[size_t(at - 1)];
      --at;
    }
    out.top_logprobs[size_t(at)] = x;
    out.top_ids[size_t(at)] = int32_t(i);
  }
  const float lse = mx + float(std::log(sum));
  for (int32_t k = 0; k < filled; ++k) out.top_logprobs[size_t(k)] -= lse;
  out.n_top = filled;
  out.token = token;
  out.logprob = logits[size_t(token)] - lse;
}

Sampler::Sampler(int64_t vocab, const SamplingParams& params)
    : p_(params),
      vocab_(vocab),
      seed_(params.seed ? params.seed : std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32)),
      rng_(seed_),
      idx_(size_t(vocab)),
      prob_(size_t(vocab)),
      seen_(size_t(vocab)) {
  p_.validate();
  for (const auto& [token, bias] : p_.logit_bias)
    if (token >= vocab_) fail("logit_bias: token id ", token, " is outside the vocabulary [0, ", vocab_, ")");
}

int32_t Sampler::sample(float* logits, std::span<const int32_t> context, std::span<const uint64_t> allowed) {
  const int64_t V = vocab_;
  for (const auto& [token, bias] : p_.logit_bias) logits[token] += bias;
  // Candidates: every token, or only the allowed ones (then the others are -inf, for whoever reads the logits).
  int64_t n_candidates = V;
  if (!allowed.empty()) {
    MOEP_ASSERT(int64_t(allowed.size()) * 64 >= V, "the allowed-token mask is shorter than the vocabulary");
    n_candidates = 0;
    for (int64_t i = 0; i < V; ++i) {
      if ((allowed[size_t(i) / 64] >> (i % 64)) & 1) {
        idx_[size_t(n_candidates++)] = int32_t(i);
      } else {
        logits[i] = -std::numeric_limits<float>::infinity();
      }
    }
    MOEP_ASSERT(n_candidates > 0, "constrained decoding allowed no token");
  }
  if (p_.repetition_penalty != 1.f) {
    std::fill(seen_.begin(), seen_.end(), 0);
    for (int32_t t : context)
      if (t >= 0 && t < V && !seen_[size_t(t)]) {
        seen_[size_t(t)] = 1;
        float& l = logits[t];
        l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
      }
  }
  if (allowed.empty()) std::iota(idx_.begin(), idx_.end(), 0);
  const auto cand_end = idx_.begin() + n_candidates;
  if (p_.temperature == 0.f) {
    int32_t best = idx_[0];
    for (auto it = idx_.begin() + 1; it != cand_end; ++it)
      if (logits[*it] > logits[best]) best = *it;
    return best;
  }
  for (auto it = idx_.begin(); it != cand_end; ++it) logits[*it] /= p_.temperature;
  // Candidates sorted by logit, descending (only the top-k part when top-k is on).
  int64_t n = n_candidates;
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  if (p_.top_k > 0 && p_.top_k < n) {
    n = p_.top_k;
    std::partial_sort(idx_.begin(), idx_.begin() + n, cand_end, by_logit);
  } else {
    std::sort(idx_.begin(), cand_end, by_logit);
  }
  const float mx = logits[idx_[0]];
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    prob_[size_t(i)] = std::exp(logits[idx_[size_t(i)]] - mx);
    sum += prob_[size_t(i)];
  }
  for (int64_t i = 0; i < n; ++i) prob_[size_t(i)] = float(prob_[size_t(i)] / sum);
  // top-p: the smallest prefix whose mass reaches top_p (at least one token).
  if (p_.top_p < 1.f) {
    double cum = 0;
    int64_t keep = n;
    for (int64_t i = 0; i < n; ++i) {
      cum += prob_[size_t(i)];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  // min-p: drop tokens below min_p × the top probability.
  if (p_.min_p > 0.f) {
    const float floor = p_.min_p * prob_[0];
    int64_t keep = 1;
    while (keep < n && prob_[size_t(keep)] >= floor) ++keep;
    n = keep;
  }
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += prob_[size_t(i)];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (int64_t i = 0; i < n; ++i) {
    r -= prob_[size_t(i)];
    if (r <= 0) return idx_[size_t(i)];
  }
  return idx_[size_t(n - 1)];
}

}  // namespace moep
