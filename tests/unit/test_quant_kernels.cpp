// The fast kernel tables on ggml's block-quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, MXFP4) against the scalar
// reference, on fresh random weights quantized by quantize_row and random activations: gemm_nt over the
// streaming (few tokens) and packed (many tokens) paths, sub-ranges of rows, padded strides; to_f32; the
// threaded ops::linear; and the choice of table (kernels_for).
//
// The fast tables decode weights to exactly dequantize_row's f32 values and multiply in f32, so the only
// difference from the reference is the order of the additions: |got − want| ≤ k·eps·Σ|w·x| with
// k = 2·sqrt(n) + 2 (as in test_kernels.cpp). Seeds are fixed per case; MOEP_TEST_SEED=<n> shifts them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/quant.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"

namespace moep {
namespace {

using kernels::KernelTable;

constexpr float kEps = std::numeric_limits<float>::epsilon();
constexpr uint32_t kPoisonBits = 0x7fc0dead;  // a NaN no kernel produces
constexpr DType kQuantTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::MXFP4};

uint32_t seed_for(uint32_t case_id) {
  static const uint32_t base = [] {
    const char* s = std::getenv("MOEP_TEST_SEED");
    return s ? uint32_t(std::strtoul(s, nullptr, 10)) : 0u;
  }();
  return base * 1000003u + case_id;
}

float poison() {
  float f;
  std::memcpy(&f, &kPoisonBits, 4);
  return f;
}
bool is_poison(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u == kPoisonBits;
}

// The tables that read quantized weights, the scalar reference last.
std::vector<const KernelTable*> quantized_tables() {
  const KernelTable* t[8];
  const int n = kernels::available_kernel_tables(t, 8);
  std::vector<const KernelTable*> out;
  for (int i = 0; i < n; ++i)
    if (t[i]->quantized) out.push_back(t[i]);
  return out;
}

// Weights [rows, cols] of a quantized dtype, row_stride = cols + pad_blocks blocks (the padding random bytes).
// Each row is quantized by quantize_row from values of a random magnitude (2^-6 .. 2^6 per row) with an offset
// per 32 weights, so that block scales, the K types' mins and their 6-bit sub-block scales all vary. `values`
// holds the dequantized weights ([rows, cols]), the function the kernels must compute with.
struct QuantWeights {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  MatRef mat;

  QuantWeights(DType dtype, int64_t rows, int64_t cols, int64_t pad_blocks, uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> uni(-1.f, 1.f);
    const int64_t stride = cols + pad_blocks * dtype_block_weights(dtype);
    const size_t row_bytes = dtype_row_bytes(dtype, stride);
    bytes.resize(size_t(rows) * row_bytes + 64);
    for (auto& b : bytes) b = uint8_t(gen());
    values.resize(size_t(rows * cols));
    std::vector<float> src(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      const float magnitude = std::ldexp(1.f, int(gen() % 13) - 6);
      float offset = 0.f;
      for (int64_t c = 0; c < cols; ++c) {
        if (c % 32 == 0) offset = 0.5f * uni(gen);
        src[size_t(c)] = magnitude * (uni(gen) + offset);
      }
      uint8_t* row = bytes.data() + size_t(r) * row_bytes;
      quantize_row(ggml_type_of(dtype), src.data(), row, cols);
      dequantize_row(ggml_type_of(dtype), row, values.data() + r * cols, cols);
    }
    mat = MatRef{bytes.data(), dtype, rows, cols, stride};
  }
};

// Activations [T, ld] uniform in [-2, 2), NaN in the padding columns [n, ld).
std::vector<float> random_activations(int64_t T, int64_t n, int64_t ld, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  std::vector<float> x(size_t(T * ld));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < ld; ++i) x[size_t(t * ld + i)] = i < n ? dist(gen) : std::numeric_limits<float>::quiet_NaN();
  return x;
}

// Σ_c |W[r, c]·X[t, c]| at [t·ldy + r] for r in [r0, r1): the scale of the summation error of each output.
std::vector<double> abs_sums(const QuantWeights& w, const std::vector<float>& x, int64_t ldx, int64_t T, int64_t ldy,
                             int64_t r0, int64_t r1) {
  const int64_t cols = w.mat.cols;
  std::vector<double> a(size_t(T * ldy), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += std::fabs(double(w.values[size_t(r * cols + c)]) * x[size_t(t * ldx + c)]);
      a[size_t(t * ldy + r)] = s;
    }
  return a;
}

// got against want (both [T, ldy]) for rows [r0, r1): |got − want| ≤ (2·sqrt(n) + 2)·eps·Σ|terms|; every other
// position of got must hold the poison. Returns the number of failures (the first few reported).
int check_outputs(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& abs_sum,
                  int64_t T, int64_t ldy, int64_t r0, int64_t r1, int64_t n_terms) {
  const double k = 2.0 * std::sqrt(double(n_terms)) + 2.0;
  int failures = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < ldy; ++j) {
      const size_t i = size_t(t * ldy + j);
      if (j < r0 || j >= r1) {
        if (!is_poison(got[i]) && ++failures <= 5)
          ADD_FAILURE() << "output [" << t << ", " << j << "] outside [" << r0 << ", " << r1 << ") was written";
        continue;
      }
      const double tol = k * double(kEps) * abs_sum[i];
      if (!(std::fabs(double(got[i]) - double(want[i])) <= tol) && ++failures <= 5)
        ADD_FAILURE() << "output [" << t << ", " << j << "]: got " << got[i] << ", want " << want[i] << " (tolerance "
                      << tol << ")";
    }
  return failures;
}

