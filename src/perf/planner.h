// The planner behind `moep plan`: predictions for every (hardware, network, node count) asked for, the
// cheapest configuration that meets a target speed, a text table, JSON, and SVG plots.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "perf/perf_model.h"
#include "perf/svg.h"

namespace moep::perf {

struct PlanRequest {
  const ModelShape* model = nullptr;
  std::vector<const HardwareProfile*> hardware;
  std::vector<const NetworkProfile*> networks;
  std::vector<int> nodes;      // node counts to consider, e.g. 1..8
  Scenario base;               // everything but `nodes`
  double target_tps = 0;       // decode tokens/s wanted (0: none)
};

struct PlanRow {
  const HardwareProfile* hardware = nullptr;
  const NetworkProfile* network = nullptr;  // null for a single node (no network)
  int nodes = 1;
  Prediction p;
  double tps_per_kusd() const;  // decode tokens/s per $1,000 (0 without a price)
};

struct PlanResult {
  std::vector<PlanRow> rows;
  int cheapest_meeting_target = -1;  // index into rows, or -1
  int fastest = -1;                  // fastest configuration that fits
  int best_value = -1;               // most tokens/s per $1,000 among those that fit
};

// Throws moep::Error for nonsense (no node counts, a node count < 1, no hardware or network) and when the
// model fits on none of the configurations asked for (saying how many nodes it would need, or why never).
PlanResult make_plan(const PlanRequest& req);
std::string format_plan(const PlanRequest& req, const PlanResult& res);
// moep's --attention and --head split against replicated: the row's prediction (made with the request's
// choice) and the performance model's prediction of the same configuration with both split (Scenario's
// split_attention and split_head: each rank its whole KV heads' share of attention and KV cache, and its
// vocabulary rows of the head; attention's all-reduces per layer, the head's gather and pick). Attention that
// moep cannot divide (MLA) stays replicated in the split column.
struct DenseSplitRow {
  double bytes_replicated = 0, bytes_split = 0;          // weights one rank reads per decode step
  int64_t exchanges_replicated = 0, exchanges_split = 0;  // per decode step
  double tps_replicated = 0, tps_split = 0;               // decode tokens/s
  double held_replicated = 0, held_split = 0;             // bytes the fullest rank holds (weights and KV cache)
};
DenseSplitRow dense_split_row(const ModelShape& model, const Scenario& s, const PlanRow& row);
// The side-by-side table of dense_split_row for every multi-node row ("" when there is none).
std::string format_dense_split(const PlanRequest& req, const PlanResult& res);

// The fewest nodes of `hw` (1..max_nodes) on which `model` fits in `base`'s scenario, or -1 if none does.
int smallest_fitting_nodes(const ModelShape& model, const HardwareProfile& hw, const Scenario& base, int max_nodes);
nlohmann::json plan_to_json(const PlanRequest& req, const PlanResult& res);

// The plots: tokens/s against node count (one line per network, first hardware); against link latency α
// (β of the first network) and against bandwidth β (α of the first network), one line per node count, with
// the point where the latency term equals the bandwidth term (α = m/β for the decode message m) marked.
Chart chart_nodes(const PlanRequest& req, const PlanResult& res);
Chart chart_latency(const PlanRequest& req);
Chart chart_bandwidth(const PlanRequest& req);

}  // namespace moep::perf
