// The performance model: terms on hand-computable cases, all-reduce step counts, E[max] against brute force,
// memory fit, nonsense input, and the planner's speed.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "moe/placement.h"
#include "perf/allreduce.h"
#include "perf/calibrate.h"
#include "perf/perf_model.h"
#include "perf/planner.h"
#include "perf/routing.h"
#include "perf/validate.h"
#include "test_util.h"

using namespace moep;
using namespace moep::perf;

namespace {

// A roofline machine: bandwidth only (no compute limit, no overhead) unless asked.
HardwareProfile roofline(double gbs, double mem_gb = 1000) {
  HardwareProfile h;
  h.name = "test-hw";
  h.memory_bandwidth_gbs = {gbs, "test", "", false, true};
  h.memory_gb = {mem_gb, "test", "", false, true};
  h.usable_memory_fraction = {1.0, "test", "", false, true};
  h.price_usd = {1000, "test", "", false, true};
  h.power_w = {100, "test", "", false, true};
  return h;
}

NetworkProfile network(double alpha_us, double beta_gbs) {
  NetworkProfile n;
  n.name = "test-net";
  n.alpha_us = {alpha_us, "test", "", false, true};
  n.beta_gbs = {beta_gbs, "test", "", false, true};
  n.algorithm = AllreduceAlgorithm::RecursiveDoubling;
  return n;
}

// A measured bf16 table: 2 us + 0.1 ns per byte at batches 1 to 4, both layouts; 10 GB/s read.
HardwareMeasured flat_table() {
  HardwareMeasured hm;
  hm.membw_gbs = 10;
  hm.linear["bf16"] = {{1, 2.0, 0.1, {}}, {4, 2.0, 0.1, {}}};
  hm.linear_in_out = hm.linear;
  return hm;
}

// One MoE layer, d = 64, 2 heads of 32 (1 KV head), E experts of ffn 128, vocab 100.
ModelShape tiny(int64_t experts, int64_t top_k, int64_t layers = 1) {
  ModelConfig c;
  c.model_type = "mixtral";
  c.d_model = 64;
  c.n_layers = layers;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 32;
  c.vocab_size = 100;
  c.n_experts = experts;
  c.top_k = top_k;
  c.expert_ffn = 128;
  c.layer_is_moe.assign(size_t(layers), true);
  return shape_from_config(c, "tiny");
}

}  // namespace

TEST(PerfAllreduce, StepCounts) {
  const int rd[] = {0, 0, 1, 2, 2, 3, 3, 3, 3, 4};
  for (int n = 1; n <= 9; ++n) {
    EXPECT_EQ(allreduce_steps(AllreduceAlgorithm::RecursiveDoubling, n), rd[n]) << n;
    EXPECT_EQ(allreduce_steps(AllreduceAlgorithm::Ring, n), n == 1 ? 0 : 2 * (n - 1)) << n;
  }
  EXPECT_THROW(allreduce_steps(AllreduceAlgorithm::Ring, 0), Error);
}

TEST(PerfAllreduce, HockneyTimesAndAutoChoice) {
  const double a = 10e-6, b = 1e9;
  AllreduceAlgorithm chosen;
  // Large message on 4 nodes: ring 6·(α + m/4β) beats recursive doubling 2·(α + m/β).
  EXPECT_NEAR(allreduce_seconds(AllreduceAlgorithm::RecursiveDoubling, 4, 1e6, a, b), 2 * (a + 1e-3), 1e-12);
  EXPECT_NEAR(allreduce_seconds(AllreduceAlgorithm::Ring, 4, 1e6, a, b), 6 * (a + 2.5e-4), 1e-12);
  EXPECT_NEAR(allreduce_seconds(AllreduceAlgorithm::Auto, 4, 1e6, a, b, &chosen), 6 * (a + 2.5e-4), 1e-12);
  EXPECT_EQ(chosen, AllreduceAlgorithm::Ring);
  // Small message: recursive doubling (fewer latencies).
  EXPECT_NEAR(allreduce_seconds(AllreduceAlgorithm::Auto, 4, 4096, a, b, &chosen), 2 * (a + 4096e-9), 1e-12);
  EXPECT_EQ(chosen, AllreduceAlgorithm::RecursiveDoubling);
  EXPECT_EQ(allreduce_seconds(AllreduceAlgorithm::Auto, 1, 1e6, a, b), 0.0);
  EXPECT_NEAR(emulated_latency_seconds(50, 3), 100e-6, 1e-15);
  EXPECT_EQ(emulated_latency_seconds(50, 1), 0.0);
}

TEST(PerfAllreduce, MeasuredFitInterpolates) {
  NetworkProfile n = network(1, 1);
  AllreduceFit f;
  f.nodes = 2;
  f.a_us = 2;
  f.b_ns_per_byte = 0.5;
  f.points = {{4, 2.0}, {4096, 4.0}, {1 << 20, 500.0}};
  n.measured_fits[2] = f;
  EXPECT_NEAR(allreduce_seconds(n, 2, 4096) * 1e6, 4.0, 1e-9);
  EXPECT_NEAR(allreduce_seconds(n, 2, 1) * 1e6, 2.0, 1e-9);  // below the first point: the first point
  EXPECT_NEAR(allreduce_seconds(n, 2, 64) * 1e6, 2.0 * std::pow(2.0, std::log(16.0) / std::log(1024.0)), 1e-9);
  EXPECT_NEAR(allreduce_seconds(n, 2, 2 << 20) * 1e6, 500 + (1 << 20) * 0.5e-3, 1e-6);
  // 3 nodes were not measured: α/β by algorithm.
  EXPECT_NEAR(allreduce_seconds(n, 3, 1000), 2 * (1e-6 + 1000 / 1e9), 1e-15);
}

