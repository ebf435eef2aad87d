#include "model/gguf_model.h"

#include <algorithm>

#include "core/error.h"
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
    t.dtype = dtype_of_ggml(g.type);
    t.dtype_name = dtype_name(t.dtype);
    t.dtype_supported = true;  // GgufFile::open refuses every type moep does not read, naming the tensor
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

}  // namespace

void bind_gguf_weights(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  const int64_t d = c.d_model, q = c.q_dim(), kv = c.kv_dim(), hd = c.head_dim, E = c.n_experts, f = c.expert_ffn;
  const bool dbrx = c.model_type == "dbrx";
  const bool llama_rope = c.model_type == "mixtral";
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
    const std::string ffn_norm = p + (dbrx ? "attn_output_norm" : "ffn_norm");
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
