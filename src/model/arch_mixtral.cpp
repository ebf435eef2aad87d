// Mixtral (mistralai/Mixtral-8x7B, 8x22B): Llama-style attention (RMSNorm, GQA, RoPE, no biases), experts
// block_sparse_moe.experts.E.{w1 gate, w3 up, w2 down}; router softmax over all experts, top-k, renormalized
// to sum 1.
#include "core/error.h"
#include "model/arch.h"

namespace moep {

namespace {

const LlamaFamily kMixtral = {
    .expert_count_keys = {"num_local_experts", "num_experts"},
    .expert_ffn_key = "intermediate_size",
    .head_dim_key = true,
    .default_max_position = 32768,
    .default_norm_eps = 1e-5,
    .default_rope_theta = 1e6,
    .moe_block = "block_sparse_moe.",
    .expert_names = {"w1", "w3", "w2"},
    .dense_mlp = nullptr,
    .shared_expert = nullptr,
};

void parse_mixtral(const ConfigReader& r, ModelConfig& c) {
  read_llama_family(r, kMixtral, c);
  c.topk_norm = TopKNorm::Sum;
  // Within the window, sliding-window attention equals full attention; the engine limits contexts to it.
  c.sliding_window = r.get_int("sliding_window", 0);
}

void bind_mixtral(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  bind_llama_family(kMixtral, c, b, w);
}

}  // namespace

const ArchSpec kMixtralArch{"mixtral", parse_mixtral, bind_mixtral};

}  // namespace moep
