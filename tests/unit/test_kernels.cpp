// Every kernel table this CPU can run, and the threaded ops built on them, against the scalar reference on
// fresh random data: all weight dtypes, awkward sizes (tails of every vector and register block, sub-ranges,
// padded strides), and outputs outside the requested range must stay untouched.
//
// Data come from seeded generators (one seed per case, so a failure reproduces); MOEP_TEST_SEED=<n> shifts
// every seed to try other data. Padding of W, X and Y holds NaN: a kernel that reads past a row's end or
// writes outside its range is caught.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"

namespace moep {
namespace {

using kernels::KernelTable;

constexpr float kEps = std::numeric_limits<float>::epsilon();
// Bit pattern of the poison written to every output position before a call: a NaN no kernel produces.
constexpr uint32_t kPoisonBits = 0x7fc0dead;

uint32_t seed_for(uint32_t case_id) {
  static const uint32_t base = [] {
    const char* s = std::getenv("MOEP_TEST_SEED");
    return s ? uint32_t(std::strtoul(s, nullptr, 10)) : 0u;
  }();
  return base * 1000003u + case_id;
}

std::vector<const KernelTable*> tables() {
  const KernelTable* t[8];
  const int n = kernels::available_kernel_tables(t, 8);
  return std::vector<const KernelTable*>(t, t + n);
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

// A weight matrix [rows, cols] with row_stride ≥ cols; values uniform in [-1, 1) rounded to the dtype, the
// padding after each row NaN. `values` holds the exact f32 value of every element ([rows, cols]).
struct RandomWeights {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  MatRef mat;

  RandomWeights(DType dtype, int64_t rows, int64_t cols, int64_t stride, uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    const size_t es = dtype_size(dtype);
    bytes.resize(size_t(rows * stride) * es + 64);
    values.resize(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < stride; ++c) {
        const bool pad = c >= cols;
        const float f = pad ? std::numeric_limits<float>::quiet_NaN() : dist(gen);
        uint8_t* p = bytes.data() + size_t(r * stride + c) * es;
        float stored = f;
        if (dtype == DType::F32) {
          std::memcpy(p, &f, 4);
        } else if (dtype == DType::BF16) {
          const uint16_t h = f32_to_bf16(f);
          std::memcpy(p, &h, 2);
          stored = bf16_to_f32(h);
        } else {
          const uint16_t h = f32_to_f16(f);
          std::memcpy(p, &h, 2);
          stored = f16_to_f32(h);
        }
        if (!pad) values[size_t(r * cols + c)] = stored;
      }
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

// Checks `got` against `want` (both [T, ldy]) for outputs j in [j0, j1): |got − want| ≤ k·Σ|terms|·eps with
// k = 2·sqrt(n_terms) + 2, where abs_sum[t·ldy + j] = Σ|w·x| over the n_terms products of that output (two f32
// summations in different orders each err by a few eps·Σ|terms| times a random walk over n_terms). Every other
// position of `got` must still hold the poison. Returns the number of failures (and reports the first few).
int check_outputs(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& abs_sum,
                  int64_t T, int64_t ldy, int64_t j0, int64_t j1, int64_t n_terms, bool report = true) {
  const double k = 2.0 * std::sqrt(double(n_terms)) + 2.0;
  int failures = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < ldy; ++j) {
      const size_t i = size_t(t * ldy + j);
      if (j < j0 || j >= j1) {
        if (!is_poison(got[i])) {
          if (++failures <= 5 && report) ADD_FAILURE() << "output [" << t << ", " << j << "] outside [" << j0 << ", " << j1
                                              << ") was written: " << got[i];
        }
        continue;
      }
      const double tol = k * abs_sum[i] * kEps;
      const double err = std::fabs(double(got[i]) - double(want[i]));
      if (!(err <= tol)) {
        if (++failures <= 5 && report) ADD_FAILURE() << "output [" << t << ", " << j << "]: got " << got[i] << ", reference "
                                            << want[i] << ", |diff| " << err << " > tol " << tol;
      }
    }
  }
  return failures;
}

struct NTCase {
  int64_t rows, cols, pad, T, r0, r1;
};

// gemm_nt on one table, one dtype, one case. Returns failures.
int run_gemm_nt(const KernelTable& k, DType dtype, const NTCase& cs, uint32_t seed) {
  const RandomWeights w(dtype, cs.rows, cs.cols, cs.cols + cs.pad, seed);
  const int64_t ldx = cs.cols + 3, ldy = cs.rows + 2;
  const std::vector<float> x = random_activations(cs.T, cs.cols, ldx, seed ^ 0x5a5a5a5au);
  std::vector<float> got(size_t(cs.T * ldy), poison()), want(got.size(), poison());
  std::vector<double> abs_sum(got.size(), 0.0);
  for (int64_t t = 0; t < cs.T; ++t)
    for (int64_t r = cs.r0; r < cs.r1; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cs.cols; ++c) s += std::fabs(double(w.values[size_t(r * cs.cols + c)]) * x[size_t(t * ldx + c)]);
      abs_sum[size_t(t * ldy + r)] = s;
    }
  kernels::reference_kernels().gemm_nt(w.mat, x.data(), ldx, cs.T, want.data(), ldy, cs.r0, cs.r1);
  k.gemm_nt(w.mat, x.data(), ldx, cs.T, got.data(), ldy, cs.r0, cs.r1);
  return check_outputs(got, want, abs_sum, cs.T, ldy, cs.r0, cs.r1, cs.cols);
}

struct NNCase {
  int64_t rows, cols, pad, T, c0, c1;  // W is [rows = in, cols = out]
};

int run_gemm_nn(const KernelTable& k, DType dtype, const NNCase& cs, uint32_t seed) {
  const RandomWeights w(dtype, cs.rows, cs.cols, cs.cols + cs.pad, seed);
  const int64_t ldx = cs.rows + 5, ldy = cs.cols + 3;
  const std::vector<float> x = random_activations(cs.T, cs.rows, ldx, seed ^ 0xa5a5a5a5u);
  std::vector<float> got(size_t(cs.T * ldy), poison()), want(got.size(), poison());
  std::vector<double> abs_sum(got.size(), 0.0);
  for (int64_t t = 0; t < cs.T; ++t)
    for (int64_t r = 0; r < cs.rows; ++r)
      for (int64_t c = cs.c0; c < cs.c1; ++c)
        abs_sum[size_t(t * ldy + c)] += std::fabs(double(x[size_t(t * ldx + r)]) * w.values[size_t(r * cs.cols + c)]);
  kernels::reference_kernels().gemm_nn(w.mat, x.data(), ldx, cs.T, want.data(), ldy, cs.c0, cs.c1);
  k.gemm_nn(w.mat, x.data(), ldx, cs.T, got.data(), ldy, cs.c0, cs.c1);
  return check_outputs(got, want, abs_sum, cs.T, ldy, cs.c0, cs.c1, cs.rows);
}

const DType kDTypes[] = {DType::F32, DType::BF16, DType::F16};

// Token counts: every streaming register block (1..9), several token blocks, the switches to the packed paths
// (they differ per table and between gemm_nt and gemm_nn: 6..24) and the packed path's token tails.
const int64_t kTokenCounts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 23, 24, 33};

TEST(Kernels, TablesIncludeReferenceLast) {
  const auto t = tables();
  ASSERT_FALSE(t.empty());
  EXPECT_STREQ(t.back()->name, "scalar");
  EXPECT_STREQ(kernels::best_kernels().name, t.front()->name);  // unless MOEP_KERNELS forces another
  for (const auto* k : t) std::printf("[ kernels  ] %s\n", k->name);
}

bool has_table(const char* name) {
  for (const auto* k : tables())
    if (std::strcmp(k->name, name) == 0) return true;
  return false;
}

// The build must link the fast tables in, and the CPU check must hand them out where the CPU can run them.
TEST(Kernels, FastTablesPresentWhereSupported) {
#if defined(MOEP_X86)
  __builtin_cpu_init();
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  EXPECT_EQ(has_table("avx2"), avx2);
  EXPECT_EQ(has_table("avx512"), avx512);
#elif defined(MOEP_ARM)
  EXPECT_TRUE(has_table("neon"));
#else
  GTEST_SKIP() << "no fast kernels for this architecture";
#endif
}

TEST(Kernels, GemmNTMatchesReference) {
  // Shapes: column tails (cols % 16, % 8, % 4 ≠ 0), row tails of every row block, rows past the packed
  // path's output block (192), columns past its reduction block (128), sub-ranges, padded strides.
  const NTCase shapes[] = {
      {1, 1, 0, 0, 0, 1},        {5, 7, 0, 0, 0, 5},     {17, 16, 3, 0, 0, 17},  {23, 33, 0, 0, 2, 21},
      {50, 100, 7, 0, 3, 47},    {9, 257, 1, 0, 0, 9},   {61, 48, 0, 0, 13, 60}, {205, 131, 2, 0, 1, 204},
  };
  uint32_t id = 0;
  for (const auto* k : tables()) {
    for (DType dt : kDTypes) {
      for (NTCase cs : shapes) {
        for (int64_t T : kTokenCounts) {
          if (cs.rows * cs.cols * T > 1500000) continue;  // keeps the scalar reference quick
          cs.T = T;
          SCOPED_TRACE(testing::Message() << k->name << " " << dtype_name(dt) << " rows=" << cs.rows << " cols="
                                          << cs.cols << " stride=" << cs.cols + cs.pad << " T=" << T << " r=["
                                          << cs.r0 << "," << cs.r1 << ")");
          ASSERT_EQ(run_gemm_nt(*k, dt, cs, seed_for(++id)), 0);
        }
      }
    }
  }
}

TEST(Kernels, GemmNNMatchesReference) {
  const NNCase shapes[] = {
      {1, 1, 0, 0, 0, 1},      {7, 5, 0, 0, 0, 5},       {16, 17, 3, 0, 0, 17},   {33, 23, 0, 0, 2, 21},
      {100, 50, 7, 0, 3, 47},  {257, 9, 1, 0, 0, 9},     {48, 61, 0, 0, 13, 60},  {131, 205, 2, 0, 1, 204},
      {20, 1100, 4, 0, 5, 1097},  // more than one output tile of the streaming path
  };
  uint32_t id = 100000;
  for (const auto* k : tables()) {
    for (DType dt : kDTypes) {
      for (NNCase cs : shapes) {
        for (int64_t T : kTokenCounts) {
          if (cs.rows * cs.cols * T > 1500000) continue;
          cs.T = T;
          SCOPED_TRACE(testing::Message() << k->name << " " << dtype_name(dt) << " rows=" << cs.rows << " cols="
                                          << cs.cols << " stride=" << cs.cols + cs.pad << " T=" << T << " c=["
                                          << cs.c0 << "," << cs.c1 << ")");
          ASSERT_EQ(run_gemm_nn(*k, dt, cs, seed_for(++id)), 0);
        }
      }
    }
  }
}

TEST(Kernels, EmptyReductionGivesZeros) {
  // cols = 0 (gemm_nt) or rows = 0 (gemm_nn): the requested outputs are sums of nothing.
  for (const auto* k : tables()) {
    for (DType dt : kDTypes) {
      for (int64_t T : {1, 5, 33}) {
        SCOPED_TRACE(testing::Message() << k->name << " " << dtype_name(dt) << " T=" << T);
        const RandomWeights w_nt(dt, 20, 0, 0, 1);
        std::vector<float> y(size_t(T * 20), poison());
        k->gemm_nt(w_nt.mat, nullptr, 0, T, y.data(), 20, 2, 19);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t r = 0; r < 20; ++r) {
            const float v = y[size_t(t * 20 + r)];
            if (r >= 2 && r < 19) EXPECT_EQ(v, 0.f); else EXPECT_TRUE(is_poison(v));
          }
        const RandomWeights w_nn(dt, 0, 20, 20, 1);
        std::fill(y.begin(), y.end(), poison());
        k->gemm_nn(w_nn.mat, nullptr, 0, T, y.data(), 20, 2, 19);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = 0; c < 20; ++c) {
            const float v = y[size_t(t * 20 + c)];
            if (c >= 2 && c < 19) EXPECT_EQ(v, 0.f); else EXPECT_TRUE(is_poison(v));
          }
      }
    }
  }
}

