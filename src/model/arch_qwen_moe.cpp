// Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B) and Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B).
//  - Qwen2-MoE: q/k/v biases (qkv_bias, default true); a shared expert gated by sigmoid(shared_expert_gate·x)
//    added to the routed experts; norm_topk_prob (default false); dense MLP layers where mlp_only_layers or
//    decoder_sparse_step say so.
//  - Qwen3-MoE: no shared expert; RMSNorm of q and k per head (over head_dim) before RoPE; explicit head_dim;
//    attention_bias on all four projections.
#include "core/error.h"
#include "model/arch.h"

namespace moep {

namespace {

void parse_qwen_common(const ConfigReader& r, ModelConfig& c, double default_theta) {
  read_common_fields(r, c);
  c.d_model = r.get_int("hidden_size");
  c.n_layers = r.get_int("num_hidden_layers");
  c.n_heads = r.get_int("num_attention_heads");
  c.n_kv_heads = r.get_int("num_key_value_heads", c.n_heads);
  c.vocab_size = r.get_int("vocab_size");
  if (c.n_heads <= 0) r.bad("num_attention_heads", "must be positive");
  c.head_dim = r.get_int("head_dim", c.d_model / c.n_heads);
  c.max_position = r.get_int("max_position_embeddings", 32768);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = float(r.get_double("rms_norm_eps", 1e-6));
  c.rope_theta = read_rope_theta(r, default_theta);
  c.n_experts = r.get_int_any({"num_experts", "num_local_experts"});
  c.top_k = r.get_int("num_experts_per_tok");
  c.expert_ffn = r.get_int("moe_intermediate_size");
  c.topk_norm = r.get_bool("norm_topk_prob", false) ? TopKNorm::Sum : TopKNorm::None;
  if (r.get_bool("use_sliding_window", false))
    r.bad("use_sliding_window", "is true; sliding-window attention is not supported yet");
  const int64_t step = r.get_int("decoder_sparse_step", 1);
  if (step <= 0) r.bad("decoder_sparse_step", "must be positive");
  const auto mlp_only = r.get_int_list("mlp_only_layers");
  c.layer_is_moe.assign(size_t(c.n_layers), false);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    bool dense = false;
    for (auto l : mlp_only) dense |= (l == i);
    c.layer_is_moe[size_t(i)] = !dense && c.n_experts > 0 && (i + 1) % step == 0;
  }
  for (bool m : c.layer_is_moe)
    if (!m) c.dense_ffn = r.get_int("intermediate_size");
}

void parse_qwen2_moe(const ConfigReader& r, ModelConfig& c) {
  parse_qwen_common(r, c, 1e6);
  c.qkv_bias = r.get_bool("qkv_bias", true);
  c.shared_expert_ffn = r.get_int("shared_expert_intermediate_size", 0);
}

void parse_qwen3_moe(const ConfigReader& r, ModelConfig& c) {
  parse_qwen_common(r, c, 1e6);
  c.qkv_bias = c.o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QKNorm::PerHead;
}

MlpWeights bind_mlp(WeightBinder& b, const std::string& p, int64_t d, int64_t f) {
  MlpWeights m;
  m.gate = b.matrix(p + "gate_proj.weight", f, d);
  m.up = b.matrix(p + "up_proj.weight", f, d);
  m.down = b.matrix(p + "down_proj.weight", d, f);
  return m;
}

// A shared expert: this rank's slice of its ffn dimension under a split placement (all of it otherwise).
MlpWeights bind_shared_expert(WeightBinder& b, const std::string& p, int64_t d, int64_t f) {
  const FfnSlice sl = b.share().ffn_slice(f);
  MlpWeights m;
  m.gate = b.matrix_rows(p + "gate_proj.weight", f, d, sl.first, sl.count);
  m.up = b.matrix_rows(p + "up_proj.weight", f, d, sl.first, sl.count);
  m.down = b.matrix_cols(p + "down_proj.weight", d, f, sl.first, sl.count);
  return m;
}

void bind_qwen(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  static const char* const names[3] = {"gate_proj", "up_proj", "down_proj"};
  bind_llama_outer(c, b, w);
  w.layers.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    L.attn_norm_w = b.vector(p + "input_layernorm.weight", c.d_model);
    L.ffn_norm_w = b.vector(p + "post_attention_layernorm.weight", c.d_model);
    bind_llama_attention(c, b, p + "self_attn.", L);
    L.is_moe = c.layer_is_moe[size_t(i)];
    if (!L.is_moe) {
      L.dense = bind_mlp(b, p + "mlp.", c.d_model, c.dense_ffn);
      continue;
    }
    L.router = b.matrix(p + "mlp.gate.weight", c.n_experts, c.d_model);
    bind_expert_list(c, b, i, p + "mlp.experts.", names, L);
    if (c.shared_expert_ffn > 0) {
      L.shared_expert = bind_shared_expert(b, p + "mlp.shared_expert.", c.d_model, c.shared_expert_ffn);
      L.shared_expert_gate = b.matrix(p + "mlp.shared_expert_gate.weight", 1, c.d_model);
    }
  }
}

}  // namespace

const ArchSpec kQwen2MoeArch{"qwen2_moe", parse_qwen2_moe, bind_qwen};
const ArchSpec kQwen3MoeArch{"qwen3_moe", parse_qwen3_moe, bind_qwen};

}  // namespace moep
