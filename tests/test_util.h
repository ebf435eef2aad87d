// Helpers shared by the tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace moep::test {

// tests/fixtures/<name> (tiny checkpoints with reference logits from transformers).
std::string fixture_dir(const std::string& name);
// tests/data/<rel>
std::string testdata_path(const std::string& rel);
// The fixture names (every directory under tests/fixtures with a reference.json).
std::vector<std::string> fixture_names();

// A fresh empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// Runs a shell command; returns its exit status and fills `output` with stdout+stderr.
int run_command(const std::string& cmd, std::string* output);
// Path of the built moep binary.
std::string moep_binary();

// "mpirun ... -np N" with the options moep's tests need on a small machine (root, oversubscribed, yielding
// when idle, shared memory without ptrace). Empty if mpirun is not installed.
std::string mpirun_prefix(int n_ranks);

// Fresh random values in [lo, hi) from a seeded generator (never zeros or constants).
std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f);

// ‖a − b‖₂ / ‖b‖₂
double rel_l2(const float* a, const float* b, size_t n);
// max |a - b| / max |b| over n values (the "relative per position").
double rel_max(const float* a, const float* b, size_t n);
// Whether a usable Vulkan device exists (software ones count: CI runs the GPU tests on lavapipe). When it does not,
// gpu_skip_reason() says why; with MOEP_REQUIRE_ALL_TESTS=1 (CI) a test that would skip fails instead.
bool gpu_available();
std::string gpu_skip_reason();
bool all_tests_required();  // MOEP_REQUIRE_ALL_TESTS=1

}  // namespace moep::test

// In a test body: skip when no Vulkan device can run the GPU tests, or fail when every test must run (CI).
#define MOEP_NEED_GPU()                                                                              \
  do {                                                                                               \
    if (!::moep::test::gpu_available()) {                                                            \
      if (::moep::test::all_tests_required()) FAIL() << ::moep::test::gpu_skip_reason();             \
      GTEST_SKIP() << ::moep::test::gpu_skip_reason();                                               \
    }                                                                                                \
  } while (0)
