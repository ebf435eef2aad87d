// Routing distributions and the expected time of the busiest rank's experts.
//
// Routing record (what `moep ... --record-routing FILE` writes, what `moep plan --routing FILE` reads):
//   {"format": "moep-routing-v1",
//    "model": "<ModelConfig::summary() or name>",      (informational)
//    "n_layers": L, "n_experts": E, "top_k": k,
//    "tokens": T,                                       (tokens routed per MoE layer, summed over the run)
//    "counts": [[c_0, ..., c_{E-1}], ..., null, ...]}   (per layer: how often each expert was among a token's
//                                                        top-k; null or [] for dense layers)
// For every MoE layer, Σ_e counts[l][e] = T · k. Rows that the engine ran more than once (none today) count
// each time they were routed.
//
// From a record, expert e of layer l is chosen by a token with probability π_e = counts[l][e] / T (Σ π = k);
// the model draws each token's k distinct experts with exactly these inclusion probabilities (systematic
// sampling over a random order of the experts). Uniform routing is π_e = k / E.
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
};

// Counts routing decisions and writes the record above (for the engine's --record-routing FILE).
// Not thread-safe; add() allocates nothing.
class RoutingCounter {
 public:
  RoutingCounter(int64_t n_layers, int64_t n_experts, int64_t top_k, const std::vector<bool>& layer_is_moe,
                 std::string model);
  // expert_ids: [rows × top_k] of one forward step of MoE layer `layer` (Transformer::last_routing()).
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
RoutingSet make_routings(const std::vector<double>& pi, int64_t rows, int64_t k, int64_t samples, uint64_t seed,
                         int64_t exact_limit = 200000);

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
ExpertTimeStats evaluate_routings(const ExpertPlacement& placement, int64_t layer, const RoutingSet& routings,
                                  const std::vector<double>& cost);
// make_routings + evaluate_routings.
ExpertTimeStats expected_expert_time(const ExpertPlacement& placement, int64_t layer, const std::vector<double>& pi,
                                     int64_t rows, int64_t k, const std::vector<double>& cost, int64_t samples,
                                     uint64_t seed, int64_t exact_limit = 200000);

}  // namespace moep::perf
