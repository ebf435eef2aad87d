// AVX2 + FMA + F16C kernels (x86 CPUs without AVX-512): the same algorithms as gemm_avx512.cpp with 8-lane
// vectors and 16 registers. f32 arithmetic throughout; weights widened to f32 as they are loaded (bf16 by a
// 16-bit shift, f16 by vcvtph2ps), activations never rounded.
//
//  - few tokens: weights stream once, each widened vector serves every token (register blocking over T);
//  - many tokens: weight blocks widened once into f32 panels and reused by a kM × kNR micro-kernel.
//
// Built with -mavx2 -mfma -mf16c (see CMakeLists.txt); avx2_kernels() checks those at run time.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/gemm_driver.h"
#include "kernels/kernels.h"

namespace moep::kernels {

namespace {

constexpr int kL = 8;  // f32 lanes per vector

// ---- primitives -------------------------------------------------------------------------------------------

// All-ones in lanes [0, n), n in [0, 8]: the mask operand of vmaskmovps.
inline __m256i lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(n, kL))), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256 load_part(const float* p, int64_t n) { return _mm256_maskload_ps(p, lanes(n)); }
inline void store_part(float* p, __m256 v, int64_t n) { _mm256_maskstore_ps(p, lanes(n), v); }

// Eight 16-bit elements at p, of which only [0, n) are read (the rest are zero).
inline __m128i load16_part(const uint8_t* p, int64_t n) {
  alignas(16) uint16_t buf[8] = {};
  std::memcpy(buf, p, size_t(n) * 2);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Weight loads: 8 consecutive elements of a row from element c, widened to f32. part() reads only [0, n).
template <DType D>
struct WLoad;
template <>
struct WLoad<DType::F32> {
  using Elem = float;
  static __m256 full(const uint8_t* row, int64_t c) { return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c); }
  static __m256 part(const uint8_t* row, int64_t c, int64_t n) {
    return load_part(reinterpret_cast<const float*>(row) + c, n);
  }
};
template <>
struct WLoad<DType::BF16> {
  using Elem = uint16_t;
  static __m256 widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  static __m256 full(const uint8_t* row, int64_t c) {
    return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
  }
  static __m256 part(const uint8_t* row, int64_t c, int64_t n) { return widen(load16_part(row + 2 * c, n)); }
};
template <>
struct WLoad<DType::F16> {
  using Elem = uint16_t;
  static __m256 full(const uint8_t* row, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
  }
  static __m256 part(const uint8_t* row, int64_t c, int64_t n) { return _mm256_cvtph_ps(load16_part(row + 2 * c, n)); }
};

// Block-quantized weights (ggml's Q8_0 … Q6_K and MXFP4, core/quant.h), decoded in registers kL at a time, as in
// gemm_avx512.cpp (see there). QBlock<D>:
//   kWeights, kBytes      weights and bytes per block
//   Scales scales(b)      the block's scales (f16 and 6/8-bit ones; MXFP4: its 16 values), read once per block
//   piece<S>(b, scales)   weights [kL·S, kL·S + kL) of the block as f32
// The pieces are bit for bit dequantize_row's values (the same products in the same order, each rounded).

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
// The 8 bytes at p zero- (u8) or sign-extended (i8) to 32-bit lanes.
inline __m256i u8x8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
inline __m256i i8x8(const uint8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
// The low (kHigh false) or high nibble of each lane of v (lanes hold bytes).
template <bool kHigh>
inline __m256i nibble(__m256i v) {
  return kHigh ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(0x0f));
}

