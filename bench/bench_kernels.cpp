// Micro-benchmarks of the matrix kernels at DBRX's dimensions (Google Benchmark).
//
//   moep_microbench [--threads=N] [--bf16_dot] [--benchmark_filter=REGEX] [--benchmark_repetitions=K] ...
//
// Decode (T = 1..8) is memory-bound: the figure of merit is GB/s of weights streamed, to be compared with
// `membw` (the machine's read bandwidth, measured here the same way as `moep bench --membw`). Prefill
// (T = 32, 128, 512) is compute-bound: GFLOP/s (2·rows·cols·T per call), to be compared with `peak_fma` (a loop of
// independent FMAs, the most this CPU's vector units give on the same threads).
//
// Weights live in a ring of copies of at least 1 GiB, and each iteration reads the next copy, so no cache
// holds them (as in decode, where a token's weights were last read one token ago). Benchmarks named
// `ops/...` go through ops::linear / ops::linear_in_out with the fastest table (the engine's path); those named
// `<table>/...` call one table's kernel, split over the same threads into 4 tasks per thread.
#include <benchmark/benchmark.h>

#include <sys/mman.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/page_buffer.h"
#include "core/quant.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/membw.h"
#include "kernels/ops.h"

#if __has_include("moep_commit.h")
#include "moep_commit.h"
#endif
#ifndef MOEP_GIT_COMMIT
#define MOEP_GIT_COMMIT "unknown"
#endif