TEST(PerfModelShape, BuiltinsMatchPublishedSizes) {
  const std::map<std::string, double> billions = {{"dbrx", 132},          {"mixtral-8x7b", 46.7},
                                                  {"mixtral-8x22b", 141},  {"qwen3-235b-a22b", 235},
                                                  {"qwen3-30b-a3b", 30.5}, {"qwen1.5-moe-a2.7b", 14.3},
                                                  {"olmoe-1b-7b", 6.9},    {"deepseek-v3", 671},
                                                  {"gpt-oss-120b", 116.8}, {"gpt-oss-20b", 20.9}};
  for (const auto& name : builtin_model_names()) {
    const ModelShape s = resolve_model(name);
    ASSERT_TRUE(billions.count(name)) << name;
    EXPECT_NEAR(double(s.total_elems()) * 1e-9, billions.at(name), billions.at(name) * 0.015) << s.summary();
  }
  try {
    resolve_model("gpt-5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dbrx"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("deepseek-v3"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(resolve_model("deepseek-v3").approximations.empty());
  EXPECT_THROW(weight_type("int3"), Error);
  EXPECT_EQ(weight_type("mxfp4").bytes_per_weight, 17.0 / 32.0);
}

// gpt-oss's sliding-window layers read at most 128 positions of the cache: below 128 positions of context they
// cost what full attention does, far above it about half (every other layer).
TEST(PerfModel, SlidingWindowLayersAttendToTheirWindowOnly) {
  const ModelShape windowed = resolve_model("gpt-oss-120b");
  ASSERT_EQ(int64_t(windowed.layer_window.size()), windowed.n_layers);
  EXPECT_EQ(windowed.layer_window[0], 128);
  EXPECT_EQ(windowed.layer_window[1], 0);
  ModelShape full = windowed;
  full.layer_window.clear();
  const HardwareProfile hw = roofline(100);
  Scenario s;
  s.placement = "contiguous";
  s.batch = 1;
  s.prompt = 0;
  s.kv_dtype = "f32";
  auto kv_seconds = [&](const ModelShape& m, int64_t ctx) {
    s.context = ctx;
    Scenario none = s;
    none.context = 1;
    return predict(m, hw, network(10, 1), s).decode.attention - predict(m, hw, network(10, 1), none).decode.attention;
  };
  EXPECT_NEAR(kv_seconds(windowed, 100), kv_seconds(full, 100), 1e-12);
  const double ratio = kv_seconds(windowed, 65536) / kv_seconds(full, 65536);
  EXPECT_GT(ratio, 0.49);
  EXPECT_LT(ratio, 0.51);
}

TEST(PerfModelShape, FromFixtureConfig) {
  const ModelShape s = resolve_model(test::fixture_dir("qwen2_moe_bf16"));
  EXPECT_EQ(s.model_type, "qwen2_moe");
  EXPECT_GT(s.shared_elems, 0);
  EXPECT_EQ(int64_t(s.layer_is_moe.size()), s.n_layers);
}

// N = 1, batch 1, pure bandwidth: the step reads every non-expert matrix, top_k experts and the head once.
TEST(PerfModel, SingleNodeDecodeIsBytesOverBandwidth) {
  const ModelShape m = tiny(4, 2);
  const HardwareProfile hw = roofline(100);
  Scenario s;
  s.placement = "contiguous";
  s.batch = 1;
  s.context = 10;
  s.prompt = 0;
  s.kv_dtype = "f32";
  const Prediction p = predict(m, hw, network(10, 1), s);
  const double bw = 100e9, wb = 2;
  const double d = 64, q = 64, kv = 32;
  const double attn = (d * q + 2 * d * kv + q * d) * wb / bw + 10 * (2 * kv) * 4 / bw;  // weights + KV reads
  const double router = 4 * d * wb / bw;
  const double expert = 3 * d * 128 * wb / bw;
  const double head = 100 * d * wb / bw;
  EXPECT_NEAR(p.decode.attention, attn, 1e-15);
  EXPECT_NEAR(p.decode.router, router, 1e-15);
  EXPECT_NEAR(p.decode.experts_max, 2 * expert, 1e-15);
  EXPECT_NEAR(p.decode.experts_mean, 2 * expert, 1e-15);
  EXPECT_NEAR(p.decode.head, head, 1e-15);
  EXPECT_EQ(p.decode.allreduce, 0.0);
  EXPECT_NEAR(p.decode_tokens_per_s, 1.0 / (attn + router + 2 * expert + head), 1e-6);
  EXPECT_TRUE(p.experts_exact);
}

// Two nodes, two experts, top-1: one rank works, the other waits; one all-reduce of d floats per layer.
TEST(PerfModel, TwoNodesImbalanceAndAllreduce) {
  const ModelShape m = tiny(2, 1, 3);
  const HardwareProfile hw = roofline(100);
  Scenario s;
  s.placement = "contiguous";
  s.nodes = 2;
  s.prompt = 0;
  s.emulate_latency_us = 50;
  const Prediction p = predict(m, hw, network(10, 1), s);
  const double expert = 3 * 64 * 128 * 2 / 100e9;
  EXPECT_NEAR(p.decode.experts_max, 3 * expert, 1e-15);
  EXPECT_NEAR(p.decode.experts_mean, 3 * expert / 2, 1e-15);
  EXPECT_NEAR(p.decode.imbalance(), 3 * expert / 2, 1e-15);
  EXPECT_NEAR(p.decode.allreduce, 3 * (10e-6 + 64 * 4 / 1e9 + 50e-6), 1e-15);
  EXPECT_NEAR(p.allreduce_bytes, 256, 0);
  EXPECT_NEAR(p.price_usd, 2000, 0);
  EXPECT_NEAR(p.power_w, 200, 0);
}

// Split experts: both ranks run half of every expert the step uses, so no rank waits for the other; each
// reads half of the experts' bytes, and holds half of every expert.
TEST(PerfModel, SplitExpertsHaveNoImbalance) {
  const ModelShape m = tiny(2, 1, 3);
  const HardwareProfile hw = roofline(100);
  Scenario s;
  s.placement = "contiguous";
  s.nodes = 2;
  s.prompt = 0;
  s.placement = "split";
  const Prediction p = predict(m, hw, network(10, 1), s);
  const double half_expert = 3 * 64 * 64 * 2 / 100e9;  // ffn 128 in two slices of 64
  EXPECT_NEAR(p.decode.experts_max, 3 * half_expert, 1e-15);
  EXPECT_NEAR(p.decode.experts_mean, 3 * half_expert, 1e-15);
  EXPECT_NEAR(p.decode.imbalance(), 0.0, 1e-15);
  EXPECT_NEAR(p.decode.allreduce, 3 * (10e-6 + 64 * 4 / 1e9), 1e-15);
  s.placement = "contiguous";
  const Prediction c = predict(m, hw, network(10, 1), s);
  EXPECT_NEAR(p.weight_bytes_per_step, c.weight_bytes_per_step, 1e-6);  // the same bytes, spread evenly
  EXPECT_GT(p.decode_tokens_per_s, c.decode_tokens_per_s);
  s.placement = "split";
  const MemoryUse u = memory_use(m, hw, s);
  EXPECT_NEAR(u.experts, 3 * 2 * double(m.expert_elems) * 2 / 2, 1e-6);
}

// A shared expert under a split placement: each rank reads and holds its slice (half on 2 ranks); the sigmoid
// gate stays on every rank.
TEST(PerfModel, SplitSharedExpertIsSlicedToo) {
  ModelConfig c;
  c.model_type = "qwen2_moe";
  c.d_model = 64;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 32;
  c.vocab_size = 100;
  c.n_experts = 4;
  c.top_k = 2;
  c.expert_ffn = 128;
  c.shared_expert_ffn = 256;
  c.layer_is_moe.assign(2, true);
  const ModelShape m = shape_from_config(c, "tiny-shared");
  const HardwareProfile hw = roofline(100);
  Scenario s;
  s.placement = "contiguous";
  s.nodes = 2;
  s.prompt = 0;
  s.placement = "contiguous";
  const Prediction whole = predict(m, hw, network(10, 1), s);
  s.placement = "split";
  const Prediction split = predict(m, hw, network(10, 1), s);
  const double matrix = 64.0 * 256 * 2 / 100e9, gate = 64.0 * 2 / 100e9;  // one of its matrices; the gate
  EXPECT_NEAR(whole.decode.dense, 2 * (3 * matrix + gate), 1e-15);
  EXPECT_NEAR(split.decode.dense, 2 * (3 * matrix / 2 + gate), 1e-15);
  s.placement = "contiguous";
  const MemoryUse mw = memory_use(m, hw, s);
  s.placement = "split";
  const MemoryUse ms = memory_use(m, hw, s);
  EXPECT_NEAR(mw.replicated - ms.replicated, 2 * 3 * 64.0 * 128 * 2, 1e-6);  // half of each layer's shared expert
}

// The slices of a split placement cover each expert's ffn dimension once, in order, on 32-element
// boundaries where every rank still gets a part; every rank holds every expert and computes every pair.
TEST(Placement, SplitSlicesCoverTheFfnDimension) {
  for (const int64_t ffn : {1, 5, 32, 48, 96, 100, 768, 10752, 14336})
    for (const int n : {1, 2, 3, 4, 7, 8}) {
      SCOPED_TRACE("ffn " + std::to_string(ffn) + ", " + std::to_string(n) + " ranks");
      const ExpertPlacement pl = ExpertPlacement::from_spec("split", 2, 4, n);
      ASSERT_TRUE(pl.is_split());
      int64_t next = 0;
      for (int r = 0; r < n; ++r) {
        const ExpertPlacement::Slice sl = pl.ffn_slice(r, ffn);
        EXPECT_EQ(sl.first, next);
        EXPECT_GE(sl.count, ffn >= n ? 1 : 0);
        if (ffn >= 32 * n && r + 1 < n) {
          EXPECT_EQ((sl.first + sl.count) % 32, 0);
        }
        EXPECT_LE(std::abs(sl.count - ffn / n), ffn >= 32 * n ? 32 : 1);
        next = sl.first + sl.count;
        for (int64_t e = 0; e < 4; ++e) EXPECT_TRUE(pl.holds(r, 1, e));
      }
      EXPECT_EQ(next, ffn);
    }
  const ExpertPlacement pl = ExpertPlacement::split(1, 4, 3);
  const int32_t experts[4] = {0, 3, 3, 1};
  int32_t owner[4];
  int64_t load[3];
  pl.assign(0, experts, 4, owner, load);
  for (int32_t o : owner) EXPECT_EQ(o, -1);
  for (int64_t l : load) EXPECT_EQ(l, 4);
  EXPECT_NE(pl.fingerprint(), ExpertPlacement::from_spec("contiguous", 1, 4, 3).fingerprint());
  EXPECT_EQ(ExpertPlacement::contiguous(1, 4, 3).ffn_slice(2, 100).count, 100);
  EXPECT_EQ(pl.describe(), "split, 3 ranks, a slice of every expert each");
}

TEST(PerfModel, ComputeBoundAtLargeBatch) {
  const ModelShape m = tiny(4, 4);
  HardwareProfile hw = roofline(100);
  hw.peak_tflops_16 = {0.001, "test", "", false, true};  // 1 GFLOP/s: compute-bound at any batch
  Scenario s;
  s.placement = "contiguous";
  s.batch = 8;
  s.prompt = 0;
  s.context = 1;
  const Prediction p = predict(m, hw, network(1, 1), s);
  // Every token uses all 4 experts: each expert runs 8 rows, 2 flops per weight per row.
  EXPECT_NEAR(p.decode.experts_max, 4 * 2.0 * 8 * (3 * 64 * 128) / 1e9, 1e-12);
}

TEST(PerfModel, MeasuredLinearTableInterpolation) {
  HardwareProfile hw = roofline(100);
  HardwareMeasured hm;
  hm.membw_gbs = 10;
  hm.linear["bf16"] = {{1, 2.0, 0.1, {}}, {4, 2.0, 0.1, {}}, {16, 4.0, 0.4, {}}};
  hw.measured = hm;
  const double elems = 1e6, bytes = 2e6;
  EXPECT_NEAR(hw.linear_seconds("bf16", 2, elems, 1), 2e-6 + bytes * 0.1e-9, 1e-15);
  EXPECT_NEAR(hw.linear_seconds("bf16", 2, elems, 10), 3e-6 + bytes * 0.25e-9, 1e-15);
  EXPECT_NEAR(hw.linear_seconds("bf16", 2, elems, 32), 4e-6 + bytes * 0.8e-9, 1e-15);
  // No table for f32: the roofline on the measured read bandwidth.
  EXPECT_NEAR(hw.linear_seconds("f32", 4, elems, 1), 4e6 / 10e9, 1e-15);
}

// With measured times per matrix size, a call's time follows them (linear in bytes between sizes, the last
// segment's slope beyond, the first segment's below) instead of the one-line summary.
TEST(PerfModel, MeasuredTimesPerSizeAreInterpolated) {
  LinearPoint p{1, 100.0, 1.0, {{1e5, 10.0}, {1e6, 40.0}, {4e6, 100.0}}};  // microseconds
  EXPECT_NEAR(p.seconds(1e6), 40e-6, 1e-15);                              // at a measured size
  EXPECT_NEAR(p.seconds(2.5e6), 70e-6, 1e-15);                            // halfway between 1e6 and 4e6
  EXPECT_NEAR(p.seconds(8e6), 100e-6 + 4e6 * 20e-6 / 1e6, 1e-15);        // beyond: 20 us per MB
  EXPECT_NEAR(p.seconds(5.5e4), 10e-6 - 4.5e4 * 30e-6 / 9e5, 1e-15);     // below: the first segment
  EXPECT_NEAR(p.seconds(1e3), 10e-6 - 9.9e4 * 30e-6 / 9e5, 1e-15);
  LinearPoint steep{1, 0.0, 1.0, {{1e5, 10.0}, {2e5, 30.0}}};             // a line through a negative intercept:
  EXPECT_NEAR(steep.seconds(1e3), 10e-6 * 1e3 / 1e5, 1e-15);              // never below proportional
  // A size timed slower than a larger one was disturbed: it counts as the larger one's time.
  LinearPoint q{1, 0.0, 1.0, {{1e6, 90.0}, {2e6, 60.0}, {3e6, 80.0}}};
  EXPECT_NEAR(q.seconds(1e6), 60e-6, 1e-15);
  EXPECT_NEAR(q.seconds(2.5e6), 70e-6, 1e-15);
  // Without times, the summary line.
  LinearPoint r{1, 2.0, 0.5, {}};
  EXPECT_NEAR(r.seconds(1e6), 2e-6 + 0.5e-3, 1e-15);
  // In the table: interpolated in rows between batches, and growing with rows past the last batch.
  HardwareProfile hw = roofline(100);
  HardwareMeasured hm;
  hm.linear["bf16"] = {p, LinearPoint{4, 0.0, 1.0, {{1e5, 20.0}, {1e6, 80.0}, {4e6, 200.0}}}};
  hw.measured = hm;
  EXPECT_NEAR(hw.linear_seconds("bf16", 2, 0.5e6, 1), 40e-6, 1e-15);
  EXPECT_NEAR(hw.linear_seconds("bf16", 2, 0.5e6, 2), 40e-6 + (80e-6 - 40e-6) / 3, 1e-15);
  EXPECT_NEAR(hw.linear_seconds("bf16", 2, 0.5e6, 8), 160e-6, 1e-15);
  EXPECT_NEAR(hw.streaming_bandwidth_bps("bf16"), 4e6 / 100e-6, 1.0);
}

// Ranks sharing a host's memory: the host's bandwidth is split among the ranks still reading.
TEST(PerfRouting, SharedMemoryFinish) {
  std::vector<double> t = {1.0, 1.0};
  EXPECT_NEAR(shared_memory_finish(t, 2, 1.5), 1.0, 1e-12);  // equal work: all of it shared
  t = {2.0, 0.0};
  EXPECT_NEAR(shared_memory_finish(t, 2, 1.5), 2.0 / 1.5, 1e-12);  // one reads alone from the start
  t = {1.0, 2.0};
  EXPECT_NEAR(shared_memory_finish(t, 2, 1.5), 1.0 + 1.0 / 1.5, 1e-12);
  t = {4.0, 1.0, 1.0, 1.0};
  EXPECT_NEAR(shared_memory_finish(t, 4, 3.0), 1.0 + 3.0 / 3.0, 1e-12);
  t = {1.0, 2.0, 3.0, 3.0};  // 4 readers: speed 1; then 3: 4/3; then 2: min(1.5, 2) = 1.5
  EXPECT_NEAR(shared_memory_finish(t, 4, 1.5), 1.0 + 1.0 / (4.0 / 3.0) + 1.0 / 1.5, 1e-12);
  t = {1.0, 3.0};
  EXPECT_NEAR(shared_memory_finish(t, 2, 1.0), 3.0, 1e-12);  // no speedup: the slowest rank's time
}

// In a prediction: 2 experts on 2 ranks of one host, top-1, batch 1: one rank works and the other waits, so
// the busiest rank's experts take the all-reading time divided by the measured speedup.
TEST(PerfModel, ARankReadingAloneOnASharedHostIsFaster) {
  HardwareProfile hw = roofline(100);
  HardwareMeasured hm = flat_table();
  hm.info.ranks = 2;
  hm.info.ranks_per_host = 2;
  hw.measured = hm;
  HardwareProfile shared = hw;
  shared.measured->alone_speedup = 1.6;
  const ModelShape m = tiny(2, 1);
  Scenario s;
  s.placement = "contiguous";
  s.nodes = 2;
  s.batch = 1;
  s.context = 10;
  s.prompt = 0;
  const Prediction a = predict(m, hw, network(10, 1), s);
  const Prediction b = predict(m, shared, network(10, 1), s);
  EXPECT_GT(a.decode.experts_max, 0);
  EXPECT_NEAR(b.decode.experts_max, a.decode.experts_max / 1.6, 1e-12);
  EXPECT_NEAR(b.decode.experts_mean, a.decode.experts_mean, 1e-15);
  EXPECT_NEAR(b.decode.attention, a.decode.attention, 1e-15);
  // Calibrated with one rank per host: nothing to share, no speedup.
  HardwareProfile one = shared;
  one.measured->info.ranks_per_host = 1;
  EXPECT_NEAR(predict(m, one, network(10, 1), s).decode.experts_max, a.decode.experts_max, 1e-15);
}

// The calibrated expert (gate, up, silu·mul, down at batch 1) beyond the table's three matrices is a per-expert
// cost the model adds to every expert run; never negative, and absent without a measured expert.
TEST(PerfModel, MeasuredExpertExtraIsAddedPerExpertRun) {
  HardwareProfile hw = roofline(100);
  HardwareMeasured hm = flat_table();
  hm.expert_d_model = 64;
  hm.expert_ffn = 128;
  const double table = 3 * (2e-6 + 64 * 128 * 2 * 0.1e-9);
  hm.expert_us["bf16"] = (table + 5e-6) * 1e6;
  hw.measured = hm;
  EXPECT_NEAR(hw.expert_extra_seconds("bf16", 2), 5e-6, 1e-12);
  EXPECT_EQ(hw.expert_extra_seconds("f32", 4), 0.0);  // nothing measured for f32
  HardwareProfile faster = hw;
  faster.measured->expert_us["bf16"] = (table - 1e-6) * 1e6;  // the whole expert beat the table: no negative cost
  EXPECT_EQ(faster.expert_extra_seconds("bf16", 2), 0.0);
  HardwareProfile disturbed = hw;
  disturbed.measured->expert_us["bf16"] = 3 * table * 1e6;  // 3x its matrices: a disturbed measurement
  EXPECT_EQ(disturbed.expert_extra_seconds("bf16", 2), 0.0);

  // In a prediction: N = 1, batch 1, top-2 of 4 experts, the model's expert is the calibrated shape.
  const ModelShape m = tiny(4, 2);
  Scenario s;
  s.placement = "contiguous";
  s.batch = 1;
  s.context = 10;
  s.prompt = 0;
  HardwareProfile none = hw;
  none.measured->expert_us.clear();
  const Prediction with = predict(m, hw, network(10, 1), s);
  const Prediction without = predict(m, none, network(10, 1), s);
  EXPECT_NEAR(with.decode.experts_max - without.decode.experts_max, 2 * 5e-6 * double(m.n_layers), 1e-12);
}

// Brute force: every routing of `rows` tokens (k-subsets, equally likely), moep's replica rule written out
// again here, per-rank time Σ cost[n_e].
static double brute_force_emax(const std::vector<std::vector<int>>& replicas, int n_ranks, int E, int k, int rows,
                               const std::vector<double>& cost) {
  std::vector<std::vector<int>> subsets;
  for (int mask = 0; mask < (1 << E); ++mask) {
    if (__builtin_popcount(unsigned(mask)) != k) continue;
    std::vector<int> s;
    for (int e = 0; e < E; ++e)
      if (mask >> e & 1) s.push_back(e);
    subsets.push_back(s);
  }
  double total = 0;
  int outcomes = 0;
  std::vector<int> idx(size_t(rows), 0);
  for (;;) {
    std::vector<int> load(size_t(n_ranks), 0);
    std::map<std::pair<int, int>, int> count;
    for (int t = 0; t < rows; ++t)
      for (int e : subsets[size_t(idx[size_t(t)])]) {
        int best = replicas[size_t(e)][0];
        for (int r : replicas[size_t(e)])
          if (load[size_t(r)] < load[size_t(best)]) best = r;
        load[size_t(best)]++;
        count[{best, e}]++;
      }
    std::vector<double> tr(size_t(n_ranks), 0);
    for (auto& [re, c] : count) tr[size_t(re.first)] += cost[size_t(c)];
    total += *std::max_element(tr.begin(), tr.end());
    ++outcomes;
    int t = rows - 1;
    while (t >= 0 && ++idx[size_t(t)] == int(subsets.size())) idx[size_t(t--)] = 0;
    if (t < 0) break;
  }
  return total / outcomes;
}

TEST(PerfRouting, ExpectedMaxMatchesBruteForce) {
  const int E = 6, k = 2, rows = 2;
  const std::vector<double> cost = {0, 1.0, 1.3, 1.6, 1.9};  // fixed cost per expert plus a little per row
  const std::vector<double> pi(E, double(k) / E);
  for (int n_ranks : {2, 3}) {
    const ExpertPlacement pl = ExpertPlacement::contiguous(1, E, n_ranks);
    std::vector<std::vector<int>> reps(E);
    for (int e = 0; e < E; ++e) reps[size_t(e)] = pl.replicas(0, e);
    const double bf = brute_force_emax(reps, n_ranks, E, k, rows, cost);
    const ExpertTimeStats exact = expected_expert_time(pl, 0, pi, rows, k, cost, 0, 1);
    EXPECT_TRUE(exact.exact);
    EXPECT_EQ(exact.samples, 15 * 15);
    EXPECT_NEAR(exact.max_rank_s, bf, 1e-12) << n_ranks;
    const ExpertTimeStats mc = expected_expert_time(pl, 0, pi, rows, k, cost, 20000, 7, /*exact_limit=*/0);
    EXPECT_FALSE(mc.exact);
    EXPECT_NEAR(mc.max_rank_s, bf, bf * 0.01) << n_ranks;
    // Mean over ranks is exactly computable: E[Σ_r time] / N.
    EXPECT_LT(exact.mean_rank_s, exact.max_rank_s);
  }
}

TEST(PerfRouting, ExpectedMaxWithReplicaMatchesBruteForce) {
  test::TempDir dir;
  const std::string path = dir.str() + "/placement.json";
  std::ofstream(path) << R"({"experts": [[0, 1], [0], [0], [1], [1]]})";
  const int E = 5, k = 2, rows = 2;
  const ExpertPlacement pl = ExpertPlacement::from_json_file(path, 1, E, 2);
  const std::vector<double> cost = {0, 1.0, 1.5, 2.0, 2.5};
  const double bf = brute_force_emax({{0, 1}, {0}, {0}, {1}, {1}}, 2, E, k, rows, cost);
  const ExpertTimeStats st = expected_expert_time(pl, 0, std::vector<double>(E, 0.4), rows, k, cost, 0, 1);
  EXPECT_NEAR(st.max_rank_s, bf, 1e-12);
}

TEST(PerfRouting, SamplingHasTheRecordedInclusionProbabilities) {
  const std::vector<double> pi = {0.9, 0.5, 0.3, 0.2, 0.05, 0.05};  // Σ = 2 = k
  std::mt19937_64 rng(3);
  std::vector<int32_t> order;
  std::vector<double> freq(pi.size(), 0);
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    int32_t out[2];
    sample_experts(pi, 2, rng, out, order);
    ASSERT_NE(out[0], out[1]);
    freq[size_t(out[0])] += 1.0 / n;
    freq[size_t(out[1])] += 1.0 / n;
  }
  for (size_t e = 0; e < pi.size(); ++e) EXPECT_NEAR(freq[e], pi[e], 0.005) << e;
}

TEST(PerfRouting, RecordParsingAndErrors) {
  const std::string good = R"({"format": "moep-routing-v1", "model": "tiny", "n_layers": 2, "n_experts": 4,
    "top_k": 2, "tokens": 10, "counts": [[10, 5, 3, 2], null]})";
  const RoutingRecord r = parse_routing_record(good, "good.json");
  EXPECT_EQ(r.counts[0].size(), 4u);
  EXPECT_TRUE(r.counts[1].empty());
  const auto pi = inclusion_probabilities(&r, 0, 4, 2);
  EXPECT_DOUBLE_EQ(pi[0], 1.0);
  EXPECT_DOUBLE_EQ(pi[3], 0.2);
  EXPECT_TRUE(is_uniform(inclusion_probabilities(&r, 1, 4, 2)));
  auto expect_error = [](const std::string& text, const char* needle) {
    try {
      parse_routing_record(text, "bad.json");
      FAIL() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(R"({"format": "x"})", "moep-routing-v1");
  expect_error(R"({"format": "moep-routing-v1", "n_layers": 1, "n_experts": 4, "top_k": 2, "tokens": 10,
                   "counts": [[10, 5, 3, 3]]})", "sum to");
  expect_error(R"({"format": "moep-routing-v1", "n_layers": 1, "n_experts": 4, "top_k": 2, "tokens": 10,
                   "counts": [[11, 5, 3, 1]]})", "more than");
  expect_error(R"({"format": "moep-routing-v1", "n_layers": 2, "n_experts": 4, "top_k": 2, "tokens": 10,
                   "counts": [[10, 5, 3, 2]]})", "2 entries");
  // A record for another model is refused by the model.
  const ModelShape m = tiny(4, 2, 3);
  EXPECT_THROW(check_routing_matches(r, m), Error);
}

