// ops::attention (kernels::attention_head on a ThreadPool) against kernels::attention_head_reference on fresh
// random data: several head dimensions, grouped-query ratios, context lengths, rows of different sequences in one
// cache, and thread counts. The tolerance is a bound on the f32 kernel's rounding derived from each head's data;
// a companion test checks that this bound still rejects the answers of classic mistakes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "test_util.h"

namespace moep {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();

// A KV cache of n_sequences sequences of max_positions positions, each position's row padded past
// n_kv_heads · head_dim with NaN (a read outside the kv heads shows up in the output), and a batch of queries.
struct AttentionCase {
  kernels::AttentionShape shape;
  int64_t max_positions;
  int64_t row_stride;
  std::vector<float> keys, values;  // [n_sequences, max_positions, row_stride]
  std::vector<float> q;             // [T, q_dim]
  std::vector<ops::AttentionRow> rows;

  AttentionCase(int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t max_pos, int64_t n_sequences,
                int64_t T, uint32_t seed)
      : shape{n_heads, n_kv_heads, head_dim, 1.f / std::sqrt(float(head_dim))},
        max_positions(max_pos),
        row_stride(n_kv_heads * head_dim + 3) {
    const size_t cache = size_t(n_sequences * max_pos * row_stride);
    keys = test::random_floats(cache, seed, -1.f, 1.f);
    values = test::random_floats(cache, seed + 1, -1.f, 1.f);
    for (size_t i = 0; i < cache; ++i)
      if (int64_t(i) % row_stride >= n_kv_heads * head_dim)
        keys[i] = values[i] = std::numeric_limits<float>::quiet_NaN();
    // Queries larger than keys: scores spread over several units, so the softmax is neither flat nor one-hot.
    q = test::random_floats(size_t(T * shape.q_dim()), seed + 2, -3.f, 3.f);
    // Row t: sequence t % n_sequences, attending to a position count that differs per row, the last row to all.
    for (int64_t t = 0; t < T; ++t) {
      const int64_t seq = t % n_sequences;
      const int64_t n_pos = t == T - 1 ? max_pos : 1 + (t * 7 + 3) % max_pos;
      const size_t base = size_t(seq * max_pos * row_stride);
      rows.push_back({{keys.data() + base, values.data() + base, row_stride}, n_pos});
    }
  }
  int64_t T() const { return int64_t(rows.size()); }

  // The most the f32 kernel may differ from the exact result for (row t, head h), from the data: a score
  // q·k · scale is off by at most (head_dim + 2)·eps·scale·‖q‖·‖k‖; the softmax weights, relative, by twice
  // that (the score and the running maximum) plus the exp and rescaling roundings; the output, a weighted mean
  // of values, by twice the weights' error times max|v|, plus the roundings of its sums over the positions.
  double tolerance(int64_t t, int64_t h) const {
    const int64_t hd = shape.head_dim, g = h / shape.group();
    const ops::AttentionRow& r = rows[size_t(t)];
    const float* qh = q.data() + t * shape.q_dim() + h * hd;
    double q_norm = 0, k_norm_max = 0, v_max = 0;
    for (int64_t i = 0; i < hd; ++i) q_norm += double(qh[i]) * qh[i];
    q_norm = std::sqrt(q_norm);
    for (int64_t j = 0; j < r.n_positions; ++j) {
      const float* k = r.kv.keys + j * r.kv.row_stride + g * hd;
      const float* v = r.kv.values + j * r.kv.row_stride + g * hd;
      double k_norm = 0;
      for (int64_t i = 0; i < hd; ++i) {
        k_norm += double(k[i]) * k[i];
        v_max = std::max(v_max, double(std::fabs(v[i])));
      }
      k_norm_max = std::max(k_norm_max, std::sqrt(k_norm));
    }
    const double n = double(r.n_positions);
    const double score_error = double(hd + 2) * kEps * double(shape.scale) * q_norm * k_norm_max;
    const double weight_error = 2 * score_error + (2 * n + 4) * kEps;
    return v_max * (2 * weight_error + 2 * (n + 2) * kEps);
  }

