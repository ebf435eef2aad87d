// gpt-oss's pieces against scalar definitions on fresh random inputs: attention with a sink logit per head (and
// the sliding window the transformer makes by offsetting the sequence), the clamped SwiGLU, MXFP4 decoding against
// hand-computed values and its repacking into ggml's blocks, the router (top-k of biased logits, softmax over the
// k), the config reader, and the MXFP4 fixture's experts as loaded (ggml's MXFP4 blocks, sliced per rank).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/mxfp4.h"
#include "core/quant.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/model.h"
#include "moe/placement.h"
#include "moe/router.h"
#include "test_util.h"

namespace moep {
namespace {

// softmax over [scores over positions first..first+n-1, sink], the sink's weight dropped, in double.
std::vector<double> sink_attention_definition(const float* q, const float* keys, const float* values,
                                              int64_t stride, int64_t first, int64_t n, int64_t hd, double scale,
                                              double sink) {
  std::vector<double> s(static_cast<size_t>(n));
  double m = sink;
  for (int64_t j = 0; j < n; ++j) {
    double dot = 0;
    for (int64_t i = 0; i < hd; ++i) dot += double(q[i]) * keys[(first + j) * stride + i];
    s[size_t(j)] = dot * scale;
    m = std::max(m, s[size_t(j)]);
  }
  double total = std::exp(sink - m);
  for (double& x : s) total += (x = std::exp(x - m));
  std::vector<double> out(static_cast<size_t>(hd), 0.0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < hd; ++i) out[size_t(i)] += s[size_t(j)] / total * values[(first + j) * stride + i];
  return out;
}

TEST(GptOss, AttentionWithSinksAndWindowsMatchesTheDefinition) {
  const int64_t H = 4, KVH = 2, hd = 16, P = 40, stride = KVH * hd;
  const float scale = 1.f / std::sqrt(float(hd));
  const auto keys = test::random_floats(size_t(P * stride), 11, -1.f, 1.f);
  const auto values = test::random_floats(size_t(P * stride), 12, -1.f, 1.f);
  ThreadPool pool(3);
  for (int trial = 0; trial < 4; ++trial) {
    const auto q = test::random_floats(size_t(3 * H * hd), 20 + trial, -3.f, 3.f);
    // Sinks from well below to well above the scores (a large sink takes most of the weight).
    const auto sinks = test::random_floats(size_t(H), 30 + trial, -4.f, 6.f);
    const int64_t window = trial % 2 ? 8 : 0;
    std::vector<ops::AttentionRow> rows;
    const int64_t pos[3] = {0, 5 + trial, P - 1};
    int64_t firsts[3];
    for (int t = 0; t < 3; ++t) {
      const int64_t n = window > 0 ? std::min(window, pos[t] + 1) : pos[t] + 1;
      firsts[t] = pos[t] + 1 - n;
      rows.push_back({{keys.data() + firsts[t] * stride, values.data() + firsts[t] * stride, stride}, n});
    }
    const kernels::AttentionShape shape{H, KVH, hd, scale};
    std::vector<float> scratch(ops::attention_scratch_floats(3, shape)), out(size_t(3 * H * hd));
    ops::attention(pool, shape, q.data(), rows.data(), 3, scratch.data(), out.data(), sinks.data());
    for (int t = 0; t < 3; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / (H / KVH);
        const auto want = sink_attention_definition(q.data() + (t * H + h) * hd, keys.data() + g * hd,
                                                    values.data() + g * hd, stride, firsts[t], rows[size_t(t)].n_positions,
                                                    hd, scale, sinks[size_t(h)]);
        float ref[hd];
        kernels::attention_head_reference(q.data() + (t * H + h) * hd, rows[size_t(t)].kv, g,
                                          rows[size_t(t)].n_positions, hd, scale, ref, sinks[size_t(h)]);
        for (int64_t i = 0; i < hd; ++i) {
          EXPECT_NEAR(out[size_t((t * H + h) * hd + i)], want[size_t(i)], 2e-5) << t << " " << h << " " << i;
          EXPECT_NEAR(ref[i], want[size_t(i)], 1e-6);
        }
      }
  }
}

TEST(GptOss, ASinkOnlyScalesTheOutputDown) {
  // One position: without a sink the output is its value; with sink s it is v · 1 / (1 + e^(s - score)).
  const int64_t hd = 8;
  const auto q = test::random_floats(hd, 1), k = test::random_floats(hd, 2), v = test::random_floats(hd, 3);
  const kernels::SequenceKv kv{k.data(), v.data(), hd};
  float acc[hd], plain[hd], sunk[hd];
  kernels::attention_head(q.data(), kv, 0, 1, hd, 0.5f, acc, plain);
  kernels::attention_head(q.data(), kv, 0, 1, hd, 0.5f, acc, sunk, 1.25f);
  double score = 0;
  for (int64_t i = 0; i < hd; ++i) score += 0.5 * q[size_t(i)] * k[size_t(i)];
  const double w = 1.0 / (1.0 + std::exp(1.25 - score));
  for (int64_t i = 0; i < hd; ++i) {
    EXPECT_FLOAT_EQ(plain[i], v[size_t(i)]);
    EXPECT_NEAR(sunk[i], w * v[size_t(i)], 1e-6);
  }
}

TEST(GptOss, ClampedSwigluMatchesTheDefinition) {
  const int64_t n = 4096;
  // Wide enough that many values pass the limit of 7 on either side.
  auto g = test::random_floats(n, 5, -12.f, 12.f);
  const auto u = test::random_floats(n, 6, -12.f, 12.f);
  const auto g0 = g;
  ops::clamped_swiglu(g.data(), u.data(), n, 1.702f, 7.f);
  int clamped = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = std::min(double(g0[size_t(i)]), 7.0), b = std::clamp(double(u[size_t(i)]), -7.0, 7.0);
    clamped += g0[size_t(i)] > 7.f || std::fabs(u[size_t(i)]) > 7.f;
    const double want = (b + 1) * a / (1 + std::exp(-1.702 * a));
    EXPECT_NEAR(g[size_t(i)], want, 1e-5 * (1 + std::fabs(want))) << i;
  }
  EXPECT_GT(clamped, n / 4);
}

TEST(GptOss, Mxfp4DecodesHandComputedValues) {
  // Magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6; bit 3 the sign; scale 2^(s - 127).
  EXPECT_EQ(mxfp4_value(0x0, 127), 0.f);
  EXPECT_EQ(mxfp4_value(0x1, 127), 0.5f);
  EXPECT_EQ(mxfp4_value(0x7, 127), 6.f);
  EXPECT_EQ(mxfp4_value(0xF, 127), -6.f);
  EXPECT_EQ(mxfp4_value(0xB, 130), -1.5f * 8.f);
  EXPECT_EQ(mxfp4_value(0x5, 120), 3.f / 128.f);
  EXPECT_EQ(mxfp4_value(0x1, 0), std::ldexp(0.5f, -127));
  // Two blocks: low nibble first. Byte 0x72 of block 0 holds values 0 (code 2: 1.0) and 1 (code 7: 6.0).
  uint8_t blocks[32] = {};
  const uint8_t scales[2] = {128, 125};  // ×2, ×1/4
  blocks[0] = 0x72;
  blocks[15] = 0x9C;   // values 30 (code C: -2) and 31 (code 9: -0.5)
  blocks[16] = 0xA4;   // block 1, values 32 (code 4: 2) and 33 (code A: -1)
  float out[64];
  mxfp4_decode(blocks, scales, 0, 64, out);
  EXPECT_EQ(out[0], 2.f);
  EXPECT_EQ(out[1], 12.f);
  EXPECT_EQ(out[2], 0.f);
  EXPECT_EQ(out[30], -4.f);
  EXPECT_EQ(out[31], -1.f);
  EXPECT_EQ(out[32], 0.5f);
  EXPECT_EQ(out[33], -0.25f);
  // A part starting inside a block.
  float part[3];
  mxfp4_decode(blocks, scales, 31, 3, part);
  EXPECT_EQ(part[0], -1.f);
  EXPECT_EQ(part[1], 0.5f);
  EXPECT_EQ(part[2], -0.25f);
}

// Random safetensors blocks (every code, every scale byte) repacked into ggml's layout decode, by ggml's rules
// (dequantize_row), to the values of the safetensors decoding, but for code 8 (−0 there, +0 in ggml).
TEST(GptOss, Mxfp4RepackedIntoGgmlBlocksDecodesToTheSameValues) {
  const int64_t n_blocks = 300;
  std::vector<uint8_t> blocks(size_t(n_blocks * kMxfp4BlockBytes)), scales(static_cast<size_t>(n_blocks));
  uint32_t state = 12345;
  auto next = [&] { return uint8_t((state = state * 1664525u + 1013904223u) >> 24); };
  for (auto& b : blocks) b = next();
  for (int64_t i = 0; i < n_blocks; ++i) scales[size_t(i)] = uint8_t(i < 256 ? i : next());  // every scale byte
  std::vector<uint8_t> ggml(ggml_row_bytes(GgmlType::MXFP4, n_blocks * 32));
  mxfp4_to_ggml_blocks(blocks.data(), scales.data(), n_blocks, ggml.data());
  std::vector<float> want(size_t(n_blocks * 32)), got(want.size());
  mxfp4_decode(blocks.data(), scales.data(), 0, n_blocks * 32, want.data());
  dequantize_row(GgmlType::MXFP4, ggml.data(), got.data(), n_blocks * 32);
  int64_t minus_zero = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i], want[i]) << "value " << i;  // ±0 compare equal; so do equal infinities (scales near 255)
    if (want[i] == 0.f && std::signbit(want[i])) {
      ++minus_zero;
      EXPECT_FALSE(std::signbit(got[i])) << "value " << i << ": ggml decodes code 8 as +0";
    }
  }
  EXPECT_GT(minus_zero, 0);
}