TEST(QuantKernels, GemmNTMatchesReference) {
  const std::vector<const KernelTable*> tables = quantized_tables();
  uint32_t id = 0;
  for (const KernelTable* k : tables) {
    if (k == &kernels::reference_kernels()) continue;
    for (DType dt : kQuantTypes) {
      std::vector<int64_t> col_cases = {256, 512, 4096};
      if (dtype_block_weights(dt) == 32) col_cases.insert(col_cases.begin(), {32, 96});
      for (int64_t cols : col_cases) {
        for (int64_t T : {1, 2, 3, 5, 8, 16, 33, 64}) {
          // 70 rows, rows [3, 67): a partial packed panel, row-stream remainders, untouched rows on both sides.
          // Every other case pads the rows by a block and pads X and Y.
          const int64_t rows = 70, r0 = 3, r1 = 67;
          const bool padded = (++id % 2) == 0;
          SCOPED_TRACE(testing::Message() << k->name << " " << dtype_name(dt) << " cols=" << cols << " T=" << T
                                          << (padded ? " padded" : ""));
          const uint32_t seed = seed_for(id);
          const QuantWeights w(dt, rows, cols, padded ? 1 : 0, seed);
          const int64_t ldx = cols + (padded ? 5 : 0), ldy = rows + (padded ? 3 : 0);
          const std::vector<float> x = random_activations(T, cols, ldx, seed ^ 0x5a5a5a5au);
          std::vector<float> got(size_t(T * ldy), poison()), want(got.size(), poison());
          kernels::reference_kernels().gemm_nt(w.mat, x.data(), ldx, T, want.data(), ldy, r0, r1);
          k->gemm_nt(w.mat, x.data(), ldx, T, got.data(), ldy, r0, r1);
          ASSERT_EQ(check_outputs(got, want, abs_sums(w, x, ldx, T, ldy, r0, r1), T, ldy, r0, r1, cols), 0);
        }
      }
    }
  }
}

TEST(QuantKernels, ToF32IsDequantizeRowBitForBit) {
  uint32_t id = 1000;
  for (const KernelTable* k : quantized_tables()) {
    for (DType dt : kQuantTypes) {
      for (int64_t blocks : {1, 3, 17}) {
        SCOPED_TRACE(testing::Message() << k->name << " " << dtype_name(dt) << " blocks=" << blocks);
        const int64_t n = blocks * dtype_block_weights(dt);
        const QuantWeights w(dt, 1, n, 0, seed_for(++id));
        std::vector<float> got(size_t(n) + 1, poison());
        k->to_f32(w.mat.data, dt, got.data(), n);
        EXPECT_EQ(std::memcmp(got.data(), w.values.data(), size_t(n) * 4), 0);
        EXPECT_TRUE(is_poison(got[size_t(n)])) << "wrote past n";
      }
    }
  }
}

TEST(QuantKernels, LinearOnThreadPoolMatchesReference) {
  struct Shape {
    int64_t rows, cols, T;
  };
  // Several ops tasks each (64 KiB of weights per task at least), with a partial last one.
  const Shape shapes[] = {{1000, 512, 1}, {613, 1024, 4}, {300, 2048, 40}};
  uint32_t id = 2000;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (DType dt : kQuantTypes) {
      for (const Shape& s : shapes) {
        SCOPED_TRACE(testing::Message() << "threads=" << threads << " " << dtype_name(dt) << " rows=" << s.rows
                                        << " cols=" << s.cols << " T=" << s.T);
        const uint32_t seed = seed_for(++id);
        const QuantWeights w(dt, s.rows, s.cols, 0, seed);
        const std::vector<float> x = random_activations(s.T, s.cols, s.cols, seed + 1);
        std::vector<float> got(size_t(s.T * s.rows), poison()), want(got.size(), poison());
        kernels::reference_kernels().gemm_nt(w.mat, x.data(), s.cols, s.T, want.data(), s.rows, 0, s.rows);
        ops::linear(pool, w.mat, x.data(), s.T, got.data());
        ASSERT_EQ(check_outputs(got, want, abs_sums(w, x, s.cols, s.T, s.rows, 0, s.rows), s.T, s.rows, 0, s.rows, s.cols),
                  0);
      }
    }
  }
}

TEST(QuantKernels, KernelsForPicksTheFastestQuantizedTable) {
  if (std::getenv("MOEP_KERNELS")) GTEST_SKIP() << "MOEP_KERNELS forces a table";
  const std::vector<const KernelTable*> tables = quantized_tables();
  ASSERT_FALSE(tables.empty());
  ASSERT_EQ(tables.back(), &kernels::reference_kernels());
  for (DType dt : kQuantTypes) EXPECT_EQ(&kernels::kernels_for(dt), tables.front()) << dtype_name(dt);
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    EXPECT_NE(&kernels::kernels_for(DType::Q4_K), &kernels::reference_kernels())
        << "this CPU runs a fast table, but quantized weights went to the scalar reference";
  }
#endif
  // Element dtypes keep the fastest table whatever it reads.
  EXPECT_EQ(&kernels::kernels_for(DType::BF16), &kernels::best_kernels());
}

}  // namespace
}  // namespace moep
