// Top-k routing exactly as the reference implementations do it: softmax over all experts (f32), the k
// largest (ties: lower expert index first), then the family's rescaling of the k weights.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace moep {

// logits: [n_experts] router outputs for one token (overwritten with the softmax probabilities).
// Writes the chosen experts, in decreasing probability, to ids[0..k) and their weights to weights[0..k).
void route_token(float* logits, int64_t n_experts, int64_t k, TopKNorm norm, double pnorm, int32_t* ids,
                 float* weights);

}  // namespace moep
