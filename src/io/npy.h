// Reading and writing NumPy .npy files (format version 1.0/2.0, little-endian f32 only).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moep {

// Writes a C-order float32 array of the given shape. Throws moep::Error if the file cannot be written.
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// Reads a C-order little-endian float32 array ('<f4'). Throws moep::Error naming the file otherwise.
NpyArray read_npy_f32(const std::string& path);

}  // namespace moep
