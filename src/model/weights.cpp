#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/quant.h"

namespace moep {

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
// All n elements of a vector tensor as f32 (any dtype: whole blocks when quantized).
void vector_to_f32(const TensorInfo& t, float* out) {
  const int64_t n = t.numel();
  if (dtype_is_quantized(t.dtype)) {
    dequantize_row(ggml_type_of(t.dtype), t.data, out, n);
    return;
  }
  const VecRef v{t.data, t.dtype, n};
  for (int64_t i = 0; i < n; ++i) out[i] = v.at(i);
}

}  // namespace

bool WeightBinder::record(const std::string& name, const std::vector<int64_t>& shape) {
  if (tensors_) return false;
  if (used_.insert(name).second) recorded_.push_back({name, shape});
  return true;
}

int WeightBinder::ggml_type_of_tensor(const std::string& name) const {
  if (!tensors_) return -1;
  auto it = tensors_->find(name);
  return it == tensors_->end() ? -1 : it->second.ggml_type;
}

const TensorInfo& WeightBinder::get(const std::string& name, const std::vector<int64_t>& shape) {
  auto it = tensors_->find(name);
  if (it == tensors_->end()) fail("checkpoint is missing tensor '", name, "' (expected shape ", shape_str(shape), ")");
  const TensorInfo& t = it->second;
  if (t.shape != shape)
    fail("tensor '", name, "' has shape ", t.shape_str(), " but the config implies ", shape_str(shape));
  if (t.dtype_name == "F8_E4M3" && !t.dtype_supported) {
    used_.insert(name);
    return dequantized_fp8(t);
  }
  if (!t.dtype_supported && t.ggml_type >= 0)
    fail("tensor '", name, "' is ", t.dtype_name, ", which moep decodes only where it converts a tensor at load ",
         "(deepseek2's attn_k_b and attn_v_b); its kernels read f32, f16, bf16, q8_0, q4_0, q4_K, q5_K, q6_K and "
         "mxfp4");
  if (!t.dtype_supported)
    fail("tensor '", name, "' has dtype ", t.dtype_name, "; supported weight dtypes are F32, BF16 and F16");
  used_.insert(name);
  return t;
}

float fp8_e4m3_to_f32(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 15, mant = b & 7;
  float v;
  if (exp == 15 && mant == 7)
    v = NAN;
  else if (exp == 0)
    v = std::ldexp(float(mant), -9);  // subnormal: mant/8 · 2^-6
  else
    v = std::ldexp(float(8 + mant), exp - 10);  // (1 + mant/8) · 2^(exp-7)
  return sign ? -v : v;
}

const TensorInfo& WeightBinder::dequantized_fp8(const TensorInfo& t) {
  if (auto it = fp8_infos_.find(t.name); it != fp8_infos_.end()) return it->second;
  if (t.shape.size() != 2) fail("tensor '", t.name, "' is float8_e4m3fn of shape ", t.shape_str(), "; moep reads block-FP8 matrices only");
  const std::string scale_name = t.name + "_scale_inv";
  const int64_t rows = t.shape[0], cols = t.shape[1], blk = 128;
  const std::vector<int64_t> scale_shape = {(rows + blk - 1) / blk, (cols + blk - 1) / blk};
  auto sit = tensors_->find(scale_name);
  if (sit == tensors_->end())
    fail("tensor '", t.name, "' is float8_e4m3fn but the checkpoint has no '", scale_name,
         "' (f32 ", shape_str(scale_shape), ", one scale per 128x128 block)");
  const TensorInfo& sc = sit->second;
  if (sc.dtype_name != "F32" || sc.shape != scale_shape)
    fail("tensor '", scale_name, "' is ", sc.dtype_name, " ", sc.shape_str(), "; expected F32 ", shape_str(scale_shape),
         " (one scale per 128x128 block of ", t.shape_str(), ")");
  used_.insert(scale_name);
  MOEP_ASSERT(fp8_dtype_ == DType::F32 || fp8_dtype_ == DType::BF16);
  const size_t n = size_t(rows * cols), elem = dtype_size(fp8_dtype_);
  bool fresh = false;
  std::vector<float>& out = converted(t.name, (n * elem + 3) / 4, &fresh);
  if (fresh) {
    const auto* scales = reinterpret_cast<const float*>(sc.data);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        float s;
        std::memcpy(&s, scales + (r / blk) * scale_shape[1] + c / blk, sizeof(float));
        const float v = fp8_e4m3_to_f32(t.data[r * cols + c]) * s;
        if (fp8_dtype_ == DType::F32)
          out[size_t(r * cols + c)] = v;
        else
          reinterpret_cast<uint16_t*>(out.data())[r * cols + c] = f32_to_bf16(v);
      }
  }
  TensorInfo d = t;
  d.dtype_name = dtype_name(fp8_dtype_);
  d.dtype_supported = true;
  d.dtype = fp8_dtype_;
  d.data = reinterpret_cast<const uint8_t*>(out.data());
  d.nbytes = n * elem;
  d.file = nullptr;  // in memory: no range to prefault or relocate
  d.file_offset = 0;
  return fp8_infos_.emplace(t.name, std::move(d)).first->second;
}

