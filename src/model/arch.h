// One architecture file per model family (arch_dbrx.cpp, arch_mixtral.cpp, ...), registered in
// arch_registry.cpp. Each knows its config.json spelling and its checkpoint tensor names.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace moep {

// Typed access to config.json fields with errors that name the file and the field.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& j, std::string source, std::string prefix = "")
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

  bool has(std::string_view key) const;  // present and not null
  int64_t get_int(std::string_view key) const;
  int64_t get_int(std::string_view key, int64_t fallback) const;
  // A size or count: an integer of at most `max` (ConfigLimits), refused naming the field above it. Zero and negative
  // values pass, for validate_config to name what must be positive.
  int64_t get_size(std::string_view key, int64_t max) const;
  int64_t get_size(std::string_view key, int64_t fallback, int64_t max) const;
  // The first present key of several spellings.
  int64_t get_int_any(std::initializer_list<std::string_view> keys) const;
  int64_t get_size_any(std::initializer_list<std::string_view> keys, int64_t max) const;
  double get_double(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::string get_string(std::string_view key, const std::string& fallback) const;
  std::vector<int64_t> get_int_list(std::string_view key) const;  // [] when absent
  ConfigReader sub(std::string_view key) const;                    // a nested object (required)
  const nlohmann::json& raw() const { return j_; }
  const std::string& source() const { return source_; }
  [[noreturn]] void bad(std::string_view key, const std::string& why) const;

 private:
  const nlohmann::json& at(std::string_view key) const;
  const nlohmann::json& j_;
  std::string source_;
  std::string prefix_;
};

// The rope theta of a config: rope_parameters.rope_theta (newer spelling) or rope_theta (classic), else
// `fallback`. Refuses rope scaling types other than "default" by name.
double read_rope_theta(const ConfigReader& r, double fallback);
// The same, also reading YaRN scaling into *scaling (for the families that use it); other types are refused by
// name. A YaRN factor left out is max_position_embeddings / original_max_position_embeddings, as in transformers.
double read_rope(const ConfigReader& r, double fallback, RopeScaling* scaling);
// Reads the fields most families share (eos/bos ids, tie_word_embeddings, dtype) into c.
void read_common_fields(const ConfigReader& r, ModelConfig& c);
// Checks the derived shape for consistency (positive sizes, heads divide, top_k <= n_experts ...).
void validate_config(const ModelConfig& c, const std::string& source);

struct ArchSpec {
  const char* model_type;
  void (*parse)(const ConfigReader& r, ModelConfig& c);
  // Binds every tensor of the checkpoint into w through the binder: of the experts, those b.share() holds, each
  // its slice.
  void (*bind)(const ModelConfig& c, WeightBinder& b, ModelWeights& w);
};

const ArchSpec* find_arch(std::string_view model_type);
const std::vector<const ArchSpec*>& all_archs();

// Architecture specs (defined in arch_*.cpp).
extern const ArchSpec kDbrxArch;
extern const ArchSpec kMixtralArch;
extern const ArchSpec kQwen2MoeArch;
extern const ArchSpec kQwen3MoeArch;
extern const ArchSpec kOlmoeArch;
extern const ArchSpec kDeepseekV3Arch;
extern const ArchSpec kDeepseekV2Arch;
extern const ArchSpec kGptOssArch;

// A Llama-style family (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE): RMSNorm, GQA attention with RoPE, tensors under
// model.layers.N., a router and a list of experts per MoE layer. What such a family spells or defaults
// differently; read_llama_family and bind_llama_family do the rest the same way for all.
struct LlamaFamily {
  // config.json
  const char* expert_count_keys[2];  // spellings of the expert count, the first present wins
  const char* expert_ffn_key;        // the experts' intermediate size
  bool head_dim_key;                 // reads head_dim (default d_model / n_heads); false: always d_model / n_heads
  int64_t default_max_position;
  double default_norm_eps;
  double default_rope_theta;
  // Tensor names within model.layers.N.
  const char* moe_block;          // router at moe_block + "gate.weight", experts at moe_block + "experts.E."
  const char* expert_names[3];    // an expert's gate, up and down projections
  const char* dense_mlp;          // dense (non-MoE) layers' MLP ({gate,up,down}_proj); nullptr: the family has none
  const char* shared_expert;      // shared expert at shared_expert + ".{gate,up,down}_proj", its gate at
                                  // shared_expert + "_gate.weight"; nullptr: the family has none
};

// Reads the fields every Llama-style family has (read_common_fields, sizes, heads, RMSNorm eps, rope theta,
// experts, top_k) into c, with f's spellings and defaults, and marks every layer MoE.
void read_llama_family(const ConfigReader& r, const LlamaFamily& f, ModelConfig& c);
// Binds every tensor of a Llama-style checkpoint into w (of the experts, those b.share() holds, each its slice):
// outer tensors, then per layer the norms, attention, and the MoE block (c.layer_is_moe) or the dense MLP, and
// the shared expert where c.shared_expert_ffn > 0. A dense layer or a shared expert in a family without one breaks an invariant.
void bind_llama_family(const LlamaFamily& f, const ModelConfig& c, WeightBinder& b, ModelWeights& w);

// Binding helpers shared by the Llama-style families (model.layers.N.*).
// Binds q/k/v/o projections named prefix + "q_proj" etc. (biases optional as the config says).
void bind_llama_attention(const ModelConfig& c, WeightBinder& b, const std::string& prefix, LayerWeights& L);
// Binds per-expert gate/up/down named prefix + "E." + names[0..2] + ".weight".
void bind_expert_list(const ModelConfig& c, WeightBinder& b, int64_t layer,
                      const std::string& prefix, const char* const names[3], LayerWeights& L);
// Embedding, final norm and lm_head with the usual names (model.embed_tokens, model.norm, lm_head).
void bind_llama_outer(const ModelConfig& c, WeightBinder& b, ModelWeights& w);

}  // namespace moep
