// Expert parallelism across ranks: N ranks (oversubscribed on this machine) must give what 1 rank gives, for
// every fixture and every placement kind (split experts included); the only traffic per MoE layer is one all-reduce of
// tokens × d_model values; a dead rank ends the job; disagreeing ranks refuse to start.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "io/npy.h"
#include "model/config.h"
#include "test_util.h"

namespace moep {
namespace {

struct RunOut {
  NpyArray logits;
  std::string greedy;  // printed ids
};

nlohmann::json reference(const std::string& fixture) {
  std::ifstream f(test::fixture_dir(fixture) + "/reference.json");
  return nlohmann::json::parse(f);
}

std::string ids_csv(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// Runs `moep logits` on n ranks (n = 1 without mpirun) and returns the logits and the greedy ids.
RunOut run(const std::string& fixture, int n, const std::string& placement, const std::vector<int32_t>& ids,
           int greedy, const std::string& extra = "") {
  test::TempDir d;
  const std::string out = d.str() + "/logits.npy";
  const std::string cmd = (n > 1 ? test::mpirun_prefix(n) : std::string()) + test::moep_binary() + " logits " +
                          test::fixture_dir(fixture) + " --ids " + ids_csv(ids) + " --out " + out +
                          " --threads 1 --greedy " + std::to_string(greedy) + " --placement " + placement + " " + extra;
  std::string text;
  const int st = test::run_command(cmd, &text);
  EXPECT_EQ(st, 0) << cmd << "\n" << text;
  RunOut r;
  if (st != 0) return r;
  r.logits = read_npy_f32(out);
  // The greedy ids are the last line of digits and commas: stdout and stderr come through mpirun on separate
  // channels, so a note on stderr may arrive after them.
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const std::string line = text.substr(pos, eol - pos);
    if (!line.empty() && line.find_first_not_of("0123456789,") == std::string::npos) r.greedy = line;
    pos = eol + 1;
  }
  return r;
}

// A placement file that replicates every other expert on two ranks.
std::string replicated_placement(const test::TempDir& d, int64_t n_experts, int n) {
  nlohmann::json j;
  for (int64_t e = 0; e < n_experts; ++e) {
    nlohmann::json ranks = {int(e % n)};
    if (e % 2 == 0 && n > 1) ranks.push_back(int((e + 1) % n));
    j["experts"].push_back(ranks);
  }
  const std::string p = d.str() + "/placement.json";
  std::ofstream(p) << j.dump();
  return p;
}

class Distributed : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (test::mpirun_prefix(1).empty()) GTEST_SKIP() << "mpirun is not installed";
  }
};

TEST_P(Distributed, NRanksEqualOneRankForEveryPlacement) {
  const std::string fx = GetParam();
  const auto ref = reference(fx);
  const auto ids = ref["cases"][2]["logits_tokens"].get<std::vector<int32_t>>();
  const auto prompt = ref["cases"][1]["prompt"].get<std::vector<int32_t>>();
  const auto greedy_ref = ids_csv(ref["cases"][1]["greedy"].get<std::vector<int32_t>>());
  const ModelConfig cfg = load_model_config(test::fixture_dir(fx));
  const RunOut one = run(fx, 1, "contiguous", ids, 0);
  const RunOut one_greedy = run(fx, 1, "contiguous", prompt, 24);
  ASSERT_EQ(one_greedy.greedy, greedy_ref);
  const int64_t V = cfg.vocab_size;
  for (int n : {2, 3, 4}) {
    test::TempDir d;
    for (const std::string& placement :
         {std::string("contiguous"), std::string("round-robin"), replicated_placement(d, cfg.n_experts, n),
          std::string("split")}) {
      SCOPED_TRACE(fx + " on " + std::to_string(n) + " ranks, placement " + placement);
      const RunOut many = run(fx, n, placement, ids, 0);
      ASSERT_EQ(many.logits.shape, one.logits.shape);
      for (size_t t = 0; t < ids.size(); ++t)
        EXPECT_LE(test::rel_l2(&many.logits.data[t * V], &one.logits.data[t * V], size_t(V)), 1e-5) << "position " << t;
      EXPECT_EQ(run(fx, n, placement, prompt, 24).greedy, greedy_ref);
    }
    // Ranks that each copy their weights onto huge pages (the default when every rank has a host of its own;
    // here all share one, so auto maps) compute the same.
    // Split experts copied: each rank's slice of a [d_model, ffn] down projection is a strided range of the
    // file, copied densely.
    for (const std::string placement : {"round-robin", "split"}) {
      SCOPED_TRACE(fx + " on " + std::to_string(n) + " ranks, --weights copy, placement " + placement);
      const RunOut copied = run(fx, n, placement, ids, 0, "--weights copy");
      ASSERT_EQ(copied.logits.shape, one.logits.shape);
      for (size_t t = 0; t < ids.size(); ++t)
        EXPECT_LE(test::rel_l2(&copied.logits.data[t * V], &one.logits.data[t * V], size_t(V)), 1e-5)
            << "position " << t;
    }
  }
}

