// Scalar reference kernels: the definition every fast kernel is tested against.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/quant.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"

namespace moep::kernels {

namespace {

inline float load(const uint8_t* row, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return reinterpret_cast<const float*>(row)[i];
    case DType::BF16: return bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[i]);
    case DType::F16: return f16_to_f32(reinterpret_cast<const uint16_t*>(row)[i]);
    default: MOEP_ASSERT(false, "load: quantized weights are read a block at a time");
  }
  return 0.f;
}

// A quantized row dequantized to f32 in a buffer of the calling thread (grown once, then reused).
const float* dequantized_row(const uint8_t* row, DType t, int64_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < size_t(n)) buf.resize(size_t(n));
  dequantize_row(ggml_type_of(t), row, buf.data(), n);
  return buf.data();
}

void gemm_nt_ref(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                 int64_t r1) {
  if (dtype_is_quantized(W.dtype)) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* w = dequantized_row(W.row_ptr(r), W.dtype, W.cols);
      for (int64_t t = 0; t < T; ++t) {
        const float* x = X + t * ldx;
        float acc = 0.f;
        for (int64_t c = 0; c < W.cols; ++c) acc += w[c] * x[c];
        Y[t * ldy + r] = acc;
      }
    }
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = W.row_ptr(r);
    for (int64_t t = 0; t < T; ++t) {
      const float* x = X + t * ldx;
      float acc = 0.f;
      for (int64_t c = 0; c < W.cols; ++c) acc += load(w, W.dtype, c) * x[c];
      Y[t * ldy + r] = acc;
    }
  }
}

void gemm_nn_ref(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t c0,
                 int64_t c1) {
  MOEP_ASSERT(!dtype_is_quantized(W.dtype), "gemm_nn: quantized weights are stored [out, in] and read by gemm_nt");
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = c0; c < c1; ++c) Y[t * ldy + c] = 0.f;
  for (int64_t r = 0; r < W.rows; ++r) {
    const uint8_t* w = W.row_ptr(r);
    for (int64_t t = 0; t < T; ++t) {
      const float xv = X[t * ldx + r];
      float* y = Y + t * ldy;
      for (int64_t c = c0; c < c1; ++c) y[c] += xv * load(w, W.dtype, c);
    }
  }
}

void to_f32_ref(const void* src, DType dtype, float* dst, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(src);
  if (dtype_is_quantized(dtype)) {
    dequantize_row(ggml_type_of(dtype), p, dst, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = load(p, dtype, i);
}

}  // namespace

const KernelTable& reference_kernels() {
  static const KernelTable table{"scalar", gemm_nt_ref, gemm_nn_ref, to_f32_ref, /*quantized=*/true};
  return table;
}

void attention_head_reference(const float* q, const SequenceKv& kv, int64_t kv_head, int64_t n_positions,
                              int64_t head_dim, float scale, float* out, float sink) {
  auto score = [&](int64_t j) {
    const float* k = kv.keys + j * kv.row_stride + kv_head * head_dim;
    double dot = 0;
    for (int64_t i = 0; i < head_dim; ++i) dot += double(q[i]) * double(k[i]);
    return double(scale) * dot;
  };
  double max_score = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n_positions; ++j) max_score = std::max(max_score, score(j));
  const bool has_sink = sink != -std::numeric_limits<float>::infinity();
  if (has_sink) max_score = std::max(max_score, double(sink));
  std::vector<double> sum(size_t(head_dim), 0.0);
  double weight_total = has_sink ? std::exp(double(sink) - max_score) : 0.0;
  for (int64_t j = 0; j < n_positions; ++j) {
    const double w = std::exp(score(j) - max_score);
    const float* v = kv.values + j * kv.row_stride + kv_head * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) sum[size_t(i)] += w * double(v[i]);
    weight_total += w;
  }
  for (int64_t i = 0; i < head_dim; ++i) out[i] = float(sum[size_t(i)] / weight_total);
}

}  // namespace moep::kernels
