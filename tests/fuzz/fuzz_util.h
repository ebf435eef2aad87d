// Shared by the libFuzzer targets of tests/fuzz: what counts as a finding, and scratch files for the readers
// that take a path.
//
// A target feeds one input to a parser and lets it refuse the input. The refusal the code promises for bad
// input is a moep::Error (or, for request bodies, a moep::ApiError); every other exception that escapes, like a
// crash, a sanitizer report, a leak, a timeout (-timeout) or memory past -rss_limit_mb, is a finding: the target
// aborts so that libFuzzer keeps the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <typeinfo>

#include "core/error.h"

namespace moep::fuzz {

[[noreturn]] inline void finding(const char* what, const char* message) {
  std::fprintf(stderr, "fuzz finding: %s escaped: %s\n", what, message);
  std::abort();
}

// Runs body(); a moep::Error is a clean refusal, anything else escaping aborts.
template <class Body>
void expect_clean(Body&& body) {
  try {
    body();
  } catch (const moep::Error&) {
  } catch (const std::exception& e) {
    finding(typeid(e).name(), e.what());
  } catch (...) {
    finding("a non-std exception", "");
  }
}

// A directory of this process's own under $TMPDIR (or /tmp), made once, removed at exit.
const std::string& scratch_dir();

// Writes data to scratch_dir()/name (replacing it) and returns the path.
std::string write_scratch(const std::string& name, const uint8_t* data, size_t size);
inline std::string write_scratch(const std::string& name, std::string_view text) {
  return write_scratch(name, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

// Touches every byte of [data, data + n) so that a view outside the mapping faults here, in the target.
inline uint64_t touch(const uint8_t* data, size_t n) {
  uint64_t sum = 0;
  if (n == 0) return 0;
  sum += data[0];
  sum += data[n - 1];
  for (size_t i = 0; i < n; i += 4096) sum += data[i];
  return sum;
}

}  // namespace moep::fuzz
