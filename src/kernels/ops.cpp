#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
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
  const auto& k = kernels::kernels_for(W.dtype);
  const int64_t rows = W.rows;
  const int64_t block = block_size(rows, int64_t(dtype_row_bytes(W.dtype, W.cols)), pool.size());
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

namespace {

// The row-split plan of linear_in_out for few rows of X (decode): the weights split by rows (the reduction
// dimension) into chunks that each stream contiguous memory, one partial result per chunk, the partials added in
// chunk order. Splitting by columns instead would read every row in short segments at a large stride, which
// streams worse. The chunk count depends only on the matrix (not on the thread count), so results do not
// depend on --threads.
int64_t chunks_of(int64_t in, int64_t out, DType dt) {
  return std::clamp<int64_t>(in * int64_t(dtype_row_bytes(dt, out)) / kRowChunkBytes, 1, kMaxRowChunks);
}
// 0: this product takes the column split instead.
int64_t row_chunks(const MatRef& W, int64_t T, int threads) {
  const int64_t chunks = chunks_of(W.rows, W.cols, W.dtype);
  return T <= kRowSplitMaxT && chunks > 1 && threads > 1 ? chunks : 0;
}

// Chunk i of a row-split product: partial [T, cols] at P.
void in_out_chunk(const kernels::KernelTable& k, const LinearJob& j, int64_t chunks, int64_t i, float* P) {
  const int64_t rows = j.W.rows, cols = j.W.cols;
  const int64_t chunk_rows = (rows + chunks - 1) / chunks;
  const int64_t r0 = i * chunk_rows;
  const int64_t n = std::min(rows, r0 + chunk_rows) - r0;
  float* Yp = P + size_t(i * j.T * cols);
  if (n <= 0) {
    std::fill(Yp, Yp + j.T * cols, 0.f);
    return;
  }
  k.gemm_nn(j.W.row_block(r0, n), j.X + r0, rows, j.T, Yp, cols, 0, cols);
}

// Y[:, c0:c1) of a row-split product = the sum of its partials at P, in chunk order.
void in_out_sum(const LinearJob& j, int64_t chunks, const float* P, int64_t c0, int64_t c1) {
  const int64_t cols = j.W.cols;
  for (int64_t t = 0; t < j.T; ++t) {
    float* y = j.Y + t * cols;
    const float* p0 = P + size_t(t * cols);
    for (int64_t c = c0; c < c1; ++c) y[c] = p0[c];
    for (int64_t i = 1; i < chunks; ++i) {
      const float* p = P + size_t((i * j.T + t) * cols);
      for (int64_t c = c0; c < c1; ++c) y[c] += p[c];
    }
  }
}

int64_t sum_column_block(int64_t cols, int threads) {
  return std::max<int64_t>(kAlign, (cols / threads + kAlign - 1) / kAlign * kAlign);
}

// The job whose tasks [off[j], off[j + 1]) hold `task` (off ascending, off[0] = 0).
int64_t job_of(const int64_t* off, int64_t n_jobs, int64_t task) {
  return int64_t(std::upper_bound(off + 1, off + n_jobs + 1, task) - (off + 1));
}

// The column split of linear_in_out (many rows of X, small matrices, one thread): every task reads all rows of
// its columns; with fewer tasks per thread each row segment is longer, which streams better.
void in_out_by_columns(ThreadPool& pool, const kernels::KernelTable& k, const LinearJob& job) {
  const int64_t rows = job.W.rows, cols = job.W.cols;
  const int64_t block = block_size(cols, int64_t(dtype_row_bytes(job.W.dtype, rows)), std::max(1, pool.size() / 2));
  const int64_t n_tasks = (cols + block - 1) / block;
  pool.parallel_for(n_tasks, [&](int64_t i) {
    const int64_t c0 = i * block;
    const int64_t c1 = std::min(cols, c0 + block);
    k.gemm_nn(job.W, job.X, rows, job.T, job.Y, cols, c0, c1);
  });
}

// Row-split jobs [0, n) in one region for their chunks and one for their sums. off and sum_off have n + 1
// entries; P holds every job's partials, one after the other (part_off[j] floats in).
void in_out_fused(ThreadPool& pool, const kernels::KernelTable& k, const LinearJob* jobs, int64_t n,
                  int64_t* off, int64_t* sum_off, size_t* part_off, float* P) {
  const int threads = pool.size();
  off[0] = sum_off[0] = 0;
  part_off[0] = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t chunks = row_chunks(jobs[j].W, jobs[j].T, threads);
    const int64_t cols = jobs[j].W.cols, cb = sum_column_block(cols, threads);
    off[j + 1] = off[j] + chunks;
    sum_off[j + 1] = sum_off[j] + (cols + cb - 1) / cb;
    part_off[j + 1] = part_off[j] + size_t(chunks * jobs[j].T * cols);
  }
  pool.parallel_for(off[n], [&](int64_t task) {
    const int64_t j = job_of(off, n, task);
    in_out_chunk(k, jobs[j], off[j + 1] - off[j], task - off[j], P + part_off[j]);
  });
  pool.parallel_for(sum_off[n], [&](int64_t task) {
    const int64_t j = job_of(sum_off, n, task);
    const int64_t cols = jobs[j].W.cols, cb = sum_column_block(cols, threads);
    const int64_t c0 = (task - sum_off[j]) * cb;
    in_out_sum(jobs[j], off[j + 1] - off[j], P + part_off[j], c0, std::min(cols, c0 + cb));
  });
}

}  // namespace

