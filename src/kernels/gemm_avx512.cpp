// AVX-512 kernels: f32 arithmetic (FMA), weights widened to f32 as they are loaded (bf16 by a 16-bit shift,
// f16 by vcvtph2ps). No bf16 dot products: activations are never rounded, so results match the scalar
// reference to f32 rounding (only the order of the additions differs). The exception is the opt-in
// "avx512+bf16dot" table (set_bf16_dot, see the bf16-dot sections below), which rounds activations to bf16
// for bf16 weights from 2 tokens on (packed and streaming paths); 1 token (decode) stays exact.
//
// Two regimes (see gemm_nt / gemm_nn below):
//  - few tokens (decode, T below kPackMinT*): memory-bound. Weights stream from memory once and each loaded
//    vector serves every token (register blocking over T), so time ≈ weight bytes ÷ read bandwidth.
//  - many tokens (prefill): compute-bound. A block of weights is widened once into an f32 panel that stays in
//    L1/L2, and a register-blocked micro-kernel (kM tokens × kNR outputs) reuses it for every token.
//
// ggml's block-quantized weights (gemm_nt and to_f32 only) take the same two paths: blocks are decoded in
// registers to exactly dequantize_row's f32 values (QBlock), so results still differ from the reference only in
// the order of the additions. Activations stay f32 (llama.cpp instead rounds them to 8 bits per block for
// integer dot products): the results stay exact, at the price of one-token decode of the 4-6 bit types being
// bound by the decoding work (about 6 vector operations per 16 weights) rather than by memory.
//
// Built with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 (see CMakeLists.txt); avx512_kernels()
// checks the first four at run time before handing out the table, avx512_bf16dot_kernels() avx512bf16 too.
// GCC 12's own intrinsics (_mm512_cvtepu16_epi32 and others start from an undefined register) trip
// -Wmaybe-uninitialized at every inlining site (GCC bug 105593, fixed in 12.3/13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/gemm_driver.h"
#include "kernels/kernels.h"

namespace moep::kernels {

namespace {

constexpr int kL = 16;  // f32 lanes per vector

// ---- primitives -------------------------------------------------------------------------------------------

// Lanes [0, n) set, for n in [0, 16].
inline __mmask16 lanes(int64_t n) { return n >= kL ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

// Weight loads: 16 consecutive elements of a row, starting at element c, widened to f32. The masked form reads
// only the lanes in m (the rest are zero) and never touches memory outside them.
template <DType D>
struct WLoad;
template <>
struct WLoad<DType::F32> {
  using Elem = float;
  static __m512 full(const uint8_t* row, int64_t c) { return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c); }
  static __m512 part(const uint8_t* row, int64_t c, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + c);
  }
};
template <>
struct WLoad<DType::BF16> {
  using Elem = uint16_t;
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m512 full(const uint8_t* row, int64_t c) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c)));
  }
  static __m512 part(const uint8_t* row, int64_t c, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, row + 2 * c)); }
};
template <>
struct WLoad<DType::F16> {
  using Elem = uint16_t;
  static __m512 full(const uint8_t* row, int64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c)));
  }
  static __m512 part(const uint8_t* row, int64_t c, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * c));
  }
};

// Block-quantized weights (ggml's Q8_0 … Q6_K and MXFP4, core/quant.h), decoded in registers kL at a time. QBlock<D>:
//   kWeights, kBytes      weights and bytes per block
//   Scales scales(b)      the block's scales (f16 and 6/8-bit ones; MXFP4: its 16 values), read once per block
//   piece<S>(b, scales)   weights [kL·S, kL·S + kL) of the block as f32
// The pieces are bit for bit dequantize_row's values: the same products in the same order, each rounded (no
// FMA), so products with the activations differ from the reference only in the order of the additions.

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
// The 16 bytes at p zero- (u8) or sign-extended (i8) to 32-bit lanes.
inline __m512i u8x16(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m512i i8x16(const uint8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
// The low (kHigh false) or high nibble of each lane of v (lanes hold bytes).
template <bool kHigh>
inline __m512i nibble(__m512i v) {
  return kHigh ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(0x0f));
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
  static __m512 piece(const uint8_t* b, const Scales& s) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(i8x16(b + 2 + kL * S)), _mm512_set1_ps(s.d));
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
  static __m512 piece(const uint8_t* b, const Scales& s) {
    const __m512i q = _mm512_sub_epi32(nibble<S == 1>(u8x16(b + 2)), _mm512_set1_epi32(8));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(s.d));
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
    alignas(64) float v[16];  // scale[j] = v[j], min[j] = v[8 + j]
  };
  // The scales and mins in one vector: lanes 0-7 the scales, 8-15 the mins. The 6-bit values of sub-blocks 0-3 are the low
  // bits of bytes j (scale) and j + 4 (min); those of 4-7 take their low 4 bits from byte j + 4 (low nibble:
  // scale, high: min) and their top 2 from the top bits of bytes j - 4 (scale) and j (min).
  static Scales scales(const uint8_t* b) {
    const __m512i p = u8x16(b + 4);  // the 12 bytes and 4 of q, unused
    const __m512i low = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11), p);
    const __m512i top = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 4, 5, 6, 7), p);
    const __m512i low_bits = _mm512_and_si512(
        _mm512_srlv_epi32(low, _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4)),
        _mm512_setr_epi32(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
    const __m512i six = _mm512_mask_or_epi32(low_bits, __mmask16(0xf0f0), low_bits,
                                             _mm512_slli_epi32(_mm512_srli_epi32(top, 6), 4));
    const __m512 d = _mm512_castps256_ps512(_mm256_set1_ps(f16_at(b)));
    const __m512 dd = _mm512_insertf32x8(d, _mm256_set1_ps(f16_at(b + 2)), 1);
    Scales s;
    _mm512_store_ps(s.v, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(six)));
    return s;
  }
  template <int S>
  static __m512 piece(const uint8_t* b, const Scales& s) {
    constexpr int w = kL * S, j = w / 32, l0 = w % 32;
    __m512i q = nibble<j % 2 == 1>(u8x16(b + kQ + 32 * (w / 64) + l0));
    if constexpr (kFive) {
      const __mmask16 high = _mm512_test_epi32_mask(u8x16(b + 16 + l0), _mm512_set1_epi32(1 << j));
      q = _mm512_mask_add_epi32(q, high, q, _mm512_set1_epi32(16));
    }
    return _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(s.v[j]), _mm512_cvtepi32_ps(q)), _mm512_set1_ps(s.v[8 + j]));
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
    alignas(64) float scale[16];
  };
  static Scales scales(const uint8_t* b) {
    Scales s;
    _mm512_store_ps(s.scale, _mm512_mul_ps(_mm512_set1_ps(f16_at(b + 208)), _mm512_cvtepi32_ps(i8x16(b + 192))));
    return s;
  }
  template <int S>
  static __m512 piece(const uint8_t* b, const Scales& s) {
    constexpr int w = kL * S, h = w / 128, k = w % 128 / 32, l0 = w % 32;
    const __m512i low = nibble<(k >= 2)>(u8x16(b + 64 * h + 32 * (k % 2) + l0));
    const __m512i top = _mm512_and_si512(_mm512_srli_epi32(u8x16(b + 128 + 32 * h + l0), 2 * k), _mm512_set1_epi32(3));
    const __m512i q = _mm512_sub_epi32(_mm512_or_si512(low, _mm512_slli_epi32(top, 4)), _mm512_set1_epi32(32));
    return _mm512_mul_ps(_mm512_set1_ps(s.scale[8 * h + l0 / 16 + 2 * k]), _mm512_cvtepi32_ps(q));
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
// low nibbles of q for weights 0-15, the high ones for 16-31. The block's 16 values are made once (exact products,
// as dequantize_row's) and a piece is one lookup: vpermps reads the low 4 bits of each index, so low nibbles need no
// mask. 3 operations per 16 weights.
template <>
struct QBlock<DType::MXFP4> {
  static constexpr int kWeights = 32, kBytes = 17;
  struct Scales {
    __m512 values;  // value of code c in lane c
  };
  static Scales scales(const uint8_t* b) {
    const __m512 doubled = _mm512_setr_ps(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    return {_mm512_mul_ps(doubled, _mm512_set1_ps(e8m0_half(b[0])))};
  }
  template <int S>
  static __m512 piece(const uint8_t* b, const Scales& s) {
    const __m512i q = u8x16(b + 1);
    return _mm512_permutexvar_ps(S == 1 ? _mm512_srli_epi32(q, 4) : q, s.values);
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
      _mm512_storeu_ps(dst + c + kL * S(), Q::template piece<S()>(b, s));
    });
  }
}

