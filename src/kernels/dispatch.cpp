#include <atomic>
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
const KernelTable* avx512_bf16dot_kernels();
#else
constexpr const KernelTable* (*avx512_kernels)() = nullptr;
constexpr const KernelTable* (*avx512_bf16dot_kernels)() = nullptr;
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

namespace {

// f(), or nullptr for a table this build lacks.
const KernelTable* get(const KernelTable* (*f)()) { return f ? f() : nullptr; }

// The bf16-dot table while set_bf16_dot(true) is in effect, else nullptr.
std::atomic<const KernelTable*> g_bf16_dot{nullptr};

const KernelTable& chosen_kernels() {
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

}  // namespace

const KernelTable& best_kernels() {
  if (const KernelTable* t = g_bf16_dot.load(std::memory_order_relaxed)) return *t;
  return chosen_kernels();
}

const KernelTable& kernels_for(DType w) {
  const KernelTable& best = best_kernels();
  if (!dtype_is_quantized(w) || best.quantized) return best;
  static const KernelTable* quantized = [] {
    const KernelTable* tables[8];
    const int n = available_kernel_tables(tables, 8);
    for (int i = 0; i < n; ++i)
      if (tables[i]->quantized) return tables[i];
    return &reference_kernels();
  }();
  return *quantized;
}

const KernelTable* bf16_dot_kernels() { return get(avx512_bf16dot_kernels); }

void set_bf16_dot(bool on) {
  if (!on) {
    g_bf16_dot.store(nullptr, std::memory_order_relaxed);
    return;
  }
  const KernelTable& base = chosen_kernels();
  const KernelTable* avx512 = get(avx512_kernels);
  if (&base != avx512) {
    if (avx512 && std::getenv("MOEP_KERNELS"))
      fail("bf16 dot products (--bf16-dot) need the avx512 kernels, but MOEP_KERNELS=", std::getenv("MOEP_KERNELS"),
           " selects the '", base.name, "' kernels");
    fail("bf16 dot products (--bf16-dot) need the avx512 kernels and AVX512_BF16; this CPU or build has only the '",
         base.name, "' kernels");
  }
  const KernelTable* t = bf16_dot_kernels();
  if (!t) fail("bf16 dot products (--bf16-dot) need AVX512_BF16 (vdpbf16ps), which this CPU lacks");
  g_bf16_dot.store(t, std::memory_order_relaxed);
}

bool bf16_dot() { return g_bf16_dot.load(std::memory_order_relaxed) != nullptr; }

void warm_thread_scratch() {
  const KernelTable& k = best_kernels();
  alignas(64) float w[16 * 16] = {}, x[16] = {}, y[16] = {};
  const MatRef W{w, DType::F32, 16, 16, 16};
  k.gemm_nt(W, x, 16, 1, y, 16, 0, 16);
  k.gemm_nn(W, x, 16, 1, y, 16, 0, 16);
}

}  // namespace moep::kernels