TEST(PerfModel, MemoryFit) {
  const ModelShape m = tiny(8, 2, 4);
  Scenario s;
  s.placement = "contiguous";
  s.batch = 2;
  s.context = 100;
  s.prefill_chunk = 1;
  const double wb = 2;
  const double replicated = double(m.replicated_elems()) * wb;
  const double expert = double(m.expert_elems) * wb;
  const double kv = 4.0 * 2 * 100 * (2 * 32) * 4;
  for (int n : {1, 2, 3}) {
    s.nodes = n;
    const MemoryUse u = memory_use(m, roofline(100, 1), s);
    const int64_t per_node = (8 + n - 1) / n * 4;  // contiguous: the first ranks take the remainder
    EXPECT_EQ(u.experts_held, per_node);
    EXPECT_NEAR(u.replicated, replicated, 0);
    EXPECT_NEAR(u.experts, double(per_node) * expert, 1e-6);
    EXPECT_NEAR(u.kv_cache, kv, 1e-6);
    EXPECT_GT(u.activations, 0);
  }
  // Capacity between the 2-node and 1-node needs: fits on 2, not on 1.
  s.nodes = 1;
  const double need1 = memory_use(m, roofline(100, 1), s).total();
  s.nodes = 2;
  const double need2 = memory_use(m, roofline(100, 1), s).total();
  HardwareProfile hw = roofline(100, (need1 + need2) / 2 * 1e-9);
  s.nodes = 1;
  EXPECT_FALSE(memory_use(m, hw, s).fits());
  s.nodes = 2;
  EXPECT_TRUE(memory_use(m, hw, s).fits());
}

