// The expert-parallel MoE block of one layer, for a batch of token rows:
//   router (every rank, identical) → top-k → assignment of each (token, expert) pair to one rank holding that
//   expert → this rank's experts for its pairs, weighted by the router → one all-reduce (sum) of the
//   [tokens × d_model] result. Nothing else crosses the network. With a split placement every rank computes
//   every pair on its slice of the expert's ffn dimension, and the same all-reduce adds the slices.
// A shared expert (Qwen2-MoE), times its sigmoid gate, is part of the block: under a split placement each rank
// adds its slice before the all-reduce; otherwise every rank computes all of it and adds it after.
// All scratch is sized at construction; forward() allocates nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/thread_pool.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/weights.h"
#include "moe/placement.h"

namespace moep {

struct MoeTimes {
  // Steady-clock boundaries of the last call: start, router done, experts done, all-reduce done.
  int64_t t_start = 0, t_router = 0, t_experts = 0, t_end = 0;
  int64_t router_ns = 0;
  int64_t experts_ns = 0;
  int64_t allreduce_ns = 0;
  int64_t expert_pairs = 0;     // (token, expert) pairs this rank computed
  int64_t experts_touched = 0;  // distinct local experts that had work
  // The shared expert of the last call: steady-clock start and end (both 0 when the layer has none), and the
  // accumulated time.
  int64_t t_shared_start = 0, t_shared_end = 0;
  int64_t shared_ns = 0;
};

class MoeBlock {
 public:
  MoeBlock(const ModelConfig& config, const ExpertPlacement& placement, int rank, int64_t max_rows);

  // h: [T, d_model] normalized input (identical on every rank). out: [T, d_model], overwritten with the sum
  // over all ranks of the weighted expert outputs, plus the gated shared expert if the layer has one
  // (identical on every rank after the all-reduce).
  void forward(ThreadPool& pool, Communicator& comm, const LayerWeights& w, int64_t layer, const float* h,
               int64_t T, float* out, MoeTimes* times);

  // Weight bytes one token reads on this rank in layer w (router, shared expert, and on average top_k experts'
  // share held here under balanced routing), for bandwidth figures.
  double weight_bytes_per_token(const LayerWeights& w) const;

  // The routing of the last forward (for --record-routing): [T, top_k] expert ids.
  const int32_t* last_expert_ids() const { return ids_.data(); }

 private:
  // The shared expert of layer w on h, times its sigmoid gate, into shared_out_ (this rank's slice of it under
  // a split placement); records its time in times.
  void shared_expert(ThreadPool& pool, const LayerWeights& w, const float* h, int64_t T, MoeTimes* times);

  const ModelConfig& c_;
  const ExpertPlacement& placement_;
  RankShare share_;
  int64_t max_rows_;
  int64_t ffn_;  // this rank's part of each expert's ffn dimension (all of it unless split)
  std::vector<float> logits_;      // [R, E]
  std::vector<float> route_scratch_;  // [E + n_group]: route_token_grouped's choices and group scores
  std::vector<int32_t> ids_;       // [R, k]
  std::vector<float> weights_;     // [R, k]
  std::vector<int32_t> owner_;     // [R·k]
  std::vector<int64_t> load_;      // [n_ranks]
  std::vector<int64_t> count_;     // [E + 1] local pairs per expert, then offsets
  std::vector<int32_t> pair_row_;  // [R·k] token row of each local pair, grouped by expert
  std::vector<float> pair_w_;      // [R·k]
  std::vector<float> xg_, g_, u_, y_;  // [R·k, d], [R·k, ffn], [R·k, ffn], [R·k, d]
  std::vector<ops::LinearJob> up_jobs_, down_jobs_, down_nt_jobs_;  // [2E], [E], [E]: one region each
  // The shared expert: gate and up [R, its ffn slice], output [R, d], gate logits [R].
  std::vector<float> shared_g_, shared_u_, shared_out_, shared_gate_;
  ops::ManyScratch many_;
};

}  // namespace moep