  std::vector<float> run(ThreadPool& pool) const {
    std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
    // Scratch starts as NaN: the kernel must not read what it has not written.
    std::vector<float> scratch(ops::attention_scratch_floats(T(), shape), std::numeric_limits<float>::quiet_NaN());
    ops::attention(pool, shape, q.data(), rows.data(), T(), scratch.data(), out.data());
    return out;
  }

  // The reference for (row t, head h) with the given kv head and position count (the right ones by default).
  std::vector<float> reference(int64_t t, int64_t h, int64_t kv_head = -1, int64_t n_positions = -1,
                               float scale = 0.f) const {
    const ops::AttentionRow& r = rows[size_t(t)];
    std::vector<float> out(size_t(shape.head_dim));
    kernels::attention_head_reference(q.data() + t * shape.q_dim() + h * shape.head_dim, r.kv,
                                      kv_head >= 0 ? kv_head : h / shape.group(),
                                      n_positions > 0 ? n_positions : r.n_positions, shape.head_dim,
                                      scale > 0 ? scale : shape.scale, out.data());
    return out;
  }

  // Largest |got − want| over one head's output, relative to that head's tolerance (> 1: outside it).
  double error_in_tolerances(const std::vector<float>& got, int64_t t, int64_t h,
                             const std::vector<float>& want) const {
    const float* g = got.data() + t * shape.q_dim() + h * shape.head_dim;
    double worst = 0;
    for (int64_t i = 0; i < shape.head_dim; ++i) {
      const double e = std::fabs(double(g[i]) - double(want[size_t(i)]));
      worst = std::max(worst, std::isnan(e) ? std::numeric_limits<double>::infinity() : e);
    }
    return worst / tolerance(t, h);
  }
};

struct Heads {
  int64_t n_heads, n_kv_heads, head_dim;
};

TEST(Attention, MatchesReferenceOnRandomData) {
  const Heads heads[] = {{4, 4, 16}, {8, 2, 64}, {6, 1, 80}, {12, 4, 128}, {4, 2, 256}};
  const int64_t contexts[] = {1, 2, 9, 67};
  uint32_t seed = 100;
  ThreadPool one(1), two(2), three(3);
  for (const Heads& hh : heads)
    for (int64_t ctx : contexts) {
      seed += 10;
      const AttentionCase c(hh.n_heads, hh.n_kv_heads, hh.head_dim, ctx, 2, 5, seed);
      SCOPED_TRACE(testing::Message() << "heads " << hh.n_heads << "/" << hh.n_kv_heads << " x " << hh.head_dim
                                      << ", context " << ctx << ", seed " << seed);
      const std::vector<float> out = c.run(one);
      // Each task is one (row, head) computed alone: the thread count cannot change a bit.
      EXPECT_EQ(c.run(two), out);
      EXPECT_EQ(c.run(three), out);
      double worst = 0;
      for (int64_t t = 0; t < c.T(); ++t)
        for (int64_t h = 0; h < hh.n_heads; ++h) worst = std::max(worst, c.error_in_tolerances(out, t, h, c.reference(t, h)));
      EXPECT_LE(worst, 1.0) << "largest error, in units of its tolerance";
    }
}

// The tolerance must not let a wrong answer pass: the classic mistakes (one position short of causal, the
// neighbouring kv head, no score scale) give outputs outside it.
TEST(Attention, ToleranceRejectsWrongAnswers) {
  const AttentionCase c(8, 2, 64, 40, 1, 1, 7);
  ThreadPool pool(2);
  const std::vector<float> out = c.run(pool);
  const int64_t h = 5, right_kv_head = h / c.shape.group(), n = c.rows[0].n_positions;
  ASSERT_LE(c.error_in_tolerances(out, 0, h, c.reference(0, h)), 1.0);
  EXPECT_GT(c.error_in_tolerances(out, 0, h, c.reference(0, h, -1, n - 1)), 1.0);
  EXPECT_GT(c.error_in_tolerances(out, 0, h, c.reference(0, h, (right_kv_head + 1) % c.shape.n_kv_heads)), 1.0);
  EXPECT_GT(c.error_in_tolerances(out, 0, h, c.reference(0, h, -1, -1, 1.f)), 1.0);
}

}  // namespace
}  // namespace moep