// In-register transpose of a 16×16 f32 block: a[i][j] → a[j][i].
inline void transpose16(__m512 (&a)[16]) {
  __m512 t[16], u[16];
  MOEP_UNROLL
  for (int p = 0; p < 8; ++p) {
    t[2 * p] = _mm512_unpacklo_ps(a[2 * p], a[2 * p + 1]);
    t[2 * p + 1] = _mm512_unpackhi_ps(a[2 * p], a[2 * p + 1]);
  }
  // u[4q + m], 128-bit lane L: rows 4q..4q+3 of column 4L + m.
  MOEP_UNROLL
  for (int q = 0; q < 4; ++q) {
    u[4 * q + 0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
    u[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
  }
  MOEP_UNROLL
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xee);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xee);
    a[m] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    a[4 + m] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
    a[8 + m] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    a[12 + m] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
  }
}

// ---- tuning -------------------------------------------------------------------------------------------------

// Token counts from which the packed (compute-bound) path is used; below, the streaming path. Measured on
// Zen 5 (one thread, bf16 10752×6144 from memory): streaming gemm_nt matches or beats packing up to ~24 tokens
// (it re-reads each row group from L1 for every 8 tokens, never from memory); streaming gemm_nn beats it up to
// ~24 too, but reads the weights from memory once per 8 tokens, so it stops at 2 passes to leave bandwidth
// to the other cores.
constexpr int64_t kPackMinTnt = 24;
constexpr int64_t kPackMinTnn = 16;
// Block-quantized weights: the streaming path decodes every block once per token block (at most 5 or 8 tokens),
// packing once per panel for all tokens. Measured (one thread, 10752×6144, Zen 5, shared machine): Q8_0, cheap
// to decode, streams faster than it packs up to ~32 tokens (T = 16: 139 GFLOP/s against 70; T = 32: 121 against
// 115), as bf16 does; the 4-6 bit types pack faster from ~16 (Q4_K T = 16: 98 against 86; T = 24: 123 against
// 88; Q6_K T = 24: 117 against 105), and stream faster below (T = 6 streaming: Q4_K 91, Q6_K 71 GFLOP/s;
// packed: 67, 61). MXFP4 decodes about as cheaply as Q8_0 (a lookup per 16 weights) and takes its threshold
// (measured one thread, 4096×4096, Zen 5, shared VM: streaming T = 16, 20: 190, 184 GFLOP/s; packed
// 149, 163; packed T = 24: 160-171).
constexpr int64_t kPackMinTntQuant4to6 = 16;
// Packed path: micro-kernel of kM tokens × kNV vectors (kNR = 48 outputs): 24 accumulators + 3 weight vectors
// + 1 broadcast of 32 registers. A panel is [kKC reductions][kNR outputs] f32 = 48 KiB; kNC outputs (2 panels)
// are packed per reduction block and reused for all tokens. (kKC 128..512 and kNC 1..8 panels measured within
// noise of each other on Zen 5; 256 × 2 was as good as any.)
constexpr int kM = 8;
constexpr int kNV = 3;
constexpr int kNR = kNV * kL;
constexpr int64_t kKC = 256;
constexpr int64_t kNC = 2 * kNR;
// Streaming paths: software prefetch keeps about this many bytes of weights requested ahead of each thread,
// split over the rows it streams side by side (Little's law: ~20 GB/s per core × ~200 ns of memory latency is
// 4 KiB). With 4 long streams per thread (nt_stream_rows) 1 KiB ahead of each stream measured 10-20% faster on
// Zen 4 than 2 KiB, and 512 bytes slower. The hardware prefetchers alone track several concurrent streams
// across 4 KiB pages poorly (no software prefetch measured 20% slower).
constexpr int64_t kPrefetchInFlight = 4096;
// Per stream ahead of the streaming paths: kPrefetchInFlight split over the R streams, twice that when the
// weights sit on 4 KiB pages (MatRef::small_pages).
inline int64_t prefetch_ahead(int R, const MatRef& W) {
  return (W.small_pages ? 2 : 1) * kPrefetchInFlight / R / 64 * 64;
}
// Streaming gemm_nn: the f32 output tile [T, columns] kept in L1 while all weight rows stream past it.
constexpr int64_t kNNTileFloats = 8192;

// ---- this instruction set's part of the driver (kernels/gemm_driver.h) ----------------------------------

struct Avx512 {
  static constexpr ScratchOwner kScratch = kScratchAvx512;
  static constexpr int kLanes = kL;
  static constexpr int kMicroTokens = kM;
  static constexpr int kMicroVectors = kNV;
  static constexpr int64_t kPanelDepth = kKC;
  static constexpr int64_t kPanelBlock = kNC;
  static constexpr int64_t kPackMinTokensNt = kPackMinTnt;
  static constexpr int64_t kPackMinTokensNn = kPackMinTnn;
  static constexpr int kNnStreamMaxTokens = 8;
  static constexpr size_t kOutTileFloats = 2 * kNNTileFloats;
  static constexpr bool kQuantized = true;
  static constexpr int64_t pack_min_tokens_quant(DType d) {
    return d == DType::Q8_0 || d == DType::MXFP4 ? kPackMinTnt : kPackMinTntQuant4to6;
  }

  // A lane mask: the micro-kernel's masked loads and stores take it.
  using Lanes = __mmask16;
  static Lanes valid_lanes(int64_t n) { return lanes(n); }

