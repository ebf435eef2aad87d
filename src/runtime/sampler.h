// Choosing the next token from logits, with the controls people know from llama.cpp and transformers.
// Order of operations (as transformers' logits processors apply them): logit bias → grammar mask → repetition
// penalty → temperature → top-k → top-p → min-p → sample. Temperature 0 means greedy (argmax; the lowest id wins a
// tie).
// A Sampler owns its random generator: the same seed gives the same tokens. Buffers are sized at
// construction (vocab); sample() allocates nothing.
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace moep {

struct SamplingParams {
  float temperature = 0.8f;
  int32_t top_k = 40;         // 0: off
  float top_p = 0.95f;        // 1: off
  float min_p = 0.05f;        // 0: off
  float repetition_penalty = 1.0f;  // 1: off; >1 discourages tokens already in the context (CTRL-style)
  uint64_t seed = 0;          // 0: a fresh random seed
  int32_t max_tokens = 256;
  std::vector<std::string> stop;     // stop strings (not included in the output)
  bool ignore_eos = false;
  // OpenAI's logit_bias: added to a token's logit before anything else; each in [-100, 100].
  std::vector<std::pair<int32_t, float>> logit_bias;

  static SamplingParams greedy() {
    SamplingParams p;
    p.temperature = 0.f;
    p.top_k = 0;
    p.top_p = 1.f;
    p.min_p = 0.f;
    return p;
  }
  // Throws moep::Error naming the first value out of range.
  void validate() const;
};

// The model's log-probabilities at one generated position, as OpenAI's logprobs report them: log-softmax of the
// raw logits, before the repetition penalty, the temperature and any truncation (top-k/top-p/min-p), so they
// describe the model's distribution whatever the sampling settings. Fixed size: filling one allocates nothing.
struct TokenLogprobs {
  static constexpr int kMaxTop = 20;  // OpenAI's bound on top_logprobs
  int32_t token = -1;                 // the sampled token
  float logprob = 0;                  // its log-probability
  int32_t n_top = 0;                  // entries used in top_ids/top_logprobs
  std::array<int32_t, kMaxTop> top_ids{};
  std::array<float, kMaxTop> top_logprobs{};  // descending; ties: the lower id first (as greedy sampling picks)
};

// Fills `out` for `token` and the n_top (0..kMaxTop) most likely tokens of `logits` [vocab]. Two passes over the
// vocabulary; allocates nothing. `token` must be in [0, vocab).
void token_logprobs(std::span<const float> logits, int32_t token, int32_t n_top, TokenLogprobs& out);

class Sampler {
 public:
  Sampler(int64_t vocab, const SamplingParams& params);
  // logits: [vocab] (modified). context: tokens so far (for the repetition penalty).
  // allowed: empty, or a bitmask of ceil(vocab / 64) words (bit i%64 of word i/64 = token i) from constrained
  // decoding: tokens outside it get -inf before anything else and are never returned (greedy takes the best
  // allowed token). At least one token must be allowed.
  int32_t sample(float* logits, std::span<const int32_t> context, std::span<const uint64_t> allowed = {});
  const SamplingParams& params() const { return p_; }
  uint64_t seed() const { return seed_; }

 private:
  SamplingParams p_;
  int64_t vocab_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::vector<int32_t> idx_;
  std::vector<float> prob_;
  std::vector<uint8_t> seen_;
};

}  // namespace moep
