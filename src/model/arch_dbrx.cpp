// DBRX (databricks/dbrx-base, dbrx-instruct).
//  - LayerNorm without bias (eps 1e-5); fused Wqkv [d + 2·kv_dim, d], clamped to ±clip_qkv; GQA; RoPE
//    (attn_config.rope_theta, 500000 in the real checkpoints).
//  - Experts stored fused: w1 (gate) and v1 (up) [E·ffn, d], w2 (down) [E·ffn, d] applied as x·w2 (in, out).
//  - Router: softmax over all experts, top-k, then divided by the p-norm of the top-k weights
//    (ffn_config.moe_normalize_expert_weights = p; null means no rescaling).
#include "core/error.h"
#include "model/arch.h"

namespace moep {

namespace {

void parse_dbrx(const ConfigReader& r, ModelConfig& c) {
  read_common_fields(r, c);
  c.d_model = r.get_size("d_model", ConfigLimits::d_model);
  c.n_heads = r.get_size("n_heads", ConfigLimits::heads);
  c.n_layers = r.get_size("n_layers", ConfigLimits::layers);
  c.vocab_size = r.get_size("vocab_size", ConfigLimits::vocab);
  c.max_position = r.get_int("max_seq_len", 2048);
  c.norm = NormKind::LayerNorm;
  c.norm_eps = 1e-5f;
  c.norm_has_bias = false;
  if (c.n_heads <= 0 || c.d_model % c.n_heads != 0) r.bad("n_heads", "must divide d_model");
  c.head_dim = c.d_model / c.n_heads;

  const ConfigReader attn = r.sub("attn_config");
  c.n_kv_heads = attn.has("kv_n_heads") ? attn.get_size("kv_n_heads", ConfigLimits::heads)
                                       : r.get_size("num_key_value_heads", 1, ConfigLimits::heads);
  c.clip_qkv = float(attn.get_double("clip_qkv", 0.0));
  if (c.clip_qkv < 0) attn.bad("clip_qkv", "must be positive or null");
  // The checkpoint's own attn_config.rope_theta wins; the newer top-level spelling is the fallback.
  c.rope_theta = attn.has("rope_theta") ? attn.get_double("rope_theta", 10000.0) : read_rope_theta(r, 10000.0);

  const ConfigReader ffn = r.sub("ffn_config");
  c.expert_ffn = ffn.get_size("ffn_hidden_size", ConfigLimits::ffn);
  c.n_experts = ffn.get_size("moe_num_experts", ConfigLimits::experts);
  c.top_k = ffn.get_size("moe_top_k", ConfigLimits::experts);
  if (ffn.has("moe_normalize_expert_weights")) {
    c.topk_norm = TopKNorm::PNorm;
    c.topk_pnorm = ffn.get_double("moe_normalize_expert_weights", 1.0);
    if (!(c.topk_pnorm > 0)) ffn.bad("moe_normalize_expert_weights", "must be a positive p or null");
  }
  if (ffn.has("ffn_act_fn")) c.hidden_act = ffn.sub("ffn_act_fn").get_string("name", "silu");
  c.layer_is_moe.assign(size_t(c.n_layers), true);
}

void bind_dbrx(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  const int64_t d = c.d_model, kv = c.kv_dim(), f = c.expert_ffn, E = c.n_experts;
  w.embed = b.matrix("transformer.wte.weight", c.vocab_size, d);
  w.final_norm_w = b.vector("transformer.norm_f.weight", d);
  bind_output_head(c, b, "lm_head.weight", w);
  // This rank's heads (all of them unless attention is split): rows of each part of Wqkv, input columns of o.
  const FfnSlice heads = b.share().kv_heads(c.n_kv_heads);
  w.kv_heads = heads;
  const int64_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const int64_t q0 = heads.first * group * hd, nq = heads.count * group * hd, k0 = heads.first * hd,
                nk = heads.count * hd;
  w.layers.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "transformer.blocks." + std::to_string(i) + ".";
    L.attn_norm_w = b.vector(p + "norm_attn_norm.norm_1.weight", d);
    L.ffn_norm_w = b.vector(p + "norm_attn_norm.norm_2.weight", d);
    const std::string qkv = p + "norm_attn_norm.attn.Wqkv.weight";
    const std::string out = p + "norm_attn_norm.attn.out_proj.weight";
    if (heads.count > 0) {
      L.wq = b.matrix_rows(qkv, d + 2 * kv, d, q0, nq);
      L.wk = b.matrix_rows(qkv, d + 2 * kv, d, d + k0, nk);
      L.wv = b.matrix_rows(qkv, d + 2 * kv, d, d + kv + k0, nk);
      L.wo = b.matrix_cols(out, d, d, q0, nq);
    } else {  // more ranks than KV heads: this one has none
      b.skip(qkv, {d + 2 * kv, d});
      b.skip(out, {d, d});
    }
    L.is_moe = true;
    L.router = b.matrix(p + "ffn.router.layer.weight", E, d);
    L.experts.resize(size_t(E));
    const std::string ex = p + "ffn.experts.mlp.";
    for (int64_t e = 0; e < E; ++e) {
      ExpertWeights& x = L.experts[size_t(e)];
      if (!b.share().holds(i, e)) continue;
      x.local = true;
      // This rank's part of the ffn dimension (all of it unless the placement splits experts).
      const FfnSlice sl = b.share().ffn_slice(f);
      const int64_t f0 = e * f + sl.first, n = sl.count;
      x.gate = b.matrix_rows(ex + "w1", E * f, d, f0, n);
      x.up = b.matrix_rows(ex + "v1", E * f, d, f0, n);
      x.down = b.matrix_rows(ex + "w2", E * f, d, f0, n);
      x.down_in_out = true;
    }
    // The fused tensors count as used even when this rank holds none of their experts.
    for (const char* n : {"w1", "v1", "w2"})
      if (b.has(ex + n)) b.skip(ex + n, {E * f, d});
  }
}

}  // namespace

const ArchSpec kDbrxArch{"dbrx", parse_dbrx, bind_dbrx};

}  // namespace moep
