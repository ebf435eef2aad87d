#include "perf/perf_model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "moe/placement.h"

namespace moep::perf {

namespace {

double kv_bytes_per_value(const std::string& kv_dtype) {
  if (kv_dtype == "f32") return 4.0;
  if (kv_dtype == "bf16" || kv_dtype == "f16") return 2.0;
  if (kv_dtype == "q8_0") return 34.0 / 32.0;
  fail("KV cache dtype '", kv_dtype, "' is not known (f32, bf16, f16, q8_0)");
}

void check_scenario(const ModelShape& m, const Scenario& s) {
  if (s.nodes < 1) fail("nodes must be 1 or more, got ", s.nodes);
  if (s.nodes > 4096) fail("nodes: ", s.nodes, " is more than this model supports (4096)");
  if (s.batch < 1) fail("batch must be 1 or more, got ", s.batch);
  if (s.context < 1) fail("context must be 1 or more positions, got ", s.context);
  if (s.prompt < 0) fail("prompt must be 0 or more tokens, got ", s.prompt);
  if (s.prefill_chunk < 1) fail("prefill chunk must be 1 or more rows, got ", s.prefill_chunk);
  if (s.emulate_latency_us < 0) fail("emulated latency must be 0 or more microseconds");
  if (m.n_experts < 1 || m.top_k < 1) fail(m.name, ": has no experts; the model is for mixture-of-experts models");
  if (s.split_attention && s.nodes > 1 && m.attn_split_exchanges < 1)
    fail(m.name, ": its attention (multi-head latent attention) is not divided over ranks; predict it replicated");
  if (s.routing) check_routing_matches(*s.routing, m);
}

// Whether every layer has the same placement as layer 0 (then uniform routing needs one E[max] only).
bool placement_uniform_over_layers(const ExpertPlacement& p) {
  for (int64_t l = 1; l < p.n_layers(); ++l)
    for (int64_t e = 0; e < p.n_experts(); ++e)
      if (p.replicas(l, e) != p.replicas(0, e)) return false;
  return true;
}

// The share of a shared expert's ffn dimension on the fullest rank: 1 unless the placement splits experts.
double shared_expert_share(const ModelShape& m, const ExpertPlacement& pl) {
  if (!pl.is_split() || m.shared_elems <= 0) return 1.0;
  const int64_t ffn = std::max<int64_t>(1, (m.shared_elems + m.d_model) / (3 * m.d_model));  // 3·d·ffn (+ d: gate)
  return double(pl.largest_ffn_slice(ffn)) / double(ffn);
}

// GPU kernels per layer besides the matrix ops (which t_lin charges a dispatch each) and the experts' silu·mul
// (charged per expert run), for a straightforward backend: a fusing one has fewer, and its calibration against
// GPU runs is what tells. Attention: input norm, RoPE, KV write, attention, residual add. MoE: post-attention
// norm, router softmax/top-k, gathering the rows for the experts, combining their outputs into the residual, and
// the shared expert's silu·mul where there is one. Dense MLP: norm, silu·mul, residual add. Head: final norm.
constexpr double kGpuAttentionKernels = 5, kGpuMoeKernels = 4, kGpuDenseKernels = 3, kGpuHeadKernels = 1;

}  // namespace

StepTimes& StepTimes::operator+=(const StepTimes& o) {
  attention += o.attention;
  router += o.router;
  dense += o.dense;
  experts_mean += o.experts_mean;
  experts_max += o.experts_max;
  allreduce += o.allreduce;
  head += o.head;
  sync += o.sync;
  dispatch += o.dispatch;
  attention_allreduce += o.attention_allreduce;
  head_gather += o.head_gather;
  return *this;
}

Predictor::Predictor(const ModelShape& model, const HardwareProfile& hw) : model_(model), hw_(hw) {}

double Predictor::lin(const Scenario& s, double elems, double rows, bool in_out) const {
  return hw_.linear_seconds(s.dtype, weight_type(s.dtype).bytes_per_weight, elems, rows, in_out);
}

double Predictor::lin_replicated(const Scenario& s, double elems, double rows) const {
  const HardwareProfile& hw = rep_hw_ ? *rep_hw_ : hw_;
  return hw.linear_seconds(s.dtype, weight_type(s.dtype).bytes_per_weight, elems, rows, false);
}

const Predictor::PlacementInfo& Predictor::placement(const std::string& spec, int nodes) {
  const auto key = std::make_pair(spec, nodes);
  auto it = placements_.find(key);
  if (it != placements_.end()) return it->second;
  PlacementInfo info{ExpertPlacement::from_spec(spec, model_.n_layers, model_.n_experts, nodes), true};
  info.same_every_layer = placement_uniform_over_layers(info.placement);
  return placements_.emplace(key, std::move(info)).first->second;
}

ExpertTimeStats Predictor::expert_stats(const Scenario& s, int64_t layer, int64_t rows) {
  const ModelShape& m = model_;
  const PlacementInfo& info = placement(s.placement, s.nodes);
  const ExpertPlacement& pl = info.placement;
  // Layers with the same placement and distribution share one result.
  const bool shared = info.same_every_layer && (!s.routing || s.routing->counts[size_t(layer)].empty());
  const int64_t key_layer = shared ? -1 : layer;
  const auto key = std::make_tuple(s.dtype, s.nodes, rows, key_layer, s.placement, s.kv_dtype,
                                   static_cast<const void*>(s.routing), s.seed, s.samples, s.identical_rows);
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  const std::vector<double> pi = inclusion_probabilities(s.routing, layer, m.n_experts, m.top_k);

  const int64_t k = m.top_k, n_pairs = rows * k;
  std::vector<double> cost(size_t(n_pairs + 1), 0.0);
  // Split experts: every rank runs its slice of every active expert (the largest slice sets the pace).
  const int64_t ffn = pl.largest_ffn_slice(m.expert_ffn);
  const double fd = double(ffn) * double(m.d_model);
  // On a GPU the silu·mul between up and down is a kernel of its own: one more dispatch per expert run.
  const double extra = hw_.expert_extra_seconds(s.dtype, weight_type(s.dtype).bytes_per_weight) + hw_.dispatch_seconds();
  for (int64_t n = 1; n <= n_pairs; ++n)
    cost[size_t(n)] = 2.0 * lin(s, fd, double(n)) + lin(s, fd, double(n), m.expert_down_in_out) + extra;
  // Routings: one set per distribution (uniform, or each recorded layer), sampled once.
  const bool recorded = s.routing && !s.routing->counts[size_t(layer)].empty();
  const int64_t dist = recorded ? layer : -1;
  int64_t samples = s.samples;
  if (samples <= 0) {
    // Sampling a token costs O(k) (uniform) or O(E) (recorded): keep the whole plan well under a second.
    int64_t classes = 1;
    if (s.routing)
      for (const auto& c : s.routing->counts) classes += !c.empty();
    const double per_token = recorded ? double(m.n_experts) : double(k);
    samples = std::clamp<int64_t>(int64_t(4e6 / (double(rows) * per_token * double(classes))), 30, 2000);
  }
  const auto rkey = std::make_tuple(dist, rows, s.seed, s.samples, s.identical_rows);
  auto rit = routings_.find(rkey);
  if (rit == routings_.end()) {
    // Recorded steps of this many rows are replayed as they happened; otherwise routings are drawn.
    RoutingSet set;
    if (recorded) set = recorded_routings(*s.routing, layer, rows);
    if (set.count == 0)
      set = make_routings(pi, rows, k, samples, s.seed + uint64_t(rows) * 7919u + uint64_t(dist + 1) * 104729u,
                          200000, s.identical_rows);
    rit = routings_.emplace(rkey, std::move(set)).first;
  }
  // Ranks that share a host's memory (a profile calibrated with several ranks per host): a rank left reading
  // alone streams faster. That applies to the memory-bound part of an expert run: all of it at batch 1, the
  // share cost[1] / cost[n] when an expert runs n rows (n from an even spread of the step's pairs).
  int host_ranks = 1;
  double speedup = 1.0;
  if (hw_.measured && hw_.measured->info.ranks_per_host > 1 && hw_.measured->alone_speedup > 1.0) {
    host_ranks = hw_.measured->info.ranks_per_host;
    const int64_t n_even = std::clamp<int64_t>(n_pairs / std::max<int64_t>(1, m.n_experts), 1, n_pairs);
    speedup = 1.0 + (hw_.measured->alone_speedup - 1.0) * cost[1] / cost[size_t(n_even)];
  }
  const ExpertTimeStats st = evaluate_routings(pl, shared ? 0 : layer, rit->second, cost, host_ranks, speedup);
  cache_[key] = st;
  return st;
}

StepTimes Predictor::step(const NetworkProfile& net, const Scenario& s, int64_t rows, double attended_positions,
                          int64_t logit_rows, double* weight_bytes, AllreduceAlgorithm* alg, bool* exact,
                          int64_t* samples, double* experts_per_layer) {
  const ModelShape& m = model_;
  const double wb = weight_type(s.dtype).bytes_per_weight;
  const double kvb = kv_bytes_per_value(s.kv_dtype);
  const double R = double(rows), d = double(m.d_model);
  StepTimes t;
  double bytes = 0, runs = 0;
  const double ar_bytes = R * d * 4.0;  // the [rows × d_model] f32 buffer
  // A GPU's all-reduce runs on the host: its round trip (and copies) come on top, only where there is one (N > 1).
  const double t_ar = allreduce_seconds(net, s.nodes, ar_bytes, alg) + emulated_latency_seconds(s.emulate_latency_us, s.nodes) +
                      (s.nodes > 1 ? hw_.allreduce_host_seconds(ar_bytes) : 0.0);
  const double t_kernel = hw_.dispatch_seconds();  // 0 on the CPU
  // Split attention: the largest rank's share of the heads sets the pace; its outputs join in all-reduces of the
  // same [rows × d_model] buffer as the MoE's. Each rank then reads its own rows of the projections (not one copy
  // shared by the host's ranks): they are timed like the experts.
  const bool split_attn = s.split_attention && s.nodes > 1;
  const double a_share = split_attention_share(m, s);
  auto attn_lin = [&](double elems) { return split_attn ? lin(s, elems * a_share, R) : lin_replicated(s, elems, R); };
  *exact = true;
  for (int64_t l = 0; l < m.n_layers; ++l) {
    for (int64_t w : m.attn_matrices) {
      t.attention += attn_lin(double(w));
      bytes += double(w) * a_share * wb;
    }
    // A sliding-window layer attends to at most `window` positions per row.
    const int64_t window = m.layer_window.empty() ? 0 : m.layer_window[size_t(l)];
    const double attended = window > 0 ? std::min(attended_positions, R * double(window)) : attended_positions;
    t.attention += (split_attn ? hw_ : rep_hw_ ? *rep_hw_ : hw_)
                       .attention_seconds(attended * double(m.n_heads) * a_share, attended * double(m.attn_macs_per_pos) * a_share,
                                          attended * double(m.kv_elems_per_pos) * kvb * a_share);
    t.dispatch += kGpuAttentionKernels * t_kernel;
    if (split_attn) t.attention_allreduce += double(m.attn_split_exchanges) * t_ar;
    if (m.layer_is_moe[size_t(l)]) {
      t.dispatch += (kGpuMoeKernels + (m.shared_elems > 0 ? 1.0 : 0.0)) * t_kernel;
      t.router += lin_replicated(s, double(m.router_elems), R);
      bytes += double(m.router_elems) * wb;
      if (m.shared_elems > 0) {
        const double sf = double(m.shared_elems - m.d_model) / 3.0;  // one of its three matrices
        const double share = shared_expert_share(m, placement(s.placement, s.nodes).placement);
        if (share < 1.0)  // split: each rank its own slice of the three matrices, the gate on every rank
          t.dense += 3.0 * lin(s, sf * share, R) + lin_replicated(s, d, R);
        else
          t.dense += 3.0 * lin_replicated(s, sf, R) + lin_replicated(s, d, R);
        bytes += (3.0 * sf * share + d) * wb;
      }
      const ExpertTimeStats st = expert_stats(s, l, rows);
      t.experts_mean += st.mean_rank_s;
      t.experts_max += st.max_rank_s;
      bytes += st.mean_rank_experts * double(m.expert_elems) * wb;
      runs += st.mean_rank_experts * double(s.nodes);
      *exact = *exact && st.exact;
      *samples = st.samples;
      t.allreduce += t_ar;
    } else {
      t.dispatch += kGpuDenseKernels * t_kernel;
      t.dense += 3.0 * lin_replicated(s, double(m.dense_elems) / 3.0, R);
      bytes += double(m.dense_elems) * wb;
    }
  }
  if (logit_rows > 0) {
    const bool split_head = s.split_head && s.nodes > 1;
    const double h_share = split_head_share(m, s);
    t.head += split_head ? lin(s, double(m.head_elems) * h_share, double(logit_rows))
                         : lin_replicated(s, double(m.head_elems), double(logit_rows));
    t.dispatch += kGpuHeadKernels * t_kernel;
    bytes += double(m.head_elems) * h_share * wb;
    if (split_head) {
      // Greedy decoding's distributed argmax: one all-gather of each rank's best (value, id) per row, ⌈log2 N⌉
      // message steps of a few bytes; moep's emulated latency adds to it as to every collective. (A server that
      // samples gathers the logits to rank 0 instead: not modeled.)
      t.head_gather = double(ceil_log2(s.nodes)) * net.alpha_us.value * 1e-6 +
                      emulated_latency_seconds(s.emulate_latency_us, s.nodes) +
                      hw_.allreduce_host_seconds(double(logit_rows) * 8.0 * double(s.nodes));
    }
  }
  bytes += R * d * wb;  // embedding rows
  *weight_bytes = bytes;
  if (experts_per_layer) *experts_per_layer = runs / double(std::max<int64_t>(1, m.n_moe_layers()));
  t.sync = jitter_fraction(net, s.nodes) * t.compute();
  return t;
}

Prediction Predictor::predict(const NetworkProfile& net, const Scenario& s) {
  check_scenario(model_, s);
  Prediction p;
  bool exact = true;
  int64_t samples = 0;
  // Decode: batch rows, each attending over `context` positions.
  p.decode = step(net, s, s.batch, double(s.batch) * double(s.context), s.batch, &p.weight_bytes_per_step,
                  &p.algorithm, &exact, &samples, &p.experts_per_layer);
  if (s.nodes > 1) {
    p.exchanges_per_step = model_.n_moe_layers();
    if (s.split_attention) p.exchanges_per_step += model_.n_layers * model_.attn_split_exchanges;
    if (s.split_head) p.exchanges_per_step += 1;
  }
  p.decode_tokens_per_s = double(s.batch) / p.decode.total();
  p.experts_exact = exact;
  p.expert_samples = samples;
  p.allreduce_bytes = double(s.batch) * double(model_.d_model) * 4.0;
  // Prefill: one sequence's prompt in chunks; row i of the prompt attends over i + 1 positions; logits for
  // the last row only.
  if (s.prompt > 0) {
    Scenario sp = s;
    sp.identical_rows = false;  // the rows of a prompt are different tokens
    for (int64_t p0 = 0; p0 < s.prompt; p0 += s.prefill_chunk) {
      const int64_t r = std::min(s.prefill_chunk, s.prompt - p0);
      const double attended = double(r) * double(p0) + double(r) * double(r + 1) / 2.0;
      double wbytes;
      AllreduceAlgorithm a;
      bool ex;
      int64_t smp;
      p.prefill += step(net, sp, r, attended, p0 + r == s.prompt ? 1 : 0, &wbytes, &a, &ex, &smp);
    }
    p.prefill_tokens_per_s = double(s.prompt) / p.prefill.total();
  }
  p.memory = memory_use(model_, hw_, s);
  const double net_price = s.nodes > 1 && net.price_per_node_usd.present ? net.price_per_node_usd.value : 0.0;
  // A machine of unknown price (a calibrated one) leaves the configuration's price unknown (0), not the
  // network's alone.
  const bool priced = hw_.price_usd.present && hw_.price_usd.value > 0;
  p.price_usd = priced ? s.nodes * (hw_.price_usd.value + net_price) : 0.0;
  p.power_w = s.nodes * (hw_.power_w.present ? hw_.power_w.value : 0.0);
  return p;
}

Prediction predict(const ModelShape& model, const HardwareProfile& hw, const NetworkProfile& net, const Scenario& s) {
  Predictor pr(model, hw);
  return pr.predict(net, s);
}

double split_attention_share(const ModelShape& m, const Scenario& s) {
  if (!s.split_attention || s.nodes <= 1 || m.n_kv_heads <= 0) return 1.0;
  int64_t most = 0;
  for (int r = 0; r < s.nodes; ++r) most = std::max(most, kv_head_split(m.n_kv_heads, r, s.nodes).count);
  return double(most) / double(m.n_kv_heads);
}

double split_head_share(const ModelShape& m, const Scenario& s) {
  if (!s.split_head || s.nodes <= 1 || m.vocab <= 0) return 1.0;
  int64_t most = 0;
  for (int r = 0; r < s.nodes; ++r) most = std::max(most, ffn_split(m.vocab, r, s.nodes).count);
  return double(most) / double(m.vocab);
}

MemoryUse memory_use(const ModelShape& m, const HardwareProfile& hw, const Scenario& s) {
  check_scenario(m, s);
  const double wb = weight_type(s.dtype).bytes_per_weight;
  MemoryUse u;
  const ExpertPlacement pl = ExpertPlacement::from_spec(s.placement, m.n_layers, m.n_experts, s.nodes);
  // A split shared expert is not replicated: each rank holds its slice.
  const double shared_held = double(m.shared_elems - m.d_model) * (1.0 - shared_expert_share(m, pl));
  u.replicated = (double(m.replicated_elems()) - double(m.n_moe_layers()) * shared_held) * wb;
  // Split attention and head: the largest rank's rows of them (a tied head is also the embedding, held whole).
  const double a_share = split_attention_share(m, s), h_share = split_head_share(m, s);
  u.replicated -= double(m.n_layers) * double(m.attn_elems) * (1.0 - a_share) * wb;
  if (!m.tied_embeddings) u.replicated -= double(m.head_elems) * (1.0 - h_share) * wb;
  int64_t held = 0;
  for (int r = 0; r < s.nodes; ++r) {
    // experts_held counts every layer's slots; only MoE layers have experts.
    int64_t h = 0;
    for (int64_t l = 0; l < m.n_layers; ++l)
      if (m.layer_is_moe[size_t(l)])
        for (int64_t e = 0; e < m.n_experts; ++e) h += pl.holds(r, l, e);
    held = std::max(held, h);
  }
  u.experts_held = held;
  u.experts = double(held) * double(m.expert_elems) * wb;
  if (pl.is_split())  // every expert on every rank, a slice of each: the largest slice's share
    u.experts *= double(pl.largest_ffn_slice(m.expert_ffn)) / double(std::max<int64_t>(1, m.expert_ffn));
  u.kv_cache = double(m.n_layers) * double(s.batch) * double(s.context) * double(m.kv_elems_per_pos) *
               kv_bytes_per_value(s.kv_dtype) * a_share;
  // Scratch sized for the largest step: the residual stream and its copies, q/k/v/attention output, the
  // experts' per-pair buffers (input, gate, up, output) and the logits.
  const double rows = double(std::max(s.batch, s.prefill_chunk));
  const double d = double(m.d_model), qd = double(m.n_heads * m.head_dim), kvd = double(m.n_kv_heads * m.head_dim);
  const double per_row = 6 * d + 2 * qd + 2 * kvd + double(m.top_k) * (2 * d + 2 * double(m.expert_ffn)) +
                         double(m.top_k) * 4 + double(m.vocab);
  u.activations = rows * per_row * 4.0;
  u.capacity = hw.usable_bytes();
  return u;
}

}  // namespace moep::perf
