#include "model/synth.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/file_read.h"
#include "core/thread_pool.h"
#include "io/safetensors_writer.h"
#include "model/arch.h"

namespace moep {

namespace fs = std::filesystem;
using nlohmann::json;

bool synth_preset(const std::string& name, SynthSpec* s) {
  SynthSpec d;  // defaults
  d.arch = s->arch;
  if (name == "dbrx") {
    *s = d;
    s->arch = "dbrx"; s->d_model = 6144; s->ffn = 10752; s->experts = 16; s->top_k = 4; s->heads = 48;
    s->kv_heads = 8; s->vocab = 100352; s->layers = 2;
  } else if (name == "mixtral-8x7b") {
    *s = d;
    s->arch = "mixtral"; s->d_model = 4096; s->ffn = 14336; s->experts = 8; s->top_k = 2; s->heads = 32;
    s->kv_heads = 8; s->vocab = 32000; s->layers = 2;
  } else if (name == "mixtral-8x22b") {
    *s = d;
    s->arch = "mixtral"; s->d_model = 6144; s->ffn = 16384; s->experts = 8; s->top_k = 2; s->heads = 48;
    s->kv_heads = 8; s->vocab = 32768; s->layers = 2;
  } else if (name == "qwen3-30b-a3b") {
    *s = d;
    s->arch = "qwen3_moe"; s->d_model = 2048; s->ffn = 768; s->experts = 128; s->top_k = 8; s->heads = 32;
    s->kv_heads = 4; s->head_dim = 128; s->vocab = 151936; s->layers = 2;
  } else if (name == "qwen1.5-moe-a2.7b") {
    *s = d;
    s->arch = "qwen2_moe"; s->d_model = 2048; s->ffn = 1408; s->experts = 60; s->top_k = 4; s->heads = 16;
    s->kv_heads = 16; s->shared_ffn = 5632; s->vocab = 151936; s->layers = 2;
  } else if (name == "olmoe-1b-7b") {
    *s = d;
    s->arch = "olmoe"; s->d_model = 2048; s->ffn = 1024; s->experts = 64; s->top_k = 8; s->heads = 16;
    s->kv_heads = 16; s->vocab = 50304; s->layers = 2;
  } else if (name == "deepseek-v3" || name == "kimi-k2") {
    *s = d;
    const bool kimi = name == "kimi-k2";
    s->arch = "deepseek_v3"; s->d_model = 7168; s->ffn = 2048; s->experts = kimi ? 384 : 256; s->top_k = 8;
    s->heads = kimi ? 64 : 128; s->kv_heads = s->heads; s->shared_experts = 1; s->vocab = kimi ? 163840 : 129280;
    s->q_lora_rank = 1536; s->kv_lora_rank = 512; s->qk_nope_head_dim = 128; s->qk_rope_head_dim = 64;
    s->v_head_dim = 128; s->groups = kimi ? 1 : 8; s->topk_groups = kimi ? 1 : 4; s->dense_layers = kimi ? 1 : 3;
    s->dense_ffn = 18432; s->layers = s->dense_layers + 1;
  } else if (name == "deepseek-v2-lite") {
    *s = d;
    s->arch = "deepseek_v2"; s->d_model = 2048; s->ffn = 1408; s->experts = 64; s->top_k = 6; s->heads = 16;
    s->kv_heads = 16; s->shared_experts = 2; s->vocab = 102400; s->q_lora_rank = 0; s->kv_lora_rank = 512;
    s->qk_nope_head_dim = 128; s->qk_rope_head_dim = 64; s->v_head_dim = 128; s->groups = 1; s->topk_groups = 1;
    s->dense_layers = 1; s->dense_ffn = 10944; s->layers = 2;
  } else if (name == "gpt-oss-120b" || name == "gpt-oss-20b") {
    *s = d;
    s->arch = "gpt_oss"; s->d_model = 2880; s->ffn = 2880; s->experts = name == "gpt-oss-120b" ? 128 : 32;
    s->top_k = 4; s->heads = 64; s->kv_heads = 8; s->head_dim = 64; s->vocab = 201088; s->layers = 2;
  } else if (name == "demo") {
    *s = d;
    s->arch = "mixtral"; s->d_model = 128; s->ffn = 256; s->experts = 8; s->top_k = 2; s->heads = 4;
    s->kv_heads = 2; s->layers = 4; s->vocab = 0;
  } else {
    return false;
  }
  return true;
}

std::string synth_preset_names() {
  return "dbrx, mixtral-8x7b, mixtral-8x22b, qwen3-30b-a3b, qwen1.5-moe-a2.7b, olmoe-1b-7b, deepseek-v3, kimi-k2, "
         "deepseek-v2-lite, gpt-oss-120b, gpt-oss-20b, demo";
}

namespace {

inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

struct TokenizerInfo {
  int64_t vocab = 0;
  int32_t eos = -1, bos = -1;
  std::string eos_text, bos_text;
};

TokenizerInfo inspect_tokenizer(const std::string& path) {
  if (!std::filesystem::exists(path)) fail("--tokenizer: cannot read ", path);
  const std::string text = read_regular_file(path, kMaxTokenizerJsonBytes, "tokenizer.json");
  check_json_depth(text, kMaxJsonDepth, path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  TokenizerInfo t;
  if (j.contains("model") && j["model"].contains("vocab") && j["model"]["vocab"].is_object())
    t.vocab = int64_t(j["model"]["vocab"].size());
  if (j.contains("added_tokens"))
    for (const auto& a : j["added_tokens"]) {
      const int64_t id = a.value("id", -1);
      const std::string c = a.value("content", "");
      t.vocab = std::max(t.vocab, id + 1);
      if (c == "<|endoftext|>" || c == "</s>" || c == "<|im_end|>") {
        if (t.eos < 0) { t.eos = int32_t(id); t.eos_text = c; }
      }
      if (c == "<s>" || c == "<|begin_of_text|>") { t.bos = int32_t(id); t.bos_text = c; }
    }
  if (t.vocab <= 0) fail(path, ": no vocabulary found (expected model.vocab)");
  return t;
}

json make_config(const SynthSpec& s, const TokenizerInfo& tok) {
  const std::string torch_dtype = s.dtype == "bf16" ? "bfloat16" : s.dtype == "f16" ? "float16" : "float32";
  json c;
  c["model_type"] = s.arch;
  c["torch_dtype"] = torch_dtype;
  c["vocab_size"] = s.vocab;
  c["tie_word_embeddings"] = false;
  c["moep_synthetic"] = true;  // ignored by transformers; tells moep to say the weights are random
  if (tok.eos >= 0) c["eos_token_id"] = tok.eos;
  if (tok.bos >= 0) c["bos_token_id"] = tok.bos;
  if (s.arch == "dbrx") {
    c["architectures"] = {"DbrxForCausalLM"};
    c["d_model"] = s.d_model;
    c["n_heads"] = s.heads;
    c["n_layers"] = s.layers;
    c["max_seq_len"] = s.max_position;
    c["attn_config"] = {{"kv_n_heads", s.kv_heads}, {"clip_qkv", 8.0}, {"rope_theta", 500000.0}};
    c["ffn_config"] = {{"ffn_hidden_size", s.ffn},
                       {"moe_num_experts", s.experts},
                       {"moe_top_k", s.top_k},
                       {"moe_normalize_expert_weights", 1.0},
                       {"ffn_act_fn", {{"name", "silu"}}}};
    return c;
  }
  c["hidden_size"] = s.d_model;
  c["num_hidden_layers"] = s.layers;
  c["num_attention_heads"] = s.heads;
  c["num_key_value_heads"] = s.kv_heads;
  c["max_position_embeddings"] = s.max_position;
  c["num_experts_per_tok"] = s.top_k;
  c["hidden_act"] = "silu";
  if (s.arch == "mixtral") {
    c["architectures"] = {"MixtralForCausalLM"};
    c["intermediate_size"] = s.ffn;
    c["num_local_experts"] = s.experts;
    c["rms_norm_eps"] = 1e-5;
    c["rope_theta"] = 1e6;
  } else if (s.arch == "qwen2_moe" || s.arch == "qwen3_moe") {
    c["architectures"] = {s.arch == "qwen2_moe" ? "Qwen2MoeForCausalLM" : "Qwen3MoeForCausalLM"};
    c["moe_intermediate_size"] = s.ffn;
    c["intermediate_size"] = 4 * s.ffn;
    c["num_experts"] = s.experts;
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = json::array();
    c["rms_norm_eps"] = 1e-6;
    c["rope_theta"] = 1e6;
    if (s.arch == "qwen2_moe") {
      c["shared_expert_intermediate_size"] = s.shared_ffn;
      c["norm_topk_prob"] = false;
    } else {
      c["head_dim"] = s.head_dim > 0 ? s.head_dim : s.d_model / std::max<int64_t>(1, s.heads);
      c["norm_topk_prob"] = true;
    }
  } else if (s.arch == "olmoe") {
    c["architectures"] = {"OlmoeForCausalLM"};
    c["intermediate_size"] = s.ffn;
    c["num_experts"] = s.experts;
    c["rms_norm_eps"] = 1e-5;
    c["rope_theta"] = 10000.0;
    c["norm_topk_prob"] = false;
  } else if (s.arch == "deepseek_v3" || s.arch == "deepseek_v2") {
    const bool v3 = s.arch == "deepseek_v3";
    c["architectures"] = {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
    c["num_key_value_heads"] = s.heads;
    c["moe_intermediate_size"] = s.ffn;
    c["intermediate_size"] = s.dense_ffn > 0 ? s.dense_ffn : 4 * s.ffn;
    c["n_routed_experts"] = s.experts;
    c["n_shared_experts"] = s.shared_experts;
    c["first_k_dense_replace"] = s.dense_layers;
    c["q_lora_rank"] = s.q_lora_rank > 0 ? json(s.q_lora_rank) : json(nullptr);
    c["kv_lora_rank"] = s.kv_lora_rank;
    c["qk_nope_head_dim"] = s.qk_nope_head_dim;
    c["qk_rope_head_dim"] = s.qk_rope_head_dim;
    c["v_head_dim"] = s.v_head_dim;
    c["n_group"] = s.groups;
    c["topk_group"] = s.topk_groups;
    c["rms_norm_eps"] = 1e-6;
    c["rope_theta"] = 10000.0;
    c["rope_scaling"] = {{"type", "yarn"}, {"factor", 40.0}, {"original_max_position_embeddings", 4096},
                         {"beta_fast", 32.0}, {"beta_slow", 1.0}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
    c["max_position_embeddings"] = std::max<int64_t>(s.max_position, 4096);
    if (v3) {
      c["norm_topk_prob"] = true;
      c["routed_scaling_factor"] = 2.5;
      c["scoring_func"] = "sigmoid";
      c["topk_method"] = "noaux_tc";
      c["rope_interleave"] = true;
    } else {
      c["norm_topk_prob"] = false;
      c["routed_scaling_factor"] = 1.0;
      c["topk_method"] = s.groups > 1 ? "group_limited_greedy" : "greedy";
    }
  } else if (s.arch == "gpt_oss") {
    // gpt-oss's config.json: alternating 128-position windows and full attention, YaRN (factor 32 over 4096).
    c["architectures"] = {"GptOssForCausalLM"};
    c["intermediate_size"] = s.ffn;
    c["num_local_experts"] = s.experts;
    c["experts_per_token"] = s.top_k;
    c["head_dim"] = s.head_dim > 0 ? s.head_dim : s.d_model / std::max<int64_t>(1, s.heads);
    c["rms_norm_eps"] = 1e-5;
    c["attention_bias"] = true;
    c["swiglu_limit"] = 7.0;
    c["sliding_window"] = 128;
    json types = json::array();
    for (int64_t i = 0; i < s.layers; ++i) types.push_back(i % 2 == 0 ? "sliding_attention" : "full_attention");
    c["layer_types"] = types;
    c["rope_theta"] = 150000.0;
    c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 32.0}, {"beta_fast", 32.0}, {"beta_slow", 1.0},
                         {"original_max_position_embeddings", 4096}, {"truncate", false}};
  } else {
    fail("--arch: '", s.arch, "' is not one of dbrx, mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3, deepseek_v2, gpt_oss");
  }
  return c;
}

// Fills n elements of a tensor: norm weights 1, biases ±0.02, matrices uniform with std 1/sqrt(fan_in).
void fill_tensor(uint8_t* out, DType dt, const std::string& name, const std::vector<int64_t>& shape, uint64_t seed,
                 ThreadPool& pool) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  const bool is_norm = shape.size() == 1 && name.find("norm") != std::string::npos;
  const double std = shape.size() == 1 ? 0.02 : 1.0 / std::sqrt(double(shape.back()));
  const float a = float(std * std::sqrt(3.0));
  const uint64_t base = hash_name(name, seed);
  const size_t es = dtype_size(dt);
  constexpr int64_t kChunk = 1 << 20;
  pool.parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c) {
    uint64_t state = base ^ (uint64_t(c) * 0xd1b54a32d192ed03ull);
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    for (int64_t i = b; i < e; ++i) {
      float v;
      if (is_norm) {
        v = 1.f;
      } else {
        const double u = double(splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
        v = float((2.0 * u - 1.0) * a);
      }
      uint8_t* p = out + size_t(i) * es;
      if (dt == DType::F32) {
        std::memcpy(p, &v, 4);
      } else {
        const uint16_t h = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(p, &h, 2);
      }
    }
  });
}

const char* kChatMl =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

}  // namespace