// The published layout's experts are kept as ggml's MXFP4 blocks: 17 bytes per 32 weights. Under a split placement
// a rank's slice of down (whose blocks run along the ffn dimension of 64) is MXFP4 where it is whole blocks (2
// ranks: 32 each) and bf16 where it is not (3 ranks: 21, 21 and 22); gate and up (rows of d_model) stay MXFP4.
TEST(GptOss, Mxfp4FixtureExpertsLoadAsGgmlMxfp4Blocks) {
  const std::string dir = test::fixture_dir("gpt_oss_mxfp4");
  const ModelConfig c = load_model_config(dir);
  const int64_t d = c.d_model, f = c.expert_ffn;
  {
    LoadOptions lo;
    lo.prefault = false;
    const auto m = Model::load(dir, c, lo);
    for (const LayerWeights& L : m->weights().layers)
      for (const ExpertWeights& x : L.experts) {
        ASSERT_TRUE(x.local);
        for (const MatRef* w : {&x.gate, &x.up, &x.down}) {
          EXPECT_EQ(w->dtype, DType::MXFP4);
          EXPECT_EQ(dtype_row_bytes(w->dtype, w->cols), size_t(w->cols / 32 * 17));
        }
        EXPECT_EQ(x.gate.rows, f);
        EXPECT_EQ(x.gate.cols, d);
        EXPECT_EQ(x.down.rows, d);
        EXPECT_EQ(x.down.cols, f);
        EXPECT_FALSE(x.down_in_out);
      }
    // The attention and the router stay as stored (bf16).
    EXPECT_EQ(m->weights().layers[0].wq.dtype, DType::BF16);
    EXPECT_EQ(m->weights().layers[0].router.dtype, DType::BF16);
  }
  for (int ranks : {2, 3}) {
    const ExpertPlacement pl = ExpertPlacement::split(c.n_layers, c.n_experts, ranks);
    for (int r = 0; r < ranks; ++r) {
      SCOPED_TRACE(testing::Message() << "rank " << r << " of " << ranks);
      LoadOptions lo;
      lo.prefault = false;
      lo.share = pl.share(r);
      const auto m = Model::load(dir, c, lo);
      const FfnSlice sl = pl.ffn_slice(r, f);
      const bool whole_blocks = sl.first % 32 == 0 && sl.count % 32 == 0;
      EXPECT_EQ(whole_blocks, ranks == 2);
      const ExpertWeights& x = m->weights().layers[1].experts[3];
      EXPECT_EQ(x.gate.dtype, DType::MXFP4);
      EXPECT_EQ(x.gate.rows, sl.count);
      EXPECT_EQ(x.down.dtype, whole_blocks ? DType::MXFP4 : DType::BF16);
      EXPECT_EQ(x.down.cols, sl.count);
    }
  }
}

