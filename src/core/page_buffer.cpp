#include "core/page_buffer.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace moep {

PageBuffer::PageBuffer(size_t bytes, bool huge) {
  if (bytes == 0) return;
  size_ = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  map_bytes_ = size_ + kHugePageBytes;  // room to start at a 2 MiB boundary
  void* p = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    map_bytes_ = size_ = 0;
    fail("cannot map ", bytes, " bytes of anonymous memory: ", std::strerror(e));
  }
  map_ = p;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  data_ = reinterpret_cast<uint8_t*>(a);
#ifdef MADV_HUGEPAGE
  if (huge) ::madvise(data_, size_, MADV_HUGEPAGE);
#else
  (void)huge;
#endif
}

PageBuffer::~PageBuffer() { release(); }

void PageBuffer::release() {
  if (map_) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  data_ = nullptr;
  map_bytes_ = size_ = 0;
}

PageBuffer::PageBuffer(PageBuffer&& o) noexcept { *this = std::move(o); }

PageBuffer& PageBuffer::operator=(PageBuffer&& o) noexcept {
  if (this != &o) {
    release();
    std::swap(map_, o.map_);
    std::swap(map_bytes_, o.map_bytes_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }
  return *this;
}

size_t proc_kb_field_bytes(const char* path, const char* name) {
  FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  char line[256];
  const size_t n = std::strlen(name);
  size_t kb = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long v = 0;
    if (std::strncmp(line, name, n) == 0 && line[n] == ':' && std::sscanf(line + n + 1, " %lu", &v) == 1) {
      kb = v;
      break;
    }
  }
  std::fclose(f);
  return kb * 1024;
}

}  // namespace moep
