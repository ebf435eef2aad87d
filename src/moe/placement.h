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

namespace moep {

// The placement the engine and the performance model use when none is named.
inline constexpr const char* kDefaultPlacement = "split";

// Rank `rank`'s part [first, first + count) of an ffn dimension of size ffn split over n_ranks: equal parts on
// 32-element boundaries (64 bytes of bf16) where every rank still gets some, plain equal parts otherwise. With
// block > 1 (the weights of a quantized type's block, which a slice of a down projection must not cut), the parts
// are whole blocks, as equal as blocks allow (a rank may get none when there are fewer blocks than ranks).
struct FfnSlice {
  int64_t first = 0, count = 0;
};
FfnSlice ffn_split(int64_t ffn, int rank, int n_ranks, int64_t block = 1);

// Rank `rank`'s KV heads [first, first + count) of n_kv_heads over n_ranks: whole heads, n_kv_heads / n_ranks
// each and one more on the first n_kv_heads % n_ranks ranks. With fewer KV heads than ranks the last ranks get
// none (they add nothing to attention's all-reduce).
FfnSlice kv_head_split(int64_t n_kv_heads, int rank, int n_ranks);

// What a rank holds of the weights every rank once repeated (--attention, --head): each of them whole
// (replicated) or divided over the ranks.
struct DenseSplit {
  // Attention by heads: whole KV heads per rank (kv_head_split), the query heads that attend to them, the
  // matching rows of q/k/v and input columns of o, and the KV cache's heads. One all-reduce joins the outputs.
  bool attention = false;
  // The output head by vocabulary rows (ffn_split of the vocabulary); the logits are gathered to rank 0.
  bool head = false;
};

class ExpertPlacement;

// A placement as the user names it, parsed once where the name comes in (a flag): its kind, and for kFile the
// path of a placement file.
enum class PlacementKind { kSplit, kContiguous, kRoundRobin, kFile };
struct PlacementSpec {
  PlacementKind kind = PlacementKind::kSplit;
  std::string file;  // kFile: {"experts": [[ranks]...]}, see ExpertPlacement::from_json_file
  // "split", "contiguous", "round-robin" (or "roundrobin"), anything else a file's path; "" is contiguous (as
  // placement names have always been read). Never fails: a file is read when the placement is made.
  static PlacementSpec parse(const std::string& text);
};

// What one rank holds of the experts: which whole experts (holds), and which slice of each held expert's ffn
// dimension, and of a shared expert's (ffn_slice: all of it unless the placement splits experts). The one
// value the loader, the weight binder and the MoE block read. A view: the placement must outlive it. Default:
// everything, whole (one rank).
class RankShare {
 public:
  RankShare() = default;
  RankShare(const ExpertPlacement& placement, int rank, DenseSplit dense = {})
      : placement_(&placement), rank_(rank), dense_(dense) {}
  int rank() const { return rank_; }
  int n_ranks() const;
  const DenseSplit& dense() const { return dense_; }
  // This rank's rows of the output head (all of them unless dense().head).
  FfnSlice vocab_rows(int64_t vocab) const;
  // This rank's KV heads (all of them unless dense().attention); its query heads are these × n_heads/n_kv_heads.
  FfnSlice kv_heads(int64_t n_kv_heads) const;
  bool holds(int64_t layer, int64_t expert) const;
  FfnSlice ffn_slice(int64_t ffn) const;
  // Every (token, expert) pair is computed on every rank, each on its slice; the all-reduce adds the slices.
  bool is_split() const;

 private:
  const ExpertPlacement* placement_ = nullptr;
  int rank_ = 0;
  DenseSplit dense_;
};

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
  static ExpertPlacement from_spec(const PlacementSpec& spec, int64_t n_layers, int64_t n_experts, int n_ranks);
  // The same from a placement's name: "contiguous", "round-robin", "split" or a path to a JSON file.
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
  // The largest slice of an ffn dimension of size ffn on any rank (the one that sets the pace).
  int64_t largest_ffn_slice(int64_t ffn) const;
  RankShare share(int rank, DenseSplit dense = {}) const { return RankShare(*this, rank, dense); }
  // Throws moep::Error if a split placement cannot give every rank a part of an ffn dimension of size ffn
  // (0: none, accepted).
  void require_splittable(int64_t ffn) const;
  // Split cuts the ffn dimensions in whole blocks of `weights` (1: anywhere; 32 or 256 for a GGUF model's
  // quantized down projections: model/gguf_model.h's ffn_block_weights). Part of the fingerprint.
  void set_ffn_block(int64_t weights) { ffn_block_ = weights; }
  int64_t ffn_block() const { return ffn_block_; }
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
  int64_t ffn_block_ = 1;
  // No experts placed yet: the fields set, replicas_ sized; throws moep::Error for n_ranks < 1.
  static ExpertPlacement blank(std::string kind, int64_t n_layers, int64_t n_experts, int n_ranks);
  std::vector<std::vector<int>> replicas_;  // [layer * E + expert] -> ranks (sorted, unique)
};

}  // namespace moep