TEST(Kernels, ToF32MatchesReferenceExhaustively) {
  // Every 16-bit pattern (normals, subnormals, ±0, ±inf, NaNs), at every alignment of the vector tail.
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  const std::vector<float> f32 = [] {
    std::mt19937 gen(seed_for(7));
    std::uniform_real_distribution<float> d(-1e6f, 1e6f);
    std::vector<float> v(4099);
    for (auto& x : v) x = d(gen);
    return v;
  }();
  auto same = [](float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, 4) == 0; };
  for (const auto* k : tables()) {
    for (DType dt : {DType::BF16, DType::F16}) {
      for (int64_t n : {int64_t(65536), int64_t(65535), int64_t(13), int64_t(1)}) {
        std::vector<float> got(size_t(n) + 1, poison());
        std::vector<float> want(static_cast<size_t>(n));
        kernels::reference_kernels().to_f32(all.data(), dt, want.data(), n);
        k->to_f32(all.data(), dt, got.data(), n);
        int bad = 0;
        for (int64_t i = 0; i < n; ++i)
          if (!same(got[size_t(i)], want[size_t(i)]) && ++bad <= 3)
            ADD_FAILURE() << k->name << " " << dtype_name(dt) << " bits " << std::hex << all[size_t(i)] << std::dec
                          << ": got " << got[size_t(i)] << " want " << want[size_t(i)];
        EXPECT_TRUE(is_poison(got[size_t(n)])) << k->name << " wrote past n";
      }
    }
    std::vector<float> got(f32.size() + 1, poison());
    k->to_f32(f32.data(), DType::F32, got.data(), int64_t(f32.size()));
    EXPECT_EQ(std::memcmp(got.data(), f32.data(), f32.size() * 4), 0) << k->name;
    EXPECT_TRUE(is_poison(got.back()));
  }
}

