#include "io/npy.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/file_read.h"

namespace moep {

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::ostringstream dict;
  dict << "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict << shape[i] << (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    count *= shape[i];
  }
  dict << "), }";
  std::string header = dict.str();
  // magic(6) + version(2) + header_len(2) + header, padded with spaces to a multiple of 64, ending in '\n'.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  if (!f) fail("cannot open ", path, " for writing");
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(magic, 8);
  const uint16_t len = uint16_t(header.size());
  f.write(reinterpret_cast<const char*>(&len), 2);
  f.write(header.data(), std::streamsize(header.size()));
  f.write(reinterpret_cast<const char*>(data), std::streamsize(count * sizeof(float)));
  if (!f) fail("failed writing ", path);
}

NpyArray read_npy_f32(const std::string& path) {
  size_t file_size = 0;
  ::close(open_regular_file(path, &file_size));
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open ", path);
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail(path, ": not a .npy file");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t l;
    f.read(reinterpret_cast<char*>(&l), 2);
    hlen = l;
  } else {
    f.read(reinterpret_cast<char*>(&hlen), 4);
  }
  const size_t prefix = magic[6] == 1 ? 10 : 12;
  if (!f || hlen > file_size - std::min(file_size, prefix))
    fail(path, ": truncated .npy header (", hlen, " bytes announced, the file has ", file_size, ")");
  std::string header(hlen, '\0');
  f.read(header.data(), hlen);
  if (!f) fail(path, ": truncated .npy header");
  if (header.find("'descr': '<f4'") == std::string::npos) fail(path, ": expected dtype '<f4'");
  if (header.find("'fortran_order': False") == std::string::npos) fail(path, ": expected C order");
  const size_t s = header.find("'shape': (");
  if (s == std::string::npos) fail(path, ": no shape in .npy header");
  NpyArray a;
  const char* p = header.c_str() + s + 10;
  // The element count, checked: it must fit the bytes after the header before anything is allocated for it.
  const size_t data_bytes = file_size - prefix - hlen;
  uint64_t count = 1;
  while (*p && *p != ')') {
    if (*p >= '0' && *p <= '9') {
      char* end;
      errno = 0;
      const unsigned long long v = std::strtoull(p, &end, 10);
      if (errno == ERANGE || v > uint64_t(INT64_MAX) || __builtin_mul_overflow(count, uint64_t(v), &count))
        fail(path, ": .npy shape overflows 64 bits");
      a.shape.push_back(int64_t(v));
      p = end;
    } else {
      ++p;
    }
  }
  if (count > data_bytes / sizeof(float))
    fail(path, ": .npy shape holds ", count, " floats but the file has ", data_bytes, " bytes of data");
  a.data.resize(size_t(count));
  f.read(reinterpret_cast<char*>(a.data.data()), std::streamsize(count * sizeof(float)));
  if (!f) fail(path, ": truncated .npy data");
  return a;
}

}  // namespace moep
