// Mixtral (mistralai/Mixtral-8x7B, 8x22B): Llama-style attention (RMSNorm, GQA, RoPE, no biases), experts
// block_sparse_moe.experts.E.{w1 gate, w3 up, w2 down}; router softmax over all experts, top-k, renormalized
// to sum 1.
#include "core/error.h"
#include "model/arch.h"

namespace moep {

namespace {

void parse_mixtral(const ConfigReader& r, ModelConfig& c) {
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
  c.norm_eps = float(r.get_double("rms_norm_eps", 1e-5));
  c.rope_theta = read_rope_theta(r, 1e6);
  c.n_experts = r.get_int_any({"num_local_experts", "num_experts"});
  c.top_k = r.get_int("num_experts_per_tok");
  c.expert_ffn = r.get_int("intermediate_size");
  c.topk_norm = TopKNorm::Sum;
  c.layer_is_moe.assign(size_t(c.n_layers), true);
  // Within the window, sliding-window attention equals full attention; the engine limits contexts to it.
  c.sliding_window = r.get_int("sliding_window", 0);
}

void bind_mixtral(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  static const char* const names[3] = {"w1", "w3", "w2"};
  bind_llama_outer(c, b, w);
  w.layers.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    L.attn_norm_w = b.vector(p + "input_layernorm.weight", c.d_model);
    L.ffn_norm_w = b.vector(p + "post_attention_layernorm.weight", c.d_model);
    bind_llama_attention(c, b, p + "self_attn.", L);
    L.is_moe = true;
    L.router = b.matrix(p + "block_sparse_moe.gate.weight", c.n_experts, c.d_model);
    bind_expert_list(c, b, i, p + "block_sparse_moe.experts.", names, L);
  }
}

}  // namespace

const ArchSpec kMixtralArch{"mixtral", parse_mixtral, bind_mixtral};

}  // namespace moep
