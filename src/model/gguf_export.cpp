#include "model/gguf_export.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "model/gguf_model.h"
#include "model/model.h"

namespace moep {

namespace {

struct FileTypeName {
  GgufFileType type;
  const char* name;
  GgmlType base;  // llama_ftype_get_default_type
};
constexpr FileTypeName kFileTypes[] = {
    {GgufFileType::F32, "f32", GgmlType::F32},       {GgufFileType::F16, "f16", GgmlType::F16},
    {GgufFileType::BF16, "bf16", GgmlType::BF16},    {GgufFileType::Q8_0, "q8_0", GgmlType::Q8_0},
    {GgufFileType::Q4_0, "q4_0", GgmlType::Q4_0},    {GgufFileType::Q4_K_M, "q4_k_m", GgmlType::Q4_K},
    {GgufFileType::Q5_K_M, "q5_k_m", GgmlType::Q5_K}, {GgufFileType::Q6_K, "q6_k", GgmlType::Q6_K},
    {GgufFileType::MXFP4_MOE, "mxfp4", GgmlType::MXFP4},
};

const FileTypeName& file_type(GgufFileType t) {
  for (const auto& f : kFileTypes)
    if (f.type == t) return f;
  MOEP_ASSERT(false, "file type ", uint32_t(t));
  return kFileTypes[0];
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

bool is_block_quantized(GgmlType t) { return ggml_type_traits(t).block_weights > 1; }

// llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// Row r of m as n = m.cols floats.
void row_f32(const MatRef& m, int64_t r, float* out) {
  const uint8_t* p = m.row_ptr(r);
  if (dtype_is_quantized(m.dtype)) {
    dequantize_row(ggml_type_of(m.dtype), p, out, m.cols);
    return;
  }
  const VecRef v{p, m.dtype, m.cols};
  for (int64_t i = 0; i < m.cols; ++i) out[i] = v.at(i);
}

// One tensor of the file: its ggml dims (dims[0] the row length) and its rows as f32, `chunk` rows per call of
// fill(row0, n, out) (out: n × dims[0] floats; row0 a multiple of chunk).
struct Source {
  std::string name;
  std::vector<int64_t> dims;
  int64_t chunk = 64;
  std::function<void(int64_t, int64_t, float*)> fill;
  int64_t rows() const {
    int64_t r = 1;
    for (size_t i = 1; i < dims.size(); ++i) r *= dims[i];
    return r;
  }
};

// Rows given one at a time by row(r, out).
Source by_rows(std::string name, std::vector<int64_t> dims, std::function<void(int64_t, float*)> row) {
  const int64_t cols = dims[0];
  return Source{std::move(name), std::move(dims), 64, [row, cols](int64_t r0, int64_t n, float* out) {
                  for (int64_t r = 0; r < n; ++r) row(r0 + r, out + r * cols);
                }};
}

Source matrix_source(std::string name, const MatRef& m) {
  return by_rows(std::move(name), {m.cols, m.rows}, [m](int64_t r, float* out) { row_f32(m, r, out); });
}

Source vector_source(std::string name, const VecRef& v, std::vector<int64_t> dims) {
  return by_rows(std::move(name), std::move(dims), [v](int64_t, float* out) {
    for (int64_t i = 0; i < v.size; ++i) out[i] = v.at(i);
  });
}

// Experts stacked [n_experts, rows, cols] (ggml {cols, rows, n_experts}) from each expert's [rows, cols] matrix
// pick(e), or from its [cols, rows] matrix transposed (DBRX's w2), one expert's slab per call.
Source stacked_source(std::string name, const LayerWeights& L, int64_t rows, int64_t cols,
                      std::function<const MatRef&(const ExpertWeights&)> pick, bool transposed) {
  const auto* experts = &L.experts;
  const int64_t E = int64_t(L.experts.size());
  if (!transposed)
    return by_rows(std::move(name), {cols, rows, E}, [experts, pick, rows](int64_t r, float* out) {
      row_f32(pick((*experts)[size_t(r / rows)]), r % rows, out);
    });
  return Source{std::move(name), {cols, rows, E}, rows, [experts, pick, rows, cols](int64_t r0, int64_t n, float* out) {
                  MOEP_ASSERT(r0 % rows == 0 && n == rows);
                  const MatRef& m = pick((*experts)[size_t(r0 / rows)]);  // [cols, rows]
                  std::vector<float> in(static_cast<size_t>(rows));
                  for (int64_t k = 0; k < cols; ++k) {
                    row_f32(m, k, in.data());
                    for (int64_t j = 0; j < rows; ++j) out[j * cols + k] = in[size_t(j)];
                  }
                }};
}

// The checkpoint row that llama.cpp stores at row s of a llama-arch q or k (inverse of llama_rope_stored_row).
int64_t llama_rope_source_row(int64_t s, int64_t head_dim) {
  const int64_t h = s / head_dim, j = s % head_dim;
  return h * head_dim + (j % 2) * (head_dim / 2) + j / 2;
}

// The experts of an MoE layer as llama.cpp stacks them, and its shared expert (p: "blk.<i>.").
void moe_sources(const ModelConfig& c, const LayerWeights& L, const std::string& p, std::vector<Source>& s) {
  const int64_t d = c.d_model, f = c.expert_ffn;
  s.push_back(matrix_source(p + "ffn_gate_inp.weight", L.router));
  s.push_back(stacked_source(p + "ffn_gate_exps.weight", L, f, d, [](const ExpertWeights& x) -> const MatRef& { return x.gate; }, false));
  s.push_back(stacked_source(p + "ffn_up_exps.weight", L, f, d, [](const ExpertWeights& x) -> const MatRef& { return x.up; }, false));
  const bool in_out = !L.experts.empty() && L.experts[0].down_in_out;
  s.push_back(stacked_source(p + "ffn_down_exps.weight", L, d, f, [](const ExpertWeights& x) -> const MatRef& { return x.down; }, in_out));
  if (!L.shared_expert.empty()) {
    s.push_back(matrix_source(p + "ffn_gate_shexp.weight", L.shared_expert.gate));
    s.push_back(matrix_source(p + "ffn_up_shexp.weight", L.shared_expert.up));
    s.push_back(matrix_source(p + "ffn_down_shexp.weight", L.shared_expert.down));
    // [1, d_model] in the checkpoint: llama.cpp's converter writes torch's shape, ggml {d_model, 1}.
    if (!L.shared_expert_gate.empty())
      s.push_back(matrix_source(p + "ffn_gate_inp_shexp.weight", L.shared_expert_gate));
  }
}

// DeepSeek's latent attention under llama.cpp's deepseek2 names (conversion/deepseek.py): kv_b_proj split into
// attn_k_b (per head, transposed: ggml {nope, kv_lora, heads}) and attn_v_b (ggml {kv_lora, v, heads}).
std::vector<Source> mla_sources(const ModelConfig& c, const ModelWeights& w) {
  std::vector<Source> s;
  const MlaShape& m = c.mla;
  const int64_t d = c.d_model, H = c.n_heads, nope = m.qk_nope_head_dim, v = m.v_head_dim, r = m.kv_lora_rank;
  s.push_back(matrix_source("token_embd.weight", w.embed));
  s.push_back(vector_source("output_norm.weight", w.final_norm_w, {d}));
  if (!c.tie_word_embeddings) s.push_back(matrix_source("output.weight", w.lm_head));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "blk." + std::to_string(i) + ".";
    s.push_back(vector_source(p + "attn_norm.weight", L.attn_norm_w, {d}));
    s.push_back(vector_source(p + "ffn_norm.weight", L.ffn_norm_w, {d}));
    if (m.q_lora_rank > 0) {
      s.push_back(matrix_source(p + "attn_q_a.weight", L.q_a));
      s.push_back(vector_source(p + "attn_q_a_norm.weight", L.q_a_norm, {m.q_lora_rank}));
      s.push_back(matrix_source(p + "attn_q_b.weight", L.q_b));
    } else {
      s.push_back(matrix_source(p + "attn_q.weight", L.wq));
    }
    s.push_back(matrix_source(p + "attn_kv_a_mqa.weight", L.kv_a));
    s.push_back(vector_source(p + "attn_kv_a_norm.weight", L.kv_a_norm, {r}));
    const MatRef* kv_b = &L.kv_b;
    // One head per chunk: its kv_lora rows are the columns of the checkpoint's nope rows of that head.
    s.push_back(Source{p + "attn_k_b.weight", {nope, r, H}, r, [kv_b, nope, v, r](int64_t r0, int64_t n, float* out) {
                         MOEP_ASSERT(r0 % r == 0 && n == r);
                         const int64_t h = r0 / r;
                         std::vector<float> row(static_cast<size_t>(r));
                         for (int64_t j = 0; j < nope; ++j) {
                           row_f32(*kv_b, h * (nope + v) + j, row.data());
                           for (int64_t k = 0; k < r; ++k) out[k * nope + j] = row[size_t(k)];
                         }
                       }});
    s.push_back(by_rows(p + "attn_v_b.weight", {r, v, H}, [kv_b, nope, v](int64_t row, float* out) {
      row_f32(*kv_b, (row / v) * (nope + v) + nope + row % v, out);
    }));
    s.push_back(matrix_source(p + "attn_output.weight", L.wo));
    if (!L.is_moe) {
      s.push_back(matrix_source(p + "ffn_gate.weight", L.dense.gate));
      s.push_back(matrix_source(p + "ffn_up.weight", L.dense.up));
      s.push_back(matrix_source(p + "ffn_down.weight", L.dense.down));
      continue;
    }
    if (!L.router_choice_bias.empty())
      s.push_back(vector_source(p + "exp_probs_b.bias", L.router_choice_bias, {c.n_experts}));
    moe_sources(c, L, p, s);
  }
  return s;
}

// What gpt-oss adds to a layer under llama.cpp's names (conversion/gpt_oss.py; bind_gguf_gpt_oss_extras reads them
// back): the sinks, the router's bias and the experts' biases.
void gpt_oss_sources(const ModelConfig& c, const LayerWeights& L, const std::string& p, std::vector<Source>& s) {
  const int64_t d = c.d_model, E = c.n_experts, f = c.expert_ffn;
  s.push_back(vector_source(p + "attn_sinks.weight", L.sinks, {c.n_heads}));
  s.push_back(vector_source(p + "ffn_gate_inp.bias", L.router_bias, {E}));
  // The experts' biases stacked as the converter writes them: [E, f] and [E, d] (ggml {f, E}, {d, E}).
  const auto* experts = &L.experts;
  for (const auto& [name, which, len] : {std::tuple{"ffn_gate_exps.bias", 0, f}, std::tuple{"ffn_up_exps.bias", 1, f},
                                         std::tuple{"ffn_down_exps.bias", 2, d}})
    s.push_back(by_rows(p + name, {len, E}, [experts, which = which, len = len](int64_t e, float* out) {
      const ExpertWeights& x = (*experts)[size_t(e)];
      const VecRef& v = which == 0 ? x.gate_bias : which == 1 ? x.up_bias : x.down_bias;
      MOEP_ASSERT(v.size == len, "expert ", e, "'s bias");
      for (int64_t k = 0; k < len; ++k) out[k] = v.at(k);
    }));
}


std::vector<Source> gguf_sources(const ModelConfig& c, const ModelWeights& w) {
  if (c.is_mla()) return mla_sources(c, w);
  std::vector<Source> s;
  const int64_t d = c.d_model, hd = c.head_dim;
  s.push_back(matrix_source("token_embd.weight", w.embed));
  s.push_back(vector_source("output_norm.weight", w.final_norm_w, {d}));
  if (!w.final_norm_b.empty()) s.push_back(vector_source("output_norm.bias", w.final_norm_b, {d}));
  if (!c.tie_word_embeddings) s.push_back(matrix_source("output.weight", w.lm_head));
  const bool dbrx = c.model_type == "dbrx", llama_rope = c.model_type == "mixtral", gpt_oss = c.model_type == "gpt_oss";
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "blk." + std::to_string(i) + ".";
    const std::string ffn_norm = p + (dbrx ? "attn_output_norm" : gpt_oss ? "post_attention_norm" : "ffn_norm");
    s.push_back(vector_source(p + "attn_norm.weight", L.attn_norm_w, {d}));
    if (!L.attn_norm_b.empty()) s.push_back(vector_source(p + "attn_norm.bias", L.attn_norm_b, {d}));
    s.push_back(vector_source(ffn_norm + ".weight", L.ffn_norm_w, {d}));
    if (!L.ffn_norm_b.empty()) s.push_back(vector_source(ffn_norm + ".bias", L.ffn_norm_b, {d}));
    if (dbrx) {
      const int64_t q = L.wq.rows, kv = L.wk.rows;
      s.push_back(by_rows(p + "attn_qkv.weight", {d, q + 2 * kv}, [&L, q, kv](int64_t r, float* out) {
        if (r < q) row_f32(L.wq, r, out);
        else if (r < q + kv) row_f32(L.wk, r - q, out);
        else row_f32(L.wv, r - q - kv, out);
      }));
    } else if (llama_rope) {
      // [m = m], [v = v]: clang before 16 cannot capture a structured binding by name (scripts/fuzz.sh uses 14).
      for (const auto& [name, m] : {std::pair{"attn_q.weight", &L.wq}, std::pair{"attn_k.weight", &L.wk}})
        s.push_back(by_rows(p + name, {d, m->rows}, [m = m, hd](int64_t r, float* out) {
          row_f32(*m, llama_rope_source_row(r, hd), out);
        }));
      s.push_back(matrix_source(p + "attn_v.weight", L.wv));
    } else {
      s.push_back(matrix_source(p + "attn_q.weight", L.wq));
      s.push_back(matrix_source(p + "attn_k.weight", L.wk));
      s.push_back(matrix_source(p + "attn_v.weight", L.wv));
    }
    s.push_back(matrix_source(p + "attn_output.weight", L.wo));
    for (const auto& [name, v, permuted] : {std::tuple{"attn_q.bias", &L.bq, llama_rope},
                                            std::tuple{"attn_k.bias", &L.bk, llama_rope},
                                            std::tuple{"attn_v.bias", &L.bv, false},
                                            std::tuple{"attn_output.bias", &L.bo, false}}) {
      if (v->empty()) continue;
      if (!permuted) {
        s.push_back(vector_source(p + name, *v, {v->size}));
        continue;
      }
      s.push_back(by_rows(p + name, {v->size}, [v = v, hd](int64_t, float* out) {
        for (int64_t k = 0; k < v->size; ++k) out[k] = v->at(llama_rope_source_row(k, hd));
      }));
    }
    if (!L.q_norm.empty()) s.push_back(vector_source(p + "attn_q_norm.weight", L.q_norm, {L.q_norm.size}));
    if (!L.k_norm.empty()) s.push_back(vector_source(p + "attn_k_norm.weight", L.k_norm, {L.k_norm.size}));
    if (!L.is_moe) {
      s.push_back(matrix_source(p + "ffn_gate.weight", L.dense.gate));
      s.push_back(matrix_source(p + "ffn_up.weight", L.dense.up));
      s.push_back(matrix_source(p + "ffn_down.weight", L.dense.down));
      continue;
    }
    moe_sources(c, L, p, s);
    if (gpt_oss) gpt_oss_sources(c, L, p, s);
  }
  return s;
}

// deepseek2's metadata as llama.cpp's converter writes it (conversion/deepseek.py and the base class's MoE and
// rope keys). Refuses what the format cannot say in a way llama.cpp reads back as the checkpoint means it.
void write_deepseek2_metadata(const ModelConfig& c, GgufWriter& g) {
  auto key = [](const char* k) { return std::string("deepseek2.") + k; };
  const MlaShape& m = c.mla;
  if (!m.rope_interleave)
    fail(c.model_type, " with rope_interleave false: llama.cpp's deepseek2 rotates adjacent pairs, and GGUF has no ",
         "key for the halves layout");
  int64_t first_dense = 0;
  while (first_dense < c.n_layers && !c.layer_is_moe[size_t(first_dense)]) ++first_dense;
  for (int64_t i = first_dense; i < c.n_layers; ++i)
    if (!c.layer_is_moe[size_t(i)])
      fail(c.model_type, ": layer ", i, " is dense after MoE layers (moe_layer_freq > 1); deepseek2 has only leading ",
           "dense layers (leading_dense_block_count)");
  const RopeScaling& y = c.rope_scaling;
  g.set_u32(key("context_length"), uint32_t(c.max_position));
  g.set_u32(key("embedding_length"), uint32_t(c.d_model));
  g.set_u32(key("block_count"), uint32_t(c.n_layers));
  g.set_u32(key("feed_forward_length"), uint32_t(c.dense_ffn > 0 ? c.dense_ffn : c.expert_ffn));
  g.set_u32(key("attention.head_count"), uint32_t(c.n_heads));
  g.set_u32(key("attention.head_count_kv"), 1);  // MLA as llama.cpp runs it: one latent "head" shared by all
  g.set_f32(key("rope.freq_base"), float(c.rope_theta));
  g.set_f32(key("attention.layer_norm_rms_epsilon"), c.norm_eps);
  g.set_u32(key("expert_count"), uint32_t(c.n_experts));
  g.set_u32(key("expert_used_count"), uint32_t(c.top_k));
  g.set_u32(key("leading_dense_block_count"), uint32_t(first_dense));
  g.set_u32(key("vocab_size"), uint32_t(c.vocab_size));
  // Written also when 0 (q_proj, as V2-Lite): llama.cpp requires the key unless it recognizes a Lite model by its
  // layer count, and reads 0 as "no compression".
  g.set_u32(key("attention.q_lora_rank"), uint32_t(m.q_lora_rank));
  g.set_u32(key("attention.kv_lora_rank"), uint32_t(m.kv_lora_rank));
  g.set_u32(key("attention.key_length"), uint32_t(m.kv_lora_rank + m.qk_rope_head_dim));
  g.set_u32(key("attention.value_length"), uint32_t(m.kv_lora_rank));
  g.set_u32(key("attention.key_length_mla"), uint32_t(m.qk_head_dim()));
  g.set_u32(key("attention.value_length_mla"), uint32_t(m.v_head_dim));
  g.set_u32(key("expert_feed_forward_length"), uint32_t(c.expert_ffn));
  g.set_u32(key("expert_shared_count"), uint32_t(c.expert_ffn > 0 ? c.shared_expert_ffn / c.expert_ffn : 0));
  g.set_f32(key("expert_weights_scale"), float(c.routed_scaling_factor));
  if (c.topk_norm == TopKNorm::Sum) g.set_bool(key("expert_weights_norm"), true);
  g.set_u32(key("rope.dimension_count"), uint32_t(m.qk_rope_head_dim));
  g.set_u32(key("expert_group_count"), uint32_t(c.n_group));
  g.set_u32(key("expert_group_used_count"), uint32_t(c.topk_group));
  g.set_u32(key("expert_gating_func"), c.router_scoring == RouterScoring::Sigmoid ? 2u : 1u);
  if (y.type == "yarn") {
    // llama.cpp reads mscale as mscale_all_dim (1 when that is 1): other pairs have no key.
    const double read_back = y.mscale_all_dim != 0.0 ? y.mscale_all_dim : 0.0;
    if (y.mscale != read_back || y.attention_factor != 0.0 || !y.truncate)
      fail(c.model_type, ": YaRN with mscale ", y.mscale, ", mscale_all_dim ", y.mscale_all_dim,
           ", attention_factor ", y.attention_factor,
           ": GGUF stores only mscale_all_dim, and llama.cpp takes mscale equal to it; other values cannot be written");
    g.set_string(key("rope.scaling.type"), "yarn");
    g.set_f32(key("rope.scaling.factor"), float(y.factor));
    g.set_u32(key("rope.scaling.original_context_length"), uint32_t(y.original_max_position));
    // 0 stands for transformers' defaults (model/rope.cpp), which llama.cpp would read as 0.
    g.set_f32(key("rope.scaling.yarn_beta_fast"), float(y.beta_fast != 0.0 ? y.beta_fast : 32.0));
    g.set_f32(key("rope.scaling.yarn_beta_slow"), float(y.beta_slow != 0.0 ? y.beta_slow : 1.0));
    if (y.mscale_all_dim != 0.0) g.set_f32(key("rope.scaling.yarn_log_multiplier"), float(0.1 * y.mscale_all_dim));
  } else if (y.type != "default") {
    fail(c.model_type, ": rope scaling '", y.type, "' cannot be written to a deepseek2 GGUF (yarn or none)");
  }
}

// gpt-oss's metadata as llama.cpp's converter writes it (conversion/gpt_oss.py and the base class). Refuses what
// llama.cpp fixes in its graph when the model differs (gpt_oss_config in gguf_config.cpp lists them).
void write_gpt_oss_metadata(const ModelConfig& c, GgufWriter& g) {
  auto key = [](const char* k) { return std::string("gpt-oss.") + k; };
  if (c.swiglu_limit != 7.0 || c.swiglu_alpha != 1.702)
    fail("gpt_oss with swiglu_limit ", c.swiglu_limit, " and alpha ", c.swiglu_alpha,
         ": llama.cpp's gpt-oss graph fixes them at 7 and 1.702, and GGUF has no key for others");
  // The sliding layers: all but the last of every period of p layers (llama.cpp's sliding_window_pattern).
  int64_t window = 0;
  for (int64_t w : c.layer_window)
    if (w != 0) {
      if (window != 0 && w != window)
        fail("gpt_oss with sliding windows of ", window, " and ", w, ": GGUF holds one sliding_window");
      window = w;
    }
  int64_t period = 0;
  for (int64_t p = 1; p <= c.n_layers + 1 && period == 0; ++p) {
    bool fits = true;
    for (int64_t i = 0; i < c.n_layers && fits; ++i)
      fits = (c.layer_window[size_t(i)] != 0) == (i % p < p - 1);
    if (fits) period = p;
  }
  if (window == 0 || period == 0)
    fail("gpt_oss: its sliding-window layers do not follow llama.cpp's sliding_window_pattern (every layer of a ",
         "period but the last), the only layout GGUF can state");
  const RopeScaling& y = c.rope_scaling;
  g.set_u32(key("context_length"), uint32_t(c.max_position));
  g.set_u32(key("embedding_length"), uint32_t(c.d_model));
  g.set_u32(key("block_count"), uint32_t(c.n_layers));
  g.set_u32(key("feed_forward_length"), uint32_t(c.expert_ffn));
  g.set_u32(key("attention.head_count"), uint32_t(c.n_heads));
  g.set_u32(key("attention.head_count_kv"), uint32_t(c.n_kv_heads));
  g.set_f32(key("rope.freq_base"), float(c.rope_theta));
  g.set_f32(key("attention.layer_norm_rms_epsilon"), c.norm_eps);
  g.set_u32(key("expert_count"), uint32_t(c.n_experts));
  g.set_u32(key("expert_used_count"), uint32_t(c.top_k));
  g.set_u32(key("attention.key_length"), uint32_t(c.head_dim));
  g.set_u32(key("attention.value_length"), uint32_t(c.head_dim));
  g.set_u32(key("attention.sliding_window"), uint32_t(window));
  if (period != 2) g.set_u32(key("attention.sliding_window_pattern"), uint32_t(period));
  g.set_u32(key("expert_feed_forward_length"), uint32_t(c.expert_ffn));
  g.set_u32(key("vocab_size"), uint32_t(c.vocab_size));
  if (y.type == "yarn") {
    if (y.truncate || y.attention_factor != 0.0 || y.mscale != 0.0 || y.mscale_all_dim != 0.0)
      fail("gpt_oss: YaRN with truncate ", y.truncate ? "true" : "false", ", attention_factor ", y.attention_factor,
           ", mscale ", y.mscale, ": GGUF states only the factor, the original context and the betas, and moep ",
           "reads a gpt-oss GGUF as its checkpoints mean it (truncate false, the default attention factor)");
    g.set_string(key("rope.scaling.type"), "yarn");
    g.set_f32(key("rope.scaling.factor"), float(y.factor));
    g.set_u32(key("rope.scaling.original_context_length"), uint32_t(y.original_max_position));
    g.set_f32(key("rope.scaling.yarn_beta_fast"), float(y.beta_fast != 0.0 ? y.beta_fast : 32.0));
    g.set_f32(key("rope.scaling.yarn_beta_slow"), float(y.beta_slow != 0.0 ? y.beta_slow : 1.0));
  } else if (y.type != "default") {
    fail("gpt_oss: rope scaling '", y.type, "' cannot be written to a gpt-oss GGUF (yarn or none)");
  }
}

// The metadata llama.cpp's converter writes for the model's architecture (convert_hf_to_gguf.py's
// set_gguf_parameters), which model_config_from_gguf reads back.
void write_metadata(const ModelConfig& c, const std::string& name, GgufFileType ftype, GgufWriter& g) {
  const std::string arch = gguf_arch_name(c.model_type);
  auto key = [&](const char* k) { return arch + "." + k; };
  if (c.is_mla() || c.model_type == "gpt_oss") {
    g.set_string("general.architecture", arch);
    g.set_string("general.name", name);
    if (c.is_mla())
      write_deepseek2_metadata(c, g);
    else
      write_gpt_oss_metadata(c, g);
    g.set_u32("general.file_type", uint32_t(ftype));
    if (is_block_quantized(file_type(ftype).base)) g.set_u32("general.quantization_version", 2);
    return;
  }
  if (c.model_type == "dbrx" && c.topk_pnorm != 1.0)
    fail("a DBRX model whose moe_normalize_expert_weights is ", c.topk_pnorm,
         ": llama.cpp's dbrx divides the top-k weights by their sum (p = 1), and GGUF has no key for another p");
  g.set_string("general.architecture", arch);
  g.set_string("general.name", name);
  g.set_u32(key("vocab_size"), uint32_t(c.vocab_size));
  g.set_u32(key("context_length"), uint32_t(c.max_position));
  g.set_u32(key("embedding_length"), uint32_t(c.d_model));
  g.set_u32(key("block_count"), uint32_t(c.n_layers));
  // Mixtral, DBRX and OLMoE: the experts' size; Qwen: the dense MLP's (llama.cpp's intermediate_size).
  g.set_u32(key("feed_forward_length"), uint32_t(c.dense_ffn > 0 ? c.dense_ffn : c.expert_ffn));
  g.set_u32(key("attention.head_count"), uint32_t(c.n_heads));
  g.set_u32(key("attention.head_count_kv"), uint32_t(c.n_kv_heads));
  if (c.head_dim != c.d_model / c.n_heads) {
    g.set_u32(key("attention.key_length"), uint32_t(c.head_dim));
    g.set_u32(key("attention.value_length"), uint32_t(c.head_dim));
  }
  if (arch == "llama") g.set_u32(key("rope.dimension_count"), uint32_t(c.head_dim));
  g.set_f32(key("rope.freq_base"), float(c.rope_theta));
  if (c.norm == NormKind::LayerNorm)
    g.set_f32(key("attention.layer_norm_epsilon"), c.norm_eps);
  else
    g.set_f32(key("attention.layer_norm_rms_epsilon"), c.norm_eps);
  if (c.clip_qkv > 0) g.set_f32(key("attention.clamp_kqv"), c.clip_qkv);
  g.set_u32(key("expert_count"), uint32_t(c.n_experts));
  g.set_u32(key("expert_used_count"), uint32_t(c.top_k));
  if (arch == "qwen2moe" || arch == "qwen3moe" || arch == "olmoe") {
    g.set_u32(key("expert_feed_forward_length"), uint32_t(c.expert_ffn));
    g.set_bool(key("expert_weights_norm"), c.topk_norm == TopKNorm::Sum);
  }
  if (c.shared_expert_ffn > 0) g.set_u32(key("expert_shared_feed_forward_length"), uint32_t(c.shared_expert_ffn));
  g.set_u32("general.file_type", uint32_t(ftype));
  if (is_block_quantized(file_type(ftype).base)) g.set_u32("general.quantization_version", 2);  // GGML_QNT_VERSION
}

// One metadata value of a GGUF file, written again under its key.
void copy_value(GgufWriter& g, const std::string& key, const GgufValue& v) {
  switch (v.type) {
    case GgufType::String: g.set_string(key, std::string(v.str)); return;
    case GgufType::Array:
      if (v.elem_type == GgufType::String) {
        g.set_string_array(key, std::vector<std::string>(v.strings.begin(), v.strings.end()));
      } else {
        g.set_array(key, v.elem_type, v.array_data, size_t(v.count));
      }
      return;
    case GgufType::U8: g.set_u8(key, uint8_t(v.raw)); return;
    case GgufType::I8: g.set_i8(key, int8_t(v.raw)); return;
    case GgufType::U16: g.set_u16(key, uint16_t(v.raw)); return;
    case GgufType::I16: g.set_i16(key, int16_t(v.raw)); return;
    case GgufType::U32: g.set_u32(key, uint32_t(v.raw)); return;
    case GgufType::I32: g.set_i32(key, int32_t(v.raw)); return;
    case GgufType::U64: g.set_u64(key, v.raw); return;
    case GgufType::I64: g.set_i64(key, int64_t(v.raw)); return;
    case GgufType::Bool: g.set_bool(key, v.raw != 0); return;
    case GgufType::F32: {
      float f;
      const uint32_t u = uint32_t(v.raw);
      std::memcpy(&f, &u, 4);
      g.set_f32(key, f);
      return;
    }
    case GgufType::F64: {
      double d;
      std::memcpy(&d, &v.raw, 8);
      g.set_f64(key, d);
      return;
    }
  }
  fail("GGUF metadata ", key, ": a value of type ", v.type_str(), " cannot be copied");
}

}  // namespace

