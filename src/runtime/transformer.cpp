#include "runtime/transformer.h"

#include <algorithm>
#include <limits>
#include <cmath>
#include <cstring>

#include "core/clock.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "model/rope.h"

namespace moep {

Transformer::Transformer(const Model& model, const ExpertPlacement& placement, Communicator& comm,
                         ThreadPool& pool, const EngineLimits& limits, int gpu_device)
    : model_(model),
      c_(model.config()),
      w_(model.weights()),
      comm_(comm),
      pool_(pool),
      limits_(limits),
      moe_(model.config(), placement, comm.rank(), limits.max_rows) {
  if (limits_.max_rows < 1 || limits_.n_slots < 1 || limits_.max_ctx < 1)
    fail("engine limits must be positive (rows ", limits_.max_rows, ", slots ", limits_.n_slots, ", context ",
         limits_.max_ctx, ")");
  if (c_.sliding_window > 0 && limits_.max_ctx > c_.sliding_window) limits_.max_ctx = c_.sliding_window;
  stats_.resize(size_t(c_.n_layers));
  want_rows_.resize(size_t(limits_.max_rows));
  routing_.resize(size_t(c_.n_layers));
  if (gpu_device >= 0 && c_.is_mla())
    fail(c_.model_type, ": multi-head latent attention is not supported by the GPU backend; run it on the CPU");
  if (gpu_device >= 0) {
    gpu_ = std::make_unique<gpu::GpuForward>(model, placement, comm, limits_, gpu_device);
    return;
  }
  const int64_t R = limits_.max_rows, d = c_.d_model;
  n_kv_heads_ = w_.kv_heads.count;
  n_heads_ = n_kv_heads_ * (c_.n_heads / c_.n_kv_heads);
  kv_dim_ = n_kv_heads_ * c_.head_dim;
  q_dim_ = n_heads_ * c_.head_dim;
  if (c_.is_mla()) {
    mla_ = std::make_unique<MlaAttention>(c_, limits_);
  } else {
    const size_t kv = size_t(c_.n_layers * limits_.n_slots * limits_.max_ctx * kv_dim_);
    k_cache_.assign(kv, 0.f);
    v_cache_.assign(kv, 0.f);
  }

  // RoPE tables as transformers computes them (model/rope.h).
  const int64_t half = c_.head_dim / 2;
  rope_cos_.resize(size_t(limits_.max_ctx * half));
  rope_sin_.resize(size_t(limits_.max_ctx * half));
  rope_tables(c_.rope_theta, c_.rope_scaling, c_.head_dim, limits_.max_ctx, rope_cos_.data(), rope_sin_.data());

  x_.resize(size_t(R * d));
  h_.resize(size_t(R * d));
  q_.resize(size_t(R * q_dim_));
  k_.resize(size_t(R * kv_dim_));
  v_.resize(size_t(R * kv_dim_));
  a_.resize(size_t(R * q_dim_));
  qk_sumsq_.resize(size_t(2 * R));
  attention_shape_ = {n_heads_, n_kv_heads_, c_.head_dim, 1.f / std::sqrt(float(c_.head_dim))};
  attention_rows_.resize(size_t(R));
  if (c_.attention_sinks) {
    sinks_.resize(size_t(c_.n_layers * n_heads_));
    for (int64_t l = 0; l < c_.n_layers; ++l)
      for (int64_t h = 0; h < n_heads_; ++h) sinks_[size_t(l * n_heads_ + h)] = w_.layers[size_t(l)].sinks.at(h);
  }
  attention_scratch_.resize(ops::attention_scratch_floats(R, attention_shape_));
  o_.resize(size_t(R * d));
  m_.resize(size_t(R * d));
  mg_.resize(size_t(R * c_.dense_ffn));
  many_.reserve(3, 0);
  mu_.resize(size_t(R * c_.dense_ffn));
  head_in_.resize(size_t(R * d));
  if (w_.split.head) {
    head_out_.resize(size_t(R * w_.vocab_rows.count));
    for (int r = 0; r < comm_.size(); ++r) vocab_parts_.push_back(ffn_split(c_.vocab_size, r, comm_.size()));
    MOEP_ASSERT(vocab_parts_[size_t(comm_.rank())].first == w_.vocab_rows.first &&
                vocab_parts_[size_t(comm_.rank())].count == w_.vocab_rows.count);
    gather_counts_.resize(size_t(comm_.size()));
    best_.resize(size_t(R));
    all_best_.resize(size_t(R * comm_.size()));
    if (comm_.rank() == 0) gathered_.resize(size_t(R * c_.vocab_size));
  }
  for (int64_t l = 0; l < c_.n_layers; ++l)
    if (c_.layer_is_moe[size_t(l)]) routing_[size_t(l)].reserve(size_t(R * c_.top_k));
}

Transformer::~Transformer() = default;

void Transformer::reset_stats() {
  std::fill(stats_.begin(), stats_.end(), LayerStats{});
  head_ns_ = head_gather_ns_ = 0;
  if (gpu_) gpu_->reset_times();
}

double Transformer::weight_bytes_per_token() const {
  auto mb = [](const MatRef& m) { return m.empty() ? 0.0 : double(m.bytes()); };
  double bytes = mb(w_.lm_head);
  for (const auto& L : w_.layers) {
    bytes += mb(L.wq) + mb(L.wk) + mb(L.wv) + mb(L.wo);
    bytes += mb(L.q_a) + mb(L.q_b) + mb(L.kv_a) + mb(L.kv_b);
    bytes += mb(L.dense.gate) + mb(L.dense.up) + mb(L.dense.down);
    if (L.is_moe) bytes += moe_.weight_bytes_per_token(L);
  }
  return bytes;
}

void Transformer::norm(const float* x, const VecRef& w, const VecRef& b, float* y, int64_t T) const {
  const int64_t d = c_.d_model;
  for (int64_t t = 0; t < T; ++t) {
    if (c_.norm == NormKind::LayerNorm)
      ops::layernorm(x + t * d, w, b, c_.norm_eps, d, y + t * d);
    else
      ops::rmsnorm(x + t * d, w, c_.norm_eps, d, y + t * d);
  }
}

int64_t Transformer::full_qk_norm(const LayerWeights& L, int64_t T) {
  const int64_t qd = q_dim_, kvd = kv_dim_;
  if (!w_.split.attention) {
    for (int64_t t = 0; t < T; ++t) {
      ops::rmsnorm(&q_[size_t(t * qd)], L.q_norm, c_.norm_eps, qd, &q_[size_t(t * qd)]);
      ops::rmsnorm(&k_[size_t(t * kvd)], L.k_norm, c_.norm_eps, kvd, &k_[size_t(t * kvd)]);
    }
    return 0;
  }
  // Every rank's sums of squares of its part of q and of k, added over ranks: the norms of the whole rows.
  auto sum_sq = [](const float* x, int64_t n) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
    return float(ss);
  };
  for (int64_t t = 0; t < T; ++t) {
    qk_sumsq_[size_t(2 * t)] = sum_sq(q_.data() + t * qd, qd);
    qk_sumsq_[size_t(2 * t + 1)] = sum_sq(k_.data() + t * kvd, kvd);
  }
  const int64_t t0 = now_ns();
  comm_.allreduce_sum(qk_sumsq_.data(), size_t(2 * T));
  const int64_t t1 = now_ns();
  auto scale = [&](float* x, const VecRef& w, int64_t n, float ss, int64_t full) {
    const float inv = float(1.0 / std::sqrt(double(ss) / double(full) + double(c_.norm_eps)));
    for (int64_t i = 0; i < n; ++i) x[i] = w.at(i) * (x[i] * inv);
  };
  for (int64_t t = 0; t < T; ++t) {
    scale(q_.data() + t * qd, L.q_norm, qd, qk_sumsq_[size_t(2 * t)], c_.q_dim());
    scale(k_.data() + t * kvd, L.k_norm, kvd, qk_sumsq_[size_t(2 * t + 1)], c_.kv_dim());
  }
  return t1 - t0;
}

