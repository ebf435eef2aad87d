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
  // The first present key of several spellings.
  int64_t get_int_any(std::initializer_list<std::string_view> keys) const;
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
// `fallback`. Refuses rope scaling types other than "default" (not supported yet) by name.
double read_rope_theta(const ConfigReader& r, double fallback);
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

// Binding helpers shared by the Llama-style families (model.layers.N.*).
// Binds q/k/v/o projections named prefix + "q_proj" etc. (biases optional as the config says).
void bind_llama_attention(const ModelConfig& c, WeightBinder& b, const std::string& prefix, LayerWeights& L);
// Binds per-expert gate/up/down named prefix + "E." + names[0..2] + ".weight".
void bind_expert_list(const ModelConfig& c, WeightBinder& b, int64_t layer,
                      const std::string& prefix, const char* const names[3], LayerWeights& L);
// Embedding, final norm and lm_head with the usual names (model.embed_tokens, model.norm, lm_head).
void bind_llama_outer(const ModelConfig& c, WeightBinder& b, ModelWeights& w);

}  // namespace moep
