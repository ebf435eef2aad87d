#include "model/weights.h"

#include <algorithm>

#include "core/error.h"

namespace moep {

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
}  // namespace

bool WeightBinder::record(const std::string& name, const std::vector<int64_t>& shape) {
  if (index_) return false;
  if (used_.insert(name).second) recorded_.push_back({name, shape});
  return true;
}

const TensorInfo& WeightBinder::get(const std::string& name, const std::vector<int64_t>& shape) {
  const TensorInfo* t = index_->find(name);
  if (!t) fail("checkpoint is missing tensor '", name, "' (expected shape ", shape_str(shape), ")");
  if (t->shape != shape)
    fail("tensor '", name, "' has shape ", t->shape_str(), " but the config implies ", shape_str(shape));
  if (!t->dtype_supported)
    fail("tensor '", name, "' has dtype ", t->dtype_name, "; supported weight dtypes are F32, BF16 and F16");
  used_.insert(name);
  return *t;
}

const void* WeightBinder::placed(const void* mapped) const {
  if (dest_.empty()) return mapped;
  MOEP_ASSERT(ranges_.size() <= dest_.size());  // bound like the binding the copies were made from
  return dest_[ranges_.size() - 1];
}

MatRef WeightBinder::matrix(const std::string& name, int64_t rows, int64_t cols) {
  if (record(name, {rows, cols})) return {};
  const TensorInfo& t = get(name, {rows, cols});
  ranges_.push_back({t.file, t.file_offset, t.nbytes});
  return MatRef{placed(t.data), t.dtype, rows, cols, cols, on_small_pages()};
}

MatRef WeightBinder::matrix_rows(const std::string& name, int64_t total_rows, int64_t cols, int64_t row0,
                                 int64_t n) {
  if (record(name, {total_rows, cols})) return {};
  const TensorInfo& t = get(name, {total_rows, cols});
  MOEP_ASSERT(row0 >= 0 && row0 + n <= total_rows);
  const size_t row_bytes = size_t(cols) * dtype_size(t.dtype);
  ranges_.push_back({t.file, t.file_offset + size_t(row0) * row_bytes, size_t(n) * row_bytes});
  MatRef m{t.data, t.dtype, total_rows, cols, cols, on_small_pages()};
  m = m.row_block(row0, n);
  m.data = placed(m.data);
  return m;
}

MatRef WeightBinder::matrix_cols(const std::string& name, int64_t rows, int64_t total_cols, int64_t col0,
                                 int64_t n) {
  if (record(name, {rows, total_cols})) return {};
  const TensorInfo& t = get(name, {rows, total_cols});
  MOEP_ASSERT(col0 >= 0 && n > 0 && col0 + n <= total_cols);
  if (n == total_cols) {
    ranges_.push_back({t.file, t.file_offset, t.nbytes});
    return MatRef{placed(t.data), t.dtype, rows, total_cols, total_cols, on_small_pages()};
  }
  const size_t es = dtype_size(t.dtype), row_bytes = size_t(total_cols) * es;
  ranges_.push_back({t.file, t.file_offset + size_t(col0) * es, size_t(n) * es, size_t(rows), row_bytes});
  if (!dest_.empty()) return MatRef{placed(nullptr), t.dtype, rows, n, n, on_small_pages()};
  return MatRef{static_cast<const uint8_t*>(t.data) + size_t(col0) * es, t.dtype, rows, n, total_cols,
                on_small_pages()};
}

VecRef WeightBinder::vector(const std::string& name, int64_t n) {
  if (record(name, {n})) return {};
  const TensorInfo& t = get(name, {n});
  ranges_.push_back({t.file, t.file_offset, t.nbytes});
  return VecRef{placed(t.data), t.dtype, n};
}

VecRef WeightBinder::optional_vector(const std::string& name, int64_t n) {
  if (!has(name)) return {};
  return vector(name, n);
}

void WeightBinder::skip(const std::string& name, const std::vector<int64_t>& shape) {
  if (record(name, shape)) return;
  const TensorInfo* t = index_->find(name);
  if (!t) fail("checkpoint is missing tensor '", name, "' (expected shape ", shape_str(shape), ")");
  if (t->shape != shape)
    fail("tensor '", name, "' has shape ", t->shape_str(), " but the config implies ", shape_str(shape));
  used_.insert(name);
}

void WeightBinder::finish() const {
  if (!index_) return;
  std::vector<std::string> unused;
  for (const auto& [name, t] : index_->tensors())
    if (!used_.count(name)) unused.push_back(name);
  if (unused.empty()) return;
  std::string list;
  for (size_t i = 0; i < unused.size() && i < 5; ++i) list += (i ? ", " : "") + ("'" + unused[i] + "'");
  if (unused.size() > 5) list += str_cat(" and ", unused.size() - 5, " more");
  fail("checkpoint has ", unused.size(), " tensor(s) the model does not use: ", list,
       " (wrong model_type, or a checkpoint layout this version does not know)");
}

size_t WeightBinder::bytes_read() const {
  size_t n = 0;
  for (const auto& r : ranges_) n += r.total();
  return n;
}

}  // namespace moep
