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

const LlamaFamily kQwenMoe = {
    .expert_count_keys = {"num_experts", "num_local_experts"},
    .expert_ffn_key = "moe_intermediate_size",
    .head_dim_key = true,
    .default_max_position = 32768,
    .default_norm_eps = 1e-6,
    .default_rope_theta = 1e6,
    .moe_block = "mlp.",
    .expert_names = {"gate_proj", "up_proj", "down_proj"},
    .dense_mlp = "mlp.",
    .shared_expert = "mlp.shared_expert",
};

void parse_qwen_common(const ConfigReader& r, ModelConfig& c) {
  read_llama_family(r, kQwenMoe, c);
  c.topk_norm = r.get_bool("norm_topk_prob", false) ? TopKNorm::Sum : TopKNorm::None;
  if (r.get_bool("use_sliding_window", false))
    r.bad("use_sliding_window", "is true; sliding-window attention is not supported yet");
  const int64_t step = r.get_int("decoder_sparse_step", 1);
  if (step <= 0) r.bad("decoder_sparse_step", "must be positive");
  const auto mlp_only = r.get_int_list("mlp_only_layers");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    bool dense = false;
    for (auto l : mlp_only) dense |= (l == i);
    c.layer_is_moe[size_t(i)] = !dense && c.n_experts > 0 && (i + 1) % step == 0;
  }
  for (bool m : c.layer_is_moe)
    if (!m) c.dense_ffn = r.get_size("intermediate_size", ConfigLimits::ffn);
}

void parse_qwen2_moe(const ConfigReader& r, ModelConfig& c) {
  parse_qwen_common(r, c);
  c.qkv_bias = r.get_bool("qkv_bias", true);
  c.shared_expert_ffn = r.get_size("shared_expert_intermediate_size", 0, ConfigLimits::ffn);
}

void parse_qwen3_moe(const ConfigReader& r, ModelConfig& c) {
  parse_qwen_common(r, c);
  c.qkv_bias = c.o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QKNorm::PerHead;
}

void bind_qwen(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  bind_llama_family(kQwenMoe, c, b, w);
}

}  // namespace

const ArchSpec kQwen2MoeArch{"qwen2_moe", parse_qwen2_moe, bind_qwen};
const ArchSpec kQwen3MoeArch{"qwen3_moe", parse_qwen3_moe, bind_qwen};

}  // namespace moep