// ---- bf16 dot products (opt-in, set_bf16_dot) ---------------------------------------------------------------

// X rounded to bf16 (round to nearest even), as the bf16-dot table's packed path does.
std::vector<float> round_to_bf16(std::vector<float> x) {
  for (float& v : x)
    if (!std::isnan(v)) v = bf16_to_f32(f32_to_bf16(v));
  return x;
}

// want[t, j] = Σ_k x[t, k]·w[k, j] accumulated in double (ref_nt: w[j, k]); abs[t, j] = Σ|terms|. Outputs in
// [j0, j1) only, the rest of want keeps the poison.
void double_ref(bool nt, const RandomWeights& w, int64_t rows, int64_t cols, const std::vector<float>& x,
                int64_t ldx, int64_t T, int64_t ldy, int64_t j0, int64_t j1, std::vector<float>& want,
                std::vector<double>& abs_sum) {
  const int64_t K = nt ? cols : rows;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = j0; j < j1; ++j) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(x[size_t(t * ldx + k)]) *
                         double(nt ? w.values[size_t(j * cols + k)] : w.values[size_t(k * cols + j)]);
        s += p;
        a += std::fabs(p);
      }
      want[size_t(t * ldy + j)] = float(s);
      abs_sum[size_t(t * ldy + j)] = a;
    }
}