  template <int M>
  static void micro(const float* P, int64_t kc, const float* X, int64_t ldx, float* Y, int64_t ldy, bool accumulate,
                    const Lanes (&mask)[kNV]);
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

// Y[t, r + i·step] = Σ_c W[r + i·step, c] · X[t, c] for i < R, t < TB: one pass over R weight rows, each
// widened vector used for all TB tokens. R·TB accumulators of 16 partial sums each, reduced at the end.
//
// kPairs (bf16 only): whole 32-column blocks are read as 64-byte vectors and split into the even elements
// (shift left 16) and the odd ones (mask the high halves), against activations staged in the same even/odd
// order (Xp, see stage_pairs). That is 3 cheap operations per 32 weights instead of 4, with the zero-extending
// loads gone: more loads in flight for the same instruction window. The other columns use X as usual.
template <DType D, int R, int TB, bool kPairs>
void nt_block(const MatRef& W, const float* X, int64_t ldx, const float* Xp, int64_t ldp, float* Y, int64_t ldy,
              int64_t r, int64_t step) {
  constexpr int64_t kSize = int64_t(sizeof(typename WLoad<D>::Elem));
  const int64_t kAhead = prefetch_ahead(R, W);
  const uint8_t* w[R];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i) w[i] = W.row_ptr(r + i * step);
  __m512 acc[R][TB];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i)
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm512_setzero_ps();
  const int64_t n = W.cols;
  int64_t c = 0;
  if constexpr (kPairs) {
    static_assert(D == DType::BF16);
    const __m512i high = _mm512_set1_epi32(int(0xffff0000u));
    for (; c + 2 * kL <= n; c += 2 * kL) {
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i] + c * kSize + kAhead), _MM_HINT_T0);
      __m512 we[R], wo[R];
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) {
        const __m512i v = _mm512_loadu_si512(w[i] + c * kSize);
        we[i] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        wo[i] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
      }
      MOEP_UNROLL
      for (int t = 0; t < TB; ++t) {
        const __m512 xe = _mm512_loadu_ps(Xp + t * ldp + c);
        const __m512 xo = _mm512_loadu_ps(Xp + t * ldp + c + kL);
        MOEP_UNROLL
        for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(wo[i], xo, _mm512_fmadd_ps(we[i], xe, acc[i][t]));
      }
    }
  }
  for (; c + kL <= n; c += kL) {
    __m512 wv[R];
    if (((c * kSize) & 63) == 0) {  // once per cache line of each row
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i] + c * kSize + kAhead), _MM_HINT_T0);
    }
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = WLoad<D>::full(w[i], c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512 x = _mm512_loadu_ps(X + t * ldx + c);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], x, acc[i][t]);
    }
  }
  if (c < n) {
    const __mmask16 m = lanes(n - c);
    __m512 wv[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = WLoad<D>::part(w[i], c, m);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512 x = _mm512_maskz_loadu_ps(m, X + t * ldx + c);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], x, acc[i][t]);
    }
  }
  MOEP_UNROLL
  for (int t = 0; t < TB; ++t)
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) Y[t * ldy + r + i * step] = _mm512_reduce_add_ps(acc[i][t]);
}

// nt_block for block-quantized weights: Y[t, r + i·step] = Σ_c W[r + i·step, c] · X[t, c] for i < R, t < TB, the
// R rows decoded a block at a time in registers (QBlock), each piece used for all TB tokens.
template <DType D, int R, int TB>
void nt_block_quant(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t r, int64_t step) {
  using Q = QBlock<D>;
  const int64_t kAhead = prefetch_ahead(R, W);
  const uint8_t* w[R];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i) w[i] = W.row_ptr(r + i * step);
  __m512 acc[R][TB];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i)
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) acc[i][t] = _mm512_setzero_ps();
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
      __m512 wv[R];
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) wv[i] = Q::template piece<S()>(b[i], s[i]);
      MOEP_UNROLL
      for (int t = 0; t < TB; ++t) {
        const __m512 xv = _mm512_loadu_ps(x + t * ldx + kL * S());
        MOEP_UNROLL
        for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
      }
    });
  }
  MOEP_UNROLL
  for (int t = 0; t < TB; ++t)
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) Y[t * ldy + r + i * step] = _mm512_reduce_add_ps(acc[i][t]);
}

// Rows r + i·step (i < R) for all T tokens, in token blocks of at most kMaxTB.
template <DType D, int R, bool kPairs>
void nt_group(const MatRef& W, const float* X, int64_t ldx, const float* Xp, int64_t ldp, int64_t T, float* Y,
              int64_t ldy, int64_t r, int64_t step) {
  constexpr int kMaxTB = R >= 6 ? 1 : R >= 4 ? 5 : 8;  // R·TB + R + 1 ≤ 32 registers (R = 8: decode only)
  for_token_blocks<kMaxTB>(T, [&](auto tokens, int64_t t0) MOEP_LOOP_BODY {
    if constexpr (kBlockQuantized<D>) {
      nt_block_quant<D, R, tokens()>(W, X + t0 * ldx, ldx, Y + t0 * ldy, ldy, r, step);
    } else {
      nt_block<D, R, tokens(), kPairs>(W, X + t0 * ldx, ldx, Xp + t0 * ldp, ldp, Y + t0 * ldy, ldy, r, step);
    }
  });
}

// Rows [r0, r1) in R long streams: the range is cut into R equal parts and row j of every part is read at the
// same time, so each stream runs on through consecutive rows (contiguous in memory when rows are). Reading R
// neighbouring rows side by side instead starts R new short streams every R rows; on Zen 4 (2 threads, bf16
// 10752×6144 from 2 MiB pages) that streamed 47 GB/s against 56 with the parts, and 4 streams per thread beat 8
// (50) and 6 (52): the memory system serves a few long streams best (a plain read measured the same).
template <DType D, int R, bool kPairs>
void nt_stream_rows(const MatRef& W, const float* X, int64_t ldx, const float* Xp, int64_t ldp, int64_t T, float* Y,
                    int64_t ldy, int64_t r0, int64_t r1) {
  for_row_parts<R>(r0, r1, [&](auto rows, int64_t r, int64_t step) MOEP_LOOP_BODY {
    nt_group<D, rows(), kPairs>(W, X, ldx, Xp, ldp, T, Y, ldy, r, step);
  });
}

// dst[t, 32b + j] = X[t, 32b + 2j] and dst[t, 32b + 16 + j] = X[t, 32b + 2j + 1] for j < 16, every whole
// 32-column block b of the first n columns: the even/odd order of nt_block's kPairs mode.
void stage_pairs(const float* X, int64_t ldx, int64_t T, int64_t n, float* dst, int64_t ld) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c + 2 * kL <= n; c += 2 * kL) {
      const __m512 a = _mm512_loadu_ps(X + t * ldx + c), b = _mm512_loadu_ps(X + t * ldx + c + kL);
      _mm512_storeu_ps(dst + t * ld + c, _mm512_permutex2var_ps(a, even, b));
      _mm512_storeu_ps(dst + t * ld + c + kL, _mm512_permutex2var_ps(a, odd, b));
    }
  }
}

// ---- streaming gemm_nn (few tokens) ---------------------------------------------------------------------