void ManyScratch::reserve(int64_t max_jobs, size_t partial_floats) {
  // Task offsets of up to max_jobs jobs, twice (linear_in_out_many: chunk tasks and sum tasks).
  offsets_.assign(size_t(2 * (std::max<int64_t>(1, max_jobs) + 1)), 0);
  partial_.assign(partial_floats, 0.f);
}

size_t in_out_partial_floats(int64_t in, int64_t out, DType dt, int64_t T) {
  const int64_t chunks = chunks_of(in, out, dt);
  return T <= kRowSplitMaxT && chunks > 1 ? size_t(chunks * T * out) : 0;
}

void linear_in_out(ThreadPool& pool, const MatRef& W, const float* X, int64_t T, float* Y) {
  const auto& k = kernels::best_kernels();
  const LinearJob job{W, X, T, Y};
  const int64_t chunks = row_chunks(W, T, pool.size());
  if (chunks == 0) {
    in_out_by_columns(pool, k, job);
    return;
  }
  // Partials in a buffer of the calling thread that grows to the largest need once (warm-up) and is reused
  // after that.
  thread_local std::vector<float> partial;
  const size_t need = size_t(chunks * T * W.cols);
  if (partial.size() < need) partial.resize(need);
  int64_t off[2], sum_off[2];
  size_t part_off[2];
  in_out_fused(pool, k, &job, 1, off, sum_off, part_off, partial.data());
}

void linear_many(ThreadPool& pool, const LinearJob* jobs, int64_t n_jobs, ManyScratch& scratch) {
  const int64_t cap = scratch.max_jobs();
  MOEP_ASSERT(cap >= 1, "linear_many: the scratch was not reserved");
  int64_t* off = scratch.offsets_.data();
  for (int64_t first = 0; first < n_jobs; first += cap) {
    const LinearJob* group = jobs + first;
    const int64_t n = std::min(cap, n_jobs - first);
    if (n == 1) {
      linear(pool, group[0].W, group[0].X, group[0].T, group[0].Y);
      continue;
    }
    // Task offsets and blocks as linear() would cut each job.
    off[0] = 0;
    for (int64_t j = 0; j < n; ++j) {
      const MatRef& W = group[j].W;
      const int64_t block = block_size(W.rows, int64_t(dtype_row_bytes(W.dtype, W.cols)), pool.size());
      off[j + 1] = off[j] + (W.rows + block - 1) / block;
    }
    pool.parallel_for(off[n], [&](int64_t task) {
      const int64_t j = job_of(off, n, task);
      const LinearJob& job = group[j];
      const MatRef& W = job.W;
      const auto& k = kernels::kernels_for(W.dtype);
      const int64_t block = block_size(W.rows, int64_t(dtype_row_bytes(W.dtype, W.cols)), pool.size());
      const int64_t r0 = (task - off[j]) * block;
      k.gemm_nt(W, job.X, W.cols, job.T, job.Y, W.rows, r0, std::min(W.rows, r0 + block));
    });
  }
}

