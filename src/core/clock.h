// The clock every timing figure of moep is read from.
#pragma once

#include <chrono>
#include <cstdint>

namespace moep {

// Nanoseconds on the steady clock (monotonic; its epoch is arbitrary, so only differences mean anything).
// Cheap enough for the decode loop: no allocation, no system call on Linux (vDSO).
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace moep