GgufFileType parse_gguf_file_type(std::string_view name) {
  std::string lower(name);
  for (char& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  for (const auto& f : kFileTypes)
    if (lower == f.name) return f.type;
  std::string all;
  for (const auto& f : kFileTypes) all += str_cat(all.empty() ? "" : ", ", f.name);
  fail("quantization type '", name, "' is unknown (expected one of ", all, ")");
}

const char* gguf_file_type_name(GgufFileType t) { return file_type(t).name; }

GgmlType gguf_tensor_type(GgufFileType ftype, const std::string& name, const std::vector<int64_t>& dims,
                          const GgufTypeContext& ctx, bool* fell_back) {
  if (fell_back) *fell_back = false;
  // tensor_allows_quantization: 2 or more dims (trailing 1s do not count), a weight, no norm, no router.
  int64_t n_dims = int64_t(dims.size());
  while (n_dims > 1 && dims[size_t(n_dims - 1)] == 1) --n_dims;
  const bool weight = name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
  if (n_dims < 2 || !weight || contains(name, "_norm.weight") || contains(name, "ffn_gate_inp.weight"))
    return GgmlType::F32;
  const GgmlType base = file_type(ftype).base;
  if (!is_block_quantized(base)) return base;

  const bool output = name == "output.weight", embd = name == "token_embd.weight";
  const bool attn_v = contains(name, "attn_v.weight") || contains(name, "attn_qkv.weight");
  const bool k_m = ftype == GgufFileType::Q4_K_M || ftype == GgufFileType::Q5_K_M;
  const int64_t ncols = dims[0];
  GgmlType t = base;
  if (ftype == GgufFileType::MXFP4_MOE) {
    t = n_dims >= 3 && dims[2] > 1 ? GgmlType::MXFP4 : GgmlType::Q8_0;  // stacked experts; the rest q8_0
  } else if (output || (ctx.tied_output && embd)) {
    if (ncols % ggml_type_traits(base).block_weights != 0) t = GgmlType::Q8_0;
    else if (t != GgmlType::Q8_0) t = GgmlType::Q6_K;
  } else if (embd) {
    // the file's type
  } else if (attn_v) {
    if (k_m && use_more_bits(ctx.attn_v_index, ctx.attn_v_count)) t = GgmlType::Q6_K;
    if (ctx.n_experts == 8) t = GgmlType::Q8_0;
  } else if (contains(name, "attn_k.weight")) {
    if (ctx.n_experts == 8) t = GgmlType::Q8_0;
  } else if (contains(name, "attn_q.weight")) {
    // the file's type
  } else if (contains(name, "attn_output.weight")) {
    if (ctx.n_experts == 8 && ftype == GgufFileType::Q4_K_M) t = GgmlType::Q5_K;
  } else if (contains(name, "ffn_up") || contains(name, "ffn_gate")) {
    // the file's type
  } else if (contains(name, "ffn_down")) {
    int layer = -1;
    if (std::sscanf(name.c_str(), "blk.%d.", &layer) != 1) fail("tensor '", name, "': no layer in its name");
    if (k_m && use_more_bits(layer, ctx.n_layers)) t = GgmlType::Q6_K;
  }
  // tensor_type_fallback: rows that are not whole blocks (see the top of gguf_export.h for moep's choices).
  if (ncols % ggml_type_traits(t).block_weights != 0) {
    if (fell_back) *fell_back = true;
    t = GgmlType::Q8_0;
    if (ncols % ggml_type_traits(t).block_weights != 0) t = GgmlType::F16;
  }
  return t;
}

QuantizeResult quantize_to_gguf(const std::string& model_path, const std::string& out_path, GgufFileType ftype,
                                const std::function<void(size_t, size_t)>& progress, int threads,
                                const std::function<void(GgufWriter&)>& tokenizer_metadata) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  LoadOptions lo;
  lo.prefault = false;  // read as written, tensor by tensor, from the mapping
  lo.residence = WeightResidence::Map;
  const auto model = Model::load(model_path, lo);
  const ModelConfig& c = model->config();
  std::filesystem::path name_path(model_path);
  while (!name_path.empty() && name_path.filename().empty()) name_path = name_path.parent_path();

  GgufWriter writer;
  write_metadata(c, name_path.stem().string(), ftype, writer);
  if (is_gguf_path(model_path)) {
    const GgufFile src = GgufFile::open(model_path);
    for (const auto& [key, value] : src.metadata())
      if (key.rfind("tokenizer.", 0) == 0) copy_value(writer, key, value);
  } else if (tokenizer_metadata) {
    tokenizer_metadata(writer);
  }
  std::vector<Source> sources = gguf_sources(c, model->weights());
  QuantizeResult result;
  GgufTypeContext ctx;
  ctx.n_experts = c.n_experts;
  ctx.n_layers = c.n_layers;
  ctx.tied_output = c.tie_word_embeddings;
  ctx.attn_v_count = c.n_layers;  // one attn_v (or attn_qkv) per layer
  const size_t total = sources.size();
  auto done = std::make_shared<size_t>(0);
  for (Source& src : sources) {
    int layer = 0;
    std::sscanf(src.name.c_str(), "blk.%d.", &layer);
    ctx.attn_v_index = layer;  // llama.cpp counts them in layer order (its loader sorts tensors by layer)
    bool fell_back = false;
    const GgmlType type = gguf_tensor_type(ftype, src.name, src.dims, ctx, &fell_back);
    result.tensors.push_back({src.name, src.dims, type, fell_back});
    auto shared = std::make_shared<Source>(std::move(src));
    writer.add_tensor(shared->name, type, shared->dims, [shared, type, done, total, threads, &progress](uint8_t* out) {
      const int64_t cols = shared->dims[0], rows = shared->rows(), chunk = shared->chunk;
      const size_t row_bytes = ggml_row_bytes(type, cols);
      // Chunks of rows on every thread, each row quantized on its own: the bytes do not depend on the threads.
      const int64_t n_chunks = (rows + chunk - 1) / chunk;
      std::atomic<int64_t> next{0};
      auto work = [&] {
        std::vector<float> buf(size_t(chunk * cols));
        for (int64_t c = next++; c < n_chunks; c = next++) {
          const int64_t r0 = c * chunk, n = std::min(chunk, rows - r0);
          shared->fill(r0, n, buf.data());
          for (int64_t r = 0; r < n; ++r)
            quantize_row(type, buf.data() + r * cols, out + size_t(r0 + r) * row_bytes, cols);
        }
      };
      std::vector<std::thread> helpers;
      for (int t = 1; t < std::min<int64_t>(threads, n_chunks); ++t) helpers.emplace_back(work);
      work();
      for (auto& h : helpers) h.join();
      ++*done;
      if (progress) progress(*done, total);
    });
  }
  writer.write(out_path);
  result.bytes = std::filesystem::file_size(out_path);
  return result;
}

}  // namespace moep
