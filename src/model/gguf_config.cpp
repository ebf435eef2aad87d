#include "model/gguf_config.h"

#include <algorithm>

#include "core/error.h"
#include "io/gguf.h"
#include "model/arch.h"

namespace moep {

ModelConfig model_config_from_gguf(const GgufFile& g) {
  const std::string& path = g.files()[0]->path();
  const std::string arch = g.get_string("general.architecture");
  auto key = [&](const char* name) { return arch + "." + name; };
  ModelConfig c;

  if (arch == "llama") {
    if (g.get_u32_or(key("expert_count"), 0) == 0)
      fail(path, ": a dense llama model (llama.expert_count is absent or 0); moep runs Mixture-of-Experts models ",
           "(a llama model with experts is Mixtral)");
    c.model_type = "mixtral";
  } else if (arch == "qwen2moe") {
    c.model_type = "qwen2_moe";
  } else if (arch == "qwen3moe") {
    c.model_type = "qwen3_moe";
  } else if (arch == "olmoe" || arch == "dbrx") {
    c.model_type = arch;
  } else {
    fail(path, ": general.architecture is '", arch, "'; moep runs llama (with experts: Mixtral), qwen2moe, qwen3moe, ",
         "olmoe and dbrx");
  }

  c.n_layers = g.get_u32(key("block_count"));
  c.d_model = g.get_u32(key("embedding_length"));
  c.n_heads = g.get_u32(key("attention.head_count"));
  c.n_kv_heads = g.get_u32_or(key("attention.head_count_kv"), uint32_t(c.n_heads));
  if (c.n_heads <= 0) fail(path, ": ", key("attention.head_count"), " must be positive");
  c.head_dim = g.has(key("attention.key_length")) ? int64_t(g.get_u32(key("attention.key_length")))
                                                  : c.d_model / c.n_heads;
  if (g.has(key("attention.value_length")) && g.get_u32(key("attention.value_length")) != c.head_dim)
    fail(path, ": ", key("attention.value_length"), " (", g.get_u32(key("attention.value_length")),
         ") differs from the key length (", c.head_dim, "); moep expects them equal");
  if (g.has(key("rope.dimension_count")) && g.get_u32(key("rope.dimension_count")) != c.head_dim)
    fail(path, ": ", key("rope.dimension_count"), " is ", g.get_u32(key("rope.dimension_count")),
         "; moep rotates whole heads (", c.head_dim, ")");
  c.max_position = g.get_u32_or(key("context_length"), 4096);
  // llama.cpp's default when the file has none.
  c.rope_theta = g.get_f32_or(key("rope.freq_base"), 10000.f);
  if (g.has(key("rope.scaling.type")) && g.get_string(key("rope.scaling.type")) != "none")
    fail(path, ": ", key("rope.scaling.type"), " is '", g.get_string(key("rope.scaling.type")),
         "'; only unscaled RoPE is supported by this version");

  // The vocabulary size: stored by some converters, else the length of the tokenizer's token list.
  if (g.has(key("vocab_size"))) {
    c.vocab_size = g.get_u32(key("vocab_size"));
  } else if (const GgufValue* tokens = g.find("tokenizer.ggml.tokens");
             tokens && tokens->type == GgufType::Array) {
    c.vocab_size = int64_t(tokens->count);
  } else {
    fail(path, ": neither ", key("vocab_size"), " nor tokenizer.ggml.tokens is present: the vocabulary size is ",
         "unknown");
  }

  c.n_experts = g.get_u32(key("expert_count"));
  c.top_k = g.get_u32(key("expert_used_count"));
  // Mixtral and DBRX store the expert's size as feed_forward_length; the Qwen and OLMoE converters as
  // expert_feed_forward_length (Qwen's feed_forward_length is then a dense MLP's, which its MoE layers lack).
  c.expert_ffn = g.has(key("expert_feed_forward_length")) ? g.get_u32(key("expert_feed_forward_length"))
                                                          : g.get_u32(key("feed_forward_length"));
  if (c.n_layers > ConfigLimits::layers)  // before anything is sized by it
    fail(path, ": ", key("block_count"), " is ", c.n_layers, "; moep reads at most ", ConfigLimits::layers,
         " (a corrupt or hostile file?)");
  // A layer without a router is a dense MLP layer (Qwen2-MoE's mlp_only_layers: moep writes them as llama.cpp's
  // dense ffn_gate/ffn_up/ffn_down, of feed_forward_length; llama.cpp's qwen2moe itself has none).
  c.layer_is_moe.assign(size_t(std::max<int64_t>(c.n_layers, 0)), true);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string blk = "blk." + std::to_string(i) + ".";
    if (g.find_tensor(blk + "ffn_gate_inp.weight") || !g.find_tensor(blk + "ffn_gate.weight")) continue;
    c.layer_is_moe[size_t(i)] = false;
    c.dense_ffn = g.get_u32(key("feed_forward_length"));
  }

  if (arch == "dbrx") {
    c.norm = NormKind::LayerNorm;
    c.norm_has_bias = false;
    c.norm_eps = g.get_f32(key("attention.layer_norm_epsilon"));
    c.clip_qkv = g.get_f32_or(key("attention.clamp_kqv"), 0.f);
    // The released checkpoints' moe_normalize_expert_weights = 1: top-k weights over their 1-norm.
    c.topk_norm = TopKNorm::PNorm;
    c.topk_pnorm = 1.0;
  } else {
    c.norm = NormKind::RMSNorm;
    c.norm_eps = g.get_f32(key("attention.layer_norm_rms_epsilon"));
  }
  // Top-k renormalization and q/k norms are not stored: llama.cpp builds each family's graph with them fixed.
  if (arch == "llama" || arch == "qwen3moe") c.topk_norm = TopKNorm::Sum;
  // Where the file says it (llama.cpp's expert_weights_norm), that wins: moep writes it for Qwen and OLMoE, whose
  // checkpoints choose (norm_topk_prob).
  if (arch != "dbrx" && g.has(key("expert_weights_norm")))
    c.topk_norm = g.get_bool(key("expert_weights_norm")) ? TopKNorm::Sum : TopKNorm::None;
  if (arch == "qwen3moe") c.qk_norm = QKNorm::PerHead;
  if (arch == "olmoe") {
    c.qk_norm = QKNorm::Full;
    c.clip_qkv = g.get_f32_or(key("attention.clamp_kqv"), 0.f);
  }
  if (arch == "qwen2moe") c.shared_expert_ffn = g.get_u32_or(key("expert_shared_feed_forward_length"), 0);
  if (c.clip_qkv < 0) fail(path, ": ", key("attention.clamp_kqv"), " must not be negative");

  // What the tensors say: biases, and whether the output matrix is the embedding's.
  c.qkv_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = g.find_tensor("blk.0.attn_output.bias") != nullptr;
  c.tie_word_embeddings = g.find_tensor("output.weight") == nullptr;

  if (g.has("tokenizer.ggml.eos_token_id"))
    c.eos_token_ids.push_back(int32_t(g.get_u32("tokenizer.ggml.eos_token_id")));
  if (g.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = int32_t(g.get_u32("tokenizer.ggml.bos_token_id"));

  validate_config(c, path);
  return c;
}

}  // namespace moep
