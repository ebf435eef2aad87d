// Split attention and head (DenseSplit): which KV heads and vocabulary rows each rank takes, what each rank's
// weights then hold, and what `auto` chooses. That N split ranks compute what 1 rank computes is
// tests/dist's SplitAttentionAndHeadEqualOneRank.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace moep {
namespace {

TEST(DenseSplit, KvHeadsAreWholeContiguousAndAsEqualAsTheyCanBe) {
  for (int64_t heads : {1, 2, 3, 4, 8, 32})
    for (int n = 1; n <= 8; ++n) {
      int64_t next = 0, most = 0, least = heads;
      for (int r = 0; r < n; ++r) {
        const FfnSlice s = kv_head_split(heads, r, n);
        EXPECT_EQ(s.first, next) << heads << " heads, rank " << r << " of " << n;
        next += s.count;
        most = std::max(most, s.count);
        least = std::min(least, s.count);
      }
      EXPECT_EQ(next, heads);
      EXPECT_LE(most - least, 1);
    }
  // Fewer heads than ranks: the first ranks take one each, the others none.
  EXPECT_EQ(kv_head_split(2, 0, 3).count, 1);
  EXPECT_EQ(kv_head_split(2, 1, 3).count, 1);
  EXPECT_EQ(kv_head_split(2, 2, 3).count, 0);
}

// Each rank of a split share holds its heads' rows of q/k/v, their columns of o, its vocabulary rows of the
// head and a KV cache of its heads; together the ranks hold every row once.
TEST(DenseSplit, EachRankHoldsItsPartOfAttentionAndHead) {
  for (const std::string fx : {"qwen2_moe_f32", "olmoe_f32", "dbrx_f32"}) {
    const std::string dir = test::fixture_dir(fx);
    const ModelConfig c = load_model_config(dir);
    for (int n : {2, 3}) {
      const ExpertPlacement placement = ExpertPlacement::split(c.n_layers, c.n_experts, n);
      int64_t vocab_rows = 0, kv_heads = 0;
      LoadOptions whole;
      whole.share = placement.share(0);
      const auto replicated = Model::load(dir, c, whole);
      for (int r = 0; r < n; ++r) {
        SCOPED_TRACE(fx + ", rank " + std::to_string(r) + " of " + std::to_string(n));
        LoadOptions lo;
        lo.share = placement.share(r, DenseSplit{true, true});
        const auto m = Model::load(dir, c, lo);
        const ModelWeights& w = m->weights();
        EXPECT_TRUE(w.split.attention && w.split.head);
        EXPECT_EQ(w.lm_head.rows, w.vocab_rows.count);
        EXPECT_EQ(w.vocab_rows.first, vocab_rows);
        vocab_rows += w.vocab_rows.count;
        EXPECT_EQ(w.kv_heads.first, kv_heads);
        kv_heads += w.kv_heads.count;
        const int64_t q = w.kv_heads.count * (c.n_heads / c.n_kv_heads) * c.head_dim, kv = w.kv_heads.count * c.head_dim;
        for (const LayerWeights& L : w.layers) {
          EXPECT_EQ(L.wq.empty() ? 0 : L.wq.rows, q);
          EXPECT_EQ(L.wk.empty() ? 0 : L.wk.rows, kv);
          EXPECT_EQ(L.wv.empty() ? 0 : L.wv.rows, kv);
          EXPECT_EQ(L.wo.empty() ? 0 : L.wo.cols, q);
          if (c.qkv_bias) {
            EXPECT_EQ(L.bq.size, q);
          }
          if (c.qk_norm == QKNorm::Full) {
            EXPECT_EQ(L.k_norm.size, kv);
          }
        }
        EXPECT_LT(m->bytes_mapped_for_use(), replicated->bytes_mapped_for_use());
      }
      EXPECT_EQ(vocab_rows, c.vocab_size);
      EXPECT_EQ(kv_heads, c.n_kv_heads);
    }
  }
}

TEST(DenseSplit, KvCacheHoldsThisRanksHeads) {
  const std::string dir = test::fixture_dir("mixtral_f32");
  const ModelConfig c = load_model_config(dir);
  const ExpertPlacement placement = ExpertPlacement::split(c.n_layers, c.n_experts, 2);
  LocalCommunicator comm;
  ThreadPool pool(1);
  EngineLimits limits;
  limits.max_rows = 4;
  limits.n_slots = 2;
  limits.max_ctx = 64;
  LoadOptions lo;
  // Rank 1's attention weights (a transformer over a 1-rank communicator: only sizes are looked at here).
  lo.share = placement.share(1, DenseSplit{true, false});
  const auto part = Model::load(dir, c, lo);
  lo.share = placement.share(1);
  const auto whole = Model::load(dir, c, lo);
  const Transformer split_tr(*part, placement, comm, pool, limits), whole_tr(*whole, placement, comm, pool, limits);
  ASSERT_EQ(c.n_kv_heads, 2);  // rank 1 of 2 holds one of them
  EXPECT_EQ(2 * split_tr.kv_cache_bytes(), whole_tr.kv_cache_bytes());
}

// A split head's distributed argmax (forward with `argmax`, no logits) picks what the whole logits' argmax picks,
// step after step through the KV cache; a replicated head's argmax is its logits' argmax.
TEST(DenseSplit, SplitHeadArgmaxIsTheLogitsArgmax) {
  for (const std::string fx : {"qwen3_moe_f32", "mixtral_bf16"}) {
    SCOPED_TRACE(fx);
    EngineOptions o;
    o.model_dir = test::fixture_dir(fx);
    o.device = gpu::DeviceKind::Cpu;
    o.threads = 1;
    o.attention = SplitMode::Replicated;
    o.head = SplitMode::Replicated;
    auto whole = Engine::create(o, std::make_unique<LocalCommunicator>());
    o.head = SplitMode::Split;
    auto split = Engine::create(o, std::make_unique<LocalCommunicator>());
    ASSERT_TRUE(split->dense_split().head);
    const int64_t V = whole->config().vocab_size;
    std::vector<float> logits(static_cast<size_t>(V));
    int32_t tok = 3, picked_whole = -1, picked_split = -1;
    for (int32_t pos = 0; pos < 12; ++pos) {
      const BatchRow row{tok, 0, pos, true};
      whole->transformer().forward(std::span<const BatchRow>(&row, 1), logits.data(), &picked_whole);
      EXPECT_EQ(picked_whole, int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
      split->transformer().forward(std::span<const BatchRow>(&row, 1), nullptr, &picked_split);
      ASSERT_EQ(picked_split, picked_whole) << "position " << pos;
      tok = picked_split;
    }
  }
}

TEST(DenseSplit, AutoWeighsBytesSavedAgainstExchanges) {
  ModelConfig c = load_model_config(test::fixture_dir("qwen3_moe_f32"));
  std::string why;
  // One rank: nothing to divide.
  DenseSplit s = choose_dense_split(c, 1, SplitMode::Auto, SplitMode::Auto, 0, false, false, &why);
  EXPECT_FALSE(s.attention || s.head) << why;
  // A Qwen3-30B-A3B-sized layer on 2 ranks: megabytes saved against tens of microseconds.
  c.d_model = 2048;
  c.n_heads = 32;
  c.n_kv_heads = 4;
  c.head_dim = 128;
  c.vocab_size = 151936;
  s = choose_dense_split(c, 2, SplitMode::Auto, SplitMode::Auto, 0, false, false, &why);
  EXPECT_TRUE(s.attention && s.head) << why;
  EXPECT_NE(why.find("attention: split (auto"), std::string::npos) << why;
  // A link of a second per exchange: not worth it.
  s = choose_dense_split(c, 2, SplitMode::Auto, SplitMode::Auto, 1e6, false, false, &why);
  EXPECT_FALSE(s.attention || s.head) << why;
  // Asked for, whatever the link.
  s = choose_dense_split(c, 2, SplitMode::Split, SplitMode::Replicated, 1e6, false, false, &why);
  EXPECT_TRUE(s.attention);
  EXPECT_FALSE(s.head);
  // A GPU keeps both whole; a GGUF file its attention. Asking for the impossible is an error that says why.
  s = choose_dense_split(c, 2, SplitMode::Auto, SplitMode::Auto, 0, false, true, &why);
  EXPECT_FALSE(s.attention || s.head) << why;
  s = choose_dense_split(c, 2, SplitMode::Auto, SplitMode::Auto, 0, true, false, &why);
  EXPECT_FALSE(s.attention);
  EXPECT_TRUE(s.head);
  EXPECT_THROW(choose_dense_split(c, 2, SplitMode::Split, SplitMode::Auto, 0, true, false, &why), Error);
  try {
    choose_dense_split(c, 2, SplitMode::Auto, SplitMode::Split, 0, false, true, &why);
    FAIL() << "a split head on a GPU was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPU"), std::string::npos) << e.what();
  }
  // A calibration given by the caller decides: a machine that streams 1 TB/s per rank and a link of 1 ms per
  // message gains nothing worth an exchange; the same link with a 1 GB/s machine gains.
  perf::HardwareProfile fast = auto_split_hardware(), slow = auto_split_hardware();
  fast.memory_bandwidth_gbs.value = 1000;
  slow.memory_bandwidth_gbs.value = 1;
  perf::NetworkProfile link = auto_split_network();
  link.alpha_us.value = 1000;
  s = choose_dense_split(c, 2, SplitMode::Auto, SplitMode::Auto, 0, false, false, &why, &fast, &link);
  EXPECT_FALSE(s.attention || s.head) << why;
  s = choose_dense_split(c, 2, SplitMode::Auto, SplitMode::Auto, 0, false, false, &why, &slow, &link);
  EXPECT_TRUE(s.attention && s.head) << why;
  EXPECT_NE(why.find("the performance model predicts"), std::string::npos) << why;
  EXPECT_EQ(parse_split_mode("split", "--head"), SplitMode::Split);
  EXPECT_THROW(parse_split_mode("halves", "--head"), Error);
}

}  // namespace
}  // namespace moep
