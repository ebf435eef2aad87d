// Threaded operations of the forward pass, built on the kernels of kernels.h. All activations are f32,
// row-major, [tokens, features].
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"

namespace moep::ops {

// Y[T, W.rows] = X[T, W.cols] · Wᵀ   (W is [out, in], as torch.nn.Linear stores it). Threads split rows.
void linear(ThreadPool& pool, const MatRef& W, const float* X, int64_t T, float* Y);
// The same with explicit leading dimensions (X is [T, ldx], Y is [T, ldy]).
void linear(ThreadPool& pool, const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy);
// Y[T, W.cols] = X[T, W.rows] · W     (W is [in, out]). Threads split the rows into chunks for up to 8 rows
// of X on 2+ threads (partials summed in chunk order), else the columns.
void linear_in_out(ThreadPool& pool, const MatRef& W, const float* X, int64_t T, float* Y);

// Several independent products in one parallel region: for each job, Y = X · Wᵀ (linear_many, X [T, W.cols],
// Y [T, W.rows]) or Y = X · W (linear_in_out_many, X [T, W.rows], Y [T, W.cols]), with the rows of X and Y
// packed. The results are bit for bit those of one linear / linear_in_out call per job (same blocks, same order
// of additions); the threads just never wait between jobs: one region instead of one per job, so a thread that
// finishes its share of one matrix goes on with the next (decode runs dozens of such matrices per token: an
// expert's gate and up, the experts of a layer, q, k and v). The jobs' outputs must not overlap their inputs or
// each other.
struct LinearJob {
  MatRef W;
  const float* X = nullptr;
  int64_t T = 0;
  float* Y = nullptr;
};

// The working memory of the fused calls, owned by the caller and sized once (reserve), so that the calls
// allocate nothing: task offsets for up to max_jobs jobs per region, and the partial results of
// linear_in_out's row split for few rows of X. Calls with more jobs, or whose partials would not fit, run as
// several consecutive regions (same results).
class ManyScratch {
 public:
  // partial_floats: at least in_out_partial_floats() of the largest single job the calls will see.
  void reserve(int64_t max_jobs, size_t partial_floats);
  int64_t max_jobs() const { return int64_t(offsets_.size()) / 2 - 1; }

 private:
  friend void linear_many(ThreadPool&, const LinearJob*, int64_t, ManyScratch&);
  friend void linear_in_out_many(ThreadPool&, const LinearJob*, int64_t, ManyScratch&);
  std::vector<int64_t> offsets_;
  std::vector<float> partial_;
};

// The partial floats linear_in_out keeps for W [in, out] of dtype dt and T rows of X: chunks × T × out when it
// splits the rows (T ≤ 8, 8 MiB of weights or more, several threads), else 0.
size_t in_out_partial_floats(int64_t in, int64_t out, DType dt, int64_t T);

void linear_many(ThreadPool& pool, const LinearJob* jobs, int64_t n_jobs, ManyScratch& scratch);
void linear_in_out_many(ThreadPool& pool, const LinearJob* jobs, int64_t n_jobs, ManyScratch& scratch);

// out [T, down.rows] = down · (silu(gate · x) ⊙ (up · x)): a SwiGLU MLP on x [T, gate.cols]. g and u are scratch of
// [T, gate.rows] each (overwritten); gate and up run in one region of `many` (2 jobs).
void swiglu(ThreadPool& pool, const MatRef& gate, const MatRef& up, const MatRef& down, const float* x, int64_t T,
            float* g, float* u, ManyScratch& many, float* out);

// y = x / sqrt(mean(x²) + eps) · w           (w may be empty: no scale)
void rmsnorm(const float* x, const VecRef& w, float eps, int64_t n, float* y);
// y = (x - mean) / sqrt(var + eps) · w + b   (w, b may be empty)
void layernorm(const float* x, const VecRef& w, const VecRef& b, float eps, int64_t n, float* y);
// x[i] += b[i]
void add_bias(float* x, const VecRef& b, int64_t n);
// x[i] = clamp(x[i], -c, c)
void clamp(float* x, float c, int64_t n);
// g[i] = silu(g[i]) · u[i]
void silu_mul(float* g, const float* u, int64_t n);
// gpt-oss's clamped SwiGLU: with a = min(g[i], limit) and b = clamp(u[i], -limit, limit),
// g[i] = (b + 1) · a · sigmoid(alpha · a).
void clamped_swiglu(float* g, const float* u, int64_t n, float alpha, float limit);
// In-place softmax over n values (f32, max-subtracted).
void softmax(float* x, int64_t n);
// Rotates pairs (i, i + d/2) of each head of x [n_heads, head_dim] by angle pos · inv_freq[i]
// (the "rotate_half" form of transformers' apply_rotary_pos_emb). cos/sin are [head_dim/2].
void rope(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin);

// One query row of ops::attention: the sequence it belongs to and how many of its first positions it attends to
// (causal: its own position + 1).
struct AttentionRow {
  kernels::SequenceKv kv;
  int64_t n_positions = 0;
};
// The scratch floats ops::attention needs for `rows` rows: one head_dim accumulator per (row, query head), since
// the tasks of a region run concurrently.
size_t attention_scratch_floats(int64_t rows, const kernels::AttentionShape& shape);
// out [T, q_dim] = attention of q [T, q_dim] (row t over rows[t]), with one kernels::attention_head task per
// (row, query head) spread over the pool; results do not depend on the thread count. scratch: at least
// attention_scratch_floats(T, shape) floats the caller owns, so that calls allocate nothing.
// sinks: [n_heads] sink logits of the query heads (gpt-oss; see kernels::attention_head), or nullptr for none.
void attention(ThreadPool& pool, const kernels::AttentionShape& shape, const float* q, const AttentionRow* rows,
               int64_t T, float* scratch, float* out, const float* sinks = nullptr);

// dst[i] = float(src[i]) for a vector of any dtype.
void to_f32(const void* src, DType dtype, float* dst, int64_t n);

}  // namespace moep::ops
