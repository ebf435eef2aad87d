#include "this_machine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/system_info.h"
#include "core/thread_pool.h"
#include "moep_commit.h"

namespace moep::cli {

namespace fs = std::filesystem;

namespace {

std::string today() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

}  // namespace

std::string stored_calibration_path() {
  fs::path dir;
  if (const char* d = env("MOEP_CACHE_DIR")) dir = d;
  else if (const char* x = env("XDG_CACHE_HOME")) dir = fs::path(x) / "moep";
  else if (const char* h = env("HOME")) dir = fs::path(h) / ".cache" / "moep";
  else dir = fs::path(".moep-cache");
  return (dir / "this-machine.json").string();
}

void describe_calibration(perf::CalibrateOptions& co, Communicator& comm, int threads, const std::string& name) {
  co.info.host = host_name();
  co.info.cpu = cpu_model_name();
  co.info.commit = MOEP_GIT_COMMIT;
  co.info.date = today();
  co.info.threads = threads;
  co.name = name.empty() ? "measured-" + co.info.host + "-" + std::to_string(comm.size()) + "x" + std::to_string(threads)
                         : name;
  co.description = co.info.cpu + ", " + std::to_string(comm.size()) + " rank(s) x " + std::to_string(threads) +
                   " thread(s), weights on " + (co.huge_pages ? "2 MiB" : "4 KiB") +
                   " pages, measured by moep calibrate (commit " + co.info.commit + ")";
}

void make_quick(perf::CalibrateOptions& co, bool rotation_given) {
  co.seconds_per_point = 0.01;
  co.membw_bytes = std::min(co.membw_bytes, size_t(256) << 20);
  if (!rotation_given) {
    co.rotation_bytes = std::max(size_t(128) << 20, 2 * perf::last_level_cache_bytes());
    co.membw_bytes = std::max(co.membw_bytes, 2 * perf::last_level_cache_bytes());
  }
}

const perf::HardwareProfile& this_machine_profile(perf::ProfileSet& profiles) {
  const std::string path = stored_calibration_path();
  const int threads = default_thread_count();
  if (fs::is_regular_file(path)) {
    perf::ProfileSet stored;
    try {
      stored.load_file(path);
      const perf::HardwareProfile& hw = stored.hardware(path);
      const bool matches = hw.measured && hw.measured->info.cpu == cpu_model_name() &&
                           hw.measured->info.host == host_name() && hw.measured->info.threads == threads && hw.measured->info.ranks == 1;
      if (matches) {
        std::fprintf(stderr,
                     "moep: planning for this machine (%s) with the calibration stored at %s on %s; "
                     "`moep calibrate --save` measures it again\n",
                     hw.measured->info.cpu.c_str(), path.c_str(), hw.measured->info.date.c_str());
        profiles.load_file(path);
        return profiles.hardware(path);
      }
      std::fprintf(stderr, "moep: note: the calibration stored at %s was measured on another machine or thread count; "
                           "measuring this one\n", path.c_str());
    } catch (const Error& e) {
      std::fprintf(stderr, "moep: note: ignoring the stored calibration (%s); measuring this machine\n", e.what());
    }
  }

  std::fprintf(stderr, "moep: no --hardware given: calibrating this machine quickly (%d threads, a few seconds; "
                       "`moep calibrate --save` measures it fully)\n", threads);
  LocalCommunicator comm;
  ThreadPool pool(threads);
  perf::CalibrateOptions co;
  co.huge_pages = true;  // one rank alone on its host: the engine copies its weights onto 2 MiB pages
  co.batches = {1, 2, 4, 8, 16, 32};
  make_quick(co, false);
  describe_calibration(co, comm, threads, "this-machine");
  const auto t0 = std::chrono::steady_clock::now();
  const perf::CalibrationResult r = perf::calibrate(pool, comm, co, [](const std::string&) {});
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json j;
  j["profiles"] = nlohmann::json::array({perf::hardware_profile_to_json(r.hardware)});
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  std::ofstream f(path);
  if (f << j.dump(2) << "\n") {
    f.close();
    std::fprintf(stderr, "moep: calibrated this machine in %.0f s (%s); stored at %s for the next plan\n", secs,
                 co.info.cpu.c_str(), path.c_str());
    profiles.load_file(path);
    return profiles.hardware(path);
  }
  std::fprintf(stderr, "moep: calibrated this machine in %.0f s (%s); could not store it at %s\n", secs,
               co.info.cpu.c_str(), path.c_str());
  profiles.add(r.hardware);
  return profiles.hardware(r.hardware.name);
}

StoredProfiles stored_profiles_for_auto(int threads) {
  StoredProfiles out;
  const std::string path = stored_calibration_path();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return out;
  try {
    perf::ProfileSet stored;
    stored.load_file(path);
    const perf::HardwareProfile& hw = stored.hardware(path);
    if (!hw.measured || hw.measured->info.cpu != cpu_model_name() || hw.measured->info.host != host_name() ||
        hw.measured->info.threads != threads)
      return out;
    out.hardware = std::make_shared<const perf::HardwareProfile>(hw);
    if (!stored.network_names().empty())
      out.network = std::make_shared<const perf::NetworkProfile>(stored.network(stored.network_names().front()));
  } catch (const Error& e) {
    std::fprintf(stderr, "moep: note: ignoring the stored calibration for --attention/--head auto (%s)\n", e.what());
  }
  return out;
}

}  // namespace moep::cli
