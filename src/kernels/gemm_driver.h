// The part of gemm_nt / gemm_nn that does not depend on the instruction set: the choice between the packed and
// the streaming paths, the packed path's loops over panels, tokens and tails, the splitting of rows into
// streams, the streaming gemm_nn's column tiles, the dispatch of token counts to register-blocked kernels, and
// the per-thread scratch.
//
// Each instruction-set file (gemm_avx512.cpp, gemm_avx2.cpp, gemm_neon.cpp) describes itself in a struct `Isa`
// and instantiates gemm_nt<Isa>, gemm_nn<Isa> and to_f32<Isa>; the vector code (streaming blocks, micro-kernel,
// packing) stays in that file. The struct provides:
//
//   kScratch                 its ScratchOwner (kernels/scratch.h)
//   kLanes                   f32 lanes per vector
//   kMicroTokens             tokens of the packed micro-kernel (rows of its tile)
//   kMicroVectors            vectors of outputs of the micro-kernel (kMicroVectors · kLanes outputs)
//   kPanelDepth              reductions per packed panel
//   kPanelBlock              outputs packed per reduction block, a multiple of kMicroVectors · kLanes
//   kPackMinTokensNt/Nn      token counts from which gemm_nt / gemm_nn take the packed path
//   kNnStreamMaxTokens       the most tokens nn_stream takes at once (1..8)
//   kOutTileFloats           initial size of the streaming gemm_nn output tile, f32
//   Lanes, valid_lanes(n)    how the micro-kernel is told that lanes [0, n) of a vector are outputs (n ≤ kLanes)
//   micro<M>(P, kc, X, ldx, Y, ldy, accumulate, const Lanes (&valid)[kMicroVectors])
//       Y[t, j] = (accumulate ? Y[t, j] : 0) + Σ_{k<kc} X[t, k] · P[k, j] for t < M, valid j; P is a panel
//       [kc][kMicroVectors · kLanes] f32, 64-byte aligned
//   pack_nt<D>(P, W, jb, je, k0, kc)   P[k][j] = W[jb + j, k0 + k]; zero for rows at or past je
//   pack_nn<D>(P, W, jb, je, k0, kc)   P[k][j] = W[k0 + k, jb + j]; zero for columns at or past je
//   nt_stream<D>(W, X, ldx, T, Y, ldy, r0, r1)          gemm_nt's streaming path (T below kPackMinTokensNt)
//   nn_stream<D, TB>(W, X, ldx, Y, ldy, c0, c1)         gemm_nn's streaming path for exactly TB tokens
//   convert<D>(src, dst, n)                              to_f32 for one dtype
//   kQuantized               whether gemm_nt and to_f32 also take ggml's block-quantized weights (DType::Q8_0 …
//                            Q6_K, MXFP4); then pack_nt, nt_stream and convert take them too (pack_nt with k0 a multiple
//                            of 256 and kc a multiple of the block: kPanelDepth must be a multiple of 256)
//   pack_min_tokens_quant(D) with kQuantized: the token count from which gemm_nt packs quantized weights of D
//
// Everything here has internal linkage: each instruction-set file compiles its own copy with its own flags. A
// shared inline definition would be merged by the linker, and the AVX-512 copy could run on a CPU without it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/scratch.h"

// Loops over register blocks (rows, tokens, vectors of a tile) have compile-time trip counts and must be
// unrolled completely so that the arrays of vectors they index live in registers; -O2 alone does not.
#define MOEP_UNROLL _Pragma("GCC unroll 32")

