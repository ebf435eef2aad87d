// Element types of weights as checkpoints store them, and conversions to f32.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace moep {

// F32, F16 and BF16 are element types. The others are ggml's block-quantized types (core/quant.h, GGUF files):
// a row of n weights is n / dtype_block_weights blocks of dtype_block_bytes each, laid end to end. Views of
// quantized weights (MatRef) keep row_stride in weights, a multiple of the block; byte offsets go through
// dtype_row_bytes. MXFP4 is ggml's block of 32 e2m1 values and an e8m0 scale (gpt-oss's experts), 17 bytes.
// New types go at the end: dtype_is_quantized and the kernels compare with Q8_0.
enum class DType : uint8_t { F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, MXFP4 };

inline bool dtype_is_quantized(DType t) { return t >= DType::Q8_0; }
// Weights per block: 1 for element types, 32 (Q8_0, Q4_0, MXFP4) or 256 (K-quants).
int dtype_block_weights(DType t);
// Bytes per block (for element types: the element's size).
int dtype_block_bytes(DType t);
// Bytes of n consecutive weights of a row; n must be a multiple of dtype_block_weights (MOEP_ASSERT).
size_t dtype_row_bytes(DType t, int64_t n);
// The size of one element: element types only (a quantized type has no per-weight size: MOEP_ASSERT).
size_t dtype_size(DType t);
// Bytes per weight as a fraction (8.5/8 for Q8_0, 4.5/8 for Q4_K, 4.25/8 for MXFP4, …): for sizes in reports
// and the model.
double dtype_bytes_per_weight(DType t);
const char* dtype_name(DType t);  // "f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q5_K", "q6_K", "mxfp4"
// Parses a safetensors dtype ("F32", "F16", "BF16"); returns false for anything else.
bool dtype_from_safetensors(std::string_view s, DType* out);
// Parses a user-facing name ("f32", "float32", "bf16", "bfloat16", "f16", "float16"; "q8_0", "q4_0", "q4_k",
// "q5_k", "q6_k", "mxfp4" in either case).
bool dtype_from_name(std::string_view s, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace moep
