// Views of weight matrices and vectors. A view owns nothing: the bytes live in a memory-mapped checkpoint
// (or an arena) that outlives it.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace moep {

// A row-major matrix [rows, cols] of `dtype` elements; row r starts at data + r * row_stride elements.
struct MatRef {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;  // in elements
  // The bytes sit on 4 KiB pages (read in place from the page cache, or anonymous memory without huge pages)
  // rather than on 2 MiB ones. There the hardware prefetchers stop at every page, and the AVX-512 streaming
  // kernels prefetch twice as far ahead of each stream (2 KiB instead of 1 KiB: DBRX-dimension decode on Zen 4
  // from the page cache, median step 132-140 ms against 151-170; on 2 MiB pages 1 KiB was the faster). Only a
  // tuning: results do not change. Set where the bytes are placed (the weight binder, calibration's buffers)
  // and carried by every view made from this one.
  bool small_pages = false;

  bool empty() const { return data == nullptr; }
  const uint8_t* row_ptr(int64_t r) const {
    return static_cast<const uint8_t*>(data) + size_t(r) * dtype_row_bytes(dtype, row_stride);
  }
  // Rows [r0, r0 + n) as a view.
  MatRef row_block(int64_t r0, int64_t n) const {
    MatRef m = *this;
    m.data = row_ptr(r0);
    m.rows = n;
    return m;
  }
  int64_t bytes() const { return rows * int64_t(dtype_row_bytes(dtype, cols)); }
};

// A vector of `dtype` elements (norm weights, biases).
struct VecRef {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t size = 0;
  bool empty() const { return data == nullptr; }
  float at(int64_t i) const {
    switch (dtype) {
      case DType::F32: return static_cast<const float*>(data)[i];
      case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
      case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
      default: break;  // vectors (norms, biases) are never block-quantized: the loader converts them
    }
    return 0.f;
  }
  // Elements [first, first + n) as a view (a rank's part of a bias or norm that is split with its matrix).
  VecRef slice(int64_t first, int64_t n) const {
    if (empty()) return {};
    return {static_cast<const uint8_t*>(data) + dtype_row_bytes(dtype, first), dtype, n};
  }
};

}  // namespace moep