int64_t Transformer::attention(const LayerWeights& L, int64_t layer, std::span<const BatchRow> rows) {
  const int64_t T = int64_t(rows.size()), d = c_.d_model, hd = c_.head_dim, H = n_heads_, KVH = n_kv_heads_;
  const int64_t qd = q_dim_, kvd = kv_dim_, half = hd / 2;
  int64_t exchange_ns = 0;
  if (mla_) {
    mla_->forward(pool_, L, layer, rows, h_.data(), o_.data());
    return 0;
  }
  if (KVH > 0) {
    // h_ holds the normalized input.
    const ops::LinearJob qkv[3] = {{L.wq, h_.data(), T, q_.data()}, {L.wk, h_.data(), T, k_.data()},
                                   {L.wv, h_.data(), T, v_.data()}};
    ops::linear_many(pool_, qkv, 3, many_);
    for (int64_t t = 0; t < T; ++t) {
      ops::add_bias(&q_[size_t(t * qd)], L.bq, qd);
      ops::add_bias(&k_[size_t(t * kvd)], L.bk, kvd);
      ops::add_bias(&v_[size_t(t * kvd)], L.bv, kvd);
    }
  }
  // A rank without heads still joins the norm's all-reduce, with zero sums.
  if (c_.qk_norm == QKNorm::Full) exchange_ns += full_qk_norm(L, T);
  if (KVH > 0) {
    for (int64_t t = 0; t < T; ++t) {
      float* q = &q_[size_t(t * qd)];
      float* k = &k_[size_t(t * kvd)];
      float* v = &v_[size_t(t * kvd)];
      if (c_.qk_norm == QKNorm::PerHead) {
        for (int64_t h = 0; h < H; ++h) ops::rmsnorm(q + h * hd, L.q_norm, c_.norm_eps, hd, q + h * hd);
        for (int64_t h = 0; h < KVH; ++h) ops::rmsnorm(k + h * hd, L.k_norm, c_.norm_eps, hd, k + h * hd);
      }
      if (c_.clip_qkv > 0) {
        ops::clamp(q, c_.clip_qkv, qd);
        ops::clamp(k, c_.clip_qkv, kvd);
        ops::clamp(v, c_.clip_qkv, kvd);
      }
      const int64_t pos = rows[size_t(t)].pos;
      ops::rope(q, H, hd, &rope_cos_[size_t(pos * half)], &rope_sin_[size_t(pos * half)]);
      ops::rope(k, KVH, hd, &rope_cos_[size_t(pos * half)], &rope_sin_[size_t(pos * half)]);
      std::memcpy(k_at(layer, rows[size_t(t)].slot, pos), k, size_t(kvd) * sizeof(float));
      std::memcpy(v_at(layer, rows[size_t(t)].slot, pos), v, size_t(kvd) * sizeof(float));
    }
    // Causal: each row attends to its slot's positions 0..pos; in a sliding-window layer to the last `window`
    // of them.
    const int64_t window = c_.layer_window.empty() ? 0 : c_.layer_window[size_t(layer)];
    for (int64_t t = 0; t < T; ++t) {
      const BatchRow& r = rows[size_t(t)];
      const int64_t n = window > 0 ? std::min<int64_t>(window, r.pos + 1) : int64_t(r.pos) + 1;
      const int64_t first = int64_t(r.pos) + 1 - n;
      attention_rows_[size_t(t)] = {{k_at(layer, r.slot, first), v_at(layer, r.slot, first), kvd}, n};
    }
    ops::attention(pool_, attention_shape_, q_.data(), attention_rows_.data(), T, attention_scratch_.data(),
                   a_.data(), sinks_.empty() ? nullptr : &sinks_[size_t(layer * n_heads_)]);
    ops::linear(pool_, L.wo, a_.data(), T, o_.data());
  } else {
    std::fill_n(o_.begin(), T * d, 0.f);
  }
  // Split, o_ is this rank's part of the sum over heads: the bias is added once (rank 0), then the parts.
  if (!w_.split.attention || comm_.rank() == 0)
    for (int64_t t = 0; t < T; ++t) ops::add_bias(&o_[size_t(t * d)], L.bo, d);
  if (w_.split.attention) {
    const int64_t t0 = now_ns();
    comm_.allreduce_sum(o_.data(), size_t(T * d));
    const int64_t t1 = now_ns();
    tracer_.record(TracePhase::AttentionAllReduce, int32_t(layer), t0, t1);
    exchange_ns += t1 - t0;
  }
  return exchange_ns;
}

