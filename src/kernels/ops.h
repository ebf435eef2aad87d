// Threaded operations of the forward pass, built on the kernels of kernels.h. All activations are f32,
// row-major, [tokens, features].
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace moep::ops {

// Y[T, W.rows] = X[T, W.cols] · Wᵀ   (W is [out, in], as torch.nn.Linear stores it). Threads split rows.
void linear(ThreadPool& pool, const MatRef& W, const float* X, int64_t T, float* Y);
// The same with explicit leading dimensions (X is [T, ldx], Y is [T, ldy]).
void linear(ThreadPool& pool, const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy);
// Y[T, W.cols] = X[T, W.rows] · W     (W is [in, out]). Threads split columns.
void linear_in_out(ThreadPool& pool, const MatRef& W, const float* X, int64_t T, float* Y);

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
// In-place softmax over n values (f32, max-subtracted).
void softmax(float* x, int64_t n);
// Rotates pairs (i, i + d/2) of each head of x [n_heads, head_dim] by angle pos · inv_freq[i]
// (the "rotate_half" form of transformers' apply_rotary_pos_emb). cos/sin are [head_dim/2].
void rope(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin);

// dst[i] = float(src[i]) for a vector of any dtype.
void to_f32(const void* src, DType dtype, float* dst, int64_t n);

}  // namespace moep::ops
