// The GPU backend (Vulkan) against the CPU path on every fixture: logits within 1e-4 relative per position (max
// |gpu - cpu| / max |cpu|, and the relative L2 norm), whole prompt and one token at a time, the greedy tokens of
// transformers, batched slots, and chunks long enough for the tiled matrix shader. CI runs these on Mesa's
// lavapipe (a Vulkan device on the CPU); docs/GPU.md gives the same on an H200. And the errors a user can meet.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "gpu/gpu_forward.h"
#include "io/npy.h"
#include "model/config.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace moep {
namespace {

std::unique_ptr<Engine> make_engine(const std::string& dir, gpu::DeviceKind device, int64_t rows) {
  EngineOptions o;
  o.model_dir = dir;
  o.threads = 1;
  o.device = device;
  o.limits.max_rows = rows;
  o.limits.max_ctx = 64;
  o.limits.n_slots = 2;
  return Engine::create(o, std::make_unique<LocalCommunicator>());
}

int32_t argmax(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

class GpuGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuGolden, LogitsEqualTheCpuWholeAndIncrementalAndGreedyEqualTransformers) {
  MOEP_NEED_GPU();
  const std::string dir = test::fixture_dir(GetParam());
  if (const std::string missing = gpu::unsupported_features(load_model_config(dir)); !missing.empty())
    GTEST_SKIP() << "the GPU backend lacks " << missing;
  auto gpu = make_engine(dir, gpu::DeviceKind::Gpu, 32);
  auto cpu = make_engine(dir, gpu::DeviceKind::Cpu, 32);
  ASSERT_TRUE(gpu->on_gpu());
  ASSERT_FALSE(cpu->on_gpu());
  const int64_t V = gpu->config().vocab_size;
  const auto ref = nlohmann::json::parse(std::ifstream(dir + "/reference.json"));
  // Tokens of a reference case, then a longer run of ids (more rows than the matrix-vector shaders take: the
  // tiled shader's path).
  std::vector<std::vector<int32_t>> seqs;
  for (const auto& c : ref["cases"]) seqs.push_back(c["logits_tokens"].get<std::vector<int32_t>>());
  std::vector<int32_t> long_ids;
  for (int i = 0; i < 30; ++i) long_ids.push_back(int32_t((i * 37 + 11) % V));
  seqs.push_back(long_ids);
  for (const auto& ids : seqs) {
    std::vector<float> want(ids.size() * size_t(V));
    cpu->run_sequence(ids, 0, 0, true, false, want.data());
    for (bool incremental : {false, true}) {
      std::vector<float> got(want.size());
      gpu->run_sequence(ids, 0, 0, true, incremental, got.data());
      for (size_t t = 0; t < ids.size(); ++t) {
        EXPECT_LE(test::rel_max(&got[t * V], &want[t * V], size_t(V)), 1e-4)
            << GetParam() << " position " << t << (incremental ? " incremental" : " whole");
        EXPECT_LE(test::rel_l2(&got[t * V], &want[t * V], size_t(V)), 1e-4) << GetParam() << " position " << t;
        EXPECT_EQ(argmax(&got[t * V], V), argmax(&want[t * V], V)) << GetParam() << " position " << t;
      }
    }
  }
  // Greedy decoding on the GPU gives transformers' tokens.
  std::vector<float> logits(static_cast<size_t>(V));
  for (const auto& c : ref["cases"]) {
    const auto prompt = c["prompt"].get<std::vector<int32_t>>();
    const auto greedy = c["greedy"].get<std::vector<int32_t>>();
    gpu->run_sequence(prompt, 1, 0, false, false, logits.data());
    std::vector<int32_t> out;
    int32_t pos = int32_t(prompt.size());
    for (size_t i = 0; i < greedy.size(); ++i) {
      out.push_back(argmax(logits.data(), V));
      gpu->run_sequence({out.back()}, 1, pos++, false, false, logits.data());
    }
    EXPECT_EQ(out, greedy) << GetParam();
  }
}

// Two sequences in one batch (two slots, different positions) give what each gives alone on the CPU.
TEST_P(GpuGolden, BatchedSlotsEqualTheCpu) {
  MOEP_NEED_GPU();
  const std::string dir = test::fixture_dir(GetParam());
  if (const std::string missing = gpu::unsupported_features(load_model_config(dir)); !missing.empty())
    GTEST_SKIP() << "the GPU backend lacks " << missing;
  auto gpu = make_engine(dir, gpu::DeviceKind::Gpu, 8);
  auto cpu = make_engine(dir, gpu::DeviceKind::Cpu, 8);
  const int64_t V = gpu->config().vocab_size;
  const std::vector<int32_t> a = {5, 9, 2, 17, 33, 4, 8}, b = {21, 3, 40};
  std::vector<float> ref_a(a.size() * size_t(V)), ref_b(b.size() * size_t(V));
  cpu->run_sequence(a, 0, 0, true, false, ref_a.data());
  cpu->run_sequence(b, 1, 0, true, false, ref_b.data());
  std::vector<float> step(2 * size_t(V));
  for (size_t i = 0; i < a.size(); ++i) {
    std::vector<BatchRow> rows = {{a[i], 0, int32_t(i), true}};
    if (i < b.size()) rows.push_back({b[i], 1, int32_t(i), true});
    gpu->transformer().forward(rows, step.data());
    EXPECT_LE(test::rel_max(&step[0], &ref_a[i * V], size_t(V)), 1e-4) << GetParam() << " step " << i;
    if (i < b.size()) {
      EXPECT_LE(test::rel_max(&step[size_t(V)], &ref_b[i * V], size_t(V)), 1e-4) << GetParam();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuGolden, ::testing::ValuesIn(test::fixture_names()),
                         [](const auto& info) { return info.param; });

// The errors a user meets, through the command line: each names what is wrong, and nothing crashes.
std::string run_moep(const std::string& env, const std::string& args, int* status) {
  std::string out;
  *status = test::run_command(env + " " + test::moep_binary() + " logits " + test::fixture_dir("mixtral_bf16") +
                                  " --ids 1,2,3 --out /dev/null " + args + " 2>&1",
                              &out);
  return out;
}

TEST(GpuErrors, NoVulkanLoader) {
  int st = 0;
  const std::string out = run_moep("MOEP_VULKAN_LOADER=/nonexistent/libvulkan.so.1", "--device gpu", &st);
  EXPECT_NE(st, 0);
  EXPECT_NE(out.find("no Vulkan loader"), std::string::npos) << out;
  // auto runs on the CPU instead, with a one-line note.
  const std::string fallback = run_moep("MOEP_VULKAN_LOADER=/nonexistent/libvulkan.so.1", "--device auto", &st);
  EXPECT_EQ(st, 0) << fallback;
  EXPECT_NE(fallback.find("note: --device auto: no GPU"), std::string::npos) << fallback;
}

TEST(GpuErrors, NoDevice) {
  if (!gpu::built_with_vulkan()) GTEST_SKIP() << "no GPU backend in this build";
  int st = 0;
  const std::string out = run_moep("VK_DRIVER_FILES=/nonexistent.json VK_ICD_FILENAMES=/nonexistent.json", "--device gpu", &st);
  EXPECT_NE(st, 0);
  EXPECT_TRUE(out.find("no device") != std::string::npos || out.find("no instance") != std::string::npos ||
              out.find("no usable Vulkan device") != std::string::npos)
      << out;
}

TEST(GpuErrors, GpuIndexOutOfRange) {
  MOEP_NEED_GPU();
  int st = 0;
  const std::string out = run_moep("", "--device gpu --gpu 97", &st);
  EXPECT_NE(st, 0);
  EXPECT_NE(out.find("--gpu 97"), std::string::npos) << out;
}

TEST(GpuErrors, TooLittleDeviceMemorySaysHowMuchAndHowManyRanks) {
  MOEP_NEED_GPU();
  int st = 0;
  const std::string out = run_moep("MOEP_GPU_MEMORY_BYTES=1000000", "--device gpu", &st);
  EXPECT_NE(st, 0);
  EXPECT_NE(out.find("needs"), std::string::npos) << out;
  EXPECT_NE(out.find("ranks would fit"), std::string::npos) << out;
}

}  // namespace
}  // namespace moep
