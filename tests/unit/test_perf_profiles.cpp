// Hardware and network profiles: parsing, sources, errors, the shipped files, and a quick calibration.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "perf/calibrate.h"
#include "perf/perf_model.h"
#include "perf/profiles.h"
#include "test_util.h"

using namespace moep;
using namespace moep::perf;
using nlohmann::json;

namespace {

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

json hw_json() {
  return json::parse(R"({"kind": "hardware", "name": "box", "description": "a box", "backend": "cpu",
    "memory_bandwidth_gbs": {"value": 100, "source": "https://example.org/spec"},
    "memory_gb": {"value": 64, "source": "https://example.org/spec"},
    "price_usd": {"value": 2000, "source": "estimate: a guess", "estimate": true, "note": "2024"}})");
}

}  // namespace

TEST(PerfProfiles, ParsesFiguresWithSources) {
  const HardwareProfile h = parse_hardware_profile(hw_json(), "box.json");
  EXPECT_EQ(h.name, "box");
  EXPECT_DOUBLE_EQ(h.memory_bandwidth_gbs.value, 100);
  EXPECT_EQ(h.memory_bandwidth_gbs.source, "https://example.org/spec");
  EXPECT_TRUE(h.price_usd.estimate);
  EXPECT_EQ(h.price_usd.note, "2024");
  EXPECT_FALSE(h.power_w.present);
  EXPECT_DOUBLE_EQ(h.usable_memory_fraction.value, 0.9);  // default, marked as such
  EXPECT_TRUE(h.usable_memory_fraction.estimate);
  EXPECT_NEAR(h.usable_bytes(), 64e9 * 0.9, 1);
  // Round trip.
  const HardwareProfile again = parse_hardware_profile(hardware_profile_to_json(h), "again");
  EXPECT_DOUBLE_EQ(again.price_usd.value, 2000);
  EXPECT_EQ(again.price_usd.source, h.price_usd.source);
}

TEST(PerfProfiles, RejectsFiguresWithoutSourceAndNonsense) {
  json j = hw_json();
  j["memory_gb"].erase("source");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "source");
  j = hw_json();
  j.erase("memory_bandwidth_gbs");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "memory_bandwidth_gbs");
  j = hw_json();
  j["memory_gb"]["value"] = -1;
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "non-negative");
  j = hw_json();
  j["bandwidth_efficiency"] = {{"value", 1.5}, {"source", "x"}};
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "(0, 1]");
  j = hw_json();
  j["measured"] = json::parse(R"({"membw_gbs": 10, "alone_speedup": 0.5})");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "alone_speedup");
  j["measured"] = json::parse(R"({"linear": {"bf16": {"nt": [{"batch": 1, "overhead_us": 1, "ns_per_byte": 0.1,
                                                                "times": [[1000, 2], [2000]]}]}}})");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "[bytes, microseconds]");
  j["measured"]["linear"]["bf16"]["nt"][0]["times"] = json::parse("[[1000, 2], [2000, -1]]");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "<= 0");
  j["measured"]["linear"]["bf16"]["nt"][0]["times"] = json::parse("[[2000, 3], [1000, 2]]");
  const HardwareProfile h = parse_hardware_profile(j, "box.json");
  EXPECT_EQ(h.measured->linear.at("bf16")[0].times.front().first, 1000.0);  // sorted by size
  json n = json::parse(R"({"kind": "network", "name": "wire", "alpha_us": {"value": 5, "source": "s"},
                           "beta_gbs": {"value": 1, "source": "s"}, "algorithm": "butterfly"})");
  expect_error([&] { parse_network_profile(n, "wire.json"); }, "butterfly");
  n["algorithm"] = "ring";
  EXPECT_EQ(parse_network_profile(n, "wire.json").algorithm, AllreduceAlgorithm::Ring);
}

// A GPU profile: hw_json's box computing on its GPU through the Vulkan backend.
json gpu_json() {
  json j = hw_json();
  j["backend"] = "vulkan";
  j["dispatch_us"] = {{"value", 4}, {"source", "estimate: a guess"}, {"estimate", true}};
  j["allreduce_roundtrip_us"] = {{"value", 30}, {"source", "estimate: a guess"}, {"estimate", true}};
  j["host_copy_gbs"] = {{"value", 50}, {"source", "https://example.org/pcie"}};
  return j;
}

