// NEON kernels for aarch64 (Apple Silicon, Graviton, Ampere, …): the same algorithms as gemm_avx512.cpp with
// 4-lane vectors and 32 registers. f32 arithmetic throughout; weights widened to f32 as they are loaded (bf16 by
// a 16-bit shift-left-long, f16 by fcvtl), activations never rounded.
//
//  - few tokens: weights stream once, each widened vector serves every token (register blocking over T);
//  - many tokens: weight blocks widened once into f32 panels and reused by a kM × kNR micro-kernel.
//
// NEON (Advanced SIMD) with FP16 conversion is part of every ARMv8-A CPU, so neon_kernels() needs no run-time
// check.
#include <arm_neon.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/gemm_driver.h"
#include "kernels/kernels.h"

namespace moep::kernels {

namespace {

constexpr int kL = 4;  // f32 lanes per vector

// ---- primitives -------------------------------------------------------------------------------------------

// Lanes [0, n) of p (n < 4), the rest zero; reads nothing past p + n.
inline float32x4_t load_part(const float* p, int64_t n) {
  float buf[4] = {0.f, 0.f, 0.f, 0.f};
  std::memcpy(buf, p, size_t(n) * sizeof(float));
  return vld1q_f32(buf);
}
// Writes lanes [0, n) of v to p (n ≤ 4); nothing past p + n.
inline void store_part(float* p, float32x4_t v, int64_t n) {
  if (n >= kL) {
    vst1q_f32(p, v);
    return;
  }
  float buf[4];
  vst1q_f32(buf, v);
  std::memcpy(p, buf, size_t(n) * sizeof(float));
}
inline uint16x4_t load16_part(const uint8_t* p, int64_t n) {
  uint16_t buf[4] = {0, 0, 0, 0};
  std::memcpy(buf, p, size_t(n) * 2);
  return vld1_u16(buf);
}

// Weight loads: 4 consecutive elements of a row from element c, widened to f32. part() reads only [0, n).
template <DType D>
struct WLoad;
template <>
struct WLoad<DType::F32> {
  using Elem = float;
  static float32x4_t full(const uint8_t* row, int64_t c) { return vld1q_f32(reinterpret_cast<const float*>(row) + c); }
  static float32x4_t part(const uint8_t* row, int64_t c, int64_t n) {
    return load_part(reinterpret_cast<const float*>(row) + c, n);
  }
};
template <>
struct WLoad<DType::BF16> {
  using Elem = uint16_t;
  static float32x4_t widen(uint16x4_t h) { return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); }
  static float32x4_t full(const uint8_t* row, int64_t c) {
    return widen(vld1_u16(reinterpret_cast<const uint16_t*>(row) + c));
  }
  static float32x4_t part(const uint8_t* row, int64_t c, int64_t n) { return widen(load16_part(row + 2 * c, n)); }
};
template <>
struct WLoad<DType::F16> {
  using Elem = uint16_t;
  static float32x4_t widen(uint16x4_t h) { return vcvt_f32_f16(vreinterpret_f16_u16(h)); }
  static float32x4_t full(const uint8_t* row, int64_t c) {
    return widen(vld1_u16(reinterpret_cast<const uint16_t*>(row) + c));
  }
  static float32x4_t part(const uint8_t* row, int64_t c, int64_t n) { return widen(load16_part(row + 2 * c, n)); }
};

// In-register transpose of a 4×4 f32 block: a[i][j] → a[j][i].
inline void transpose4(float32x4_t (&a)[4]) {
  const float32x4_t t0 = vtrn1q_f32(a[0], a[1]), t1 = vtrn2q_f32(a[0], a[1]);
  const float32x4_t t2 = vtrn1q_f32(a[2], a[3]), t3 = vtrn2q_f32(a[2], a[3]);
  a[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  a[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
  a[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  a[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

// ---- tuning -------------------------------------------------------------------------------------------------

// Token counts from which the packed (compute-bound) path is used: as for AVX-512, which has the same
// register budget and blocking (not measured on Arm hardware; qemu tests correctness only).
constexpr int64_t kPackMinTnt = 24;
constexpr int64_t kPackMinTnn = 16;
// Packed path: kM tokens × kNV vectors (kNR = 16 outputs): 24 accumulators + 4 weight vectors + 1 broadcast of
// 32 registers. Panels [kKC][kNR] f32 = 16 KiB; kNC outputs packed per reduction block.
constexpr int kM = 6;
constexpr int kNV = 4;
constexpr int kNR = kNV * kL;
constexpr int64_t kKC = 256;
constexpr int64_t kNC = 4 * kNR;
// Streaming paths: software prefetch keeps about this many bytes of weights requested ahead of each thread,
// split over the rows it streams side by side (Little's law: ~20 GB/s per core × ~200 ns of memory latency is
// 4 KiB; twice that measured at least as well).
// The hardware prefetchers alone track several concurrent streams across 4 KiB pages poorly.
constexpr int64_t kPrefetchInFlight = 8192;
// Streaming gemm_nn: the f32 output tile [T, columns] kept in L1 while the weight rows stream past it.
constexpr int64_t kNNTileFloats = 4096;

// ---- this instruction set's part of the driver (kernels/gemm_driver.h) ----------------------------------

struct Neon {
  static constexpr ScratchOwner kScratch = kScratchNeon;
  static constexpr int kLanes = kL;
  static constexpr int kMicroTokens = kM;
  static constexpr int kMicroVectors = kNV;
  static constexpr int64_t kPanelDepth = kKC;
  static constexpr int64_t kPanelBlock = kNC;
  static constexpr int64_t kPackMinTokensNt = kPackMinTnt;
  static constexpr bool kQuantized = false;
  static constexpr int64_t kPackMinTokensNn = kPackMinTnn;
  static constexpr int kNnStreamMaxTokens = 8;
  static constexpr size_t kOutTileFloats = 2 * kNNTileFloats;

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

// Y[t, r + i] = Σ_c W[r + i, c] · X[t, c] for i < R, t < TB, in one pass over the R weight rows.
template <DType D, int R, int TB>
void nt_block(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t r) {
  constexpr int64_t kSize = int64_t(sizeof(typename WLoad<D>::Elem));
  constexpr int64_t kAhead = kPrefetchInFlight / R / 64 * 64;
  const uint8_t* w[R];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i) w[i] = W.row_ptr(r + i);
  float32x4_t acc[R][TB];
  MOEP_UNROLL
  for (int i = 0; i < R; ++i)
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) acc[i][t] = vdupq_n_f32(0.f);
  const int64_t n = W.cols;
  int64_t c = 0;
  for (; c + kL <= n; c += kL) {
    if (((c * kSize) & 63) == 0) {  // once per cache line of each row
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) __builtin_prefetch(w[i] + c * kSize + kAhead);
    }
    float32x4_t wv[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = WLoad<D>::full(w[i], c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const float32x4_t x = vld1q_f32(X + t * ldx + c);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = vfmaq_f32(acc[i][t], wv[i], x);
    }
  }
  if (c < n) {
    float32x4_t wv[R];
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) wv[i] = WLoad<D>::part(w[i], c, n - c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const float32x4_t x = load_part(X + t * ldx + c, n - c);
      MOEP_UNROLL
      for (int i = 0; i < R; ++i) acc[i][t] = vfmaq_f32(acc[i][t], wv[i], x);
    }
  }
  MOEP_UNROLL
  for (int t = 0; t < TB; ++t)
    MOEP_UNROLL
    for (int i = 0; i < R; ++i) Y[t * ldy + r + i] = vaddvq_f32(acc[i][t]);
}

// Rows [r, r + R) for all T tokens, in token blocks of at most kMaxTB (R·TB + R + 1 ≤ 32 registers).
template <DType D, int R>
void nt_group(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r) {
  constexpr int kMaxTB = R >= 6 ? 1 : R >= 4 ? 5 : 8;
  for_token_blocks<kMaxTB>(T, [&](auto tokens, int64_t t0) MOEP_LOOP_BODY {
    nt_block<D, R, tokens()>(W, X + t0 * ldx, ldx, Y + t0 * ldy, ldy, r);
  });
}

// Rows [r0, r1) as groups of R neighbouring rows.
template <DType D, int R>
void nt_stream_rows(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                    int64_t r1) {
  for_row_groups<R>(r0, r1, [&](auto rows, int64_t r, int64_t) MOEP_LOOP_BODY { nt_group<D, rows()>(W, X, ldx, T, Y, ldy, r); });
}

// ---- streaming gemm_nn (few tokens) ---------------------------------------------------------------------

// Y[t, c] += Σ_{i<RG} X[t, r + i] · W[r + i, c] for c in [c0, c1), t < TB.
template <DType D, int TB, int RG>
void nn_rows(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t c0, int64_t c1,
             int64_t r, int64_t ahead) {
  constexpr int64_t kSize = int64_t(sizeof(typename WLoad<D>::Elem));
  const uint8_t* w[RG];
  MOEP_UNROLL
  for (int i = 0; i < RG; ++i) w[i] = W.row_ptr(r + i);
  float x[TB][RG];
  MOEP_UNROLL
  for (int t = 0; t < TB; ++t)
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) x[t][i] = X[t * ldx + r + i];
  int64_t c = c0;
  for (; c + kL <= c1; c += kL) {
    if (((c * kSize) & 63) == 0) {
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) __builtin_prefetch(w[i] + c * kSize + ahead);
    }
    float32x4_t wv[RG];
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) wv[i] = WLoad<D>::full(w[i], c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      float32x4_t y = vld1q_f32(Y + t * ldy + c);
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) y = vfmaq_n_f32(y, wv[i], x[t][i]);
      vst1q_f32(Y + t * ldy + c, y);
    }
  }
  if (c < c1) {
    float32x4_t wv[RG];
    MOEP_UNROLL
    for (int i = 0; i < RG; ++i) wv[i] = WLoad<D>::part(w[i], c, c1 - c);
    MOEP_UNROLL
    for (int t = 0; t < TB; ++t) {
      float32x4_t y = load_part(Y + t * ldy + c, c1 - c);
      MOEP_UNROLL
      for (int i = 0; i < RG; ++i) y = vfmaq_n_f32(y, wv[i], x[t][i]);
      store_part(Y + t * ldy + c, y, c1 - c);
    }
  }
}

