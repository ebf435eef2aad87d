#include "perf/model_shape.h"

#include <filesystem>
#include <sstream>

#include "core/error.h"

namespace moep::perf {

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

ModelConfig base(const char* type, int64_t d, int64_t layers, int64_t heads, int64_t kv, int64_t hd, int64_t vocab,
                 int64_t experts, int64_t top_k, int64_t ffn, int64_t max_pos) {
  ModelConfig c;
  c.model_type = type;
  c.d_model = d;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.head_dim = hd;
  c.vocab_size = vocab;
  c.n_experts = experts;
  c.top_k = top_k;
  c.expert_ffn = ffn;
  c.max_position = max_pos;
  c.layer_is_moe.assign(size_t(layers), true);
  return c;
}

// DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3): multi-head latent attention, 3 dense layers first,
// 256 routed experts (top-8) and one shared expert. moep does not run it; the shape is for planning.
ModelShape deepseek_v3() {
  ModelConfig c = base("deepseek_v3", 7168, 61, 128, 128, 128, 129280, 256, 8, 2048, 163840);
  c.shared_expert_ffn = 2048;
  c.dense_ffn = 18432;
  for (int i = 0; i < 3; ++i) c.layer_is_moe[size_t(i)] = false;
  ModelShape s = shape_from_config(c, "deepseek-v3");
  const int64_t d = 7168, H = 128, q_rank = 1536, kv_rank = 512, nope = 128, rope = 64, v = 128;
  s.attn_matrices = {d * q_rank, q_rank * H * (nope + rope),  // q_a, q_b
                     d * (kv_rank + rope),                   // kv_a (latent + shared rope key)
                     kv_rank * H * (nope + v),               // kv_b
                     H * v * d};                             // o
  s.attn_elems = 0;
  for (int64_t m : s.attn_matrices) s.attn_elems += m;
  s.norm_elems = 2 * d + q_rank + kv_rank;
  s.kv_elems_per_pos = kv_rank + rope;                    // the compressed latent cache
  s.attn_macs_per_pos = H * ((kv_rank + rope) + kv_rank); // absorbed MLA: scores over 576, values over 512
  s.attn_split_exchanges = 0;                             // moep does not divide MLA over ranks
  s.shared_elems = 3 * d * 2048;                          // no sigmoid gate in DeepSeek-V3
  s.router_elems = 256 * d + 256;                         // + the routing bias
  s.approximations =
      "multi-head latent attention counted as its five projections with the absorbed-attention KV cache "
      "(576 values per position per layer); group-limited sigmoid routing treated as plain top-8; the "
      "multi-token-prediction module is left out";
  return s;
}

}  // namespace

WeightType weight_type(const std::string& name) {
  if (name == "bf16" || name == "bfloat16") return {"bf16", 2.0};
  if (name == "f16" || name == "float16" || name == "fp16") return {"f16", 2.0};
  if (name == "f32" || name == "float32" || name == "fp32") return {"f32", 4.0};
  if (name == "q8_0") return {"q8_0", 34.0 / 32.0};
  if (name == "q4_0") return {"q4_0", 18.0 / 32.0};
  if (name == "mxfp4") return {"mxfp4", 17.0 / 32.0};
  fail("weight dtype '", name, "' is not known (known: ", join(weight_type_names()), ")");
}

std::vector<std::string> weight_type_names() { return {"bf16", "f16", "f32", "q8_0", "q4_0", "mxfp4"}; }

int64_t ModelShape::n_moe_layers() const {
  int64_t n = 0;
  for (bool m : layer_is_moe) n += m;
  return n;
}

int64_t ModelShape::replicated_elems() const {
  int64_t e = embed_elems + (tied_embeddings ? 0 : head_elems) + 2 * d_model;  // + final norm
  e += n_layers * (attn_elems + norm_elems);
  e += n_moe_layers() * (router_elems + shared_elems);
  e += n_dense_layers() * dense_elems;
  return e;
}

