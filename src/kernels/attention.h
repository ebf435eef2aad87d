// Scaled dot-product attention of query heads over the keys and values of one sequence, f32 throughout.
// The caller makes it causal by giving each query the positions up to its own.
//
// attention_head is what the engine runs (one pass, online softmax); attention_head_reference
// (kernels/reference.cpp) is the definition it is tested against. ops::attention runs attention_head over a
// batch of rows and heads on a ThreadPool.
#pragma once

#include <cstdint>
#include <limits>

namespace moep::kernels {

// Query head h reads key/value head h / group() (grouped-query attention: n_heads must be a multiple of
// n_kv_heads). Every score is multiplied by `scale` (1/sqrt(head_dim) in every family moep runs).
struct AttentionShape {
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.f;
  int64_t group() const { return n_heads / n_kv_heads; }
  int64_t q_dim() const { return n_heads * head_dim; }
};

// The keys and values of one sequence, position-major: the key of position p for kv head g is the head_dim floats
// at keys + p · row_stride + g · head_dim, its value likewise at values. A view: owns nothing.
struct SequenceKv {
  const float* keys = nullptr;
  const float* values = nullptr;
  int64_t row_stride = 0;  // floats from one position to the next, at least n_kv_heads · head_dim
};

// out[i] = Σ_j softmax_j(scale · q·k_j) · v_j[i] for i in [0, head_dim), over the positions j in [0, n_positions)
// of kv head `kv_head`. One pass: a running maximum and sum, the accumulator rescaled when the maximum grows.
// q, acc and out hold head_dim floats; acc is the caller's scratch (overwritten), so that a call allocates nothing.
// n_positions ≥ 1. acc must not overlap q, out or the sequence.
// `sink` (gpt-oss): a logit that joins the softmax with no value (its weight is dropped): the softmax runs over
// [scores..., sink]. -infinity: none.
void attention_head(const float* q, const SequenceKv& kv, int64_t kv_head, int64_t n_positions, int64_t head_dim,
                    float scale, float* acc, float* out,
                    float sink = -std::numeric_limits<float>::infinity());

// The same function by its definition: scores, their maximum, then the normalized weighted sum, in double (two
// passes over the positions), rounded to f32 at the end. Allocates; for tests.
void attention_head_reference(const float* q, const SequenceKv& kv, int64_t kv_head, int64_t n_positions,
                              int64_t head_dim, float scale, float* out,
                              float sink = -std::numeric_limits<float>::infinity());

}  // namespace moep::kernels
