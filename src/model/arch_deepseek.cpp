// DeepSeek-V2 (V2-Lite) and DeepSeek-V3 (R1, V3.1, Kimi K2): multi-head latent attention (ModelConfig::mla), the
// first first_k_dense_replace layers dense, the others MoE with ungated shared experts (mlp.shared_experts).
//  - V3 routing: sigmoid scores; e_score_correction_bias added for choosing; groups scored by the sum of their two
//    best; top-k among the topk_group best groups; weights are the unbiased scores, normalized when
//    norm_topk_prob, times routed_scaling_factor. Score scale qk_head_dim^-0.5 · yarn_mscale(factor,
//    mscale_all_dim)².
//  - V2 routing: softmax; "greedy" top-k or "group_limited_greedy" (groups scored by their best); times
//    routed_scaling_factor. The same score scale as V3 (transformers 5.17 applies the mscale² to both: the
//    deepseek_v2_f32 fixture, mscale_all_dim 0.707, matches only with it).
// Published FP8 checkpoints (quantization_config.quant_method "fp8") are dequantized at load by the binder.
#include <cmath>

#include "core/error.h"
#include "model/arch.h"
#include "model/rope.h"

namespace moep {

namespace {

void parse_deepseek_common(const ConfigReader& r, ModelConfig& c, bool v3) {
  read_common_fields(r, c);
  c.d_model = r.get_size("hidden_size", ConfigLimits::d_model);
  c.n_layers = r.get_size("num_hidden_layers", ConfigLimits::layers);
  c.n_heads = r.get_size("num_attention_heads", ConfigLimits::heads);
  c.vocab_size = r.get_size("vocab_size", ConfigLimits::vocab);
  c.max_position = r.get_int("max_position_embeddings", 4096);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = float(r.get_double("rms_norm_eps", 1e-6));
  c.rope_theta = read_rope(r, 10000.0, &c.rope_scaling);
  if (r.get_bool("attention_bias", false)) r.bad("attention_bias", "is true; moep supports DeepSeek without it");

  MlaShape& m = c.mla;
  m.q_lora_rank = r.get_size("q_lora_rank", 0, ConfigLimits::d_model);
  m.kv_lora_rank = r.get_size("kv_lora_rank", ConfigLimits::d_model);
  m.qk_nope_head_dim = r.get_size("qk_nope_head_dim", ConfigLimits::head_dim);
  m.qk_rope_head_dim = r.get_size("qk_rope_head_dim", ConfigLimits::head_dim);
  m.v_head_dim = r.get_size("v_head_dim", ConfigLimits::head_dim);
  if (m.kv_lora_rank <= 0) r.bad("kv_lora_rank", "must be positive");
  if (m.qk_nope_head_dim <= 0) r.bad("qk_nope_head_dim", "must be positive");
  if (m.v_head_dim <= 0) r.bad("v_head_dim", "must be positive");
  if (m.qk_rope_head_dim <= 0 || m.qk_rope_head_dim % 2 != 0)
    r.bad("qk_rope_head_dim", "must be positive and even");
  if (m.q_lora_rank < 0) r.bad("q_lora_rank", "must be positive or null");
  // V2 always rotates adjacent pairs (complex rotation); V3 when rope_interleave (its default), else halves.
  m.rope_interleave = v3 ? r.get_bool("rope_interleave", true) : true;
  m.softmax_scale = 1.0 / std::sqrt(double(m.qk_head_dim()));
  if (c.rope_scaling.type == "yarn" && c.rope_scaling.mscale_all_dim != 0.0) {
    const double ms = yarn_mscale(c.rope_scaling.factor, c.rope_scaling.mscale_all_dim);
    m.softmax_scale *= ms * ms;
  }
  // The rest of moep sees MLA as n_heads heads of qk_head_dim (KV cache and attention are MLA's own).
  c.n_kv_heads = c.n_heads;
  c.head_dim = m.qk_head_dim();

  c.n_experts = r.get_size("n_routed_experts", 0, ConfigLimits::experts);
  c.top_k = r.get_size("num_experts_per_tok", 0, ConfigLimits::experts);
  c.expert_ffn = r.get_size("moe_intermediate_size", 0, ConfigLimits::ffn);
  const int64_t first_dense = r.get_int("first_k_dense_replace", 0);
  const int64_t freq = r.get_int("moe_layer_freq", 1);
  if (first_dense < 0) r.bad("first_k_dense_replace", "must not be negative");
  if (freq <= 0) r.bad("moe_layer_freq", "must be positive");
  c.layer_is_moe.resize(size_t(c.n_layers));
  bool any_dense = false;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    c.layer_is_moe[size_t(i)] = c.n_experts > 0 && i >= first_dense && i % freq == 0;
    any_dense |= !c.layer_is_moe[size_t(i)];
  }
  if (any_dense) c.dense_ffn = r.get_size("intermediate_size", ConfigLimits::ffn);
  const int64_t n_shared = r.get_size("n_shared_experts", 0, ConfigLimits::experts);
  c.shared_expert_ffn = n_shared * c.expert_ffn;
  c.shared_expert_gated = false;
  c.routed_scaling_factor = r.get_double("routed_scaling_factor", 1.0);
  c.n_group = r.get_size("n_group", 1, ConfigLimits::experts);
  c.topk_group = r.get_size("topk_group", 1, ConfigLimits::experts);
  c.topk_norm = r.get_bool("norm_topk_prob", false) ? TopKNorm::Sum : TopKNorm::None;
  if (c.n_experts > 0) {
    if (c.n_group <= 0 || c.n_experts % c.n_group != 0)
      r.bad("n_group", "must divide n_routed_experts (" + std::to_string(c.n_experts) + ")");
    if (c.topk_group <= 0 || c.topk_group > c.n_group) r.bad("topk_group", "must be in [1, n_group]");
  }

