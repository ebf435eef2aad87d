// MXFP4 (OCP microscaling FP4), as gpt-oss publishes its experts: blocks of 32 e2m1 values sharing one e8m0 scale.
// A block is 16 bytes, two values per byte, the low nibble first; a value's bit 3 is its sign and bits 0-2 index
// the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6. The scale byte s means 2^(s - 127). Every value so made is exactly a
// bf16 value (scales from 2^-127 up), so decoding to bf16 loses nothing but the f32 range below bf16's.
#pragma once

#include <cstdint>

namespace moep {

inline constexpr int64_t kMxfp4BlockValues = 32;
inline constexpr int64_t kMxfp4BlockBytes = 16;

// The value of one e2m1 code (its low 4 bits) times 2^(scale - 127), in f32 (exact).
float mxfp4_value(uint8_t code, uint8_t scale);
// Values [first, first + n) of a row of n_blocks blocks (blocks: n_blocks × 16 bytes, scales: n_blocks bytes) into
// out[0..n). first + n ≤ 32 · n_blocks.
void mxfp4_decode(const uint8_t* blocks, const uint8_t* scales, int64_t first, int64_t n, float* out);

}  // namespace moep
