// ModelConfig from GGUF metadata (llama.cpp's key names), for each family moep runs.
#include <gtest/gtest.h>

#include <functional>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "model/gguf_config.h"
#include "test_util.h"

namespace moep {
namespace {

// The keys llama.cpp's converter writes for a small model of `arch`; `extra` adds or changes keys.
std::string write_model(const test::TempDir& dir, const std::string& arch,
                        const std::function<void(GgufWriter&)>& extra = nullptr, bool with_output = true) {
  GgufWriter w;
  if (extra) extra(w);  // first: a key it sets replaces the default below
  const std::string a = arch + ".";
  auto u32 = [&](const std::string& k, uint32_t v) { if (!w.has(k)) w.set_u32(k, v); };
  auto f32 = [&](const std::string& k, float v) { if (!w.has(k)) w.set_f32(k, v); };
  w.set_string("general.architecture", arch);
  u32(a + "block_count", 3);
  u32(a + "context_length", 8192);
  u32(a + "embedding_length", 256);
  u32(a + "attention.head_count", 8);
  u32(a + "attention.head_count_kv", 2);
  u32(a + "expert_count", 8);
  u32(a + "expert_used_count", 2);
  f32(a + "rope.freq_base", 1e6f);
  if (arch == "dbrx") {
    f32(a + "attention.layer_norm_epsilon", 1e-5f);
    f32(a + "attention.clamp_kqv", 8.f);
    u32(a + "feed_forward_length", 512);
  } else {
    f32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
    if (arch == "llama") {
      u32(a + "feed_forward_length", 512);
    } else {
      u32(a + "feed_forward_length", 1024);  // Qwen's dense MLP size: not the experts'
      u32(a + "expert_feed_forward_length", 128);
    }
  }
  if (arch == "qwen2moe") u32(a + "expert_shared_feed_forward_length", 384);
  if (arch == "qwen3moe") u32(a + "attention.key_length", 64);
  w.set_string_array("tokenizer.ggml.tokens", std::vector<std::string>(1000, "t"));
  u32("tokenizer.ggml.eos_token_id", 2);
  u32("tokenizer.ggml.bos_token_id", 1);
  if (with_output) w.add_tensor("output.weight", GgmlType::F32, {256, 1000}, std::vector<uint8_t>(256 * 1000 * 4));
  if (arch == "qwen2moe") w.add_tensor("blk.0.attn_q.bias", GgmlType::F32, {256}, std::vector<uint8_t>(1024));
  const std::string path = dir.str() + "/" + arch + ".gguf";
  w.write(path);
  return path;
}

std::string config_error(const std::string& path) {
  try {
    model_config_from_gguf(GgufFile::open(path));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GgufConfig, Mixtral) {
  test::TempDir dir;
  const ModelConfig c = model_config_from_gguf(GgufFile::open(write_model(dir, "llama")));
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.n_layers, 3);
  EXPECT_EQ(c.d_model, 256);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.max_position, 8192);
  EXPECT_EQ(c.vocab_size, 1000);  // from the token list
  EXPECT_EQ(c.n_experts, 8);
  EXPECT_EQ(c.top_k, 2);
  EXPECT_EQ(c.expert_ffn, 512);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.norm, NormKind::RMSNorm);
  EXPECT_EQ(c.norm_eps, 1e-6f);
  EXPECT_EQ(c.topk_norm, TopKNorm::Sum);
  EXPECT_EQ(c.qk_norm, QKNorm::None);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.n_moe_layers(), 3);
}

TEST(GgufConfig, QwenOlmoeDbrx) {
  test::TempDir dir;
  ModelConfig c = model_config_from_gguf(GgufFile::open(write_model(dir, "qwen2moe")));
  EXPECT_EQ(c.model_type, "qwen2_moe");
  EXPECT_EQ(c.expert_ffn, 128);
  EXPECT_EQ(c.shared_expert_ffn, 384);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_EQ(c.topk_norm, TopKNorm::None);

  c = model_config_from_gguf(GgufFile::open(write_model(dir, "qwen3moe", nullptr, /*with_output=*/false)));
  EXPECT_EQ(c.model_type, "qwen3_moe");
  EXPECT_EQ(c.head_dim, 64);  // attention.key_length, not d_model / heads
  EXPECT_EQ(c.qk_norm, QKNorm::PerHead);
  EXPECT_EQ(c.topk_norm, TopKNorm::Sum);
  EXPECT_TRUE(c.tie_word_embeddings);

  c = model_config_from_gguf(GgufFile::open(write_model(dir, "olmoe", [](GgufWriter& w) {
    w.set_u32("olmoe.vocab_size", 1024);
  })));
  EXPECT_EQ(c.model_type, "olmoe");
  EXPECT_EQ(c.vocab_size, 1024);  // the stored size wins over the token list
  EXPECT_EQ(c.qk_norm, QKNorm::Full);
  EXPECT_EQ(c.topk_norm, TopKNorm::None);

  c = model_config_from_gguf(GgufFile::open(write_model(dir, "dbrx")));
  EXPECT_EQ(c.model_type, "dbrx");
  EXPECT_EQ(c.norm, NormKind::LayerNorm);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.clip_qkv, 8.f);
  EXPECT_EQ(c.expert_ffn, 512);
  EXPECT_EQ(c.topk_norm, TopKNorm::PNorm);
  EXPECT_EQ(c.topk_pnorm, 1.0);
}

TEST(GgufConfig, ErrorsNameTheKey) {
  test::TempDir dir;
  std::string m = config_error(write_model(dir, "gpt2"));
  EXPECT_NE(m.find("general.architecture is 'gpt2'"), std::string::npos) << m;

  m = config_error(write_model(dir, "llama", [](GgufWriter& w) { w.set_u32("llama.expert_count", 0); }));
  EXPECT_NE(m.find("a dense llama model"), std::string::npos) << m;

  GgufWriter w2;
  w2.set_string("general.architecture", "qwen3moe");
  w2.set_u32("qwen3moe.expert_count", 8);
  w2.set_string("qwen3moe.block_count", "48");
  w2.write(dir.str() + "/typed.gguf");
  m = config_error(dir.str() + "/typed.gguf");
  EXPECT_NE(m.find("metadata key 'qwen3moe.block_count' is a string, expected a u32"), std::string::npos) << m;

  GgufWriter w3;
  w3.set_string("general.architecture", "olmoe");
  w3.set_u32("olmoe.block_count", 2);
  w3.write(dir.str() + "/missing.gguf");
  m = config_error(dir.str() + "/missing.gguf");
  EXPECT_NE(m.find("metadata key 'olmoe.embedding_length' is missing (expected a u32)"), std::string::npos) << m;

  m = config_error(
      write_model(dir, "qwen3moe", [](GgufWriter& w) { w.set_u32("qwen3moe.rope.dimension_count", 32); }));
  EXPECT_NE(m.find("qwen3moe.rope.dimension_count is 32; moep rotates whole heads (64)"), std::string::npos) << m;

  m = config_error(write_model(dir, "llama", [](GgufWriter& w) { w.set_u32("llama.attention.head_count_kv", 3); }));
  EXPECT_NE(m.find("must be a multiple of key/value heads"), std::string::npos) << m;
}

}  // namespace
}  // namespace moep
