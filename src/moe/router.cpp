#include "moe/router.h"

#include <cmath>

#include "kernels/ops.h"

namespace moep {

void route_token(float* logits, int64_t n_experts, int64_t k, TopKNorm norm, double pnorm, int32_t* ids,
                 float* weights) {
  ops::softmax(logits, n_experts);
  // Selection of the k largest by repeated insertion: k and n_experts are small (k ≤ 16, E ≤ 256).
  int64_t n = 0;
  for (int64_t e = 0; e < n_experts; ++e) {
    const float p = logits[e];
    if (n == k && !(p > weights[k - 1])) continue;
    int64_t i = (n < k) ? n++ : k - 1;
    while (i > 0 && p > weights[i - 1]) {
      weights[i] = weights[i - 1];
      ids[i] = ids[i - 1];
      --i;
    }
    weights[i] = p;
    ids[i] = int32_t(e);
  }
  if (norm == TopKNorm::Sum) {
    float s = 0.f;
    for (int64_t i = 0; i < k; ++i) s += weights[i];
    for (int64_t i = 0; i < k; ++i) weights[i] /= s;
  } else if (norm == TopKNorm::PNorm) {
    double s = 0.0;
    for (int64_t i = 0; i < k; ++i) s += std::pow(std::fabs(double(weights[i])), pnorm);
    const float nrm = float(std::pow(s, 1.0 / pnorm));
    for (int64_t i = 0; i < k; ++i) weights[i] /= nrm;
  }
}

}  // namespace moep