template <DType D>
struct QBlock;
// d (f16) | int8 q[32]: weight j = q[j] · d.
template <>
struct QBlock<DType::Q8_0> {
  static constexpr int kWeights = 32, kBytes = 34;
  struct Scales {
    float d;
  };
  static Scales scales(const uint8_t* b) { return {f16_at(b)}; }
  template <int S>
  static __m256 piece(const uint8_t* b, const Scales& s) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(i8x8(b + 2 + kL * S)), _mm256_set1_ps(s.d));
  }
};
// d (f16) | u8 q[16]: weight j = (nibble − 8) · d, the low nibbles of q being weights 0-15, the high ones 16-31.
template <>
struct QBlock<DType::Q4_0> {
  static constexpr int kWeights = 32, kBytes = 18;
  struct Scales {
    float d;
  };
  static Scales scales(const uint8_t* b) { return {f16_at(b)}; }
  template <int S>
  static __m256 piece(const uint8_t* b, const Scales& s) {
    constexpr int w = kL * S;
    const __m256i q = _mm256_sub_epi32(nibble<(w >= 16)>(u8x8(b + 2 + w % 16)), _mm256_set1_epi32(8));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(s.d));
  }
};
// d, dmin (f16) | scales[12] | [qh[32] (Q5_K)] | q[128]: weight w of sub-block j = w / 32 is
// scale[j] · q − min[j] (the 6-bit sub-block scale and min times d and dmin), q the low (j even) or high nibble of q[32·(w / 64) + w % 32], plus 16 where
// bit j of qh[w % 32] is set (Q5_K).
template <bool kFive>
struct QBlockK45 {
  static constexpr int kWeights = 256, kBytes = kFive ? 176 : 144;
  static constexpr int kQ = kFive ? 48 : 16;  // offset of q
  struct Scales {
    alignas(32) float scale[8];
    alignas(32) float min[8];
  };
  // The scales and mins in two vectors. The 6-bit values of sub-blocks 0-3 are the low bits of bytes j (scale) and j + 4
  // (min); those of 4-7 take their low 4 bits from byte j + 4 (low nibble: scale, high: min) and their top 2
  // from the top bits of bytes j - 4 (scale) and j (min).
  static Scales scales(const uint8_t* b) {
    const __m256i p0 = u8x8(b + 4), p1 = u8x8(b + 12);  // bytes 0-7 and 8-11 (and 4 of what follows, unused)
    const __m256i upper = _mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1);
    const __m256i keep = _mm256_setr_epi32(63, 63, 63, 63, 15, 15, 15, 15);
    auto top2 = [&](__m256i v) { return _mm256_and_si256(_mm256_slli_epi32(_mm256_srli_epi32(v, 6), 4), upper); };
    const __m256i sc = _mm256_or_si256(_mm256_and_si256(_mm256_permute2x128_si256(p0, p1, 0x20), keep),
                                       top2(_mm256_permute2x128_si256(p0, p0, 0x00)));
    const __m256i low_m = _mm256_srlv_epi32(_mm256_permute2x128_si256(p0, p1, 0x21), _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    const __m256i m = _mm256_or_si256(_mm256_and_si256(low_m, keep), top2(_mm256_permute2x128_si256(p0, p0, 0x11)));
    Scales s;
    _mm256_store_ps(s.scale, _mm256_mul_ps(_mm256_set1_ps(f16_at(b)), _mm256_cvtepi32_ps(sc)));
    _mm256_store_ps(s.min, _mm256_mul_ps(_mm256_set1_ps(f16_at(b + 2)), _mm256_cvtepi32_ps(m)));
    return s;
  }
  template <int S>
  static __m256 piece(const uint8_t* b, const Scales& s) {
    constexpr int w = kL * S, j = w / 32, l0 = w % 32;
    __m256i q = nibble<j % 2 == 1>(u8x8(b + kQ + 32 * (w / 64) + l0));
    if constexpr (kFive) {
      const __m256i bit = _mm256_and_si256(u8x8(b + 16 + l0), _mm256_set1_epi32(1 << j));  // moved to bit 4: +16
      if constexpr (j <= 4) {
        q = _mm256_or_si256(q, _mm256_slli_epi32(bit, 4 - j));
      } else {
        q = _mm256_or_si256(q, _mm256_srli_epi32(bit, j - 4));
      }
    }
    return _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(s.scale[j]), _mm256_cvtepi32_ps(q)), _mm256_set1_ps(s.min[j]));
  }
};
template <>
struct QBlock<DType::Q4_K> : QBlockK45<false> {};
template <>
struct QBlock<DType::Q5_K> : QBlockK45<true> {};
// ql[128] | qh[64] | int8 sc[16] | d (f16): two halves h of 128 weights; weight 32k + l of a half (k < 4, l < 32)
// is (d · sc[8h + l / 16 + 2k]) · (q − 32), q's low 4 bits the low (k < 2) or high nibble of ql[64h + 32(k % 2)
// + l] and its top 2 bits bits 2k, 2k + 1 of qh[32h + l].
template <>
struct QBlock<DType::Q6_K> {
  static constexpr int kWeights = 256, kBytes = 210;
  struct Scales {
    alignas(32) float scale[16];
  };
  static Scales scales(const uint8_t* b) {
    Scales s;
    const __m256 d = _mm256_set1_ps(f16_at(b + 208));
    _mm256_store_ps(s.scale, _mm256_mul_ps(d, _mm256_cvtepi32_ps(i8x8(b + 192))));
    _mm256_store_ps(s.scale + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(i8x8(b + 200))));
    return s;
  }
  template <int S>
  static __m256 piece(const uint8_t* b, const Scales& s) {
    constexpr int w = kL * S, h = w / 128, k = w % 128 / 32, l0 = w % 32;
    const __m256i low = nibble<(k >= 2)>(u8x8(b + 64 * h + 32 * (k % 2) + l0));
    const __m256i top = _mm256_and_si256(_mm256_srli_epi32(u8x8(b + 128 + 32 * h + l0), 2 * k), _mm256_set1_epi32(3));
    const __m256i q = _mm256_sub_epi32(_mm256_or_si256(low, _mm256_slli_epi32(top, 4)), _mm256_set1_epi32(32));
    return _mm256_mul_ps(_mm256_set1_ps(s.scale[8 * h + l0 / 16 + 2 * k]), _mm256_cvtepi32_ps(q));
  }
};

