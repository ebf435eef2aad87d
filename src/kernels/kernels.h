// Numeric kernels used by the forward pass. Weights come in the checkpoint's dtype (f32, bf16, f16, or one of
// ggml's block-quantized types) and are converted as they are read; activations and accumulation are f32.
//
// Every kernel has a scalar reference (kernels/reference.cpp) and may have fast versions (AVX-512, AVX2,
// NEON) chosen once at start-up from what the CPU supports (see kernels/dispatch.cpp). Fast versions must
// compute the same function: tests compare them with the reference on fresh random inputs.
//
// The kernels here are single-threaded over the range they are given; ops.h splits work over a ThreadPool.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace moep::kernels {

// Y[t, r] = Σ_c W[r, c] · X[t, c]  for t in [0, T), r in [r0, r1).
// W is [out, in] (the layout of torch.nn.Linear.weight). X is [T, ldx] f32, Y is [T, ldy] f32.
// Y is overwritten (not accumulated) in the given rows.
using GemmNT = void (*)(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy,
                        int64_t r0, int64_t r1);

// Y[t, c] = Σ_r X[t, r] · W[r, c]  for t in [0, T), c in [c0, c1).
// W is [in, out] (DBRX's expert w2). X is [T, ldx] f32, Y is [T, ldy] f32, overwritten in the given columns.
using GemmNN = void (*)(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy,
                        int64_t c0, int64_t c1);

// dst[i] = float(src[i]) for i in [0, n).
using ToF32 = void (*)(const void* src, DType dtype, float* dst, int64_t n);

struct KernelTable {
  const char* name;  // "scalar", "avx2", "avx512", "neon"; "avx512+bf16dot" (see set_bf16_dot)
  GemmNT gemm_nt;
  GemmNN gemm_nn;
  ToF32 to_f32;
  // gemm_nt and to_f32 also read ggml's block-quantized weights (DType::Q8_0 … Q6_K, MXFP4: whole blocks; gemm_nn
  // never does). Tables without it leave such weights to kernels_for's choice.
  bool quantized = false;
};

// Runs a tiny product through best_kernels() on the calling thread, so that the thread's kernel scratch
// (kernels/scratch.h) exists before the first real step. Call it on every thread of a pool
// (ThreadPool::on_every_thread) at start-up.
void warm_thread_scratch();

// The scalar reference versions.
const KernelTable& reference_kernels();
// The fastest table this CPU supports (chosen once). MOEP_KERNELS=scalar|avx2|avx512|neon forces one.
// While set_bf16_dot(true) is in effect: the "avx512+bf16dot" table instead.
const KernelTable& best_kernels();
// The table for weights of type `w`: best_kernels(), unless `w` is block-quantized and that table cannot read
// it (then the fastest available table that can; the scalar reference always can).
const KernelTable& kernels_for(DType w);
// All tables this CPU can run (for tests and benchmarks). The bf16-dot table is not among them (it computes a
// different function); see bf16_dot_kernels().
int available_kernel_tables(const KernelTable** out, int max);

// Opt-in reduced precision for prefill (process-wide, off by default). When on, best_kernels() is the
// "avx512+bf16dot" table: gemm_nt / gemm_nn on bf16 weights with at least kBf16DotAlwaysFromT (2) tokens round
// X to bf16 (round to nearest even; f32 denormals become zero) and multiply with bf16 dot products (vdpbf16ps:
// exact products, f32 accumulation), in the packed (many tokens) and the streaming (few tokens) paths alike. A
// call rounds all of X or none of it. One token (decode), f32, f16 and quantized weights are computed as by the
// plain avx512 table, bit for bit. Results are not those of the reference: relative to the exact products the error
// is that of rounding X (2^-9 per element), not of f32 summation.
// set_bf16_dot(true) throws moep::Error (naming why) unless best_kernels() would be the avx512 table and the CPU
// has AVX512_BF16; set_bf16_dot(false) always succeeds. Set it before running anything on other threads.
constexpr int64_t kBf16DotAlwaysFromT = 2;
void set_bf16_dot(bool on);
bool bf16_dot();
// The bf16-dot table, or nullptr where the build or the CPU cannot run it (for tests and benchmarks).
const KernelTable* bf16_dot_kernels();

}  // namespace moep::kernels
