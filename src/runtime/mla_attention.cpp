#include "runtime/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/rope.h"

namespace moep {

namespace {
// transformers' DeepseekV3RMSNorm(q_lora_rank / kv_lora_rank) keeps its default epsilon, not rms_norm_eps.
constexpr float kLoraNormEps = 1e-6f;
}  // namespace

MlaAttention::MlaAttention(const ModelConfig& c, const EngineLimits& limits) : c_(c), limits_(limits) {
  const MlaShape& m = c.mla;
  MOEP_ASSERT(c.is_mla());
  H_ = c.n_heads;
  lora_ = m.kv_lora_rank;
  nope_ = m.qk_nope_head_dim;
  rot_ = m.qk_rope_head_dim;
  vdim_ = m.v_head_dim;
  qk_ = m.qk_head_dim();
  width_ = m.cache_floats();
  const int64_t R = limits.max_rows;
  cache_.assign(size_t(c.n_layers * limits.n_slots * limits.max_ctx * width_), 0.f);
  rope_cos_.resize(size_t(limits.max_ctx * rot_ / 2));
  rope_sin_.resize(size_t(limits.max_ctx * rot_ / 2));
  rope_tables(c.rope_theta, c.rope_scaling, rot_, limits.max_ctx, rope_cos_.data(), rope_sin_.data());
  qa_.resize(size_t(R * std::max<int64_t>(m.q_lora_rank, 1)));
  q_.resize(size_t(R * H_ * qk_));
  kva_.resize(size_t(R * width_));
  q_nope_.resize(size_t(H_ * R * nope_));
  q_abs_.resize(size_t(H_ * R * lora_));
  q_full_.resize(size_t(R * H_ * width_));
  attn_out_.resize(size_t(R * H_ * width_));
  ctx_.resize(size_t(H_ * R * lora_));
  v_out_.resize(size_t(H_ * R * vdim_));
  a_.resize(size_t(R * H_ * vdim_));
  shape_ = {H_, 1, width_, float(m.softmax_scale)};
  rows_.resize(size_t(R));
  attention_scratch_.resize(ops::attention_scratch_floats(R, shape_));
  jobs_.resize(size_t(H_));
  // kv_b_proj's dtype is the checkpoint's; the partials of linear_in_out's row split, if any, for the largest T.
  size_t partial = 0;
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    partial = std::max(partial, ops::in_out_partial_floats(nope_, lora_, dt, R));
  many_.reserve(H_, partial);
}

void MlaAttention::rope(float* x, int64_t pos) const {
  const int64_t half = rot_ / 2;
  const float* cs = &rope_cos_[size_t(pos * half)];
  const float* sn = &rope_sin_[size_t(pos * half)];
  if (!c_.mla.rope_interleave) {
    ops::rope(x, 1, rot_, cs, sn);
    return;
  }
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * cs[i] - b * sn[i];
    x[2 * i + 1] = a * sn[i] + b * cs[i];
  }
}

void MlaAttention::forward(ThreadPool& pool, const LayerWeights& L, int64_t layer, std::span<const BatchRow> rows,
                           const float* h, float* out) {
  const int64_t T = int64_t(rows.size()), qlr = c_.mla.q_lora_rank;
  MOEP_ASSERT(T <= limits_.max_rows);
  // Queries [T, H·qk] and the compressed key/value [T, lora + rot].
  if (qlr > 0) {
    ops::linear(pool, L.q_a, h, T, qa_.data());
    for (int64_t t = 0; t < T; ++t)
      ops::rmsnorm(&qa_[size_t(t * qlr)], L.q_a_norm, kLoraNormEps, qlr, &qa_[size_t(t * qlr)]);
    ops::linear(pool, L.q_b, qa_.data(), T, q_.data());
  } else {
    ops::linear(pool, L.wq, h, T, q_.data());
  }
  ops::linear(pool, L.kv_a, h, T, kva_.data());
  for (int64_t t = 0; t < T; ++t) {
    const BatchRow& r = rows[size_t(t)];
    float* kv = &kva_[size_t(t * width_)];
    float* dst = cache_row(layer, r.slot, r.pos);
    ops::rmsnorm(kv, L.kv_a_norm, kLoraNormEps, lora_, dst);
    std::memcpy(dst + lora_, kv + lora_, size_t(rot_) * sizeof(float));
    rope(dst + lora_, r.pos);
    for (int64_t hh = 0; hh < H_; ++hh) {
      const float* q = &q_[size_t((t * H_ + hh) * qk_)];
      std::memcpy(&q_nope_[size_t((hh * T + t) * nope_)], q, size_t(nope_) * sizeof(float));
      float* qf = &q_full_[size_t((t * H_ + hh) * width_)];
      std::memcpy(qf + lora_, q + nope_, size_t(rot_) * sizeof(float));
      rope(qf + lora_, r.pos);
    }
  }
  // q_abs_h [T, lora] = q_nope_h [T, nope] · W_UK_h, W_UK_h the rows [h·(nope+v), +nope) of kv_b ([nope, lora]).
  for (int64_t hh = 0; hh < H_; ++hh)
    jobs_[size_t(hh)] = {L.kv_b.row_block(hh * (nope_ + vdim_), nope_), &q_nope_[size_t(hh * T * nope_)], T,
                         &q_abs_[size_t(hh * T * lora_)]};
  ops::linear_in_out_many(pool, jobs_.data(), H_, many_);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hh = 0; hh < H_; ++hh)
      std::memcpy(&q_full_[size_t((t * H_ + hh) * width_)], &q_abs_[size_t((hh * T + t) * lora_)],
                  size_t(lora_) * sizeof(float));
  // One KV head of width lora + rot whose values are the same cache rows.
  for (int64_t t = 0; t < T; ++t) {
    const BatchRow& r = rows[size_t(t)];
    const float* seq = cache_at(layer, r.slot, 0);
    rows_[size_t(t)] = {{seq, seq, width_}, int64_t(r.pos) + 1};
  }
  ops::attention(pool, shape_, q_full_.data(), rows_.data(), T, attention_scratch_.data(), attn_out_.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hh = 0; hh < H_; ++hh)
      std::memcpy(&ctx_[size_t((hh * T + t) * lora_)], &attn_out_[size_t((t * H_ + hh) * width_)],
                  size_t(lora_) * sizeof(float));
  // out_h [T, v] = ctx_h [T, lora] · W_UV_hᵀ, W_UV_h the rows [h·(nope+v) + nope, +v) of kv_b ([v, lora]).
  for (int64_t hh = 0; hh < H_; ++hh)
    jobs_[size_t(hh)] = {L.kv_b.row_block(hh * (nope_ + vdim_) + nope_, vdim_), &ctx_[size_t(hh * T * lora_)], T,
                         &v_out_[size_t(hh * T * vdim_)]};
  ops::linear_many(pool, jobs_.data(), H_, many_);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hh = 0; hh < H_; ++hh)
      std::memcpy(&a_[size_t((t * H_ + hh) * vdim_)], &v_out_[size_t((hh * T + t) * vdim_)],
                  size_t(vdim_) * sizeof(float));
  ops::linear(pool, L.wo, a_.data(), T, out);
}

}  // namespace moep