TEST(PerfPlan, NonsenseInputGetsClearErrors) {
  const ModelShape m = tiny(8, 2, 4);
  const HardwareProfile hw = roofline(100);
  const NetworkProfile net = network(10, 1);
  PlanRequest req;
  req.base.placement = "contiguous";
  req.model = &m;
  req.hardware = {&hw};
  req.networks = {&net};
  req.nodes = {0, 1};
  auto expect_error = [&](const char* needle) {
    try {
      make_plan(req);
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("1 or more");
  req.nodes = {};
  expect_error("no node counts");
  req.nodes = {1, 2};
  req.base.batch = 0;
  expect_error("batch");
  req.base.batch = 1;
  // Cannot fit anywhere: the replicated part alone exceeds the memory.
  const HardwareProfile small = roofline(100, double(m.replicated_elems()) * 2 * 1e-9 * 0.5);
  req.hardware = {&small};
  expect_error("at any node count");
  // Fits only from 3 nodes on; 1..2 asked.
  Scenario s = req.base;
  s.nodes = 3;
  const double need3 = memory_use(m, roofline(100), s).total();
  s.nodes = 2;
  const double need2 = memory_use(m, roofline(100), s).total();
  const HardwareProfile mid = roofline(100, (need3 + need2) / 2 * 1e-9);
  req.hardware = {&mid};
  expect_error("needs at least 3 nodes");
  req.nodes = {1, 2, 3, 4};
  EXPECT_NO_THROW(make_plan(req));
}

TEST(PerfPlan, CheapestMeetingTargetAndSpeed) {
  ProfileSet profiles;
  profiles.load_dir(default_profile_dir());
  const ModelShape dbrx = resolve_model("dbrx");
  PlanRequest req;
  req.base.placement = "contiguous";
  req.model = &dbrx;
  req.hardware = {&profiles.hardware("m2-ultra-192gb"), &profiles.hardware("m3-ultra-512gb")};
  req.networks = {&profiles.network("10gbe-tcp"), &profiles.network("tb5-rdma"), &profiles.network("1gbe-tcp")};
  for (int n = 1; n <= 8; ++n) req.nodes.push_back(n);
  req.base.batch = 1;
  req.base.context = 2048;
  req.target_tps = 5;
  const auto t0 = std::chrono::steady_clock::now();
  const PlanResult res = make_plan(req);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 1.0);
  ASSERT_GE(res.cheapest_meeting_target, 0);
  const PlanRow& best = res.rows[size_t(res.cheapest_meeting_target)];
  for (const auto& r : res.rows) {
    if (r.p.memory.fits() && r.p.decode_tokens_per_s >= 5) {
      EXPECT_GE(r.p.price_usd, best.p.price_usd);
    }
  }
  // DBRX bf16 (264 GB) does not fit one 192 GB M2 Ultra.
  for (const auto& r : res.rows) {
    if (r.hardware->name == "m2-ultra-192gb" && r.nodes == 1) {
      EXPECT_FALSE(r.p.memory.fits());
    }
  }
  EXPECT_FALSE(format_plan(req, res).empty());

  // A large batch on a many-expert model with a recorded routing also plans in well under a second.
  const ModelShape ds = resolve_model("deepseek-v3");
  RoutingRecord rec;
  rec.n_layers = ds.n_layers, rec.n_experts = ds.n_experts, rec.top_k = ds.top_k, rec.tokens = 1000;
  rec.source = "synthetic";
  rec.counts.resize(size_t(ds.n_layers));
  std::mt19937_64 rng(1);
  for (int64_t l = 3; l < ds.n_layers; ++l) {
    std::vector<double> c(size_t(ds.n_experts), 0);
    for (int t = 0; t < 1000; ++t) {
      std::vector<int32_t> order(static_cast<size_t>(ds.n_experts));
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      for (int j = 0; j < 8; ++j) c[size_t(order[size_t(j)])] += 1;
    }
    rec.counts[size_t(l)] = c;
  }
  PlanRequest req2;
  req2.base.placement = "contiguous";
  req2.model = &ds;
  req2.hardware = {&profiles.hardware("m3-ultra-512gb")};
  req2.networks = {&profiles.network("tb5-rdma")};
  req2.nodes = {2, 4, 8};
  req2.base.batch = 8;
  req2.base.routing = &rec;
  req2.base.dtype = "q4_0";
  const auto t1 = std::chrono::steady_clock::now();
  const PlanResult res2 = make_plan(req2);
  // Not a speed figure: a guard against the estimate blowing up into an exact enumeration. 10 s leaves room for a
  // loaded CI machine (1.02 s was seen with other builds running).
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), 10.0);
  EXPECT_FALSE(res2.rows.front().p.experts_exact);
}

