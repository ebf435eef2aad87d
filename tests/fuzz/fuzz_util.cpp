#include "fuzz_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>

namespace moep::fuzz {

const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/moep-fuzz-XXXXXX";
    if (!mkdtemp(pattern.data())) {
      std::perror("moep fuzz: mkdtemp");
      std::abort();
    }
    static std::string made = pattern;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(made, ec);
    });
    return pattern;
  }();
  return dir;
}

std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror(("moep fuzz: " + path).c_str());
    std::abort();
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) {
      std::perror(("moep fuzz: write " + path).c_str());
      std::abort();
    }
    done += size_t(n);
  }
  ::close(fd);
  return path;
}

}  // namespace moep::fuzz
