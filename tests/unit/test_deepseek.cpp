// DeepSeek-V2/V3 pieces against scalar definitions: multi-head latent attention with absorbed projections and its
// compressed cache vs plain attention over the decompressed keys and values; group-limited routing vs a
// sort-based definition; float8_e4m3fn decoding vs hand values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <numeric>

#include <filesystem>

#include "core/error.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "model/model.h"
#include "model/rope.h"
#include "model/weights.h"
#include "moe/router.h"
#include "perf/model_shape.h"
#include "comm/communicator.h"
#include "runtime/engine.h"
#include "runtime/mla_attention.h"
#include "test_util.h"

namespace moep {
namespace {

ModelConfig mla_config(int64_t q_lora, bool interleave) {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.d_model = 40;
  c.n_layers = 2;
  c.n_heads = 3;
  c.n_kv_heads = 3;
  c.norm_eps = 1e-6f;
  c.mla.q_lora_rank = q_lora;
  c.mla.kv_lora_rank = 12;
  c.mla.qk_nope_head_dim = 6;
  c.mla.qk_rope_head_dim = 4;
  c.mla.v_head_dim = 5;
  c.mla.rope_interleave = interleave;
  c.mla.softmax_scale = 0.37;
  c.head_dim = c.mla.qk_head_dim();
  c.rope_theta = 10000.0;
  return c;
}

MatRef mat(const std::vector<float>& v, int64_t rows, int64_t cols) {
  return MatRef{v.data(), DType::F32, rows, cols, cols};
}

// y = W x for W [rows, cols].
std::vector<double> matvec(const std::vector<float>& W, int64_t rows, int64_t cols, const double* x) {
  std::vector<double> y(size_t(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) y[size_t(r)] += double(W[size_t(r * cols + k)]) * x[k];
  return y;
}

std::vector<double> rmsnorm_d(const std::vector<double>& x, const std::vector<float>& w) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / double(x.size()) + 1e-6);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
  return y;
}

// transformers' rotation: interleaved (de-interleave, then rotate_half) or rotate_half, on a copy.
std::vector<double> rope_d(const double* x, int64_t d, const float* cs, const float* sn, bool interleave) {
  std::vector<double> in(x, x + d), out(static_cast<size_t>(d));
  if (interleave) {
    for (int64_t i = 0; i < d / 2; ++i) {
      in[size_t(i)] = x[2 * i];
      in[size_t(d / 2 + i)] = x[2 * i + 1];
    }
  }
  for (int64_t i = 0; i < d / 2; ++i) {
    out[size_t(i)] = in[size_t(i)] * cs[i] - in[size_t(d / 2 + i)] * sn[i];
    out[size_t(d / 2 + i)] = in[size_t(d / 2 + i)] * cs[i] + in[size_t(i)] * sn[i];
  }
  return out;
}

void check_mla(int64_t q_lora, bool interleave) {
  const ModelConfig c = mla_config(q_lora, interleave);
  const MlaShape& m = c.mla;
  const int64_t d = c.d_model, H = c.n_heads, qk = m.qk_head_dim(), lora = m.kv_lora_rank, rot = m.qk_rope_head_dim,
                nope = m.qk_nope_head_dim, vd = m.v_head_dim, T = 7;
  EngineLimits lim{8, 2, 16};
  uint32_t seed = 11;
  auto rnd = [&](int64_t n, float s = 0.4f) { return test::random_floats(size_t(n), seed++, -s, s); };
  std::vector<float> q_a = rnd(std::max<int64_t>(q_lora, 1) * d), q_a_norm = rnd(std::max<int64_t>(q_lora, 1), 1.f),
                     q_b = rnd(H * qk * std::max<int64_t>(q_lora, 1)), wq = rnd(H * qk * d),
                     kv_a = rnd((lora + rot) * d), kv_a_norm = rnd(lora, 1.f), kv_b = rnd(H * (nope + vd) * lora),
                     wo = rnd(d * H * vd);
  for (auto& x : q_a_norm) x += 1.2f;
  for (auto& x : kv_a_norm) x += 1.2f;
  LayerWeights L;
  if (q_lora > 0) {
    L.q_a = mat(q_a, q_lora, d);
    L.q_a_norm = VecRef{q_a_norm.data(), DType::F32, q_lora};
    L.q_b = mat(q_b, H * qk, q_lora);
  } else {
    L.wq = mat(wq, H * qk, d);
  }
  L.kv_a = mat(kv_a, lora + rot, d);
  L.kv_a_norm = VecRef{kv_a_norm.data(), DType::F32, lora};
  L.kv_b = mat(kv_b, H * (nope + vd), lora);
  L.wo = mat(wo, d, H * vd);

  ThreadPool pool(3);
  MlaAttention mla(c, lim);
  ASSERT_EQ(mla.cache_floats_per_position(), lora + rot);
  ASSERT_EQ(mla.cache_bytes(), size_t(c.n_layers * lim.n_slots * lim.max_ctx * (lora + rot)) * sizeof(float));

  const std::vector<float> h = rnd(T * d, 1.f);
  // Layer 1, slot 1: the first 4 positions in one call, the other 3 one at a time (decode).
  std::vector<BatchRow> rows(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) rows[size_t(t)] = {0, 1, int32_t(t), true};
  std::vector<float> out(size_t(T * d));
  mla.forward(pool, L, 1, std::span<const BatchRow>(rows.data(), 4), h.data(), out.data());
  for (int64_t t = 4; t < T; ++t)
    mla.forward(pool, L, 1, std::span<const BatchRow>(&rows[size_t(t)], 1), &h[size_t(t * d)], &out[size_t(t * d)]);

  // The definition: decompressed keys [k_nope_h | k_rot] and values per head, softmax over positions ≤ t.
  std::vector<float> cs(size_t(lim.max_ctx * rot / 2)), sn(cs.size());
  rope_tables(c.rope_theta, c.rope_scaling, rot, lim.max_ctx, cs.data(), sn.data());
  std::vector<std::vector<double>> K(static_cast<size_t>(T)), V(static_cast<size_t>(T)), Q(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> x(&h[size_t(t * d)], &h[size_t(t * d)] + d);
    std::vector<double> q;
    if (q_lora > 0) {
      auto qa = rmsnorm_d(matvec(q_a, q_lora, d, x.data()), q_a_norm);
      q = matvec(q_b, H * qk, q_lora, qa.data());
    } else {
      q = matvec(wq, H * qk, d, x.data());
    }
    auto kv = matvec(kv_a, lora + rot, d, x.data());
    auto lat = rmsnorm_d(std::vector<double>(kv.begin(), kv.begin() + lora), kv_a_norm);
    // The cache holds exactly the normalized latent and the roped key.
    auto krot = rope_d(kv.data() + lora, rot, &cs[size_t(t * rot / 2)], &sn[size_t(t * rot / 2)], interleave);
    const float* cached = mla.cache_at(1, 1, t);
    for (int64_t i = 0; i < lora; ++i) EXPECT_NEAR(cached[i], lat[size_t(i)], 1e-5) << "latent " << i;
    {
      // Stored in the checkpoint's pair layout: compare the dot-product-invariant norm and, de-interleaved, values.
      std::vector<double> got(cached + lora, cached + lora + rot), want = krot;
      if (interleave) {
        std::vector<double> g2(static_cast<size_t>(rot));
        for (int64_t i = 0; i < rot / 2; ++i) {
          g2[size_t(i)] = got[size_t(2 * i)];
          g2[size_t(rot / 2 + i)] = got[size_t(2 * i + 1)];
        }
        got = g2;
      }
      for (int64_t i = 0; i < rot; ++i) EXPECT_NEAR(got[size_t(i)], want[size_t(i)], 1e-5) << "k_rot " << i;
    }
    auto kvb = matvec(kv_b, H * (nope + vd), lora, lat.data());
    K[size_t(t)].resize(size_t(H * qk));
    V[size_t(t)].resize(size_t(H * vd));
    Q[size_t(t)].resize(size_t(H * qk));
    for (int64_t hh = 0; hh < H; ++hh) {
      for (int64_t i = 0; i < nope; ++i) {
        K[size_t(t)][size_t(hh * qk + i)] = kvb[size_t(hh * (nope + vd) + i)];
        Q[size_t(t)][size_t(hh * qk + i)] = q[size_t(hh * qk + i)];
      }
      for (int64_t i = 0; i < vd; ++i) V[size_t(t)][size_t(hh * vd + i)] = kvb[size_t(hh * (nope + vd) + nope + i)];
      auto qr = rope_d(&q[size_t(hh * qk + nope)], rot, &cs[size_t(t * rot / 2)], &sn[size_t(t * rot / 2)], interleave);
      for (int64_t i = 0; i < rot; ++i) {
        K[size_t(t)][size_t(hh * qk + nope + i)] = krot[size_t(i)];
        Q[size_t(t)][size_t(hh * qk + nope + i)] = qr[size_t(i)];
      }
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> a(size_t(H * vd), 0.0);
    for (int64_t hh = 0; hh < H; ++hh) {
      std::vector<double> s(size_t(t + 1));
      for (int64_t p = 0; p <= t; ++p) {
        double dot = 0;
        for (int64_t i = 0; i < qk; ++i) dot += Q[size_t(t)][size_t(hh * qk + i)] * K[size_t(p)][size_t(hh * qk + i)];
        s[size_t(p)] = dot * m.softmax_scale;
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (auto& v : s) sum += (v = std::exp(v - mx));
      for (int64_t p = 0; p <= t; ++p)
        for (int64_t i = 0; i < vd; ++i) a[size_t(hh * vd + i)] += s[size_t(p)] / sum * V[size_t(p)][size_t(hh * vd + i)];
    }
    auto want = matvec(wo, d, H * vd, a.data());
    std::vector<float> wf(want.begin(), want.end());
    EXPECT_LE(test::rel_l2(&out[size_t(t * d)], wf.data(), size_t(d)), 1e-5) << "position " << t;
  }
}

TEST(Mla, AbsorbedAttentionWithLatentCacheEqualsDecompressedAttention) {
  check_mla(8, true);    // q_lora_rank, interleaved rope (DeepSeek-V3)
  check_mla(0, true);    // q_proj (DeepSeek-V2-Lite)
  check_mla(8, false);   // rotate_half rope
}

// The definition of DeepSeek's routing, by sorting.
void route_reference(const ModelConfig& c, const std::vector<float>& logits, const std::vector<float>& bias,
                     std::vector<int32_t>& ids, std::vector<double>& w) {
  const int64_t E = c.n_experts;
  std::vector<double> s(static_cast<size_t>(E)), choice(static_cast<size_t>(E));
  if (c.router_scoring == RouterScoring::Sigmoid) {
    for (int64_t e = 0; e < E; ++e) s[size_t(e)] = 1.0 / (1.0 + std::exp(-double(logits[size_t(e)])));
  } else {
    double mx = *std::max_element(logits.begin(), logits.end()), sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += s[size_t(e)] = std::exp(double(logits[size_t(e)]) - mx);
    for (auto& v : s) v /= sum;
  }
  for (int64_t e = 0; e < E; ++e) choice[size_t(e)] = s[size_t(e)] + (bias.empty() ? 0.0 : bias[size_t(e)]);
  if (c.group_score != GroupScore::None) {
    const int64_t G = c.n_group, per = E / G;
    std::vector<std::pair<double, int64_t>> gs;
    for (int64_t g = 0; g < G; ++g) {
      std::vector<double> x(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      std::sort(x.rbegin(), x.rend());
      gs.push_back({c.group_score == GroupScore::Max ? x[0] : x[0] + x[1], g});
    }
    std::stable_sort(gs.begin(), gs.end(), [](auto& a, auto& b) { return a.first > b.first; });
    for (size_t i = size_t(c.topk_group); i < gs.size(); ++i)
      for (int64_t k = 0; k < per; ++k) choice[size_t(gs[i].second * per + k)] = 0.0;
  }
  std::vector<int32_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return choice[size_t(a)] > choice[size_t(b)]; });
  ids.assign(order.begin(), order.begin() + c.top_k);
  w.clear();
  double sum = 0;
  for (int32_t i : ids) sum += s[size_t(i)];
  for (int32_t i : ids)
    w.push_back(s[size_t(i)] / (c.topk_norm == TopKNorm::Sum ? sum + 1e-20 : 1.0) * c.routed_scaling_factor);
}

TEST(DeepseekRouting, GroupLimitedTopKEqualsTheDefinition) {
  for (int variant = 0; variant < 3; ++variant) {
    ModelConfig c;
    c.n_experts = 32;
    c.top_k = 6;
    if (variant == 0) {  // V3: sigmoid, bias, top-2 sum of 8 groups, 3 kept, normalized, scaled
      c.router_scoring = RouterScoring::Sigmoid;
      c.router_choice_bias = true;
      c.group_score = GroupScore::Top2Sum;
      c.n_group = 8;
      c.topk_group = 3;
      c.topk_norm = TopKNorm::Sum;
      c.routed_scaling_factor = 2.5;
    } else if (variant == 1) {  // V2 group_limited_greedy
      c.group_score = GroupScore::Max;
      c.n_group = 4;
      c.topk_group = 2;
      c.routed_scaling_factor = 16.0;
    } else {  // V2 greedy
      c.routed_scaling_factor = 1.5;
    }
    for (uint32_t seed = 1; seed <= 50; ++seed) {
      std::vector<float> logits = test::random_floats(size_t(c.n_experts), seed * 7 + uint32_t(variant), -3.f, 3.f);
      std::vector<float> bias;
      if (c.router_choice_bias) bias = test::random_floats(size_t(c.n_experts), seed * 13, -0.3f, 0.3f);
      std::vector<int32_t> want_ids;
      std::vector<double> want_w;
      route_reference(c, logits, bias, want_ids, want_w);
      std::vector<float> scratch(size_t(c.n_experts + c.n_group)), w(size_t(c.top_k));
      std::vector<int32_t> ids(size_t(c.top_k));
      const VecRef b = bias.empty() ? VecRef{} : VecRef{bias.data(), DType::F32, c.n_experts};
      route_token_grouped(c, logits.data(), b, scratch.data(), ids.data(), w.data());
      EXPECT_EQ(ids, want_ids) << "variant " << variant << " seed " << seed;
      for (int64_t i = 0; i < c.top_k; ++i) EXPECT_NEAR(w[size_t(i)], want_w[size_t(i)], 1e-5 * want_w[size_t(i)]);
    }
  }
}

TEST(Fp8, E4m3DecodesAsDefined) {
  EXPECT_EQ(fp8_e4m3_to_f32(0x00), 0.f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x38), 1.f);         // exponent 7, mantissa 0
  EXPECT_EQ(fp8_e4m3_to_f32(0x3C), 1.5f);        // mantissa 4/8
  EXPECT_EQ(fp8_e4m3_to_f32(0xC0), -2.f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x7E), 448.f);       // the largest: 1.75 · 2^8
  EXPECT_EQ(fp8_e4m3_to_f32(0x08), 0.015625f);   // the smallest normal: 2^-6
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), 0.001953125f);  // the smallest subnormal: 2^-9
  EXPECT_EQ(fp8_e4m3_to_f32(0x07), 7.f / 512.f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0xFF)));
  EXPECT_EQ(fp8_e4m3_to_f32(0x77), 240.f);       // 1.875 · 2^7
}

