// What one forward step is given: rows of tokens, each in a sequence (a slot of the KV cache) at a position, and the
// limits the engine was sized for. Shared by the CPU forward pass (runtime/transformer.h) and the GPU one (gpu/).
#pragma once

#include <cstdint>

namespace moep {

struct BatchRow {
  int32_t token = 0;
  int32_t slot = 0;  // KV-cache slot (sequence) the row belongs to
  int32_t pos = 0;   // position in its sequence; rows of one slot must come in increasing position
  bool want_logits = false;
};

struct EngineLimits {
  int64_t max_rows = 64;  // rows per forward() call
  int64_t n_slots = 1;    // concurrent sequences
  int64_t max_ctx = 2048;  // positions per sequence
};

}  // namespace moep
