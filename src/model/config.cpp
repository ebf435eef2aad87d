#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/gguf.h"
#include "core/file_read.h"
#include "model/arch.h"
#include "model/gguf_config.h"
#include "model/gguf_model.h"

namespace moep {

using nlohmann::json;

// ---- ConfigReader ---------------------------------------------------------------------------------------

bool ConfigReader::has(std::string_view key) const {
  auto it = j_.find(std::string(key));
  return it != j_.end() && !it->is_null();
}

const json& ConfigReader::at(std::string_view key) const {
  auto it = j_.find(std::string(key));
  if (it == j_.end() || it->is_null()) bad(key, "is missing");
  return *it;
}

void ConfigReader::bad(std::string_view key, const std::string& why) const {
  fail(source_, ": field '", prefix_, key, "' ", why);
}

int64_t ConfigReader::get_int(std::string_view key) const {
  const json& v = at(key);
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    bad(key, "is " + v.dump() + ", beyond any size moep reads");
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    // A whole number written as a float (1e3, 64.0). Range-checked before the conversion: a double beyond int64
    // (1e300) has no int64 value, and converting it is undefined.
    const double d = v.get<double>();
    if (std::isfinite(d) && d >= -0x1p63 && d < 0x1p63 && std::trunc(d) == d) return int64_t(d);
  }
  bad(key, "must be an integer, got " + v.dump());
}