// MXFP4's half scale 2^(e − 128), exact for every byte (core/quant.cpp's mxfp4_half_scale; defined here again for
// this file's internal linkage, see gemm_driver.h).
inline float e8m0_half(uint8_t e) {
  const uint32_t bits = e < 2 ? uint32_t(0x00200000u) << e : uint32_t(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// e (e8m0) | u8 q[16]: weight j = v[code] · 2^(e − 128), v the e2m1 values doubled (code 8 is +0) and the codes the
// low nibbles of q for weights 0-15, the high ones for 16-31. The block's values are made once (exact products, as
// dequantize_row's): codes 0-7 in one vector, 8-15 in another. vpermps reads the low 3 bits of each index, and the
// code's bit 3 (the sign), shifted to the top of the lane, picks between the two lookups.
template <>
struct QBlock<DType::MXFP4> {
  static constexpr int kWeights = 32, kBytes = 17;
  struct Scales {
    __m256 positive, negative;  // values of codes c and 8 + c in lane c
  };
  static Scales scales(const uint8_t* b) {
    const __m256 d = _mm256_set1_ps(e8m0_half(b[0]));
    return {_mm256_mul_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 6, 8, 12), d),
            _mm256_mul_ps(_mm256_setr_ps(0, -1, -2, -3, -4, -6, -8, -12), d)};
  }
  template <int S>
  static __m256 piece(const uint8_t* b, const Scales& s) {
    constexpr int w = kL * S;
    const __m256i q = u8x8(b + 1 + w % 16);
    const __m256i code = w >= 16 ? _mm256_srli_epi32(q, 4) : q;  // bits above 3 are ignored or shifted out
    const __m256 sign = _mm256_castsi256_ps(_mm256_slli_epi32(code, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(s.positive, code), _mm256_permutevar8x32_ps(s.negative, code),
                            sign);
  }
};

// dst[i] = W[row, k0 + i] for i < n: whole blocks (k0 and n multiples of the block).
template <DType D>
void dequantize_cols(const uint8_t* row, int64_t k0, int64_t n, float* dst) {
  using Q = QBlock<D>;
  const uint8_t* b = row + k0 / Q::kWeights * Q::kBytes;
  for (int64_t c = 0; c < n; c += Q::kWeights, b += Q::kBytes) {
    const typename Q::Scales s = Q::scales(b);
    for_pieces<Q::kWeights / kL>([&](auto S) MOEP_LOOP_BODY {
      _mm256_storeu_ps(dst + c + kL * S(), Q::template piece<S()>(b, s));
    });
  }
}

// In-register transpose of an 8×8 f32 block: a[i][j] → a[j][i].
inline void transpose8(__m256 (&a)[8]) {
  __m256 t[8], u[8];
  MOEP_UNROLL
  for (int p = 0; p < 4; ++p) {
    t[2 * p] = _mm256_unpacklo_ps(a[2 * p], a[2 * p + 1]);
    t[2 * p + 1] = _mm256_unpackhi_ps(a[2 * p], a[2 * p + 1]);
  }
  // u[4q + m], 128-bit lane L: rows 4q..4q+3 of column 4L + m.
  MOEP_UNROLL
  for (int q = 0; q < 2; ++q) {
    u[4 * q + 0] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
    u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
  }
  MOEP_UNROLL
  for (int m = 0; m < 4; ++m) {
    a[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    a[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}

// ---- tuning -------------------------------------------------------------------------------------------------

// Token counts from which the packed (compute-bound) path is used. Measured with this table on Zen 5 (one
// thread, bf16 10752×6144 from memory): streaming gemm_nt is as fast up to ~20 tokens; streaming gemm_nn reads
// the weights once per 5 tokens and stops at 2 passes.
constexpr int64_t kPackMinTnt = 20;
constexpr int64_t kPackMinTnn = 11;
// Block-quantized weights: the streaming path decodes every block once per token block (2 to 5 tokens), packing
// once per panel for all tokens. As on AVX-512 (see there), Q8_0 takes bf16's threshold and the 4-6 bit types
// pack from fewer tokens (measured with this table on Zen 5, one thread, 10752×6144: streaming 11 tokens Q4_K
// 57, Q6_K 35 GFLOP/s; packed 12 tokens 65 and 54). MXFP4, two lookups and a blend per 8 weights here, goes with
// them (Zen 5, 4096×4096, shared VM: streaming 8 tokens 62 GFLOP/s, packed 12 tokens 79).
constexpr int64_t kPackMinTntQuant4to6 = 12;
// Packed path: kM tokens × kNV vectors (kNR = 16 outputs): 12 accumulators + 2 weight vectors + 1 broadcast of
// 16 registers. Panels [kKC][kNR] f32 = 16 KiB (L1); kNC outputs packed per reduction block (64 KiB, L2).
constexpr int kM = 6;
constexpr int kNV = 2;
constexpr int kNR = kNV * kL;
constexpr int64_t kKC = 256;
constexpr int64_t kNC = 4 * kNR;
// Streaming paths: software prefetch keeps about this many bytes of weights requested ahead of each thread,
// split over the rows it streams side by side (Little's law: ~20 GB/s per core × ~200 ns of memory latency is
// 4 KiB; twice that measured at least as well).
// The hardware prefetchers alone track several concurrent streams across 4 KiB pages poorly.
constexpr int64_t kPrefetchInFlight = 8192;
// Streaming gemm_nn: the f32 output tile [T, columns] kept in L1 while the weight rows stream past it. One
// token gets a larger tile: whole rows of a 6144-column matrix, so that each weight stream runs on through
// consecutive rows (Zen 4, bf16 10752×6144, 2 threads: 59 GB/s against 50 with 2048 columns); from 2 tokens
// on the larger tile measured slower (33 against 38 GB/s at 2 tokens).
constexpr int64_t kNNTileFloats = 2048;
constexpr int64_t kNNTileFloats1 = 8192;

// ---- this instruction set's part of the driver (kernels/gemm_driver.h) ----------------------------------

struct Avx2 {
  static constexpr ScratchOwner kScratch = kScratchAvx2;
  static constexpr int kLanes = kL;
  static constexpr int kMicroTokens = kM;
  static constexpr int kMicroVectors = kNV;
  static constexpr int64_t kPanelDepth = kKC;
  static constexpr int64_t kPanelBlock = kNC;
  static constexpr int64_t kPackMinTokensNt = kPackMinTnt;
  static constexpr bool kQuantized = true;
  static constexpr int64_t pack_min_tokens_quant(DType d) { return d == DType::Q8_0 ? kPackMinTnt : kPackMinTntQuant4to6; }
  static constexpr int64_t kPackMinTokensNn = kPackMinTnn;
  static constexpr int kNnStreamMaxTokens = 5;
  static constexpr size_t kOutTileFloats = 2 * kNNTileFloats1;

  // The number of valid lanes itself: load_part / store_part take it.
  using Lanes = int64_t;
  static Lanes valid_lanes(int64_t n) { return n; }

  template <int M>
  static void micro(const float* P, int64_t kc, const float* X, int64_t ldx, float* Y, int64_t ldy, bool accumulate,
                    const Lanes (&n_valid)[kNV]);
  template <DType D>
  static void pack_nt(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc);
  template <DType D>
  static void pack_nn(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc);
  template <DType D>
  static void nt_stream(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                        int64_t r1);
  template <DType D, int TB>
  static void nn_stream(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t c0, int64_t c1);
  template <DType D>
  static void convert(const void* src, float* dst, int64_t n);
};

// ---- streaming gemm_nt (few tokens) ---------------------------------------------------------------------

// Y[t, r + i·step] = Σ_c W[r + i·step, c] · X[t, c] for i < R, t < TB, in one pass over the R weight rows.
template <DType D, int R, int TB>
void nt_block(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t r, int64_t step) {
  constexpr int64_t kSize = int64_t(sizeof(typename WLoad<D>::Elem));
  constexpr int64_t kAhead = kPrefetchInFlight / R / 64 * 64;
  const uint8_t* w[R];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i) w[i] = W.row_ptr(r + i * step);
  __m256 acc[R][TB];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i)
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm256_setzero_ps();
  const int64_t n = W.cols;
  int64_t c = 0;
  for (; c + kL <= n; c += kL) {
    if (((c * kSize) & 63) == 0) {  // once per cache line of each row
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i] + c * kSize + kAhead), _MM_HINT_T0);
    }
    __m256 wv[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = WLoad<D>::full(w[i], c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m256 x = _mm256_loadu_ps(X + t * ldx + c);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], x, acc[i][t]);
    }
  }
  if (c < n) {
    __m256 wv[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = WLoad<D>::part(w[i], c, n - c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m256 x = load_part(X + t * ldx + c, n - c);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], x, acc[i][t]);
    }
  }
  MOEP_UNROLL
  for (int t = 0; t < TB; ++t)
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) Y[t * ldy + r + i * step] = hsum(acc[i][t]);
}

