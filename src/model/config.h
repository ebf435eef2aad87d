// The shape and options of a supported model, read from a Hugging Face config.json. One struct covers every
// family; each architecture file (arch_*.cpp) fills it from its own spelling of config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/dtype.h"

namespace moep {

enum class NormKind { RMSNorm, LayerNorm };
// Where q/k get an RMSNorm before RoPE: none, per head over head_dim (Qwen3), over the whole projection (OLMoE).
enum class QKNorm { None, PerHead, Full };
// How the top-k router weights are rescaled after softmax over all experts and top-k.
enum class TopKNorm { None, Sum, PNorm };
// How router logits become expert scores: softmax over all experts (most families) or an independent sigmoid per
// expert (DeepSeek-V3, Kimi K2).
enum class RouterScoring { Softmax, Sigmoid };
// DeepSeek's group-limited routing: experts form n_group equal groups, each group is scored, and top-k chooses
// only among the experts of the topk_group best groups. None: plain top-k over all experts. Max: a group's score is
// its largest expert score (DeepSeek-V2 group_limited_greedy). Top2Sum: the sum of its two largest bias-corrected
// scores (DeepSeek-V3 noaux_tc).
enum class GroupScore { None, Max, Top2Sum };

// Multi-head latent attention (DeepSeek-V2/V3, Kimi K2). Keys and values of every head come from one compressed
// latent per position (kv_lora_rank floats, RMS-normalized) and one rope key shared by all heads
// (qk_rope_head_dim); only those two are cached. kv_lora_rank 0: the model has ordinary attention.
struct MlaShape {
  int64_t q_lora_rank = 0;  // 0: q_proj from the hidden state; else q_a_proj → RMSNorm → q_b_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  // The query's and rope key's rotated pairs are adjacent elements (2i, 2i+1) (DeepSeek-V2's complex rotation;
  // V3's rope_interleave), else (i, i + d/2) (rotate_half). Only their dot products are used, so either layout
  // is rotated in place.
  bool rope_interleave = true;
  // The attention score scale: qk_head_dim^-0.5, times yarn_mscale(factor, mscale_all_dim)² for DeepSeek-V3.
  double softmax_scale = 0.0;
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Floats one layer caches per position: the latent and the rope key.
  int64_t cache_floats() const { return kv_lora_rank + qk_rope_head_dim; }
};

// RoPE scaling as config.json's rope_parameters (or rope_scaling) gives it. "default": plain RoPE. "yarn": YaRN
// (gpt-oss, DeepSeek-V2/V3, Kimi K2): frequencies blended between interpolated and extrapolated over a ramp, and
// cos/sin multiplied by an attention factor. Fields hold config.json's values; 0 means absent. model/rope.h makes
// the tables from it exactly as transformers does.
struct RopeScaling {
  std::string type = "default";  // "default" | "yarn"
  double factor = 0.0;                 // yarn: the context extension factor
  int64_t original_max_position = 0;  // yarn: the pretrained context (original_max_position_embeddings)
  double beta_fast = 0.0, beta_slow = 0.0;  // yarn ramp bounds in rotations (transformers: 32 and 1 when absent)
  double mscale = 0.0, mscale_all_dim = 0.0;  // DeepSeek's
  double attention_factor = 0.0;  // given explicitly
  bool truncate = true;           // floor/ceil the ramp bounds (gpt-oss: false)
};

struct ModelConfig {
  std::string model_type;  // "dbrx", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position = 0;  // the model's trained context; the engine may be told to use less
  int64_t sliding_window = 0;  // Mixtral's attention window (0: none); contexts are limited to it

  NormKind norm = NormKind::RMSNorm;
  float norm_eps = 1e-5f;
  bool norm_has_bias = false;  // LayerNorm bias (DBRX has none)

  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  float clip_qkv = 0.f;  // 0: no clipping
  bool qkv_bias = false;
  bool o_bias = false;
  QKNorm qk_norm = QKNorm::None;
  // gpt-oss: per-layer sliding windows ([n_layers], 0: full attention; empty: every layer full; a query at pos
  // attends pos - window + 1 .. pos; unlike sliding_window the context is not limited by it), and a learned
  // logit per query head joining each softmax (LayerWeights::sinks).
  std::vector<int64_t> layer_window;
  bool attention_sinks = false;

