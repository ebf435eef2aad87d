// The table of supported architectures and the binding helpers the Llama-style families share.
#include "core/error.h"
#include "model/arch.h"

namespace moep {

const std::vector<const ArchSpec*>& all_archs() {
  static const std::vector<const ArchSpec*> archs = {&kDbrxArch, &kMixtralArch, &kQwen2MoeArch, &kQwen3MoeArch,
                                                     &kOlmoeArch, &kDeepseekV3Arch, &kDeepseekV2Arch,
                                                     &kGptOssArch};
  return archs;
}

const ArchSpec* find_arch(std::string_view model_type) {
  for (const auto* a : all_archs())
    if (model_type == a->model_type) return a;
  return nullptr;
}

void bind_llama_attention(const ModelConfig& c, WeightBinder& b, const std::string& p, LayerWeights& L) {
  const int64_t d = c.d_model, q = c.q_dim(), kv = c.kv_dim(), hd = c.head_dim;
  // This rank's heads (all of them unless attention is split): rows of q/k/v, input columns of o.
  const FfnSlice heads = b.share().kv_heads(c.n_kv_heads);
  const int64_t group = c.n_heads / c.n_kv_heads;
  const int64_t q0 = heads.first * group * hd, nq = heads.count * group * hd, k0 = heads.first * hd,
                nk = heads.count * hd;
  if (heads.count > 0) {
    L.wq = b.matrix_rows(p + "q_proj.weight", q, d, q0, nq);
    L.wk = b.matrix_rows(p + "k_proj.weight", kv, d, k0, nk);
    L.wv = b.matrix_rows(p + "v_proj.weight", kv, d, k0, nk);
    L.wo = b.matrix_cols(p + "o_proj.weight", d, q, q0, nq);
  } else {  // more ranks than KV heads: this one has none and adds nothing to attention's all-reduce
    b.skip(p + "q_proj.weight", {q, d});
    b.skip(p + "k_proj.weight", {kv, d});
    b.skip(p + "v_proj.weight", {kv, d});
    b.skip(p + "o_proj.weight", {d, q});
  }
  if (c.qkv_bias) {
    L.bq = b.vector(p + "q_proj.bias", q).slice(q0, nq);
    L.bk = b.vector(p + "k_proj.bias", kv).slice(k0, nk);
    L.bv = b.vector(p + "v_proj.bias", kv).slice(k0, nk);
  }
  if (c.o_bias) L.bo = b.vector(p + "o_proj.bias", d);
  if (c.qk_norm == QKNorm::PerHead) {
    L.q_norm = b.vector(p + "q_norm.weight", c.head_dim);
    L.k_norm = b.vector(p + "k_norm.weight", c.head_dim);
  } else if (c.qk_norm == QKNorm::Full) {
    L.q_norm = b.vector(p + "q_norm.weight", q).slice(q0, nq);
    L.k_norm = b.vector(p + "k_norm.weight", kv).slice(k0, nk);
  }
}

void bind_expert_list(const ModelConfig& c, WeightBinder& b, int64_t layer,
                      const std::string& p, const char* const names[3], LayerWeights& L) {
  const int64_t d = c.d_model, f = c.expert_ffn;
  L.experts.resize(size_t(c.n_experts));
  for (int64_t e = 0; e < c.n_experts; ++e) {
    const std::string base = p + std::to_string(e) + ".";
    ExpertWeights& x = L.experts[size_t(e)];
    if (b.share().holds(layer, e)) {
      x.local = true;
      // This rank's part of the ffn dimension (all of it unless the placement splits experts).
      const FfnSlice sl = b.share().ffn_slice(f);
      const int64_t f0 = sl.first, n = sl.count;
      x.gate = b.matrix_rows(base + names[0] + ".weight", f, d, f0, n);
      x.up = b.matrix_rows(base + names[1] + ".weight", f, d, f0, n);
      x.down = b.matrix_cols(base + names[2] + ".weight", d, f, f0, n);
    } else {
      b.skip(base + names[0] + ".weight", {f, d});
      b.skip(base + names[1] + ".weight", {f, d});
      b.skip(base + names[2] + ".weight", {d, f});
    }
  }
}

void bind_llama_outer(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  w.embed = b.matrix("model.embed_tokens.weight", c.vocab_size, c.d_model);
  w.final_norm_w = b.vector("model.norm.weight", c.d_model);
  bind_output_head(c, b, "lm_head.weight", w);
  w.kv_heads = b.share().kv_heads(c.n_kv_heads);
}

}  // namespace moep