TEST(PerfProfiles, BackendIsRequiredAndKnown) {
  const HardwareProfile cpu = parse_hardware_profile(hw_json(), "box.json");
  EXPECT_EQ(cpu.backend, Backend::Cpu);
  EXPECT_FALSE(cpu.gpu());
  EXPECT_EQ(cpu.dispatch_seconds(), 0.0);
  EXPECT_EQ(cpu.allreduce_host_seconds(1e6), 0.0);
  const HardwareProfile gpu = parse_hardware_profile(gpu_json(), "box.json");
  EXPECT_EQ(gpu.backend, Backend::Vulkan);
  EXPECT_TRUE(gpu.gpu());
  EXPECT_DOUBLE_EQ(gpu.dispatch_seconds(), 4e-6);
  EXPECT_NEAR(gpu.allreduce_host_seconds(1e6), 30e-6 + 2 * 1e6 / 50e9, 1e-12);  // down and back up
  json metal = gpu_json();
  metal["backend"] = "metal";
  metal.erase("host_copy_gbs");  // unified memory: no copy
  const HardwareProfile m = parse_hardware_profile(metal, "box.json");
  EXPECT_EQ(m.backend, Backend::Metal);
  EXPECT_DOUBLE_EQ(m.allreduce_host_seconds(1e6), 30e-6);
  EXPECT_FALSE(backend_in_this_build(Backend::Metal));
  EXPECT_TRUE(backend_in_this_build(Backend::Cpu));
  EXPECT_NE(backend_caveat(Backend::Metal).find("not implemented in moep"), std::string::npos);
  EXPECT_EQ(backend_caveat(Backend::Cpu), "");
  // Round trips keep the backend and the GPU figures.
  const HardwareProfile again = parse_hardware_profile(hardware_profile_to_json(gpu), "again");
  EXPECT_EQ(again.backend, Backend::Vulkan);
  EXPECT_DOUBLE_EQ(again.allreduce_roundtrip_us.value, 30);
  EXPECT_DOUBLE_EQ(again.host_copy_gbs.value, 50);
  EXPECT_EQ(parse_hardware_profile(hardware_profile_to_json(cpu), "again").backend, Backend::Cpu);

  // Errors name the file and say what is wrong.
  json j = hw_json();
  j.erase("backend");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "box.json: profile 'box': \"backend\" is missing");
  j["backend"] = "cuda";
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "backend 'cuda' is not known (cpu, vulkan, metal)");
  j["backend"] = 1;
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "must be a string");
  j = gpu_json();
  j.erase("dispatch_us");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "needs dispatch_us");
  j = gpu_json();
  j.erase("allreduce_roundtrip_us");
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "needs allreduce_roundtrip_us");
  j = gpu_json();
  j["op_overhead_us"] = {{"value", 4}, {"source", "s"}};
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "not op_overhead_us");
  j = hw_json();
  j["dispatch_us"] = {{"value", 4}, {"source", "s"}};
  expect_error([&] { parse_hardware_profile(j, "box.json"); }, "dispatch_us is a figure of GPU profiles");
  // Through a file: the message names it.
  test::TempDir dir;
  json file = {{"profiles", json::array({hw_json()})}};
  file["profiles"][0].erase("backend");
  std::ofstream(dir.str() + "/old.json") << file.dump();
  expect_error([&] { ProfileSet s; s.load_dir(dir.str()); }, dir.str() + "/old.json: profile 'box': \"backend\" is missing");
}