// nt_block for block-quantized weights: the R rows decoded a block at a time in registers (QBlock), each piece
// used for all TB tokens.
template <DType D, int R, int TB>
void nt_block_quant(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t r, int64_t step) {
  using Q = QBlock<D>;
  constexpr int64_t kAhead = kPrefetchInFlight / R / 64 * 64;
  const uint8_t* w[R];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i) w[i] = W.row_ptr(r + i * step);
  __m256 acc[R][TB];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i)
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm256_setzero_ps();
  const int64_t n_blocks = W.cols / Q::kWeights;
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const uint8_t* b[R];
    typename Q::Scales s[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) {
      b[i] = w[i] + blk * Q::kBytes;
      // Blocks are contiguous, so prefetching every 64 bytes from each block's start touches every line.
      MOEP_UNROLL
      for (int o = 0; o < Q::kBytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(b[i] + o + kAhead), _MM_HINT_T0);
      s[i] = Q::scales(b[i]);
    }
    const float* x = X + blk * Q::kWeights;
    for_pieces<Q::kWeights / kL>([&](auto S) MOEP_LOOP_BODY {
      __m256 wv[R];
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) wv[i] = Q::template piece<S()>(b[i], s[i]);
      MOEP_UNROLL
      for (int t = 0; t < TB; ++t) {
        const __m256 xv = _mm256_loadu_ps(x + t * ldx + kL * S());
        MOEP_UNROLL
        for (int i = 0; i < R; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
      }
    });
  }
  MOEP_UNROLL
  for (int t = 0; t < TB; ++t)
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) Y[t * ldy + r + i * step] = hsum(acc[i][t]);
}