namespace {

// The first index of the largest of x[0..n) (std::max_element's choice).
int32_t argmax_of(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

}  // namespace

void Transformer::head(int64_t n_want, float* logits, int32_t* argmax) {
  const int64_t V = c_.vocab_size;
  if (!w_.split.head) {
    ops::linear(pool_, w_.lm_head, head_in_.data(), n_want, logits);
    if (argmax)
      for (int64_t i = 0; i < n_want; ++i) argmax[i] = argmax_of(logits + i * V, V);
    return;
  }
  // This rank's columns of the logits.
  ops::linear(pool_, w_.lm_head, head_in_.data(), n_want, head_out_.data());
  const FfnSlice mine = vocab_parts_[size_t(comm_.rank())];
  if (argmax) {
    // Each rank's best of its rows, then every rank takes the best of the ranks' bests: ranks hold ascending id
    // ranges, so keeping the first of equal values (the lower rank) keeps the lowest id.
    for (int64_t i = 0; i < n_want; ++i) {
      const float* row = &head_out_[size_t(i * mine.count)];
      const int32_t at = mine.count > 0 ? argmax_of(row, mine.count) : 0;
      best_[size_t(i)] = mine.count > 0 ? BestLogit{row[at], int32_t(mine.first) + at}
                                        : BestLogit{-std::numeric_limits<float>::infinity(), int32_t(V)};
    }
    const int64_t t0 = now_ns();
    comm_.allgather(best_.data(), size_t(n_want) * sizeof(BestLogit), all_best_.data());
    const int64_t t1 = now_ns();
    head_gather_ns_ += t1 - t0;
    tracer_.record(TracePhase::HeadGather, -1, t0, t1);
    for (int64_t i = 0; i < n_want; ++i) {
      BestLogit best = all_best_[size_t(i)];
      for (int r = 1; r < comm_.size(); ++r) {
        const BestLogit& b = all_best_[size_t(r * n_want + i)];
        if (b.value > best.value) best = b;
      }
      argmax[i] = best.id;
    }
    return;
  }
  // Gathered to rank 0 and put in row order there.
  for (size_t r = 0; r < vocab_parts_.size(); ++r) gather_counts_[r] = size_t(n_want * vocab_parts_[r].count);
  const int64_t t0 = now_ns();
  comm_.gather(head_out_.data(), gather_counts_.data(), gathered_.data(), 0);
  const int64_t t1 = now_ns();
  head_gather_ns_ += t1 - t0;
  tracer_.record(TracePhase::HeadGather, -1, t0, t1);
  if (comm_.rank() != 0) return;
  const float* part = gathered_.data();
  for (const FfnSlice& p : vocab_parts_) {
    for (int64_t i = 0; i < n_want; ++i)
      std::memcpy(logits + i * V + p.first, part + i * p.count, size_t(p.count) * sizeof(float));
    part += n_want * p.count;
  }
}

void Transformer::forward(std::span<const BatchRow> rows, float* logits, int32_t* argmax) {
  const int64_t T = int64_t(rows.size()), d = c_.d_model;
  if (T == 0) return;
  if (T > limits_.max_rows) fail("a step of ", T, " rows exceeds the engine's limit of ", limits_.max_rows);
  int64_t n_want = 0;
  for (int64_t t = 0; t < T; ++t) {
    const BatchRow& r = rows[size_t(t)];
    if (r.token < 0 || r.token >= c_.vocab_size)
      fail("token id ", r.token, " is outside the vocabulary [0, ", c_.vocab_size, ")");
    if (r.slot < 0 || r.slot >= limits_.n_slots) fail("slot ", r.slot, " is outside [0, ", limits_.n_slots, ")");
    if (r.pos < 0 || r.pos >= limits_.max_ctx)
      fail("position ", r.pos, " exceeds the context of ", limits_.max_ctx, " tokens");
    if (r.want_logits) want_rows_[size_t(n_want++)] = int32_t(t);
  }
  if (gpu_) {
    // Routing is not read back from the GPU (last_routing stays empty there); the times are the GPU's.
    gpu_->forward(rows, std::span<const int32_t>(want_rows_.data(), size_t(n_want)), logits);
    const auto& gt = gpu_->layer_times();
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      LayerStats& st = stats_[size_t(l)];
      const gpu::LayerTimes& g = gt[size_t(l)];
      st.attention_ns = g.attention_ns;
      (c_.layer_is_moe[size_t(l)] ? st.experts_ns : st.dense_ns) = g.moe_ns;
      st.allreduce_ns = g.allreduce_ns;
      st.experts_touched = g.experts_touched;
      st.expert_pairs = g.expert_pairs;
      st.calls = g.calls;
    }
    head_ns_ = gpu_->head_ns();
    if (tracer_.enabled())
      for (const gpu::StepSpan& sp : gpu_->last_step()) {
        static constexpr TracePhase kPhase[] = {TracePhase::Attention, TracePhase::Experts, TracePhase::Dense,
                                                TracePhase::AllReduce, TracePhase::Head};
        tracer_.record(kPhase[sp.phase], sp.layer, sp.start_ns, sp.end_ns);
      }
    // The GPU backend keeps the head whole: every rank has the logits.
    if (argmax)
      for (int64_t i = 0; i < n_want; ++i) argmax[i] = argmax_of(logits + i * c_.vocab_size, c_.vocab_size);
    return;
  }
  // Embedding.
  for (int64_t t = 0; t < T; ++t)
    ops::to_f32(w_.embed.row_ptr(rows[size_t(t)].token), w_.embed.dtype, &x_[size_t(t * d)], d);

