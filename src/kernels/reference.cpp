// Scalar reference kernels: the definition every fast kernel is tested against.
#include "kernels/kernels.h"

namespace moep::kernels {

namespace {

inline float load(const uint8_t* row, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return reinterpret_cast<const float*>(row)[i];
    case DType::BF16: return bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[i]);
    case DType::F16: return f16_to_f32(reinterpret_cast<const uint16_t*>(row)[i]);
  }
  return 0.f;
}

void gemm_nt_ref(const MatRef& W, const float* X, int64_t ldx, int64_t T, float* Y, int64_t ldy, int64_t r0,
                 int64_t r1) {
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
  for (int64_t i = 0; i < n; ++i) dst[i] = load(p, dtype, i);
}

}  // namespace

const KernelTable& reference_kernels() {
  static const KernelTable table{"scalar", gemm_nt_ref, gemm_nn_ref, to_f32_ref};
  return table;
}

}  // namespace moep::kernels