template <DType D, int TB>
void Neon::nn_stream(const MatRef& W, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t c0, int64_t c1) {
  constexpr int RG = TB <= 2 ? 8 : 4;
  const int64_t tile = std::max<int64_t>(kL, kNNTileFloats / TB / kL * kL);
  // Prefetch along each row when its segment in the tile is long; otherwise the same columns of the next RG
  // rows, which are read next.
  const int64_t in_row = kPrefetchInFlight / RG / 64 * 64;
  const int64_t ahead = std::min(tile, c1 - c0) * int64_t(dtype_size(D)) >= 4 * in_row
                            ? in_row
                            : RG * W.row_stride * int64_t(dtype_size(D));
  nn_column_tiles<Neon, D, TB>(W, Y, ldy, c0, c1, tile, [&](const MatRef& Wt, float* acc, int64_t ld, int64_t n) MOEP_LOOP_BODY {
    for_row_groups<RG>(0, W.rows, [&](auto rows, int64_t r, int64_t) MOEP_LOOP_BODY {
      nn_rows<D, TB, rows()>(Wt, X, ldx, acc, ld, 0, n, r, ahead);
    });
  });
}

// ---- packed path (many tokens) --------------------------------------------------------------------------

// Y[t, j] = (accumulate ? Y[t, j] : 0) + Σ_{k<kc} X[t, k] · P[k, j] for t < M, j < n_valid[v] within vector v.
// P is a packed panel [kc][kNR] f32.
template <int M>
void Neon::micro(const float* P, int64_t kc, const float* X, int64_t ldx, float* Y, int64_t ldy, bool accumulate,
           const int64_t (&n_valid)[kNV]) {
  float32x4_t acc[M][kNV];
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v)
      acc[t][v] = accumulate ? load_part(Y + t * ldy + v * kL, n_valid[v]) : vdupq_n_f32(0.f);
  for (int64_t k = 0; k < kc; ++k) {
    float32x4_t p[kNV];
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) p[v] = vld1q_f32(P + k * kNR + v * kL);
    MOEP_UNROLL
    for (int t = 0; t < M; ++t) {
      const float32x4_t x = vld1q_dup_f32(X + t * ldx + k);
      MOEP_UNROLL
      for (int v = 0; v < kNV; ++v) acc[t][v] = vfmaq_f32(acc[t][v], p[v], x);
    }
  }
  MOEP_UNROLL
  for (int t = 0; t < M; ++t)
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) store_part(Y + t * ldy + v * kL, acc[t][v], n_valid[v]);
}

