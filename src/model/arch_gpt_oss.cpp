// gpt-oss (openai/gpt-oss-20b, gpt-oss-120b).
//  - Attention: biases on q, k, v and o; explicit head_dim; a learned sink logit per query head joining every
//    softmax (self_attn.sinks [n_heads]); layer_types alternating "sliding_attention" (a window of sliding_window
//    positions) and "full_attention"; YaRN RoPE.
//  - Experts fused per layer in transformers' layout, (in, out) orientation, gate and up interleaved:
//    mlp.experts.gate_up_proj [E, d, 2·ffn] (gate = [..., 0::2], up = [..., 1::2]), gate_up_proj_bias [E, 2·ffn],
//    down_proj [E, ffn, d], down_proj_bias [E, d]. The published MXFP4 checkpoints hold gate_up_proj_blocks
//    [E, 2·ffn, d/32, 16] and gate_up_proj_scales [E, 2·ffn, d/32] (the (out, in) orientation, rows interleaved
//    gate/up), and likewise down_proj_{blocks,scales} [E, d, ffn/32, 16], [E, d, ffn/32].
//  - Router mlp.router.weight [E, d] + bias: top-k of the logits, softmax over the k (= softmax over all, top-k,
//    renormalized: TopKNorm::Sum). Clamped SwiGLU (swiglu_limit, alpha 1.702, (up + 1)). RMSNorm; untied head.
//
// Loading: gate and up are made at load as [slice, d] matrices (out, in): transposed in the stored dtype from the
// bf16/f32 layout, or from MXFP4 as DType::MXFP4 (ggml's block layout, core/quant.h: each 32-value block's scale
// byte, then its 16 bytes of codes re-paired, core/mxfp4.h's mxfp4_to_ggml_blocks; every value the same, so the
// logits differ from those of a bf16 decoding only in the kernels' order of additions). down is read in place
// ((in, out) rows, down_in_out) from bf16/f32, or made as DType::MXFP4 [d, slice] from MXFP4. So an MXFP4 expert
// takes 17 bytes per 32 weights in memory (0.53 per weight), its size on disk, and the kernels read it directly.
// down's blocks run along the ffn dimension: a rank's slice of it that does not start and end on a 32-value block
// boundary (a split placement cuts at multiples of 32 whenever ffn ≥ 32 · ranks, ExpertPlacement::ffn_slice; only
// tiny models split over more ranks cut elsewhere) gets down decoded to bf16 instead (exact; 2 bytes per weight).
#include <algorithm>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/mxfp4.h"
#include "model/arch.h"

namespace moep {

namespace {

void parse_gpt_oss(const ConfigReader& r, ModelConfig& c) {
  read_common_fields(r, c);
  c.d_model = r.get_size("hidden_size", ConfigLimits::d_model);
  c.n_layers = r.get_size("num_hidden_layers", ConfigLimits::layers);
  c.n_heads = r.get_size("num_attention_heads", ConfigLimits::heads);
  c.n_kv_heads = r.get_size("num_key_value_heads", c.n_heads, ConfigLimits::heads);
  c.vocab_size = r.get_size("vocab_size", ConfigLimits::vocab);
  if (c.n_heads <= 0) r.bad("num_attention_heads", "must be positive");
  c.head_dim = r.get_size("head_dim", c.d_model / c.n_heads, ConfigLimits::head_dim);
  c.max_position = r.get_int("max_position_embeddings", 131072);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = float(r.get_double("rms_norm_eps", 1e-5));
  c.rope_theta = read_rope(r, 150000.0, &c.rope_scaling);
  c.n_experts = r.get_size_any({"num_local_experts", "num_experts"}, ConfigLimits::experts);
  c.top_k = r.get_size_any({"num_experts_per_tok", "experts_per_token"}, ConfigLimits::experts);
  c.expert_ffn = r.get_size("intermediate_size", ConfigLimits::ffn);
  c.layer_is_moe.assign(size_t(c.n_layers), true);
  c.topk_norm = TopKNorm::Sum;
  c.qkv_bias = c.o_bias = r.get_bool("attention_bias", true);
  c.attention_sinks = true;
  c.router_bias = c.expert_bias = true;
  c.swiglu_limit = r.get_double("swiglu_limit", 7.0);
  if (!(c.swiglu_limit > 0)) r.bad("swiglu_limit", "must be positive");
  c.swiglu_alpha = 1.702;

  const int64_t window = r.get_size("sliding_window", 128, int64_t(1) << 40);
  c.layer_window.assign(size_t(c.n_layers), 0);
  if (r.has("layer_types")) {
    const auto& types = r.raw()["layer_types"];
    if (!types.is_array() || int64_t(types.size()) != c.n_layers)
      r.bad("layer_types", "must be a list of " + std::to_string(c.n_layers) + " layer types");
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const auto& t = types[size_t(i)];
      const std::string s = t.is_string() ? t.get<std::string>() : t.dump();
      if (s == "sliding_attention")
        c.layer_window[size_t(i)] = window;
      else if (s != "full_attention")
        r.bad("layer_types", "holds '" + s + "'; expected 'sliding_attention' or 'full_attention'");
    }
  } else {
    for (int64_t i = 0; i < c.n_layers; ++i) c.layer_window[size_t(i)] = (i % 2 == 0) ? window : 0;
  }
  for (int64_t w : c.layer_window)
    if (w != 0 && window <= 0) r.bad("sliding_window", "must be positive");