// One gemm_nt (nt) or gemm_nn call of the bf16-dot table on bf16 weights [rows, cols]. From 2 tokens on (the
// streaming bf16-dot paths below the packed thresholds, the packed path above) the outputs must match the
// reference on bf16-rounded X (round-to-nearest-even); with 1 token (decode) they must be bit-identical to the
// plain avx512 table's. The reference accumulates in double; the products of bf16 values are exact in f32, so
// the kernel's only error is f32 accumulation: check_outputs' bound k·eps·Σ|terms|, k = 2·sqrt(n) + 2 (below
// 1e-5·Σ|terms| for every n ≤ 1500 used here). That bound is far below the effect of rounding X (2^-9 per
// element), so a call that did not round (or rounded differently) fails it.
int run_bf16_dot(const KernelTable& k, bool nt, int64_t rows, int64_t cols, int64_t pad, int64_t T, int64_t j0,
                 int64_t j1, uint32_t seed) {
  const RandomWeights w(DType::BF16, rows, cols, cols + pad, seed);
  const int64_t K = nt ? cols : rows, N = nt ? rows : cols;
  const int64_t ldx = K + 3, ldy = N + 2;
  const std::vector<float> x = random_activations(T, K, ldx, seed ^ 0x3c3c3c3cu);
  std::vector<float> got(size_t(T * ldy), poison());
  auto call = [&](const KernelTable& table, std::vector<float>& y) {
    if (nt) {
      table.gemm_nt(w.mat, x.data(), ldx, T, y.data(), ldy, j0, j1);
    } else {
      table.gemm_nn(w.mat, x.data(), ldx, T, y.data(), ldy, j0, j1);
    }
  };
  call(k, got);
  if (T == 1) {
    const KernelTable* tabs[8];
    const int n = kernels::available_kernel_tables(tabs, 8);
    const KernelTable* plain = nullptr;
    for (int i = 0; i < n; ++i)
      if (std::strcmp(tabs[i]->name, "avx512") == 0) plain = tabs[i];
    if (!plain) {
      ADD_FAILURE() << "bf16-dot table without the avx512 table";
      return 1;
    }
    std::vector<float> want(got.size(), poison());
    call(*plain, want);
    if (std::memcmp(got.data(), want.data(), got.size() * 4) == 0) return 0;
    ADD_FAILURE() << "T = 1: not bit-identical to the avx512 table";
    return 1;
  }
  const std::vector<float> xr = round_to_bf16(x);
  std::vector<float> want_r(got.size(), poison());
  std::vector<double> abs_r(got.size(), 0.0);
  double_ref(nt, w, rows, cols, xr, ldx, T, ldy, j0, j1, want_r, abs_r);
  return check_outputs(got, want_r, abs_r, T, ldy, j0, j1, K);
}

