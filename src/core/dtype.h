// Element types of weights as checkpoints store them, and conversions to f32.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace moep {

enum class DType : uint8_t { F32, F16, BF16 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
const char* dtype_name(DType t);  // "f32", "f16", "bf16"
// Parses a safetensors dtype ("F32", "F16", "BF16"); returns false for anything else.
bool dtype_from_safetensors(std::string_view s, DType* out);
// Parses a user-facing name ("f32", "float32", "bf16", "bfloat16", "f16", "float16").
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