int64_t ConfigReader::get_int(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

int64_t ConfigReader::get_size(std::string_view key, int64_t max) const {
  const int64_t v = get_int(key);
  if (v > max) bad(key, str_cat("is ", v, "; moep reads at most ", max, " (a corrupt or hostile config.json?)"));
  return v;
}

int64_t ConfigReader::get_size(std::string_view key, int64_t fallback, int64_t max) const {
  return has(key) ? get_size(key, max) : fallback;
}

int64_t ConfigReader::get_size_any(std::initializer_list<std::string_view> keys, int64_t max) const {
  for (auto k : keys)
    if (has(k)) return get_size(k, max);
  return get_int_any(keys);  // none present: the error naming them all
}

int64_t ConfigReader::get_int_any(std::initializer_list<std::string_view> keys) const {
  for (auto k : keys)
    if (has(k)) return get_int(k);
  std::string names;
  for (auto k : keys) names += (names.empty() ? "" : " or ") + std::string(k);
  fail(source_, ": field '", prefix_, names, "' is missing");
}

double ConfigReader::get_double(std::string_view key, double fallback) const {
  if (!has(key)) return fallback;
  const json& v = at(key);
  if (!v.is_number()) bad(key, "must be a number, got " + v.dump());
  return v.get<double>();
}

bool ConfigReader::get_bool(std::string_view key, bool fallback) const {
  if (!has(key)) return fallback;
  const json& v = at(key);
  if (!v.is_boolean()) bad(key, "must be true or false, got " + v.dump());
  return v.get<bool>();
}

std::string ConfigReader::get_string(std::string_view key, const std::string& fallback) const {
  if (!has(key)) return fallback;
  const json& v = at(key);
  if (!v.is_string()) bad(key, "must be a string, got " + v.dump());
  return v.get<std::string>();
}

std::vector<int64_t> ConfigReader::get_int_list(std::string_view key) const {
  std::vector<int64_t> out;
  if (!has(key)) return out;
  const json& v = at(key);
  if (!v.is_array()) bad(key, "must be a list of integers, got " + v.dump());
  for (const auto& e : v) {
    if (!e.is_number_integer()) bad(key, "must be a list of integers, got " + v.dump());
    out.push_back(e.get<int64_t>());
  }
  return out;
}

ConfigReader ConfigReader::sub(std::string_view key) const {
  const json& v = at(key);
  if (!v.is_object()) bad(key, "must be an object");
  return ConfigReader(v, source_, prefix_ + std::string(key) + ".");
}

// ---- shared field readers -------------------------------------------------------------------------------

namespace {

// One rope_parameters / rope_scaling object: its theta (if any) and its scaling.
void read_rope_object(const ConfigReader& o, double& theta, RopeScaling* scaling) {
  const std::string type = o.get_string("rope_type", o.get_string("type", "default"));
  if (type != "default" && type != "yarn")
    o.bad("rope_type", "is '" + type + "'; this version supports 'default' and 'yarn' RoPE");
  if (o.has("rope_theta")) theta = o.get_double("rope_theta", theta);
  if (type != "yarn") return;
  if (!scaling) o.bad("rope_type", "is 'yarn', which this model family does not use");
  RopeScaling s;
  s.type = type;
  s.factor = o.get_double("factor", 0.0);
  s.original_max_position = o.get_size("original_max_position_embeddings", 0, int64_t(1) << 40);
  // transformers' defaults when absent (also what a GGUF states: its readers need the values).
  s.beta_fast = o.get_double("beta_fast", 32.0);
  s.beta_slow = o.get_double("beta_slow", 1.0);
  s.mscale = o.get_double("mscale", 0.0);
  s.mscale_all_dim = o.get_double("mscale_all_dim", 0.0);
  s.attention_factor = o.get_double("attention_factor", 0.0);
  s.truncate = o.get_bool("truncate", true);
  if (o.has("factor") && !(s.factor >= 1.0)) o.bad("factor", "must be at least 1 for YaRN");
  if (s.original_max_position < 0) o.bad("original_max_position_embeddings", "must be positive");
  if (s.attention_factor < 0) o.bad("attention_factor", "must be positive");
  *scaling = s;
}

}  // namespace

double read_rope(const ConfigReader& r, double fallback, RopeScaling* scaling) {
  double theta = fallback;
  if (r.has("rope_theta")) theta = r.get_double("rope_theta", fallback);
  if (r.has("rope_parameters")) read_rope_object(r.sub("rope_parameters"), theta, scaling);
  if (r.has("rope_scaling")) read_rope_object(r.sub("rope_scaling"), theta, scaling);
  if (!(theta > 0)) r.bad("rope_theta", "must be positive");
  if (scaling && scaling->type == "yarn") {
    // transformers: without a factor, the ratio of the context to the pretrained one; without the pretrained
    // context, the model's.
    const int64_t max_pos = r.get_int("max_position_embeddings", 0);
    if (scaling->original_max_position == 0) scaling->original_max_position = max_pos;
    if (scaling->original_max_position <= 0)
      r.bad("rope_parameters", "YaRN needs original_max_position_embeddings or max_position_embeddings");
    if (scaling->factor == 0.0) scaling->factor = double(max_pos) / double(scaling->original_max_position);
    if (!(scaling->factor >= 1.0)) r.bad("rope_parameters", "YaRN's factor must be at least 1");
  }
  return theta;
}

double read_rope_theta(const ConfigReader& r, double fallback) { return read_rope(r, fallback, nullptr); }

void read_common_fields(const ConfigReader& r, ModelConfig& c) {
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", c.tie_word_embeddings);
  const std::string dt = r.get_string("torch_dtype", r.get_string("dtype", "bfloat16"));
  DType d;
  if (dtype_from_name(dt, &d)) c.stored_dtype = d;
  if (r.has("eos_token_id")) {
    const json& e = r.raw()["eos_token_id"];
    if (e.is_number_integer()) {
      c.eos_token_ids.push_back(e.get<int32_t>());
    } else if (e.is_array()) {
      for (const auto& x : e)
        if (x.is_number_integer()) c.eos_token_ids.push_back(x.get<int32_t>());
    }
  }
  if (r.has("bos_token_id") && r.raw()["bos_token_id"].is_number_integer())
    c.bos_token_id = r.raw()["bos_token_id"].get<int32_t>();
  c.hidden_act = r.get_string("hidden_act", c.hidden_act);
}

void validate_config(const ModelConfig& c, const std::string& src) {
  auto pos = [&](const char* what, int64_t v) {
    if (v <= 0) fail(src, ": ", what, " must be positive, got ", v);
  };
  pos("vocab size", c.vocab_size);
  pos("hidden size", c.d_model);
  pos("number of layers", c.n_layers);
  pos("number of attention heads", c.n_heads);
  pos("number of key/value heads", c.n_kv_heads);
  pos("head dimension", c.head_dim);
  // The readers of config.json refuse these by field name; this also covers configs from GGUF metadata.
  auto at_most = [&](const char* what, int64_t v, int64_t max) {
    if (v > max) fail(src, ": ", what, " is ", v, "; moep reads at most ", max, " (a corrupt or hostile file?)");
  };
  at_most("vocab size", c.vocab_size, ConfigLimits::vocab);
  at_most("hidden size", c.d_model, ConfigLimits::d_model);
  at_most("number of layers", c.n_layers, ConfigLimits::layers);
  at_most("number of attention heads", c.n_heads, ConfigLimits::heads);
  at_most("number of key/value heads", c.n_kv_heads, ConfigLimits::heads);
  at_most("head dimension", c.head_dim, ConfigLimits::head_dim);
  at_most("number of experts", c.n_experts, ConfigLimits::experts);
  at_most("experts per token", c.top_k, ConfigLimits::experts);
  at_most("expert intermediate size", c.expert_ffn, ConfigLimits::ffn);
  at_most("dense intermediate size", c.dense_ffn, ConfigLimits::ffn);
  at_most("shared expert intermediate size", c.shared_expert_ffn, ConfigLimits::ffn);
  if (c.n_heads % c.n_kv_heads != 0)
    fail(src, ": attention heads (", c.n_heads, ") must be a multiple of key/value heads (", c.n_kv_heads, ")");
  if (c.head_dim % 2 != 0) fail(src, ": head dimension must be even for RoPE, got ", c.head_dim);
  if (c.hidden_act != "silu" && c.hidden_act != "swish")
    fail(src, ": activation '", c.hidden_act, "' is not supported (expected silu)");
  if (int64_t(c.layer_is_moe.size()) != c.n_layers) fail(src, ": internal: layer kinds not set");
  bool any_moe = false, any_dense = false;
  for (bool m : c.layer_is_moe) (m ? any_moe : any_dense) = true;
  if (any_moe) {
    pos("number of experts", c.n_experts);
    pos("experts per token", c.top_k);
    pos("expert intermediate size", c.expert_ffn);
    if (c.top_k > c.n_experts)
      fail(src, ": experts per token (", c.top_k, ") exceeds the number of experts (", c.n_experts, ")");
  }
  if (any_dense) pos("dense intermediate size", c.dense_ffn);
  if (!c.layer_window.empty() && int64_t(c.layer_window.size()) != c.n_layers)
    fail(src, ": internal: ", c.layer_window.size(), " layer windows for ", c.n_layers, " layers");
  for (int64_t w : c.layer_window)
    if (w < 0) fail(src, ": a sliding window must be positive, got ", w);
  if (!(c.norm_eps > 0)) fail(src, ": norm epsilon must be positive");
}

int64_t ModelConfig::n_moe_layers() const {
  int64_t n = 0;
  for (bool m : layer_is_moe) n += m;
  return n;
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << model_type << ": " << n_layers << " layers, d_model " << d_model << ", " << n_heads << " heads ("
     << n_kv_heads << " kv, dim " << head_dim << "), " << n_experts << " experts (top-" << top_k << ", ffn "
     << expert_ffn << ")";
  if (shared_expert_ffn) os << " + shared expert (ffn " << shared_expert_ffn << ")";
  os << ", vocab " << vocab_size;
  return os.str();
}

uint64_t ModelConfig::fingerprint() const {
  // FNV-1a over a canonical text of the fields that change the computation.
  std::ostringstream os;
  os << model_type << '|' << vocab_size << '|' << d_model << '|' << n_layers << '|' << n_heads << '|' << n_kv_heads
     << '|' << head_dim << '|' << int(norm) << '|' << norm_eps << '|' << rope_theta << '|' << clip_qkv << '|'
     << qkv_bias << o_bias << int(qk_norm) << '|' << n_experts << '|' << top_k << '|' << expert_ffn << '|'
     << int(topk_norm) << '|' << topk_pnorm << '|' << shared_expert_ffn << '|' << dense_ffn << '|'
     << tie_word_embeddings << '|' << rope_scaling.type << '|' << rope_scaling.factor << '|'
     << rope_scaling.original_max_position << '|' << rope_scaling.beta_fast << '|' << rope_scaling.beta_slow << '|'
     << rope_scaling.mscale << '|' << rope_scaling.mscale_all_dim << '|' << rope_scaling.attention_factor << '|'
     << rope_scaling.truncate << '|' << shared_expert_gated << int(router_scoring) << router_choice_bias
     << int(group_score) << '|' << n_group << '|' << topk_group << '|' << routed_scaling_factor << '|'
     << mla.q_lora_rank << '|' << mla.kv_lora_rank << '|' << mla.qk_nope_head_dim << '|' << mla.qk_rope_head_dim
     << '|' << mla.v_head_dim << '|' << mla.rope_interleave << '|' << mla.softmax_scale << '|' << fp8_block_weights << '|'
     << attention_sinks << router_bias << expert_bias << '|' << swiglu_limit << '|' << swiglu_alpha << '|';
  for (int64_t w : layer_window) os << w << ',';
  for (bool m : layer_is_moe) os << m;
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : os.str()) h = (h ^ ch) * 1099511628211ull;
  return h;
}

