#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "kernels/kernels.h"

namespace moep::kernels {

// Fast tables, defined in the ISA-specific files (gemm_avx512.cpp, gemm_avx2.cpp, gemm_neon.cpp) when the
// build compiles them in (CMake then defines MOEP_HAVE_GEMM_<ISA>); each returns nullptr when the CPU lacks
// its instructions.
#if MOEP_HAVE_GEMM_AVX512
const KernelTable* avx512_kernels();
#else
constexpr const KernelTable* (*avx512_kernels)() = nullptr;
#endif
#if MOEP_HAVE_GEMM_AVX2
const KernelTable* avx2_kernels();
#else
constexpr const KernelTable* (*avx2_kernels)() = nullptr;
#endif
#if MOEP_HAVE_GEMM_NEON
const KernelTable* neon_kernels();
#else
constexpr const KernelTable* (*neon_kernels)() = nullptr;
#endif

int available_kernel_tables(const KernelTable** out, int max) {
  int n = 0;
  auto add = [&](const KernelTable* (*get)()) {
    if (!get) return;
    const KernelTable* t = get();
    if (t && n < max) out[n++] = t;
  };
  add(avx512_kernels);
  add(avx2_kernels);
  add(neon_kernels);
  if (n < max) out[n++] = &reference_kernels();
  return n;
}

const KernelTable& best_kernels() {
  static const KernelTable* chosen = [] {
    const KernelTable* tables[8];
    const int n = available_kernel_tables(tables, 8);
    if (const char* want = std::getenv("MOEP_KERNELS")) {
      for (int i = 0; i < n; ++i)
        if (std::strcmp(tables[i]->name, want) == 0) return tables[i];
      fail("MOEP_KERNELS=", want, ": this CPU or build has no such kernel set");
    }
    return tables[0];
  }();
  return *chosen;
}

}  // namespace moep::kernels
