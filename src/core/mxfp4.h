// MXFP4 (OCP microscaling FP4), as gpt-oss publishes its experts: blocks of 32 e2m1 values sharing one e8m0 scale.
// A block is 16 bytes, two values per byte, the low nibble first; a value's bit 3 is its sign and bits 0-2 index
// the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6. The scale byte s means 2^(s - 127). Every value so made is exactly a
// bf16 value (scales from 2^-127 up), so decoding to bf16 loses nothing but the f32 range below bf16's. moep keeps
// such weights as ggml's MXFP4 blocks (DType::MXFP4, core/quant.h), which hold the same values in another layout
// (mxfp4_to_ggml_blocks).
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

// n_blocks blocks of such a row (blocks: n_blocks × 16 bytes, scales: n_blocks bytes) as ggml's MXFP4 blocks
// (core/quant.h's GgmlType::MXFP4, DType::MXFP4) at out, 17 bytes each: the scale byte unchanged (ggml's value
// doubles the e2m1 code and halves the scale: the same number), then byte j holding value j's code in its low
// nibble and value j + 16's in its high one (here value 2j is the low nibble of byte j and 2j + 1 the high one).
// Every value decodes to the same f32, except code 8 (−0 here), which ggml reads as +0.
void mxfp4_to_ggml_blocks(const uint8_t* blocks, const uint8_t* scales, int64_t n_blocks, uint8_t* out);

}  // namespace moep