// Y[t, c] += Σ_{i<RG} X[t, r + i·step] · W[r + i·step, c] for c in [c0, c1), t < TB: RG weight rows stream
// side by side while the output tile stays in L1.
template <DType D, int TB, int RG>
void nn_rows(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t c0, int64_t c1,
             int64_t r, int64_t step, int64_t ahead) {
  constexpr int64_t kSize = int64_t(sizeof(typename WLoad<D>::Elem));
  const uint8_t* w[RG];
  MOEP_UNROLL
  for (int i = 0; i < RG; ++i) w[i] = W.row_ptr(r + i * step);
  __m512 x[TB][RG];
  MOEP_UNROLL
  for (int t = 0; t < TB; ++t)
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) x[t][i] = _mm512_set1_ps(X[t * ldx + r + i * step]);
  int64_t c = c0;
  for (; c + kL <= c1; c += kL) {
    __m512 wv[RG];
    if (((c * kSize) & 63) == 0) {
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i] + c * kSize + ahead), _MM_HINT_T0);
    }
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) wv[i] = WLoad<D>::full(w[i], c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      __m512 y = _mm512_loadu_ps(Y + t * ldy + c);
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) y = _mm512_fmadd_ps(wv[i], x[t][i], y);
      _mm512_storeu_ps(Y + t * ldy + c, y);
    }
  }
  if (c < c1) {
    const __mmask16 m = lanes(c1 - c);
    __m512 wv[RG];
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) wv[i] = WLoad<D>::part(w[i], c, m);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      __m512 y = _mm512_maskz_loadu_ps(m, Y + t * ldy + c);
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) y = _mm512_fmadd_ps(wv[i], x[t][i], y);
      _mm512_mask_storeu_ps(Y + t * ldy + c, m, y);
    }
  }
}

// The rows are read as RG long streams, as in nt_stream_rows: the rows are cut into RG equal parts and row j of
// every part is read at the same time (4 streams per thread streamed best on Zen 4; 8 neighbouring rows side
// by side, as before, measured about 15% slower from memory for one token).
// The rows stream as RG long streams, as in nt_stream_rows: cut into RG equal parts, row j of every part read
// at the same time. Measured on Zen 4 (2 threads, bf16 10752×6144 from 2 MiB pages), against RG neighbouring
// rows side by side as before: 1 token 55-59 GB/s with 4 parts against 43-47 (8 parts: 48-52); 2 tokens
// 42 with 8 parts (fewer loads and stores of the output tile per weight) against 39-41; 3+ tokens within
// noise.
template <DType D, int TB>
void Avx512::nn_stream(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t c0, int64_t c1) {
  constexpr int RG = TB == 2 ? 8 : 4;
  const int64_t tile = std::max<int64_t>(kL, kNNTileFloats / TB / kL * kL);
  const int64_t ahead = nn_prefetch_ahead<D>(W, tile, c0, c1, prefetch_ahead(RG, W));
  nn_column_tiles<Avx512, D, TB>(W, Y, ldy, c0, c1, tile, [&](const MatRef& Wt, float* acc, int64_t ld, int64_t n) MOEP_LOOP_BODY {
    for_row_parts<RG>(0, W.rows, [&](auto rows, int64_t r, int64_t step) MOEP_LOOP_BODY {
      nn_rows<D, TB, rows()>(Wt, X, ldx, acc, ld, 0, n, r, step, ahead);
    });
  });
}
// ---- packed path (many tokens) --------------------------------------------------------------------------

// Y[t, j] = (accumulate ? Y[t, j] : 0) + Σ_{k<kc} X[t, k] · P[k, j] for t < M and the lanes j set in mask[].
// P is a packed panel [kc][kNR] f32 (64-byte aligned); X row t starts at X + t·ldx; Y row t at Y + t·ldy.
template <int M>
void Avx512::micro(const float* P, int64_t kc, const float* X, int64_t ldx, float* Y, int64_t ldy, bool accumulate,
           const __mmask16 (&mask)[kNV]) {
  __m512 acc[M][kNV];
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v)
      acc[t][v] = accumulate ? _mm512_maskz_loadu_ps(mask[v], Y + t * ldy + v * kL) : _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m512 p[kNV];
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) p[v] = _mm512_load_ps(P + k * kNR + v * kL);
    MOEP_UNROLL
    for (int t = 0; t < M; ++t) {
      const __m512 x = _mm512_set1_ps(X[t * ldx + k]);
      MOEP_UNROLL
      for (int v = 0; v < kNV; ++v) acc[t][v] = _mm512_fmadd_ps(p[v], x, acc[t][v]);
    }
  }
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) _mm512_mask_storeu_ps(Y + t * ldy + v * kL, mask[v], acc[t][v]);
}

// P[k][j] = W[jb + j, k0 + k] for k < kc, j < kNR; zero for rows at or past je. (gemm_nt: transposes.)
// Block-quantized weights: each row's kc weights are decoded into an L1 tile, then transposed from there.
template <DType D>
void Avx512::pack_nt(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  if constexpr (kBlockQuantized<D>) {
    alignas(64) float tile[kL][kKC];
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) {
      const int64_t gb = jb + v * kL;
      const int64_t n_rows = std::clamp<int64_t>(je - gb, 0, kL);
      for (int64_t i = 0; i < n_rows; ++i) dequantize_cols<D>(W.row_ptr(gb + i), k0, kc, tile[i]);
      for (int64_t kk = 0; kk < kc; kk += kL) {  // kc is a multiple of the block, so of kL
        __m512 a[16];
        MOEP_UNROLL
        for (int i = 0; i < 16; ++i) a[i] = i < n_rows ? _mm512_load_ps(&tile[i][kk]) : _mm512_setzero_ps();
        transpose16(a);
        MOEP_UNROLL
        for (int i = 0; i < 16; ++i) _mm512_store_ps(P + (kk + i) * kNR + v * kL, a[i]);
      }
    }
  } else {
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) {
      const int64_t gb = jb + v * kL;
      const int64_t n_rows = std::clamp<int64_t>(je - gb, 0, kL);
      for (int64_t kk = 0; kk < kc; kk += kL) {
        const int64_t nk = std::min<int64_t>(kL, kc - kk);
        const __mmask16 m = lanes(nk);
        __m512 a[16];
        MOEP_UNROLL
        for (int i = 0; i < 16; ++i) {
          if (i >= n_rows) {
            a[i] = _mm512_setzero_ps();
          } else if (nk == kL) {
            a[i] = WLoad<D>::full(W.row_ptr(gb + i), k0 + kk);
          } else {
            a[i] = WLoad<D>::part(W.row_ptr(gb + i), k0 + kk, m);
          }
        }
        transpose16(a);
        for (int64_t i = 0; i < nk; ++i) _mm512_store_ps(P + (kk + i) * kNR + v * kL, a[i]);
      }
    }
  }
}

