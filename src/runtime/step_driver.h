// Lockstep execution over ranks: rank 0 decides every step (which rows: tokens, slots, positions) and
// broadcasts it; every rank then runs the same forward pass. Followers (ranks > 0) loop in follow() until rank
// 0 releases them. With one rank, lead() just runs the step.
//
// One broadcast per step of (header + rows); sized at construction for the engine's max rows, so stepping
// allocates nothing.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/engine.h"

namespace moep {

class StepDriver {
 public:
  explicit StepDriver(Engine& engine);

  // Rank 0: runs `rows` on every rank; writes logits [rows with want_logits, vocab] (rank 0).
  void lead(std::span<const BatchRow> rows, float* logits);
  // Rank 0: ends every follower's follow() loop.
  void release();
  // Ranks > 0: runs the steps rank 0 leads until release(). Returns the number of steps run.
  int64_t follow();

  Engine& engine() { return engine_; }

 private:
  struct Header {
    int32_t command;  // kStep or kRelease
    int32_t n_rows;
  };
  static constexpr int32_t kStep = 1, kRelease = 2;
  Engine& engine_;
  std::vector<uint8_t> msg_;        // Header + rows
  std::vector<float> scratch_logits_;  // followers' logits (discarded)
};

}  // namespace moep