// P[k][j] = W[jb + j, k0 + k] for k < kc, j < kNR; zero for rows at or past je. (gemm_nt: transposes.)
template <DType D>
void Neon::pack_nt(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  for (int v = 0; v < kNV; ++v) {
    const int64_t gb = jb + v * kL;
    const int64_t n_rows = std::clamp<int64_t>(je - gb, 0, kL);
    for (int64_t kk = 0; kk < kc; kk += kL) {
      const int64_t nk = std::min<int64_t>(kL, kc - kk);
      float32x4_t a[4];
      MOEP_UNROLL
      for (int i = 0; i < 4; ++i) {
        if (i >= n_rows) {
          a[i] = vdupq_n_f32(0.f);
        } else if (nk == kL) {
          a[i] = WLoad<D>::full(W.row_ptr(gb + i), k0 + kk);
        } else {
          a[i] = WLoad<D>::part(W.row_ptr(gb + i), k0 + kk, nk);
        }
      }
      transpose4(a);
      for (int64_t i = 0; i < nk; ++i) vst1q_f32(P + (kk + i) * kNR + v * kL, a[i]);
    }
  }
}

// P[k][j] = W[k0 + k, jb + j] for k < kc, j < kNR; zero for columns at or past je. (gemm_nn: widens only.)
template <DType D>
void Neon::pack_nn(float* P, const MatRef& W, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
  int64_t n[kNV];
  MOEP_UNROLL
  for (int v = 0; v < kNV; ++v) n[v] = std::clamp<int64_t>(je - jb - v * kL, 0, kL);
  for (int64_t k = 0; k < kc; ++k) {
    const uint8_t* row = W.row_ptr(k0 + k);
    MOEP_UNROLL
    for (int v = 0; v < kNV; ++v) {
      const float32x4_t w = n[v] == kL ? WLoad<D>::full(row, jb + v * kL)
                                       : (n[v] > 0 ? WLoad<D>::part(row, jb + v * kL, n[v]) : vdupq_n_f32(0.f));
      vst1q_f32(P + k * kNR + v * kL, w);
    }
  }
}