// Splits a table line at runs of two or more spaces.
std::vector<std::string> table_fields(const std::string& line) {
  std::vector<std::string> f;
  size_t i = line.find_first_not_of(' ');
  while (i != std::string::npos && i < line.size()) {
    size_t j = line.find("  ", i);
    if (j == std::string::npos) j = line.size();
    f.push_back(line.substr(i, j - i));
    i = line.find_first_not_of(' ', j);
  }
  return f;
}

TEST(PerfPlan, TableColumnsStayApartWithTheLongestNames) {
  ProfileSet profiles;
  profiles.load_dir(default_profile_dir());
  const ModelShape m = tiny(8, 2, 2);
  PlanRequest req;
  req.base.placement = "contiguous";
  req.model = &m;
  // Every shipped profile (the longest names there are), and names longer than any.
  for (const auto& h : profiles.hardware_names()) req.hardware.push_back(&profiles.hardware(h));
  for (const auto& n : profiles.network_names()) req.networks.push_back(&profiles.network(n));
  HardwareProfile long_hw = roofline(100);
  long_hw.name = "a-hardware-profile-name-longer-than-any-shipped-one-0123456789";
  NetworkProfile long_net = network(10, 1);
  long_net.name = "a-network-profile-name-longer-than-any-shipped-one-0123456789";
  req.hardware.push_back(&long_hw);
  req.networks.push_back(&long_net);
  req.nodes = {1, 2, 64};
  const PlanResult res = make_plan(req);
  const std::string text = format_plan(req, res);
  std::istringstream in(text);
  std::string line;
  std::vector<std::string> table;
  bool in_table = false;
  while (std::getline(in, line)) {
    if (line.rfind("hardware  ", 0) == 0 && line.find("network") != std::string::npos) in_table = true;
    if (in_table && line.empty()) break;
    if (in_table) table.push_back(line);
  }
  ASSERT_EQ(table.size(), res.rows.size() + 1) << text;
  const std::vector<std::string> header = table_fields(table[0]);
  ASSERT_EQ(header.size(), 15u) << table[0];
  for (size_t i = 1; i < table.size(); ++i) {
    const PlanRow& r = res.rows[i - 1];
    const std::vector<std::string> f = table_fields(table[i]);
    ASSERT_EQ(f.size(), header.size()) << table[i];
    EXPECT_EQ(f[0], r.hardware->name);
    EXPECT_EQ(f[1].substr(0, f[1].find('*')), backend_name(r.hardware->backend));
    EXPECT_EQ(f[2], r.network ? r.network->name : "-");
    EXPECT_EQ(f[3], std::to_string(r.nodes));
    // Every row as long as the header: the numbers are right-aligned under their headings.
    EXPECT_EQ(table[i].size(), table[0].size()) << table[0] << "\n" << table[i];
    // The network column starts at the same place on every line.
    EXPECT_EQ(table[i].find(f[2], f[0].size() + f[1].size()), table[0].find("network")) << table[i];
  }
}

// The GPU hardware class: a roofline GPU with a dispatch cost and the all-reduce's host round trip.
HardwareProfile gpu_roofline(double gbs, double dispatch_us, double roundtrip_us, double copy_gbs = 0) {
  HardwareProfile h = roofline(gbs);
  h.name = "test-gpu";
  h.backend = Backend::Vulkan;
  h.dispatch_us = {dispatch_us, "test", "", false, true};
  h.allreduce_roundtrip_us = {roundtrip_us, "test", "", false, true};
  if (copy_gbs > 0) h.host_copy_gbs = {copy_gbs, "test", "", false, true};
  return h;
}