// The FP8 fixture rewritten without one tensor (or with a scale of the wrong shape) is refused, naming it.
void rewrite_fp8_fixture(const std::string& dir, const std::string& drop, const std::string& reshape) {
  const std::string src = test::fixture_dir("deepseek_v3_fp8");
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
  const SafetensorsIndex idx = SafetensorsIndex::open(src);
  std::vector<TensorToWrite> out;
  for (const auto& [name, t] : idx.tensors()) {
    if (name == drop) continue;
    TensorToWrite w{name, t.dtype_name, t.shape, t.nbytes, nullptr};
    const TensorInfo* ti = &t;
    w.fill = [ti](uint8_t* o) { std::memcpy(o, ti->data, ti->nbytes); };
    if (name == reshape) w.shape = {t.shape[1], t.shape[0]};
    out.push_back(std::move(w));
  }
  write_safetensors(dir + "/model.safetensors", out);
}

TEST(Fp8, MissingOrMisshapenScalesAreRefusedByName) {
  const std::string w = "model.layers.0.mlp.down_proj.weight";  // [160, 96]: scales [2, 1]
  {
    test::TempDir d;
    rewrite_fp8_fixture(d.str(), w + "_scale_inv", "");
    try {
      Model::load(d.str());
      FAIL() << "loaded without " << w << "_scale_inv";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(w + "_scale_inv"), std::string::npos) << e.what();
    }
  }
  {
    test::TempDir d;
    rewrite_fp8_fixture(d.str(), "", w + "_scale_inv");
    try {
      Model::load(d.str());
      FAIL() << "loaded with scales of shape [1, 2]";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[2, 1]"), std::string::npos) << e.what();
    }
  }
}