void swiglu(ThreadPool& pool, const MatRef& gate, const MatRef& up, const MatRef& down, const float* x, int64_t T,
            float* g, float* u, ManyScratch& many, float* out) {
  const LinearJob gate_up[2] = {{gate, x, T, g}, {up, x, T, u}};
  linear_many(pool, gate_up, 2, many);
  silu_mul(g, u, T * gate.rows);
  linear(pool, down, g, T, out);
}

void linear_in_out_many(ThreadPool& pool, const LinearJob* jobs, int64_t n_jobs, ManyScratch& scratch) {
  const auto& k = kernels::best_kernels();
  const int threads = pool.size();
  const int64_t cap = scratch.max_jobs();
  MOEP_ASSERT(cap >= 1, "linear_in_out_many: the scratch was not reserved");
  // Task offsets of up to cap jobs: chunk tasks, then sum tasks (cap + 1 entries each).
  int64_t* off = scratch.offsets_.data();
  int64_t* sum_off = off + cap + 1;
  // Row-split jobs run fused, in groups whose partials fit the scratch; the others by columns, one by one.
  int64_t i = 0;
  while (i < n_jobs) {
    if (row_chunks(jobs[i].W, jobs[i].T, threads) == 0) {
      in_out_by_columns(pool, k, jobs[i]);
      ++i;
      continue;
    }
    // The longest run of row-split jobs from i that fits (at least one: reserve() promised room for it).
    size_t need = 0;
    int64_t n = 0;
    while (i + n < n_jobs && n < cap) {
      const LinearJob& j = jobs[i + n];
      const int64_t chunks = row_chunks(j.W, j.T, threads);
      if (chunks == 0) break;
      const size_t more = size_t(chunks * j.T * j.W.cols);
      if (need + more > scratch.partial_.size()) break;
      need += more;
      ++n;
    }
    MOEP_ASSERT(n > 0, "linear_in_out_many: ", jobs[i].W.rows, "x", jobs[i].W.cols,
                " needs more partials than the scratch reserved (", scratch.partial_.size(), " floats)");
    // The jobs' partial offsets, on the stack: groups of at most kGroup jobs.
    constexpr int64_t kGroup = 64;
    n = std::min(n, kGroup);
    size_t part_off[kGroup + 1];
    in_out_fused(pool, k, jobs + i, n, off, sum_off, part_off, scratch.partial_.data());
    i += n;
  }
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

void clamped_swiglu(float* g, const float* u, int64_t n, float alpha, float limit) {
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::min(g[i], limit), b = std::min(limit, std::max(-limit, u[i]));
    g[i] = (b + 1.f) * (a / (1.f + std::exp(-alpha * a)));
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

size_t attention_scratch_floats(int64_t rows, const kernels::AttentionShape& shape) {
  return size_t(rows * shape.n_heads * shape.head_dim);
}

void attention(ThreadPool& pool, const kernels::AttentionShape& shape, const float* q, const AttentionRow* rows,
               int64_t T, float* scratch, float* out, const float* sinks) {
  constexpr int64_t kStackAccFloats = 1024;
  const int64_t H = shape.n_heads, hd = shape.head_dim, qd = shape.q_dim(), group = shape.group();
  pool.parallel_for(T * H, [&](int64_t task) {
    const int64_t t = task / H, h = task % H;
    const AttentionRow& r = rows[t];
    // The accumulator on this thread's stack while it fits: it stays in L1 from task to task (a slice of the
    // caller's scratch is cold memory for every task, which made prefill's attention 15-25% slower).
    float stack_acc[kStackAccFloats];
    float* acc = hd <= kStackAccFloats ? stack_acc : scratch + task * hd;
    kernels::attention_head(q + t * qd + h * hd, r.kv, h / group, r.n_positions, hd, shape.scale, acc,
                            out + t * qd + h * hd,
                            sinks ? sinks[h] : -std::numeric_limits<float>::infinity());
  });
}

void to_f32(const void* src, DType dtype, float* dst, int64_t n) { kernels::kernels_for(dtype).to_f32(src, dtype, dst, n); }

}  // namespace moep::ops