TEST(GptOss, RouterTopKThenSoftmaxOverTheK) {
  // transformers: top-k of the logits, softmax over those k. moep: softmax over all, top-k, renormalized.
  const int64_t E = 32, k = 4;
  for (uint32_t seed = 1; seed < 20; ++seed) {
    auto logits = test::random_floats(E, seed, -4.f, 4.f);
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    double m = logits[size_t(order[0])], total = 0;
    for (int64_t i = 0; i < k; ++i) total += std::exp(logits[size_t(order[size_t(i)])] - m);
    int32_t ids[k];
    float w[k];
    route_token(logits.data(), E, k, TopKNorm::Sum, 1.0, ids, w);
    for (int64_t i = 0; i < k; ++i) {
      EXPECT_EQ(ids[i], order[size_t(i)]);
      EXPECT_NEAR(w[i], std::exp(double(test::random_floats(E, seed, -4.f, 4.f)[size_t(order[size_t(i)])]) - m) / total,
                  1e-6);
    }
  }
}

nlohmann::json oss_config() {
  return {{"model_type", "gpt_oss"}, {"hidden_size", 64}, {"num_hidden_layers", 4}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 16}, {"vocab_size", 100}, {"intermediate_size", 64},
          {"num_local_experts", 8}, {"num_experts_per_tok", 2}, {"sliding_window", 128},
          {"layer_types", {"sliding_attention", "full_attention", "sliding_attention", "full_attention"}},
          {"rope_scaling", {{"rope_type", "yarn"}, {"factor", 32.0}, {"beta_fast", 32.0}, {"beta_slow", 1.0},
                            {"original_max_position_embeddings", 4096}, {"truncate", false}}},
          {"rope_theta", 150000.0}, {"max_position_embeddings", 131072}};
}

