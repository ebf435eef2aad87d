#include "moe/placement.h"

#include <algorithm>
#include <filesystem>
#include <utility>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_read.h"

namespace moep {

ExpertPlacement ExpertPlacement::blank(std::string kind, int64_t n_layers, int64_t n_experts, int n_ranks) {
  if (n_ranks < 1) fail("placement: number of ranks must be at least 1");
  ExpertPlacement p;
  p.n_ranks_ = n_ranks;
  p.n_layers_ = n_layers;
  p.n_experts_ = n_experts;
  p.kind_ = std::move(kind);
  p.replicas_.resize(size_t(n_layers * n_experts));
  return p;
}

ExpertPlacement ExpertPlacement::contiguous(int64_t n_layers, int64_t n_experts, int n_ranks) {
  ExpertPlacement p = blank("contiguous", n_layers, n_experts, n_ranks);
  const int64_t base = n_experts / n_ranks, extra = n_experts % n_ranks;
  for (int64_t l = 0; l < n_layers; ++l) {
    int64_t e = 0;
    for (int r = 0; r < n_ranks; ++r) {
      const int64_t cnt = base + (r < extra ? 1 : 0);
      for (int64_t i = 0; i < cnt; ++i, ++e) p.replicas_[size_t(l * n_experts + e)] = {r};
    }
  }
  return p;
}

ExpertPlacement ExpertPlacement::round_robin(int64_t n_layers, int64_t n_experts, int n_ranks) {
  ExpertPlacement p = blank("round-robin", n_layers, n_experts, n_ranks);
  for (int64_t l = 0; l < n_layers; ++l)
    for (int64_t e = 0; e < n_experts; ++e) p.replicas_[size_t(l * n_experts + e)] = {int(e % n_ranks)};
  return p;
}

ExpertPlacement ExpertPlacement::split(int64_t n_layers, int64_t n_experts, int n_ranks) {
  ExpertPlacement p = blank("split", n_layers, n_experts, n_ranks);
  p.split_ = true;
  std::vector<int> all(static_cast<size_t>(n_ranks));
  for (int r = 0; r < n_ranks; ++r) all[size_t(r)] = r;
  p.replicas_.assign(size_t(n_layers * n_experts), all);
  return p;
}

FfnSlice ffn_split(int64_t ffn, int rank, int n_ranks, int64_t block) {
  MOEP_ASSERT(n_ranks >= 1 && rank >= 0 && rank < n_ranks && block >= 1);
  if (n_ranks == 1) return {0, ffn};
  const int64_t unit = block > 1 ? block : ffn >= 32 * int64_t(n_ranks) ? 32 : 1;
  const int64_t units = (ffn + unit - 1) / unit;
  auto edge = [&](int r) { return std::min(ffn, units * int64_t(r) / n_ranks * unit); };
  const int64_t b = edge(rank), e = rank + 1 == n_ranks ? ffn : edge(rank + 1);
  return {b, e - b};
}

FfnSlice kv_head_split(int64_t n_kv_heads, int rank, int n_ranks) {
  MOEP_ASSERT(n_ranks >= 1 && rank >= 0 && rank < n_ranks && n_kv_heads >= 0);
  const int64_t base = n_kv_heads / n_ranks, extra = n_kv_heads % n_ranks;
  return {rank * base + std::min<int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

int RankShare::n_ranks() const { return placement_ ? placement_->n_ranks() : 1; }

FfnSlice RankShare::vocab_rows(int64_t vocab) const {
  return dense_.head ? ffn_split(vocab, rank_, n_ranks()) : FfnSlice{0, vocab};
}

FfnSlice RankShare::kv_heads(int64_t n_kv_heads) const {
  return dense_.attention ? kv_head_split(n_kv_heads, rank_, n_ranks()) : FfnSlice{0, n_kv_heads};
}

bool RankShare::holds(int64_t layer, int64_t expert) const {
  return !placement_ || placement_->holds(rank_, layer, expert);
}

FfnSlice RankShare::ffn_slice(int64_t ffn) const {
  return placement_ ? placement_->ffn_slice(rank_, ffn) : FfnSlice{0, ffn};
}

bool RankShare::is_split() const { return placement_ && placement_->is_split(); }

FfnSlice ExpertPlacement::ffn_slice(int rank, int64_t ffn) const {
  return split_ ? ffn_split(ffn, rank, n_ranks_, ffn_block_) : FfnSlice{0, ffn};
}

int64_t ExpertPlacement::largest_ffn_slice(int64_t ffn) const {
  int64_t most = 0;
  for (int r = 0; r < n_ranks_; ++r) most = std::max(most, ffn_slice(r, ffn).count);
  return most;
}

void ExpertPlacement::require_splittable(int64_t ffn) const {
  if (split_ && ffn > 0 && ffn < n_ranks_)
    fail("placement split: ", n_ranks_, " ranks cannot each take a part of an ffn dimension of ", ffn,
         " (use at most ", ffn, " ranks, or --placement contiguous)");
  if (split_ && ffn > 0 && ffn_block_ > 1 && ffn / ffn_block_ < n_ranks_)
    fail("placement split: ", n_ranks_, " ranks cannot each take a part of an ffn dimension of ", ffn,
         ", which the model's quantized down projection stores in ", ffn / ffn_block_, " block(s) of ", ffn_block_,
         " weights that moep does not cut (use at most ", std::max<int64_t>(1, ffn / ffn_block_),
         " ranks, --placement contiguous or round-robin for whole experts, or a type of 32-weight blocks: moep "
         "quantize --type q8_0, q4_0 or mxfp4)");
}

ExpertPlacement ExpertPlacement::from_json_file(const std::string& path, int64_t n_layers, int64_t n_experts,
                                                int n_ranks) {
  if (!std::filesystem::exists(path)) fail("placement file ", path, " cannot be read");
  const std::string text = read_regular_file(path, kMaxConfigJsonBytes, "a placement file");
  check_json_depth(text, kMaxJsonDepth, path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": placement file is not valid JSON (", e.what(), ")");
  }
  if (!j.is_object() || !j.contains("experts"))
    fail(path, ": expected {\"experts\": [[ranks of expert 0], [ranks of expert 1], ...]}");
  auto read_list = [&](const nlohmann::json& a, const std::string& where) {
    if (!a.is_array() || int64_t(a.size()) != n_experts)
      fail(path, ": ", where, " must list the ranks of each of the model's ", n_experts, " experts");
    std::vector<std::vector<int>> out(static_cast<size_t>(n_experts));
    for (int64_t e = 0; e < n_experts; ++e) {
      const auto& rs = a[size_t(e)];
      if (!rs.is_array() || rs.empty()) fail(path, ": ", where, " expert ", e, " needs a non-empty list of ranks");
      for (const auto& r : rs) {
        // As int64: a rank of 2^32 read as an int would wrap to rank 0 and be taken (an unsigned above 2^63 reads
        // as negative, and is refused too).
        if (!r.is_number_integer() || r.get<int64_t>() < 0 || r.get<int64_t>() >= n_ranks)
          fail(path, ": ", where, " expert ", e, " names rank ", r.dump(), " but the job has ", n_ranks, " ranks");
        out[size_t(e)].push_back(int(r.get<int64_t>()));
      }
      auto& v = out[size_t(e)];
      std::sort(v.begin(), v.end());
      v.erase(std::unique(v.begin(), v.end()), v.end());
    }
    return out;
  };
  ExpertPlacement p = blank("file " + path, n_layers, n_experts, n_ranks);
  const auto all = read_list(j["experts"], "\"experts\"");
  for (int64_t l = 0; l < n_layers; ++l)
    for (int64_t e = 0; e < n_experts; ++e) p.replicas_[size_t(l * n_experts + e)] = all[size_t(e)];
  if (j.contains("layers")) {
    if (!j["layers"].is_object()) fail(path, ": \"layers\" must be an object {\"layer index\": [...]}");
    for (auto it = j["layers"].begin(); it != j["layers"].end(); ++it) {
      // The whole key must be the index: "1x" or " 1" is not layer 1.
      int64_t l = -1;
      const std::string& key = it.key();
      const bool digits = std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!key.empty() && key.size() <= 18 && digits) l = std::stoll(key);
      if (l < 0 || l >= n_layers) fail(path, ": layer '", it.key(), "' is not a layer index below ", n_layers);
      const auto v = read_list(it.value(), "layer " + it.key());
      for (int64_t e = 0; e < n_experts; ++e) p.replicas_[size_t(l * n_experts + e)] = v[size_t(e)];
    }
  }
  return p;
}

PlacementSpec PlacementSpec::parse(const std::string& text) {
  PlacementSpec p;
  if (text == "contiguous" || text.empty()) p.kind = PlacementKind::kContiguous;
  else if (text == "round-robin" || text == "roundrobin") p.kind = PlacementKind::kRoundRobin;
  else if (text == "split") p.kind = PlacementKind::kSplit;
  else p = {PlacementKind::kFile, text};
  return p;
}

ExpertPlacement ExpertPlacement::from_spec(const PlacementSpec& spec, int64_t n_layers, int64_t n_experts,
                                           int n_ranks) {
  switch (spec.kind) {
    case PlacementKind::kContiguous: return contiguous(n_layers, n_experts, n_ranks);
    case PlacementKind::kRoundRobin: return round_robin(n_layers, n_experts, n_ranks);
    case PlacementKind::kSplit: return split(n_layers, n_experts, n_ranks);
    case PlacementKind::kFile: break;
  }
  return from_json_file(spec.file, n_layers, n_experts, n_ranks);
}

ExpertPlacement ExpertPlacement::from_spec(const std::string& spec, int64_t n_layers, int64_t n_experts,
                                           int n_ranks) {
  return from_spec(PlacementSpec::parse(spec), n_layers, n_experts, n_ranks);
}

bool ExpertPlacement::holds(int rank, int64_t layer, int64_t expert) const {
  const auto& r = replicas(layer, expert);
  return std::find(r.begin(), r.end(), rank) != r.end();
}

int64_t ExpertPlacement::experts_held(int rank) const {
  int64_t n = 0;
  for (const auto& r : replicas_) n += std::find(r.begin(), r.end(), rank) != r.end();
  return n;
}

void ExpertPlacement::assign(int64_t layer, const int32_t* experts, int64_t n_pairs, int32_t* out_rank,
                             int64_t* load) const {
  if (split_) {
    std::fill(load, load + n_ranks_, n_pairs);
    std::fill(out_rank, out_rank + n_pairs, -1);
    return;
  }
  std::fill(load, load + n_ranks_, 0);
  for (int64_t i = 0; i < n_pairs; ++i) {
    const auto& reps = replicas(layer, experts[i]);
    int best = reps[0];
    for (size_t j = 1; j < reps.size(); ++j)
      if (load[reps[j]] < load[best]) best = reps[j];
    load[best]++;
    out_rank[i] = best;
  }
}

std::string ExpertPlacement::describe() const {
  if (split_) return "split, " + std::to_string(n_ranks_) + (n_ranks_ == 1 ? " rank" : " ranks, a slice of every expert each");
  int64_t replicated = 0;
  for (const auto& r : replicas_) replicated += r.size() > 1;
  std::string s = kind_ + ", " + std::to_string(n_ranks_) + (n_ranks_ == 1 ? " rank" : " ranks");
  if (replicated) s += ", " + std::to_string(replicated) + " expert-layers replicated";
  return s;
}

uint64_t ExpertPlacement::fingerprint() const {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xff)) * 1099511628211ull;
  };
  mix(uint64_t(n_ranks_));
  mix(uint64_t(n_layers_));
  mix(uint64_t(n_experts_));
  mix(uint64_t(split_));
  if (ffn_block_ > 1) mix(uint64_t(ffn_block_));  // placements of unquantized models keep their fingerprints
  for (const auto& r : replicas_) {
    mix(r.size());
    for (int x : r) mix(uint64_t(x));
  }
  return h;
}

}  // namespace moep
