// Built with -ffp-contract=off (CMakeLists.txt): ggml's reference code rounds after every multiply and add, and
// a fused multiply-add (which GCC forms by default where the target has one, e.g. every aarch64) would change
// the last bit of scales and dequantized weights.
#include "core/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace moep {
namespace {

constexpr int kQK = 32;   // weights per block of Q4_0 and Q8_0
constexpr int kQKK = 256;  // weights per super-block of the K types

// Byte layouts of one block (offsets from its start).
//   Q8_0: f16 d | int8 q[32]                                                     34 bytes
//   Q4_0: f16 d | u8 q[16], weight j in the low nibble of q[j], weight j+16 in the high one     18 bytes
//   Q5_0: f16 d | u32 qh (fifth bits) | u8 q[16] as Q4_0's                      22 bytes (decode only)
//   Q5_1: f16 d | f16 m | u32 qh | u8 q[16]                                      24 bytes (decode only)
//   Q4_K: f16 d | f16 dmin | u8 scales[12] | u8 q[128]                            144 bytes
//   Q5_K: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 ql[128]              176 bytes
//   Q6_K: u8 ql[128] | u8 qh[64] | int8 scales[16] | f16 d                        210 bytes
//   MXFP4: u8 e | u8 q[16], nibbles as Q4_0's; weight = kMxfp4Doubled[nibble] · 2^(e − 128)   17 bytes
// The K types split 256 weights into sub-blocks (8 of 32 for Q4_K/Q5_K, each with a 6-bit scale and a 6-bit
// min packed into `scales`; 16 of 16 for Q6_K, each with an int8 scale), all scaled by the f16 d (and dmin).
constexpr int kQ4KScales = 12;

const GgmlTypeTraits kTraits[] = {
    {GgmlType::F32, "f32", 1, 4},        {GgmlType::F16, "f16", 1, 2},
    {GgmlType::Q4_0, "q4_0", kQK, 18},   {GgmlType::Q8_0, "q8_0", kQK, 34},
    {GgmlType::Q4_K, "q4_K", kQKK, 144}, {GgmlType::Q5_K, "q5_K", kQKK, 176},
    {GgmlType::Q6_K, "q6_K", kQKK, 210}, {GgmlType::BF16, "bf16", 1, 2},
    {GgmlType::Q5_0, "q5_0", kQK, 22},   {GgmlType::Q5_1, "q5_1", kQK, 24},
    {GgmlType::MXFP4, "mxfp4", kQK, 17},
};

// MXFP4's e2m1 values doubled (ggml's kvalues_mxfp4): code c's bit 3 is the sign, bits 0-2 the magnitudes 0, 0.5,
// 1, 1.5, 2, 3, 4, 6, here times 2 so that they are integers; the block scale is halved to match (mxfp4_half_scale).
// Code 8 (−0 in e2m1) is +0 here, as in ggml.
constexpr int8_t kMxfp4Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// Half of the e8m0 scale 2^(e − 127): 2^(e − 128), exact for every byte (e < 2 are f32 subnormals). ggml's
// ggml_e8m0_to_fp32_half writes the same bits; 255 (NaN in e8m0) is 2^127, as there.
float mxfp4_half_scale(uint8_t e) {
  const uint32_t bits = e < 2 ? uint32_t(0x00200000u) << e : uint32_t(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
void store_f16(uint8_t* p, float f) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p, &h, 2);
}

// Round to nearest, ties to even, for |x| < 2^22: adding 1.5 * 2^23 leaves the integer in the low mantissa bits.
// ggml rounds this way in the K quantizers (not with roundf, which ties away from zero).
int nearest_int(float x) {
  const float biased = x + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &biased, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

// The j-th (0..7) 6-bit scale and min of a Q4_K/Q5_K super-block. Sub-blocks 0-3 keep theirs in the low 6 bits
// of bytes j and j+4; sub-blocks 4-7 keep their low 4 bits in byte j+4 and their top 2 bits in the spare top
// bits of bytes j-4 (scale) and j (min).
void scale_min_k4(int j, const uint8_t* scales, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = scales[j] & 63;
    *min = scales[j + 4] & 63;
  } else {
    *scale = uint8_t((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4));
    *min = uint8_t((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// ---- dequantization ----

void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) y[j] = float(q[j]) * d;
}

void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* q = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = float((q[j] & 0x0f) - 8) * d;
    y[j + kQK / 2] = float((q[j] >> 4) - 8) * d;
  }
}

void dequant_mxfp4(const uint8_t* b, float* y) {
  const float d = mxfp4_half_scale(b[0]);
  const uint8_t* q = b + 1;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = float(kMxfp4Doubled[q[j] & 0x0f]) * d;  // exact: a small integer times a power of 2
    y[j + kQK / 2] = float(kMxfp4Doubled[q[j] >> 4]) * d;
  }
}

