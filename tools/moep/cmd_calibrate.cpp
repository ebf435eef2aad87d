// moep calibrate [--out FILE] [--name NAME] [--threads T] [--dtype bf16,f32] [--expert-shape D,FFN] [--quick]
// Measures this machine, or every rank of the mpirun job it runs in, and writes a profile for `moep plan`.
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "gpu/gpu_forward.h"
#include "moep_commit.h"
#include "perf/calibrate.h"
#include "this_machine.h"

namespace moep::cli {

namespace {

std::vector<int64_t> parse_ints(const std::string& s, const char* flag) {
  std::vector<int64_t> v;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    char* end = nullptr;
    const long long x = std::strtoll(cur.c_str(), &end, 10);
    if (*end != '\0' || x < 1) fail(flag, ": '", cur, "' is not a positive whole number");
    v.push_back(x);
    cur.clear();
  };
  for (char ch : s) {
    if (ch == ',' || ch == 'x' || ch == ' ') flush();
    else cur += ch;
  }
  flush();
  return v;
}

// `moep calibrate --device gpu`: a vulkan hardware profile of this GPU, every timing figure measured.
void calibrate_gpu_profile(int index, uint64_t bytes, int64_t d_model, std::string name, const std::string& out) {
  std::fprintf(stderr, "calibrate: GPU %d, buffers of %.0f MiB, all-reduce round trip of %lld floats\n", index,
               double(bytes) / (1 << 20), (long long)d_model);
  const gpu::GpuCalibration c = gpu::calibrate_gpu(index, bytes, d_model);
  const std::string how = str_cat("measured by moep calibrate --device gpu (commit ", MOEP_GIT_COMMIT, ") on ",
                                  c.device.name, ", driver ", c.device.driver);
  perf::HardwareProfile h;
  if (name.empty()) {
    name = "measured-vulkan-" + c.device.name;
    for (char& ch : name)
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-') ch = '-';
  }
  h.name = name;
  h.description = str_cat(c.device.name, " (", c.device.type, ") through moep's Vulkan backend, measured");
  h.backend = perf::Backend::Vulkan;
  auto fig = [&](double v, const std::string& what) {
    perf::Figure f;
    f.value = v;
    f.source = str_cat(what, "; ", how);
    f.present = true;
    return f;
  };
  h.memory_bandwidth_gbs = fig(c.read_gbs, str_cat("a plain shader reading ", c.bytes >> 20, " MiB of device memory"));
  h.memory_gb = fig(double(c.device.memory_bytes) / 1e9, "the largest device-local heap");
  h.bandwidth_efficiency =
      fig(c.matvec_gbs / c.read_gbs, str_cat("the decode shader (mv1, bf16) streamed ", c.matvec_gbs, " GB/s of it"));
  h.dispatch_us = fig(c.dispatch_us, "one more small dispatch with its barrier in a recorded command buffer");
  h.allreduce_roundtrip_us =
      fig(c.roundtrip_us, str_cat("copying ", d_model, " floats to host memory and back, two submissions (median of 50)"));
  std::fprintf(stderr,
               "calibrate: %s: read %.1f GB/s, decode shader %.1f GB/s (%.0f%%), %.2f us per dispatch, %.1f us per "
               "submission, %.1f us all-reduce round trip\n",
               c.device.name.c_str(), c.read_gbs, c.matvec_gbs, 100 * c.matvec_gbs / c.read_gbs, c.dispatch_us,
               c.submit_us, c.roundtrip_us);
  nlohmann::json j;
  j["profiles"] = nlohmann::json::array({perf::hardware_profile_to_json(h)});
  const std::string text = j.dump(2) + "\n";
  if (out.empty()) {
    std::fputs(text.c_str(), stdout);
    return;
  }
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(out).parent_path(), ec);
  std::ofstream f(out);
  f << text;
  if (!f) fail("--out: cannot write ", out);
  std::fprintf(stderr, "calibrate: wrote %s (hardware '%s')\n", out.c_str(), h.name.c_str());
}

}  // namespace

