// Routing distributions and the expected time of the busiest rank's experts.
//
// Routing record (what `moep ... --record-routing FILE` writes, what `moep plan --routing FILE` reads):
//   {"format": "moep-routing-v1",
//    "model": "<ModelConfig::summary() or name>",      (informational)
//    "n_layers": L, "n_experts": E, "top_k": k,
//    "tokens": T,                                       (tokens routed per MoE layer, summed over the run)
//    "counts": [[c_0, ..., c_{E-1}], ..., null, ...],  (per layer: how often each expert was among a token's
//                                                        top-k; null or [] for dense layers)
//    "steps": [{"rows": R, "ids": [[e, e, ...] or null, ...]}, ...]}
//                                                       (optional: the routing of individual forward steps,
//                                                        per layer R·k expert ids in row-major [row][k] order as
//                                                        Transformer::last_routing() holds them; null for dense
//                                                        layers; the first few thousand steps are enough)
// For every MoE layer, Σ_e counts[l][e] = T · k (T counts every row of every step, steps recorded or not).
//
// From the counts, expert e of layer l is chosen by a token with probability π_e = counts[l][e] / T (Σ π = k);
// the model draws each token's k distinct experts with exactly these inclusion probabilities (systematic
// sampling over a random order of the experts), tokens independently. Uniform routing is π_e = k / E.
// Where the record has steps with as many rows as the step being predicted, the model replays them instead:
// that keeps what counts cannot (rows of one step choosing the same experts, as identical tokens do).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "moe/placement.h"
#include "perf/model_shape.h"

namespace moep::perf {

struct RoutingRecord {
  std::string model, source;
  int64_t n_layers = 0, n_experts = 0, top_k = 0, tokens = 0;
  std::vector<std::vector<double>> counts;  // [n_layers][n_experts], empty for layers without data
  struct Step {
    int64_t rows = 0;
    std::vector<std::vector<int32_t>> ids;  // [n_layers][rows · top_k], empty for dense layers
  };
  std::vector<Step> steps;  // recorded forward steps (may be empty)
};

// Counts routing decisions and writes the record above (for the engine's --record-routing FILE).
// Not thread-safe; add() allocates nothing.
class RoutingCounter {
 public:
  // Keeps the routing of the first `max_steps` steps given to add_step (0: counts only).
  RoutingCounter(int64_t n_layers, int64_t n_experts, int64_t top_k, const std::vector<bool>& layer_is_moe,
                 std::string model, int64_t max_steps = 4096);
  // After each forward step: Transformer::last_routing() ([n_layers][rows × top_k], empty for dense layers)
  // and the step's rows. Counts every layer; keeps the step while fewer than max_steps are kept.
  void add_step(const std::vector<std::vector<int32_t>>& routing, int64_t rows);
  // Counts only: expert_ids [rows × top_k] of MoE layer `layer` for one step.
  void add(int64_t layer, const int32_t* expert_ids, int64_t rows);
  RoutingRecord record() const;  // tokens = rows added to the first MoE layer
  std::string to_json() const;
  void write(const std::string& path) const;  // throws moep::Error if it cannot

 private:
  int64_t n_layers_, n_experts_, top_k_;
  std::vector<bool> is_moe_;
  std::string model_;
  std::vector<std::vector<int64_t>> counts_;
  std::vector<int64_t> rows_;
  int64_t max_steps_;
  std::vector<RoutingRecord::Step> steps_;
};

// Throws moep::Error naming the file for a malformed record.
RoutingRecord load_routing_record(const std::string& path);
RoutingRecord parse_routing_record(const std::string& text, const std::string& source);
// Throws moep::Error when the record does not describe `shape` (layers, experts, top-k, MoE layers).
void check_routing_matches(const RoutingRecord& r, const ModelShape& shape);

// Inclusion probabilities of layer `layer` (uniform k/E when rec is null or has no data for the layer).
std::vector<double> inclusion_probabilities(const RoutingRecord* rec, int64_t layer, int64_t n_experts, int64_t top_k);
bool is_uniform(const std::vector<double>& pi);

// Draws k distinct experts with inclusion probabilities pi (Σ pi = k, each ≤ 1). `order` is scratch that the
// call keeps as the identity permutation between calls (uniform pi) or reshuffles (otherwise).
void sample_experts(const std::vector<double>& pi, int64_t k, std::mt19937_64& rng, int32_t* out,
                    std::vector<int32_t>& order);

// Routings of one layer for `rows` tokens: every equally likely one (exact), or random ones.
struct RoutingSet {
  int64_t rows = 0, k = 0, count = 0;
  std::vector<int32_t> ids;  // [count][rows][k], token-major as the engine assigns pairs
  bool exact = false;
};
// Exact enumeration when pi is uniform and there are at most `exact_limit` routings; otherwise `samples`
// random routings from a generator seeded with `seed`. The sampled routings do not depend on the placement or
// the node count, so one set serves every configuration.
// identical_rows: every row of a routing chooses what its first row chooses (perfectly correlated rows, as
// when all sequences of a batch feed the same token).
RoutingSet make_routings(const std::vector<double>& pi, int64_t rows, int64_t k, int64_t samples, uint64_t seed,
                         int64_t exact_limit = 200000, bool identical_rows = false);
// The recorded steps of `rec` with `rows` rows, for `layer` (count 0 when there are none).
RoutingSet recorded_routings(const RoutingRecord& rec, int64_t layer, int64_t rows);

struct ExpertTimeStats {
  double max_rank_s = 0.0;   // E[max over ranks of the rank's expert time]
  double mean_rank_s = 0.0;  // E[mean over ranks]
  double max_rank_pairs = 0.0;  // E[pairs on the busiest rank] (by time), for reports
  double mean_rank_experts = 0.0;  // E[distinct experts a rank runs], mean over ranks (weights it reads)
  int64_t samples = 0;       // routings evaluated (all of them when exact)
  bool exact = false;
};

// The placement assigns each (token, expert) pair to a rank (moep's rule: the least-loaded replica), and a
// rank spends Σ over its experts with n > 0 pairs of cost[n] seconds (cost has rows·k + 1 entries; cost[0]
// unused). Averages max and mean over ranks across the routings.
//
// Shared memory: cost is each rank's time while every rank of its host reads at once. With host_ranks > 1,
// ranks [0, h), [h, 2h), ... share a host whose bandwidth is split among the ranks still working: with k of the
// h reading, each goes min(alone_speedup, h / k) times as fast. The busiest rank's time is then the time until
// the last rank of its host is done (a rank that has finished waits at the all-reduce and reads nothing).
ExpertTimeStats evaluate_routings(const ExpertPlacement& placement, int64_t layer, const RoutingSet& routings,
                                  const std::vector<double>& cost, int host_ranks = 1, double alone_speedup = 1.0);
// Time until every rank of one host is done, for the ranks' times with all of the host reading (see above).
double shared_memory_finish(std::vector<double>& times, int host_ranks, double alone_speedup);
// make_routings + evaluate_routings.
ExpertTimeStats expected_expert_time(const ExpertPlacement& placement, int64_t layer, const std::vector<double>& pi,
                                     int64_t rows, int64_t k, const std::vector<double>& cost, int64_t samples,
                                     uint64_t seed, int64_t exact_limit = 200000);

}  // namespace moep::perf
