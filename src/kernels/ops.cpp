#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace moep::ops {

namespace {
// Row (column) blocks are multiples of this so that fast kernels process whole register blocks; 48 is a
// multiple of every kernel's row block (8 rows) and output panel (48 for AVX-512, 16 for AVX2 and NEON).
constexpr int64_t kAlign = 48;
// Each task reads at least this many bytes of weights: below, waking another thread costs more than it saves
// (small matrices such as routers run on the calling thread alone).
constexpr int64_t kMinTaskBytes = 64 * 1024;
// Tasks per thread: enough that a thread delayed by the OS or slower memory is balanced by the others taking
// more tasks; few enough that each task streams long runs of weights.
constexpr int64_t kTasksPerThread = 4;
// linear_in_out with at most this many rows of X splits the weights by rows into chunks of about
// kRowChunkBytes (at most kMaxRowChunks of them).
constexpr int64_t kRowSplitMaxT = 8;
constexpr int64_t kRowChunkBytes = 4 << 20;
constexpr int64_t kMaxRowChunks = 64;

// Splits n outputs, each reading bytes_per_output bytes of weights, into blocks of a multiple of kAlign.
int64_t block_size(int64_t n, int64_t bytes_per_output, int threads) {
  const int64_t tasks = int64_t(threads) * kTasksPerThread;
  int64_t block = (n + tasks - 1) / tasks;
  block = std::max(block, kMinTaskBytes / std::max<int64_t>(1, bytes_per_output));
  return std::max<int64_t>(kAlign, (block + kAlign - 1) / kAlign * kAlign);
}
}  // namespace

void linear(ThreadPool& pool, const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy) {
  const auto& k = kernels::best_kernels();
  const int64_t rows = W.rows;
  const int64_t block = block_size(rows, W.cols * int64_t(dtype_size(W.dtype)), pool.size());
  const int64_t n_tasks = (rows + block - 1) / block;
  pool.parallel_for(n_tasks, [&](int64_t i) {
    const int64_t r0 = i * block;
    const int64_t r1 = std::min(rows, r0 + block);
    k.gemm_nt(W, X, ldx, T, Y, ldy, r0, r1);
  });
}

void linear(ThreadPool& pool, const MatRef& W, const float* X, int64_t T, float* Y) {
  linear(pool, W, X, W.cols, T, Y, W.rows);
}

void linear_in_out(ThreadPool& pool, const MatRef& W, const float* X, int64_t T, float* Y) {
  const auto& k = kernels::best_kernels();
  const int64_t rows = W.rows, cols = W.cols;
  const int64_t row_bytes = cols * int64_t(dtype_size(W.dtype));
  // Few rows of X (decode): split the weights by rows (the reduction dimension) into chunks that each stream
  // contiguous memory, compute one partial result per chunk and add the partials in chunk order. Splitting by
  // columns instead would read every row in short segments at a large stride, which streams worse. The chunk
  // count depends only on the matrix (not on the thread count), so results do not depend on --threads.
  const int64_t chunks = std::clamp<int64_t>(rows * row_bytes / kRowChunkBytes, 1, kMaxRowChunks);
  if (T <= kRowSplitMaxT && chunks > 1 && pool.size() > 1) {
    const int64_t chunk_rows = (rows + chunks - 1) / chunks;
    // Partials live in a buffer of the calling thread that grows to the largest need once (warm-up) and is
    // reused after that: the decode loop allocates nothing.
    thread_local std::vector<float> partial;
    const size_t need = size_t(chunks * T * cols);
    if (partial.size() < need) partial.resize(need);
    float* P = partial.data();
    pool.parallel_for(chunks, [&](int64_t i) {
      const int64_t r0 = i * chunk_rows;
      const int64_t n = std::min(rows, r0 + chunk_rows) - r0;
      float* Yp = P + size_t(i * T * cols);
      if (n <= 0) {
        std::fill(Yp, Yp + T * cols, 0.f);
        return;
      }
      k.gemm_nn(W.row_block(r0, n), X + r0, rows, T, Yp, cols, 0, cols);
    });
    const int64_t col_block = std::max<int64_t>(kAlign, (cols / pool.size() + kAlign - 1) / kAlign * kAlign);
    const int64_t n_col_tasks = (cols + col_block - 1) / col_block;
    pool.parallel_for(n_col_tasks, [&](int64_t j) {
      const int64_t c0 = j * col_block, c1 = std::min(cols, c0 + col_block);
      for (int64_t t = 0; t < T; ++t) {
        float* y = Y + t * cols;
        const float* p0 = P + size_t(t * cols);
        for (int64_t c = c0; c < c1; ++c) y[c] = p0[c];
        for (int64_t i = 1; i < chunks; ++i) {
          const float* p = P + size_t((i * T + t) * cols);
          for (int64_t c = c0; c < c1; ++c) y[c] += p[c];
        }
      }
    });
    return;
  }
  // Every task reads all rows of its columns; with fewer tasks per thread each row segment is longer, which
  // streams better (the weights are read in runs of block columns).
  const int64_t block = block_size(cols, rows * int64_t(dtype_size(W.dtype)), std::max(1, pool.size() / 2));
  const int64_t n_tasks = (cols + block - 1) / block;
  pool.parallel_for(n_tasks, [&](int64_t i) {
    const int64_t c0 = i * block;
    const int64_t c1 = std::min(cols, c0 + block);
    k.gemm_nn(W, X, rows, T, Y, cols, c0, c1);
  });
}

void rmsnorm(const float* x, const VecRef& w, float eps, int64_t n, float* y) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  if (w.empty()) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv;
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = w.at(i) * (x[i] * inv);
  }
}

void layernorm(const float* x, const VecRef& w, const VecRef& b, float eps, int64_t n, float* y) {
  double mean = 0.0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= double(n);
  double var = 0.0;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= double(n);
  const double inv = 1.0 / std::sqrt(var + double(eps));
  for (int64_t i = 0; i < n; ++i) {
    float v = float((x[i] - mean) * inv);
    if (!w.empty()) v *= w.at(i);
    if (!b.empty()) v += b.at(i);
    y[i] = v;
  }
}

void add_bias(float* x, const VecRef& b, int64_t n) {
  if (b.empty()) return;
  for (int64_t i = 0; i < n; ++i) x[i] += b.at(i);
}

void clamp(float* x, float c, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::min(c, std::max(-c, x[i]));
}

void silu_mul(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = g[i];
    g[i] = v / (1.f + std::exp(-v)) * u[i];
  }
}

void softmax(float* x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  const float inv = float(1.0 / s);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void rope(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

void to_f32(const void* src, DType dtype, float* dst, int64_t n) { kernels::best_kernels().to_f32(src, dtype, dst, n); }

}  // namespace moep::ops