TEST(GptOss, ConfigReadsWindowsSinksBiasesAndYarn) {
  const ModelConfig c = parse_model_config(oss_config(), "config.json");
  EXPECT_EQ(c.layer_window, (std::vector<int64_t>{128, 0, 128, 0}));
  EXPECT_TRUE(c.attention_sinks && c.qkv_bias && c.o_bias && c.router_bias && c.expert_bias);
  EXPECT_EQ(c.swiglu_limit, 7.0);
  EXPECT_EQ(c.sliding_window, 0);  // the context is not limited by the window
  EXPECT_EQ(c.topk_norm, TopKNorm::Sum);
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_FALSE(c.rope_scaling.truncate);
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
}

TEST(GptOss, ConfigRefusesBadLayerTypesAndQuantization) {
  auto j = oss_config();
  j["layer_types"][1] = "chunked_attention";
  EXPECT_THROW(
      {
        try {
          parse_model_config(j, "config.json");
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("layer_types"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  j = oss_config();
  j["quantization_config"] = {{"quant_method", "gptq"}};
  EXPECT_THROW(parse_model_config(j, "config.json"), Error);
  j["quantization_config"] = {{"quant_method", "mxfp4"}};
  EXPECT_NO_THROW(parse_model_config(j, "config.json"));
}

}  // namespace
}  // namespace moep
