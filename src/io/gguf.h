// Reading GGUF files (llama.cpp's format, versions 2 and 3), one file or split into NAME-0000k-of-0000n.gguf
// parts, without copying: metadata strings and arrays, and tensor data, are views into memory-mapped files.
//
// A file is: magic "GGUF", u32 version, u64 tensor count, u64 metadata count; the metadata key/values; the
// tensor infos (name, dims, ggml type, offset into the data section); padding to general.alignment (default
// 32); the data section. Everything little-endian.
//
// Every file is checked when opened: magic, version, every count against the bytes left in the file (so a bad
// count cannot make moep allocate), value types, tensor types (moep reads those of core/quant.h), dims, each
// tensor's data aligned and inside the file, no name twice, and of a split model every part present and
// consistent. A bad file gives a moep::Error naming the file, what is wrong and what was expected.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/quant.h"
#include "io/mapped_file.h"

namespace moep {

// GGUF's metadata value types (enum gguf_type).
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9, U64 = 10,
  I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);  // "u8", …, "string", "array"

// One metadata value: a view into the file's mapping (valid while its GgufFile lives).
struct GgufValue {
  GgufType type = GgufType::U8;
  // Scalars: the value's bytes, zero-extended (a u8 is raw & 0xff; an f32 is its bit pattern; bool 0 or 1).
  uint64_t raw = 0;
  std::string_view str;  // String
  // Array: its element type and count; numeric elements at `array_data` (count × element size bytes, unaligned),
  // strings in `strings`.
  GgufType elem_type = GgufType::U8;
  uint64_t count = 0;
  const uint8_t* array_data = nullptr;
  std::vector<std::string_view> strings;

  // "u32", "string", "array of f32", …
  std::string type_str() const;
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  // ggml's order: dims[0] is the row length (contiguous), dims.back() the slowest. 1 to 4 of them.
  std::vector<int64_t> dims;
  const uint8_t* data = nullptr;  // in the mapping
  size_t nbytes = 0;
  int part = 0;              // which file of a split model (0-based)
  size_t file_offset = 0;    // absolute offset of the data in that file

  int64_t numel() const;
  std::string shape_str() const;  // "[4096, 32000]" (ggml order)
};

class GgufFile {
 public:
  // Opens a .gguf file. If it is a part of a split model (metadata split.count > 1), opens every part (their
  // names must be NAME-0000k-of-0000n.gguf beside it) and indexes the tensors of all of them; any part may be
  // named. Throws moep::Error on anything wrong (see the top of this file).
  static GgufFile open(const std::string& path);

  uint32_t version() const { return version_; }
  // Of the first part (split.no 0).
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::map<std::string, GgufTensor>& tensors() const { return tensors_; }
  // The files, in part order (one unless split).
  const std::vector<std::unique_ptr<MappedFile>>& files() const { return files_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset(int part) const { return data_offsets_[part]; }

  const GgufTensor* find_tensor(const std::string& name) const;
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }

  // Typed access to metadata. A missing key, or a value of another type, throws moep::Error naming the file, the
  // key, the type found and the type expected. Integers convert between widths and signedness when the value
  // fits (writers differ: split.count is a u16, some counts are i32); floats accept f32 or f64.
  std::string get_string(const std::string& key) const;
  uint32_t get_u32(const std::string& key) const;
  uint64_t get_u64(const std::string& key) const;
  int64_t get_i64(const std::string& key) const;
  float get_f32(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<float> get_f32_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;  // any integer element type
  // The same, with a default for a missing key (a present key of the wrong type still throws).
  uint32_t get_u32_or(const std::string& key, uint32_t fallback) const;
  float get_f32_or(const std::string& key, float fallback) const;
  std::string get_string_or(const std::string& key, const std::string& fallback) const;

 private:
  [[noreturn]] void fail_type(const std::string& key, const GgufValue& v, const char* expected) const;
  const GgufValue& require(const std::string& key, const char* expected) const;
  const std::string& path() const;

  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<size_t> data_offsets_;
  std::map<std::string, GgufValue> metadata_;
  std::map<std::string, GgufTensor> tensors_;
};

// The name of part `no` (1-based) of `count` of a split model whose parts are PREFIX-0000k-of-0000n.gguf.
std::string gguf_split_path(const std::string& prefix, int no, int count);

}  // namespace moep