namespace moep {
namespace {

int g_threads = 0;

ThreadPool& pool() {
  static ThreadPool p(g_threads);
  return p;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0 || line.rfind("Model", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

// Copies of one [rows, cols] weight matrix, back to back, ≥ 1 GiB in all. Values are pseudo-random in
// [-1, 1) (never zero pages: the kernel would map them all to one physical page and reads would hit cache).
// Block-quantized dtypes: kQuantRows distinct rows quantized by quantize_row (ggml's reference quantizer, too
// slow for a whole ring), laid out in a different order in every copy.
class WeightRing {
 public:
  static constexpr int64_t kQuantRows = 256;

  WeightRing(DType dtype, int64_t rows, int64_t cols) : dtype_(dtype), rows_(rows), cols_(cols) {
    matrix_bytes_ = size_t(rows) * dtype_row_bytes(dtype, cols);
    copies_ = std::max<size_t>(2, (size_t(1) << 30) / matrix_bytes_ + 1);
    bytes_ = matrix_bytes_ * copies_;
    buf_ = PageBuffer(bytes_, true);  // 2 MiB pages, like the engine's copied weights (--weights copy)
    mem_ = buf_.data();
    if (dtype_is_quantized(dtype)) {
      fill_quantized();
      return;
    }
    // Filled by all threads: one copy (rows × cols elements) per task.
    pool().parallel_for(int64_t(copies_), [&](int64_t i) {
      uint32_t s = uint32_t(i) * 2654435761u + 1u;
      const int64_t n = rows_ * cols_;
      uint8_t* base = mem_ + size_t(i) * matrix_bytes_;
      for (int64_t e = 0; e < n; ++e) {
        s = s * 1664525u + 1013904223u;
        const float f = float(int32_t(s >> 8) - (1 << 23)) * (1.f / float(1 << 23));
        if (dtype_ == DType::F32) {
          std::memcpy(base + 4 * e, &f, 4);
        } else {
          const uint16_t h = dtype_ == DType::BF16 ? f32_to_bf16(f) : f32_to_f16(f);
          std::memcpy(base + 2 * e, &h, 2);
        }
      }
    });
  }
  bool matches(DType d, int64_t r, int64_t c) const { return d == dtype_ && r == rows_ && c == cols_; }
  size_t matrix_bytes() const { return matrix_bytes_; }
  MatRef next() {
    MatRef m{mem_ + next_ * matrix_bytes_, dtype_, rows_, cols_, cols_};
    next_ = (next_ + 1) % copies_;
    return m;
  }

 private:
  void fill_quantized() {
    const size_t row_bytes = dtype_row_bytes(dtype_, cols_);
    std::vector<uint8_t> distinct(size_t(kQuantRows) * row_bytes);
    pool().parallel_for(kQuantRows, [&](int64_t r) {
      std::vector<float> v(static_cast<size_t>(cols_));
      uint32_t s = uint32_t(r) * 2654435761u + 1u;
      for (auto& f : v) {
        s = s * 1664525u + 1013904223u;
        f = float(int32_t(s >> 8) - (1 << 23)) * (1.f / float(1 << 23));
      }
      quantize_row(ggml_type_of(dtype_), v.data(), distinct.data() + size_t(r) * row_bytes, cols_);
    });
    pool().parallel_for(int64_t(copies_), [&](int64_t i) {
      uint8_t* base = mem_ + size_t(i) * matrix_bytes_;
      for (int64_t r = 0; r < rows_; ++r)
        std::memcpy(base + size_t(r) * row_bytes, distinct.data() + size_t((r * 7 + i) % kQuantRows) * row_bytes,
                    row_bytes);
    });
  }

  DType dtype_;
  int64_t rows_, cols_;
  size_t matrix_bytes_ = 0, copies_ = 0, bytes_ = 0, next_ = 0;
  PageBuffer buf_;
  uint8_t* mem_ = nullptr;
};

// One ring at a time (the benchmarks are registered grouped by shape and dtype so that it is rebuilt rarely).
WeightRing& ring_for(DType d, int64_t rows, int64_t cols) {
  static std::unique_ptr<WeightRing> ring;
  if (!ring || !ring->matches(d, rows, cols)) {
    ring.reset();
    ring = std::make_unique<WeightRing>(d, rows, cols);
  }
  return *ring;
}

std::vector<float> random_vector(size_t n) {
  std::vector<float> v(n);
  uint32_t s = 12345;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = float(int32_t(s >> 8) - (1 << 23)) * (1.f / float(1 << 23));
  }
  return v;
}

enum class Op { NT, NN };

// Y = X·Wᵀ (NT, W [rows = out, cols = in]) or Y = X·W (NN, W [rows = in, cols = out]) on all threads.
void run_op(const kernels::KernelTable* k, Op op, const MatRef& W, const float* X, int64_t T, float* Y) {
  if (k == nullptr) {
    if (op == Op::NT) ops::linear(pool(), W, X, T, Y);
    else ops::linear_in_out(pool(), W, X, T, Y);
    return;
  }
  const int64_t n = op == Op::NT ? W.rows : W.cols;
  const int64_t tasks = int64_t(pool().size()) * 4;
  const int64_t block = ((n + tasks - 1) / tasks + 15) / 16 * 16;
  pool().parallel_for((n + block - 1) / block, [&](int64_t i) {
    const int64_t b = i * block, e = std::min(n, b + block);
    if (op == Op::NT) k->gemm_nt(W, X, W.cols, T, Y, W.rows, b, e);
    else k->gemm_nn(W, X, W.rows, T, Y, W.cols, b, e);
  });
}

// k == nullptr: through ops (fastest table).
void BM_gemm(benchmark::State& st, const kernels::KernelTable* k, Op op, DType dt, int64_t rows, int64_t cols,
             int64_t T) {
  WeightRing& ring = ring_for(dt, rows, cols);
  const int64_t in = op == Op::NT ? cols : rows, out = op == Op::NT ? rows : cols;
  const std::vector<float> x = random_vector(size_t(T * in));
  std::vector<float> y(size_t(T * out));
  run_op(k, op, ring.next(), x.data(), T, y.data());  // warm-up: thread pool, packing buffers
  for (auto _ : st) {
    run_op(k, op, ring.next(), x.data(), T, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double bytes = double(ring.matrix_bytes());
  st.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(rows * cols) * double(T) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["tokens/s"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
}

// One DBRX-dimension decode layer as the engine runs it, one token: q, k, v (row blocks of the fused Wqkv) in
// one region, o, then 4 experts (all w1 and v1 in one region, silu·mul, all w2 stored [ffn, d_model] through
// linear_in_out_many), each iteration on the next of two copies of the layer's weights (3.5 GB), on 2 MiB
// pages. Against the single matrices above, this shows what a sequence of different matrix ops costs.
void BM_dbrx_layer(benchmark::State& st) {
  constexpr int64_t d = 6144, kv = 1024, f = 10752, experts = 4;
  const int64_t elems = (d + 2 * kv) * d + d * d + experts * 3 * f * d;
  const size_t layer_bytes = size_t(elems) * 2;
  PageBuffer buf(2 * layer_bytes, true);
  pool().parallel_for(64, [&](int64_t i) {
    const size_t b = layer_bytes * 2 / 64 * size_t(i) / 2 * 2, e = i == 63 ? 2 * layer_bytes : layer_bytes * 2 / 64 * size_t(i + 1) / 2 * 2;
    uint32_t s = uint32_t(i) * 2654435761u + 1u;
    for (size_t o = b; o < e; o += 2) {
      s = s * 1664525u + 1013904223u;
      const uint16_t h = f32_to_bf16(float(int32_t(s >> 8) - (1 << 23)) * (1.f / float(1 << 25)));
      std::memcpy(buf.data() + o, &h, 2);
    }
  });
  const std::vector<float> x = random_vector(size_t(f));
  std::vector<float> q(static_cast<size_t>(d)), k(static_cast<size_t>(kv)), v(static_cast<size_t>(kv)),
      o(static_cast<size_t>(d)), g(static_cast<size_t>(experts * f)), u(static_cast<size_t>(experts * f)),
      y(static_cast<size_t>(experts * d));
  ops::ManyScratch many;
  many.reserve(2 * experts, size_t(experts) * ops::in_out_partial_floats(f, d, DType::BF16, 1));
  int copy = 0;
  auto layer = [&] {
    const uint8_t* p = buf.data() + size_t(copy) * layer_bytes;
    copy ^= 1;
    auto mat = [&](int64_t rows, int64_t cols) {
      MatRef m{p, DType::BF16, rows, cols, cols};
      p += size_t(rows * cols) * 2;
      return m;
    };
    const ops::LinearJob qkv[3] = {{mat(d, d), x.data(), 1, q.data()}, {mat(kv, d), x.data(), 1, k.data()},
                                   {mat(kv, d), x.data(), 1, v.data()}};
    ops::linear_many(pool(), qkv, 3, many);
    ops::linear(pool(), mat(d, d), q.data(), 1, o.data());
    ops::LinearJob up[2 * experts], down[experts];
    for (int e = 0; e < experts; ++e) {
      up[2 * e] = {mat(f, d), o.data(), 1, &g[size_t(e * f)]};
      up[2 * e + 1] = {mat(f, d), o.data(), 1, &u[size_t(e * f)]};
      down[e] = {mat(f, d), &g[size_t(e * f)], 1, &y[size_t(e * d)]};
    }
    ops::linear_many(pool(), up, 2 * experts, many);
    for (int e = 0; e < experts; ++e) ops::silu_mul(&g[size_t(e * f)], &u[size_t(e * f)], f);
    ops::linear_in_out_many(pool(), down, experts, many);
  };
  layer();
  layer();  // warm-up: both copies once
  for (auto _ : st) {
    layer();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st.counters["GB/s"] = benchmark::Counter(double(layer_bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_membw(benchmark::State& st) {
  double gbs = 0;
  for (auto _ : st) gbs = kernels::measure_read_bandwidth_gbs(pool(), size_t(1) << 30, 5);
  st.counters["GB/s"] = gbs;
}

// A plain read of 1 GiB on 2 MiB pages by every thread, each reading its share as `streams` interleaved
// streams (kernels::sum_lines, the loop of the read test): how the memory system serves one, a few or many
// concurrent streams per core, which is what the streaming kernels' row order is chosen for.
void BM_read_streams(benchmark::State& st, int streams) {
  constexpr size_t kBytes = size_t(1) << 30;
  PageBuffer buf(kBytes, true);
  auto* w = reinterpret_cast<uint64_t*>(buf.data());
  const int n = pool().size();
  const size_t lines = kBytes / 64;
  pool().parallel_for(n, [&](int64_t t) {
    for (size_t i = lines * size_t(t) / size_t(n) * 8; i < lines * size_t(t + 1) / size_t(n) * 8; ++i) w[i] = i;
  });
  std::atomic<uint64_t> sink{0};
  auto pass = [&] {
    pool().parallel_for(n, [&](int64_t t) {
      const size_t b = lines * size_t(t) / size_t(n), e = lines * size_t(t + 1) / size_t(n);
      sink.fetch_add(kernels::sum_lines(w + b * 8, e - b, streams), std::memory_order_relaxed);
    });
  };
  pass();  // pages and TLB warm
  for (auto _ : st) pass();
  benchmark::DoNotOptimize(sink.load());
  st.counters["GB/s"] = benchmark::Counter(double(kBytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

#if defined(__x86_64__)
// Peak f32 FMA rate: independent accumulator chains per thread, more than FMA latency × FMA pipes, all in
// registers (the loops must be unrolled for that: -O2 leaves arrays of vectors in memory otherwise).
__attribute__((target("avx512f"))) float fma_loop_avx512(int64_t iters) {
  __m512 acc[24];
#pragma GCC unroll 24
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  for (int64_t n = 0; n < iters; ++n) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  alignas(64) float out[16];
  __m512 s = acc[0];
#pragma GCC unroll 24
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  _mm512_store_ps(out, s);
  return out[0];
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
  __m256 acc[12];
#pragma GCC unroll 12
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  for (int64_t n = 0; n < iters; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  alignas(32) float out[8];
  __m256 s = acc[0];
#pragma GCC unroll 12
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  _mm256_store_ps(out, s);
  return out[0];
}

void BM_peak_fma(benchmark::State& st, bool avx512) {
  constexpr int64_t kIters = 1 << 20;
  std::vector<float> sink(size_t(pool().size()));
  for (auto _ : st) {
    pool().parallel_for(pool().size(), [&](int64_t i) {
      sink[size_t(i)] = avx512 ? fma_loop_avx512(kIters) : fma_loop_avx2(kIters);
    });
    benchmark::DoNotOptimize(sink.data());
  }
  const double flops = double(pool().size()) * double(kIters) * (avx512 ? 24 * 16 : 12 * 8) * 2.0;
  st.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
#endif

void register_all() {
  // DBRX: d_model 6144, ffn 10752 (w1, v1: [ffn, d_model] via gemm_nt; w2: [ffn, d_model] via gemm_nn),
  // vocab 100352 (output head [vocab, d_model] via gemm_nt).
  constexpr int64_t kD = 6144, kFfn = 10752, kVocab = 100352;
  const kernels::KernelTable* tables[8];
  const int n_tables = kernels::available_kernel_tables(tables, 8);

  // Rates are per wall-clock second when several threads work; with --threads=1 everything runs on the
  // benchmark's own thread and rates are per second of its CPU time, which time-slicing by other processes on
  // a busy machine does not inflate (membw times itself by the wall clock).
  const bool wall = g_threads > 1;
  auto timing = [wall](benchmark::internal::Benchmark* b) {
    if (wall) b->UseRealTime();
    b->Unit(benchmark::kMillisecond);
  };
  benchmark::RegisterBenchmark("membw", BM_membw)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  for (int streams : {1, 4, 8, 16})
    benchmark::RegisterBenchmark(("read/streams:" + std::to_string(streams)).c_str(), BM_read_streams, streams)
        ->Iterations(5)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    timing(benchmark::RegisterBenchmark("peak_fma/avx512", BM_peak_fma, true));
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    timing(benchmark::RegisterBenchmark("peak_fma/avx2", BM_peak_fma, false));
#endif

  auto reg = [&](const std::string& name, const kernels::KernelTable* k, Op op, DType dt, int64_t rows, int64_t cols,
                 int64_t T) { timing(benchmark::RegisterBenchmark(name.c_str(), BM_gemm, k, op, dt, rows, cols, T)); };
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    const std::string d = dtype_name(dt);
    // Decode: one token, every table (the scalar reference too, for scale).
    for (int i = 0; i < n_tables; ++i)
      reg(std::string(tables[i]->name) + "/nt/" + d + "/10752x6144/T:1", tables[i], Op::NT, dt, kFfn, kD, 1);
    reg("ops/linear/" + d + "/10752x6144/T:1", nullptr, Op::NT, dt, kFfn, kD, 1);
    reg("ops/linear_in_out/" + d + "/10752x6144/T:1", nullptr, Op::NN, dt, kFfn, kD, 1);
    if (dt != DType::BF16) continue;
    // Small batches read each weight once: GB/s should stay near T = 1's.
    for (int64_t T : {2, 4, 8}) {
      reg("ops/linear/" + d + "/10752x6144/T:" + std::to_string(T), nullptr, Op::NT, dt, kFfn, kD, T);
      reg("ops/linear_in_out/" + d + "/10752x6144/T:" + std::to_string(T), nullptr, Op::NN, dt, kFfn, kD, T);
    }
    // Prefill: compute-bound.
    for (int64_t T : {32, 128}) {
      reg("ops/linear/" + d + "/10752x6144/T:" + std::to_string(T), nullptr, Op::NT, dt, kFfn, kD, T);
      reg("ops/linear_in_out/" + d + "/10752x6144/T:" + std::to_string(T), nullptr, Op::NN, dt, kFfn, kD, T);
    }
    reg("ops/linear/" + d + "/10752x6144/T:512", nullptr, Op::NT, dt, kFfn, kD, 512);  // beside the quantized types
  }
  for (int64_t T : {32, 128}) {
    reg("ops/linear/f32/10752x6144/T:" + std::to_string(T), nullptr, Op::NT, DType::F32, kFfn, kD, T);
  }
  // ggml's block-quantized weights (gemm_nt only), beside bf16 at the same shape: decode GB/s (of the quantized
  // bytes) for every table that reads them natively, then prefill GFLOP/s.
  for (DType dt : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::MXFP4}) {
    const std::string d = dtype_name(dt);
    for (int i = 0; i < n_tables; ++i)
      if (tables[i]->quantized && tables[i] != &kernels::reference_kernels())
        reg(std::string(tables[i]->name) + "/nt/" + d + "/10752x6144/T:1", tables[i], Op::NT, dt, kFfn, kD, 1);
    for (int64_t T : {1, 8, 32, 512})
      reg("ops/linear/" + d + "/10752x6144/T:" + std::to_string(T), nullptr, Op::NT, dt, kFfn, kD, T);
  }
  // The output head, one token.
  reg("ops/linear/bf16/100352x6144/T:1", nullptr, Op::NT, DType::BF16, kVocab, kD, 1);
  // A whole layer's sequence of ops, one token.
  timing(benchmark::RegisterBenchmark("ops/dbrx_layer/bf16/T:1", BM_dbrx_layer));
}

}  // namespace
}  // namespace moep

int main(int argc, char** argv) {
  // --threads=N and --bf16_dot (the ops/* benchmarks on kernels::set_bf16_dot(true)) are ours; everything else
  // goes to Google Benchmark.
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      moep::g_threads = std::atoi(argv[i] + 10);
    } else if (std::strcmp(argv[i], "--bf16_dot") == 0) {
      moep::kernels::set_bf16_dot(true);  // throws (uncaught: aborts with the reason) where unsupported
    } else {
      args.push_back(argv[i]);
    }
  }
  if (moep::g_threads <= 0) moep::g_threads = moep::default_thread_count();
  int n = int(args.size());
  benchmark::Initialize(&n, args.data());
  benchmark::AddCustomContext("moep_commit", MOEP_GIT_COMMIT);
  benchmark::AddCustomContext("cpu_model", moep::cpu_model());
  benchmark::AddCustomContext("threads", std::to_string(moep::g_threads));
  benchmark::AddCustomContext("kernels", moep::kernels::best_kernels().name);
  moep::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
