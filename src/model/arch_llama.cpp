// The Llama-style families' shared config reading and tensor binding (see LlamaFamily in model/arch.h);
// arch_mixtral.cpp, arch_olmoe.cpp and arch_qwen_moe.cpp describe their differences.
#include "core/error.h"
#include "model/arch.h"

namespace moep {

namespace {

// A dense MLP [f, d] gate and up, [d, f] down, named prefix + "{gate,up,down}_proj.weight".
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

}  // namespace

void read_llama_family(const ConfigReader& r, const LlamaFamily& f, ModelConfig& c) {
  read_common_fields(r, c);
  c.d_model = r.get_size("hidden_size", ConfigLimits::d_model);
  c.n_layers = r.get_size("num_hidden_layers", ConfigLimits::layers);
  c.n_heads = r.get_size("num_attention_heads", ConfigLimits::heads);
  c.n_kv_heads = r.get_size("num_key_value_heads", c.n_heads, ConfigLimits::heads);
  c.vocab_size = r.get_size("vocab_size", ConfigLimits::vocab);
  if (c.n_heads <= 0) r.bad("num_attention_heads", "must be positive");
  c.head_dim = f.head_dim_key ? r.get_size("head_dim", c.d_model / c.n_heads, ConfigLimits::head_dim) : c.d_model / c.n_heads;
  c.max_position = r.get_int("max_position_embeddings", f.default_max_position);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = float(r.get_double("rms_norm_eps", f.default_norm_eps));
  c.rope_theta = read_rope_theta(r, f.default_rope_theta);
  c.n_experts = r.get_size_any({f.expert_count_keys[0], f.expert_count_keys[1]}, ConfigLimits::experts);
  c.top_k = r.get_size("num_experts_per_tok", ConfigLimits::experts);
  c.expert_ffn = r.get_size(f.expert_ffn_key, ConfigLimits::ffn);
  c.layer_is_moe.assign(size_t(c.n_layers), true);
}

void bind_llama_family(const LlamaFamily& f, const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
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
      MOEP_ASSERT(f.dense_mlp != nullptr, "layer ", i, " is dense in a family without dense layers");
      L.dense = bind_mlp(b, p + f.dense_mlp, c.d_model, c.dense_ffn);
      continue;
    }
    const std::string moe = p + f.moe_block;
    L.router = b.matrix(moe + "gate.weight", c.n_experts, c.d_model);
    bind_expert_list(c, b, i, moe + "experts.", f.expert_names, L);
    if (c.shared_expert_ffn > 0) {
      MOEP_ASSERT(f.shared_expert != nullptr, "a shared expert in a family without one");
      const std::string shared = p + f.shared_expert;
      L.shared_expert = bind_shared_expert(b, shared + ".", c.d_model, c.shared_expert_ffn);
      L.shared_expert_gate = b.matrix(shared + "_gate.weight", 1, c.d_model);
    }
  }
}

}  // namespace moep
