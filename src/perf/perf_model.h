// The performance model of DESIGN.md: time of one forward step of moep's expert-parallel decode, from a
// model shape, a hardware profile and a network profile. Needs no weights; pure arithmetic plus a seeded
// Monte Carlo (or exact enumeration) for the busiest rank's experts.
//
// One step of R rows (R = batch for decode; a chunk of the prompt for prefill), per layer ℓ:
//   t_attn   = Σ_proj t_lin(W_proj, R) + t_attn_core(R·C·macs_per_pos, R·C·kv_bytes_per_pos)   (every rank)
//   t_router = t_lin(E·d, R)                                                                     (MoE layers)
//   t_dense  = shared expert (MoE layers) or the dense MLP (dense layers): Σ t_lin(W, R)          (every rank)
//   t_exp    = E_routing[ max_r Σ_{e on r, n_e>0} t_expert(n_e) ],  t_expert(n) = 2·t_lin(f·d, n) + t_lin(d·f, n)
//   t_ar     = allreduce(N, R·d·4 bytes) + emulated latency·⌈log2 N⌉                                (MoE layers)
// On a GPU profile (backend vulkan or metal) every kernel costs a dispatch: each matrix op's is inside t_lin, each
// expert run adds one (silu·mul), and t_dispatch = the layer's other kernels (norms, RoPE, KV write, attention,
// router top-k, residual adds) × dispatch_us; the all-reduce (N > 1) adds the host round trip: roundtrip_us +
// 2 · bytes / host_copy_bw (the buffer goes down to the host and back up).
// and once per step t_head = t_lin(V·d, rows wanting logits); with a calibrated network, also the measured
// cost of synchronizing ranks that arrive from work of their own: t_sync = jitter fraction × compute. t_lin(W, n) is the hardware's time for one
// matrix op (measured table or roofline, see HardwareProfile::linear_seconds).
// Time split: compute = everything at the mean rank's expert time; imbalance = E[max] − E[mean] of the
// experts; communication = t_ar. Decode tokens/s = R / step; prefill tokens/s = prompt / Σ chunks.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

#include "moe/placement.h"
#include "perf/allreduce.h"
#include "perf/model_shape.h"
#include "perf/profiles.h"
#include "perf/routing.h"