  for (int64_t l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    LayerStats& st = stats_[size_t(l)];
    const int64_t t0 = now_ns();
    norm(x_.data(), L.attn_norm_w, L.attn_norm_b, h_.data(), T);
    const int64_t exchange_ns = attention(L, l, rows);
    for (int64_t i = 0; i < T * d; ++i) x_[size_t(i)] += o_[size_t(i)];
    norm(x_.data(), L.ffn_norm_w, L.ffn_norm_b, h_.data(), T);
    const int64_t t1 = now_ns();
    st.attention_ns += t1 - t0 - exchange_ns;
    st.attention_allreduce_ns += exchange_ns;
    tracer_.record(TracePhase::Attention, int32_t(l), t0, t1);
    if (L.is_moe) {
      MoeTimes mt;
      moe_.forward(pool_, comm_, L, l, h_.data(), T, m_.data(), &mt);
      st.dense_ns += mt.shared_ns;
      st.router_ns += mt.router_ns;
      st.experts_ns += mt.experts_ns;
      st.allreduce_ns += mt.allreduce_ns;
      st.expert_pairs += mt.expert_pairs;
      st.experts_touched += mt.experts_touched;
      tracer_.record(TracePhase::Router, int32_t(l), mt.t_start, mt.t_router);
      tracer_.record(TracePhase::Experts, int32_t(l), mt.t_router, mt.t_experts);
      tracer_.record(TracePhase::AllReduce, int32_t(l), mt.t_experts, mt.t_end);
      if (mt.t_shared_end != 0) tracer_.record(TracePhase::Dense, int32_t(l), mt.t_shared_start, mt.t_shared_end);
      if (record_routing_) {
        auto& rt = routing_[size_t(l)];
        rt.assign(moe_.last_expert_ids(), moe_.last_expert_ids() + T * c_.top_k);
      }
    } else {
      const int64_t t2 = now_ns();
      ops::swiglu(pool_, L.dense.gate, L.dense.up, L.dense.down, h_.data(), T, mg_.data(), mu_.data(), many_,
                  m_.data());
      const int64_t t3 = now_ns();
      st.dense_ns += t3 - t2;
      tracer_.record(TracePhase::Dense, int32_t(l), t2, t3);
    }
    for (int64_t i = 0; i < T * d; ++i) x_[size_t(i)] += m_[size_t(i)];
    st.calls++;
  }

  // Final norm and output head, only for the rows that want logits.
  const int64_t th = now_ns();
  if (n_want > 0) {
    for (int64_t i = 0; i < n_want; ++i) {
      const float* x = &x_[size_t(want_rows_[size_t(i)] * d)];
      float* y = &head_in_[size_t(i * d)];
      if (c_.norm == NormKind::LayerNorm)
        ops::layernorm(x, w_.final_norm_w, w_.final_norm_b, c_.norm_eps, d, y);
      else
        ops::rmsnorm(x, w_.final_norm_w, c_.norm_eps, d, y);
    }
    head(n_want, logits, argmax);
  }
  const int64_t te = now_ns();
  head_ns_ += te - th;
  if (routing_observer_) routing_observer_(routing_, T);
  tracer_.record(TracePhase::Head, -1, th, te);
}

}  // namespace moep