bool cpu_has_bf16_dot() {
#if defined(MOEP_X86)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && kernels::bf16_dot_kernels() != nullptr;
#else
  return false;
#endif
}

TEST(Bf16Dot, OffByDefaultAndRefusedWhereUnsupported) {
  EXPECT_FALSE(kernels::bf16_dot());
  EXPECT_EQ(std::strstr(kernels::best_kernels().name, "bf16dot"), nullptr) << kernels::best_kernels().name;
  EXPECT_NO_THROW(kernels::set_bf16_dot(false));
  if (!cpu_has_bf16_dot() || std::strcmp(kernels::best_kernels().name, "avx512") != 0) {
    EXPECT_THROW(kernels::set_bf16_dot(true), Error);
    EXPECT_FALSE(kernels::bf16_dot());
    GTEST_SKIP() << "no avx512+bf16dot here: setting it must fail, and did";
  }
}

TEST(Bf16Dot, GemmMatchesBf16RoundedReference) {
  if (!cpu_has_bf16_dot()) GTEST_SKIP() << "CPU lacks avx512bf16";
  const KernelTable& k = *kernels::bf16_dot_kernels();
  EXPECT_STREQ(k.name, "avx512+bf16dot");
  struct Shape {
    int64_t rows, cols, pad, j0, j1_from_end;
  };
  // Odd and even reductions (odd: the zero-padded last pair), reductions past one packed block (512) with an
  // odd remainder, output counts with tails of the vector (16) and the panel (48) and sub-ranges. Streaming
  // paths: row counts with tails of the row block (4 rows, gemm_nt; 4 pairs = 8 rows, gemm_nn, where an odd
  // count leaves the last pair of a block half empty: 7, 9), column tails of the 32-element chunk, and gemm_nn
  // outputs past one tile (4096 columns at T = 2, 544 at T = 15).
  const Shape shapes[] = {{5, 7, 0, 0, 0},     {17, 33, 3, 0, 0},    {49, 1, 1, 2, 1},    {61, 131, 0, 13, 1},
                          {97, 64, 2, 0, 0},   {205, 513, 1, 1, 1},  {1, 1201, 0, 0, 0},  {100, 1029, 5, 3, 2},
                          {33, 257, 0, 0, 0},  {7, 4133, 1, 5, 3},   {64, 95, 0, 0, 0},   {9, 600, 2, 0, 1}};
  std::mt19937 gen(seed_for(400000));
  uint32_t id = 400000;
  for (bool nt : {true, false}) {
    for (const Shape& s : shapes) {
      // T = 1: decode (exact kernels); 2..23 (gemm_nt) and 2..15 (gemm_nn): streaming bf16-dot paths; from 24
      // and 16 on: packed.
      for (int64_t T : {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 23, 24, 32, 45}) {
        // Also one random shape per case: odd or even reduction and output counts.
        for (int rep = 0; rep < 2; ++rep) {
          int64_t rows = s.rows, cols = s.cols, pad = s.pad, j0 = s.j0, j1e = s.j1_from_end;
          if (rep == 1) {
            rows = std::uniform_int_distribution<int64_t>(1, 300)(gen);
            cols = std::uniform_int_distribution<int64_t>(1, 700)(gen);
            pad = std::uniform_int_distribution<int64_t>(0, 3)(gen);
            j0 = 0;
            j1e = 0;
          }
          const int64_t N = nt ? rows : cols;
          if (j0 + j1e >= N) j0 = j1e = 0;
          SCOPED_TRACE(testing::Message() << (nt ? "gemm_nt" : "gemm_nn") << " rows=" << rows << " cols=" << cols
                                          << " stride=" << cols + pad << " T=" << T << " j=[" << j0 << ","
                                          << N - j1e << ")");
          ASSERT_EQ(run_bf16_dot(k, nt, rows, cols, pad, T, j0, N - j1e, seed_for(++id)), 0);
        }
      }
    }
  }
}

