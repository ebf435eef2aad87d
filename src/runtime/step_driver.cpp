#include "runtime/step_driver.h"

#include <cstring>

#include "core/error.h"

namespace moep {

StepDriver::StepDriver(Engine& engine) : engine_(engine) {
  const int64_t R = engine.transformer().limits().max_rows;
  msg_.resize(sizeof(Header) + size_t(R) * sizeof(BatchRow));
  if (!engine.is_root()) scratch_logits_.resize(size_t(R * engine.config().vocab_size));
}

void StepDriver::lead(std::span<const BatchRow> rows, float* logits) {
  MOEP_ASSERT(engine_.is_root(), "only rank 0 leads");
  Communicator& comm = engine_.comm();
  if (comm.size() > 1) {
    Header h{kStep, int32_t(rows.size())};
    MOEP_ASSERT(rows.size() * sizeof(BatchRow) + sizeof(Header) <= msg_.size(), "step larger than the engine limit");
    std::memcpy(msg_.data(), &h, sizeof h);
    std::memcpy(msg_.data() + sizeof h, rows.data(), rows.size() * sizeof(BatchRow));
    comm.broadcast(msg_.data(), msg_.size(), 0);
  }
  engine_.transformer().forward(rows, logits);
}

void StepDriver::release() {
  Communicator& comm = engine_.comm();
  if (comm.size() == 1) return;
  Header h{kRelease, 0};
  std::memcpy(msg_.data(), &h, sizeof h);
  comm.broadcast(msg_.data(), msg_.size(), 0);
}

int64_t StepDriver::follow() {
  MOEP_ASSERT(!engine_.is_root(), "rank 0 leads; it does not follow");
  int64_t steps = 0;
  for (;;) {
    engine_.comm().await_broadcast(msg_.data(), msg_.size(), 0);  // idle between requests: no deadline
    Header h;
    std::memcpy(&h, msg_.data(), sizeof h);
    if (h.command == kRelease) return steps;
    MOEP_ASSERT(h.command == kStep && h.n_rows >= 0, "corrupt step message");
    const auto* rows = reinterpret_cast<const BatchRow*>(msg_.data() + sizeof h);
    engine_.transformer().forward(std::span<const BatchRow>(rows, size_t(h.n_rows)), scratch_logits_.data());
    ++steps;
  }
}

}  // namespace moep
