// Top-k routing exactly as the reference implementations do it: softmax over all experts (f32), the k
// largest (ties: lower expert index first), then the family's rescaling of the k weights.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/config.h"

namespace moep {

// logits: [n_experts] router outputs for one token (overwritten with the softmax probabilities).
// Writes the chosen experts, in decreasing probability, to ids[0..k) and their weights to weights[0..k).
void route_token(float* logits, int64_t n_experts, int64_t k, TopKNorm norm, double pnorm, int32_t* ids,
                 float* weights);

// DeepSeek's routing (ModelConfig::router_scoring, router_choice_bias, group_score, routed_scaling_factor):
// scores = softmax or sigmoid of the logits; choice = scores + bias (bias may be empty); with groups, each of n_group
// equal groups is scored (its best choice, or the sum of its two best), the topk_group best groups kept and the
// other experts' choices set to 0 (as transformers masks them); the k largest choices (ties: lower index first)
// are chosen; their weights are the scores (not the choices), divided by their sum + 1e-20 when c.topk_norm is
// Sum, times routed_scaling_factor. logits [n_experts] is overwritten with the scores; scratch holds
// n_experts + n_group floats.
void route_token_grouped(const ModelConfig& c, float* logits, const VecRef& bias, float* scratch, int32_t* ids,
                         float* weights);

// Whether c routes beyond softmax + top-k + the TopKNorm rescaling (route_token_grouped is needed).
inline bool routes_grouped(const ModelConfig& c) {
  return c.router_scoring != RouterScoring::Softmax || c.router_choice_bias || c.group_score != GroupScore::None ||
         c.routed_scaling_factor != 1.0;
}

}  // namespace moep
