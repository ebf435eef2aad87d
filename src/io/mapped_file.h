// A read-only memory-mapped file. Pages are loaded on first touch unless prefaulted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moep {

class MappedFile {
 public:
  // Maps the whole file read-only. Throws moep::Error naming the file if it cannot be opened or mapped, or is not
  // a regular file (a FIFO or a device is refused at once).
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Loads the pages of [offset, offset + bytes) now (so that no page fault happens later) by touching
  // one byte per page after an madvise(WILLNEED). With lock, also mlock()s them (fails softly: returns false).
  bool prefault(size_t offset, size_t bytes, bool lock);

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Touches every page of this process's executable mappings (its own code and its libraries' code), so that
// a code path used for the first time in the middle of decoding takes no page fault. Returns the bytes touched.
size_t prefault_code_pages();

}  // namespace moep
