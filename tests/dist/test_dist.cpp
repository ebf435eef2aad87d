// Expert parallelism across ranks: N ranks (oversubscribed on this machine) must give what 1 rank gives, for
// every fixture and every placement kind (split experts included); the only traffic per MoE layer is one all-reduce of
// tokens × d_model values; a dead rank ends the job; disagreeing ranks refuse to start.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "gpu/gpu_forward.h"
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

// Runs `moep logits` on n ranks (n = 1 without mpirun) and returns the logits and the greedy ids. `fixture`: a
// fixture's name, or a model directory's absolute path.
RunOut run(const std::string& fixture, int n, const std::string& placement, const std::vector<int32_t>& ids,
           int greedy, const std::string& extra = "") {
  test::TempDir d;
  const std::string out = d.str() + "/logits.npy";
  const std::string model = fixture.rfind('/', 0) == 0 ? fixture : test::fixture_dir(fixture);
  const std::string cmd = (n > 1 ? test::mpirun_prefix(n) : std::string()) + test::moep_binary() + " logits " +
                          model + " --ids " + ids_csv(ids) + " --out " + out +
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

// A gpt-oss model (moep synth) over more positions than its 128-position window, on 2 ranks with experts split
// and attention split, and on 3 with whole experts: the same logits and greedy tokens as 1 rank.
class DistributedSynth : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::mpirun_prefix(1).empty()) GTEST_SKIP() << "mpirun is not installed";
  }
};

TEST_F(DistributedSynth, GptOssBeyondTheWindowEqualsOneRank) {
  test::TempDir d;
  const std::string m = d.str() + "/m";
  std::string out;
  ASSERT_EQ(test::run_command(test::moep_binary() + " synth " + m + " --arch gpt_oss --layers 2 --d-model 64 " +
                                  "--ffn 64 --experts 8 --top-k 2 --heads 4 --kv-heads 2 --vocab 50304",
                              &out),
            0)
      << out;
  std::vector<int32_t> ids;
  for (int i = 0; i < 150; ++i) ids.push_back(int32_t((i * 7919 + 13) % 50000));
  const int64_t V = 50304;
  const RunOut one = run(m, 1, "contiguous", ids, 0);
  const RunOut one_greedy = run(m, 1, "contiguous", ids, 12);
  ASSERT_FALSE(one_greedy.greedy.empty());
  for (const auto& [n, placement, extra] : {std::tuple<int, std::string, std::string>{2, "split", "--attention split"},
                                            {3, "round-robin", ""}}) {
    SCOPED_TRACE(std::to_string(n) + " ranks, placement " + placement + " " + extra);
    const RunOut many = run(m, n, placement, ids, 0, extra);
    ASSERT_EQ(many.logits.shape, one.logits.shape);
    for (size_t t = 0; t < ids.size(); ++t)
      EXPECT_LE(test::rel_l2(&many.logits.data[t * V], &one.logits.data[t * V], size_t(V)), 1e-5) << "position " << t;
    EXPECT_EQ(run(m, n, placement, ids, 12, extra).greedy, one_greedy.greedy);
  }
}