namespace moep::kernels {
namespace {  // NOLINT(google-build-namespaces): internal linkage on purpose, see above

// ---- per-thread scratch ---------------------------------------------------------------------------------

enum ScratchSlot { kStagedX = 0, kPackedW = 1, kOutTile = 2, kSlots = 3 };

// This thread's scratch buffers of Isa (kernels/scratch.h): created on the thread's first kernel call (see
// gemm_nt / gemm_nn), so that the decode loop neither allocates nor takes a page fault for them. Initial
// sizes in f32: staged activations up to 23 tokens × 10752 columns (the largest input width of the DBRX-size
// matrices) in 1 MiB; packed panels and the output tile fixed by Isa's blocking.
template <class Isa>
void thread_scratch() {
  constexpr int64_t kPanelOutputs = Isa::kMicroVectors * Isa::kLanes;
  constexpr size_t kPanels = size_t(Isa::kPanelBlock / kPanelOutputs * Isa::kPanelDepth * kPanelOutputs);
  static constexpr size_t kInitial[kSlots] = {size_t(1) << 18, kPanels, Isa::kOutTileFloats};
  scratch_prepare(Isa::kScratch, kInitial, kSlots);
}

// This thread's buffer `slot` of Isa, at least `floats` f32, 64-byte aligned.
template <class Isa>
float* scratch(ScratchSlot slot, size_t floats) {
  return scratch_buffer(Isa::kScratch, slot, floats);
}

// A row stride (in f32) for n values per row that is an odd number of 64-byte lines. Rows of activations are
// often a multiple of 4 KiB apart (6144 f32 = 24 KiB), which maps the same column of every row to one L1 set;
// with several rows and weight streams in flight the set overflows. An odd number of lines spreads them.
inline int64_t spread_stride(int64_t n) {
  const int64_t lines = (n + 15) / 16;
  return (lines | 1) * 16;
}

// dst[t, k] = X[t, k0 + k] for t < T, k < n, with dst's row stride ld.
inline void copy_rows(const float* X, int64_t ldx, int64_t T, int64_t k0, int64_t n, float* dst, int64_t ld) {
  for (int64_t t = 0; t < T; ++t) std::memcpy(dst + t * ld, X + t * ldx + k0, size_t(n) * sizeof(float));
}

// ---- loops shared by the streaming paths ------------------------------------------------------------------

// The loop helpers below are always inlined, and so are the lambdas given to them as loop bodies (marked
// MOEP_LOOP_BODY), so that their caller compiles as if the loop were written in it: the kernels it calls are
// inlined and specialized for constant arguments (tile strides, offsets) as when it was.
#define MOEP_LOOP_BODY __attribute__((always_inline))

template <int N>
using Count = std::integral_constant<int, N>;

// block(Count<TB>{}, t0) for consecutive blocks [t0, t0 + TB) covering [0, T), TB = kMaxTB except for the last:
// the token count of a register-blocked kernel is a template argument.
template <int kMaxTB, class Block>
[[gnu::always_inline]] inline void for_token_blocks(int64_t T, Block&& block) {
  static_assert(kMaxTB >= 1 && kMaxTB <= 8);
  for (int64_t t0 = 0; t0 < T; t0 += kMaxTB) {
    switch (std::min<int64_t>(kMaxTB, T - t0)) {
      case 1: block(Count<1>{}, t0); break;
      case 2: if constexpr (kMaxTB >= 2) block(Count<2>{}, t0); break;
      case 3: if constexpr (kMaxTB >= 3) block(Count<3>{}, t0); break;
      case 4: if constexpr (kMaxTB >= 4) block(Count<4>{}, t0); break;
      case 5: if constexpr (kMaxTB >= 5) block(Count<5>{}, t0); break;
      case 6: if constexpr (kMaxTB >= 6) block(Count<6>{}, t0); break;
      case 7: if constexpr (kMaxTB >= 7) block(Count<7>{}, t0); break;
      case 8: if constexpr (kMaxTB >= 8) block(Count<8>{}, t0); break;
    }
  }
}

// Rows [r0, r1) as R long streams: the range is cut into R equal parts and group(Count<R>{}, r0 + j, part) reads
// row j of every part at the same time, so each stream runs on through consecutive rows (contiguous in memory
// when rows are); the rows left over go one at a time, group(Count<1>{}, r, 1).
template <int R, class Group>
[[gnu::always_inline]] inline void for_row_parts(int64_t r0, int64_t r1, Group&& group) {
  const int64_t part = (r1 - r0) / R;
  for (int64_t j = 0; j < part; ++j) group(Count<R>{}, r0 + j, part);
  for (int64_t r = r0 + R * part; r < r1; ++r) group(Count<1>{}, r, int64_t{1});
}

// Rows [r0, r1) as groups of R neighbouring rows, group(Count<R>{}, r, 1) for rows [r, r + R); the rows left over
// one at a time, group(Count<1>{}, r, 1).
template <int R, class Group>
[[gnu::always_inline]] inline void for_row_groups(int64_t r0, int64_t r1, Group&& group) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) group(Count<R>{}, r, int64_t{1});
  for (; r < r1; ++r) group(Count<1>{}, r, int64_t{1});
}