// Q5_0 and Q5_1: weight j (< 16) in the low nibble of q[j], weight j + 16 in the high one; the fifth bits of all 32
// in the u32 qh (bit j for weight j). Q5_0 is centred (level - 16) · d; Q5_1 is level · d + m.
void dequant_q5(const uint8_t* b, float* y, bool with_min) {
  const float d = load_f16(b);
  const float m = with_min ? load_f16(b + 2) : 0.f;
  const uint8_t* p = b + (with_min ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* q = p + 4;
  const int offset = with_min ? 0 : 16;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (q[j] & 0x0f) | int(((qh >> j) & 1u) << 4);
    const int hi = (q[j] >> 4) | int(((qh >> (j + kQK / 2)) & 1u) << 4);
    if (with_min) {
      y[j] = float(lo) * d + m;
      y[j + kQK / 2] = float(hi) * d + m;
    } else {  // no "+ 0": level 16 · a negative d is -0, as ggml gives
      y[j] = float(lo - offset) * d;
      y[j + kQK / 2] = float(hi - offset) * d;
    }
  }
}

// Q4_K and Q5_K: 4 chunks of 64 weights; a chunk's first 32 take the low nibbles of 32 bytes of q, its last 32
// the high nibbles, with sub-blocks 2c and 2c+1. Q5_K adds a fifth bit from qh: bit 2c (first half) and 2c+1.
void dequant_q45_k(const uint8_t* b, float* y, bool five_bits) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = five_bits ? b + 4 + kQ4KScales : nullptr;
  const uint8_t* q = b + 4 + kQ4KScales + (five_bits ? kQKK / 8 : 0);
  for (int c = 0; c < 4; ++c) {
    uint8_t sc, m;
    scale_min_k4(2 * c, scales, &sc, &m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    scale_min_k4(2 * c + 1, scales, &sc, &m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l) {
      int v = q[l] & 0x0f;
      if (five_bits && (qh[l] >> (2 * c) & 1)) v += 16;
      *y++ = d1 * float(v) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      int v = q[l] >> 4;
      if (five_bits && (qh[l] >> (2 * c + 1) & 1)) v += 16;
      *y++ = d2 * float(v) - m2;
    }
    q += 32;
  }
}

// Q6_K: 2 halves of 128 weights; within a half, weight l + 32k (l < 32, k < 4) has its low 4 bits in ql (byte l
// for k = 0, 2 and byte l + 32 for k = 1, 3; low nibble for k < 2) and its top 2 bits in bits 2k of qh[l].
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + kQKK / 2;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + kQKK / 2 + kQKK / 4);
  const float d = load_f16(b + kQKK / 2 + kQKK / 4 + kQKK / 16);
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2 & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4 & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6 & 3) << 4)) - 32;
      // (d · scale) · q, in this order: ggml's.
      y[l] = d * float(sc[is]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// ---- reference quantization ----

void quant_q8_0(const float* x, uint8_t* b) {
  float amax = 0.f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  store_f16(b, d);
  int8_t* q = reinterpret_cast<int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) q[j] = int8_t(std::round(x[j] * id));  // ties away from zero, as ggml's roundf
}