// P[k][j] = W[k0 + k, jb + j] for k < kc, j < kNR; zero for columns at or past je. (gemm_nn: widens only.)
template <DType D>
void Avx512::pack_nn(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  __mmask16 m[kNV];
  MOEP_UNROLL
  for (int v = 0; v < kNV; ++v) m[v] = lanes(std::clamp<int64_t>(je - jb - v * kL, 0, kL));
  for (int64_t k = 0; k < kc; ++k) {
    const uint8_t* row = W.row_ptr(k0 + k);
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) {
      const __m512 w = m[v] == 0xffff ? WLoad<D>::full(row, jb + v * kL) : WLoad<D>::part(row, jb + v * kL, m[v]);
      _mm512_store_ps(P + k * kNR + v * kL, w);
    }
  }
}

// ---- packed path with bf16 dot products (opt-in, bf16 weights only) ---------------------------------------
//
// The "avx512+bf16dot" table (see avx512_bf16dot_kernels): for the packed path only, activations are rounded
// to bf16 (round to nearest even, vcvtne2ps2bf16) and multiplied with vdpbf16ps: each instruction takes pairs
// of bf16 (two consecutive reductions k, k + 1 in one 32-bit lane) and adds both exact products to an f32
// accumulator. Panels hold such pairs ([kc / 2][kNR] 32-bit words); the activations are staged once per call as
// pairs too, with a zero in the high half of the last pair when the reduction length is odd (the weight panel
// has a zero there as well, so padding never multiplies garbage). Below the packed thresholds, 2 or more tokens
// take the streaming bf16-dot paths (next section); 1 token (decode) and f32/f16 weights are computed exactly
// as in the plain avx512 table.

// Reduction pairs per packed block: the panel is [kKP][kNR] 32-bit words = 48 KiB (as the f32 panel).
constexpr int64_t kKP = 256;

// dst[t, p] = bf16(X[t, 2p]) | bf16(X[t, 2p + 1]) << 16 for p < ceil(K / 2) (RNE; element K, if any, is 0).
void stage_bf16_pairs(const float* X, int64_t ldx, int64_t T, int64_t K, uint32_t* dst, int64_t ld) {
  for (int64_t t = 0; t < T; ++t) {
    const float* x = X + t * ldx;
    uint32_t* d = dst + t * ld;
    int64_t c = 0;
    for (; c + 2 * kL <= K; c += 2 * kL) {
      const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + c + kL), _mm512_loadu_ps(x + c));
      _mm512_storeu_si512(d + c / 2, (__m512i)h);
    }
    if (c < K) {
      const int64_t n = K - c;
      const __m512 lo = _mm512_maskz_loadu_ps(lanes(n), x + c);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes(std::max<int64_t>(0, n - kL)), x + c + kL);
      _mm512_mask_storeu_epi32(d + c / 2, lanes((n + 1) / 2), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// Y[t, j] = (accumulate ? Y[t, j] : 0) + Σ_{p<kp} dot(X[t, p], P[p, j]) for t < M and the lanes j in mask[]:
// micro<M> with bf16 pairs (P: [kp][kNR] pairs, 64-byte aligned; X: pairs, row t at X + t·ldx).
template <int M>
void micro_dot(const uint32_t* P, int64_t kp, const uint32_t* X, int64_t ldx, float* Y, int64_t ldy, bool accumulate,
               const __mmask16 (&mask)[kNV]) {
  __m512 acc[M][kNV];
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v)
      acc[t][v] = accumulate ? _mm512_maskz_loadu_ps(mask[v], Y + t * ldy + v * kL) : _mm512_setzero_ps();
  for (int64_t k = 0; k < kp; ++k) {
    __m512bh p[kNV];
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) p[v] = (__m512bh)_mm512_load_si512(P + k * kNR + v * kL);
    MOEP_UNROLL
    for (int t = 0; t < M; ++t) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(int(X[t * ldx + k]));
      MOEP_UNROLL
      for (int v = 0; v < kNV; ++v) acc[t][v] = _mm512_dpbf16_ps(acc[t][v], p[v], x);
    }
  }
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) _mm512_mask_storeu_ps(Y + t * ldy + v * kL, mask[v], acc[t][v]);
}

template <int M>
void micro_dot_tail(int m, const uint32_t* P, int64_t kp, const uint32_t* X, int64_t ldx, float* Y, int64_t ldy,
                    bool accumulate, const __mmask16 (&mask)[kNV]) {
  if constexpr (M > 0) {
    if (m == M) {
      micro_dot<M>(P, kp, X, ldx, Y, ldy, accumulate, mask);
    } else {
      micro_dot_tail<M - 1>(m, P, kp, X, ldx, Y, ldy, accumulate, mask);
    }
  }
}

// P[p][j] = W[jb + j, k0 + 2p] | W[jb + j, k0 + 2p + 1] << 16 (bf16 bits) for p < ceil(kc / 2), j < kNR; zero
// for rows at or past je and for the element past kc. k0 is even. (gemm_nt: the pair is the 32-bit word at
// element k0 + 2p of the row, so the 16×16 transpose of 32-bit lanes packs it.)
void pack_nt_dot(uint32_t* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  MOEP_UNROLL
  for (int v = 0; v < kNV; ++v) {
    const int64_t gb = jb + v * kL;
    const int64_t n_rows = std::clamp<int64_t>(je - gb, 0, kL);
    for (int64_t kk = 0; kk < kc; kk += 2 * kL) {
      const int64_t ne = std::min<int64_t>(2 * kL, kc - kk);  // elements (bf16) of this block
      const __mmask32 m = ne == 2 * kL ? __mmask32(0xffffffffu) : __mmask32((1u << ne) - 1u);
      __m512 a[16];
      MOEP_UNROLL
      for (int i = 0; i < 16; ++i) {
        const uint8_t* src = W.row_ptr(gb + i) + 2 * (k0 + kk);
        if (i >= n_rows) {
          a[i] = _mm512_setzero_ps();
        } else if (ne == 2 * kL) {
          a[i] = _mm512_castsi512_ps(_mm512_loadu_si512(src));
        } else {
          a[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, src));
        }
      }
      transpose16(a);
      const int64_t np = (ne + 1) / 2;
      for (int64_t i = 0; i < np; ++i)
        _mm512_store_si512(P + (kk / 2 + i) * kNR + v * kL, _mm512_castps_si512(a[i]));
    }
  }
}

// P[p][j] = W[k0 + 2p, jb + j] | W[k0 + 2p + 1, jb + j] << 16 for p < ceil(kc / 2), j < kNR; zero for columns
// at or past je and for the row past kc. (gemm_nn: rows 2p and 2p + 1 interleaved.)
void pack_nn_dot(uint32_t* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  __mmask16 m[kNV];
  MOEP_UNROLL
  for (int v = 0; v < kNV; ++v) m[v] = lanes(std::clamp<int64_t>(je - jb - v * kL, 0, kL));
  auto load = [](const uint8_t* row, __mmask16 mk) {
    return mk == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)) : _mm256_maskz_loadu_epi16(mk, row);
  };
  for (int64_t p = 0; 2 * p < kc; ++p) {
    const uint8_t* ra = W.row_ptr(k0 + 2 * p) + 2 * jb;
    const bool has_b = 2 * p + 1 < kc;
    const uint8_t* rb = has_b ? W.row_ptr(k0 + 2 * p + 1) + 2 * jb : nullptr;
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) {
      const __m512i a = _mm512_cvtepu16_epi32(load(ra + 2 * v * kL, m[v]));
      const __m512i b = has_b ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(load(rb + 2 * v * kL, m[v])), 16)
                              : _mm512_setzero_si512();
      _mm512_store_si512(P + p * kNR + v * kL, _mm512_or_si512(a, b));
    }
  }
}

