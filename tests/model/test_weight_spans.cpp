// The weight ranges a model reports (Model::weight_spans) and the plain-read bandwidth test over them that
// `moep bench` prints next to its decode figure.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/membw.h"
#include "model/model.h"
#include "moe/placement.h"
#include "test_util.h"

namespace moep {
namespace {

TEST(WeightSpans, CoverExactlyTheBytesTheRankUsesInsideItsFiles) {
  for (const std::string name : {"dbrx_bf16", "mixtral_f32", "qwen2_moe_bf16"}) {
    LoadOptions lo;
    lo.prefault = false;
    const auto m = Model::load(test::fixture_dir(name), lo);
    size_t total = 0;
    for (const auto& s : m->weight_spans()) {
      ASSERT_NE(s.data, nullptr) << name;
      ASSERT_GT(s.bytes, 0u) << name;
      total += s.bytes;
    }
    EXPECT_EQ(total, m->bytes_mapped_for_use()) << name;
    EXPECT_GT(m->weight_spans().size(), size_t(m->config().n_layers)) << name;  // several tensors per layer

    // Only the experts a rank holds are in its spans.
    LoadOptions half = lo;
    const ModelConfig& c = m->config();
    const ExpertPlacement even = ExpertPlacement::round_robin(c.n_layers, c.n_experts, 2);
    half.share = even.share(0);  // the even experts
    const auto h = Model::load(test::fixture_dir(name), half);
    size_t htotal = 0;
    for (const auto& s : h->weight_spans()) htotal += s.bytes;
    EXPECT_EQ(htotal, h->bytes_mapped_for_use()) << name;
    EXPECT_LT(htotal, total) << name;
  }
}

TEST(WeightSpans, PlainReadMeasuresWhatItIsGivenAndSkipsPartialLines) {
  ThreadPool pool(2);
  std::vector<uint8_t> buf(size_t(8) << 20, 1);
  // Unaligned starts and ends: only whole cache lines inside each span are read.
  const kernels::ReadSpan spans[] = {{buf.data() + 3, (size_t(4) << 20) - 5}, {buf.data() + (size_t(5) << 20) + 17, size_t(3) << 20}};
  const double gbs = kernels::measure_span_read_gbs(pool, spans, 2, 2);
  EXPECT_TRUE(std::isfinite(gbs));
  EXPECT_GT(gbs, 0.01);
  // Spans shorter than a cache line hold no whole line: nothing to read, reported as 0.
  const kernels::ReadSpan tiny[] = {{buf.data() + 1, 40}};
  EXPECT_EQ(kernels::measure_span_read_gbs(pool, tiny, 1, 1), 0.0);
}

}  // namespace
}  // namespace moep

