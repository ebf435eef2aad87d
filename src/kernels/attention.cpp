#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moep::kernels {

// Compiled with the baseline flags and without fast-math: the operations run in source order, so results do not
// depend on the CPU or the thread count.
// acc and out are __restrict: they alias nothing else, so the compiler may vectorize the element-wise loops over
// them (as it did when acc was a local array in the transformer); each element's operations and their order are
// the same either way.
void attention_head(const float* q, const SequenceKv& kv, int64_t kv_head, int64_t n_positions, int64_t head_dim,
                    float scale, float* __restrict acc, float* __restrict out, float sink) {
  const float* keys = kv.keys + kv_head * head_dim;
  const float* values = kv.values + kv_head * head_dim;
  std::fill(acc, acc + head_dim, 0.f);
  // A sink starts the softmax as a score whose weight is counted but whose value is none.
  float running_max = sink, running_sum = sink == -std::numeric_limits<float>::infinity() ? 0.f : 1.f;
  for (int64_t j = 0; j < n_positions; ++j) {
    const float* kj = keys + j * kv.row_stride;
    float s = 0.f;
    for (int64_t i = 0; i < head_dim; ++i) s += q[i] * kj[i];
    s *= scale;
    if (s > running_max) {
      const float corr = std::exp(running_max - s);
      for (int64_t i = 0; i < head_dim; ++i) acc[i] *= corr;
      running_sum *= corr;
      running_max = s;
    }
    const float p = std::exp(s - running_max);
    running_sum += p;
    const float* vj = values + j * kv.row_stride;
    for (int64_t i = 0; i < head_dim; ++i) acc[i] += p * vj[i];
  }
  const float inv = 1.f / running_sum;
  for (int64_t i = 0; i < head_dim; ++i) out[i] = acc[i] * inv;
}

}  // namespace moep::kernels
