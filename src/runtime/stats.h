// Run statistics: per layer and per rank, time in attention, router, local experts, all-reduce and waiting
// for the slowest rank, expert-token pairs computed and bytes sent; gathered on rank 0 at the end of a run,
// printed as a table, written as JSON or as a Chrome trace.
//
// Waiting is separated from communication without extra messages: all ranks leave an all-reduce together, so
// the rank that arrived last waited least; per layer, the smallest all-reduce time over the ranks is taken as
// the exchange itself and each rank's excess over it as waiting for the slowest rank.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace moep {

class Engine;

enum class TracePhase : uint8_t { Attention, Router, Experts, AllReduce, Dense, Head, Step };
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
  int64_t router_ns = 0;
  int64_t experts_ns = 0;    // this rank's experts (and their weighted sum)
  int64_t allreduce_ns = 0;  // the all-reduce, including waiting for slower ranks
  int64_t dense_ns = 0;      // shared expert / dense MLP (every rank)
  int64_t expert_pairs = 0;
  int64_t experts_touched = 0;  // local experts that had work, summed over calls (each read its weights once)
  int64_t calls = 0;
};

struct RankStats {
  int rank = 0;
  int threads = 0;
  std::string host;
  std::vector<LayerStats> layers;
  int64_t head_ns = 0;
  CommStats comm;
  size_t weight_bytes = 0;  // weights this rank holds resident
  std::vector<TraceEvent> events;
};

struct RunStats {
  std::string model;
  std::string placement;
  std::string kernels;
  std::string commit;
  std::string cpu;
  int n_ranks = 1;
  int64_t tokens = 0;        // tokens processed (set by the caller)
  double wall_seconds = 0;   // set by the caller
  std::vector<RankStats> ranks;
};

// Collective: every rank must call it. Rank 0 gets every rank's figures; other ranks get their own only.
RunStats gather_run_stats(Engine& engine);
std::string format_stats_table(const RunStats& s);
void write_stats_json(const RunStats& s, const std::string& path);
void write_chrome_trace(const RunStats& s, const std::string& path);

// Helpers for benchmark headers.
std::string cpu_model_name();
std::string host_name();

}  // namespace moep