namespace moep {
namespace {

// --weights copy: the views point into one anonymous buffer holding exactly the bytes of the mapping.
TEST(WeightResidence, CopiedWeightsHoldTheMappedBytesOutsideTheFiles) {
  for (const std::string name : {"dbrx_bf16", "mixtral_f32", "qwen2_moe_bf16", "olmoe_bf16"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = load_model_config(test::fixture_dir(name));
    const ExpertPlacement odd = ExpertPlacement::round_robin(c.n_layers, c.n_experts, 2);
    LoadOptions mapped;
    mapped.share = odd.share(1);  // a rank's share (the odd experts), not every expert
    LoadOptions copied = mapped;
    copied.residence = WeightResidence::Copy;
    const auto a = Model::load(test::fixture_dir(name), mapped);
    const auto b = Model::load(test::fixture_dir(name), copied);
    EXPECT_FALSE(a->weights_copied());
    ASSERT_TRUE(b->weights_copied());
    EXPECT_NE(b->residence().find("copied"), std::string::npos) << b->residence();
    EXPECT_EQ(a->bytes_mapped_for_use(), b->bytes_mapped_for_use());
    ASSERT_EQ(a->weight_spans().size(), b->weight_spans().size());
    for (size_t k = 0; k < a->weight_spans().size(); ++k) {
      const auto& sa = a->weight_spans()[k];
      const auto& sb = b->weight_spans()[k];
      ASSERT_EQ(sa.bytes, sb.bytes);
      EXPECT_NE(sa.data, sb.data);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(sb.data) % 64, 0u) << "copies are cache-line aligned";
      EXPECT_EQ(std::memcmp(sa.data, sb.data, sa.bytes), 0) << "span " << k;
    }
    // The views themselves moved: attention, router, a held expert, the head.
    const auto& la = a->weights().layers[0];
    const auto& lb = b->weights().layers[0];
    EXPECT_NE(la.wq.data, lb.wq.data);
    EXPECT_EQ(std::memcmp(la.wq.data, lb.wq.data, size_t(la.wq.bytes())), 0);
    EXPECT_NE(la.router.data, lb.router.data);
    ASSERT_TRUE(lb.experts[1].local);
    EXPECT_FALSE(lb.experts[0].local);
    EXPECT_EQ(lb.experts[0].gate.data, nullptr);
    EXPECT_EQ(std::memcmp(la.experts[1].down.data, lb.experts[1].down.data, size_t(la.experts[1].down.bytes())), 0);
    EXPECT_NE(a->weights().lm_head.data, b->weights().lm_head.data);
    EXPECT_EQ(std::memcmp(a->weights().lm_head.data, b->weights().lm_head.data, size_t(a->weights().lm_head.bytes())),
              0);
  }
}

TEST(WeightResidence, ACopyThatDoesNotFitFallsBackOrFailsClearly) {
  LoadOptions lo;
  lo.residence = WeightResidence::Auto;
  lo.memory_available = 4096;  // far less than the fixture's weights
  const auto m = Model::load(test::fixture_dir("mixtral_f32"), lo);
  EXPECT_FALSE(m->weights_copied());
  EXPECT_NE(m->residence().find("not copied"), std::string::npos) << m->residence();
  lo.residence = WeightResidence::Copy;
  try {
    Model::load(test::fixture_dir("mixtral_f32"), lo);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--weights map"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("available"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moep

namespace moep {
// The bandwidth test's read loop covers every word once whatever the number of streams (and line count: the
// lines left over by the split are read too), and the test itself reports a positive figure.
TEST(MemoryBandwidth, EveryStreamCountReadsEveryWord) {
  std::vector<uint64_t> v(8 * 1003);
  uint64_t x = 88172645463325252ull, want = 0;
  for (auto& w : v) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    w = x;
  }
  for (size_t lines : {size_t(0), size_t(1), size_t(3), size_t(64), size_t(1003)}) {
    want = 0;
    for (size_t i = 0; i < lines * 8; ++i) want += v[i];
    for (int k : {1, 2, 3, 4, 7}) EXPECT_EQ(kernels::sum_lines(v.data(), lines, k), want) << lines << " lines, " << k;
  }
  ThreadPool pool(2);
  EXPECT_GT(kernels::measure_read_bandwidth_gbs(pool, size_t(8) << 20, 2, false), 0.0);
}
}  // namespace moep

namespace moep {
namespace {

// A split placement's slice of every expert (rows of gate and up, columns of down), read in place and copied:
// the views hold exactly the full matrices' rows and columns of the slice, the slices of all ranks add up to
// the whole experts, and the spans count the bytes read.
TEST(WeightResidence, ExpertSlicesHoldTheirRowsAndColumns) {
  for (const std::string name : {"dbrx_bf16", "mixtral_f32", "qwen2_moe_bf16"}) {
    const auto full = Model::load(test::fixture_dir(name), LoadOptions{});
    const ModelConfig& c = full->config();
    const int n_ranks = 3;
    const ExpertPlacement pl = ExpertPlacement::split(c.n_layers, c.n_experts, n_ranks);
    for (const bool copy : {false, true}) {
      size_t expert_bytes = 0;
      for (int r = 0; r < n_ranks; ++r) {
        SCOPED_TRACE(name + (copy ? ", copied" : ", mapped") + ", rank " + std::to_string(r));
        const ExpertPlacement::Slice sl = pl.ffn_slice(r, c.expert_ffn);
        ASSERT_GT(sl.count, 0);
        LoadOptions lo;
        lo.share = pl.share(r);
        lo.residence = copy ? WeightResidence::Copy : WeightResidence::Map;
        const auto m = Model::load(test::fixture_dir(name), lo);
        ASSERT_EQ(m->weights_copied(), copy);
        size_t spans = 0;
        for (const auto& s : m->weight_spans()) spans += s.bytes;
        EXPECT_EQ(spans, m->bytes_mapped_for_use());
        for (int64_t l = 0; l < c.n_layers; ++l) {
          const auto& fl = full->weights().layers[size_t(l)];
          const auto& ml = m->weights().layers[size_t(l)];
          if (!fl.is_moe) continue;
          if (!fl.shared_expert.empty()) {  // the shared expert's slice, its own ffn split the same way
            const FfnSlice ss = ffn_split(c.shared_expert_ffn, r, n_ranks);
            const size_t es = dtype_size(fl.shared_expert.gate.dtype);
            ASSERT_EQ(ml.shared_expert.gate.rows, ss.count);
            ASSERT_EQ(ml.shared_expert.down.cols, ss.count);
            for (int64_t i = 0; i < ss.count; ++i)
              ASSERT_EQ(std::memcmp(ml.shared_expert.up.row_ptr(i), fl.shared_expert.up.row_ptr(ss.first + i),
                                    size_t(c.d_model) * es), 0);
            for (int64_t i = 0; i < c.d_model; ++i)
              ASSERT_EQ(std::memcmp(ml.shared_expert.down.row_ptr(i), fl.shared_expert.down.row_ptr(i) + size_t(ss.first) * es,
                                    size_t(ss.count) * es), 0);
          }
          for (int64_t e = 0; e < c.n_experts; ++e) {
            const ExpertWeights& fx = fl.experts[size_t(e)];
            const ExpertWeights& mx = ml.experts[size_t(e)];
            ASSERT_TRUE(mx.local);
            const size_t es = dtype_size(fx.gate.dtype);
            for (const auto& [f, s] : {std::pair{fx.gate, mx.gate}, std::pair{fx.up, mx.up}}) {
              ASSERT_EQ(s.rows, sl.count);
              ASSERT_EQ(s.cols, f.cols);
              for (int64_t i = 0; i < s.rows; ++i)
                ASSERT_EQ(std::memcmp(s.row_ptr(i), f.row_ptr(sl.first + i), size_t(f.cols) * es), 0) << "row " << i;
            }
            if (fx.down_in_out) {  // [ffn, d]: rows of the slice
              ASSERT_EQ(mx.down.rows, sl.count);
              for (int64_t i = 0; i < sl.count; ++i)
                ASSERT_EQ(std::memcmp(mx.down.row_ptr(i), fx.down.row_ptr(sl.first + i), size_t(fx.down.cols) * es), 0);
            } else {  // [d, ffn]: columns of the slice, dense when copied
              ASSERT_EQ(mx.down.rows, fx.down.rows);
              ASSERT_EQ(mx.down.cols, sl.count);
              EXPECT_EQ(mx.down.row_stride, copy ? sl.count : c.expert_ffn);
              for (int64_t i = 0; i < fx.down.rows; ++i)
                ASSERT_EQ(std::memcmp(mx.down.row_ptr(i), fx.down.row_ptr(i) + size_t(sl.first) * es, size_t(sl.count) * es), 0)
                    << "row " << i;
            }
            if (!copy) expert_bytes += size_t(mx.gate.bytes() + mx.up.bytes() + mx.down.bytes());
          }
        }
      }
      if (!copy) {
        size_t whole = 0;
        for (const auto& L : full->weights().layers)
          for (const auto& x : L.experts)
            if (x.local) whole += size_t(x.gate.bytes() + x.up.bytes() + x.down.bytes());
        EXPECT_EQ(expert_bytes, whole) << name;
      }
    }
  }
}

}  // namespace
}  // namespace moep
