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

namespace {
// The k largest of x[0..n) into ids (decreasing; ties: lower index first), their values into vals.
void top_k_of(const float* x, int64_t n, int64_t k, int32_t* ids, float* vals) {
  int64_t m = 0;
  for (int64_t e = 0; e < n; ++e) {
    const float p = x[e];
    if (m == k && !(p > vals[k - 1])) continue;
    int64_t i = (m < k) ? m++ : k - 1;
    while (i > 0 && p > vals[i - 1]) {
      vals[i] = vals[i - 1];
      ids[i] = ids[i - 1];
      --i;
    }
    vals[i] = p;
    ids[i] = int32_t(e);
  }
}
}  // namespace

void route_token_grouped(const ModelConfig& c, float* logits, const VecRef& bias, float* scratch, int32_t* ids,
                         float* weights) {
  const int64_t E = c.n_experts, k = c.top_k;
  if (c.router_scoring == RouterScoring::Softmax)
    ops::softmax(logits, E);
  else
    for (int64_t e = 0; e < E; ++e) logits[e] = 1.f / (1.f + std::exp(-logits[e]));
  float* choice = scratch;
  for (int64_t e = 0; e < E; ++e) choice[e] = logits[e] + (bias.empty() ? 0.f : bias.at(e));
  if (c.group_score != GroupScore::None && c.topk_group < c.n_group) {
    const int64_t G = c.n_group, per = E / G;
    float* group = scratch + E;
    for (int64_t g = 0; g < G; ++g) {
      const float* x = choice + g * per;
      float best = x[0], second = -INFINITY;
      for (int64_t i = 1; i < per; ++i) {
        if (x[i] > best) {
          second = best;
          best = x[i];
        } else if (x[i] > second) {
          second = x[i];
        }
      }
      group[g] = c.group_score == GroupScore::Max ? best : best + second;
    }
    // The topk_group best groups (ids and weights as scratch: k ≥ topk_group is not guaranteed, so mark in place).
    for (int64_t kept = 0; kept < c.topk_group; ++kept) {
      int64_t b = -1;
      for (int64_t g = 0; g < G; ++g)
        if (group[g] != -INFINITY && (b < 0 || group[g] > group[b])) b = g;
      group[b] = -INFINITY;  // taken
    }
    for (int64_t g = 0; g < G; ++g)
      if (group[g] != -INFINITY)
        for (int64_t i = 0; i < per; ++i) choice[g * per + i] = 0.f;
  }
  top_k_of(choice, E, k, ids, weights);
  for (int64_t i = 0; i < k; ++i) weights[i] = logits[ids[i]];
  if (c.topk_norm == TopKNorm::Sum) {
    float s = 0.f;
    for (int64_t i = 0; i < k; ++i) s += weights[i];
    s += 1e-20f;
    for (int64_t i = 0; i < k; ++i) weights[i] /= s;
  }
  const float scale = float(c.routed_scaling_factor);
  for (int64_t i = 0; i < k; ++i) weights[i] *= scale;
}

}  // namespace moep
