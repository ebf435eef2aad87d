#include "core/file_read.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace moep {

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string mib(size_t bytes) {
  return bytes % (size_t(1) << 20) == 0 ? str_cat(bytes >> 20, " MiB") : str_cat(bytes, " bytes");
}

}  // namespace

int open_regular_file(const std::string& path, size_t* size) {
  // O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever. It changes nothing for the regular
  // files that pass the check below (their reads never block).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("cannot open ", path, ": ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail("cannot stat ", path, ": ", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, " is ", file_kind(st.st_mode), "; expected a regular file");
  }
  *size = size_t(st.st_size);
  return fd;
}

std::string read_regular_file(const std::string& path, size_t max_bytes, std::string_view what) {
  size_t size = 0;
  const int fd = open_regular_file(path, &size);
  if (size > max_bytes) {
    ::close(fd);
    fail(path, ": ", what, " of ", size, " bytes is larger than moep reads (at most ", mib(max_bytes), " for ", what,
         ")");
  }
  std::string text(size, '\0');
  size_t got = 0;
  while (got < size) {
    const ssize_t r = ::read(fd, text.data() + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int e = errno;
      ::close(fd);
      fail("cannot read ", path, ": ", std::strerror(e));
    }
    if (r == 0) break;  // shrank since fstat: keep what there is
    got += size_t(r);
  }
  ::close(fd);
  text.resize(got);
  return text;
}

void check_json_depth(std::string_view text, size_t max_depth, std::string_view source) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;  // the escaped character cannot end the string
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        fail(source, ": JSON nested more than ", max_depth, " levels deep (at byte ", i,
             "); moep reads JSON up to that depth");
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

}  // namespace moep
