#include "io/mapped_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/file_read.h"

namespace moep {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  // A regular file only: a FIFO or a device named as a checkpoint is refused at once, not waited on.
  const int fd = open_regular_file(path, &size_);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      fail("cannot map ", path, ": ", std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
#ifdef MADV_HUGEPAGE
    // Ask for 2 MiB mappings where the page cache can give them (file systems with large folios): decode
    // streams gigabytes per token, and with 4 KiB pages every 4 KiB costs a TLB miss (twice as deep in a VM).
    // Advice only; nothing changes where the kernel cannot do it.
    ::madvise(p, size_, MADV_HUGEPAGE);
#endif
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

bool MappedFile::prefault(size_t offset, size_t bytes, bool lock) {
  if (bytes == 0 || !data_) return true;
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;
  const size_t end = std::min(size_, offset + bytes);
  auto* base = const_cast<uint8_t*>(data_) + begin;
  ::madvise(base, end - begin, MADV_WILLNEED);
  volatile uint8_t sink = 0;
  for (size_t o = begin; o < end; o += page) sink = sink + data_[o];
  (void)sink;
  if (lock) return ::mlock(base, end - begin) == 0;
  return true;
}

size_t prefault_code_pages() {
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return 0;  // not Linux: nothing to do
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  size_t touched = 0;
  char line[512];
  volatile uint8_t sink = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {0};
    if (std::sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
    if (perms[0] != 'r' || perms[2] != 'x') continue;  // readable code only ([vsyscall] is not readable)
    for (unsigned long a = lo; a < hi; a += page) sink = sink + *reinterpret_cast<const volatile uint8_t*>(a);
    touched += hi - lo;
  }
  std::fclose(f);
  (void)sink;
  return touched;
}

}  // namespace moep
