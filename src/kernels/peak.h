// The machine's arithmetic ceiling for f32 fused multiply-adds, measured with a register-resident loop on every
// thread of a pool (the "compute" roofline that prefill is compared with).
#pragma once

#include "core/thread_pool.h"

namespace moep::kernels {

// Returns GFLOP/s (an FMA counts 2 FLOPs) with the widest vector unit this CPU has (AVX-512, AVX2/FMA, NEON or
// scalar), best of a few repetitions.
double measure_peak_gflops(ThreadPool& pool);

}  // namespace moep::kernels
