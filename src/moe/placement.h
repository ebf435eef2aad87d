// Which rank holds which expert. Every rank holds everything that is not an expert; experts are divided:
// contiguous blocks, round-robin, or an explicit map (JSON), where an expert may have several replicas.
// Or every expert is split: rank r holds slice r of every expert's ffn dimension (rows of gate and up, the
// matching inputs of down) and computes every (token, expert) pair on that slice; the all-reduce that sums
// the experts' outputs over ranks also sums the slices. Every rank then reads the same bytes each step,
// whatever the routing, where a divided placement leaves ranks with fewer active experts waiting for the
// rank with most.
// When an expert has several replicas, each (token, expert) pair of a step goes to the replica with the least
// work assigned so far in that step (ties: the lower rank); every rank computes the same assignment from the
// same routing, so no message is needed to agree on it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"

namespace moep {

class ExpertPlacement {
 public:
  ExpertPlacement() = default;
  // Experts [r·E/N, (r+1)·E/N) on rank r (the remainder spread over the first ranks), the same in every layer.
  static ExpertPlacement contiguous(int64_t n_layers, int64_t n_experts, int n_ranks);
  // Expert e on rank e mod N.
  static ExpertPlacement round_robin(int64_t n_layers, int64_t n_experts, int n_ranks);
  // From a JSON file:
  //   {"experts": [[0], [1], [0, 1], ...],          // for every expert index, the ranks holding it
  //    "layers": {"3": [[1], [0], ...]}}             // optional per-layer overrides, same form
  // Throws moep::Error naming the file for a missing expert, a rank out of range, or a malformed file.
  static ExpertPlacement from_json_file(const std::string& path, int64_t n_layers, int64_t n_experts, int n_ranks);
  // Every expert on every rank, each rank a slice of its ffn dimension (see ffn_slice).
  static ExpertPlacement split(int64_t n_layers, int64_t n_experts, int n_ranks);
  // "contiguous", "round-robin", "split" or a path to a JSON file.
  static ExpertPlacement from_spec(const std::string& spec, int64_t n_layers, int64_t n_experts, int n_ranks);

  int n_ranks() const { return n_ranks_; }
  int64_t n_layers() const { return n_layers_; }
  int64_t n_experts() const { return n_experts_; }
  const std::vector<int>& replicas(int64_t layer, int64_t expert) const {
    return replicas_[size_t(layer * n_experts_ + expert)];
  }
  bool holds(int rank, int64_t layer, int64_t expert) const;
  bool is_split() const { return split_; }
  // The part [first, first + count) of an expert's ffn dimension of size ffn that `rank` computes: all of it
  // unless split; split, ffn_split (equal parts on 32-element boundaries where ffn allows).
  using Slice = FfnSlice;
  Slice ffn_slice(int rank, int64_t ffn) const;
  int64_t experts_held(int rank) const;  // summed over layers

  // For n_pairs (token, expert) pairs of one layer, in token-major order, writes the rank that computes each
  // (split: every rank computes every pair on its slice; out_rank gets -1 and load the pair count each).
  // `load` is scratch of n_ranks() entries.
  void assign(int64_t layer, const int32_t* experts, int64_t n_pairs, int32_t* out_rank, int64_t* load) const;

  std::string describe() const;  // e.g. "contiguous, 2 ranks" / "file x.json, 3 ranks, 4 replicated"
  uint64_t fingerprint() const;

 private:
  int n_ranks_ = 1;
  int64_t n_layers_ = 0;
  int64_t n_experts_ = 0;
  std::string kind_;
  bool split_ = false;
  // No experts placed yet: the fields set, replicas_ sized; throws moep::Error for n_ranks < 1.
  static ExpertPlacement blank(std::string kind, int64_t n_layers, int64_t n_experts, int n_ranks);
  std::vector<std::vector<int>> replicas_;  // [layer * E + expert] -> ranks (sorted, unique)
};

}  // namespace moep
