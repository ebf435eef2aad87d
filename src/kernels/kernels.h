// Numeric kernels used by the forward pass. Weights come in the checkpoint's dtype (f32, bf16, f16) and are
// converted as they are read; activations and accumulation are f32.
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
  const char* name;  // "scalar", "avx2", "avx512", "neon"
  GemmNT gemm_nt;
  GemmNN gemm_nn;
  ToF32 to_f32;
};

// The scalar reference versions.
const KernelTable& reference_kernels();
// The fastest table this CPU supports (chosen once). MOEP_KERNELS=scalar|avx2|avx512|neon forces one.
const KernelTable& best_kernels();
// All tables this CPU can run (for tests and benchmarks).
int available_kernel_tables(const KernelTable** out, int max);

}  // namespace moep::kernels