  if (r.has("quantization_config")) {
    const ConfigReader q = r.sub("quantization_config");
    const std::string method = q.get_string("quant_method", "");
    if (method != "mxfp4")
      q.bad("quant_method", "is '" + method + "'; gpt-oss checkpoints are read unquantized (bf16, f32) or as mxfp4");
  }
}

// fn(r0, r1) over [0, rows) in blocks on the machine's threads (load-time conversions of an expert: a
// gpt-oss-120b rank decodes up to 10^11 values), each row written by one thread; one thread for small matrices.
void for_row_blocks(int64_t rows, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t threads = std::clamp<int64_t>(int64_t(std::thread::hardware_concurrency()), 1, 64);
  const int64_t n = std::min(threads, rows / 64);
  if (n <= 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < n; ++t) pool.emplace_back(fn, rows * t / n, rows * (t + 1) / n);
  for (auto& th : pool) th.join();
}

// Binds layer i's experts that the rank holds (each its ffn slice), the others skipped.
void bind_experts(const ModelConfig& c, WeightBinder& b, int64_t layer, const std::string& p, LayerWeights& L) {
  const int64_t E = c.n_experts, d = c.d_model, f = c.expert_ffn;
  const std::string gu = p + "gate_up_proj", dn = p + "down_proj";
  const bool mxfp4 = b.has(gu + "_blocks") || b.has(dn + "_blocks");
  if (mxfp4 && (d % kMxfp4BlockValues != 0 || f % kMxfp4BlockValues != 0))
    fail("tensor '", gu, "_blocks': MXFP4 needs hidden_size (", d, ") and intermediate_size (", f,
         ") to be multiples of 32");
  // Stored tensors, shapes checked (nullptr in recording mode).
  const TensorInfo *gate_up = nullptr, *gu_blocks = nullptr, *gu_scales = nullptr,
                   *dn_blocks = nullptr, *dn_scales = nullptr;
  if (mxfp4) {
    gu_blocks = b.tensor(gu + "_blocks", {E, 2 * f, d / 32, 16}, "U8");
    gu_scales = b.tensor(gu + "_scales", {E, 2 * f, d / 32}, "U8");
    dn_blocks = b.tensor(dn + "_blocks", {E, d, f / 32, 16}, "U8");
    dn_scales = b.tensor(dn + "_scales", {E, d, f / 32}, "U8");
  } else {
    gate_up = b.tensor(gu, {E, d, 2 * f});
  }
  const TensorInfo* gu_bias = b.tensor(gu + "_bias", {E, 2 * f});
  const TensorInfo* dn_bias = b.tensor(dn + "_bias", {E, d});
  if (!mxfp4) b.skip(dn, {E, f, d});  // read per expert below (slab_rows), marked used here for every rank

  auto value = [](const TensorInfo* t, int64_t i) {
    return VecRef{t->data, t->dtype, t->numel()}.at(i);
  };
  L.experts.resize(size_t(E));
  const FfnSlice sl = b.share().ffn_slice(f);
  const int64_t f0 = sl.first, n = sl.count;
  for (int64_t e = 0; e < E; ++e) {
    if (!b.share().holds(layer, e)) continue;
    ExpertWeights& x = L.experts[size_t(e)];
    x.local = true;
    const std::string key = gu + "#" + std::to_string(e) + "#" + std::to_string(f0) + "+" + std::to_string(n);
    // Row r of the gate (parity 0) or up (parity 1) slice is column / row 2 (f0 + r) + parity of gate_up.
    auto make_gate_up = [&](int parity) -> MatRef {
      const std::string k = key + (parity ? "#up" : "#gate");
      if (mxfp4) {
        const int64_t nb = d / kMxfp4BlockValues;
        const size_t row_bytes = dtype_row_bytes(DType::MXFP4, d);
        return b.made_matrix(k, DType::MXFP4, n, d, [&, parity, nb, row_bytes](uint8_t* dst) {
          for_row_blocks(n, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
              const int64_t src = e * 2 * f + 2 * (f0 + r) + parity;
              mxfp4_to_ggml_blocks(gu_blocks->data + src * nb * kMxfp4BlockBytes, gu_scales->data + src * nb, nb,
                                   dst + size_t(r) * row_bytes);
            }
          });
        });
      }
      if (!gate_up) return {};  // recording mode
      const DType dt = gate_up->dtype;
      const size_t es = dtype_size(dt);
      return b.made_matrix(k, dt, n, d, [&, parity, es](uint8_t* dst) {
        const uint8_t* base = gate_up->data + size_t(e) * size_t(d * 2 * f) * es;
        for_row_blocks(n, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t i = 0; i < d; ++i)
              std::memcpy(dst + size_t(r * d + i) * es, base + size_t(i * 2 * f + 2 * (f0 + r) + parity) * es, es);
        });
      });
    };
    x.gate = make_gate_up(0);
    x.up = make_gate_up(1);
    if (mxfp4 && f0 % kMxfp4BlockValues == 0 && n % kMxfp4BlockValues == 0) {
      // Row r: blocks [f0 / 32, (f0 + n) / 32) of down's row r.
      const int64_t nb = f / kMxfp4BlockValues, first = f0 / kMxfp4BlockValues, count = n / kMxfp4BlockValues;
      const size_t row_bytes = dtype_row_bytes(DType::MXFP4, n);
      x.down = b.made_matrix(key + "#down", DType::MXFP4, d, n, [&, nb, first, count, row_bytes](uint8_t* dst) {
        for_row_blocks(d, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t src = (e * d + r) * nb + first;
            mxfp4_to_ggml_blocks(dn_blocks->data + src * kMxfp4BlockBytes, dn_scales->data + src, count,
                                 dst + size_t(r) * row_bytes);
          }
        });
      });
    } else if (mxfp4) {
      // A slice that cuts blocks (see the top of the file): bf16, exact.
      const int64_t nb = f / kMxfp4BlockValues;
      x.down = b.made_matrix(key + "#down", DType::BF16, d, n, [&](uint8_t* dst) {
        auto* out = reinterpret_cast<uint16_t*>(dst);
        for_row_blocks(d, [&](int64_t r0, int64_t r1) {
          std::vector<float> row(static_cast<size_t>(n));
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t src = e * d + r;
            mxfp4_decode(dn_blocks->data + src * nb * kMxfp4BlockBytes, dn_scales->data + src * nb, f0, n, row.data());
            for (int64_t i = 0; i < n; ++i) out[r * n + i] = f32_to_bf16(row[size_t(i)]);
          }
        });
      });
    } else {
      x.down = b.slab_rows(dn, E, f, d, e, f0, n);
      x.down_in_out = true;
    }
    // Biases: this slice's gate and up elements; down's on the slice that starts the ffn dimension only.
    auto make_bias = [&](int parity) {
      return b.made_vector(key + (parity ? "#up_bias" : "#gate_bias"), n, [&, parity](float* out) {
        for (int64_t r = 0; r < n; ++r) out[r] = value(gu_bias, e * 2 * f + 2 * (f0 + r) + parity);
      });
    };
    x.gate_bias = make_bias(0);
    x.up_bias = make_bias(1);
    if (f0 == 0)
      x.down_bias = b.made_vector(key + "#down_bias", d, [&](float* out) {
        for (int64_t i = 0; i < d; ++i) out[i] = value(dn_bias, e * d + i);
      });
  }
}

void bind_gpt_oss(const ModelConfig& c, WeightBinder& b, ModelWeights& w) {
  bind_llama_outer(c, b, w);
  w.layers.resize(size_t(c.n_layers));
  const int64_t group = c.n_heads / c.n_kv_heads;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    L.attn_norm_w = b.vector(p + "input_layernorm.weight", c.d_model);
    L.ffn_norm_w = b.vector(p + "post_attention_layernorm.weight", c.d_model);
    bind_llama_attention(c, b, p + "self_attn.", L);
    // This rank's query heads' sinks (all of them unless attention is split).
    L.sinks = b.vector(p + "self_attn.sinks", c.n_heads).slice(w.kv_heads.first * group, w.kv_heads.count * group);
    L.is_moe = true;
    L.router = b.matrix(p + "mlp.router.weight", c.n_experts, c.d_model);
    L.router_bias = b.vector(p + "mlp.router.bias", c.n_experts);
    bind_experts(c, b, i, p + "mlp.experts.", L);
  }
}

}  // namespace

const ArchSpec kGptOssArch{"gpt_oss", parse_gpt_oss, bind_gpt_oss};

}  // namespace moep