// packed_gemm with bf16 pairs: Y[t, j] = Σ_{k<K} bf16(X[t, k]) · B[k, j] for t < T, j in [j0, j1).
template <class Pack>
void packed_gemm_dot(int64_t T, int64_t K, int64_t j0, int64_t j1, const float* X, int64_t ldx, float* Y,
                     int64_t ldy, Pack pack) {
  const int64_t ldb = spread_stride((K + 1) / 2);
  auto* xb = reinterpret_cast<uint32_t*>(scratch<Avx512>(kStagedX, size_t(T * ldb)));
  stage_bf16_pairs(X, ldx, T, K, xb, ldb);
  auto* buf = reinterpret_cast<uint32_t*>(scratch<Avx512>(kPackedW, size_t(kNC / kNR) * kKP * kNR));
  for (int64_t jb0 = j0; jb0 < j1; jb0 += kNC) {
    const int64_t je0 = std::min(j1, jb0 + kNC);
    const int n_panels = int((je0 - jb0 + kNR - 1) / kNR);
    for (int64_t k0 = 0; k0 < K; k0 += 2 * kKP) {
      const int64_t kc = std::min(2 * kKP, K - k0);
      const int64_t kp = (kc + 1) / 2;
      const bool acc = k0 > 0;
      for (int p = 0; p < n_panels; ++p)
        pack(buf + p * kKP * kNR, jb0 + p * kNR, std::min(je0, jb0 + (p + 1) * kNR), k0, kc);
      for (int p = 0; p < n_panels; ++p) {
        const int64_t jb = jb0 + p * kNR;
        __mmask16 mask[kNV];
        MOEP_UNROLL
        for (int v = 0; v < kNV; ++v) mask[v] = lanes(std::clamp<int64_t>(je0 - jb - v * kL, 0, kL));
        const uint32_t* P = buf + p * kKP * kNR;
        const uint32_t* x = xb + k0 / 2;
        float* y = Y + jb;
        int64_t t = 0;
        for (; t + kM <= T; t += kM) micro_dot<kM>(P, kp, x + t * ldb, ldb, y + t * ldy, ldy, acc, mask);
        if (t < T) micro_dot_tail<kM - 1>(int(T - t), P, kp, x + t * ldb, ldb, y + t * ldy, ldy, acc, mask);
      }
    }
  }
}

// ---- streaming paths with bf16 dot products (opt-in, bf16 weights, 2 ≤ T below the packed thresholds) -----
//
// Few tokens (a prefill whose tokens are spread over many experts gives each about 8) leave the streaming paths
// compute-bound: 16 f32 FMAs per weight vector and token, plus the widening. These take the weights as they are
// stored (32 bf16 in a 64-byte vector, no widening) against activations rounded to bf16 pairs once per call
// (stage_bf16_pairs), so each vdpbf16ps does 32 multiply-adds.

// Tokens per register block of the streaming gemm_nt: R·TB accumulators + R weight vectors + 1 ≤ 32.
constexpr int kDotNtR = 4;
constexpr int kDotNtMaxTB = 6;
// With several token blocks, the columns go in blocks of about this many bytes of staged activations (all T
// tokens), so that a block of the R weight rows and the activations stay in L1 while every token block passes
// over them: the weights are read from memory once, in one sequential run per row, and memory stays busy
// (a token block re-reading whole rows from L2 while no new weights are requested measured ~30% slower).
constexpr int64_t kDotNtXBlockBytes = 24576;

// acc[i][t] += Σ_{c in [c0, c1)} W[r + i, c] · Xb[t, c] for i < R, t < TB (acc held in accm[i·TB + t] between
// column blocks: zero before the first, `first`; reduced into Y[t, r + i] after the last, `last`). Xb holds X
// rounded to bf16 pairs (word p of row t = elements 2p, 2p + 1; zero past the end, see stage_bf16_pairs); in
// pair space, one 32-bit lane of a 64-byte weight vector holds elements 2p, 2p + 1 of the row, as in Xb. c0 is a
// multiple of 32; c1 is one too or the row's end, whose partial chunk has both operands masked (zero-filled:
// Xb's words past the staged ones are stale scratch, W's elements past the row are padding).
template <int R, int TB>
void nt_dot_block(const MatRef& W, const uint32_t* Xb, int64_t ldb, int64_t r, int64_t c0, int64_t c1, __m512* accm,
                  bool first, bool last, float* Y, int64_t ldy) {
  const int64_t kAhead = prefetch_ahead(R, W);
  const uint8_t* w[R];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i) w[i] = W.row_ptr(r + i);
  __m512 acc[R][TB];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i)
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) acc[i][t] = first ? _mm512_setzero_ps() : accm[i * TB + t];
  int64_t c = c0;
  for (; c + 2 * kL <= c1; c += 2 * kL) {  // 32 elements = 64 bytes of each row
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w[i] + 2 * c + kAhead), _MM_HINT_T0);
    __m512bh wv[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = (__m512bh)_mm512_loadu_si512(w[i] + 2 * c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512(Xb + t * ldb + c / 2);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv[i], x);
    }
  }
  if (c < c1) {
    const int64_t ne = c1 - c;  // 1..31 elements
    const __mmask32 m = __mmask32((1u << ne) - 1u);
    __m512bh wv[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = (__m512bh)_mm512_maskz_loadu_epi16(m, w[i] + 2 * c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      // Whole words (the staged pair past an odd end is zero in its high half).
      const __m512bh x = (__m512bh)_mm512_maskz_loadu_epi32(lanes((ne + 1) / 2), Xb + t * ldb + c / 2);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv[i], x);
    }
  }
  if (last) {
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t)
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) Y[t * ldy + r + i] = _mm512_reduce_add_ps(acc[i][t]);
  } else {
    MOEP_UNROLL
    for (int i = 0; i < R; ++i)
      MOEP_UNROLL
      for (int t = 0; t < TB; ++t) accm[i * TB + t] = acc[i][t];
  }
}

