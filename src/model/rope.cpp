#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace moep {

double yarn_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

std::vector<float> rope_inv_freq(double theta, const RopeScaling& s, int64_t rotary_dim, double* attention_factor) {
  const int64_t half = rotary_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  // theta^(2i/dim), the exponent in float32 as torch.arange(0, dim, 2).float() / dim makes it.
  std::vector<float> pos_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    pos_freq[size_t(i)] = float(std::pow(theta, double(float(2 * i) / float(rotary_dim))));
  double af = 1.0;
  if (s.type != "yarn") {
    for (int64_t i = 0; i < half; ++i)
      inv[size_t(i)] = float(1.0 / std::pow(theta, double(float(2 * i) / float(rotary_dim))));
    if (attention_factor) *attention_factor = af;
    return inv;
  }
  const double factor = s.factor;
  if (s.attention_factor > 0) af = s.attention_factor;
  else if (s.mscale != 0 && s.mscale_all_dim != 0) af = yarn_mscale(factor, s.mscale) / yarn_mscale(factor, s.mscale_all_dim);
  else af = yarn_mscale(factor);
  const double beta_fast = s.beta_fast != 0 ? s.beta_fast : 32.0, beta_slow = s.beta_slow != 0 ? s.beta_slow : 1.0;
  const double dim = double(rotary_dim), orig = double(s.original_max_position);
  auto correction_dim = [&](double rotations) {
    return dim * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(theta));
  };
  double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1);
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    // The ramp in float32: (i - low) / (high - low), clamped to [0, 1]; extrapolation weight 1 - ramp.
    const float ramp = std::clamp((float(i) - float(low)) / (float(high) - float(low)), 0.f, 1.f);
    const float extra_w = 1.f - ramp;
    const float pf = pos_freq[size_t(i)];
    const float extrapolated = 1.f / pf;
    const float interpolated = 1.f / (float(factor) * pf);
    inv[size_t(i)] = interpolated * (1.f - extra_w) + extrapolated * extra_w;
  }
  if (attention_factor) *attention_factor = af;
  return inv;
}

void rope_tables(double theta, const RopeScaling& s, int64_t rotary_dim, int64_t ctx, float* cos_out, float* sin_out) {
  double af = 1.0;
  const std::vector<float> inv = rope_inv_freq(theta, s, rotary_dim, &af);
  const int64_t half = rotary_dim / 2;
  for (int64_t p = 0; p < ctx; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const float ang = float(p) * inv[size_t(i)];
      cos_out[size_t(p * half + i)] = float(std::cos(double(ang))) * float(af);
      sin_out[size_t(p * half + i)] = float(std::sin(double(ang))) * float(af);
    }
}

}  // namespace moep