  // Mixture of experts.
  int64_t n_experts = 0;
  int64_t top_k = 0;
  int64_t expert_ffn = 0;  // intermediate size of one expert
  TopKNorm topk_norm = TopKNorm::None;
  double topk_pnorm = 1.0;       // p of the p-norm (DBRX moe_normalize_expert_weights)
  int64_t shared_expert_ffn = 0;  // Qwen2-MoE shared expert (0: none); gated by sigmoid(shared_expert_gate · x)
  bool shared_expert_gated = true;  // false: the shared expert is added as it is (DeepSeek's shared_experts)
  // Routing beyond softmax + top-k (DeepSeek): the scoring, a per-expert bias added to the scores for choosing
  // only (e_score_correction_bias), group limits, and a factor on the final weights (routed_scaling_factor).
  RouterScoring router_scoring = RouterScoring::Softmax;
  bool router_choice_bias = false;
  GroupScore group_score = GroupScore::None;
  int64_t n_group = 1, topk_group = 1;
  double routed_scaling_factor = 1.0;
  int64_t dense_ffn = 0;          // intermediate size of dense (non-MoE) MLP layers, where there are any
  std::vector<bool> layer_is_moe;  // [n_layers]
  // gpt-oss experts: biases on the router, on gate/up and on down; the clamped SwiGLU (swiglu_limit > 0):
  // gate = min(gate, limit), up = clamp(up, ±limit), out = (up + 1) · gate · sigmoid(alpha · gate).
  bool router_bias = false;
  bool expert_bias = false;
  double swiglu_limit = 0.0;  // 0: the plain SwiGLU silu(gate) · up
  double swiglu_alpha = 1.702;

  MlaShape mla;  // multi-head latent attention, when mla.kv_lora_rank > 0
  // DeepSeek-V3's published FP8 checkpoints: 128x128-block float8_e4m3fn weights with `weight_scale_inv`.
  bool fp8_block_weights = false;

  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  DType stored_dtype = DType::BF16;  // what config.json says ("torch_dtype"/"dtype"); informational

  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;

  bool is_mla() const { return mla.kv_lora_rank > 0; }
  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t n_moe_layers() const;
  // A one-line description for logs: family, layers, d_model, experts/top-k, ...
  std::string summary() const;
  // A stable hash of everything that changes the computation (used to check that ranks agree).
  uint64_t fingerprint() const;
};

// The largest sizes moep reads from a model's config (config.json or GGUF metadata), each far above every released
// model (the largest known in parentheses). A config beyond them is refused, naming the field, before anything is
// sized by it: a config.json claiming 10 million layers or a vocabulary of 2^40 is a corrupt or hostile file, and
// products of these bounds (vocab × d_model, experts × ffn × d_model) stay far inside 64 bits.
struct ConfigLimits {
  static constexpr int64_t layers = 4096;            // (≈ 160)
  static constexpr int64_t vocab = int64_t(1) << 24;  // (≈ 262k)
  static constexpr int64_t d_model = int64_t(1) << 17;  // (≈ 18k)
  static constexpr int64_t heads = 4096;             // attention and key/value heads (≈ 128)
  static constexpr int64_t head_dim = 4096;          // (≈ 512)
  static constexpr int64_t experts = int64_t(1) << 16;  // and experts per token (≈ 512)
  static constexpr int64_t ffn = int64_t(1) << 20;   // any intermediate size (≈ 53k)
};

// Reads DIR/config.json (or a config.json path), or the metadata of a .gguf file (model_config_from_gguf). Throws moep::Error for a missing or malformed file, an
// unknown model_type, or missing / nonsensical fields (naming the field).
ModelConfig load_model_config(const std::string& dir_or_file);
// The same from parsed JSON; `source` names the file in messages.
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);
// The model_type values this build supports.
std::vector<std::string> supported_model_types();

}  // namespace moep