void quant_q4_0(const float* x, uint8_t* b) {
  // The scale maps the value of largest magnitude, with its sign, to -8: the one level only the negative side has.
  float amax = 0.f, max = 0.f;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  store_f16(b, d);
  uint8_t* q = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    // +8.5 then truncation rounds half up; the value of largest magnitude itself lands on 16 and clamps to 15.
    const int lo = std::min(15, int(x[j] * id + 8.5f));
    const int hi = std::min(15, int(x[j + kQK / 2] * id + 8.5f));
    q[j] = uint8_t(lo | (hi << 4));
  }
}

// The code whose value times d is nearest x, the first of equals (ggml's best_index_mxfp4: so 0 beats code 8's
// +0, and a tie between two levels goes to the lower code, the smaller magnitude).
int mxfp4_nearest_code(float x, float d) {
  int best = 0;
  float best_err = std::fabs(float(kMxfp4Doubled[0]) * d - x);
  for (int i = 1; i < 16; ++i) {
    const float err = std::fabs(float(kMxfp4Doubled[i]) * d - x);
    if (err < best_err) {
      best = i;
      best_err = err;
    }
  }
  return best;
}

// The scale puts the largest magnitude's binade at the top of e2m1's: amax in [2^k, 2^(k+1)) gets e = k − 2 + 127, so
// amax / 2^(e − 127) is in [4, 8), which the levels 4 and 6 (and the clamp at 6) cover. Values above 6·2^(e−127)
// round down to 6: ggml takes no scale that would hold them.
void quant_mxfp4(const float* x, uint8_t* b) {
  float amax = 0.f;
  for (int j = 0; j < kQK; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]);  // NaN never wins, as in ggml
  // ggml converts floor(log2f(amax)) − 2 + 127 (an f32) to uint8_t directly, which C defines for 0..255 only: every
  // finite amax from 2^-125 up gives 0..252. Below (down to −24 for the smallest subnormal), and for an infinite
  // amax, x86-64 converts to int32 (INT32_MIN when out of range) and keeps the low byte: 2^-130 gets 251, infinity
  // 0. This does the same, defined (other targets' ggml may write other bytes for such blocks).
  uint8_t e = 0;
  if (amax > 0.f) {
    const float biased = std::floor(std::log2(amax)) - 2.f + 127.f;
    e = std::isfinite(biased) ? uint8_t(int32_t(biased)) : 0;
  }
  const float d = mxfp4_half_scale(e);
  b[0] = e;
  uint8_t* q = b + 1;
  for (int j = 0; j < kQK / 2; ++j)
    q[j] = uint8_t(mxfp4_nearest_code(x[j], d) | (mxfp4_nearest_code(x[j + kQK / 2], d) << 4));
}

// Q5_0 as Q4_0 one bit wider (the largest magnitude, signed, maps to -16); Q5_1 spans [min, max] in 31 steps.
void quant_q5(const float* x, uint8_t* b, bool with_min) {
  float d, m = 0.f;
  if (with_min) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < kQK; ++j) {
      lo = std::min(lo, x[j]);
      hi = std::max(hi, x[j]);
    }
    d = (hi - lo) / 31.f;
    m = lo;
  } else {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    d = max / -16.f;
  }
  const float id = d != 0.f ? 1.f / d : 0.f;
  store_f16(b, d);
  if (with_min) store_f16(b + 2, m);
  uint8_t* p = b + (with_min ? 4 : 2);
  uint8_t* q = p + 4;
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    int lo, hi;
    if (with_min) {
      lo = int(uint8_t((x[j] - m) * id + 0.5f));
      hi = int(uint8_t((x[j + kQK / 2] - m) * id + 0.5f));
    } else {
      lo = std::min(31, int(x[j] * id + 16.5f));
      hi = std::min(31, int(x[j + kQK / 2] * id + 16.5f));
    }
    q[j] = uint8_t((lo & 0x0f) | ((hi & 0x0f) << 4));
    qh |= uint32_t((lo >> 4) & 1) << j;
    qh |= uint32_t((hi >> 4) & 1) << (j + kQK / 2);
  }
  std::memcpy(p, &qh, 4);
}