TEST(Bf16Dot, SwitchSelectsTableAndOffIsUnchanged) {
  if (!cpu_has_bf16_dot() || std::strcmp(kernels::best_kernels().name, "avx512") != 0)
    GTEST_SKIP() << "no avx512+bf16dot here";
  const KernelTable* before = &kernels::best_kernels();
  const RandomWeights w(DType::BF16, 150, 301, 301, seed_for(410000));
  const std::vector<float> x = random_activations(40, 301, 301, seed_for(410001));
  auto run = [&] {
    std::vector<float> y(size_t(40 * 150));
    kernels::best_kernels().gemm_nt(w.mat, x.data(), 301, 40, y.data(), 150, 0, 150);
    return y;
  };
  const std::vector<float> plain = run();
  kernels::set_bf16_dot(true);
  EXPECT_TRUE(kernels::bf16_dot());
  EXPECT_STREQ(kernels::best_kernels().name, "avx512+bf16dot");
  const std::vector<float> dot = run();
  EXPECT_NE(std::memcmp(plain.data(), dot.data(), plain.size() * 4), 0);  // the activations were rounded
  kernels::set_bf16_dot(false);
  EXPECT_FALSE(kernels::bf16_dot());
  EXPECT_EQ(&kernels::best_kernels(), before);
  const std::vector<float> again = run();
  EXPECT_EQ(std::memcmp(plain.data(), again.data(), plain.size() * 4), 0);
}

// ---- ops: the threaded splitting over the fastest table --------------------------------------------------