// GPU ranks (under mpirun they share the one device: lavapipe in CI, an H200 on the device machine) equal one CPU
// rank: every family, split, whole-expert and replicated placements, 2 to 4 ranks.
// One dtype per family (the bf16 fixtures) keeps this short.
class DistributedGpu : public Distributed {};

TEST_P(DistributedGpu, GpuRanksEqualOneCpuRank) {
  MOEP_NEED_GPU();
  const std::string fx = GetParam();
  const auto ref = reference(fx);
  const auto ids = ref["cases"][2]["logits_tokens"].get<std::vector<int32_t>>();
  const ModelConfig cfg = load_model_config(test::fixture_dir(fx));
  const RunOut one = run(fx, 1, "contiguous", ids, 0, "--device cpu");
  const int64_t V = cfg.vocab_size;
  test::TempDir d;
  const std::vector<std::pair<int, std::string>> runs = {
      {2, "split"}, {2, replicated_placement(d, cfg.n_experts, 2)}, {3, "contiguous"}, {4, "split"}};
  for (const auto& [n, placement] : runs) {
    SCOPED_TRACE(fx + " on " + std::to_string(n) + " GPU ranks, placement " + placement);
    const RunOut many = run(fx, n, placement, ids, 0, "--device gpu");
    ASSERT_EQ(many.logits.shape, one.logits.shape);
    for (size_t t = 0; t < ids.size(); ++t)
      EXPECT_LE(test::rel_max(&many.logits.data[t * V], &one.logits.data[t * V], size_t(V)), 1e-4) << "position " << t;
  }
}

std::vector<std::string> bf16_fixtures() {
  std::vector<std::string> out;
  for (const auto& f : test::fixture_names())
    if (f.find("_bf16") != std::string::npos) out.push_back(f);
  return out;
}
INSTANTIATE_TEST_SUITE_P(Fixtures, DistributedGpu, ::testing::ValuesIn(bf16_fixtures()),
                         [](const auto& info) { return info.param; });

INSTANTIATE_TEST_SUITE_P(Fixtures, Distributed, ::testing::ValuesIn(test::fixture_names()),
                         [](const auto& info) { return info.param; });

class DistributedJob : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::mpirun_prefix(1).empty()) GTEST_SKIP() << "mpirun is not installed";
  }
};