// Attention divided by heads and the head by vocabulary rows (--attention split --head split) equal 1 rank on
// every family: 2 ranks take one of the fixtures' 2 KV heads each, 3 and 4 ranks leave ranks with none (the
// uneven case). With split and whole-expert placements, and with weights copied (o_proj's slice of columns is a
// strided range of the file, copied densely).
TEST_P(Distributed, SplitAttentionAndHeadEqualOneRank) {
  const std::string fx = GetParam();
  const auto ref = reference(fx);
  const auto ids = ref["cases"][2]["logits_tokens"].get<std::vector<int32_t>>();
  const auto prompt = ref["cases"][1]["prompt"].get<std::vector<int32_t>>();
  const auto greedy_ref = ids_csv(ref["cases"][1]["greedy"].get<std::vector<int32_t>>());
  const ModelConfig cfg = load_model_config(test::fixture_dir(fx));
  if (cfg.is_mla()) GTEST_SKIP() << "multi-head latent attention is not split (moep refuses --attention split)";
  ASSERT_EQ(cfg.n_kv_heads, 2) << "the uneven case below needs fewer KV heads than 3 and 4 ranks";
  const RunOut one = run(fx, 1, "contiguous", ids, 0, "--attention replicated --head replicated");
  ASSERT_FALSE(one.logits.data.empty());
  const int64_t V = cfg.vocab_size;
  const std::string both = "--attention split --head split";
  const std::vector<std::pair<int, std::string>> runs = {
      {2, both}, {3, both}, {4, both}, {2, "--attention split --head replicated"},
      {3, "--attention replicated --head split"}, {2, both + " --weights copy"}};
  for (const auto& [n, flags] : runs)
    for (const std::string placement : {"split", "round-robin"}) {
      SCOPED_TRACE(fx + " on " + std::to_string(n) + " ranks, " + flags + ", placement " + placement);
      const RunOut many = run(fx, n, placement, ids, 0, flags);
      ASSERT_EQ(many.logits.shape, one.logits.shape);
      for (size_t t = 0; t < ids.size(); ++t)
        EXPECT_LE(test::rel_l2(&many.logits.data[t * V], &one.logits.data[t * V], size_t(V)), 1e-5)
            << "position " << t;
    }
  // Greedy decoding through the KV cache (each rank its heads' part) and, after the prompt, the split head's
  // distributed argmax (no logits gathered): the same tokens as one rank.
  for (int n : {2, 3, 4}) {
    SCOPED_TRACE(fx + " greedy on " + std::to_string(n) + " ranks, " + both);
    EXPECT_EQ(run(fx, n, "split", prompt, 24, both).greedy, greedy_ref);
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
  if (const std::string missing = gpu::unsupported_features(cfg); !missing.empty())
    GTEST_SKIP() << "the GPU backend lacks " << missing;
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

// Split attention adds one all-reduce of tokens × d_model per layer (dense layers included), the split head one
// gather per step; --stats-json and --trace show them.
TEST_F(DistributedJob, SplitAttentionAndHeadExchangesAreCountedAndTraced) {
  const std::string fx = "qwen2_moe_f32";
  const ModelConfig cfg = load_model_config(test::fixture_dir(fx));
  auto run_split = [&](const std::vector<int32_t>& ids, bool incremental, nlohmann::json* trace) {
    test::TempDir d;
    const std::string js = d.str() + "/stats.json", tr = d.str() + "/trace.json";
    std::string text;
    const std::string cmd = test::mpirun_prefix(3) + test::moep_binary() + " logits " + test::fixture_dir(fx) +
                            " --ids " + ids_csv(ids) + " --out " + d.str() +
                            "/l.npy --threads 1 --attention split --head split --stats-json " + js + " --trace " + tr +
                            (incremental ? " --incremental" : "");
    EXPECT_EQ(test::run_command(cmd, &text), 0) << text;
    if (trace) *trace = nlohmann::json::parse(std::ifstream(tr));
    return nlohmann::json::parse(std::ifstream(js));
  };
  const std::vector<int32_t> short_ids = {5, 6, 7}, long_ids = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  nlohmann::json trace;
  const auto a = run_split(short_ids, false, nullptr);
  const auto b = run_split(long_ids, true, &trace);
  const int64_t per_step = cfg.n_moe_layers() + cfg.n_layers, steps = int64_t(long_ids.size());
  ASSERT_EQ(b["ranks"].size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(a["ranks"][r]["allreduce_calls"].get<int64_t>(), per_step);
    EXPECT_EQ(a["ranks"][r]["allreduce_payload_bytes"].get<int64_t>(), per_step * 3 * cfg.d_model * 4);
    EXPECT_EQ(b["ranks"][r]["allreduce_calls"].get<int64_t>(), per_step * steps);
    // One more step, one more gather.
    EXPECT_EQ(b["ranks"][r]["other_collectives"].get<int64_t>() - a["ranks"][r]["other_collectives"].get<int64_t>(),
              steps - 1);
    double attention_allreduce_ms = 0;
    for (const auto& l : b["ranks"][r]["layers"]) attention_allreduce_ms += l["attention_allreduce_ms"].get<double>();
    EXPECT_GT(attention_allreduce_ms, 0.0);
    // Rank 2 holds none of the 2 KV heads: no KV cache.
    EXPECT_EQ(b["ranks"][r]["kv_cache_bytes"].get<int64_t>() == 0, r == 2);
  }
  int64_t exchanges = 0, gathers = 0;
  for (const auto& e : trace["traceEvents"]) {
    exchanges += e.value("name", "") == "attention-allreduce";
    gathers += e.value("name", "") == "head-gather";
  }
  EXPECT_EQ(exchanges, 3 * cfg.n_layers * steps);
  EXPECT_EQ(gathers, 3 * steps);
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

// A job started in its own process group, each rank writing its pid to a file, so that a test can stop or kill one
// rank and its teardown can end whatever is left (a stopped rank included: no process outlives the test).
class GroupJob {
 public:
  GroupJob() : pidfile_(dir_.str() + "/pids"), pgfile_(dir_.str() + "/pgid") {}
  ~GroupJob() {
    for (long p : rank_pids()) test::run_command("kill -CONT " + std::to_string(p) + " 2>/dev/null; kill -9 " +
                                                 std::to_string(p) + " 2>/dev/null", nullptr);
    std::ifstream f(pgfile_);
    long pg = 0;
    if (f >> pg && pg > 0) test::run_command("kill -9 -- -" + std::to_string(pg) + " 2>/dev/null", nullptr);
    if (runner_.joinable()) runner_.join();
  }
  // `ranks` ranks of "moep ARGS" (stdout and stderr to log()), run on a thread until the job ends.
  void start(int ranks, const std::string& args) {
    const std::string cmd = "setsid bash -c 'echo $$ > " + pgfile_ + "; exec " + test::mpirun_prefix(ranks) +
                            "bash -c \"echo \\$\\$ >> " + pidfile_ + "; exec " + test::moep_binary() + " " + args +
                            "\"' > " + log() + " 2>&1";
    runner_ = std::thread([this, cmd] {
      status_ = test::run_command(cmd, nullptr);
      ended_ = std::chrono::steady_clock::now();
      done_ = true;
    });
  }
  // Waits (up to 20 s) until all `n` ranks have written their pids; returns them in rank order of start.
  std::vector<long> wait_for_ranks(size_t n) {
    for (int i = 0; i < 200; ++i) {
      auto p = rank_pids();
      if (p.size() == n) return p;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return {};
  }
  // Waits up to `s` seconds for the job to end; true when it did.
  bool wait_end(double s) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!done_ && std::chrono::steady_clock::now() - t0 < std::chrono::duration<double>(s))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (done_) runner_.join();
    return done_;
  }
  std::chrono::steady_clock::time_point ended() const { return ended_; }
  int status() const { return status_; }
  std::string log() const { return dir_.str() + "/log"; }
  std::string log_text() const {
    std::ifstream f(log());
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  // Which rank a pid is: OMPI_COMM_WORLD_RANK in its environment.
  static int rank_of(long pid) {
    std::string out;
    test::run_command("tr '\\0' '\\n' < /proc/" + std::to_string(pid) + "/environ | sed -n 's/^OMPI_COMM_WORLD_RANK=//p'",
                      &out);
    return out.empty() ? -1 : std::atoi(out.c_str());
  }
  std::string dir() const { return dir_.str(); }
  // A small random model with a tokenizer (the fixtures have none), in dir()/model.
  std::string synth_model() const {
    const std::string m = dir() + "/model";
    std::string out;
    EXPECT_EQ(test::run_command(test::moep_binary() + " synth " + m + " --preset demo", &out), 0) << out;
    return m;
  }

 private:
  std::vector<long> rank_pids() const {
    std::ifstream f(pidfile_);
    std::vector<long> pids;
    long p;
    while (f >> p) pids.push_back(p);
    return pids;
  }
  test::TempDir dir_;
  std::string pidfile_, pgfile_;
  std::thread runner_;
  std::atomic<bool> done_{false};
  std::chrono::steady_clock::time_point ended_;
  int status_ = -1;
};

// CPU seconds (user + system) a process has used, from /proc/PID/stat.
double cpu_seconds(long pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream rest(all.substr(all.rfind(')') + 2));  // fields after "(comm) ": state is field 3
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i)
    if (i == 14 || i == 15) ticks += std::stod(field);
  return ticks / double(sysconf(_SC_CLK_TCK));
}

// Killing one rank mid-run ends the whole job with a non-zero status within 5 s of the kill.
TEST_F(DistributedJob, KilledRankEndsTheJob) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(i % 300);
  GroupJob job;
  // 20 ms per exchange step × 2 layers × 200 tokens: about 8 s if nothing is killed.
  job.start(3, "logits " + test::fixture_dir("olmoe_f32") + " --ids " + ids_csv(ids) + " --out " + job.dir() +
                   "/x.npy --threads 1 --incremental --emulate-latency-us 20000");
  const auto pids = job.wait_for_ranks(3);
  ASSERT_EQ(pids.size(), 3u) << job.log_text();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const auto killed = std::chrono::steady_clock::now();
  test::run_command("kill -9 " + std::to_string(pids[1]), nullptr);
  ASSERT_TRUE(job.wait_end(30)) << job.log_text();
  const double secs = std::chrono::duration<double>(job.ended() - killed).count();
  EXPECT_NE(job.status(), 0) << job.log_text();
  EXPECT_LT(secs, 5.0) << "the job should end soon after a rank dies; it took " << secs << " s\n" << job.log_text();
}

// A rank that stops without dying (SIGSTOP: a sleeping or cut-off machine) ends the job once the deadline has
// passed, with a message naming that rank and its host, and status 1.
TEST_F(DistributedJob, StoppedRankIsNamedOnceTheDeadlinePasses) {
  GroupJob job;
  const double timeout = 3;
  job.start(2, "run " + job.synth_model() + " --prompt-ids 1,2,3 -n 100000 --ignore-eos --ctx 100000 "
                   "--threads 1 --emulate-latency-us 2000 --rank-timeout 3");
  const auto pids = job.wait_for_ranks(2);
  ASSERT_EQ(pids.size(), 2u) << job.log_text();
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  ASSERT_FALSE(job.wait_end(0)) << "the job ended before a rank was stopped:\n" << job.log_text();
  long victim = pids[0];
  for (long p : pids)
    if (GroupJob::rank_of(p) == 1) victim = p;
  const auto stopped = std::chrono::steady_clock::now();
  test::run_command("kill -STOP " + std::to_string(victim), nullptr);
  ASSERT_TRUE(job.wait_end(timeout + 20)) << job.log_text();
  const double secs = std::chrono::duration<double>(job.ended() - stopped).count();
  const std::string text = job.log_text();
  EXPECT_EQ(job.status(), 1) << text;
  EXPECT_LT(secs, timeout + 5) << text;
  EXPECT_GE(secs, timeout) << text;
  EXPECT_NE(text.find("rank 1 (host "), std::string::npos) << text;
  EXPECT_NE(text.find("stopped answering"), std::string::npos) << text;
}

// A follower idle between requests waits without spinning: under 5% of a core over 3 s.
TEST_F(DistributedJob, IdleFollowerUsesUnderFivePercentOfACore) {
  GroupJob job;
  job.start(2, "serve " + job.synth_model() + " --port 0 --threads 1 --quiet");
  const auto pids = job.wait_for_ranks(2);
  ASSERT_EQ(pids.size(), 2u) << job.log_text();
  for (int i = 0; i < 300 && job.log_text().find("listening on") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NE(job.log_text().find("listening on"), std::string::npos) << job.log_text();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  long follower = -1;
  for (long p : pids)
    if (GroupJob::rank_of(p) == 1) follower = p;
  ASSERT_GT(follower, 0);
  const double c0 = cpu_seconds(follower);
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const double used = cpu_seconds(follower) - c0;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(used / wall, 0.05) << "the idle follower used " << used << " CPU s in " << wall << " s";
}

// moep serve with a rank stopped: the request in flight and /health get 503 naming the rank, within the deadline
// plus 5 s, and the job then ends with status 1.
TEST_F(DistributedJob, ServerAnswers503WhenARankStops) {
  std::string curl;
  if (test::run_command("command -v curl", &curl) != 0) {
    if (test::all_tests_required()) FAIL() << "curl is not installed (scripts/setup.sh installs it)";
    GTEST_SKIP() << "curl is not installed";
  }
  GroupJob job;
  const double timeout = 3;
  job.start(2, "serve " + job.synth_model() + " --port 0 --threads 1 --quiet --rank-timeout 3");
  const auto pids = job.wait_for_ranks(2);
  ASSERT_EQ(pids.size(), 2u) << job.log_text();
  std::string url;
  for (int i = 0; i < 300 && url.empty(); ++i) {
    const std::string log = job.log_text();
    const size_t at = log.find("listening on http://");
    if (at != std::string::npos && log.find('(', at) != std::string::npos)
      url = log.substr(at + 13, log.find(' ', at + 13) - (at + 13));
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(url.empty()) << job.log_text();
  std::string health;
  ASSERT_EQ(test::run_command("curl -s -m 5 " + url + "/health", &health), 0);
  EXPECT_NE(health.find("\"ok\""), std::string::npos) << health;
  for (long p : pids)
    if (GroupJob::rank_of(p) == 1) test::run_command("kill -STOP " + std::to_string(p), nullptr);
  const auto stopped = std::chrono::steady_clock::now();
  std::string answer;
  std::thread request([&] {
    test::run_command("curl -s -m 30 -w ' HTTP %{http_code}' " + url +
                          "/v1/completions -H 'Content-Type: application/json' -d '{\"prompt\":\"hi\",\"max_tokens\":50}'",
                      &answer);
  });
  std::string unhealthy;
  while (unhealthy.empty() && std::chrono::steady_clock::now() - stopped < std::chrono::seconds(int(timeout) + 5)) {
    std::string h;
    test::run_command("curl -s -m 1 -w ' HTTP %{http_code}' " + url + "/health", &h);
    if (h.find("HTTP 503") != std::string::npos) unhealthy = h;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  request.join();
  const double answered = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  EXPECT_NE(unhealthy.find("rank 1 (host "), std::string::npos) << "no 503 from /health in time:\n" << job.log_text();
  EXPECT_NE(answer.find("HTTP 503"), std::string::npos) << answer;
  EXPECT_NE(answer.find("rank 1 (host "), std::string::npos) << answer;
  EXPECT_LT(answered, timeout + 5);
  ASSERT_TRUE(job.wait_end(10)) << job.log_text();
  EXPECT_EQ(job.status(), 1) << job.log_text();
}

}  // namespace
}  // namespace moep
