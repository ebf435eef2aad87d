// Errors. Two kinds (see STYLE.md):
//  - moep::Error: bad input (a file, a flag, a request). The message is one line that names the thing and what
//    was expected. Callers at the top (CLI, server) catch it, print it and exit non-zero or answer 4xx.
//  - MOEP_ASSERT: a broken invariant inside moep. Prints file and line and aborts (under MPI, every rank).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moep {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates any streamable values into one string.
template <class... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// Throws moep::Error with the concatenated message.
// A bad-input error that every rank of a multi-rank job raised together (see run_collectively): the ranks can
// end normally, nobody is left waiting.
class CollectiveError : public Error {
 public:
  using Error::Error;
};

template <class... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(str_cat(std::forward<Args>(args)...));
}

namespace detail {
[[noreturn]] void assert_fail(const char* file, int line, const char* cond, const std::string& msg);
// Installed by the communicator so that a fatal error ends every rank, not one alone.
using AbortHook = void (*)(int code);
void set_abort_hook(AbortHook hook);
}  // namespace detail

}  // namespace moep

#define MOEP_ASSERT(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond)) ::moep::detail::assert_fail(__FILE__, __LINE__, #cond, ::moep::str_cat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)
