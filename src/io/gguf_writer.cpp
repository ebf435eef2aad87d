#include "io/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/error.h"

namespace moep {

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  MOEP_ASSERT(alignment != 0 && (alignment & (alignment - 1)) == 0, "GGUF alignment ", alignment);
  if (alignment != 32) set_u32("general.alignment", alignment);
}

void GgufWriter::put_string(const std::string& s) {
  const uint64_t n = s.size();
  put(&n, 8);
  put(s.data(), s.size());
}

void GgufWriter::begin_key(const std::string& key, GgufType type) {
  MOEP_ASSERT(keys_.insert(key).second, "GGUF metadata key '", key, "' set twice");
  put_string(key);
  const uint32_t t = uint32_t(type);
  put(&t, 4);
  ++n_kv_;
}

void GgufWriter::set_scalar(const std::string& key, GgufType type, const void* v, size_t n) {
  begin_key(key, type);
  put(v, n);
}

void GgufWriter::set_string(const std::string& key, const std::string& v) {
  begin_key(key, GgufType::String);
  put_string(v);
}

void GgufWriter::set_array(const std::string& key, GgufType elem, const void* data, size_t count) {
  static const size_t kSize[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  MOEP_ASSERT(elem != GgufType::String && elem != GgufType::Array, "set_array of ", gguf_type_name(elem));
  begin_key(key, GgufType::Array);
  const uint32_t t = uint32_t(elem);
  const uint64_t n = count;
  put(&t, 4);
  put(&n, 8);
  put(data, count * kSize[uint32_t(elem)]);
}

void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  begin_key(key, GgufType::Array);
  const uint32_t t = uint32_t(GgufType::String);
  const uint64_t n = v.size();
  put(&t, 4);
  put(&n, 8);
  for (const std::string& s : v) put_string(s);
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& dims,
                            std::function<void(uint8_t* out)> fill) {
  MOEP_ASSERT(!dims.empty() && dims.size() <= 4, "tensor '", name, "' with ", dims.size(), " dims");
  int64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
  const size_t nbytes = ggml_row_bytes(type, dims[0]) * size_t(rows);
  tensors_.push_back(Tensor{name, type, dims, nbytes, data_bytes_, std::move(fill)});
  data_bytes_ += (nbytes + alignment_ - 1) / alignment_ * alignment_;
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& dims,
                            std::vector<uint8_t> bytes) {
  auto shared = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  add_tensor(name, type, dims, [shared](uint8_t* out) { std::memcpy(out, shared->data(), shared->size()); });
  MOEP_ASSERT(tensors_.back().nbytes == shared->size(), "tensor '", name, "': ", shared->size(), " bytes given, ",
              tensors_.back().nbytes, " expected");
}

void GgufWriter::write(const std::string& path) const {
  std::vector<uint8_t> head;
  auto put = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    head.insert(head.end(), b, b + n);
  };
  const uint32_t version = 3;
  const uint64_t n_tensors = tensors_.size();
  put("GGUF", 4);
  put(&version, 4);
  put(&n_tensors, 8);
  put(&n_kv_, 8);
  head.insert(head.end(), kv_.begin(), kv_.end());
  for (const Tensor& t : tensors_) {
    const uint64_t len = t.name.size();
    put(&len, 8);
    put(t.name.data(), t.name.size());
    const uint32_t n_dims = uint32_t(t.dims.size());
    put(&n_dims, 4);
    put(t.dims.data(), 8 * t.dims.size());
    const uint32_t type = uint32_t(t.type);
    put(&type, 4);
    put(&t.offset, 8);
  }
  head.resize((head.size() + alignment_ - 1) / alignment_ * alignment_, 0);

  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), std::fclose);
  if (!f) fail("cannot create ", path, ": ", std::strerror(errno));
  auto write_bytes = [&](const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f.get()) != n) fail("cannot write ", path, ": ", std::strerror(errno));
  };
  write_bytes(head.data(), head.size());
  std::vector<uint8_t> buf;
  for (const Tensor& t : tensors_) {
    const size_t padded = (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
    buf.assign(padded, 0);
    t.fill(buf.data());
    write_bytes(buf.data(), padded);
  }
  if (std::fclose(f.release()) != 0) fail("cannot write ", path, ": ", std::strerror(errno));
}

}  // namespace moep
