#include "kernels/membw.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/page_buffer.h"
#include "kernels/kernels.h"

namespace moep::kernels {

namespace {

// Sums 64-bit words of [p, p + n) with eight independent accumulators so that the loop is bound by loads,
// not by the add latency. Plain C++: the compiler's baseline vectorization (SSE2 on x86, NEON on arm) already
// issues more loads per cycle than memory can serve.
uint64_t sum_words(const uint64_t* p, size_t n) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += p[i + 0];
    a1 += p[i + 1];
    a2 += p[i + 2];
    a3 += p[i + 3];
    a4 += p[i + 4];
    a5 += p[i + 5];
    a6 += p[i + 6];
    a7 += p[i + 7];
  }
  for (; i < n; ++i) a0 += p[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

}  // namespace

// The same over whole cache lines with k streams, one vector of a line's width at a time: eight 64-bit lanes
// (one AVX-512 load per line, two AVX2 loads, four SSE2/NEON loads as the target gives). Wide loads matter: on
// the device machine's Xeon, 4 threads read 46 GB/s with AVX-512 loads against 40 GB/s with SSE2 ones, and the
// engine's AVX-512 kernels stream 44-49 GB/s there.
typedef uint64_t Line __attribute__((vector_size(64), aligned(8)));  // no alignment assumed
#define MOEP_SUM_LINES_BODY                                                               \
  const size_t part = lines / size_t(k);                                                   \
  Line a0 = {}, a1 = {}, a2 = {}, a3 = {};                                                 \
  for (size_t j = 0; j < part; ++j) {                                                      \
    int s = 0;                                                                             \
    for (; s + 2 <= k; s += 2) {                                                           \
      a0 += *reinterpret_cast<const Line*>(p + (size_t(s) * part + j) * 8);                \
      a1 += *reinterpret_cast<const Line*>(p + (size_t(s + 1) * part + j) * 8);            \
    }                                                                                      \
    for (; s < k; ++s) a2 += *reinterpret_cast<const Line*>(p + (size_t(s) * part + j) * 8); \
  }                                                                                        \
  a3 = a0 + a1 + a2;                                                                       \
  uint64_t sum = 0;                                                                        \
  for (int w = 0; w < 8; ++w) sum += a3[w];                                                \
  return sum;

uint64_t sum_lines_generic(const uint64_t* p, size_t lines, int k) { MOEP_SUM_LINES_BODY }
#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t sum_lines_avx2(const uint64_t* p, size_t lines, int k) { MOEP_SUM_LINES_BODY }
__attribute__((target("avx512f"))) uint64_t sum_lines_avx512(const uint64_t* p, size_t lines, int k) {
  MOEP_SUM_LINES_BODY
}
#endif
#undef MOEP_SUM_LINES_BODY

// Sums `lines` cache lines from `k` streams at once: [p, p + lines) split into k contiguous parts, read a line
// of each part in turn. One stream per core leaves bandwidth unused on some CPUs (a server Xeon's prefetcher
// runs only so far ahead of one stream: the engine's kernels, which read 4 to 8 weight rows at once, beat a
// one-stream test there by 20-50%).
uint64_t sum_lines(const uint64_t* p, size_t lines, int k) {
  if (k < 1) k = 1;
  if (lines < size_t(k)) return sum_words(p, lines * 8);
  // The vector width of the kernels this process runs (MOEP_KERNELS can force a narrower one).
  static const auto body = [] {
    const std::string isa = best_kernels().name;
#if defined(__x86_64__)
    if (isa.rfind("avx512", 0) == 0) return &sum_lines_avx512;
    if (isa == "avx2") return &sum_lines_avx2;
#endif
    (void)isa;
    return &sum_lines_generic;
  }();
  const size_t part = lines / size_t(k);
  return body(p, lines, k) + sum_words(p + size_t(k) * part * 8, (lines - size_t(k) * part) * 8);  // + remainder
}

double measure_read_bandwidth_gbs(ThreadPool& pool, size_t bytes, int reps, bool huge_pages) {
  constexpr size_t kLine = 64;
  const size_t words = std::max<size_t>(bytes, kLine * 1024) / 8 / 8 * 8;  // whole multiples of one line
  const size_t len = words * 8;
  PageBuffer mem(len, huge_pages);
  auto* buf = reinterpret_cast<uint64_t*>(mem.data());
  const int n_threads = pool.size();
  // One contiguous share per thread, in units of cache lines (8 words).
  const size_t lines = words / 8;
  auto share = [&](int64_t i, size_t* begin, size_t* end) {
    *begin = lines * size_t(i) / size_t(n_threads) * 8;
    *end = lines * size_t(i + 1) / size_t(n_threads) * 8;
  };
  // Each thread writes its own share first (pages fault in, and land near that thread on NUMA machines).
  pool.parallel_for(n_threads, [&](int64_t i) {
    size_t b, e;
    share(i, &b, &e);
    for (size_t k = b; k < e; ++k) buf[k] = k * 0x9e3779b97f4a7c15ull;
  });
  std::atomic<uint64_t> sink{0};  // the sums are published so that the reads cannot be dropped
  auto pass = [&](int streams) {
    pool.parallel_for(n_threads, [&](int64_t i) {
      size_t b, e;
      share(i, &b, &e);
      sink.fetch_add(sum_lines(buf + b, (e - b) / 8, streams), std::memory_order_relaxed);
    });
  };
  pass(1);  // untimed: TLB and page tables warm, caches hold the buffer's tail (too little to matter)
  // Each repetition reads the buffer once with one stream per thread and once with four; the best pass of
  // either is the machine's read bandwidth (whichever way of reading it serves best).
  double best = 0.0;
  for (int r = 0; r < std::max(1, reps); ++r)
    for (int streams : {1, 4}) {
      const auto t0 = std::chrono::steady_clock::now();
      pass(streams);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, double(len) / s * 1e-9);
    }
  return best;
}