TEST(Ops, LinearMatchesReferenceOnAnyThreadCount) {
  struct Shape {
    int64_t rows, cols, T;
  };
  // The large shapes hold several times ops' minimum task size (64 KiB of weights) in every dtype, so that
  // they are split into several tasks, with a partial last one.
  const Shape shapes[] = {{1, 5, 1},      {37, 19, 1},     {200, 70, 3},     {333, 129, 1},
                          {130, 77, 8},   {97, 150, 33},   {1001, 263, 1},   {1001, 263, 6},
                          {613, 300, 17}};
  uint32_t id = 200000;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (DType dt : kDTypes) {
      for (const Shape& s : shapes) {
        SCOPED_TRACE(testing::Message() << "threads=" << threads << " " << dtype_name(dt) << " rows=" << s.rows
                                        << " cols=" << s.cols << " T=" << s.T);
        const uint32_t seed = seed_for(++id);
        const RandomWeights w(dt, s.rows, s.cols, s.cols, seed);
        const std::vector<float> x = random_activations(s.T, s.cols, s.cols, seed + 1);
        std::vector<float> got(size_t(s.T * s.rows), poison()), want(got.size());
        std::vector<double> abs_sum(got.size(), 0.0);
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t r = 0; r < s.rows; ++r)
            for (int64_t c = 0; c < s.cols; ++c)
              abs_sum[size_t(t * s.rows + r)] += std::fabs(double(w.values[size_t(r * s.cols + c)]) * x[size_t(t * s.cols + c)]);
        kernels::reference_kernels().gemm_nt(w.mat, x.data(), s.cols, s.T, want.data(), s.rows, 0, s.rows);
        ops::linear(pool, w.mat, x.data(), s.T, got.data());
        ASSERT_EQ(check_outputs(got, want, abs_sum, s.T, s.rows, 0, s.rows, s.cols), 0);

        // Strided form: X [T, cols + 4], Y [T, rows + 3]; the padding of Y must stay untouched.
        const int64_t ldx = s.cols + 4, ldy = s.rows + 3;
        const std::vector<float> xs = random_activations(s.T, s.cols, ldx, seed + 2);
        std::vector<float> got_s(size_t(s.T * ldy), poison()), want_s(got_s.size(), poison());
        std::vector<double> abs_s(got_s.size(), 0.0);
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t r = 0; r < s.rows; ++r)
            for (int64_t c = 0; c < s.cols; ++c)
              abs_s[size_t(t * ldy + r)] += std::fabs(double(w.values[size_t(r * s.cols + c)]) * xs[size_t(t * ldx + c)]);
        kernels::reference_kernels().gemm_nt(w.mat, xs.data(), ldx, s.T, want_s.data(), ldy, 0, s.rows);
        ops::linear(pool, w.mat, xs.data(), ldx, s.T, got_s.data(), ldy);
        ASSERT_EQ(check_outputs(got_s, want_s, abs_s, s.T, ldy, 0, s.rows, s.cols), 0);
      }
    }
  }
}

TEST(Ops, LinearInOutMatchesReferenceOnAnyThreadCount) {
  struct Shape {
    int64_t rows, cols, T;  // W [rows = in, cols = out]
  };
  const Shape shapes[] = {{5, 1, 1},      {19, 37, 1},     {70, 200, 3},     {129, 333, 1},
                          {77, 130, 8},   {150, 97, 33},   {263, 1001, 1},   {263, 1001, 6},
                          {300, 613, 17}};
  uint32_t id = 300000;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (DType dt : kDTypes) {
      for (const Shape& s : shapes) {
        SCOPED_TRACE(testing::Message() << "threads=" << threads << " " << dtype_name(dt) << " in=" << s.rows
                                        << " out=" << s.cols << " T=" << s.T);
        const uint32_t seed = seed_for(++id);
        const RandomWeights w(dt, s.rows, s.cols, s.cols, seed);
        const std::vector<float> x = random_activations(s.T, s.rows, s.rows, seed + 1);
        std::vector<float> got(size_t(s.T * s.cols), poison()), want(got.size());
        std::vector<double> abs_sum(got.size(), 0.0);
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t r = 0; r < s.rows; ++r)
            for (int64_t c = 0; c < s.cols; ++c)
              abs_sum[size_t(t * s.cols + c)] += std::fabs(double(x[size_t(t * s.rows + r)]) * w.values[size_t(r * s.cols + c)]);
        kernels::reference_kernels().gemm_nn(w.mat, x.data(), s.rows, s.T, want.data(), s.cols, 0, s.cols);
        ops::linear_in_out(pool, w.mat, x.data(), s.T, got.data());
        ASSERT_EQ(check_outputs(got, want, abs_sum, s.T, s.cols, 0, s.cols, s.rows), 0);
      }
    }
  }
}