// Rows r + i·step (i < R) for all T tokens, in token blocks of at most kMaxTB (R·TB + R + 1 ≤ 16 registers).
template <DType D, int R>
void nt_group(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r,
              int64_t step) {
  constexpr int kMaxTB = R >= 4 ? 2 : R == 3 ? 3 : R == 2 ? 5 : 8;
  for_token_blocks<kMaxTB>(T, [&](auto tokens, int64_t t0) MOEP_LOOP_BODY {
    if constexpr (kBlockQuantized<D>) {
      nt_block_quant<D, R, tokens()>(W, X + t0 * ldx, ldx, Y + t0 * ldy, ldy, r, step);
    } else {
      nt_block<D, R, tokens()>(W, X + t0 * ldx, ldx, Y + t0 * ldy, ldy, r, step);
    }
  });
}

// Rows [r0, r1) as R long streams: cut into R equal parts, row j of every part read at the same time (see the
// AVX-512 kernels: neighbouring rows side by side start R short streams every R rows).
template <DType D, int R>
void nt_stream_rows(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                    int64_t r1) {
  for_row_parts<R>(r0, r1, [&](auto rows, int64_t r, int64_t step) MOEP_LOOP_BODY {
    nt_group<D, rows()>(W, X, ldx, T, Y, ldy, r, step);
  });
}

