// The weight ranges a model reports (Model::weight_spans) and the plain-read bandwidth test over them that
// `moep bench` prints next to its decode figure.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/membw.h"
#include "model/model.h"
#include "test_util.h"

namespace moep {
namespace {

TEST(WeightSpans, CoverExactlyTheBytesTheRankUsesInsideItsFiles) {
  for (const std::string& name : {"dbrx_bf16", "mixtral_f32", "qwen2_moe_bf16"}) {
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
    half.is_local = [](int64_t, int64_t e) { return e % 2 == 0; };
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
