// Multi-head latent attention (DeepSeek-V2/V3, Kimi K2) with its compressed KV cache.
//
// Per layer and position the cache holds only the RMS-normalized latent c (kv_lora_rank floats) and the roped key
// k_rot shared by all heads (qk_rope_head_dim floats). Every step uses the absorbed projections: with
// kv_b_proj's rows of head h split into W_UK_h [nope, kv_lora_rank] and W_UV_h [v, kv_lora_rank],
//   q_abs_h = W_UK_hᵀ q_nope_h,   score_p = scale · (q_abs_h · c_p + q_rot_h · k_rot_p),
//   out_h = W_UV_h · Σ_p softmax_p · c_p,
// which equals attention over k_h = [W_UK_h c_p, k_rot_p] and v_h = W_UV_h c_p without ever making them: the
// scores are those of a single-KV-head attention of head size kv_lora_rank + qk_rope_head_dim over the cache rows,
// whose values are the same rows (their first kv_lora_rank floats are the latent).
//
// Everything is sized at construction; forward() allocates nothing. Not thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/ops.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/weights.h"

namespace moep {

class MlaAttention {
 public:
  MlaAttention(const ModelConfig& c, const EngineLimits& limits);

  // h: [T, d_model] the normalized input of layer `layer`; appends each row's latent and rope key to the cache at
  // its (slot, pos) and writes out [T, d_model] = o_proj of the attention.
  void forward(ThreadPool& pool, const LayerWeights& L, int64_t layer, std::span<const BatchRow> rows,
               const float* h, float* out);

  // Floats cached per layer and position: kv_lora_rank + qk_rope_head_dim.
  int64_t cache_floats_per_position() const { return width_; }
  size_t cache_bytes() const { return cache_.size() * sizeof(float); }
  // The cached row of (layer, slot, pos): [latent | k_rot].
  const float* cache_at(int64_t layer, int64_t slot, int64_t pos) const {
    return &cache_[size_t(((layer * limits_.n_slots + slot) * limits_.max_ctx + pos) * width_)];
  }

 private:
  float* cache_row(int64_t layer, int64_t slot, int64_t pos) {
    return &cache_[size_t(((layer * limits_.n_slots + slot) * limits_.max_ctx + pos) * width_)];
  }
  // Rotates the rope part x [qk_rope_head_dim] for position pos (adjacent pairs or halves, as the config says).
  void rope(float* x, int64_t pos) const;

  const ModelConfig& c_;
  EngineLimits limits_;
  int64_t H_ = 0, lora_ = 0, nope_ = 0, rot_ = 0, vdim_ = 0, qk_ = 0, width_ = 0;
  std::vector<float> cache_;               // [layers, slots, ctx, width_]
  std::vector<float> rope_cos_, rope_sin_;  // [ctx, rot_/2]
  std::vector<float> qa_, q_, kva_;        // [R, q_lora_rank], [R, H·qk], [R, lora + rot]
  std::vector<float> q_nope_, q_abs_;      // [H, R, nope], [H, R, lora]
  std::vector<float> q_full_, attn_out_;   // [R, H, width_] each
  std::vector<float> ctx_, v_out_, a_;     // [H, R, lora], [H, R, v], [R, H·v]
  kernels::AttentionShape shape_;
  std::vector<ops::AttentionRow> rows_;
  std::vector<float> attention_scratch_;
  std::vector<ops::LinearJob> jobs_;  // [H]
  ops::ManyScratch many_;
};

}  // namespace moep
