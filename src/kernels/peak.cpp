#include "kernels/peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>

namespace moep::kernels {

// Defined in peak_avx512.cpp / peak_avx2.cpp when built for x86 (CMake defines MOEP_HAVE_PEAK_<ISA>). Each
// runs `iters` rounds of independent FMA chains and returns the FLOPs done, or 0 if the CPU lacks the
// instructions.
#if MOEP_HAVE_PEAK_AVX512
double fma_loop_avx512(long iters);
#endif
#if MOEP_HAVE_PEAK_AVX2
double fma_loop_avx2(long iters);
#endif

namespace {

// Portable fallback: 8 independent chains of 8-wide vectors through GCC's vector extension.
double fma_loop_generic(long iters) {
  typedef float v8 __attribute__((vector_size(32)));
  v8 acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = v8{} + float(i) * 1e-3f;
  const v8 m = v8{} + 0.999999f, a = v8{} + 1e-7f;
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * m + a;
  volatile float sink = 0;
  for (int i = 0; i < 8; ++i) sink = sink + acc[i][0];
  (void)sink;
  return double(iters) * 8 * 8 * 2;
}

}  // namespace

double measure_peak_gflops(ThreadPool& pool) {
  double (*loop)(long) = fma_loop_generic;
#if MOEP_HAVE_PEAK_AVX2
  if (fma_loop_avx2(1) > 0) loop = fma_loop_avx2;
#endif
#if MOEP_HAVE_PEAK_AVX512
  if (fma_loop_avx512(1) > 0) loop = fma_loop_avx512;
#endif
  const long iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::atomic<int64_t> flops_x1000{0};
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(pool.size(), [&](int64_t) { flops_x1000 += int64_t(loop(iters) / 1000.0); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(flops_x1000.load()) * 1000.0 / s / 1e9);
  }
  return best;
}

}  // namespace moep::kernels