std::string ModelShape::summary() const {
  std::ostringstream os;
  os.precision(3);
  os << name << " (" << model_type << "): " << n_layers << " layers (" << n_moe_layers() << " MoE), d_model "
     << d_model << ", " << n_experts << " experts top-" << top_k << " ffn " << expert_ffn << ", "
     << double(total_elems()) * 1e-9 << "B parameters (" << double(replicated_elems()) * 1e-9 << "B not experts)";
  return os.str();
}

ModelShape shape_from_config(const ModelConfig& c, const std::string& name) {
  ModelShape s;
  s.name = name;
  s.model_type = c.model_type;
  s.stored_dtype = dtype_name(c.stored_dtype);
  s.n_layers = c.n_layers;
  s.d_model = c.d_model;
  s.vocab = c.vocab_size;
  s.n_heads = c.n_heads;
  s.n_kv_heads = c.n_kv_heads;
  s.head_dim = c.head_dim;
  s.max_context = c.max_position;
  const int64_t d = c.d_model, qd = c.q_dim(), kvd = c.kv_dim();
  s.attn_matrices = {qd * d, kvd * d, kvd * d, d * qd};  // q, k, v, o
  s.attn_elems = d * qd + 2 * d * kvd + qd * d;
  s.norm_elems = 2 * d * (c.norm_has_bias ? 2 : 1);
  if (c.qkv_bias) s.norm_elems += qd + 2 * kvd;
  if (c.o_bias) s.norm_elems += d;
  if (c.qk_norm == QKNorm::PerHead) s.norm_elems += 2 * c.head_dim;
  if (c.qk_norm == QKNorm::Full) s.norm_elems += qd + kvd;
  s.attn_split_exchanges = c.qk_norm == QKNorm::Full ? 2 : 1;
  s.kv_elems_per_pos = 2 * kvd;
  s.attn_macs_per_pos = c.n_heads * 2 * c.head_dim;
  if (c.is_mla()) {
    // Multi-head latent attention as moep runs it: its projections (kv_b read twice per step, as W_UK and W_UV),
    // the latent cache, and absorbed attention (scores over latent + rope key, values over the latent).
    const MlaShape& m = c.mla;
    const int64_t H = c.n_heads, qk = m.qk_head_dim(), lora = m.kv_lora_rank, rot = m.qk_rope_head_dim;
    s.attn_matrices.clear();
    if (m.q_lora_rank > 0)
      s.attn_matrices = {d * m.q_lora_rank, m.q_lora_rank * H * qk};
    else
      s.attn_matrices = {d * H * qk};
    s.attn_matrices.push_back(d * (lora + rot));
    s.attn_matrices.push_back(lora * H * (m.qk_nope_head_dim + m.v_head_dim));
    s.attn_matrices.push_back(H * m.v_head_dim * d);
    s.attn_elems = 0;
    for (int64_t x : s.attn_matrices) s.attn_elems += x;
    s.norm_elems = 2 * d + m.q_lora_rank + lora;
    s.kv_elems_per_pos = lora + rot;
    s.attn_macs_per_pos = H * ((lora + rot) + lora);
    s.attn_split_exchanges = 0;
  }
  s.n_experts = c.n_experts;
  s.top_k = c.top_k;
  s.expert_ffn = c.expert_ffn;
  s.expert_elems = 3 * d * c.expert_ffn;
  s.expert_down_in_out = c.model_type == "dbrx";
  s.router_elems = c.n_experts * d;
  s.shared_elems = c.shared_expert_ffn > 0 ? 3 * d * c.shared_expert_ffn + (c.shared_expert_gated ? d : 0) : 0;
  if (c.router_choice_bias) s.router_elems += c.n_experts;
  s.dense_elems = 3 * d * c.dense_ffn;
  s.layer_is_moe = c.layer_is_moe;
  s.layer_window = c.layer_window;
  // gpt-oss: a sink logit per head, biases on the router and on each expert's gate/up and down.
  if (c.attention_sinks) s.norm_elems += c.n_heads;
  if (c.router_bias) s.router_elems += c.n_experts;
  if (c.expert_bias) s.expert_elems += 2 * c.expert_ffn + d;
  s.embed_elems = c.vocab_size * d;
  s.head_elems = c.vocab_size * d;
  s.tied_embeddings = c.tie_word_embeddings;
  return s;
}