  if (r.has("quantization_config")) {
    const ConfigReader q = r.sub("quantization_config");
    const std::string method = q.get_string("quant_method", "");
    if (method != "fp8") q.bad("quant_method", "is '" + method + "'; moep reads DeepSeek's block FP8 ('fp8')");
    const std::string fmt = q.get_string("fmt", "e4m3");
    if (fmt != "e4m3") q.bad("fmt", "is '" + fmt + "'; moep reads float8 e4m3");
    const auto block = q.get_int_list("weight_block_size");
    if (block != std::vector<int64_t>{128, 128}) q.bad("weight_block_size", "must be [128, 128]");
    c.fp8_block_weights = true;
  }
}

void parse_deepseek_v3(const ConfigReader& r, ModelConfig& c) {
  parse_deepseek_common(r, c, true);
  const std::string scoring = r.get_string("scoring_func", "sigmoid");
  if (scoring != "sigmoid") r.bad("scoring_func", "is '" + scoring + "'; DeepSeek-V3 routes with 'sigmoid'");
  const std::string method = r.get_string("topk_method", "noaux_tc");
  if (method != "noaux_tc") r.bad("topk_method", "is '" + method + "'; DeepSeek-V3 routes with 'noaux_tc'");
  c.router_scoring = RouterScoring::Sigmoid;
  c.router_choice_bias = true;
  c.group_score = GroupScore::Top2Sum;
  if (c.n_experts > 0 && c.n_experts / c.n_group < 2) r.bad("n_group", "leaves fewer than 2 experts per group");
}

void parse_deepseek_v2(const ConfigReader& r, ModelConfig& c) {
  parse_deepseek_common(r, c, false);
  const std::string scoring = r.get_string("scoring_func", "softmax");
  if (scoring != "softmax") r.bad("scoring_func", "is '" + scoring + "'; DeepSeek-V2 routes with 'softmax'");
  const std::string method = r.get_string("topk_method", "greedy");
  c.router_scoring = RouterScoring::Softmax;
  if (method == "greedy")
    c.group_score = GroupScore::None;
  else if (method == "group_limited_greedy")
    c.group_score = GroupScore::Max;
  else
    r.bad("topk_method", "is '" + method + "'; expected 'greedy' or 'group_limited_greedy'");
}

MlpWeights bind_mlp_slice(WeightBinder& b, const std::string& p, int64_t d, int64_t f, FfnSlice sl) {
  MlpWeights m;
  m.gate = b.matrix_rows(p + "gate_proj.weight", f, d, sl.first, sl.count);
  m.up = b.matrix_rows(p + "up_proj.weight", f, d, sl.first, sl.count);
  m.down = b.matrix_cols(p + "down_proj.weight", d, f, sl.first, sl.count);
  return m;
}

void bind_deepseek(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  if (b.share().dense().attention)
    fail(c.model_type, ": split attention (--attention split) is not supported with multi-head latent attention; ",
         "every rank keeps the whole attention and its latent cache (use --attention replicated)");
  const MlaShape& m = c.mla;
  const int64_t d = c.d_model, H = c.n_heads;
  bind_llama_outer(c, b, w);
  w.layers.resize(size_t(c.n_layers));
  const char* names[3] = {"gate_proj", "up_proj", "down_proj"};
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const std::string a = p + "self_attn.";
    L.attn_norm_w = b.vector(p + "input_layernorm.weight", d);
    L.ffn_norm_w = b.vector(p + "post_attention_layernorm.weight", d);
    if (m.q_lora_rank > 0) {
      L.q_a = b.matrix(a + "q_a_proj.weight", m.q_lora_rank, d);
      L.q_a_norm = b.vector(a + "q_a_layernorm.weight", m.q_lora_rank);
      L.q_b = b.matrix(a + "q_b_proj.weight", H * m.qk_head_dim(), m.q_lora_rank);
    } else {
      L.wq = b.matrix(a + "q_proj.weight", H * m.qk_head_dim(), d);
    }
    L.kv_a = b.matrix(a + "kv_a_proj_with_mqa.weight", m.kv_lora_rank + m.qk_rope_head_dim, d);
    L.kv_a_norm = b.vector(a + "kv_a_layernorm.weight", m.kv_lora_rank);
    L.kv_b = b.matrix(a + "kv_b_proj.weight", H * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank);
    L.wo = b.matrix(a + "o_proj.weight", d, H * m.v_head_dim);
    L.is_moe = c.layer_is_moe[size_t(i)];
    if (!L.is_moe) {
      L.dense = bind_mlp_slice(b, p + "mlp.", d, c.dense_ffn, {0, c.dense_ffn});
      continue;
    }
    L.router = b.matrix(p + "mlp.gate.weight", c.n_experts, d);
    if (c.router_choice_bias) L.router_choice_bias = b.vector(p + "mlp.gate.e_score_correction_bias", c.n_experts);
    bind_expert_list(c, b, i, p + "mlp.experts.", names, L);
    if (c.shared_expert_ffn > 0)
      L.shared_expert = bind_mlp_slice(b, p + "mlp.shared_experts.", d, c.shared_expert_ffn,
                                       b.share().ffn_slice(c.shared_expert_ffn));
  }
}

}  // namespace

const ArchSpec kDeepseekV3Arch{"deepseek_v3", parse_deepseek_v3, bind_deepseek};
const ArchSpec kDeepseekV2Arch{"deepseek_v2", parse_deepseek_v2, bind_deepseek};

}  // namespace moep
