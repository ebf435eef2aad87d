// Writing safetensors files (used by `moep synth` and by tests that build checkpoints).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moep {

struct TensorToWrite {
  std::string name;
  std::string dtype;  // safetensors spelling: "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;
  size_t nbytes = 0;
  // Fills `out` (nbytes) with the tensor's data; called once, in file order.
  std::function<void(uint8_t* out)> fill;
};

// Writes the tensors (header in the order given, data 8-byte aligned) to `path`. Throws moep::Error on I/O
// failure. Data is produced tensor by tensor, so files larger than memory can be written.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata = {{"format", "pt"}});

}  // namespace moep