// linear_many / linear_in_out_many run several products in one parallel region; each job's result must be bit
// for bit that of its own linear / linear_in_out call (same blocks, same order of additions), on any thread
// count and whatever room the scratch has (all jobs at once, two at a time, or partials for one large job
// only). The jobs mix dtypes, sizes below and above the row-split threshold of linear_in_out (8 MiB and more
// of weights: split into chunks whose partials are summed) and token counts on both sides of its row-split
// limit (8); the large in_out job is also checked against the scalar reference.
TEST(Ops, ManyJobsMatchOneCallPerJob) {
  struct Shape {
    DType dt;
    int64_t rows, cols, T;
  };
  const Shape shapes[] = {{DType::F32, 2100, 1100, 1}, {DType::BF16, 40, 70, 1},    {DType::BF16, 3000, 1600, 3},
                          {DType::F16, 333, 129, 2},   {DType::F32, 1001, 263, 12}, {DType::BF16, 2200, 2000, 8}};
  constexpr int64_t kJobs = int64_t(std::size(shapes));
  uint32_t id = 400000;
  size_t largest = 0;  // the most partials one job needs
  for (const Shape& s : shapes) largest = std::max(largest, ops::in_out_partial_floats(s.rows, s.cols, s.dt, s.T));
  ASSERT_GT(largest, 0u);  // some job takes the row split
  for (int run = 0; run < 9; ++run) {
    const int threads = 1 + run / 3, room = run % 3;
    ThreadPool pool(threads);
    ops::ManyScratch scratch;
    if (room == 0) scratch.reserve(kJobs, 10 * largest);
    if (room == 1) scratch.reserve(2, 10 * largest);
    if (room == 2) scratch.reserve(kJobs, largest);
    for (bool in_out : {false, true}) {
      SCOPED_TRACE(testing::Message() << "threads=" << threads << " room=" << room
                                      << (in_out ? " linear_in_out_many" : " linear_many"));
      std::vector<RandomWeights> w;
      std::vector<std::vector<float>> x, got, want;
      std::vector<ops::LinearJob> jobs;
      for (const Shape& s : shapes) {
        const uint32_t seed = seed_for(++id);
        w.emplace_back(s.dt, s.rows, s.cols, s.cols, seed);
        const int64_t in = in_out ? s.rows : s.cols, out = in_out ? s.cols : s.rows;
        x.push_back(random_activations(s.T, in, in, seed + 1));
        got.emplace_back(size_t(s.T * out), poison());
        want.emplace_back(size_t(s.T * out), poison());
      }
      for (int64_t j = 0; j < kJobs; ++j) jobs.push_back({w[size_t(j)].mat, x[size_t(j)].data(), shapes[j].T, got[size_t(j)].data()});
      if (in_out)
        ops::linear_in_out_many(pool, jobs.data(), kJobs, scratch);
      else
        ops::linear_many(pool, jobs.data(), kJobs, scratch);
      for (int64_t j = 0; j < kJobs; ++j) {
        const Shape& s = shapes[j];
        SCOPED_TRACE(testing::Message() << "job " << j << " " << dtype_name(s.dt) << " rows=" << s.rows
                                        << " cols=" << s.cols << " T=" << s.T);
        if (in_out)
          ops::linear_in_out(pool, w[size_t(j)].mat, x[size_t(j)].data(), s.T, want[size_t(j)].data());
        else
          ops::linear(pool, w[size_t(j)].mat, x[size_t(j)].data(), s.T, want[size_t(j)].data());
        for (float v : got[size_t(j)]) ASSERT_FALSE(is_poison(v));
        ASSERT_EQ(0, std::memcmp(got[size_t(j)].data(), want[size_t(j)].data(), got[size_t(j)].size() * sizeof(float)));
      }
      // The largest in_out job (row-split on 2+ threads) against the scalar reference.
      if (in_out) {
        const Shape& s = shapes[2];
        const RandomWeights& wm = w[2];
        std::vector<float> ref(size_t(s.T * s.cols), poison());
        std::vector<double> abs_sum(ref.size(), 0.0);
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t r = 0; r < s.rows; ++r)
            for (int64_t c = 0; c < s.cols; ++c)
              abs_sum[size_t(t * s.cols + c)] += std::fabs(double(x[2][size_t(t * s.rows + r)]) * wm.values[size_t(r * s.cols + c)]);
        kernels::reference_kernels().gemm_nn(wm.mat, x[2].data(), s.rows, s.T, ref.data(), s.cols, 0, s.cols);
        ASSERT_EQ(check_outputs(got[2], ref, abs_sum, s.T, s.cols, 0, s.cols, s.rows), 0);
      }
    }
  }
}

}  // namespace
}  // namespace moep
