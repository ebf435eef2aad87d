// AVX2/FMA throughput loop for measure_peak_gflops (compiled with -mavx2 -mfma; called only when supported).
#include <immintrin.h>

namespace moep::kernels {

double fma_loop_avx2(long iters) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
  // 12 independent chains, kept in registers (without the unrolling, -O2 keeps the array in memory and the
  // loop measures store forwarding instead of the FMA units).
  __m256 acc[12];
  #pragma GCC unroll 12
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, a);
  __m256 s = acc[0];
#pragma GCC unroll 12
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return double(iters) * 12 * 8 * 2;
}

}  // namespace moep::kernels
