// Reading Hugging Face safetensors checkpoints, one file or sharded (model.safetensors.index.json), without
// copying: tensors are views into memory-mapped files.
//
// Every file is checked when opened: header length and JSON, dtype, shape, offsets inside the file, byte
// count = dtype size × shape, and no two tensors overlapping. A bad file gives a moep::Error naming the file
// and, where it applies, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/mapped_file.h"

namespace moep {

struct TensorInfo {
  std::string name;
  std::string dtype_name;  // as stored ("BF16", "F32", "I64", ...)
  bool dtype_supported = false;
  DType dtype = DType::F32;  // valid when dtype_supported
  int ggml_type = -1;        // a GGUF tensor's ggml type id (GgmlType); -1 for safetensors
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  MappedFile* file = nullptr;
  size_t file_offset = 0;  // absolute offset of data in file

  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  std::string shape_str() const;
};

class SafetensorsIndex {
 public:
  // Opens DIR/model.safetensors.index.json if present, else every DIR/*.safetensors (normally one).
  // `path` may also be a single .safetensors file.
  static SafetensorsIndex open(const std::string& path);

  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::vector<std::unique_ptr<MappedFile>>& files() const { return files_; }
  size_t total_bytes() const;

 private:
  static SafetensorsIndex open_paths(const std::string& path);  // open() without its filesystem_error net
  void add_file(const std::string& path, const std::vector<std::string>* expected_names);
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace moep