// Fits x[i] ≈ scale · L[i] - the_min with L in [0, nmax], weighted by `w`: starts from the min/max grid, then
// tries nstep + 1 grids of (nmax + rmin + rdelta · step) levels over the range and keeps the one with the least
// weighted squared error, solving scale and min by least squares for each. Returns the scale; *the_min ≥ 0.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* Laux,
                    float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = float(nmax) / (max - min);
  float scale = 1.f / iscale;
  float best_error = 0.f;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    const float diff = scale * float(L[i]) + min - x[i];
    best_error += w[i] * (diff * diff);
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * float(step) + float(nmax)) / (max - min);
    float sum_l = 0.f, sum_l2 = 0.f, sum_xl = 0.f;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = uint8_t(l);
      const float fl = float(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0.f;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * float(Laux[i]) + this_min - x[i];
        cur_error += w[i] * (diff * diff);
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Q4_K (nmax 15) and Q5_K (nmax 31): a scale and min per 32 weights, then both quantized to 6 bits against the
// largest of each, then the weights requantized against those rounded scales.
void quant_q45_k(const float* x, uint8_t* b, bool five_bits) {
  const int nmax = five_bits ? 31 : 15;
  uint8_t L[kQKK], Laux[32];
  float w[32], mins[8], scales[8];
  float max_scale = 0.f, max_min = 0.f;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0.f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32.f);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
    scales[j] = five_bits ? fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15)
                          : fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t* packed = b + 4;
  std::memset(packed, 0, kQ4KScales);
  for (int j = 0; j < 8; ++j) {
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    if (j < 4) {
      packed[j] = ls;
      packed[j + 4] = lm;
    } else {
      packed[j + 4] = uint8_t((ls & 0x0f) | ((lm & 0x0f) << 4));
      packed[j - 4] |= uint8_t((ls >> 4) << 6);
      packed[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  store_f16(b, max_scale / 63.f);
  store_f16(b + 2, max_min / 63.f);
  const float d_all = load_f16(b), dmin_all = load_f16(b + 2);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    scale_min_k4(j, packed, &sc, &m);
    const float d = d_all * float(sc);
    if (d == 0.f) continue;  // keeps the first fit's levels, as ggml does
    const float dm = dmin_all * float(m);
    for (int i = 0; i < 32; ++i) {
      const int l = nearest_int((x[32 * j + i] + dm) / d);
      L[32 * j + i] = uint8_t(std::max(0, std::min(nmax, l)));
    }
  }
  uint8_t* qh = five_bits ? b + 4 + kQ4KScales : nullptr;
  uint8_t* q = b + 4 + kQ4KScales + (five_bits ? kQKK / 8 : 0);
  if (five_bits) std::memset(qh, 0, kQKK / 8);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      int lo = L[64 * c + l], hi = L[64 * c + l + 32];
      if (five_bits) {
        if (lo > 15) { lo -= 16; qh[l] |= uint8_t(1 << (2 * c)); }
        if (hi > 15) { hi -= 16; qh[l] |= uint8_t(1 << (2 * c + 1)); }
      }
      q[l] = uint8_t(lo | (hi << 4));
    }
    q += 32;
  }
}

