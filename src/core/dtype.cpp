#include "core/dtype.h"

#include <cctype>
#include <cmath>

#include "core/error.h"

namespace moep {

namespace {
struct DTypeInfo {
  const char* name;
  int block_weights;
  int block_bytes;
};
// Block layouts as ggml defines them (core/quant.h holds the bit layouts).
constexpr DTypeInfo kInfo[] = {
    {"f32", 1, 4},     {"f16", 1, 2},      {"bf16", 1, 2},     {"q8_0", 32, 34},
    {"q4_0", 32, 18},  {"q4_K", 256, 144}, {"q5_K", 256, 176}, {"q6_K", 256, 210},
    {"mxfp4", 32, 17},
};
static_assert(sizeof(kInfo) / sizeof(kInfo[0]) == size_t(DType::MXFP4) + 1, "a DType without its layout");
const DTypeInfo& info(DType t) { return kInfo[static_cast<int>(t)]; }
}  // namespace

const char* dtype_name(DType t) { return info(t).name; }
int dtype_block_weights(DType t) { return info(t).block_weights; }
int dtype_block_bytes(DType t) { return info(t).block_bytes; }

size_t dtype_row_bytes(DType t, int64_t n) {
  const DTypeInfo& i = info(t);
  MOEP_ASSERT(n >= 0 && n % i.block_weights == 0);
  return size_t(n / i.block_weights) * size_t(i.block_bytes);
}

size_t dtype_size(DType t) {
  MOEP_ASSERT(!dtype_is_quantized(t));
  return size_t(info(t).block_bytes);
}

double dtype_bytes_per_weight(DType t) { return double(info(t).block_bytes) / info(t).block_weights; }

bool dtype_from_safetensors(std::string_view s, DType* out) {
  if (s == "F32") { *out = DType::F32; return true; }
  if (s == "F16") { *out = DType::F16; return true; }
  if (s == "BF16") { *out = DType::BF16; return true; }
  return false;
}

bool dtype_from_name(std::string_view s, DType* out) {
  if (s == "f32" || s == "float32" || s == "F32") { *out = DType::F32; return true; }
  if (s == "f16" || s == "float16" || s == "F16") { *out = DType::F16; return true; }
  if (s == "bf16" || s == "bfloat16" || s == "BF16") { *out = DType::BF16; return true; }
  std::string lower(s);
  for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "q8_0") { *out = DType::Q8_0; return true; }
  if (lower == "q4_0") { *out = DType::Q4_0; return true; }
  if (lower == "q4_k") { *out = DType::Q4_K; return true; }
  if (lower == "q5_k") { *out = DType::Q5_K; return true; }
  if (lower == "q6_k") { *out = DType::Q6_K; return true; }
  if (lower == "mxfp4") { *out = DType::MXFP4; return true; }
  return false;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do { ++e; mant <<= 1; } while ((mant & 0x400) == 0);
      u = sign | (uint32_t(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00;            // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00;           // overflow -> inf (rounds to >= 65520)
  if (abs < 0x38800000u) {                                // subnormal or zero in f16
    if (abs < 0x33000000u) return sign;                   // rounds to zero
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // f16 subnormal units are 2^-24: m * 2^(e-150) / 2^-24
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    uint32_t r = m >> shift;  // round to nearest even on the bits shifted out
    if (rem > half || (rem == half && (r & 1))) ++r;
    return sign | uint16_t(r);
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);  // round mantissa to 10 bits, nearest even
  r -= 0x38000000u;                                // rebias exponent 127 -> 15
  return sign | uint16_t(r >> 13);
}

}  // namespace moep