double measure_span_read_gbs(ThreadPool& pool, const ReadSpan* spans, size_t n_spans, int reps) {
  const int n_threads = pool.size();
  size_t total = 0;  // whole cache lines inside the spans: what a pass reads
  for (size_t i = 0; i < n_spans; ++i) {
    const uintptr_t b = (reinterpret_cast<uintptr_t>(spans[i].data) + 63) / 64 * 64;
    const uintptr_t e = (reinterpret_cast<uintptr_t>(spans[i].data) + spans[i].bytes) / 64 * 64;
    if (e > b) total += e - b;
  }
  if (total == 0) return 0.0;
  std::atomic<uint64_t> sink{0};
  double best = 0.0;
  // Spans are read in groups of at least kGroup bytes, one parallel region per group, each thread its share
  // of every span of the group: a weight matrix split by columns over ranks is thousands of short spans.
  constexpr size_t kGroup = size_t(4) << 20;
  for (int r = 0; r < std::max(1, reps); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < n_spans;) {
      size_t j = i, group = 0;
      do group += spans[j++].bytes;
      while (j < n_spans && group < kGroup);
      pool.parallel_for(n_threads, [&](int64_t t) {
        uint64_t sum = 0;
        for (size_t q = i; q < j; ++q) {
          // Whole cache lines from the first aligned one: a span's ends may share lines with its neighbours.
          const uintptr_t b = (reinterpret_cast<uintptr_t>(spans[q].data) + 63) / 64 * 64;
          const uintptr_t e = (reinterpret_cast<uintptr_t>(spans[q].data) + spans[q].bytes) / 64 * 64;
          if (e <= b) continue;
          const size_t lines = (e - b) / 64;
          const auto* base = reinterpret_cast<const uint64_t*>(b);
          const size_t lb = lines * size_t(t) / size_t(n_threads), le = lines * size_t(t + 1) / size_t(n_threads);
          sum += sum_lines(base + lb * 8, le - lb, 4);
        }
        sink.fetch_add(sum, std::memory_order_relaxed);
      });
      i = j;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(total) / s * 1e-9);
  }
  return best;
}

}  // namespace moep::kernels