TEST(PerfProfiles, EveryShippedProfileLoadsAndNamesItsBackend) {
  ProfileSet set;
  set.load_dir(default_profile_dir());  // every file, every profile: parsing refuses a missing or unknown backend
  std::vector<std::string> names = set.hardware_names();
  ASSERT_GE(names.size(), 9u);
  for (const auto& n : names) {
    const HardwareProfile& h = set.hardware(n);
    EXPECT_GT(h.memory_bandwidth_gbs.value, 0) << n;
    if (h.gpu()) {
      EXPECT_TRUE(h.dispatch_us.present) << n;
      EXPECT_TRUE(h.allreduce_roundtrip_us.present) << n;
      EXPECT_FALSE(h.op_overhead_us.present) << n;
    }
  }
  // The H200 through the Vulkan backend: efficiencies from moep bench on an H200, timing figures still estimates.
  const HardwareProfile& h200 = set.hardware("h200-vulkan");
  EXPECT_EQ(h200.backend, Backend::Vulkan);
  EXPECT_DOUBLE_EQ(h200.memory_bandwidth_gbs.value, 4800);
  EXPECT_DOUBLE_EQ(h200.peak_tflops_16.value, 989);
  EXPECT_FALSE(h200.measured.has_value());
  EXPECT_NE(h200.description.find("still estimates"), std::string::npos);
  EXPECT_FALSE(h200.bandwidth_efficiency.estimate);
  EXPECT_NE(h200.bandwidth_efficiency.source.find("measured"), std::string::npos);
  EXPECT_TRUE(h200.dispatch_us.estimate);
  EXPECT_TRUE(h200.host_copy_gbs.present);  // a discrete GPU: the all-reduce's buffer crosses PCIe
}

TEST(PerfProfiles, EveryAppleGpuProfileHasACpuTwin) {
  ProfileSet set;
  set.load_dir(default_profile_dir());
  int apple_gpus = 0;
  for (const auto& n : set.hardware_names()) {
    const HardwareProfile& h = set.hardware(n);
    if (h.file.find("apple.json") == std::string::npos || !h.gpu()) continue;
    ++apple_gpus;
    EXPECT_EQ(h.backend, Backend::Metal) << n << ": moep has no GPU backend on a Mac but a Metal one would be";
    EXPECT_FALSE(h.host_copy_gbs.present) << n << ": unified memory, no copy";
    const HardwareProfile& cpu = set.hardware(n + "-cpu");
    EXPECT_EQ(cpu.backend, Backend::Cpu) << n;
    EXPECT_DOUBLE_EQ(cpu.memory_gb.value, h.memory_gb.value) << n;  // the same machine
    EXPECT_DOUBLE_EQ(cpu.price_usd.value, h.price_usd.value) << n;
    // The CPU clusters stream less than the GPU can: the figure says so, with its source.
    EXPECT_LT(cpu.streaming_bandwidth_bps("bf16"), h.streaming_bandwidth_bps("bf16")) << n;
    EXPECT_TRUE(cpu.bandwidth_efficiency.estimate) << n;
    EXPECT_NE(cpu.bandwidth_efficiency.source.find("https://"), std::string::npos) << n;
  }
  EXPECT_EQ(apple_gpus, 3);
}

TEST(PerfProfiles, UnknownNamesListTheKnownOnes) {
  ProfileSet set;
  set.load_dir(default_profile_dir());
  expect_error([&] { set.hardware("cray-1"); }, "m2-ultra-192gb");
  expect_error([&] { set.network("carrier-pigeon"); }, "10gbe-tcp");
  expect_error([&] { set.load_dir("/nonexistent/profiles"); }, "does not exist");
}

TEST(PerfProfiles, ShippedProfilesAreCompleteAndSourced) {
  ProfileSet set;
  set.load_dir(default_profile_dir());  // parsing already refuses a figure without a source
  for (const char* name : {"m2-ultra-192gb", "m3-ultra-512gb", "h100-sxm", "epyc-genoa-1s-384gb"}) {
    const HardwareProfile& h = set.hardware(name);
    EXPECT_TRUE(h.price_usd.present) << name;
    EXPECT_TRUE(h.power_w.present) << name;
    EXPECT_FALSE(h.price_usd.source.empty()) << name;
  }
  for (const char* name : {"1gbe-tcp", "10gbe-tcp", "25gbe-tcp", "100gbe-tcp", "tb5-tcp", "tb5-rdma",
                           "infiniband-ndr", "nvlink4-h100"}) {
    const NetworkProfile& n = set.network(name);
    EXPECT_GT(n.alpha_us.value, 0) << name;
    EXPECT_GT(n.beta_gbs.value, 0) << name;
  }
  // RDMA over Thunderbolt has a far lower latency than TCP over the same cable.
  EXPECT_LT(set.network("tb5-rdma").alpha_us.value * 10, set.network("tb5-tcp").alpha_us.value);
}

