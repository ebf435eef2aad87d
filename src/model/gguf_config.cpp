#include "model/gguf_config.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "io/gguf.h"
#include "model/arch.h"
#include "model/rope.h"

namespace moep {

namespace {

// `<arch>.block_count`, bounded before anything is sized by it.
int64_t read_block_count(const GgufFile& g, const std::string& key, const std::string& path) {
  const int64_t n = g.get_u32(key);
  if (n > ConfigLimits::layers)
    fail(path, ": ", key, " is ", n, "; moep reads at most ", ConfigLimits::layers, " (a corrupt or hostile file?)");
  return n;
}

// llama.cpp's deepseek2: DeepSeek-V2 and V3 (R1, Kimi K2) with multi-head latent attention, as its converter
// writes them (conversion/deepseek.py, DeepseekV2Model). The result equals what the checkpoint's config.json gives
// (arch_deepseek.cpp): the same ModelConfig, so the same forward pass.
//  - V3 or V2 follows expert_gating_func: sigmoid (2) is V3's routing (choice bias exp_probs_b, groups scored by
//    their two best); softmax (1, or absent as in older V2 files) is V2's (groups scored by their best, the
//    checkpoint's group_limited_greedy; llama.cpp itself scores every grouped model by the two best).
//  - YaRN: the converter stores 0.1 · mscale_all_dim as yarn_log_multiplier and not mscale; llama.cpp takes mscale
//    equal to mscale_all_dim (1 when that is 1), and so does moep.
ModelConfig deepseek2_config(const GgufFile& g, const std::string& path) {
  auto key = [](const char* name) { return std::string("deepseek2.") + name; };
  ModelConfig c;
  c.n_layers = read_block_count(g, key("block_count"), path);
  c.d_model = g.get_u32(key("embedding_length"));
  c.n_heads = g.get_u32(key("attention.head_count"));
  c.max_position = g.get_u32_or(key("context_length"), 4096);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = g.get_f32(key("attention.layer_norm_rms_epsilon"));
  c.rope_theta = g.get_f32_or(key("rope.freq_base"), 10000.f);

  MlaShape& m = c.mla;
  m.q_lora_rank = g.get_u32_or(key("attention.q_lora_rank"), 0);
  m.kv_lora_rank = g.get_u32(key("attention.kv_lora_rank"));
  if (!g.has(key("attention.key_length_mla")))
    fail(path, ": ", key("attention.key_length_mla"), " is absent: a deepseek2 file from before llama.cpp split ",
         "attn_kv_b into attn_k_b and attn_v_b (2025); convert it again");
  const int64_t qk_head = g.get_u32(key("attention.key_length_mla"));
  m.qk_rope_head_dim = g.get_u32(key("rope.dimension_count"));
  m.qk_nope_head_dim = qk_head - m.qk_rope_head_dim;
  m.v_head_dim = g.get_u32(key("attention.value_length_mla"));
  if (m.kv_lora_rank <= 0 || m.qk_nope_head_dim <= 0 || m.v_head_dim <= 0 || m.qk_rope_head_dim <= 0 ||
      m.qk_rope_head_dim % 2 != 0 || m.kv_lora_rank > ConfigLimits::d_model || qk_head > ConfigLimits::head_dim ||
      m.v_head_dim > ConfigLimits::head_dim || m.q_lora_rank > ConfigLimits::d_model)
    fail(path, ": the latent attention's sizes (kv_lora_rank ", m.kv_lora_rank, ", key_length_mla ", qk_head,
         ", rope.dimension_count ", m.qk_rope_head_dim, ", value_length_mla ", m.v_head_dim, ", q_lora_rank ",
         m.q_lora_rank, ") are not those of a DeepSeek model: positive, the rotated part even and smaller than ",
         "the key");
  m.rope_interleave = true;  // llama.cpp's deepseek2 rotates adjacent pairs (LLAMA_ROPE_TYPE_NORM)
  c.n_kv_heads = c.n_heads;
  c.head_dim = m.qk_head_dim();

  if (g.has(key("rope.scaling.type")) && g.get_string(key("rope.scaling.type")) != "none") {
    const std::string type = g.get_string(key("rope.scaling.type"));
    if (type != "yarn")
      fail(path, ": ", key("rope.scaling.type"), " is '", type, "'; moep reads deepseek2 with 'yarn' or none");
    RopeScaling& y = c.rope_scaling;
    y.type = "yarn";
    y.factor = g.get_f32(key("rope.scaling.factor"));
    y.original_max_position = g.get_u32(key("rope.scaling.original_context_length"));
    y.beta_fast = g.get_f32_or(key("rope.scaling.yarn_beta_fast"), 32.f);
    y.beta_slow = g.get_f32_or(key("rope.scaling.yarn_beta_slow"), 1.f);
    if (g.has(key("rope.scaling.yarn_log_multiplier"))) {
      // Stored as the f32 of 0.1 · mscale_all_dim: back to the config's decimal (6 significant digits).
      const double all = double(g.get_f32(key("rope.scaling.yarn_log_multiplier"))) / 0.1;
      y.mscale_all_dim = std::round(all * 1e6) / 1e6;
      y.mscale = y.mscale_all_dim;
    }
    if (!(y.factor >= 1.0) || y.original_max_position <= 0)
      fail(path, ": YaRN needs ", key("rope.scaling.factor"), " >= 1 and a positive ",
           key("rope.scaling.original_context_length"));
  }
  m.softmax_scale = 1.0 / std::sqrt(double(m.qk_head_dim()));
  if (c.rope_scaling.type == "yarn" && c.rope_scaling.mscale_all_dim != 0.0) {
    const double ms = yarn_mscale(c.rope_scaling.factor, c.rope_scaling.mscale_all_dim);
    m.softmax_scale *= ms * ms;
  }

  c.n_experts = g.get_u32(key("expert_count"));
  c.top_k = g.get_u32(key("expert_used_count"));
  c.expert_ffn = g.get_u32(key("expert_feed_forward_length"));
  if (c.n_experts > ConfigLimits::experts || c.top_k > c.n_experts || c.expert_ffn > ConfigLimits::ffn)
    fail(path, ": ", c.n_experts, " experts, ", c.top_k, " used, of ", c.expert_ffn,
         " each: beyond what moep reads, or more used than there are");
  const int64_t first_dense = g.get_u32_or(key("leading_dense_block_count"), 0);
  c.layer_is_moe.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) c.layer_is_moe[size_t(i)] = c.n_experts > 0 && i >= first_dense;
  if (first_dense > 0) c.dense_ffn = g.get_u32(key("feed_forward_length"));
  c.shared_expert_ffn = int64_t(g.get_u32_or(key("expert_shared_count"), 0)) * c.expert_ffn;
  c.shared_expert_gated = false;
  c.routed_scaling_factor = g.get_f32_or(key("expert_weights_scale"), 1.f);
  c.topk_norm = g.has(key("expert_weights_norm")) && g.get_bool(key("expert_weights_norm")) ? TopKNorm::Sum
                                                                                             : TopKNorm::None;
  c.n_group = g.get_u32_or(key("expert_group_count"), 1);
  c.topk_group = g.get_u32_or(key("expert_group_used_count"), 1);
  if (c.n_experts > 0 && (c.n_group <= 0 || c.n_experts % c.n_group != 0 || c.topk_group <= 0 ||
                          c.topk_group > c.n_group))
    fail(path, ": ", key("expert_group_count"), " (", c.n_group, ") must divide the ", c.n_experts,
         " experts and ", key("expert_group_used_count"), " (", c.topk_group, ") be in [1, groups]");
  const uint32_t gating = g.get_u32_or(key("expert_gating_func"), 1);
  if (gating == 2) {
    c.model_type = "deepseek_v3";
    c.router_scoring = RouterScoring::Sigmoid;
    c.router_choice_bias = true;
    c.group_score = GroupScore::Top2Sum;
  } else if (gating == 1) {
    c.model_type = "deepseek_v2";
    c.router_scoring = RouterScoring::Softmax;
    c.group_score = c.n_group > 1 ? GroupScore::Max : GroupScore::None;
  } else {
    fail(path, ": ", key("expert_gating_func"), " is ", gating, "; moep reads 1 (softmax: DeepSeek-V2) and 2 ",
         "(sigmoid: DeepSeek-V3)");
  }
  return c;
}

// The layer count (bounded before anything is sized by it), width and attention heads, as every architecture but
// deepseek2 stores them: key_length is the head size when given (else d_model / heads) and value_length must equal it.
void read_layers_and_heads(const GgufFile& g, const std::string& arch, const std::string& path, ModelConfig& c) {
  auto key = [&](const char* name) { return arch + "." + name; };
  c.n_layers = read_block_count(g, key("block_count"), path);
  c.d_model = g.get_u32(key("embedding_length"));
  c.n_heads = g.get_u32(key("attention.head_count"));
  c.n_kv_heads = g.get_u32_or(key("attention.head_count_kv"), uint32_t(c.n_heads));
  if (c.n_heads <= 0) fail(path, ": ", key("attention.head_count"), " must be positive");
  c.head_dim = g.has(key("attention.key_length")) ? int64_t(g.get_u32(key("attention.key_length")))
                                                  : c.d_model / c.n_heads;
  if (g.has(key("attention.value_length")) && g.get_u32(key("attention.value_length")) != c.head_dim)
    fail(path, ": ", key("attention.value_length"), " (", g.get_u32(key("attention.value_length")),
         ") differs from the key length (", c.head_dim, "); moep expects them equal");
}

// llama.cpp's gpt-oss (openai/gpt-oss-20b and -120b, conversion/gpt_oss.py): the same ModelConfig as the
// checkpoint's config.json (arch_gpt_oss.cpp), with what llama.cpp fixes in its graph rather than in the file:
//  - the clamped SwiGLU's limit 7 and alpha 1.702, the router's softmax over the chosen logits, biases on q, k, v,
//    o, the router and the experts, and a sink logit per head;
//  - sliding-window layers every sliding_window_pattern-th layer but the last of each period (2, its default: the
//    even layers), as the checkpoint's layer_types alternate;
//  - YaRN's ramp bounds: llama.cpp floors and ceils them (ggml_rope_yarn_corr_dims); the checkpoints say
//    `truncate: false`, and transformers, the reference, does not round them. moep follows the checkpoints, so a
//    gpt-oss GGUF computes what its checkpoint computes; against llama.cpp the rotation of the few frequencies in
//    the ramp differs slightly (scripts/llamacpp/side_by_side.sh interop measures it: about 6e-4 relative).
ModelConfig gpt_oss_config(const GgufFile& g, const std::string& path) {
  auto key = [](const char* name) { return std::string("gpt-oss.") + name; };
  ModelConfig c;
  c.model_type = "gpt_oss";
  read_layers_and_heads(g, "gpt-oss", path, c);
  c.max_position = g.get_u32_or(key("context_length"), 4096);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = g.get_f32(key("attention.layer_norm_rms_epsilon"));
  c.rope_theta = g.get_f32_or(key("rope.freq_base"), 10000.f);
  if (g.has(key("rope.freq_base_swa")) && g.get_f32(key("rope.freq_base_swa")) != float(c.rope_theta))
    fail(path, ": ", key("rope.freq_base_swa"), " (", g.get_f32(key("rope.freq_base_swa")), ") differs from ",
         key("rope.freq_base"), " (", c.rope_theta, "); moep rotates every layer with one base");
  if (g.has(key("rope.scaling.type")) && g.get_string(key("rope.scaling.type")) != "none") {
    const std::string type = g.get_string(key("rope.scaling.type"));
    if (type != "yarn")
      fail(path, ": ", key("rope.scaling.type"), " is '", type, "'; moep reads gpt-oss with 'yarn' or none");
    for (const char* k : {"rope.scaling.yarn_ext_factor", "rope.scaling.yarn_attn_factor",
                          "rope.scaling.yarn_log_multiplier"})
      if (g.has(key(k)))
        fail(path, ": ", key(k), " is set; moep reads gpt-oss's YaRN as its checkpoints give it (factor, original ",
             "context, beta_fast, beta_slow), without this key");
    RopeScaling& y = c.rope_scaling;
    y.type = "yarn";
    y.factor = g.get_f32(key("rope.scaling.factor"));
    y.original_max_position = g.get_u32(key("rope.scaling.original_context_length"));
    y.beta_fast = g.get_f32_or(key("rope.scaling.yarn_beta_fast"), 32.f);
    y.beta_slow = g.get_f32_or(key("rope.scaling.yarn_beta_slow"), 1.f);
    y.truncate = false;  // the checkpoints' (above)
    if (!(y.factor >= 1.0) || y.original_max_position <= 0)
      fail(path, ": YaRN needs ", key("rope.scaling.factor"), " >= 1 and a positive ",
           key("rope.scaling.original_context_length"));
  }

  c.n_experts = g.get_u32(key("expert_count"));
  c.top_k = g.get_u32(key("expert_used_count"));
  c.expert_ffn = g.has(key("expert_feed_forward_length")) ? g.get_u32(key("expert_feed_forward_length"))
                                                          : g.get_u32(key("feed_forward_length"));
  if (c.n_experts > ConfigLimits::experts || c.top_k > c.n_experts || c.expert_ffn > ConfigLimits::ffn)
    fail(path, ": ", c.n_experts, " experts, ", c.top_k, " used, of ", c.expert_ffn,
         " each: beyond what moep reads, or more used than there are");
  c.layer_is_moe.assign(size_t(c.n_layers), true);
  c.topk_norm = TopKNorm::Sum;
  c.attention_sinks = true;
  c.router_bias = c.expert_bias = true;
  c.swiglu_limit = 7.0;
  c.swiglu_alpha = 1.702;

  const int64_t window = g.get_u32(key("attention.sliding_window"));
  const uint32_t period = g.get_u32_or(key("attention.sliding_window_pattern"), 2);
  if (window <= 0 || period == 0)
    fail(path, ": ", key("attention.sliding_window"), " (", window, ") and ", key("attention.sliding_window_pattern"),
         " (", period, ") must be positive");
  c.layer_window.assign(size_t(c.n_layers), 0);
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (i % period < period - 1) c.layer_window[size_t(i)] = window;
  if (g.has(key("expert_gating_func")) && g.get_u32(key("expert_gating_func")) != 3)
    fail(path, ": ", key("expert_gating_func"), " is ", g.get_u32(key("expert_gating_func")),
         "; gpt-oss routes by a softmax over the chosen experts' logits (3)");
  c.qkv_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = g.find_tensor("blk.0.attn_output.bias") != nullptr;
  return c;
}

// What every architecture reads alike: the vocabulary size, whether the head is the embedding, the special ids.
void finish_config(const GgufFile& g, const std::string& arch, const std::string& path, ModelConfig& c) {
  auto key = [&](const char* name) { return arch + "." + name; };
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

  c.tie_word_embeddings = g.find_tensor("output.weight") == nullptr;

  if (g.has("tokenizer.ggml.eos_token_id"))
    c.eos_token_ids.push_back(int32_t(g.get_u32("tokenizer.ggml.eos_token_id")));
  if (g.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = int32_t(g.get_u32("tokenizer.ggml.bos_token_id"));

  validate_config(c, path);
}

}  // namespace

ModelConfig model_config_from_gguf(const GgufFile& g) {
  const std::string& path = g.files()[0]->path();
  const std::string arch = g.get_string("general.architecture");
  auto key = [&](const char* name) { return arch + "." + name; };
  if (arch == "deepseek2" || arch == "gpt-oss") {
    ModelConfig c = arch == "deepseek2" ? deepseek2_config(g, path) : gpt_oss_config(g, path);
    finish_config(g, arch, path, c);
    return c;
  }
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
         "olmoe, dbrx, deepseek2 and gpt-oss");
  }

  read_layers_and_heads(g, arch, path, c);
  if (g.has(key("rope.dimension_count")) && g.get_u32(key("rope.dimension_count")) != c.head_dim)
    fail(path, ": ", key("rope.dimension_count"), " is ", g.get_u32(key("rope.dimension_count")),
         "; moep rotates whole heads (", c.head_dim, ")");
  c.max_position = g.get_u32_or(key("context_length"), 4096);
  // llama.cpp's default when the file has none.
  c.rope_theta = g.get_f32_or(key("rope.freq_base"), 10000.f);
  if (g.has(key("rope.scaling.type")) && g.get_string(key("rope.scaling.type")) != "none")
    fail(path, ": ", key("rope.scaling.type"), " is '", g.get_string(key("rope.scaling.type")),
         "'; only unscaled RoPE is supported by this version");

  c.n_experts = g.get_u32(key("expert_count"));
  c.top_k = g.get_u32(key("expert_used_count"));
  // Mixtral and DBRX store the expert's size as feed_forward_length; the Qwen and OLMoE converters as
  // expert_feed_forward_length (Qwen's feed_forward_length is then a dense MLP's, which its MoE layers lack).
  c.expert_ffn = g.has(key("expert_feed_forward_length")) ? g.get_u32(key("expert_feed_forward_length"))
                                                          : g.get_u32(key("feed_forward_length"));
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
  finish_config(g, arch, path, c);
  return c;
}

}  // namespace moep
