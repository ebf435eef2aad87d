#include "moe/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/clock.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "moe/router.h"

namespace moep {

MoeBlock::MoeBlock(const ModelConfig& config, const ExpertPlacement& placement, int rank, int64_t max_rows)
    : c_(config),
      placement_(placement),
      share_(placement.share(rank)),
      max_rows_(max_rows),
      ffn_(share_.ffn_slice(config.expert_ffn).count) {
  const int64_t R = max_rows, E = c_.n_experts, k = c_.top_k, d = c_.d_model, f = c_.expert_ffn;
  logits_.resize(size_t(R * E));
  route_scratch_.resize(size_t(E + c_.n_group));
  ids_.resize(size_t(R * k));
  weights_.resize(size_t(R * k));
  owner_.resize(size_t(R * k));
  load_.resize(size_t(placement.n_ranks()));
  count_.resize(size_t(E + 1));
  pair_row_.resize(size_t(R * k));
  pair_w_.resize(size_t(R * k));
  xg_.resize(size_t(R * k * d));
  g_.resize(size_t(R * k * f));
  u_.resize(size_t(R * k * f));
  y_.resize(size_t(R * k * d));
  up_jobs_.resize(size_t(2 * E));
  down_jobs_.resize(size_t(E));
  down_nt_jobs_.resize(size_t(E));
  const int64_t shared_ffn = share_.ffn_slice(c_.shared_expert_ffn).count;
  shared_g_.resize(size_t(R * shared_ffn));
  shared_u_.resize(size_t(R * shared_ffn));
  shared_out_.resize(c_.shared_expert_ffn > 0 ? size_t(R * d) : 0);
  shared_gate_.resize(c_.shared_expert_ffn > 0 ? size_t(R) : 0);
  // Partials of the down projections run together: room for kFusedRows pair rows of [ffn, d_model] downs
  // (batched decode of up to kFusedRows / top_k tokens in one region; more run as several), and never less
  // than one expert's largest row split. Sized for 4-byte weights, an upper bound on the chunk count.
  constexpr int64_t kFusedRows = 32;
  const size_t one = ops::in_out_partial_floats(f, d, DType::F32, 8);
  const size_t fused = size_t(kFusedRows) * (one / 8);
  many_.reserve(2 * E, std::max(one, std::min(fused, size_t(R * k) * (one / 8))));
}

double MoeBlock::weight_bytes_per_token(const LayerWeights& w) const {
  auto mb = [](const MatRef& m) { return m.empty() ? 0.0 : double(m.bytes()); };
  double bytes = mb(w.router) + mb(w.shared_expert.gate) + mb(w.shared_expert.up) + mb(w.shared_expert.down);
  // One expert's bytes, times top_k, shared among ranks (balanced routing); split, every rank reads its slice of
  // each of the top_k.
  double expert = 0;
  for (const auto& e : w.experts)
    if (e.local) {
      expert = mb(e.gate) + mb(e.up) + mb(e.down);
      break;
    }
  return bytes + expert * double(c_.top_k) / (share_.is_split() ? 1 : placement_.n_ranks());
}

void MoeBlock::shared_expert(ThreadPool& pool, const LayerWeights& w, const float* h, int64_t T, MoeTimes* times) {
  const int64_t t0 = now_ns(), d = c_.d_model;
  const MlpWeights& m = w.shared_expert;
  ops::swiglu(pool, m.gate, m.up, m.down, h, T, shared_g_.data(), shared_u_.data(), many_, shared_out_.data());
  if (!w.shared_expert_gate.empty()) ops::linear(pool, w.shared_expert_gate, h, T, shared_gate_.data());
  for (int64_t t = 0; t < T && !w.shared_expert_gate.empty(); ++t) {
    const float gate = 1.f / (1.f + std::exp(-shared_gate_[size_t(t)]));
    for (int64_t j = 0; j < d; ++j) shared_out_[size_t(t * d + j)] *= gate;
  }
  const int64_t t1 = now_ns();
  if (times) {
    times->t_shared_start = t0;
    times->t_shared_end = t1;
    times->shared_ns += t1 - t0;
  }
}

void MoeBlock::forward(ThreadPool& pool, Communicator& comm, const LayerWeights& w, int64_t layer, const float* h,
                       int64_t T, float* out, MoeTimes* times) {
  MOEP_ASSERT(T <= max_rows_, "batch of ", T, " rows exceeds the ", max_rows_, " the engine was sized for");
  // f: this rank's part of each expert's ffn dimension (all of it unless the placement splits experts).
  const int64_t E = c_.n_experts, k = c_.top_k, d = c_.d_model, f = ffn_;
  const bool has_shared = !w.shared_expert.empty(), split = share_.is_split();
  // Split, this rank's slice of the shared expert joins the routed experts' sum before the all-reduce.
  if (has_shared && split) shared_expert(pool, w, h, T, times);
  const int64_t t0 = now_ns();

  // Router: identical on every rank (same inputs, same kernels, per-row sums independent of threading).
  ops::linear(pool, w.router, h, T, logits_.data());
  for (int64_t t = 0; t < T; ++t) ops::add_bias(&logits_[size_t(t * E)], w.router_bias, E);
  if (routes_grouped(c_)) {
    for (int64_t t = 0; t < T; ++t)
      route_token_grouped(c_, &logits_[size_t(t * E)], w.router_choice_bias, route_scratch_.data(), &ids_[size_t(t * k)],
                          &weights_[size_t(t * k)]);
  } else {
    for (int64_t t = 0; t < T; ++t)
      route_token(&logits_[size_t(t * E)], E, k, c_.topk_norm, c_.topk_pnorm, &ids_[size_t(t * k)],
                  &weights_[size_t(t * k)]);
  }
  placement_.assign(layer, ids_.data(), T * k, owner_.data(), load_.data());

  // Group this rank's pairs by expert (counting sort; within an expert, by token row). Split: every pair, on
  // this rank's slice of its expert.
  auto mine = [&](int64_t p) { return split || owner_[size_t(p)] == share_.rank(); };
  std::fill(count_.begin(), count_.end(), 0);
  for (int64_t p = 0; p < T * k; ++p)
    if (mine(p)) count_[size_t(ids_[size_t(p)]) + 1]++;
  for (int64_t e = 0; e < E; ++e) count_[size_t(e + 1)] += count_[size_t(e)];
  const int64_t n_local = count_[size_t(E)];
  {
    // count_[e] is the next free slot of expert e while filling; restored below.
    for (int64_t p = 0; p < T * k; ++p) {
      if (!mine(p)) continue;
      const int64_t slot = count_[size_t(ids_[size_t(p)])]++;
      pair_row_[size_t(slot)] = int32_t(p / k);
      pair_w_[size_t(slot)] = weights_[size_t(p)];
    }
    for (int64_t e = E; e > 0; --e) count_[size_t(e)] = count_[size_t(e - 1)];
    count_[0] = 0;
  }
  for (int64_t i = 0; i < n_local; ++i)
    std::memcpy(&xg_[size_t(i * d)], h + int64_t(pair_row_[size_t(i)]) * d, size_t(d) * sizeof(float));
  const int64_t t1 = now_ns();

  // This rank's experts: the gate and up projections of all of them in one parallel region, then all the down
  // projections in one (two for a stored-[in, out] down: chunks, then their sums), so that threads never wait
  // for each other between matrices.
  int64_t touched = 0, n_up = 0, n_down = 0, n_down_nt = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = count_[size_t(e)], n = count_[size_t(e + 1)] - b;
    if (n == 0) continue;
    const ExpertWeights& x = w.experts[size_t(e)];
    MOEP_ASSERT(x.local, "layer ", layer, " expert ", e, " was assigned to rank ", share_.rank(),
                " which does not hold it");
    ++touched;
    const float* xin = &xg_[size_t(b * d)];
    up_jobs_[size_t(n_up++)] = {x.gate, xin, n, &g_[size_t(b * f)]};
    up_jobs_[size_t(n_up++)] = {x.up, xin, n, &u_[size_t(b * f)]};
    const ops::LinearJob down{x.down, &g_[size_t(b * f)], n, &y_[size_t(b * d)]};
    if (x.down_in_out)
      down_jobs_[size_t(n_down++)] = down;
    else
      down_nt_jobs_[size_t(n_down_nt++)] = down;
  }
  ops::linear_many(pool, up_jobs_.data(), n_up, many_);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = count_[size_t(e)], n = count_[size_t(e + 1)] - b;
    if (n == 0) continue;
    if (c_.swiglu_limit > 0) {  // gpt-oss: biases, then the clamped SwiGLU
      const ExpertWeights& x = w.experts[size_t(e)];
      for (int64_t i = b; i < b + n; ++i) {
        ops::add_bias(&g_[size_t(i * f)], x.gate_bias, f);
        ops::add_bias(&u_[size_t(i * f)], x.up_bias, f);
      }
      ops::clamped_swiglu(&g_[size_t(b * f)], &u_[size_t(b * f)], n * f, float(c_.swiglu_alpha),
                          float(c_.swiglu_limit));
    } else {
      ops::silu_mul(&g_[size_t(b * f)], &u_[size_t(b * f)], n * f);
    }
  }
  ops::linear_in_out_many(pool, down_jobs_.data(), n_down, many_);
  ops::linear_many(pool, down_nt_jobs_.data(), n_down_nt, many_);
  // Down biases (gpt-oss; split, only the rank whose slice starts the ffn dimension holds them).
  if (c_.expert_bias)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t b = count_[size_t(e)], n = count_[size_t(e + 1)] - b;
      for (int64_t i = b; i < b + n; ++i) ops::add_bias(&y_[size_t(i * d)], w.experts[size_t(e)].down_bias, d);
    }
  // Weighted sum into out, expert by expert in increasing index (the order the reference adds them).
  std::memset(out, 0, size_t(T * d) * sizeof(float));
  for (int64_t i = 0; i < n_local; ++i) {
    float* o = out + int64_t(pair_row_[size_t(i)]) * d;
    const float* y = &y_[size_t(i * d)];
    const float wgt = pair_w_[size_t(i)];
    for (int64_t j = 0; j < d; ++j) o[j] += wgt * y[j];
  }
  if (has_shared && split)
    for (int64_t i = 0; i < T * d; ++i) out[i] += shared_out_[size_t(i)];
  const int64_t t2 = now_ns();

  comm.allreduce_sum(out, size_t(T * d));
  const int64_t t3 = now_ns();
  // Not split, every rank computes the whole shared expert itself and adds it after the all-reduce.
  if (has_shared && !split) {
    shared_expert(pool, w, h, T, times);
    for (int64_t i = 0; i < T * d; ++i) out[i] += shared_out_[size_t(i)];
  }
  if (times) {
    times->t_start = t0;
    times->t_router = t1;
    times->t_experts = t2;
    times->t_end = t3;
    times->router_ns += t1 - t0;
    times->experts_ns += t2 - t1;
    times->allreduce_ns += t3 - t2;
    times->expert_pairs += n_local;
    times->experts_touched += touched;
  }
}

}  // namespace moep
