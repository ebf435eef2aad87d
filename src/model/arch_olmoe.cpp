// OLMoE (allenai/OLMoE-1B-7B): Llama-style layers with RMSNorm of q and k over the whole projection
// (q_norm [q_dim], k_norm [kv_dim]) before RoPE, optional clip_qkv after the norms, experts
// mlp.experts.E.{gate,up,down}_proj; router softmax, top-k, renormalized only with norm_topk_prob.
#include "core/error.h"
#include "model/arch.h"

namespace moep {

namespace {

const LlamaFamily kOlmoe = {
    .expert_count_keys = {"num_experts", "num_local_experts"},
    .expert_ffn_key = "intermediate_size",
    .head_dim_key = false,
    .default_max_position = 4096,
    .default_norm_eps = 1e-5,
    .default_rope_theta = 10000.0,
    .moe_block = "mlp.",
    .expert_names = {"gate_proj", "up_proj", "down_proj"},
    .dense_mlp = nullptr,
    .shared_expert = nullptr,
};

void parse_olmoe(const ConfigReader& r, ModelConfig& c) {
  read_llama_family(r, kOlmoe, c);
  c.clip_qkv = float(r.get_double("clip_qkv", 0.0));
  if (c.clip_qkv < 0) r.bad("clip_qkv", "must be positive or null");
  c.qkv_bias = c.o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QKNorm::Full;
  c.topk_norm = r.get_bool("norm_topk_prob", false) ? TopKNorm::Sum : TopKNorm::None;
}

void bind_olmoe(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  bind_llama_family(kOlmoe, c, b, w);
}

}  // namespace

const ArchSpec kOlmoeArch{"olmoe", parse_olmoe, bind_olmoe};

}  // namespace moep