std::vector<int64_t> WeightBinder::shape_of(const std::string& name) const {
  if (!tensors_) return {};
  auto it = tensors_->find(name);
  return it == tensors_->end() ? std::vector<int64_t>{} : it->second.shape;
}

const void* WeightBinder::placed(const void* mapped) const {
  if (dest_.empty()) return mapped;
  MOEP_ASSERT(ranges_.size() <= dest_.size());  // bound like the binding the copies were made from
  return dest_[ranges_.size() - 1];
}

MatRef WeightBinder::rows_of(const TensorInfo& t, int64_t base_row, int64_t rows, int64_t cols, int64_t row0,
                             int64_t n) {
  MOEP_ASSERT(row0 >= 0 && row0 + n <= rows);
  const size_t row_bytes = dtype_row_bytes(t.dtype, cols);
  const size_t offset = size_t(base_row + row0) * row_bytes;
  if (!t.file) return MatRef{t.data + offset, t.dtype, n, cols, cols, true};  // converted at load
  ranges_.push_back({t.file, t.file_offset + offset, size_t(n) * row_bytes});
  return MatRef{placed(t.data + offset), t.dtype, n, cols, cols, on_small_pages()};
}

MatRef WeightBinder::cols_of(const TensorInfo& t, int64_t base_row, int64_t rows, int64_t total_cols, int64_t col0,
                             int64_t n) {
  MOEP_ASSERT(col0 >= 0 && n > 0 && col0 + n <= total_cols);
  if (n == total_cols) return rows_of(t, base_row, rows, total_cols, 0, rows);
  const int64_t block = dtype_block_weights(t.dtype);
  if (col0 % block != 0 || n % block != 0)
    fail("tensor '", t.name, "' holds rows of ", total_cols, " ", dtype_name(t.dtype), " weights in blocks of ", block,
         "; this rank's slice of the ffn dimension, columns [", col0, ", ", col0 + n,
         "), does not start and end on a block boundary, and moep does not cut blocks: a split placement must cut ",
         "this model's ffn dimensions at multiples of ", block, " (ExpertPlacement::set_ffn_block, which the engine ",
         "sets from the file), or use --placement contiguous or round-robin (whole experts per rank)");
  const size_t row_bytes = dtype_row_bytes(t.dtype, total_cols), col_bytes = dtype_row_bytes(t.dtype, col0);
  const size_t base = size_t(base_row) * row_bytes;
  if (!t.file) return MatRef{t.data + base + col_bytes, t.dtype, rows, n, total_cols, true};  // converted at load
  ranges_.push_back({t.file, t.file_offset + base + col_bytes, dtype_row_bytes(t.dtype, n), size_t(rows), row_bytes});
  if (!dest_.empty()) return MatRef{placed(nullptr), t.dtype, rows, n, n, on_small_pages()};
  return MatRef{t.data + base + col_bytes, t.dtype, rows, n, total_cols, on_small_pages()};
}