void write_synthetic_checkpoint(const SynthSpec& spec_in, const std::string& out_dir, int threads,
                                const std::function<void(size_t, size_t)>& progress) {
  SynthSpec s = spec_in;
  DType dt;
  if (!dtype_from_name(s.dtype, &dt)) fail("--dtype: '", s.dtype, "' is not one of bf16, f16, f32");
  TokenizerInfo tok;
  if (!s.tokenizer.empty()) tok = inspect_tokenizer(s.tokenizer);
  if (s.vocab <= 0) s.vocab = tok.vocab > 0 ? tok.vocab : 32000;
  if (tok.vocab > s.vocab)
    fail("--vocab ", s.vocab, " is smaller than the tokenizer's ", tok.vocab, " tokens");
  const json cfg_json = make_config(s, tok);
  const ModelConfig cfg = parse_model_config(cfg_json, "synth spec");  // validates the shape
  const ArchSpec* arch = find_arch(cfg.model_type);
  WeightBinder rec;
  ModelWeights unused;
  arch->bind(cfg, rec, unused);

  fs::create_directories(out_dir);
  {
    std::ofstream f(fs::path(out_dir) / "config.json");
    f << cfg_json.dump(2) << "\n";
    if (!f) fail("cannot write ", out_dir, "/config.json");
  }
  // Tensors into shards of at most shard_gb.
  const size_t es = dtype_size(dt);
  const std::string st_dtype = dt == DType::F32 ? "F32" : dt == DType::BF16 ? "BF16" : "F16";
  std::vector<std::vector<TensorToWrite>> shards(1);
  size_t shard_bytes = 0, total = 0;
  const size_t limit = size_t(std::max(0.001, s.shard_gb) * 1e9);
  ThreadPool pool(std::max(1, threads));
  size_t done = 0;
  for (const auto& r : rec.recorded()) {
    size_t n = 1;
    for (auto d : r.shape) n *= size_t(d);
    const size_t bytes = n * es;
    if (shard_bytes > 0 && shard_bytes + bytes > limit) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    const std::string name = r.name;
    const std::vector<int64_t> shape = r.shape;
    shards.back().push_back({name, st_dtype, shape, bytes, [&, name, shape, bytes](uint8_t* out) {
                               fill_tensor(out, dt, name, shape, s.seed, pool);
                               done += bytes;
                               if (progress) progress(done, total);
                             }});
    shard_bytes += bytes;
    total += bytes;
  }
  if (shards.size() == 1) {
    write_safetensors((fs::path(out_dir) / "model.safetensors").string(), shards[0]);
  } else {
    json weight_map;
    for (size_t i = 0; i < shards.size(); ++i) {
      char fn[64];
      std::snprintf(fn, sizeof fn, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors((fs::path(out_dir) / fn).string(), shards[i]);
      for (const auto& t : shards[i]) weight_map[t.name] = fn;
    }
    std::ofstream f(fs::path(out_dir) / "model.safetensors.index.json");
    f << json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) << "\n";
  }
  if (!s.tokenizer.empty()) {
    fs::copy_file(s.tokenizer, fs::path(out_dir) / "tokenizer.json", fs::copy_options::overwrite_existing);
    json tc;
    tc["chat_template"] = kChatMl;
    if (!tok.eos_text.empty()) tc["eos_token"] = tok.eos_text;
    if (!tok.bos_text.empty()) tc["bos_token"] = tok.bos_text;
    tc["add_bos_token"] = false;
    std::ofstream(fs::path(out_dir) / "tokenizer_config.json") << tc.dump(2) << "\n";
  }
  std::ofstream(fs::path(out_dir) / "README.md")
      << "# Synthetic checkpoint (random weights)\n\nWritten by `moep synth`: " << cfg.summary() << ", " << s.dtype
      << ", seed " << s.seed << ".\nThe weights are RANDOM: the model produces meaningless text. It exists to "
      << "test and benchmark moep.\n";
}

}  // namespace moep