TEST(PerfProfiles, UserDirectoryAndFilePaths) {
  test::TempDir dir;
  json file = {{"profiles", json::array({hw_json()})}};
  file["profiles"][0]["name"] = "my-box";
  std::ofstream(dir.str() + "/mine.json") << file.dump();
  ProfileSet set;
  set.load_dir(default_profile_dir());
  set.load_dir(dir.str());
  EXPECT_DOUBLE_EQ(set.hardware("my-box").memory_gb.value, 64);
  ProfileSet other;
  EXPECT_DOUBLE_EQ(other.hardware(dir.str() + "/mine.json").memory_gb.value, 64);  // by path
  std::ofstream(dir.str() + "/broken.json") << "{\"profiles\": [";
  expect_error([&] { ProfileSet s; s.load_dir(dir.str()); }, "malformed JSON");
}

// JSON nested 70,000 deep crashed `moep plan --hardware` (a stack overflow in a recursive copy of the parse).
TEST(PerfProfiles, DeeplyNestedFileIsAnErrorNotACrash) {
  test::TempDir dir;
  const std::string path = dir.str() + "/deep.json";
  std::ofstream(path) << std::string(70000, '[') << std::string(70000, ']');
  expect_error([&] { ProfileSet s; s.load_file(path); }, "deep.json: JSON nested more than 512 levels");
  std::string out;
  const int status =
      test::run_command(test::moep_binary() + " plan --model dbrx --hardware " + path + " --network 10gbe-tcp", &out);
  EXPECT_EQ(status, 1) << out;
  EXPECT_EQ(out.rfind("moep: error: ", 0), 0u) << out;
  EXPECT_NE(out.find("JSON nested more than 512 levels"), std::string::npos) << out;
}

TEST(PerfCalibrate, QuickLocalCalibrationGivesAUsableProfile) {
  LocalCommunicator comm;
  ThreadPool pool(1);
  CalibrateOptions o;
  o.name = "test";
  o.batches = {1, 4};
  o.expert_d_model = 256;
  o.expert_ffn = 512;
  o.membw_bytes = size_t(32) << 20;
  o.rotation_bytes = size_t(16) << 20;
  o.seconds_per_point = 0.002;
  o.info.host = "test";
  o.info.date = "today";
  const CalibrationResult r = calibrate(pool, comm, o, {});
  EXPECT_FALSE(r.has_network);
  ASSERT_TRUE(r.hardware.measured.has_value());
  const HardwareMeasured& m = *r.hardware.measured;
  EXPECT_GT(m.membw_gbs, 0.1);
  ASSERT_EQ(m.linear.at("bf16").size(), 2u);
  ASSERT_EQ(m.linear_in_out.at("bf16").size(), 2u);
  for (const auto& p : m.linear.at("bf16")) {
    EXPECT_GT(p.ns_per_byte, 0);
    // Times per matrix size: several sizes, ascending, within the rotation buffer, each taking some time.
    ASSERT_GE(p.times.size(), 2u);
    for (size_t i = 0; i < p.times.size(); ++i) {
      EXPECT_GT(p.times[i].second, 0);
      EXPECT_LE(p.times[i].first, double(o.rotation_bytes));
      if (i > 0) {
        EXPECT_GT(p.times[i].first, p.times[i - 1].first);
      }
    }
  }
  EXPECT_EQ(m.alone_speedup, 1.0);  // one rank: nothing measured
  EXPECT_GT(m.attention_ns_per_mac, 0);
  EXPECT_GT(m.expert_us.at("bf16"), 0);
  // The profile survives a round trip through JSON and drives the model.
  const HardwareProfile h = parse_hardware_profile(hardware_profile_to_json(r.hardware), "calibrated");
  ASSERT_TRUE(h.measured.has_value());
  EXPECT_EQ(h.measured->linear.at("bf16").size(), 2u);
  EXPECT_EQ(h.measured->linear.at("bf16")[1].times, m.linear.at("bf16")[1].times);
  const ModelShape s = resolve_model("olmoe-1b-7b");
  NetworkProfile none;
  none.beta_gbs.value = 1;
  Scenario sc;
  sc.placement = "contiguous";
  sc.prompt = 0;
  EXPECT_GT(predict(s, h, none, sc).decode_tokens_per_s, 0);
}
