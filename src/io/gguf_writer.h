// Writing GGUF files (version 3): metadata in the order set, tensor infos in the order added, each tensor's data
// padded to the alignment. Used by tests that build GGUF files, and meant for `moep quantize`.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "core/quant.h"
#include "io/gguf.h"

namespace moep {

class GgufWriter {
 public:
  // alignment: a power of two; other than 32 (GGUF's default) it is written as general.alignment.
  explicit GgufWriter(uint32_t alignment = 32);

  // Metadata. Setting a key twice is a broken invariant (MOEP_ASSERT).
  void set_u8(const std::string& key, uint8_t v) { set_scalar(key, GgufType::U8, &v, 1); }
  void set_i8(const std::string& key, int8_t v) { set_scalar(key, GgufType::I8, &v, 1); }
  void set_u16(const std::string& key, uint16_t v) { set_scalar(key, GgufType::U16, &v, 2); }
  void set_i16(const std::string& key, int16_t v) { set_scalar(key, GgufType::I16, &v, 2); }
  void set_u32(const std::string& key, uint32_t v) { set_scalar(key, GgufType::U32, &v, 4); }
  void set_i32(const std::string& key, int32_t v) { set_scalar(key, GgufType::I32, &v, 4); }
  void set_f32(const std::string& key, float v) { set_scalar(key, GgufType::F32, &v, 4); }
  void set_bool(const std::string& key, bool v) {
    const uint8_t b = v ? 1 : 0;
    set_scalar(key, GgufType::Bool, &b, 1);
  }
  void set_u64(const std::string& key, uint64_t v) { set_scalar(key, GgufType::U64, &v, 8); }
  void set_i64(const std::string& key, int64_t v) { set_scalar(key, GgufType::I64, &v, 8); }
  void set_f64(const std::string& key, double v) { set_scalar(key, GgufType::F64, &v, 8); }
  void set_string(const std::string& key, const std::string& v);
  // An array of `count` numbers of type `elem` (not String or Array) at `data`, little-endian.
  void set_array(const std::string& key, GgufType elem, const void* data, size_t count);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  bool has(const std::string& key) const { return keys_.count(key) != 0; }

  // A tensor of `type` with `dims` in ggml order (dims[0] the row length, a whole number of blocks). `fill` writes
  // its ggml_row_bytes(type, dims[0]) × rows bytes; called once, in the order added, while writing.
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& dims,
                  std::function<void(uint8_t* out)> fill);
  // The same with the bytes given (copied).
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& dims,
                  std::vector<uint8_t> bytes);

  // Writes the file. Throws moep::Error on I/O failure.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> dims;
    size_t nbytes;
    uint64_t offset;  // in the data section
    std::function<void(uint8_t*)> fill;
  };
  void begin_key(const std::string& key, GgufType type);
  void set_scalar(const std::string& key, GgufType type, const void* v, size_t n);
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    kv_.insert(kv_.end(), b, b + n);
  }
  void put_string(const std::string& s);

  uint32_t alignment_;
  std::vector<uint8_t> kv_;  // the metadata key/values, serialized
  uint64_t n_kv_ = 0;
  std::set<std::string> keys_;
  std::vector<Tensor> tensors_;
  uint64_t data_bytes_ = 0;
};

}  // namespace moep