MatRef WeightBinder::matrix(const std::string& name, int64_t rows, int64_t cols) {
  return matrix_as(name, rows, cols, {rows, cols});
}

MatRef WeightBinder::matrix_as(const std::string& name, int64_t rows, int64_t cols,
                               const std::vector<int64_t>& stored_shape) {
  if (record(name, stored_shape)) return {};
  return rows_of(get(name, stored_shape), 0, rows, cols, 0, rows);
}

MatRef WeightBinder::matrix_rows(const std::string& name, int64_t total_rows, int64_t cols, int64_t row0,
                                 int64_t n) {
  if (record(name, {total_rows, cols})) return {};
  return rows_of(get(name, {total_rows, cols}), 0, total_rows, cols, row0, n);
}

MatRef WeightBinder::matrix_cols(const std::string& name, int64_t rows, int64_t total_cols, int64_t col0,
                                 int64_t n) {
  if (record(name, {rows, total_cols})) return {};
  return cols_of(get(name, {rows, total_cols}), 0, rows, total_cols, col0, n);
}

MatRef WeightBinder::slab_rows(const std::string& name, int64_t n_experts, int64_t rows, int64_t cols, int64_t e,
                               int64_t row0, int64_t n) {
  if (record(name, {n_experts, rows, cols})) return {};
  MOEP_ASSERT(e >= 0 && e < n_experts);
  return rows_of(get(name, {n_experts, rows, cols}), e * rows, rows, cols, row0, n);
}

MatRef WeightBinder::slab_cols(const std::string& name, int64_t n_experts, int64_t rows, int64_t cols, int64_t e,
                               int64_t col0, int64_t n) {
  if (record(name, {n_experts, rows, cols})) return {};
  MOEP_ASSERT(e >= 0 && e < n_experts);
  return cols_of(get(name, {n_experts, rows, cols}), e * rows, rows, cols, col0, n);
}

std::vector<float>& WeightBinder::converted(const std::string& name, size_t floats, bool* fresh) {
  MOEP_ASSERT(converted_ != nullptr, "tensor '", name, "' needs converting but the binder has no store for it");
  auto [it, inserted] = converted_->try_emplace(name);
  if (inserted) it->second.resize(floats);
  MOEP_ASSERT(it->second.size() == floats);
  *fresh = inserted;
  return it->second;
}

MatRef WeightBinder::matrix_row_permuted(const std::string& name, int64_t rows, int64_t cols,
                                         const std::function<int64_t(int64_t)>& source_row) {
  if (record(name, {rows, cols})) return {};
  const TensorInfo& t = get(name, {rows, cols});
  const size_t row_bytes = dtype_row_bytes(t.dtype, cols);
  bool fresh = false;
  std::vector<float>& out = converted(name, (size_t(rows) * row_bytes + 3) / 4, &fresh);
  auto* dst = reinterpret_cast<uint8_t*>(out.data());
  if (fresh)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = source_row(r);
      MOEP_ASSERT(s >= 0 && s < rows);
      std::memcpy(dst + size_t(r) * row_bytes, t.data + size_t(s) * row_bytes, row_bytes);
    }
  return MatRef{dst, t.dtype, rows, cols, cols, true};
}

VecRef WeightBinder::vector_permuted(const std::string& name, int64_t n,
                                     const std::function<int64_t(int64_t)>& source_row) {
  if (record(name, {n})) return {};
  const TensorInfo& t = get(name, {n});
  bool fresh = false;
  std::vector<float>& out = converted(name, size_t(n), &fresh);
  if (fresh) {
    std::vector<float> all(static_cast<size_t>(n));
    vector_to_f32(t, all.data());
    for (int64_t i = 0; i < n; ++i) out[size_t(i)] = all[size_t(source_row(i))];
  }
  return VecRef{out.data(), DType::F32, n};
}