TEST(PerfModel, GpuDispatchCostSlowsEveryStep) {
  const ModelShape m = tiny(8, 2, 2);
  const NetworkProfile net = network(10, 1);
  Scenario s;
  s.placement = "contiguous";
  s.batch = 1;
  s.context = 16;
  s.prompt = 8;
  s.seed = 3;
  const Prediction none = predict(m, gpu_roofline(100, 0, 0), net, s);
  const Prediction some = predict(m, gpu_roofline(100, 5, 0), net, s);
  const Prediction more = predict(m, gpu_roofline(100, 20, 0), net, s);
  EXPECT_EQ(none.decode.dispatch, 0.0);
  EXPECT_GT(some.decode.dispatch, 0.0);
  EXPECT_GT(none.decode_tokens_per_s, some.decode_tokens_per_s);
  EXPECT_GT(some.decode_tokens_per_s, more.decode_tokens_per_s);
  EXPECT_GT(some.prefill_tokens_per_s, more.prefill_tokens_per_s);
  // Linear in the dispatch cost: per layer a fixed number of kernels plus one per matrix op and expert run.
  EXPECT_NEAR(more.decode.total() - none.decode.total(), 4.0 * (some.decode.total() - none.decode.total()), 1e-12);
  // Every kernel of the step is counted: 2 layers × (4 attention matrices + 5 other kernels + router + 4 MoE
  // kernels + 2 experts × (3 matrices + silu·mul)) + head + its norm = 2 × 22 + 2 = 46 dispatches.
  EXPECT_NEAR(some.decode.total() - none.decode.total(), 46 * 5e-6, 1e-10);
  // A CPU profile of the same figures is untouched by them (the parser refuses them there; the model ignores them).
  HardwareProfile cpu = gpu_roofline(100, 20, 1000);
  cpu.backend = Backend::Cpu;
  const Prediction c = predict(m, cpu, net, s);
  EXPECT_EQ(c.decode.dispatch, 0.0);
  EXPECT_DOUBLE_EQ(c.decode.total(), predict(m, roofline(100), net, s).decode.total());
}

TEST(PerfModel, GpuAllreduceRoundTripOnlyWithSeveralNodes) {
  const ModelShape m = tiny(8, 2, 2);
  const NetworkProfile net = network(10, 1);
  Scenario s;
  s.placement = "contiguous";
  s.batch = 4;
  s.context = 16;
  s.prompt = 0;
  const HardwareProfile plain = gpu_roofline(100, 2, 0), trip = gpu_roofline(100, 2, 40, 25);
  // One node: no all-reduce, so no round trip.
  s.nodes = 1;
  EXPECT_DOUBLE_EQ(predict(m, plain, net, s).decode.total(), predict(m, trip, net, s).decode.total());
  EXPECT_EQ(predict(m, trip, net, s).decode.allreduce, 0.0);
  // Two nodes: each MoE layer's all-reduce gains the round trip and the copies of its buffer down and up.
  s.nodes = 2;
  const Prediction a = predict(m, plain, net, s), b = predict(m, trip, net, s);
  const double bytes = 4.0 * 64 * 4;  // batch × d_model × f32
  EXPECT_NEAR(b.decode.allreduce - a.decode.allreduce, 2 * (40e-6 + 2 * bytes / 25e9), 1e-12);
  EXPECT_NEAR(b.decode.compute(), a.decode.compute(), 1e-12);
  EXPECT_LT(b.decode_tokens_per_s, a.decode_tokens_per_s);
}

TEST(PerfPlan, SaysWhichBackendEachProfileModels) {
  ProfileSet profiles;
  profiles.load_dir(default_profile_dir());
  const ModelShape dbrx = resolve_model("dbrx");
  PlanRequest req;
  req.model = &dbrx;
  req.hardware = {&profiles.hardware("m2-ultra-192gb"), &profiles.hardware("m2-ultra-192gb-cpu")};
  req.networks = {&profiles.network("tb5-rdma")};
  req.nodes = {2};
  const PlanResult res = make_plan(req);
  ASSERT_EQ(res.rows.size(), 2u);
  // What moep does on the Mac today (its CPU) is slower than what a Metal backend would do.
  EXPECT_GT(res.rows[0].p.decode_tokens_per_s, res.rows[1].p.decode_tokens_per_s);
  const std::string text = format_plan(req, res);
  EXPECT_NE(text.find("hardware  m2-ultra-192gb (metal): "), std::string::npos) << text;
  EXPECT_NE(text.find("hardware  m2-ultra-192gb-cpu (cpu): "), std::string::npos) << text;
  EXPECT_NE(text.find("metal: not implemented in moep; what a Metal backend would do"), std::string::npos) << text;
  EXPECT_NE(text.find(" metal* "), std::string::npos) << text;
  const nlohmann::json j = plan_to_json(req, res);
  EXPECT_EQ(j["rows"][0]["backend"], "metal");
  EXPECT_EQ(j["rows"][0]["backend_in_this_build"], false);
  EXPECT_EQ(j["rows"][1]["backend"], "cpu");
  EXPECT_EQ(j["rows"][1]["backend_in_this_build"], true);
  // A plan of CPU profiles alone has no caveat.
  req.hardware = {&profiles.hardware("m2-ultra-192gb-cpu")};
  EXPECT_EQ(format_plan(req, make_plan(req)).find("not implemented"), std::string::npos);
}

TEST(PerfPlanCli, PlansForThisMachineWithOnlyAModel) {
  test::TempDir cache;
  const std::string env = "MOEP_CACHE_DIR=" + cache.str() + " ";
  const std::string plan = env + test::moep_binary() + " plan";
  std::string out;
  // The command a newcomer types first. No stored calibration: a quick one is made, said so, and stored. DBRX
  // needs more than 8 machines like this one: the node counts reach as far as it fits.
  ASSERT_EQ(test::run_command(plan + " --model dbrx", &out), 0) << out;
  EXPECT_NE(out.find("calibrating this machine quickly"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(cache.path() / "this-machine.json")) << out;
  EXPECT_NE(out.find("\nthis-machine  "), std::string::npos) << out;
  EXPECT_NE(out.find("10gbe-tcp"), std::string::npos) << "the common networks are shown: " << out;
  EXPECT_NE(out.find(" yes "), std::string::npos) << "some node count fits: " << out;
  // The next plan uses the stored one.
  const std::string cmd = plan + " --model olmoe-1b-7b";
  ASSERT_EQ(test::run_command(cmd + " --nodes 1,2 --network 25gbe-tcp", &out), 0) << out;
  EXPECT_NE(out.find("with the calibration stored at"), std::string::npos) << out;
  EXPECT_EQ(out.find("calibrating this machine"), std::string::npos) << out;
  EXPECT_EQ(out.find("10gbe-tcp"), std::string::npos) << "only the network asked for: " << out;
  // A stored calibration of another machine is not used.
  std::ifstream f(cache.path() / "this-machine.json");
  nlohmann::json j = nlohmann::json::parse(f);
  f.close();
  j["profiles"][0]["measured"]["cpu"] = "Some Other CPU";
  std::ofstream(cache.path() / "this-machine.json") << j.dump();
  ASSERT_EQ(test::run_command(cmd + " --nodes 2 --network 25gbe-tcp", &out), 0) << out;
  EXPECT_NE(out.find("another machine"), std::string::npos) << out;
  EXPECT_NE(out.find("calibrating this machine quickly"), std::string::npos) << out;
}

TEST(PerfPlan, ChartsRender) {
  ProfileSet profiles;
  profiles.load_dir(default_profile_dir());
  const ModelShape m = resolve_model("mixtral-8x7b");
  PlanRequest req;
  req.base.placement = "contiguous";
  req.model = &m;
  req.hardware = {&profiles.hardware("m2-ultra-192gb")};
  req.networks = {&profiles.network("10gbe-tcp"), &profiles.network("tb5-rdma")};
  req.nodes = {1, 2, 4, 8};
  const PlanResult res = make_plan(req);
  for (const Chart& c : {chart_nodes(req, res), chart_latency(req), chart_bandwidth(req)}) {
    const std::string svg = render_svg(c);
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
    EXPECT_EQ(svg.find("nan"), std::string::npos);
    EXPECT_EQ(svg.find("inf"), std::string::npos);
  }
  EXPECT_NE(render_svg(chart_nodes(req, res)).find("tb5-rdma"), std::string::npos);
}

TEST(PerfCalibrate, RelativeFitRecoversALine) {
  std::vector<std::pair<double, double>> pts;
  for (double x : {4.0, 64.0, 1024.0, 65536.0, 1048576.0}) pts.emplace_back(x, 3e-6 + x * 2e-10);
  const auto [a, b] = fit_relative(pts);
  EXPECT_NEAR(a, 3e-6, 1e-12);
  EXPECT_NEAR(b, 2e-10, 1e-16);
  EXPECT_THROW(fit_relative({{1.0, 1.0}}), Error);
}

TEST(PerfRouting, CounterWritesARecordThePlannerReads) {
  const ModelShape m = tiny(4, 2, 3);
  std::vector<bool> kinds = {true, false, true};
  RoutingCounter counter(3, 4, 2, kinds, "tiny");
  const int32_t step1[] = {0, 1, 0, 2, 3, 0};  // 3 rows
  const int32_t step2[] = {1, 2};              // 1 row
  for (int64_t l : {0, 2}) {
    counter.add(l, step1, 3);
    counter.add(l, step2, 1);
  }
  test::TempDir dir;
  counter.write(dir.str() + "/routing.json");
  const RoutingRecord r = load_routing_record(dir.str() + "/routing.json");
  EXPECT_EQ(r.tokens, 4);
  ASSERT_EQ(r.counts[0].size(), 4u);
  EXPECT_EQ(r.counts[0][0], 3);
  EXPECT_EQ(r.counts[0][1], 2);
  EXPECT_EQ(r.counts[0][2], 2);
  EXPECT_EQ(r.counts[0][3], 1);
  EXPECT_TRUE(r.counts[1].empty());
  ModelShape m3 = m;
  m3.layer_is_moe = kinds;
  EXPECT_NO_THROW(check_routing_matches(r, m3));
  Scenario s;
  s.placement = "contiguous";
  s.nodes = 2;
  s.routing = &r;
  s.prompt = 0;
  EXPECT_GT(predict(m3, roofline(100), network(10, 1), s).decode_tokens_per_s, 0);
}

TEST(PerfRouting, RecordedStepsAreReplayed) {
  // Two experts, top-1, two ranks: if every row of a step chose the same expert, the busy rank does all the
  // work; independent uniform rows would often split it.
  ModelShape m = tiny(2, 1, 1);
  RoutingCounter counter(1, 2, 1, {true}, "tiny");
  for (int i = 0; i < 10; ++i) {
    const int32_t e = i % 2;
    counter.add_step({{e, e, e, e}}, 4);
  }
  test::TempDir dir;
  counter.write(dir.str() + "/r.json");
  const RoutingRecord r = load_routing_record(dir.str() + "/r.json");
  ASSERT_EQ(r.steps.size(), 10u);
  EXPECT_EQ(r.tokens, 40);
  const RoutingSet set = recorded_routings(r, 0, 4);
  EXPECT_EQ(set.count, 10);
  EXPECT_EQ(recorded_routings(r, 0, 3).count, 0);
  Scenario s;
  s.placement = "contiguous";
  s.nodes = 2;
  s.batch = 4;
  s.prompt = 0;
  s.routing = &r;
  const Prediction replayed = predict(m, roofline(100), network(10, 1), s);
  s.routing = nullptr;
  const Prediction uniform = predict(m, roofline(100), network(10, 1), s);
  // Replayed: one rank runs one expert over 4 rows, the other nothing: mean is half the max.
  EXPECT_NEAR(replayed.decode.experts_mean * 2, replayed.decode.experts_max, 1e-15);
  EXPECT_GT(replayed.decode.imbalance(), uniform.decode.imbalance());
  const std::string bad = R"({"format": "moep-routing-v1", "n_layers": 1, "n_experts": 2, "top_k": 1, "tokens": 1,
    "counts": [[1, 0]], "steps": [{"rows": 1, "ids": [[5]]}]})";
  EXPECT_THROW(parse_routing_record(bad, "bad.json"), Error);
}