// ---- streaming gemm_nt entry, dtype conversion -------------------------------------------------------------

// gemm_nt below the packed threshold.
template <DType D>
void Neon::nt_stream(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                     int64_t r1) {
  if (T == 1) {
    nt_stream_rows<D, 8>(W, X, ldx, T, Y, ldy, r0, r1);
    return;
  }
  if (T >= 6 && r1 - r0 >= 32) {
    // Token rows read side by side with the weight rows: stage them at a set-spreading stride.
    const int64_t ld = spread_stride(W.cols);
    float* xs = scratch<Neon>(kStagedX, size_t(T * ld));
    copy_rows(X, ldx, T, 0, W.cols, xs, ld);
    X = xs;
    ldx = ld;
  }
  if (T <= 5) {
    nt_stream_rows<D, 4>(W, X, ldx, T, Y, ldy, r0, r1);
  } else {
    nt_stream_rows<D, 3>(W, X, ldx, T, Y, ldy, r0, r1);
  }
}

template <DType D>
void Neon::convert(const void* src, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  int64_t i = 0;
  for (; i + kL <= n; i += kL) vst1q_f32(dst + i, WLoad<D>::full(p, i));
  if (i < n) store_part(dst + i, WLoad<D>::part(p, i, n - i), n - i);
}

}  // namespace

const KernelTable* neon_kernels() {
  static const KernelTable table{"neon", gemm_nt<Neon>, gemm_nn<Neon>, to_f32<Neon>};
  return &table;
}

}  // namespace moep::kernels
