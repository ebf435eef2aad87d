// The run report (above the engine), from what each rank's tracer recorded: per layer and per rank, time in attention, router, local experts, all-reduce and waiting
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
#include "runtime/tracer.h"

namespace moep {

class Engine;

struct RankStats {
  int rank = 0;
  int threads = 0;
  std::string host;
  std::vector<LayerStats> layers;
  int64_t head_ns = 0;
  int64_t head_gather_ns = 0;  // of head_ns: a split head's gather of the logits
  CommStats comm;
  size_t weight_bytes = 0;  // weights this rank holds resident
  size_t kv_cache_bytes = 0;  // this rank's KV cache (its heads' part when attention is split)
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

}  // namespace moep