// A validation case may name several calibrations of the same setup (made at different times): its prediction
// is the mean of their step times, not of their rates.
// Under a split placement a shared expert is read once over all ranks (a slice each), not once per rank: the
// experts a run read, recovered from its bytes, count it once, so that batch-4 greedy runs (every sequence
// the same token) are recognized as identical routing.
TEST(PerfValidate, SplitRunsCountTheSharedExpertOnce) {
  test::TempDir d;
  auto write = [&](const std::string& name, const nlohmann::json& j) {
    std::ofstream(d.str() + "/" + name) << j.dump();
  };
  HardwareProfile hw = roofline(100);
  hw.name = "hw";
  write("hw.json", hardware_profile_to_json(hw));
  const std::string model = test::fixture_dir("qwen2_moe_bf16");
  const ModelShape m = shape_from_config(load_model_config(model), "qwen2");
  ASSERT_GT(m.shared_elems, 0);
  double replicated = double(m.head_elems), shared = 0;
  for (int64_t l = 0; l < m.n_layers; ++l) {
    for (int64_t w : m.attn_matrices) replicated += double(w);
    if (m.layer_is_moe[size_t(l)]) {
      replicated += double(m.router_elems);
      shared += double(m.shared_elems);
    } else {
      replicated += double(m.dense_elems);
    }
  }
  const int ranks = 2, batch = 4;
  // What two split ranks read per step when all 4 rows route alike: every non-expert weight on each rank,
  // the shared expert and the top_k experts once in all (slices), per token of the batch.
  const double per_token =
      (ranks * replicated + shared + double(m.top_k) * double(m.expert_elems) * double(m.n_moe_layers())) * 2.0 / batch;
  write("bench.json", {{"decode_tokens_per_s", 100.0}, {"decode_step_ms_p50", 40.0}, {"prefill_tokens_per_s", 50.0},
                       {"batch", batch}, {"ranks", ranks}, {"threads", 1}, {"prompt", 4}, {"gen", 4},
                       {"weight_bytes_per_token", per_token}});
  for (const std::string placement : {"split", "contiguous"}) {
    write("m.json", {{"cases", {{{"label", "x"}, {"model", model}, {"hardware", "hw.json"}, {"bench", "bench.json"},
                                  {"placement", placement}}}}});
    ProfileSet profiles;
    const ValidationResult r = run_validation(d.str() + "/m.json", profiles);
    if (placement == "split") {
      EXPECT_NEAR(r.rows[0].measured_experts, double(m.top_k), 1e-9);
      EXPECT_EQ(r.rows[0].routing, "identical (auto)");
    } else {  // read as whole experts, the same bytes leave fewer for the routed experts
      EXPECT_LT(r.rows[0].measured_experts, double(m.top_k) - 0.5);
    }
  }
}

// Runs with --attention/--head split (as the bench JSON says) are predicted split, their bytes counted with the
// ranks' shares adding up to one copy, and a replicated and a split run of the same configuration are paired: the
// table says which the model predicted faster and which was.
TEST(PerfValidate, SplitAttentionAndHeadRunsArePredictedSplitAndPaired) {
  test::TempDir d;
  auto write = [&](const std::string& name, const nlohmann::json& j) {
    std::ofstream(d.str() + "/" + name) << j.dump();
  };
  HardwareProfile hw = roofline(0.1);  // the fixture is tiny: a slow machine makes its bytes outweigh the links
  hw.name = "hw";
  write("hw.json", hardware_profile_to_json(hw));
  NetworkProfile net = network(5, 10);
  net.name = "net";
  write("net.json", network_profile_to_json(net));
  const std::string model = test::fixture_dir("qwen3_moe_f32");
  const ModelShape m = shape_from_config(load_model_config(model), "q");
  const double wb = 4.0;  // f32
  double attention = 0;
  for (int64_t w : m.attn_matrices) attention += double(w) * double(m.n_layers);
  const double router = double(m.router_elems) * double(m.n_moe_layers());
  const double experts = double(m.top_k) * double(m.expert_elems) * double(m.n_moe_layers());
  // Bytes per token as `moep bench` counts them over 2 ranks: replicated, each rank all of attention and head;
  // split, one copy of them in all.
  const double rep_bytes = (2 * (attention + double(m.head_elems) + router) + experts) * wb;
  const double split_bytes = (attention + double(m.head_elems) + 2 * router + experts) * wb;
  auto bench = [&](const std::string& mode, double tps, double bytes) {
    return nlohmann::json{{"decode_tokens_per_s", tps}, {"decode_step_ms_p50", 1e3 / tps}, {"prefill_tokens_per_s", 50.0},
                          {"batch", 1}, {"ranks", 2}, {"threads", 1}, {"prompt", 4}, {"gen", 4},
                          {"weight_bytes_per_token", bytes}, {"attention", mode}, {"head", mode}};
  };
  write("rep.json", bench("replicated", 100.0, rep_bytes));
  write("split.json", bench("split", 150.0, split_bytes));
  auto kase = [&](const std::string& label, const std::string& b) {
    return nlohmann::json{{"label", label}, {"model", model}, {"hardware", "hw.json"}, {"network", "net.json"},
                          {"bench", b}, {"routing", "uniform"}};
  };
  write("m.json", {{"cases", {kase("q", "rep.json"), kase("q", "split.json")}}});
  ProfileSet profiles;
  const ValidationResult r = run_validation(d.str() + "/m.json", profiles);
  ASSERT_EQ(r.rows.size(), 2u);
  EXPECT_FALSE(r.rows[0].split_attention || r.rows[0].split_head);
  EXPECT_TRUE(r.rows[1].split_attention && r.rows[1].split_head);
  EXPECT_NEAR(r.rows[0].measured_experts, double(m.top_k), 1e-6);
  EXPECT_NEAR(r.rows[1].measured_experts, double(m.top_k), 1e-6);
  // At 0.1 GB/s per rank and 5 us links, dividing attention and head pays: predicted faster, as measured.
  EXPECT_GT(r.rows[1].predicted_decode, r.rows[0].predicted_decode);
  ASSERT_EQ(r.split_choices.size(), 1u);
  EXPECT_TRUE(r.split_choices[0].agrees());
  EXPECT_EQ(r.split_choices_right(), 1);
  EXPECT_NE(format_validation(r).find("faster one in 1 of 1 configurations"), std::string::npos) << format_validation(r);
  // Measured the other way round: the model's choice is counted wrong.
  write("split.json", bench("split", 50.0, split_bytes));
  ProfileSet again;
  EXPECT_EQ(run_validation(d.str() + "/m.json", again).split_choices_right(), 0);
}

