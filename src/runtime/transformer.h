// The forward pass of every supported family, over a batch of token rows that may belong to different
// sequences (slots of the KV cache) at different positions. Each rank runs its share of the experts (MoeBlock);
// one all-reduce per MoE layer combines the expert outputs. Attention and the output head are either repeated
// on every rank or divided, as the weights say (ModelWeights::split):
//  - split attention: each rank its KV heads and their query heads, with a KV cache of those heads only; the
//    partial sums of o_proj are added by an all-reduce of tokens × d_model per layer. It cannot merge with the
//    MoE's all-reduce: the blocks are sequential pre-norm residuals, and the MoE's input norm needs the whole
//    attention output, so a layer makes two exchanges. OLMoE's q/k norms, over the whole projection, add one
//    all-reduce of 2 floats per token (each rank's sums of squares).
//  - split head: each rank its rows of the vocabulary; the logits are gathered to rank 0 (one gather per step).
//
// Everything is sized at construction (max rows per step, slots, context); forward() allocates nothing.
// Not thread-safe: one caller at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "comm/communicator.h"
#include "core/thread_pool.h"
#include "gpu/gpu_forward.h"
#include "kernels/ops.h"
#include "model/batch.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "moe/placement.h"
#include "runtime/mla_attention.h"
#include "runtime/tracer.h"

namespace moep {

class Transformer {
 public:
  // gpu_device ≥ 0: the forward pass runs on that Vulkan device (gpu::GpuForward); the CPU's buffers and KV cache
  // are then not made.
  Transformer(const Model& model, const ExpertPlacement& placement, Communicator& comm, ThreadPool& pool,
              const EngineLimits& limits, int gpu_device = -1);
  ~Transformer();

  // Runs the rows through the model, appending their keys/values to the KV cache at their positions, and
  // writes logits [n rows with want_logits, vocab] in row order (with a split head, on rank 0 only: the other
  // ranks' `logits` is not written). Throws moep::Error for a row outside the
  // limits (slot, position, token id).
  // With `argmax`, every rank also gets each of those rows' most likely token (the lowest id among equal maxima,
  // as std::max_element). A split head then sends no logits: each rank finds the best of its vocabulary rows, and
  // one all-gather of (value, id) pairs gives every rank the pick; `logits` is not written on any rank and may be
  // null.
  void forward(std::span<const BatchRow> rows, float* logits, int32_t* argmax = nullptr);

  const ModelConfig& config() const { return c_; }
  const EngineLimits& limits() const { return limits_; }
  const std::vector<LayerStats>& layer_stats() const { return stats_; }
  int64_t head_ns() const { return head_ns_; }
  // Of head_ns: gathering a split head's logits to rank 0, or its (value, id) pairs to every rank.
  int64_t head_gather_ns() const { return head_gather_ns_; }
  void reset_stats();
  // Bytes of weights one decode step of one token reads on this rank (non-expert weights + head + on
  // average top_k experts' share held here), for bandwidth figures.
  double weight_bytes_per_token() const;
  // This rank's KV cache (its heads only when attention is split).
  size_t kv_cache_bytes() const {
    if (mla_) return mla_->cache_bytes();
    return size_t(c_.n_layers * limits_.n_slots * limits_.max_ctx * kv_dim_) * sizeof(float) * 2;
  }
  // Bytes the KV cache holds per position of one sequence, over all layers (MLA: the latent and rope key).
  size_t kv_cache_bytes_per_token() const { return kv_cache_bytes() / size_t(limits_.n_slots * limits_.max_ctx); }
  // Multi-head latent attention's cache, for a model that has it (null otherwise).
  const MlaAttention* mla() const { return mla_.get(); }
  // Routing of the last forward, per MoE layer: [n_layers][rows × top_k] (empty for dense layers);
  // filled only when record_routing(true). The observer, if set, is called after every forward with it and
  // the number of rows (for --record-routing).
  void record_routing(bool on) { record_routing_ = on; }
  using RoutingObserver = std::function<void(const std::vector<std::vector<int32_t>>& routing, int64_t rows)>;
  void set_routing_observer(RoutingObserver f) {
    routing_observer_ = std::move(f);
    record_routing_ = routing_observer_ != nullptr;
  }
  Tracer& tracer() { return tracer_; }
  // The GPU forward pass, when this transformer runs on a GPU; null on the CPU.
  gpu::GpuForward* gpu() const { return gpu_.get(); }
  const std::vector<std::vector<int32_t>>& last_routing() const { return routing_; }