// Per MoE layer and forward step, exactly one all-reduce of tokens × d_model floats; the other collectives
// (start-up agreement) do not grow with the number of tokens.
TEST_F(DistributedJob, OnlyOneAllReducePerMoeLayerOfTokensTimesDModel) {
  const std::string fx = "qwen2_moe_f32";  // has a dense layer, which must not communicate
  const ModelConfig cfg = load_model_config(test::fixture_dir(fx));
  auto stats_for = [&](const std::vector<int32_t>& ids, bool incremental) {
    test::TempDir d;
    const std::string js = d.str() + "/stats.json";
    std::string text;
    const std::string cmd = test::mpirun_prefix(3) + test::moep_binary() + " logits " + test::fixture_dir(fx) +
                            " --ids " + ids_csv(ids) + " --out " + d.str() + "/l.npy --threads 1 --stats-json " + js +
                            (incremental ? " --incremental" : "");
    EXPECT_EQ(test::run_command(cmd, &text), 0) << text;
    std::ifstream f(js);
    return nlohmann::json::parse(f);
  };
  const std::vector<int32_t> short_ids = {5, 6, 7}, long_ids = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const auto a = stats_for(short_ids, false);
  const auto b = stats_for(long_ids, true);
  const int64_t moe_layers = cfg.n_moe_layers();
  ASSERT_EQ(a["ranks"].size(), 3u);
  for (int r = 0; r < 3; ++r) {
    // Whole prompt: one step of 3 rows.
    EXPECT_EQ(a["ranks"][r]["allreduce_calls"].get<int64_t>(), moe_layers);
    EXPECT_EQ(a["ranks"][r]["allreduce_payload_bytes"].get<int64_t>(), moe_layers * 3 * cfg.d_model * 4);
    // Incremental: one step per token.
    EXPECT_EQ(b["ranks"][r]["allreduce_calls"].get<int64_t>(), moe_layers * int64_t(long_ids.size()));
    EXPECT_EQ(b["ranks"][r]["allreduce_payload_bytes"].get<int64_t>(),
              moe_layers * int64_t(long_ids.size()) * cfg.d_model * 4);
    EXPECT_EQ(a["ranks"][r]["other_collectives"], b["ranks"][r]["other_collectives"]);
  }
}

// --emulate-latency-us adds the given delay to every exchange step: an all-reduce over 2 ranks (one step)
// takes at least that long, and the added time shows up as all-reduce time, not as compute.
TEST_F(DistributedJob, EmulatedLatencyIsAddedToEveryExchange) {
  const std::string fx = "olmoe_f32";
  const ModelConfig cfg = load_model_config(test::fixture_dir(fx));
  test::TempDir d;
  const std::string js = d.str() + "/stats.json";
  std::string text;
  const int tokens = 6;
  const std::string cmd = test::mpirun_prefix(2) + test::moep_binary() + " logits " + test::fixture_dir(fx) +
                          " --ids 1,2,3,4,5,6 --incremental --out " + d.str() +
                          "/l.npy --threads 1 --emulate-latency-us 3000 --stats-json " + js;
  ASSERT_EQ(test::run_command(cmd, &text), 0) << text;
  std::ifstream f(js);
  const auto j = nlohmann::json::parse(f);
  for (const auto& r : j["ranks"]) {
    double allreduce_ms = 0;
    for (const auto& l : r["layers"]) allreduce_ms += l["allreduce_ms"].get<double>() + l["wait_ms"].get<double>();
    const double calls = double(cfg.n_moe_layers() * tokens);
    EXPECT_EQ(r["allreduce_calls"].get<double>(), calls);
    EXPECT_GE(allreduce_ms / calls, 3.0) << "each all-reduce must take at least the emulated 3 ms";
  }
}

// `moep calibrate` under mpirun: both ranks on this host, so the profile says how much faster one rank streams
// with the other idle (a ratio between 1 and the ranks on the host), keeps its times per matrix size, and has
// the job's all-reduce fit.
TEST_F(DistributedJob, CalibrateMeasuresRanksSharingAHost) {
  test::TempDir d;
  const std::string out = d.str() + "/p.json";
  std::string text;
  const std::string cmd = test::mpirun_prefix(2) + test::moep_binary() +
                          " calibrate --quick --threads 1 --expert-shape 256,512 --membw-mb 32 --rotation-mb 32 --out " + out;
  ASSERT_EQ(test::run_command(cmd, &text), 0) << text;
  std::ifstream f(out);
  const auto j = nlohmann::json::parse(f);
  bool hw = false, net = false;
  for (const auto& p : j["profiles"]) {
    if (p["kind"] == "hardware") {
      hw = true;
      const auto& m = p["measured"];
      EXPECT_EQ(m["ranks_per_host"].get<int>(), 2);
      const double a = m["alone_speedup"].get<double>();
      EXPECT_GE(a, 1.0);
      EXPECT_LE(a, 2.0);
      EXPECT_GE(m["linear"]["bf16"]["nt"][0]["times"].size(), 2u);
    } else if (p["kind"] == "network") {
      net = true;
      EXPECT_GT(p["measured"]["allreduce"]["2"]["b_ns_per_byte"].get<double>(), 0);
    }
  }
  EXPECT_TRUE(hw);
  EXPECT_TRUE(net);
}

