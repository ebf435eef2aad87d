#include "model/gguf_model.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/quant.h"
#include "io/gguf.h"

namespace moep {

bool is_gguf_path(const std::string& path) {
  return path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
}

std::map<std::string, TensorInfo> gguf_tensor_index(const GgufFile& f) {
  std::map<std::string, TensorInfo> out;
  for (const auto& [name, g] : f.tensors()) {
    TensorInfo t;
    t.name = name;
    t.ggml_type = int(g.type);
    if (ggml_type_load_only(g.type)) {
      // Readable only where the loader converts it (bind_gguf_mla); the binder refuses it anywhere else.
      t.dtype_name = ggml_type_traits(g.type).name;
      t.dtype_supported = false;
    } else {
      t.dtype = dtype_of_ggml(g.type);
      t.dtype_name = dtype_name(t.dtype);
      t.dtype_supported = true;  // GgufFile::open refuses every type moep does not read, naming the tensor
    }
    t.shape.assign(g.dims.rbegin(), g.dims.rend());
    t.data = g.data;
    t.nbytes = g.nbytes;
    t.file = f.files()[size_t(g.part)].get();
    t.file_offset = g.file_offset;
    out.emplace(name, std::move(t));
  }
  return out;
}

int64_t ffn_block_weights(const std::string& model_path) {
  if (!is_gguf_path(model_path)) return 1;
  const GgufFile f = GgufFile::open(model_path);
  int64_t block = 1;
  for (const auto& [name, t] : f.tensors())
    if (name.find("ffn_down_exps") != std::string::npos || name.find("ffn_down_shexp") != std::string::npos)
      block = std::max<int64_t>(block, ggml_type_traits(t.type).block_weights);
  return block;
}

std::string gguf_arch_name(const std::string& model_type) {
  if (model_type == "mixtral") return "llama";
  if (model_type == "qwen2_moe") return "qwen2moe";
  if (model_type == "qwen3_moe") return "qwen3moe";
  if (model_type == "olmoe" || model_type == "dbrx") return model_type;
  if (model_type == "deepseek_v3" || model_type == "deepseek_v2") return "deepseek2";
  if (model_type == "gpt_oss") return "gpt-oss";
  fail("model_type '", model_type, "' has no GGUF architecture moep knows");
}

int64_t llama_rope_stored_row(int64_t r, int64_t head_dim) {
  // Checkpoint row h·hd + half·hd/2 + i is stored at h·hd + 2i + half.
  const int64_t h = r / head_dim, j = r % head_dim, half = j / (head_dim / 2), i = j % (head_dim / 2);
  return h * head_dim + 2 * i + half;
}

namespace {

// This rank's slice of a dense [ffn, d] / [d, ffn] SwiGLU MLP named p + "{gate,up,down}" + suffix.
MlpWeights bind_mlp(WeightBinder& b, const std::string& p, const std::string& suffix, int64_t d, int64_t f,
                    FfnSlice sl) {
  MlpWeights m;
  m.gate = b.matrix_rows(p + "ffn_gate" + suffix, f, d, sl.first, sl.count);
  m.up = b.matrix_rows(p + "ffn_up" + suffix, f, d, sl.first, sl.count);
  m.down = b.matrix_cols(p + "ffn_down" + suffix, d, f, sl.first, sl.count);
  return m;
}

// Layer i's router and this rank's experts of the stacked ffn_{gate,up,down}_exps (p: "blk.<i>.").
void bind_stacked_experts(const ModelConfig& c, WeightBinder& b, int64_t i, const std::string& p, LayerWeights& L) {
  const int64_t d = c.d_model, E = c.n_experts, f = c.expert_ffn;
  L.router = b.matrix(p + "ffn_gate_inp.weight", E, d);
  L.experts.resize(size_t(E));
  const std::string gate = p + "ffn_gate_exps.weight", up = p + "ffn_up_exps.weight",
                    down = p + "ffn_down_exps.weight";
  if (!b.has(gate) && b.has(p + "ffn_gate.0.weight"))
    fail("tensor '", p, "ffn_gate.0.weight': this GGUF stores each expert as its own tensor, llama.cpp's layout before ",
         "April 2024; moep reads the stacked ", gate, " of files converted since (convert it again)");
  for (int64_t e = 0; e < E; ++e) {
    ExpertWeights& x = L.experts[size_t(e)];
    if (!b.share().holds(i, e)) continue;
    x.local = true;
    // This rank's part of the ffn dimension (all of it unless the placement splits experts).
    const FfnSlice sl = b.share().ffn_slice(f);
    x.gate = b.slab_rows(gate, E, f, d, e, sl.first, sl.count);
    x.up = b.slab_rows(up, E, f, d, e, sl.first, sl.count);
    x.down = b.slab_cols(down, E, d, f, e, sl.first, sl.count);
  }
  // The stacked tensors count as used even when this rank holds none of their experts.
  b.skip(gate, {E, f, d});
  b.skip(up, {E, f, d});
  b.skip(down, {E, d, f});
}

// DeepSeek's latent attention and MoE as llama.cpp's deepseek2 stores them (gguf_config.cpp). kv_b_proj is stored
// split and k_b transposed (attn_k_b [heads, kv_lora, nope], attn_v_b [heads, v, kv_lora]): it is made whole
// again once at load ([heads · (nope + v), kv_lora], as the checkpoint's kv_b_proj): in bf16 when both parts are
// bf16, else in f32, so that the loader adds no rounding of its own. The cost: a quantized file's kv_b is held
// (and read each token) at 4 bytes a weight, about 4 GB over DeepSeek-V3's 61 layers, where kernels reading
// k_b and v_b in their stored type would need none.
void bind_gguf_mla(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  if (b.share().dense().attention)
    fail(c.model_type, ": split attention (--attention split) is not supported with multi-head latent attention; ",
         "every rank keeps the whole attention and its latent cache (use --attention replicated)");
  const MlaShape& m = c.mla;
  const int64_t d = c.d_model, H = c.n_heads, nope = m.qk_nope_head_dim, v = m.v_head_dim, r = m.kv_lora_rank;
  w.embed = b.matrix("token_embd.weight", c.vocab_size, d);
  w.final_norm_w = b.vector("output_norm.weight", d);
  bind_output_head(c, b, "output.weight", w);
  w.kv_heads = {0, c.n_kv_heads};
  w.layers.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "blk." + std::to_string(i) + ".";
    L.attn_norm_w = b.vector(p + "attn_norm.weight", d);
    L.ffn_norm_w = b.vector(p + "ffn_norm.weight", d);
    if (m.q_lora_rank > 0) {
      L.q_a = b.matrix(p + "attn_q_a.weight", m.q_lora_rank, d);
      L.q_a_norm = b.vector(p + "attn_q_a_norm.weight", m.q_lora_rank);
      L.q_b = b.matrix(p + "attn_q_b.weight", H * m.qk_head_dim(), m.q_lora_rank);
    } else {
      L.wq = b.matrix(p + "attn_q.weight", H * m.qk_head_dim(), d);
    }
    L.kv_a = b.matrix(p + "attn_kv_a_mqa.weight", r + m.qk_rope_head_dim, d);
    L.kv_a_norm = b.vector(p + "attn_kv_a_norm.weight", r);
    // Any type moep decodes, the load-only Q5_0 and Q5_1 included (llama-quantize's fallback for attn_k_b's
    // 128-wide rows in Q4_K_M and Q5_K_M).
    const auto part = [&](const std::string& name, const std::vector<int64_t>& shape) {
      const int t = b.ggml_type_of_tensor(name);  // -1: absent, or recording
      return t >= 0 && ggml_type_load_only(GgmlType(t)) ? b.tensor(name, shape, ggml_type_traits(GgmlType(t)).name)
                                                         : b.tensor(name, shape);
    };
    const TensorInfo* kb = part(p + "attn_k_b.weight", {H, r, nope});
    const TensorInfo* vb = part(p + "attn_v_b.weight", {H, v, r});
    if (kb && vb) {
      const DType dt = kb->dtype_supported && vb->dtype_supported && kb->dtype == DType::BF16 &&
                               vb->dtype == DType::BF16
                           ? DType::BF16
                           : DType::F32;
      L.kv_b = b.made_matrix(p + "attn_kv_b#made", dt, H * (nope + v), r, [&, kb, vb, dt](uint8_t* dst) {
        const size_t out_row = dtype_row_bytes(dt, r);
        const GgmlType kt = GgmlType(kb->ggml_type), vt = GgmlType(vb->ggml_type);
        const size_t k_row = ggml_row_bytes(kt, nope), v_row = ggml_row_bytes(vt, r);
        std::vector<float> kh(static_cast<size_t>(r * nope));
        std::vector<float> row(static_cast<size_t>(r));
        auto put = [&](int64_t out_r, const float* x) {
          uint8_t* o = dst + size_t(out_r) * out_row;
          if (dt == DType::F32) {
            std::memcpy(o, x, out_row);
            return;
          }
          auto* ob = reinterpret_cast<uint16_t*>(o);
          for (int64_t j = 0; j < r; ++j) ob[j] = f32_to_bf16(x[j]);
        };
        for (int64_t h = 0; h < H; ++h) {
          // k_b[h] is [kv_lora, nope]: row c holds column c of the checkpoint's nope rows.
          for (int64_t cc = 0; cc < r; ++cc)
            dequantize_row(kt, kb->data + size_t(h * r + cc) * k_row, kh.data() + cc * nope, nope);
          for (int64_t j = 0; j < nope; ++j) {
            for (int64_t cc = 0; cc < r; ++cc) row[size_t(cc)] = kh[size_t(cc * nope + j)];
            put(h * (nope + v) + j, row.data());
          }
          for (int64_t j = 0; j < v; ++j) {
            dequantize_row(vt, vb->data + size_t(h * v + j) * v_row, row.data(), r);
            put(h * (nope + v) + nope + j, row.data());
          }
        }
      });
    }
    L.wo = b.matrix(p + "attn_output.weight", d, H * v);
    L.is_moe = c.layer_is_moe[size_t(i)];
    if (!L.is_moe) {
      L.dense = bind_mlp(b, p, ".weight", d, c.dense_ffn, FfnSlice{0, c.dense_ffn});
      continue;
    }
    bind_stacked_experts(c, b, i, p, L);
    if (c.router_choice_bias) L.router_choice_bias = b.vector(p + "exp_probs_b.bias", c.n_experts);
    if (c.shared_expert_ffn > 0)
      L.shared_expert = bind_mlp(b, p, "_shexp.weight", d, c.shared_expert_ffn, b.share().ffn_slice(c.shared_expert_ffn));
  }
}

// What gpt-oss adds to a layer, as llama.cpp's converter stores it (conversion/gpt_oss.py): the sinks as
// attn_sinks.weight, the router's bias, and the experts' biases split like the checkpoint's interleaved gate_up into
// ffn_gate_exps.bias and ffn_up_exps.bias, with ffn_down_exps.bias. (Its attention and stacked experts are bound as
// every family's; post_attention_layernorm is post_attention_norm; q and k are stored unpermuted: llama.cpp rotates
// gpt-oss's halves, as transformers does.)
void bind_gguf_gpt_oss_extras(const ModelConfig& c, WeightBinder& b, const std::string& p, LayerWeights& L) {
  const int64_t d = c.d_model, E = c.n_experts, f = c.expert_ffn;
  L.sinks = b.vector(p + "attn_sinks.weight", c.n_heads);
  L.router_bias = b.vector(p + "ffn_gate_inp.bias", E);
  // The experts' biases, stacked [E, f] (gate, up) and [E, d] (down): this rank's slice of each held expert,
  // down's on the slice that starts the ffn dimension only (it is added once per expert).
  const TensorInfo* gate_b = b.tensor(p + "ffn_gate_exps.bias", {E, f});
  const TensorInfo* up_b = b.tensor(p + "ffn_up_exps.bias", {E, f});
  const TensorInfo* down_b = b.tensor(p + "ffn_down_exps.bias", {E, d});
  if (!gate_b || !up_b || !down_b) return;  // recording mode
  const FfnSlice sl = b.share().ffn_slice(f);
  for (int64_t e = 0; e < E; ++e) {
    ExpertWeights& x = L.experts[size_t(e)];
    if (!x.local) continue;
    const std::string key = p + "exps#" + std::to_string(e) + "#" + std::to_string(sl.first) + "+" +
                            std::to_string(sl.count);
    auto slice = [&](const TensorInfo* t, int64_t row_len, int64_t first, int64_t n, const char* what) {
      return b.made_vector(key + what, n, [t, e, row_len, first, n](float* out) {
        const VecRef v{t->data, t->dtype, t->numel()};
        for (int64_t k = 0; k < n; ++k) out[k] = v.at(e * row_len + first + k);
      });
    };
    x.gate_bias = slice(gate_b, f, sl.first, sl.count, "#gate_bias");
    x.up_bias = slice(up_b, f, sl.first, sl.count, "#up_bias");
    if (sl.first == 0) x.down_bias = slice(down_b, d, 0, d, "#down_bias");
  }
}

}  // namespace