VecRef WeightBinder::vector(const std::string& name, int64_t n) {
  if (record(name, {n})) return {};
  const TensorInfo& t = get(name, {n});
  if (dtype_is_quantized(t.dtype)) {
    bool fresh = false;
    std::vector<float>& out = converted(name, size_t(n), &fresh);
    if (fresh) vector_to_f32(t, out.data());
    return VecRef{out.data(), DType::F32, n};
  }
  ranges_.push_back({t.file, t.file_offset, t.nbytes});
  return VecRef{placed(t.data), t.dtype, n};
}

VecRef WeightBinder::optional_vector(const std::string& name, int64_t n) {
  if (!has(name)) return {};
  return vector(name, n);
}

void WeightBinder::skip(const std::string& name, const std::vector<int64_t>& shape) {
  if (record(name, shape)) return;
  auto it = tensors_->find(name);
  const TensorInfo* t = it == tensors_->end() ? nullptr : &it->second;
  if (!t) fail("checkpoint is missing tensor '", name, "' (expected shape ", shape_str(shape), ")");
  if (t->shape != shape)
    fail("tensor '", name, "' has shape ", t->shape_str(), " but the config implies ", shape_str(shape));
  used_.insert(name);
  // A block-FP8 tensor's scales go with it (another rank dequantizes them).
  if (t->dtype_name == "F8_E4M3" && has(name + "_scale_inv")) used_.insert(name + "_scale_inv");
}

const TensorInfo* WeightBinder::tensor(const std::string& name, const std::vector<int64_t>& shape,
                                       const char* dtype_name) {
  if (record(name, shape)) return nullptr;
  if (!dtype_name) return &get(name, shape);
  auto it = tensors_->find(name);
  if (it == tensors_->end())
    fail("checkpoint is missing tensor '", name, "' (expected ", dtype_name, " ", shape_str(shape), ")");
  const TensorInfo& t = it->second;
  if (t.dtype_name != dtype_name)
    fail("tensor '", name, "' has dtype ", t.dtype_name, "; expected ", dtype_name);
  if (t.shape != shape)
    fail("tensor '", name, "' has shape ", t.shape_str(), " but the config implies ", shape_str(shape));
  used_.insert(name);
  return &t;
}

MatRef WeightBinder::made_matrix(const std::string& key, DType dtype, int64_t rows, int64_t cols,
                                 const std::function<void(uint8_t*)>& fill) {
  if (!tensors_) return {};
  const size_t bytes = size_t(rows) * dtype_row_bytes(dtype, cols);
  bool fresh = false;
  std::vector<float>& out = converted(key, (bytes + 3) / 4, &fresh);
  auto* dst = reinterpret_cast<uint8_t*>(out.data());
  if (fresh) fill(dst);
  return MatRef{dst, dtype, rows, cols, cols, true};
}

VecRef WeightBinder::made_vector(const std::string& key, int64_t n, const std::function<void(float*)>& fill) {
  if (!tensors_) return {};
  bool fresh = false;
  std::vector<float>& out = converted(key, size_t(n), &fresh);
  if (fresh) fill(out.data());
  return VecRef{out.data(), DType::F32, n};
}

void WeightBinder::finish() const {
  if (!tensors_) return;
  std::vector<std::string> unused;
  for (const auto& [name, t] : *tensors_)
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

void bind_output_head(const ModelConfig& c, WeightBinder& b, const std::string& head_name, ModelWeights& w) {
  const FfnSlice rows = b.share().vocab_rows(c.vocab_size);
  w.vocab_rows = rows;
  w.split = b.share().dense();
  if (c.tie_word_embeddings) {
    if (!w.embed.empty()) w.lm_head = w.embed.row_block(rows.first, rows.count);
    if (b.has(head_name)) b.skip(head_name, {c.vocab_size, c.d_model});
  } else {
    w.lm_head = b.matrix_rows(head_name, c.vocab_size, c.d_model, rows.first, rows.count);
  }
}

}  // namespace moep
