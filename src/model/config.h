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
  int64_t dense_ffn = 0;          // intermediate size of dense (non-MoE) MLP layers, where there are any
  std::vector<bool> layer_is_moe;  // [n_layers]
  // gpt-oss experts: biases on the router, on gate/up and on down; the clamped SwiGLU (swiglu_limit > 0):
  // gate = min(gate, limit), up = clamp(up, ±limit), out = (up + 1) · gate · sigmoid(alpha · gate).
  bool router_bias = false;
  bool expert_bias = false;
  double swiglu_limit = 0.0;  // 0: the plain SwiGLU silu(gate) · up
  double swiglu_alpha = 1.702;

  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  DType stored_dtype = DType::BF16;  // what config.json says ("torch_dtype"/"dtype"); informational

  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;

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