// gemm_nn's streaming path for TB tokens: Y[t, c] = Σ_r X[t, r] · W[r, c] for t < TB, c in [c0, c1), one column
// tile of at most `tile` outputs at a time. The tile accumulates in scratch at a set-spreading stride (Y's rows may
// be 4 KiB multiples apart) while add_rows(Wt, acc, ld, n) streams all rows of Wt (the tile's n columns of W)
// into it: acc[t, c] += Σ_r X[t, r] · Wt[r, c] for c < n, acc's row stride ld.
template <class Isa, DType D, int TB, class AddRows>
[[gnu::always_inline]] inline void nn_column_tiles(const MatRef& W, float* Y, int64_t ldy, int64_t c0, int64_t c1,
                                                   int64_t tile, AddRows&& add_rows) {
  const int64_t ld = spread_stride(tile);
  float* acc = scratch<Isa>(kOutTile, size_t(TB * ld));
  for (int64_t cb = c0; cb < c1; cb += tile) {
    const int64_t n = std::min(c1, cb + tile) - cb;
    std::memset(acc, 0, size_t(TB * ld) * sizeof(float));
    const MatRef Wt{W.row_ptr(0) + size_t(cb) * dtype_size(D), D, W.rows, n, W.row_stride, W.small_pages};
    add_rows(Wt, acc, ld, n);
    copy_rows(acc, ld, TB, 0, n, Y + cb, ldy);
  }
}

// Bytes ahead of each row stream of nn_column_tiles to prefetch, for about in_row bytes requested per stream.
// Along the row when the tile holds whole rows of a dense matrix: that runs on into the stream's next row, which
// is read next. Otherwise the same columns of the stream's next rows, enough of them for in_row (along a partial
// segment, the start of every segment would go unrequested: on AVX-512 3 tokens and more measured up to 20%
// slower).
template <DType D>
int64_t nn_prefetch_ahead(const MatRef& W, int64_t tile, int64_t c0, int64_t c1, int64_t in_row) {
  const int64_t size = int64_t(dtype_size(D));
  const int64_t seg = std::min(tile, c1 - c0) * size;
  const bool whole_rows = seg == W.cols * size && W.row_stride == W.cols;
  return whole_rows ? in_row : (in_row + seg - 1) / seg * W.row_stride * size;
}

// ---- block-quantized weights (ggml's Q8_0 … Q6_K and MXFP4, core/quant.h) ---------------------------------

// ggml's block-quantized types (dtype_is_quantized), as a constant expression.
template <DType D>
constexpr bool kBlockQuantized = D >= DType::Q8_0;

// Compile-time loop: fn(Count<0>{}), …, fn(Count<N - 1>{}) (the pieces of a quantized block, whose offsets
// and shifts are constants).
template <int N, class Fn>
[[gnu::always_inline]] inline void for_pieces(Fn&& fn) {
  [&]<int... S>(std::integer_sequence<int, S...>) MOEP_LOOP_BODY { (fn(Count<S>{}), ...); }(std::make_integer_sequence<int, N>{});
}

// ---- packed path (many tokens) --------------------------------------------------------------------------

// Isa::micro<m> for the m = T mod kMicroTokens tokens left over, m in [1, M].
template <class Isa, int M>
void micro_tail(int m, const float* P, int64_t kc, const float* X, int64_t ldx, float* Y, int64_t ldy, bool accumulate,
                const typename Isa::Lanes (&valid)[Isa::kMicroVectors]) {
  if constexpr (M > 0) {
    if (m == M) {
      Isa::template micro<M>(P, kc, X, ldx, Y, ldy, accumulate, valid);
    } else {
      micro_tail<Isa, M - 1>(m, P, kc, X, ldx, Y, ldy, accumulate, valid);
    }
  }
}

// Y[t, j] = Σ_{k<K} X[t, k] · B[k, j] for t < T, j in [j0, j1), where pack(P, jb, je, k0, kc) supplies blocks of B
// as panels (Isa::pack_nt / pack_nn).
template <class Isa, class Pack>
void packed_gemm(int64_t T, int64_t K, int64_t j0, int64_t j1, const float* X, int64_t ldx, float* Y, int64_t ldy,
                 Pack pack) {
  constexpr int kL = Isa::kLanes;
  constexpr int kNV = Isa::kMicroVectors;
  constexpr int kM = Isa::kMicroTokens;
  constexpr int64_t kNR = kNV * kL;
  constexpr int64_t kKC = Isa::kPanelDepth;
  constexpr int64_t kNC = Isa::kPanelBlock;
  float* buf = scratch<Isa>(kPackedW, size_t(kNC / kNR) * kKC * kNR);
  for (int64_t jb0 = j0; jb0 < j1; jb0 += kNC) {
    const int64_t je0 = std::min(j1, jb0 + kNC);
    const int n_panels = int((je0 - jb0 + kNR - 1) / kNR);
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      const bool acc = k0 > 0;
      for (int p = 0; p < n_panels; ++p)
        pack(buf + p * kKC * kNR, jb0 + p * kNR, std::min(je0, jb0 + (p + 1) * kNR), k0, kc);
      // Each panel stays in L1 while every token passes over it. (Staging the activations here at a
      // set-spreading stride measured slower on AVX-512: the copy is repeated for every kNC block.)
      for (int p = 0; p < n_panels; ++p) {
        const int64_t jb = jb0 + p * kNR;
        typename Isa::Lanes valid[kNV];
        MOEP_UNROLL
        for (int v = 0; v < kNV; ++v) valid[v] = Isa::valid_lanes(std::clamp<int64_t>(je0 - jb - v * kL, 0, kL));
        const float* P = buf + p * kKC * kNR;
        const float* x = X + k0;
        float* y = Y + jb;
        int64_t t = 0;
        for (; t + kM <= T; t += kM) Isa::template micro<kM>(P, kc, x + t * ldx, ldx, y + t * ldy, ldy, acc, valid);
        if (t < T) micro_tail<Isa, kM - 1>(int(T - t), P, kc, x + t * ldx, ldx, y + t * ldy, ldy, acc, valid);
      }
    }
  }
}