// Dequantized at load: every FP8 weight equals its fp8 byte times its block's scale (f32 config: exact).
TEST(Fp8, DequantizedWeightsAreValueTimesBlockScale) {
  const std::string dir = test::fixture_dir("deepseek_v3_fp8");
  const SafetensorsIndex idx = SafetensorsIndex::open(dir);
  auto model = Model::load(dir);
  const MatRef& wo = model->weights().layers[0].wo;  // o_proj [160, 64]
  const TensorInfo& q = idx.tensors().at("model.layers.0.self_attn.o_proj.weight");
  const TensorInfo& sc = idx.tensors().at("model.layers.0.self_attn.o_proj.weight_scale_inv");
  ASSERT_EQ(wo.dtype, DType::F32);
  ASSERT_EQ(sc.shape, (std::vector<int64_t>{2, 1}));
  const float* sp = reinterpret_cast<const float*>(sc.data);
  for (int64_t r = 0; r < 160; ++r)
    for (int64_t c = 0; c < 64; ++c) {
      const float want = fp8_e4m3_to_f32(q.data[r * 64 + c]) * sp[r / 128];
      ASSERT_EQ(static_cast<const float*>(wo.data)[r * wo.row_stride + c], want) << r << "," << c;
    }
}

// The performance model counts MLA's projections, its latent cache and absorbed attention's multiply-adds.
TEST(Mla, PerformanceModelKnowsItsShape) {
  const ModelConfig c = load_model_config(test::fixture_dir("deepseek_v3_f32"));
  ASSERT_TRUE(c.is_mla());
  const perf::ModelShape s = perf::shape_from_config(c, "ds");
  // d 64, 4 heads, q_lora 48, kv_lora 32, nope 16, rope 8, v 16.
  EXPECT_EQ(s.attn_matrices, (std::vector<int64_t>{64 * 48, 48 * 4 * 24, 64 * 40, 32 * 4 * 32, 4 * 16 * 64}));
  EXPECT_EQ(s.kv_elems_per_pos, 40);
  EXPECT_EQ(s.attn_macs_per_pos, 4 * (40 + 32));
  EXPECT_EQ(s.shared_elems, 3 * 64 * 32);      // one ungated shared expert of 32
  EXPECT_EQ(s.router_elems, 16 * 64 + 16);     // + e_score_correction_bias
}

// The engine's cache for an MLA model: (kv_lora_rank + qk_rope_head_dim) f32 per layer and position, nothing else.
TEST(Mla, EngineCacheHoldsOnlyLatentAndRopeKey) {
  EngineOptions o;
  o.model_dir = test::fixture_dir("deepseek_v2_f32");
  o.threads = 1;
  o.limits = {4, 3, 32};
  auto engine = Engine::create(o, std::make_unique<LocalCommunicator>());
  const ModelConfig& c = engine->config();
  const Transformer& tr = engine->transformer();
  ASSERT_NE(tr.mla(), nullptr);
  EXPECT_EQ(tr.mla()->cache_floats_per_position(), c.mla.kv_lora_rank + c.mla.qk_rope_head_dim);
  EXPECT_EQ(tr.kv_cache_bytes_per_token(), size_t(c.n_layers * (32 + 8)) * sizeof(float));
  EXPECT_EQ(tr.kv_cache_bytes(), size_t(c.n_layers * 3 * 32 * (32 + 8)) * sizeof(float));
}

}  // namespace
}  // namespace moep