// Symmetric fit x ≈ scale · (L - nmax), L in [0, 2 nmax), weighted by x² (ggml's make_qx_quants with rmse_type
// 1, no weights): the grid of the largest magnitude, then 18 grids around it, keeping the best least-squares fit.
float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float max = 0.f, amax = 0.f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < 1e-15f) {  // all zero
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = float(-nmax) / max;
  float sumlx = 0.f, suml2 = 0.f;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    const float fl = float(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0.f ? sumlx / suml2 : 0.f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(is)) / max;
    sumlx = suml2 = 0.f;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      const float fl = float(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = int8_t(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void quant_q6_k(const float* x, uint8_t* b) {
  int8_t L[kQKK];
  float scales[16];
  float max_scale = 0.f, max_abs_scale = 0.f;
  for (int ib = 0; ib < 16; ++ib) {
    const float scale = fit_scale_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
    scales[ib] = scale;
    if (std::fabs(scale) > max_abs_scale) {
      max_abs_scale = std::fabs(scale);
      max_scale = scale;
    }
  }
  uint8_t* ql = b;
  uint8_t* qh = b + kQKK / 2;
  int8_t* sc = reinterpret_cast<int8_t*>(b + kQKK / 2 + kQKK / 4);
  uint8_t* d_ptr = b + kQKK / 2 + kQKK / 4 + kQKK / 16;
  if (max_abs_scale < 1e-15f) {
    std::memset(b, 0, 210);
    store_f16(d_ptr, 0.f);
    return;
  }
  const float iscale = -128.f / max_scale;
  store_f16(d_ptr, 1.f / iscale);
  for (int ib = 0; ib < 16; ++ib) sc[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
  const float d_all = load_f16(d_ptr);
  for (int j = 0; j < 16; ++j) {
    const float d = d_all * float(sc[j]);
    if (d == 0.f) continue;
    for (int i = 0; i < 16; ++i) {
      const int l = nearest_int(x[16 * j + i] / d);
      L[16 * j + i] = int8_t(std::max(-32, std::min(31, l)) + 32);
    }
  }
  for (int half = 0; half < 2; ++half) {
    const int8_t* Lh = L + 128 * half;
    for (int l = 0; l < 32; ++l) {
      const uint8_t q1 = Lh[l] & 0x0f, q2 = Lh[l + 32] & 0x0f, q3 = Lh[l + 64] & 0x0f, q4 = Lh[l + 96] & 0x0f;
      ql[l] = uint8_t(q1 | (q3 << 4));
      ql[l + 32] = uint8_t(q2 | (q4 << 4));
      qh[l] = uint8_t((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t id) {
  for (const auto& t : kTraits)
    if (uint32_t(t.type) == id) return &t;
  return nullptr;
}

const GgmlTypeTraits& ggml_type_traits(GgmlType type) {
  const GgmlTypeTraits* t = ggml_type_traits(uint32_t(type));
  MOEP_ASSERT(t, "GgmlType ", uint32_t(type), " has no traits");
  return *t;
}

const char* ggml_type_name_any(uint32_t id) {
  // ggml.h's enum ggml_type; ids 4, 5 and 31-33, 36-38 were removed from ggml and name nothing.
  static const char* const kNames[] = {
      "f32",     "f16",    "q4_0",  "q4_1",   nullptr, nullptr, "q5_0",   "q5_1",    "q8_0",  "q8_1",  "q2_K",
      "q3_K",    "q4_K",   "q5_K",  "q6_K",   "q8_K",  "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s",
      "iq2_s",   "iq4_xs", "i8",    "i16",    "i32",   "i64",   "f64",    "iq1_m",   "bf16",  nullptr, nullptr,
      nullptr,   "tq1_0",  "tq2_0", nullptr,  nullptr, nullptr, "mxfp4",  "nvfp4",   "q1_0",  "q2_0",
  };
  return id < sizeof(kNames) / sizeof(kNames[0]) ? kNames[id] : nullptr;
}

bool ggml_type_load_only(GgmlType t) { return t == GgmlType::Q5_0 || t == GgmlType::Q5_1; }

GgmlType ggml_type_of(DType t) {
  switch (t) {
    case DType::F32: return GgmlType::F32;
    case DType::F16: return GgmlType::F16;
    case DType::BF16: return GgmlType::BF16;
    case DType::Q8_0: return GgmlType::Q8_0;
    case DType::Q4_0: return GgmlType::Q4_0;
    case DType::Q4_K: return GgmlType::Q4_K;
    case DType::Q5_K: return GgmlType::Q5_K;
    case DType::Q6_K: return GgmlType::Q6_K;
    case DType::MXFP4: return GgmlType::MXFP4;
  }
  MOEP_ASSERT(false, "ggml_type_of: no such DType");
  return GgmlType::F32;
}

DType dtype_of_ggml(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return DType::F32;
    case GgmlType::F16: return DType::F16;
    case GgmlType::BF16: return DType::BF16;
    case GgmlType::Q8_0: return DType::Q8_0;
    case GgmlType::Q4_0: return DType::Q4_0;
    case GgmlType::Q4_K: return DType::Q4_K;
    case GgmlType::Q5_K: return DType::Q5_K;
    case GgmlType::Q6_K: return DType::Q6_K;
    case GgmlType::MXFP4: return DType::MXFP4;
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: break;  // no kernels: load-only
  }
  MOEP_ASSERT(false, "dtype_of_ggml: no DType for ggml type ", ggml_type_traits(t).name);
  return DType::F32;
}

size_t ggml_row_bytes(GgmlType type, int64_t n) {
  const GgmlTypeTraits& t = ggml_type_traits(type);
  MOEP_ASSERT(n >= 0 && n % t.block_weights == 0, n, " weights are not whole blocks of ", t.name);
  return size_t(n / t.block_weights) * size_t(t.block_bytes);
}

void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const GgmlTypeTraits& t = ggml_type_traits(type);
  MOEP_ASSERT(n >= 0 && n % t.block_weights == 0, n, " weights are not whole blocks of ", t.name);
  const int64_t blocks = n / t.block_weights;
  for (int64_t i = 0; i < blocks; ++i) {
    const uint8_t* b = src + i * t.block_bytes;
    float* y = dst + i * t.block_weights;
    switch (type) {
      case GgmlType::F32: std::memcpy(y, b, 4); break;
      case GgmlType::F16: *y = load_f16(b); break;
      case GgmlType::BF16: {
        uint16_t h;
        std::memcpy(&h, b, 2);
        *y = bf16_to_f32(h);
        break;
      }
      case GgmlType::Q8_0: dequant_q8_0(b, y); break;
      case GgmlType::Q4_0: dequant_q4_0(b, y); break;
      case GgmlType::Q4_K: dequant_q45_k(b, y, false); break;
      case GgmlType::Q5_K: dequant_q45_k(b, y, true); break;
      case GgmlType::Q6_K: dequant_q6_k(b, y); break;
      case GgmlType::Q5_0: dequant_q5(b, y, false); break;
      case GgmlType::Q5_1: dequant_q5(b, y, true); break;
      case GgmlType::MXFP4: dequant_mxfp4(b, y); break;
    }
  }
}

void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n) {
  const GgmlTypeTraits& t = ggml_type_traits(type);
  MOEP_ASSERT(n >= 0 && n % t.block_weights == 0, n, " weights are not whole blocks of ", t.name);
  const int64_t blocks = n / t.block_weights;
  for (int64_t i = 0; i < blocks; ++i) {
    const float* x = src + i * t.block_weights;
    uint8_t* b = dst + i * t.block_bytes;
    switch (type) {
      case GgmlType::F32: std::memcpy(b, x, 4); break;
      case GgmlType::F16: store_f16(b, *x); break;
      case GgmlType::BF16: {
        const uint16_t h = f32_to_bf16(*x);
        std::memcpy(b, &h, 2);
        break;
      }
      case GgmlType::Q8_0: quant_q8_0(x, b); break;
      case GgmlType::Q4_0: quant_q4_0(x, b); break;
      case GgmlType::Q4_K: quant_q45_k(x, b, false); break;
      case GgmlType::Q5_K: quant_q45_k(x, b, true); break;
      case GgmlType::Q6_K: quant_q6_k(x, b); break;
      case GgmlType::Q5_0: quant_q5(x, b, false); break;
      case GgmlType::Q5_1: quant_q5(x, b, true); break;
      case GgmlType::MXFP4: quant_mxfp4(x, b); break;
    }
  }
}

}  // namespace moep