// ---- entry points ---------------------------------------------------------------------------------------

// fn(std::integral_constant<DType, dtype>{}): the weights' dtype as a template argument. Block-quantized dtypes
// only where kQuantized (gemm_nt and to_f32 of a table that reads them).
template <bool kQuantized = false, class Fn>
[[gnu::always_inline]] inline void with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(std::integral_constant<DType, DType::F32>{}); return;
    case DType::BF16: fn(std::integral_constant<DType, DType::BF16>{}); return;
    case DType::F16: fn(std::integral_constant<DType, DType::F16>{}); return;
    default: break;
  }
  if constexpr (kQuantized) {
    switch (dtype) {
      case DType::Q8_0: fn(std::integral_constant<DType, DType::Q8_0>{}); return;
      case DType::Q4_0: fn(std::integral_constant<DType, DType::Q4_0>{}); return;
      case DType::Q4_K: fn(std::integral_constant<DType, DType::Q4_K>{}); return;
      case DType::Q5_K: fn(std::integral_constant<DType, DType::Q5_K>{}); return;
      case DType::Q6_K: fn(std::integral_constant<DType, DType::Q6_K>{}); return;
      case DType::MXFP4: fn(std::integral_constant<DType, DType::MXFP4>{}); return;
      default: break;
    }
  }
  MOEP_ASSERT(false, "these kernels were given block-quantized weights they do not read (see kernels_for)");
}

// kernels.h's GemmNT.
template <class Isa>
void gemm_nt(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
             int64_t r1) {
  if (T <= 0 || r0 >= r1) return;
  thread_scratch<Isa>();
  with_dtype<Isa::kQuantized>(W.dtype, [&](auto dtype) MOEP_LOOP_BODY {
    constexpr DType D = dtype();
    int64_t pack_min = Isa::kPackMinTokensNt;
    if constexpr (kBlockQuantized<D>) {
      static_assert(Isa::kPanelDepth % 256 == 0, "packed panels of quantized weights start at block boundaries");
      pack_min = Isa::pack_min_tokens_quant(D);
    }
    if (T >= pack_min && W.cols > 0) {
      packed_gemm<Isa>(T, W.cols, r0, r1, X, ldx, Y, ldy, [&](float* P, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
        Isa::template pack_nt<D>(P, W, jb, je, k0, kc);
      });
      return;
    }
    Isa::template nt_stream<D>(W, X, ldx, T, Y, ldy, r0, r1);
  });
}

// kernels.h's GemmNN.
template <class Isa>
void gemm_nn(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t c0,
             int64_t c1) {
  if (T <= 0 || c0 >= c1) return;
  thread_scratch<Isa>();
  with_dtype(W.dtype, [&](auto dtype) MOEP_LOOP_BODY {
    constexpr DType D = dtype();
    if (T >= Isa::kPackMinTokensNn && W.rows > 0) {
      packed_gemm<Isa>(T, W.rows, c0, c1, X, ldx, Y, ldy, [&](float* P, int64_t jb, int64_t je, int64_t k0, int64_t kc) {
        Isa::template pack_nn<D>(P, W, jb, je, k0, kc);
      });
      return;
    }
    for_token_blocks<Isa::kNnStreamMaxTokens>(T, [&](auto tokens, int64_t t0) MOEP_LOOP_BODY {
      Isa::template nn_stream<D, tokens()>(W, X + t0 * ldx, ldx, Y + t0 * ldy, ldy, c0, c1);
    });
  });
}

// kernels.h's ToF32.
template <class Isa>
void to_f32(const void* src, DType dtype, float* dst, int64_t n) {
  with_dtype<Isa::kQuantized>(dtype, [&](auto d) MOEP_LOOP_BODY { Isa::template convert<d()>(src, dst, n); });
}

}  // namespace
}  // namespace moep::kernels
