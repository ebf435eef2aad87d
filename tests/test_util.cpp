#include "test_util.h"

#include "gpu/gpu_forward.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace moep::test {

namespace {
// The engine's --attention/--head auto reads this machine's stored calibration (`moep calibrate --save`) where
// there is one: tests see none, so that what they run does not depend on the machine's cache. A test that wants
// one sets its own MOEP_CACHE_DIR.
const bool kNoStoredCalibration = [] {
  if (!std::getenv("MOEP_CACHE_DIR"))
    setenv("MOEP_CACHE_DIR", ("/tmp/moep-test-no-cache-" + std::to_string(getpid())).c_str(), 1);
  return true;
}();
}  // namespace

std::string fixture_dir(const std::string& name) { return std::string(MOEP_FIXTURES_DIR) + "/" + name; }
std::string testdata_path(const std::string& rel) { return std::string(MOEP_TESTDATA_DIR) + "/" + rel; }

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(MOEP_FIXTURES_DIR))
    if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json"))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "moep-test-XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  if (!p) std::abort();
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = pclose(pipe);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string moep_binary() { return MOEP_BINARY; }

std::string mpirun_prefix(int n_ranks) {
  std::string out;
  if (run_command("command -v mpirun", &out) != 0) return "";
  return "mpirun --allow-run-as-root --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 "
         "--mca btl self,vader --mca btl_vader_single_copy_mechanism none -np " +
         std::to_string(n_ranks) + " ";
}

std::vector<float> random_floats(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

double rel_l2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double rel_max(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(double(a[i]) - b[i]));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / std::max(den, 1e-30);
}

namespace {
std::string probe_gpu() {
  if (!gpu::built_with_vulkan()) return "this build has no GPU backend (no Vulkan headers or glslc at configure time)";
  try {
    for (const auto& d : gpu::list_gpus())
      if (d.usable) return "";
    return "no usable Vulkan device (install mesa-vulkan-drivers for lavapipe)";
  } catch (const std::exception& e) {
    return e.what();
  }
}
const std::string& gpu_probe() {
  static const std::string why = probe_gpu();
  return why;
}
}  // namespace

bool gpu_available() { return gpu_probe().empty(); }
std::string gpu_skip_reason() { return "GPU tests need a Vulkan device: " + gpu_probe(); }
bool all_tests_required() {
  const char* v = std::getenv("MOEP_REQUIRE_ALL_TESTS");
  return v && std::string(v) == "1";
}

}  // namespace moep::test
