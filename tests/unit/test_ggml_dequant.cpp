// moep's block decoding and encoding against ggml's own, on blocks llama.cpp's llama-quantize wrote (issue 17).
// tests/data/ggml_dequant/ holds, for each type, 16 rows of 256 weights of one tensor as llama-quantize --pure
// stored them (<type>.bin) and as ggml's to_float decodes them (<type>.npy), and the f32 rows they were quantized
// from (source.npy). Made by scripts/llamacpp/side_by_side.sh interop (llama.cpp source of node-llama-cpp 3.21.1,
// probe.cpp linked against its libraries); see tests/data/ggml_dequant/README.md.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/quant.h"
#include "io/npy.h"
#include "test_util.h"

namespace moep {
namespace {

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "missing " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

struct Case {
  const char* file;
  GgmlType type;
};

class GgmlDequant : public ::testing::TestWithParam<Case> {};

TEST_P(GgmlDequant, DecodingIsBitIdenticalToGgml) {
  const Case c = GetParam();
  const std::string dir = test::testdata_path("ggml_dequant/");
  const std::vector<uint8_t> blocks = read_bytes(dir + c.file + ".bin");
  const NpyArray ggml = read_npy_f32(dir + c.file + ".npy");
  ASSERT_EQ(ggml.shape.size(), 2u);
  const int64_t rows = ggml.shape[0], cols = ggml.shape[1];
  const size_t row_bytes = ggml_row_bytes(c.type, cols);
  ASSERT_EQ(blocks.size(), row_bytes * size_t(rows)) << c.file;
  std::vector<float> mine(static_cast<size_t>(cols));
  int64_t nonzero = 0;
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(c.type, blocks.data() + size_t(r) * row_bytes, mine.data(), cols);
    const float* theirs = &ggml.data[size_t(r * cols)];
    for (int64_t i = 0; i < cols; ++i) {
      nonzero += theirs[i] != 0.f;
      ASSERT_EQ(0, std::memcmp(&mine[size_t(i)], &theirs[i], sizeof(float)))
          << c.file << " row " << r << " weight " << i << ": moep " << mine[size_t(i)] << ", ggml " << theirs[i];
    }
  }
  EXPECT_GT(nonzero, rows * cols / 2) << "the fixture is mostly zeros";
}

TEST_P(GgmlDequant, EncodingIsBitIdenticalToLlamaQuantize) {
  const Case c = GetParam();
  const std::string dir = test::testdata_path("ggml_dequant/");
  const std::vector<uint8_t> blocks = read_bytes(dir + c.file + ".bin");
  const NpyArray src = read_npy_f32(dir + "source.npy");
  ASSERT_EQ(src.shape.size(), 2u);
  const int64_t rows = src.shape[0], cols = src.shape[1];
  const size_t row_bytes = ggml_row_bytes(c.type, cols);
  ASSERT_EQ(blocks.size(), row_bytes * size_t(rows));
  std::vector<uint8_t> mine(row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row(c.type, &src.data[size_t(r * cols)], mine.data(), cols);
    ASSERT_EQ(0, std::memcmp(mine.data(), blocks.data() + size_t(r) * row_bytes, row_bytes))
        << c.file << ": moep's encoding of row " << r << " differs from llama-quantize's";
  }
}

INSTANTIATE_TEST_SUITE_P(Types, GgmlDequant,
                         ::testing::Values(Case{"q8_0", GgmlType::Q8_0}, Case{"q4_0", GgmlType::Q4_0},
                                           Case{"q4_k", GgmlType::Q4_K}, Case{"q5_k", GgmlType::Q5_K},
                                           Case{"q6_k", GgmlType::Q6_K}, Case{"q5_0", GgmlType::Q5_0},
                                           Case{"q5_1", GgmlType::Q5_1}, Case{"mxfp4", GgmlType::MXFP4}),
                         [](const auto& info) { return std::string(info.param.file); });

}  // namespace
}  // namespace moep