TEST_F(DistributedJob, DisagreeingModelsRefuseToStart) {
  test::TempDir d;
  std::string text;
  const std::string args = " --ids 1,2 --out " + d.str() + "/x.npy --threads 1";
  const std::string prefix = test::mpirun_prefix(1);  // MPMD: one rank per model
  const std::string cmd = prefix + test::moep_binary() + " logits " + test::fixture_dir("mixtral_f32") + args +
                          " : -np 1 " + test::moep_binary() + " logits " + test::fixture_dir("olmoe_f32") + args;
  const int st = test::run_command(cmd, &text);
  EXPECT_NE(st, 0);
  EXPECT_NE(text.find("ranks disagree on the model"), std::string::npos) << text;
}

TEST_F(DistributedJob, DisagreeingPlacementsRefuseToStart) {
  test::TempDir d;
  std::string text;
  const std::string args = " --ids 1,2 --out " + d.str() + "/x.npy --threads 1";
  const std::string cmd = test::mpirun_prefix(1) + test::moep_binary() + " logits " + test::fixture_dir("mixtral_f32") +
                          args + " --placement contiguous : -np 1 " + test::moep_binary() + " logits " +
                          test::fixture_dir("mixtral_f32") + args + " --placement round-robin";
  const int st = test::run_command(cmd, &text);
  EXPECT_NE(st, 0);
  EXPECT_NE(text.find("ranks disagree on the expert placement"), std::string::npos) << text;
}

// A rank that fails to load (here: a checkpoint it cannot read) ends every rank with its message.
TEST_F(DistributedJob, OneRankFailingToLoadEndsAll) {
  test::TempDir d;
  std::string text;
  const std::string args = " --ids 1,2 --out " + d.str() + "/x.npy --threads 1";
  const auto t0 = std::chrono::steady_clock::now();
  const std::string cmd = test::mpirun_prefix(1) + test::moep_binary() + " logits " + test::fixture_dir("mixtral_f32") +
                          args + " : -np 1 " + test::moep_binary() + " logits " + d.str() + "/nowhere" + args;
  const int st = test::run_command(cmd, &text);
  EXPECT_NE(st, 0);
  EXPECT_NE(text.find("rank 1: no config.json"), std::string::npos) << text;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
}

// Killing one rank mid-run ends the whole job with a non-zero status within seconds.
TEST_F(DistributedJob, KilledRankEndsTheJob) {
  test::TempDir d;
  std::vector<int32_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(i % 300);
  const std::string pidfile = d.str() + "/pids";
  // 20 ms per exchange step × 2 layers × 200 tokens: about 8 s if nothing is killed.
  const std::string cmd = test::mpirun_prefix(3) + "bash -c 'echo $$ >> " + pidfile + "; exec " + test::moep_binary() +
                          " logits " + test::fixture_dir("olmoe_f32") + " --ids " + ids_csv(ids) + " --out " + d.str() +
                          "/x.npy --threads 1 --incremental --emulate-latency-us 20000'";
  std::string text;
  const auto t0 = std::chrono::steady_clock::now();
  std::thread killer([&] {
    // Wait until all three ranks have started, then kill the second one.
    for (int i = 0; i < 100; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      std::ifstream f(pidfile);
      std::vector<long> pids;
      long p;
      while (f >> p) pids.push_back(p);
      if (pids.size() == 3) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        test::run_command("kill -9 " + std::to_string(pids[1]), nullptr);
        return;
      }
    }
  });
  const int st = test::run_command(cmd, &text);
  killer.join();
  const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(st, 0) << text;
  EXPECT_LT(secs, 7.0) << "the job should end soon after a rank dies; it took " << secs << " s\n" << text;
}

}  // namespace
}  // namespace moep
