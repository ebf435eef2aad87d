// Anonymous memory for large read-mostly data (copied weights, bandwidth probes), aligned to 2 MiB and
// advised to use transparent huge pages. Decode streams gigabytes per token: with 4 KiB pages every 4 KiB costs
// a TLB miss (a two-level walk in a virtual machine); `moep bench --membw` prints the read bandwidth on both
// page sizes (docs/PERFORMANCE.md has this machine's). Advice only: where the kernel cannot give huge pages
// (or THP is off), the memory is ordinary.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moep {

class PageBuffer {
 public:
  PageBuffer() = default;
  // Maps `bytes` (rounded up to whole 2 MiB); huge: ask for transparent huge pages. Nothing is touched.
  // Throws moep::Error naming the size if the mapping fails.
  PageBuffer(size_t bytes, bool huge);
  ~PageBuffer();
  PageBuffer(PageBuffer&& o) noexcept;
  PageBuffer& operator=(PageBuffer&& o) noexcept;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }  // usable bytes (as asked, rounded up to 2 MiB)
  bool empty() const { return size_ == 0; }

 private:
  void release();
  void* map_ = nullptr;  // the whole mapping (data_ is its first 2 MiB boundary)
  size_t map_bytes_ = 0;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

constexpr size_t kHugePageBytes = size_t(2) << 20;

// A "Name:  N kB" line of a /proc file (e.g. /proc/meminfo's MemAvailable) in bytes; 0 where the file or the
// line is missing (not Linux).
size_t proc_kb_field_bytes(const char* path, const char* name);

// Bytes of this process's anonymous memory backed by transparent huge pages (AnonHugePages of
// /proc/self/smaps_rollup); 0 where unknown.
inline size_t anon_huge_page_bytes() { return proc_kb_field_bytes("/proc/self/smaps_rollup", "AnonHugePages"); }

}  // namespace moep
