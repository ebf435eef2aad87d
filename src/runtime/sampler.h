// Choosing the next token from logits, with the controls people know from llama.cpp and transformers.
// Order of operations (as transformers' logits processors apply them): grammar mask → repetition penalty → temperature →
// top-k → top-p → min-p → sample. Temperature 0 means greedy (argmax; the lowest id wins a tie).
// A Sampler owns its random generator: the same seed gives the same tokens. Buffers are sized at
// construction (vocab); sample() allocates nothing.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
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