void bind_gguf_weights(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  if (c.is_mla()) return bind_gguf_mla(c, b, w);
  const int64_t d = c.d_model, q = c.q_dim(), kv = c.kv_dim(), hd = c.head_dim;
  const bool dbrx = c.model_type == "dbrx";
  const bool llama_rope = c.model_type == "mixtral", gpt_oss = c.model_type == "gpt_oss";
  w.embed = b.matrix("token_embd.weight", c.vocab_size, d);
  w.final_norm_w = b.vector("output_norm.weight", d);
  if (c.norm_has_bias) w.final_norm_b = b.vector("output_norm.bias", d);
  bind_output_head(c, b, "output.weight", w);
  // llama.cpp's files reorder q and k rows (matrix_row_permuted) and quantize o_proj in blocks that a head's
  // columns may cut: their attention is bound whole.
  if (b.share().dense().attention)
    fail("a GGUF model's attention cannot be split over ranks yet; use --attention replicated");
  w.kv_heads = {0, c.n_kv_heads};
  w.layers.resize(size_t(c.n_layers));
  const auto stored_row = [hd](int64_t r) { return llama_rope_stored_row(r, hd); };
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "blk." + std::to_string(i) + ".";
    L.attn_norm_w = b.vector(p + "attn_norm.weight", d);
    const std::string ffn_norm = p + (dbrx ? "attn_output_norm" : gpt_oss ? "post_attention_norm" : "ffn_norm");
    L.ffn_norm_w = b.vector(ffn_norm + ".weight", d);
    if (c.norm_has_bias) {
      L.attn_norm_b = b.vector(p + "attn_norm.bias", d);
      L.ffn_norm_b = b.vector(ffn_norm + ".bias", d);
    }
    if (dbrx) {
      L.wq = b.matrix_rows(p + "attn_qkv.weight", q + 2 * kv, d, 0, q);
      L.wk = b.matrix_rows(p + "attn_qkv.weight", q + 2 * kv, d, q, kv);
      L.wv = b.matrix_rows(p + "attn_qkv.weight", q + 2 * kv, d, q + kv, kv);
    } else if (llama_rope) {
      L.wq = b.matrix_row_permuted(p + "attn_q.weight", q, d, stored_row);
      L.wk = b.matrix_row_permuted(p + "attn_k.weight", kv, d, stored_row);
      L.wv = b.matrix(p + "attn_v.weight", kv, d);
    } else {
      L.wq = b.matrix(p + "attn_q.weight", q, d);
      L.wk = b.matrix(p + "attn_k.weight", kv, d);
      L.wv = b.matrix(p + "attn_v.weight", kv, d);
    }
    L.wo = b.matrix(p + "attn_output.weight", d, q);
    if (c.qkv_bias) {
      L.bq = llama_rope ? b.vector_permuted(p + "attn_q.bias", q, stored_row) : b.vector(p + "attn_q.bias", q);
      L.bk = llama_rope ? b.vector_permuted(p + "attn_k.bias", kv, stored_row) : b.vector(p + "attn_k.bias", kv);
      L.bv = b.vector(p + "attn_v.bias", kv);
    }
    if (c.o_bias) L.bo = b.vector(p + "attn_output.bias", d);
    if (c.qk_norm != QKNorm::None) {
      const bool per_head = c.qk_norm == QKNorm::PerHead;
      L.q_norm = b.vector(p + "attn_q_norm.weight", per_head ? hd : q);
      L.k_norm = b.vector(p + "attn_k_norm.weight", per_head ? hd : kv);
    }
    L.is_moe = c.layer_is_moe[size_t(i)];
    if (!L.is_moe) {
      L.dense = bind_mlp(b, p, ".weight", d, c.dense_ffn, FfnSlice{0, c.dense_ffn});
      continue;
    }
    bind_stacked_experts(c, b, i, p, L);
    if (gpt_oss) bind_gguf_gpt_oss_extras(c, b, p, L);
    if (c.shared_expert_ffn > 0) {
      L.shared_expert = bind_mlp(b, p, "_shexp.weight", d, c.shared_expert_ffn, b.share().ffn_slice(c.shared_expert_ffn));
      // Stored [d_model] by llama.cpp's loader's count, [1, d_model] as the converter writes torch's shape.
      const std::string sg = p + "ffn_gate_inp_shexp.weight";
      const std::vector<int64_t> stored = b.shape_of(sg).size() == 2 ? std::vector<int64_t>{1, d} : std::vector<int64_t>{d};
      L.shared_expert_gate = b.matrix_as(sg, 1, d, stored);
    }
  }
}

}  // namespace moep