namespace moep::perf {

struct Scenario {
  int nodes = 1;
  int64_t batch = 1;           // sequences decoded together: rows of one decode step
  int64_t context = 1024;      // positions each sequence attends over while decoding (also its KV capacity)
  int64_t prompt = 512;        // prompt tokens per sequence (prefill)
  int64_t prefill_chunk = 64;  // rows per forward step in prefill
  std::string dtype = "bf16";  // weights
  std::string kv_dtype = "f32";  // moep keeps its KV cache in f32
  std::string placement = kDefaultPlacement;  // split, contiguous, round-robin or a placement JSON file
  const RoutingRecord* routing = nullptr;  // null: uniform routing
  bool identical_rows = false;  // rows of a step route alike (each step's choice still uniform or recorded)
  double emulate_latency_us = 0.0;  // moep's --emulate-latency-us
  // --attention split / --head split (only with nodes > 1): each rank reads its share of the attention
  // projections and KV cache (whole KV heads) and joins the heads with ModelShape::attn_split_exchanges
  // all-reduces per layer; each rank computes its rows of the output head and greedy decoding's pick is one
  // all-gather of each rank's best (value, id). Throws for a model whose attention moep cannot divide.
  bool split_attention = false, split_head = false;
  int64_t samples = 0;         // random routings per layer (0: chosen from the problem size)
  uint64_t seed = 1;
};

struct StepTimes {  // seconds
  double attention = 0, router = 0, dense = 0, experts_mean = 0, experts_max = 0, allreduce = 0, head = 0;
  double sync = 0;  // skew and jitter of synchronized ranks (measured networks only)
  double dispatch = 0;  // GPU: dispatches of the kernels that are not matrix ops (0 on the CPU)
  double attention_allreduce = 0;  // split attention: the all-reduces that join the ranks' heads
  double head_gather = 0;          // split head: the all-gather of the ranks' best logits (greedy decoding)
  double compute() const { return attention + router + dense + experts_mean + head + dispatch; }
  double imbalance() const { return experts_max - experts_mean; }
  double communication() const { return allreduce + attention_allreduce + head_gather + sync; }
  double total() const { return compute() + imbalance() + communication(); }
  StepTimes& operator+=(const StepTimes& o);
};

struct MemoryUse {  // bytes on the fullest node
  double replicated = 0, experts = 0, kv_cache = 0, activations = 0;
  double total() const { return replicated + experts + kv_cache + activations; }
  double capacity = 0;  // usable memory of the hardware
  bool fits() const { return total() <= capacity; }
  int64_t experts_held = 0;  // expert matrices (all layers) of the fullest node
};

struct Prediction {
  StepTimes decode;                // one decode step (batch rows)
  double decode_tokens_per_s = 0;  // batch / decode.total()
  StepTimes prefill;               // one sequence's whole prompt
  double prefill_tokens_per_s = 0;
  MemoryUse memory;
  double weight_bytes_per_step = 0;  // weights a (mean) rank reads per decode step
  int64_t exchanges_per_step = 0;    // collectives per decode step (all-reduces, and the split head's all-gather)
  double experts_per_layer = 0;      // distinct (rank, expert) runs per MoE layer per decode step, all ranks
  double allreduce_bytes = 0;        // per MoE layer per decode step
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;  // chosen for the decode message
  bool experts_exact = false;        // E[max] by exact enumeration (else Monte Carlo)
  int64_t expert_samples = 0;
  double price_usd = 0, power_w = 0;  // whole configuration (nodes × hardware + network per node); 0: unknown
};

// Caches the expert statistics (which do not depend on the network) so that sweeps stay fast.
class Predictor {
 public:
  Predictor(const ModelShape& model, const HardwareProfile& hw);
  // Throws moep::Error for nonsense (nodes < 1, batch < 1, ...).
  Prediction predict(const NetworkProfile& net, const Scenario& s);
  const ModelShape& model() const { return model_; }
  const HardwareProfile& hardware() const { return hw_; }
  // Where the ranks share one host, they map the same checkpoint pages: the weights every rank holds
  // (attention, router, shared expert, dense layers, head) are read from one copy in memory, and each rank
  // reads them about as fast as one rank alone. `hw` (for example the 1-rank calibration of that host) then
  // times those ops; the experts, which are not shared, keep the N-rank profile. Null: off (separate nodes).
  void set_replicated_hardware(const HardwareProfile* hw) { rep_hw_ = hw; }

 private:
  ExpertTimeStats expert_stats(const Scenario& s, int64_t layer_class, int64_t rows);
  StepTimes step(const NetworkProfile& net, const Scenario& s, int64_t rows, double attended_positions,
                 int64_t logit_rows, double* weight_bytes, AllreduceAlgorithm* alg, bool* exact, int64_t* samples,
                 double* experts_per_layer = nullptr);
  double lin(const Scenario& s, double elems, double rows, bool in_out = false) const;
  double lin_replicated(const Scenario& s, double elems, double rows) const;  // rep_hw_ when set

  struct PlacementInfo {
    ExpertPlacement placement;
    bool same_every_layer = true;  // then uniform routing needs one E[max] for all layers
  };
  const PlacementInfo& placement(const std::string& spec, int nodes);

  const ModelShape& model_;
  const HardwareProfile& hw_;
  const HardwareProfile* rep_hw_ = nullptr;
  std::map<std::pair<std::string, int>, PlacementInfo> placements_;
  // Sampled routings by (distribution: -1 uniform or the layer, rows, seed, samples asked): shared by every
  // node count, placement and network.
  std::map<std::tuple<int64_t, int64_t, uint64_t, int64_t, bool>, RoutingSet> routings_;
  std::map<std::tuple<std::string, int, int64_t, int64_t, std::string, std::string, const void*, uint64_t, int64_t, bool>,
           ExpertTimeStats>
      cache_;
};

// One-shot convenience.
Prediction predict(const ModelShape& model, const HardwareProfile& hw, const NetworkProfile& net, const Scenario& s);

// The largest rank's share of the attention (its KV heads over all) and of the head's rows (its vocabulary rows
// over all) when they are split over `nodes` ranks as the engine splits them; 1 when not split or nodes == 1.
double split_attention_share(const ModelShape& m, const Scenario& s);
double split_head_share(const ModelShape& m, const Scenario& s);

// Memory of the fullest node (no timing).
MemoryUse memory_use(const ModelShape& model, const HardwareProfile& hw, const Scenario& s);

}  // namespace moep::perf
