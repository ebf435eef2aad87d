// OLMoE (allenai/OLMoE-1B-7B): Llama-style layers with RMSNorm of q and k over the whole projection
// (q_norm [q_dim], k_norm [kv_dim]) before RoPE, optional clip_qkv after the norms, experts
// mlp.experts.E.{gate,up,down}_proj; router softmax, top-k, renormalized only with norm_topk_prob.
#include "core/error.h"
#include "model/arch.h"

namespace moep {

namespace {

void parse_olmoe(const ConfigReader& r, ModelConfig& c) {
  read_common_fields(r, c);
  c.d_model = r.get_int("hidden_size");
  c.n_layers = r.get_int("num_hidden_layers");
  c.n_heads = r.get_int("num_attention_heads");
  c.n_kv_heads = r.get_int("num_key_value_heads", c.n_heads);
  c.vocab_size = r.get_int("vocab_size");
  if (c.n_heads <= 0) r.bad("num_attention_heads", "must be positive");
  c.head_dim = c.d_model / c.n_heads;
  c.max_position = r.get_int("max_position_embeddings", 4096);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = float(r.get_double("rms_norm_eps", 1e-5));
  c.rope_theta = read_rope_theta(r, 10000.0);
  c.clip_qkv = float(r.get_double("clip_qkv", 0.0));
  if (c.clip_qkv < 0) r.bad("clip_qkv", "must be positive or null");
  c.qkv_bias = c.o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QKNorm::Full;
  c.n_experts = r.get_int_any({"num_experts", "num_local_experts"});
  c.top_k = r.get_int("num_experts_per_tok");
  c.expert_ffn = r.get_int("intermediate_size");
  c.topk_norm = r.get_bool("norm_topk_prob", false) ? TopKNorm::Sum : TopKNorm::None;
  c.layer_is_moe.assign(size_t(c.n_layers), true);
}

void bind_olmoe(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  static const char* const names[3] = {"gate_proj", "up_proj", "down_proj"};
  bind_llama_outer(c, b, w);
  w.layers.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    L.attn_norm_w = b.vector(p + "input_layernorm.weight", c.d_model);
    L.ffn_norm_w = b.vector(p + "post_attention_layernorm.weight", c.d_model);
    bind_llama_attention(c, b, p + "self_attn.", L);
    L.is_moe = true;
    L.router = b.matrix(p + "mlp.gate.weight", c.n_experts, c.d_model);
    bind_expert_list(c, b, i, p + "mlp.experts.", names, L);
  }
}

}  // namespace

const ArchSpec kOlmoeArch{"olmoe", parse_olmoe, bind_olmoe};

}  // namespace moep
