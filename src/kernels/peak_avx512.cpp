// AVX-512 FMA throughput loop for measure_peak_gflops (compiled with -mavx512f; called only when supported).
#include <immintrin.h>

namespace moep::kernels {

double fma_loop_avx512(long iters) {
  if (!__builtin_cpu_supports("avx512f")) return 0;
  // 24 independent chains, kept in registers (without the unrolling, -O2 keeps the array in memory and the
  // loop measures store forwarding instead of the FMA units).
  __m512 acc[24];
  #pragma GCC unroll 24
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, a);
  __m512 s = acc[0];
#pragma GCC unroll 24
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  // Stored and summed here: GCC 12's _mm512_reduce_add_ps trips -Wmaybe-uninitialized in its own header.
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  volatile float sink = out[0] + out[15];
  (void)sink;
  return double(iters) * 24 * 16 * 2;
}

}  // namespace moep::kernels