std::vector<std::string> builtin_model_names() {
  return {"dbrx",          "mixtral-8x7b",      "mixtral-8x22b", "qwen3-235b-a22b",
          "qwen3-30b-a3b", "qwen1.5-moe-a2.7b", "olmoe-1b-7b",   "deepseek-v3",
          "gpt-oss-120b",  "gpt-oss-20b"};
}

ModelShape resolve_model(const std::string& spec) {
  if (spec.empty()) fail("--model: expected a built-in name or a model directory / config.json");
  if (spec == "dbrx") {
    ModelConfig c = base("dbrx", 6144, 40, 48, 8, 128, 100352, 16, 4, 10752, 32768);
    c.norm = NormKind::LayerNorm;
    return shape_from_config(c, spec);
  }
  if (spec == "mixtral-8x7b") return shape_from_config(base("mixtral", 4096, 32, 32, 8, 128, 32000, 8, 2, 14336, 32768), spec);
  if (spec == "mixtral-8x22b") {
    ModelShape s = shape_from_config(base("mixtral", 6144, 56, 48, 8, 128, 32768, 8, 2, 16384, 65536), spec);
    s.approximations = "vocabulary of v0.3 / Instruct-v0.1 (32768; the v0.1 base model has 32000)";
    return s;
  }
  if (spec == "qwen3-235b-a22b" || spec == "qwen3-30b-a3b") {
    const bool big = spec == "qwen3-235b-a22b";
    ModelConfig c = big ? base("qwen3_moe", 4096, 94, 64, 4, 128, 151936, 128, 8, 1536, 40960)
                        : base("qwen3_moe", 2048, 48, 32, 4, 128, 151936, 128, 8, 768, 40960);
    c.qk_norm = QKNorm::PerHead;
    return shape_from_config(c, spec);
  }
  if (spec == "qwen1.5-moe-a2.7b") {
    ModelConfig c = base("qwen2_moe", 2048, 24, 16, 16, 128, 151936, 60, 4, 1408, 8192);
    c.shared_expert_ffn = 5632;
    c.qkv_bias = true;
    return shape_from_config(c, spec);
  }
  if (spec == "olmoe-1b-7b") {
    ModelConfig c = base("olmoe", 2048, 16, 16, 16, 128, 50304, 64, 8, 1024, 4096);
    c.qk_norm = QKNorm::Full;
    return shape_from_config(c, spec);
  }
  if (spec == "gpt-oss-120b" || spec == "gpt-oss-20b") {
    // openai/gpt-oss-*: 64 query heads of 64 over 8 KV heads, alternating 128-position windows and full attention,
    // sinks, biases, YaRN; experts of ffn 2880, top-4.
    const bool big = spec == "gpt-oss-120b";
    ModelConfig c = base("gpt_oss", 2880, big ? 36 : 24, 64, 8, 64, 201088, big ? 128 : 32, 4, 2880, 131072);
    c.qkv_bias = c.o_bias = c.attention_sinks = c.router_bias = c.expert_bias = true;
    c.swiglu_limit = 7.0;
    c.layer_window.assign(size_t(c.n_layers), 0);
    for (int64_t l = 0; l < c.n_layers; l += 2) c.layer_window[size_t(l)] = 128;
    ModelShape s = shape_from_config(c, spec);
    s.approximations =
        "every weight counted at one dtype (bf16 unless asked); moep holds the published checkpoint's experts in "
        "MXFP4 (17 bytes per 32 weights) and the rest in bf16: --dtype mxfp4 counts the experts right and "
        "attention and the head at MXFP4 too";
    return s;
  }
  if (spec == "deepseek-v3") return deepseek_v3();
  namespace fs = std::filesystem;
  const fs::path p(spec);
  if (fs::exists(p) && (fs::is_directory(p) || p.extension() == ".json")) {
    ModelConfig c = load_model_config(spec);
    return shape_from_config(c, spec);
  }
  fail("--model: '", spec, "' is neither a built-in model (", join(builtin_model_names()),
       ") nor a model directory or config.json");
}

}  // namespace moep::perf
