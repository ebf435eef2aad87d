#include "core/mxfp4.h"

#include <cmath>

namespace moep {

namespace {
constexpr float kMagnitude[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
}

float mxfp4_value(uint8_t code, uint8_t scale) {
  const float m = kMagnitude[code & 7];
  // ldexp is exact for every scale: the smallest, 0.5 · 2^-127, is an f32 subnormal.
  const float v = std::ldexp(m, int(scale) - 127);
  return (code & 8) ? -v : v;
}

void mxfp4_decode(const uint8_t* blocks, const uint8_t* scales, int64_t first, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = first + i, block = j / kMxfp4BlockValues, within = j % kMxfp4BlockValues;
    const uint8_t byte = blocks[block * kMxfp4BlockBytes + within / 2];
    out[i] = mxfp4_value(uint8_t((within & 1) ? byte >> 4 : byte & 0x0F), scales[block]);
  }
}

void mxfp4_to_ggml_blocks(const uint8_t* blocks, const uint8_t* scales, int64_t n_blocks, uint8_t* out) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* in = blocks + b * kMxfp4BlockBytes;
    uint8_t* o = out + b * (kMxfp4BlockBytes + 1);
    auto code = [in](int j) { return (j & 1) ? in[j / 2] >> 4 : in[j / 2] & 0x0F; };
    o[0] = scales[b];
    for (int j = 0; j < 16; ++j) o[1 + j] = uint8_t(code(j) | (code(j + 16) << 4));
  }
}

}  // namespace moep