ModelConfig parse_model_config(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, ": expected a JSON object");
  ConfigReader r(j, source);
  if (!r.has("model_type")) r.bad("model_type", "is missing");
  const std::string mt = r.get_string("model_type", "");
  const ArchSpec* arch = find_arch(mt);
  if (!arch) {
    std::string names;
    for (const auto* a : all_archs()) names += (names.empty() ? "" : ", ") + std::string(a->model_type);
    fail(source, ": model_type '", mt, "' is not supported (supported: ", names, ")");
  }
  ModelConfig c;
  c.model_type = mt;
  arch->parse(r, c);
  validate_config(c, source);
  return c;
}

ModelConfig load_model_config(const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  if (is_gguf_path(dir_or_file)) return model_config_from_gguf(GgufFile::open(dir_or_file));
  fs::path p(dir_or_file);
  if (fs::is_directory(p)) p /= "config.json";
  if (!fs::exists(p)) fail("no config.json at ", p.string());
  const std::string text = read_regular_file(p.string(), kMaxConfigJsonBytes, "config.json");
  check_json_depth(text, kMaxJsonDepth, p.string());
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(p.string(), ": malformed JSON (", e.what(), ")");
  }
  return parse_model_config(j, p.string());
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> v;
  for (const auto* a : all_archs()) v.push_back(a->model_type);
  return v;
}

}  // namespace moep