 private:
  // Writes o_ (the attention output of every row, summed over ranks when split); returns the nanoseconds spent
  // in all-reduces.
  int64_t attention(const LayerWeights& L, int64_t layer, std::span<const BatchRow> rows);
  // OLMoE's RMSNorm of q and k over the whole projection, of which a split rank holds a part; returns the
  // nanoseconds of its all-reduce.
  int64_t full_qk_norm(const LayerWeights& L, int64_t T);
  void head(int64_t n_want, float* logits, int32_t* argmax);
  void norm(const float* x, const VecRef& w, const VecRef& b, float* y, int64_t T) const;
  float* k_at(int64_t layer, int64_t slot, int64_t pos) {
    return &k_cache_[size_t(((layer * limits_.n_slots + slot) * limits_.max_ctx + pos) * kv_dim_)];
  }
  float* v_at(int64_t layer, int64_t slot, int64_t pos) {
    return &v_cache_[size_t(((layer * limits_.n_slots + slot) * limits_.max_ctx + pos) * kv_dim_)];
  }

  const Model& model_;
  const ModelConfig& c_;
  const ModelWeights& w_;
  Communicator& comm_;
  ThreadPool& pool_;
  EngineLimits limits_;
  MoeBlock moe_;
  // This rank's heads (all of them unless attention is split) and their widths.
  int64_t n_heads_ = 0, n_kv_heads_ = 0, q_dim_ = 0, kv_dim_ = 0;
  std::vector<float> k_cache_, v_cache_;  // [layers, slots, ctx, kv_dim_]
  std::vector<float> qk_sumsq_;  // [max_rows, 2]: a split full q/k norm's sums of squares
  // A split head: this rank's logits [R, its rows], every rank's part of the vocabulary, the floats each sends,
  // and on rank 0 the parts gathered [Σ ranks' R × rows] before they are put in row order.
  std::vector<float> head_out_, gathered_;
  std::vector<FfnSlice> vocab_parts_;
  std::vector<size_t> gather_counts_;
  struct BestLogit {  // a split head's best logit of one row among this rank's vocabulary rows
    float value;
    int32_t id;
  };
  std::vector<BestLogit> best_, all_best_;  // [max_rows], [ranks × max_rows]
  std::vector<float> rope_cos_, rope_sin_;  // [ctx, head_dim/2]
  std::vector<float> x_, h_, q_, k_, v_, a_, o_, m_;
  kernels::AttentionShape attention_shape_;
  std::vector<ops::AttentionRow> attention_rows_;  // [max_rows]: each row's sequence in the layer's cache
  std::vector<float> sinks_;  // [n_layers, this rank's query heads] attention sink logits (gpt-oss), else empty
  std::vector<float> attention_scratch_;
  std::vector<float> mg_, mu_, head_in_;  // a dense MLP's gate and up [R, dense_ffn]; the head's input [R, d]
  ops::ManyScratch many_;  // q, k, v (or a dense MLP's gate and up) in one region
  std::vector<int32_t> want_rows_;
  std::vector<LayerStats> stats_;
  int64_t head_ns_ = 0, head_gather_ns_ = 0;
  bool record_routing_ = false;
  RoutingObserver routing_observer_;
  Tracer tracer_;
  std::vector<std::vector<int32_t>> routing_;
  std::unique_ptr<gpu::GpuForward> gpu_;
  std::unique_ptr<MlaAttention> mla_;  // DeepSeek's attention and cache (then k_cache_/v_cache_ stay empty)
};

}  // namespace moep
