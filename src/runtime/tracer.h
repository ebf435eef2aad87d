// What the forward pass records as it runs, on this rank: per layer, time in attention, router, experts,
// all-reduce and dense work and the expert work done (LayerStats), and optionally each phase as a timed event
// (Tracer) for a Chrome trace. Recording allocates nothing. The run report (runtime/run_report.h) gathers and
// prints them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moep {

// AttentionAllReduce: a split attention's exchange (inside Attention's span); HeadGather: a split head's
// gather of the logits (inside Head's).
enum class TracePhase : uint8_t { Attention, Router, Experts, AllReduce, Dense, Head, Step, AttentionAllReduce, HeadGather };
const char* trace_phase_name(TracePhase p);

struct TraceEvent {
  int64_t start_ns = 0;  // steady clock
  int64_t dur_ns = 0;
  int32_t layer = -1;
  TracePhase phase = TracePhase::Step;
};

// A fixed-capacity event buffer; recording allocates nothing and drops events once full.
class Tracer {
 public:
  void enable(size_t capacity) {
    events_.resize(capacity);
    enabled_ = capacity > 0;
  }
  bool enabled() const { return enabled_; }
  void record(TracePhase p, int32_t layer, int64_t start_ns, int64_t end_ns) {
    if (!enabled_ || n_ >= events_.size()) return;
    events_[n_++] = TraceEvent{start_ns, end_ns - start_ns, layer, p};
  }
  size_t size() const { return n_; }
  const TraceEvent* data() const { return events_.data(); }
  void clear() { n_ = 0; }

 private:
  std::vector<TraceEvent> events_;
  size_t n_ = 0;
  bool enabled_ = false;
};

// Time and work of one layer on this rank, summed over forward() calls since the last reset.
struct LayerStats {
  int64_t attention_ns = 0;  // norms, q/k/v/o projections, RoPE, attention
  int64_t attention_allreduce_ns = 0;  // a split attention's all-reduces (not in attention_ns)
  int64_t router_ns = 0;
  int64_t experts_ns = 0;    // this rank's experts (and their weighted sum)
  int64_t allreduce_ns = 0;  // the all-reduce, including waiting for slower ranks
  int64_t dense_ns = 0;      // shared expert / dense MLP (every rank)
  int64_t expert_pairs = 0;
  int64_t experts_touched = 0;  // local experts that had work, summed over calls (each read its weights once)
  int64_t calls = 0;
};

}  // namespace moep