void register_calibrate(CLI::App& app) {
  struct Opts {
    std::string out, name, dtypes = "bf16", expert_shape = "1024,2816", batches = "1,2,4,8,16,32,64";
    int threads = 0;
    int64_t membw_mb = 512, max_allreduce_bytes = 4 << 20;
    bool quick = false, save = false;
    std::string weights = "auto";
    int64_t rotation_mb = 0;  // 0: CalibrateOptions' default
    std::string device = "cpu";
    int gpu = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "calibrate", "Measure this machine (or each rank of an mpirun job) and write a profile for `moep plan`");
  auto* out = cmd->add_option("--out", o->out, "Write the profile here (default: print it)");
  cmd->add_flag("--save", o->save,
                "Store the profile as this machine's, where `moep plan` without --hardware finds it (" +
                    stored_calibration_path() + ")")
      ->excludes(out);
  cmd->add_option("--name", o->name, "Profile name (default: measured-HOST-<ranks>x<threads>)");
  cmd->add_option("--threads,-t", o->threads, "Threads per rank (0: the cores this process may use)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--dtype", o->dtypes, "Weight dtypes to measure: bf16, f16, f32, comma-separated, or all");
  cmd->add_option("--expert-shape", o->expert_shape, "d_model,ffn of the expert whose batch-1 time is reported");
  cmd->add_option("--batches", o->batches, "Batch sizes of the linear-time table");
  cmd->add_option("--membw-mb", o->membw_mb, "Buffer for the read-bandwidth test (MB)")->check(CLI::Range(16, 1 << 20));
  cmd->add_option("--rotation-mb", o->rotation_mb,
                  "Weights cycled through per timed matrix size (MB; 0: the larger of 256 and 4x the last-level "
                  "cache). Decode reads each weight once per token, so this must exceed what the caches hold")
      ->check(CLI::Range(16, 1 << 20));
  cmd->add_option("--max-allreduce-bytes", o->max_allreduce_bytes, "Largest all-reduce message timed")
      ->check(CLI::Range(64, 1 << 30));
  cmd->add_option("--weights", o->weights,
                  "Pages to measure on, as the engine's --weights keeps them: copy (2 MiB pages), map (4 KiB pages, as "
                  "the file mappings have) or auto (copy when this is the only rank on its host, as the engine does)")
      ->check(CLI::IsMember({"auto", "copy", "map"}));
  cmd->add_flag("--quick", o->quick, "Shorter timings and fewer batch sizes (less accurate)");
  cmd->add_option("--device", o->device,
                  "What to measure: cpu (default), or gpu: the Vulkan device's read bandwidth, the decode shader's "
                  "share of it, the cost of a dispatch and the all-reduce's host round trip (a vulkan profile)")
      ->check(CLI::IsMember({"cpu", "gpu"}));
  cmd->add_option("--gpu", o->gpu, "Which GPU with --device gpu (an index of `moep devices`)")->check(CLI::Range(0, 1024));
  cmd->callback([o] {
    if (o->device == "gpu") {
      // --save keeps the CPU calibration `moep plan` uses for this machine by default; a GPU profile goes to a file.
      if (o->save) fail("--save stores this machine's CPU calibration; with --device gpu write the profile with --out FILE");
      calibrate_gpu_profile(o->gpu, uint64_t(std::max<int64_t>(o->membw_mb, 256)) << 20,
                            parse_ints(o->expert_shape, "--expert-shape").at(0), o->name, o->out);
      return;
    }
    auto comm = make_communicator();
    ThreadPool pool(thread_count_or_default(o->threads));
    perf::CalibrateOptions co;
    co.dtypes.clear();
    {
      std::string cur;
      auto push = [&] {
        if (cur == "all") co.dtypes = {"bf16", "f16", "f32"};
        else if (!cur.empty()) co.dtypes.push_back(cur);
        cur.clear();
      };
      for (char ch : o->dtypes) ch == ',' ? push() : void(cur += ch);
      push();
    }
    const auto shape = parse_ints(o->expert_shape, "--expert-shape");
    if (shape.size() != 2) fail("--expert-shape: expected D,FFN (two positive numbers), got '", o->expert_shape, "'");
    co.expert_d_model = shape[0];
    co.expert_ffn = shape[1];
    co.batches = parse_ints(o->batches, "--batches");
    if (co.batches.empty()) fail("--batches: expected batch sizes such as 1,2,4,8");
    co.membw_bytes = size_t(o->membw_mb) << 20;
    const WeightResidence residence = residence_on_host(parse_weight_residence(o->weights), ranks_on_this_host(*comm));
    co.huge_pages = residence != WeightResidence::Map;
    co.max_allreduce_bytes = size_t(o->max_allreduce_bytes);
    if (o->rotation_mb > 0) co.rotation_bytes = size_t(o->rotation_mb) << 20;
    if (o->quick) make_quick(co, o->rotation_mb > 0);
    describe_calibration(co, *comm, pool.size(), o->save && o->name.empty() ? "this-machine" : o->name);
    const auto t0 = std::chrono::steady_clock::now();
    const perf::CalibrationResult r = perf::calibrate(pool, *comm, co, [](const std::string& s) {
      std::fprintf(stderr, "calibrate: %s\n", s.c_str());
    });
    if (comm->rank() != 0) return;
    nlohmann::json j;
    j["profiles"] = nlohmann::json::array({perf::hardware_profile_to_json(r.hardware)});
    if (r.has_network) j["profiles"].push_back(perf::network_profile_to_json(r.network));
    const std::string text = j.dump(2) + "\n";
    if (o->save) {
      o->out = stored_calibration_path();
      std::error_code ec;
      std::filesystem::create_directories(std::filesystem::path(o->out).parent_path(), ec);
    }
    if (o->out.empty()) {
      std::fputs(text.c_str(), stdout);
    } else {
      std::ofstream f(o->out);
      if (!f) fail("--out: cannot write ", o->out);
      f << text;
      if (!f) fail("--out: cannot write ", o->out);
      std::fprintf(stderr, "calibrate: wrote %s (hardware '%s'%s) in %.1f s\n", o->out.c_str(), r.hardware.name.c_str(),
                   r.has_network ? (", network '" + r.network.name + "'").c_str() : "",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  });
}

}  // namespace moep::cli