// ---- streaming gemm_nn (few tokens) ---------------------------------------------------------------------

// Y[t, c] += Σ_{i<RG} X[t, r + i·step] · W[r + i·step, c] for c in [c0, c1), t < TB.
template <DType D, int TB, int RG>
void nn_rows(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t c0, int64_t c1,
             int64_t r, int64_t step, int64_t ahead) {
  constexpr int64_t kSize = int64_t(sizeof(typename WLoad<D>::Elem));
  const uint8_t* w[RG];
  MOEP_UNROLL
  for (int i = 0; i < RG; ++i) w[i] = W.row_ptr(r + i * step);
  int64_t c = c0;
  for (; c + kL <= c1; c += kL) {
    if (((c * kSize) & 63) == 0) {
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i] + c * kSize + ahead), _MM_HINT_T0);
    }
    __m256 wv[RG];
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) wv[i] = WLoad<D>::full(w[i], c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      __m256 y = _mm256_loadu_ps(Y + t * ldy + c);
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) y = _mm256_fmadd_ps(wv[i], _mm256_broadcast_ss(X + t * ldx + r + i * step), y);
      _mm256_storeu_ps(Y + t * ldy + c, y);
    }
  }
  if (c < c1) {
    __m256 wv[RG];
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) wv[i] = WLoad<D>::part(w[i], c, c1 - c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      __m256 y = load_part(Y + t * ldy + c, c1 - c);
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) y = _mm256_fmadd_ps(wv[i], _mm256_broadcast_ss(X + t * ldx + r + i * step), y);
      store_part(Y + t * ldy + c, y, c1 - c);
    }
  }
}

template <DType D, int TB>
void Avx2::nn_stream(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t c0, int64_t c1) {
  constexpr int RG = TB <= 2 ? 4 : 2;
  const int64_t tile = TB == 1 ? kNNTileFloats1 : std::max<int64_t>(kL, kNNTileFloats / TB / kL * kL);
  // The rows stream as RG long streams (row j of RG equal parts at a time, as in nt_stream_rows).
  const int64_t ahead = nn_prefetch_ahead<D>(W, tile, c0, c1, kPrefetchInFlight / RG / 64 * 64);
  nn_column_tiles<Avx2, D, TB>(W, Y, ldy, c0, c1, tile, [&](const MatRef& Wt, float* acc, int64_t ld, int64_t n) MOEP_LOOP_BODY {
    for_row_parts<RG>(0, W.rows, [&](auto rows, int64_t r, int64_t step) MOEP_LOOP_BODY {
      nn_rows<D, TB, rows()>(Wt, X, ldx, acc, ld, 0, n, r, step, ahead);
    });
  });
}

// ---- packed path (many tokens) --------------------------------------------------------------------------

// Y[t, j] = (accumulate ? Y[t, j] : 0) + Σ_{k<kc} X[t, k] · P[k, j] for t < M, j < n_valid[v] within vector v.
// P is a packed panel [kc][kNR] f32, 32-byte aligned.
template <int M>
void Avx2::micro(const float* P, int64_t kc, const float* X, int64_t ldx, float* Y, int64_t ldy, bool accumulate,
           const int64_t (&n_valid)[kNV]) {
  __m256 acc[M][kNV];
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v)
      acc[t][v] = accumulate ? load_part(Y + t * ldy + v * kL, n_valid[v]) : _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m256 p[kNV];
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) p[v] = _mm256_load_ps(P + k * kNR + v * kL);
    MOEP_UNROLL
    for (int t = 0; t < M; ++t) {
      const __m256 x = _mm256_broadcast_ss(X + t * ldx + k);
      MOEP_UNROLL
      for (int v = 0; v < kNV; ++v) acc[t][v] = _mm256_fmadd_ps(p[v], x, acc[t][v]);
    }
  }
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) store_part(Y + t * ldy + v * kL, acc[t][v], n_valid[v]);
}