// Rows [r, r + R) for all T < kPackMinTnt tokens, in token blocks of at most kDotNtMaxTB, as even as possible
// (7 tokens: 4 + 3, not 6 + 1, whose block would do R + 1 loads for R dot products), and column blocks of cb.
template <int R>
void nt_dot_group(const MatRef& W, const uint32_t* Xb, int64_t ldb, int64_t T, float* Y, int64_t ldy, int64_t r,
                  int64_t cb) {
  alignas(64) __m512 accm[R * (kPackMinTnt - 1)];
  const int64_t n_blocks = (T + kDotNtMaxTB - 1) / kDotNtMaxTB;
  const int64_t n = W.cols;
  for (int64_t c0 = 0; c0 < n; c0 += cb) {
    const int64_t c1 = std::min(n, c0 + cb);
    int64_t t0 = 0;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t tb = (T - t0 + (n_blocks - b) - 1) / (n_blocks - b);
      const uint32_t* x = Xb + t0 * ldb;
      float* y = Y + t0 * ldy;
      __m512* a = accm + R * t0;
      const bool first = c0 == 0, last = c1 == n;
      switch (tb) {
        case 1: nt_dot_block<R, 1>(W, x, ldb, r, c0, c1, a, first, last, y, ldy); break;
        case 2: nt_dot_block<R, 2>(W, x, ldb, r, c0, c1, a, first, last, y, ldy); break;
        case 3: nt_dot_block<R, 3>(W, x, ldb, r, c0, c1, a, first, last, y, ldy); break;
        case 4: nt_dot_block<R, 4>(W, x, ldb, r, c0, c1, a, first, last, y, ldy); break;
        case 5: nt_dot_block<R, 5>(W, x, ldb, r, c0, c1, a, first, last, y, ldy); break;
        case 6: nt_dot_block<R, 6>(W, x, ldb, r, c0, c1, a, first, last, y, ldy); break;
      }
      t0 += tb;
    }
  }
}
static_assert(kDotNtMaxTB == 6);

void nt_stream_dot(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                   int64_t r1) {
  const int64_t ldb = spread_stride((W.cols + 1) / 2);
  auto* xb = reinterpret_cast<uint32_t*>(scratch<Avx512>(kStagedX, size_t(T * ldb)));
  stage_bf16_pairs(X, ldx, T, W.cols, xb, ldb);
  // One token block: no reuse, a single pass over the columns.
  const int64_t cb = T <= kDotNtMaxTB ? W.cols : std::max<int64_t>(2 * kL, kDotNtXBlockBytes / (2 * T) / (2 * kL) * (2 * kL));
  int64_t r = r0;
  for (; r + kDotNtR <= r1; r += kDotNtR) nt_dot_group<kDotNtR>(W, xb, ldb, T, Y, ldy, r, cb);
  for (; r < r1; ++r) nt_dot_group<1>(W, xb, ldb, T, Y, ldy, r, cb);
}

// Streaming gemm_nn: weight rows 2p and 2p + 1 are interleaved into bf16 pairs (vpunpcklwd / vpunpckhwd) as they
// stream past, against the broadcast pair (X[t, 2p], X[t, 2p + 1]). The unpacks work within 128-bit lanes: for
// 32 columns starting at c, the "lo" vector holds columns c + 8L + j and the "hi" vector c + 8L + 4 + j
// (lane L < 4, j < 4). The output tile keeps that order (32 floats: lo then hi) and is put back in column order
// when it is copied out (kUnLo, kUnHi), so the weights need no further permutes.
constexpr int kDotNnPairs = 4;  // row pairs streamed side by side
// Output tile of the streaming dot gemm_nn (T·columns f32, in L1): all T tokens in one pass over the weights.
constexpr int64_t kDotNnTileFloats = 8192;

// Y[t, c] += Σ_{i<P} Xb[t, p + i] · (W[2(p + i), c], W[2(p + i) + 1, c]) for the 32-column chunks of [0, n),
// t < T, Y in the tile's permuted order. Row 2(p + i) + 1 is zero where it is past the matrix (odd row count).
template <int P>
void nn_dot_rows(const MatRef& W, const uint32_t* Xb, int64_t ldb, int64_t T, float* Y, int64_t ldy, int64_t n,
                 int64_t p, int64_t ahead) {
  const uint8_t* wa[P];
  const uint8_t* wb[P];
  bool has_b[P];
  MOEP_UNROLL
  for (int i = 0; i < P; ++i) {
    wa[i] = W.row_ptr(2 * (p + i));
    has_b[i] = 2 * (p + i) + 1 < W.rows;
    wb[i] = has_b[i] ? W.row_ptr(2 * (p + i) + 1) : wa[i];
  }
  for (int64_t c = 0; c < n; c += 2 * kL) {
    const int64_t ne = n - c;
    const __mmask32 m = ne >= 2 * kL ? __mmask32(0xffffffffu) : __mmask32((1u << ne) - 1u);
    __m512bh lo[P], hi[P];
    MOEP_UNROLL
    for (int i = 0; i < P; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(wa[i] + 2 * c + ahead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wb[i] + 2 * c + ahead), _MM_HINT_T0);
      const __m512i a = _mm512_maskz_loadu_epi16(m, wa[i] + 2 * c);
      const __m512i b = has_b[i] ? _mm512_maskz_loadu_epi16(m, wb[i] + 2 * c) : _mm512_setzero_si512();
      lo[i] = (__m512bh)_mm512_unpacklo_epi16(a, b);
      hi[i] = (__m512bh)_mm512_unpackhi_epi16(a, b);
    }
    for (int64_t t = 0; t < T; ++t) {
      float* y = Y + t * ldy + c;
      __m512 ylo = _mm512_load_ps(y), yhi = _mm512_load_ps(y + kL);
      MOEP_UNROLL
      for (int i = 0; i < P; ++i) {
        const __m512bh x = (__m512bh)_mm512_set1_epi32(int(Xb[t * ldb + p + i]));
        ylo = _mm512_dpbf16_ps(ylo, lo[i], x);
        yhi = _mm512_dpbf16_ps(yhi, hi[i], x);
      }
      _mm512_store_ps(y, ylo);
      _mm512_store_ps(y + kL, yhi);
    }
  }
}

void nn_stream_dot(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t c0,
                   int64_t c1) {
  const int64_t K = W.rows, n_pairs = (K + 1) / 2;
  const int64_t ldb = spread_stride(n_pairs);
  auto* xb = reinterpret_cast<uint32_t*>(scratch<Avx512>(kStagedX, size_t(T * ldb)));
  stage_bf16_pairs(X, ldx, T, K, xb, ldb);
  const int64_t tile = std::max<int64_t>(2 * kL, kDotNnTileFloats / T / (2 * kL) * (2 * kL));
  const int64_t ld = spread_stride(tile);
  float* acc = scratch<Avx512>(kOutTile, size_t(T * ld));
  // Prefetch the same columns of the rows read next. (Prefetching along each row, as nn_stream does for long
  // segments, leaves the start of every row segment unrequested; with 8 rows side by side that measured up to
  // 1.5x slower from memory at 2..4 tokens.)
  const int64_t ahead = 2 * kDotNnPairs * W.row_stride * 2;
  const __m512i un_lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i un_hi = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int64_t cb = c0; cb < c1; cb += tile) {
    const int64_t n = std::min(c1, cb + tile) - cb;
    const int64_t n_up = (n + 2 * kL - 1) / (2 * kL) * (2 * kL);
    for (int64_t t = 0; t < T; ++t) std::memset(acc + t * ld, 0, size_t(n_up) * sizeof(float));
    const MatRef Wt{W.row_ptr(0) + size_t(cb) * 2, DType::BF16, W.rows, n, W.row_stride, W.small_pages};
    int64_t p = 0;
    for (; p + kDotNnPairs <= n_pairs; p += kDotNnPairs) nn_dot_rows<kDotNnPairs>(Wt, xb, ldb, T, acc, ld, n, p, ahead);
    for (; p < n_pairs; ++p) nn_dot_rows<1>(Wt, xb, ldb, T, acc, ld, n, p, ahead);
    for (int64_t t = 0; t < T; ++t) {
      const float* a = acc + t * ld;
      float* y = Y + t * ldy + cb;
      for (int64_t c = 0; c < n; c += 2 * kL) {
        const __m512 lo = _mm512_load_ps(a + c), hi = _mm512_load_ps(a + c + kL);
        _mm512_mask_storeu_ps(y + c, lanes(n - c), _mm512_permutex2var_ps(lo, un_lo, hi));
        if (n - c > kL) _mm512_mask_storeu_ps(y + c + kL, lanes(n - c - kL), _mm512_permutex2var_ps(lo, un_hi, hi));
      }
    }
  }
}

