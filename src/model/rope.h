// RoPE tables as transformers computes them, plain and YaRN-scaled.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace moep {

// YaRN's magnitude correction 0.1·m·ln(scale) + 1 (1 for scale ≤ 1); DeepSeek multiplies its softmax scale by the
// square of yarn_mscale(factor, mscale_all_dim).
double yarn_mscale(double scale, double m = 1.0);

// The inverse frequencies [rotary_dim/2] in float32 as transformers makes them, and the factor its cos and sin are
// multiplied by (1 without scaling; YaRN: attention_factor, or the ratio of mscales, or yarn_mscale(factor)).
std::vector<float> rope_inv_freq(double theta, const RopeScaling& s, int64_t rotary_dim, double* attention_factor);

// cos and sin [ctx, rotary_dim/2]: angle = f32(pos) · inv_freq in float32, then cos/sin times the attention factor,
// in float32 as transformers' rotary embedding does.
void rope_tables(double theta, const RopeScaling& s, int64_t rotary_dim, int64_t ctx, float* cos_out, float* sin_out);

}  // namespace moep