TEST(PerfValidate, SeveralCalibrationsAverageTheStepTime) {
  test::TempDir d;
  auto write = [&](const std::string& name, const nlohmann::json& j) {
    std::ofstream(d.str() + "/" + name) << j.dump();
  };
  HardwareProfile fast = roofline(100), slow = roofline(25);
  fast.name = "fast";
  slow.name = "slow";
  write("fast.json", hardware_profile_to_json(fast));
  write("slow.json", hardware_profile_to_json(slow));
  write("bench.json", {{"decode_tokens_per_s", 10.0}, {"decode_step_ms_p50", 100.0}, {"prefill_tokens_per_s", 50.0},
                       {"batch", 1}, {"ranks", 1}, {"threads", 1}, {"prompt", 4}, {"gen", 4}});
  const std::string model = test::fixture_dir("mixtral_bf16");
  auto manifest = [&](const nlohmann::json& hw) {
    write("m.json", {{"cases", {{{"label", "x"}, {"model", model}, {"hardware", hw}, {"bench", "bench.json"},
                                  {"routing", "uniform"}}}}});
    ProfileSet profiles;
    return run_validation(d.str() + "/m.json", profiles);
  };
  const double t_fast = 1.0 / manifest("fast.json").rows[0].predicted_decode;
  const double t_slow = 1.0 / manifest("slow.json").rows[0].predicted_decode;
  EXPECT_GT(t_slow, 3 * t_fast);  // the step is mostly weight reads: 4x the bandwidth, nearly 4x the time
  const ValidationResult both = manifest(nlohmann::json::array({"fast.json", "slow.json"}));
  EXPECT_EQ(both.rows[0].profiles, 2);
  EXPECT_NEAR(1.0 / both.rows[0].predicted_decode, 0.5 * (t_fast + t_slow), 1e-12);
  EXPECT_NE(format_validation(both).find("mean step time over the case's 2 calibrations"), std::string::npos);
  // Networks: one for all, or one per hardware profile.
  write("m.json", {{"cases", {{{"label", "x"}, {"model", model}, {"hardware", {"fast.json", "slow.json"}},
                                {"network", {"a.json", "b.json", "c.json"}}, {"bench", "bench.json"}}}}});
  ProfileSet profiles;
  try {
    run_validation(d.str() + "/m.json", profiles);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 networks for 2 hardware profiles"), std::string::npos) << e.what();
  }
}

namespace moep::perf {
namespace {

// Split attention and head against replicated (moep plan's side-by-side table): on the Qwen3-30B-A3B shape each of
// 2 ranks reads about half of attention and of the head, makes one more exchange per layer and the head's gather,
// and is predicted faster on a fast link; a link slow enough makes replicated the faster.
TEST(PerfPlan, SplitAttentionAndHeadSideBySide) {
  const ModelShape m = resolve_model("qwen3-30b-a3b");
  const HardwareProfile hw = roofline(50);
  for (const auto& [alpha_us, split_faster] : {std::pair{5.0, true}, std::pair{1e6, false}}) {
    const NetworkProfile net = network(alpha_us, 10);
    PlanRequest req;
    req.model = &m;
    req.hardware = {&hw};
    req.networks = {&net};
    req.nodes = {1, 2};
    req.base.dtype = "bf16";
    const PlanResult res = make_plan(req);
    int seen = 0;
    for (const PlanRow& r : res.rows) {
      if (r.nodes != 2) continue;
      ++seen;
      const DenseSplitRow x = dense_split_row(m, req.base, r);
      const double split_part = double(m.n_layers * m.attn_elems + m.head_elems) * 2 /* bf16 */;
      EXPECT_NEAR(x.bytes_replicated - x.bytes_split, split_part / 2, split_part * 0.01);
      EXPECT_EQ(x.exchanges_replicated, m.n_moe_layers());
      // One all-reduce per layer for attention; the head's all-gather of the ranks' best logits.
      EXPECT_EQ(x.exchanges_split, m.n_moe_layers() + m.n_layers + 1);
      // The fullest rank holds half the KV heads' cache and projections, and half the head's rows.
      EXPECT_LT(x.held_split, x.held_replicated);
      EXPECT_EQ(x.tps_split > x.tps_replicated, split_faster) << "alpha " << alpha_us << " us: " << x.tps_split
                                                               << " against " << x.tps_replicated;
    }
    EXPECT_EQ(seen, 1);
    EXPECT_NE(format_dense_split(req, res).find("tok/s split"), std::string::npos);
    // The JSON carries the same side-by-side, one entry per multi-node row.
    const nlohmann::json j = plan_to_json(req, res);
    ASSERT_EQ(j["attention_and_head"].size(), 1u);
    EXPECT_EQ(j["attention_and_head"][0]["faster"], split_faster ? "split" : "replicated");
    EXPECT_EQ(j["rows"][j["attention_and_head"][0]["row"].get<int>()]["nodes"], 2);
  }
}

// The split choices inside the model: the time and bytes of attention and head follow the largest rank's share,
// each split layer adds its all-reduces (two with a whole-projection q/k norm), the head its gather and pick,
// the KV cache shrinks with the heads; uneven shares (KV heads that do not divide) count the largest rank; MLA
// cannot be divided.
TEST(PerfModel, SplitAttentionAndHeadFollowTheLargestShare) {
  const HardwareProfile hw = roofline(50);
  const NetworkProfile net = network(10, 10);
  ModelShape m = resolve_model("qwen3-30b-a3b");  // 4 KV heads
  Scenario s;
  s.nodes = 2;
  s.dtype = "bf16";
  s.prompt = 0;
  const Prediction rep = predict(m, hw, net, s);
  s.split_attention = true;
  const Prediction att = predict(m, hw, net, s);
  EXPECT_NEAR(att.decode.attention, rep.decode.attention / 2, rep.decode.attention * 0.02);
  EXPECT_GT(att.decode.attention_allreduce, 0.0);
  EXPECT_NEAR(att.decode.attention_allreduce, double(m.n_layers) * rep.decode.allreduce / double(m.n_moe_layers()),
              1e-12);
  EXPECT_NEAR(att.memory.kv_cache, rep.memory.kv_cache / 2, 1.0);
  EXPECT_EQ(att.exchanges_per_step, rep.exchanges_per_step + m.n_layers);
  EXPECT_EQ(att.decode.head, rep.decode.head);
  s.split_head = true;
  const Prediction both = predict(m, hw, net, s);
  EXPECT_NEAR(both.decode.head, rep.decode.head / 2, rep.decode.head * 0.02);
  EXPECT_GT(both.decode.head_gather, 0.0);
  EXPECT_NEAR(rep.weight_bytes_per_step - both.weight_bytes_per_step,
              double(m.n_layers * m.attn_elems + m.head_elems) * 2.0 / 2.0, 1e3);
  // 3 ranks over 4 KV heads: the first rank holds 2, half of attention.
  s.nodes = 3;
  const Prediction three = predict(m, hw, net, s);
  s.split_attention = s.split_head = false;
  const Prediction three_rep = predict(m, hw, net, s);
  EXPECT_NEAR(three.memory.kv_cache, three_rep.memory.kv_cache / 2, 1.0);
  // One rank: nothing is divided, whatever the flags say.
  s.nodes = 1;
  s.split_attention = s.split_head = true;
  const Prediction one = predict(m, hw, net, s);
  s.split_attention = s.split_head = false;
  EXPECT_EQ(one.decode.total(), predict(m, hw, net, s).decode.total());
  // OLMoE's whole-projection q/k norm: two all-reduces per split layer.
  m = resolve_model("olmoe-1b-7b");
  EXPECT_EQ(m.attn_split_exchanges, 2);
  s.nodes = 2;
  const Prediction o_rep = predict(m, hw, net, s);
  s.split_attention = true;
  EXPECT_EQ(predict(m, hw, net, s).exchanges_per_step, o_rep.exchanges_per_step + 2 * m.n_layers);
  // MLA: refused, naming why.
  m = resolve_model("deepseek-v3");
  try {
    predict(m, hw, net, s);
    FAIL() << "split MLA was predicted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("latent"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moep::perf