// P[k][j] = W[jb + j, k0 + k] for k < kc, j < kNR; zero for rows at or past je. (gemm_nt: transposes.)
// Block-quantized weights: each row's kc weights are decoded into an L1 tile, then transposed from there.
template <DType D>
void Avx2::pack_nt(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  if constexpr (kBlockQuantized<D>) {
    alignas(32) float tile[kL][kKC];
    for (int v = 0; v < kNV; ++v) {
      const int64_t gb = jb + v * kL;
      const int64_t n_rows = std::clamp<int64_t>(je - gb, 0, kL);
      for (int64_t i = 0; i < n_rows; ++i) dequantize_cols<D>(W.row_ptr(gb + i), k0, kc, tile[i]);
      for (int64_t kk = 0; kk < kc; kk += kL) {  // kc is a multiple of the block, so of kL
        __m256 a[8];
        MOEP_UNROLL
        for (int i = 0; i < 8; ++i) a[i] = i < n_rows ? _mm256_load_ps(&tile[i][kk]) : _mm256_setzero_ps();
        transpose8(a);
        MOEP_UNROLL
        for (int i = 0; i < 8; ++i) _mm256_store_ps(P + (kk + i) * kNR + v * kL, a[i]);
      }
    }
  } else {
    for (int v = 0; v < kNV; ++v) {
      const int64_t gb = jb + v * kL;
      const int64_t n_rows = std::clamp<int64_t>(je - gb, 0, kL);
      for (int64_t kk = 0; kk < kc; kk += kL) {
        const int64_t nk = std::min<int64_t>(kL, kc - kk);
        __m256 a[8];
        MOEP_UNROLL
        for (int i = 0; i < 8; ++i) {
          if (i >= n_rows) {
            a[i] = _mm256_setzero_ps();
          } else if (nk == kL) {
            a[i] = WLoad<D>::full(W.row_ptr(gb + i), k0 + kk);
          } else {
            a[i] = WLoad<D>::part(W.row_ptr(gb + i), k0 + kk, nk);
          }
        }
        transpose8(a);
        for (int64_t i = 0; i < nk; ++i) _mm256_store_ps(P + (kk + i) * kNR + v * kL, a[i]);
      }
    }
  }
}

// P[k][j] = W[k0 + k, jb + j] for k < kc, j < kNR; zero for columns at or past je. (gemm_nn: widens only.)
template <DType D>
void Avx2::pack_nn(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  int64_t n[kNV];
  MOEP_UNROLL
  for (int v = 0; v < kNV; ++v) n[v] = std::clamp<int64_t>(je - jb - v * kL, 0, kL);
  for (int64_t k = 0; k < kc; ++k) {
    const uint8_t* row = W.row_ptr(k0 + k);
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) {
      const __m256 w = n[v] == kL ? WLoad<D>::full(row, jb + v * kL)
                                  : (n[v] > 0 ? WLoad<D>::part(row, jb + v * kL, n[v]) : _mm256_setzero_ps());
      _mm256_store_ps(P + k * kNR + v * kL, w);
    }
  }
}

// ---- streaming gemm_nt entry, dtype conversion -------------------------------------------------------------

// gemm_nt below the packed threshold.
template <DType D>
void Avx2::nt_stream(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                     int64_t r1) {
  if (T >= 4 && r1 - r0 >= 32) {
    // Token rows read side by side with the weight rows: stage them at a set-spreading stride.
    const int64_t ld = spread_stride(W.cols);
    float* xs = scratch<Avx2>(kStagedX, size_t(T * ld));
    copy_rows(X, ldx, T, 0, W.cols, xs, ld);
    X = xs;
    ldx = ld;
  }
  if (T <= 2) {
    nt_stream_rows<D, 4>(W, X, ldx, T, Y, ldy, r0, r1);
  } else if (T == 3) {
    nt_stream_rows<D, 3>(W, X, ldx, T, Y, ldy, r0, r1);
  } else {
    nt_stream_rows<D, 2>(W, X, ldx, T, Y, ldy, r0, r1);
  }
}

template <DType D>
void Avx2::convert(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  if constexpr (kBlockQuantized<D>) {
    MOEP_ASSERT(n % QBlock<D>::kWeights == 0, "to_f32: a quantized row is whole blocks");
    dequantize_cols<D>(p, 0, n, dst);
  } else {
    int64_t i = 0;
    for (; i + kL <= n; i += kL) _mm256_storeu_ps(dst + i, WLoad<D>::full(p, i));
    if (i < n) store_part(dst + i, WLoad<D>::part(p, i, n - i), n - i);
  }
}

}  // namespace

const KernelTable* avx2_kernels() {
  static const KernelTable table{"avx2", gemm_nt<Avx2>, gemm_nn<Avx2>, to_f32<Avx2>, /*quantized=*/true};
  static const bool supported =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return supported ? &table : nullptr;
}

}  // namespace moep::kernels