// ---- streaming gemm_nt entry, dtype conversion, bf16-dot entry points -----------------------------------

// gemm_nt below the packed threshold.
template <DType D>
void Avx512::nt_stream(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                       int64_t r1) {
  // Enough rows that staging the activations (a copy of T·cols f32) is small beside the weights read.
  const bool stage = r1 - r0 >= 32;
  // bf16, up to 5 tokens: the even/odd split (kPairs). Measured single-threaded from memory it streams at
  // least as fast as widening by zero-extension (a few percent faster for T = 1, within noise for T = 2..5) with
  // half the vector operations per weight, which leaves room when both cores share the memory system. From
  // 6 tokens on it measured slower (more register pressure), so those take the general path.
  if constexpr (D == DType::BF16) {
    if (stage && T <= 5 && W.cols >= 2 * kL) {
      const int64_t ld = spread_stride(W.cols);
      float* xp = scratch<Avx512>(kStagedX, size_t(T * ld));
      stage_pairs(X, ldx, T, W.cols, xp, ld);
      nt_stream_rows<D, 4, true>(W, X, ldx, xp, ld, T, Y, ldy, r0, r1);
      return;
    }
  }
  // From 6 tokens on, token rows and weight rows together overflow an L1 set at a 4 KiB-multiple stride:
  // stage the tokens at a set-spreading stride.
  if (T >= 6 && stage) {
    const int64_t ld = spread_stride(W.cols);
    float* xs = scratch<Avx512>(kStagedX, size_t(T * ld));
    copy_rows(X, ldx, T, 0, W.cols, xs, ld);
    X = xs;
    ldx = ld;
  }
  if (T <= 5) {
    nt_stream_rows<D, 4, false>(W, X, ldx, X, ldx, T, Y, ldy, r0, r1);
  } else {
    nt_stream_rows<D, 3, false>(W, X, ldx, X, ldx, T, Y, ldy, r0, r1);
  }
}

template <DType D>
void Avx512::convert(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  if constexpr (kBlockQuantized<D>) {
    MOEP_ASSERT(n % QBlock<D>::kWeights == 0, "to_f32: a quantized row is whole blocks");
    dequantize_cols<D>(p, 0, n, dst);
  } else {
    int64_t i = 0;
    for (; i + kL <= n; i += kL) _mm512_storeu_ps(dst + i, WLoad<D>::full(p, i));
    if (i < n) {
      const __mmask16 m = lanes(n - i);
      _mm512_mask_storeu_ps(dst + i, m, WLoad<D>::part(p, i, m));
    }
  }
}

// The bf16-dot table's entry points: bf16 weights with 2 or more tokens take bf16 dot products (packed from
// the plain packed thresholds on, streaming below); 1 token and f32/f16 weights are the plain avx512 path.
void gemm_nt_dot(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                 int64_t r1) {
  if (W.dtype == DType::BF16 && T >= kPackMinTnt && W.cols > 0 && r0 < r1) {
    thread_scratch<Avx512>();
    packed_gemm_dot(T, W.cols, r0, r1, X, ldx, Y, ldy,
                    [&](uint32_t* P, int64_t jb, int64_t je, int64_t k0, int64_t kc) { pack_nt_dot(P, W, jb, je, k0, kc); });
    return;
  }
  if (W.dtype == DType::BF16 && T >= kBf16DotAlwaysFromT && W.cols > 0 && r0 < r1) {
    thread_scratch<Avx512>();
    nt_stream_dot(W, X, ldx, T, Y, ldy, r0, r1);
    return;
  }
  gemm_nt<Avx512>(W, X, ldx, T, Y, ldy, r0, r1);
}

void gemm_nn_dot(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t c0,
                 int64_t c1) {
  if (W.dtype == DType::BF16 && T >= kPackMinTnn && W.rows > 0 && c0 < c1) {
    thread_scratch<Avx512>();
    packed_gemm_dot(T, W.rows, c0, c1, X, ldx, Y, ldy,
                    [&](uint32_t* P, int64_t jb, int64_t je, int64_t k0, int64_t kc) { pack_nn_dot(P, W, jb, je, k0, kc); });
    return;
  }
  if (W.dtype == DType::BF16 && T >= kBf16DotAlwaysFromT && W.rows > 0 && c0 < c1) {
    thread_scratch<Avx512>();
    nn_stream_dot(W, X, ldx, T, Y, ldy, c0, c1);
    return;
  }
  gemm_nn<Avx512>(W, X, ldx, T, Y, ldy, c0, c1);
}

// Packing the panels costs about as much as the dot products at 8 tokens: measured with the packed dot path
// from T = 2 on (10752×6144 bf16, 2 threads, Zen 4), T = 2..8 were slower than the plain streaming paths
// (gemm_nn up to 2x), so the packed dot path starts where the plain packed path does, and fewer tokens stream
// (nt_stream_dot, nn_stream_dot).
// One token (decode) stays on the exact kernels, bit for bit.
static_assert(kBf16DotAlwaysFromT == 2 && kBf16DotAlwaysFromT <= kPackMinTnn && kPackMinTnn <= kPackMinTnt);

}  // namespace

const KernelTable* avx512_kernels() {
  static const KernelTable table{"avx512", gemm_nt<Avx512>, gemm_nn<Avx512>, to_f32<Avx512>, /*quantized=*/true};
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return supported ? &table : nullptr;
}

// The same table with the packed path of bf16 weights on bf16 dot products (vdpbf16ps); only where the CPU has
// AVX512_BF16 as well. Not among available_kernel_tables(): it does not compute the reference's function (the
// activations are rounded); set_bf16_dot() (dispatch.cpp) selects it.
const KernelTable* avx512_bf16dot_kernels() {
  static const KernelTable table{"avx512+bf16dot", gemm_nt_dot, gemm_nn_dot, to_f32<Avx512>, /*quantized=*/true};
  static const bool supported = avx512_kernels() != nullptr && __builtin_cpu_supports("avx512bf16");
  return supported ? &table : nullptr;
}

}  // namespace moep::kernels
