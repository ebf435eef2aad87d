// Quantized block types against ggml itself: tests/data/quant holds rows that ggml quantized and dequantized
// (make_fixtures.sh says how); moep's dequantizer must give ggml's floats bit for bit, and its reference
// quantizers ggml's bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/quant.h"
#include "test_util.h"

namespace moep {
namespace {

std::vector<uint8_t> read_bytes(const std::string& rel) {
  std::ifstream in(test::testdata_path(rel), std::ios::binary);
  EXPECT_TRUE(in) << "missing fixture " << rel;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

struct Rows {
  std::vector<int64_t> lengths;
  std::vector<float> values;  // every row, one after another
};

Rows read_input(const std::string& rel = "quant/input.bin") {
  const std::vector<uint8_t> bytes = read_bytes(rel);
  Rows rows;
  uint32_t n = 0;
  std::memcpy(&n, bytes.data(), 4);
  size_t total = 0;
  for (uint32_t r = 0; r < n; ++r) {
    uint32_t len;
    std::memcpy(&len, bytes.data() + 4 * (1 + r), 4);
    rows.lengths.push_back(len);
    total += len;
  }
  const size_t header = 4 * (1 + size_t(n));
  EXPECT_EQ(bytes.size(), header + 4 * total);
  rows.values.resize(total);
  std::memcpy(rows.values.data(), bytes.data() + header, 4 * total);
  return rows;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

class QuantVsGgml : public ::testing::TestWithParam<GgmlType> {};

TEST_P(QuantVsGgml, DequantizesGgmlBytesToGgmlFloatsBitwise) {
  const GgmlType type = GetParam();
  const std::string name = ggml_type_traits(type).name;
  const Rows rows = read_input();
  const std::vector<uint8_t> q = read_bytes("quant/" + name + ".q");
  const std::vector<uint8_t> deq_bytes = read_bytes("quant/" + name + ".deq");
  ASSERT_EQ(deq_bytes.size(), 4 * rows.values.size());
  std::vector<float> want(rows.values.size());
  std::memcpy(want.data(), deq_bytes.data(), deq_bytes.size());

  size_t q_off = 0, off = 0;
  for (size_t r = 0; r < rows.lengths.size(); ++r) {
    const int64_t n = rows.lengths[r];
    ASSERT_LE(q_off + ggml_row_bytes(type, n), q.size());
    std::vector<float> got(n);
    dequantize_row(type, q.data() + q_off, got.data(), n);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_TRUE(same_bits(got[i], want[off + i])) << name << " row " << r << " weight " << i << ": " << got[i]
                                                    << " vs ggml " << want[off + i];
    q_off += ggml_row_bytes(type, n);
    off += n;
  }
  EXPECT_EQ(q_off, q.size());
}

TEST_P(QuantVsGgml, QuantizesToGgmlBytes) {
  const GgmlType type = GetParam();
  const std::string name = ggml_type_traits(type).name;
  const Rows rows = read_input();
  const std::vector<uint8_t> want = read_bytes("quant/" + name + ".q");
  size_t q_off = 0, off = 0;
  for (size_t r = 0; r < rows.lengths.size(); ++r) {
    const int64_t n = rows.lengths[r];
    const size_t bytes = ggml_row_bytes(type, n);
    ASSERT_LE(q_off + bytes, want.size());
    std::vector<uint8_t> got(bytes);
    quantize_row(type, rows.values.data() + off, got.data(), n);
    const int block_bytes = ggml_type_traits(type).block_bytes;
    for (size_t i = 0; i < bytes; ++i)
      ASSERT_EQ(got[i], want[q_off + i]) << name << " row " << r << " block " << i / block_bytes << " byte "
                                         << i % block_bytes;
    q_off += bytes;
    off += n;
  }
}

INSTANTIATE_TEST_SUITE_P(Quant, QuantVsGgml,
                         ::testing::Values(GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q5_K,
                                           GgmlType::Q6_K, GgmlType::MXFP4),
                         [](const auto& info) { return std::string(ggml_type_traits(info.param).name); });

// MXFP4's corners against ggml (make_fixtures.c's fill_edge): ties between levels, the clamp past 6 times the
// scale, amax at and below powers of two, signed zeros, subnormal scales, amax below 2^-125 (x86-64's wrap of the
// negative exponent), amax near FLT_MAX, all zeros.
TEST(QuantVsGgmlMxfp4, EdgeBlocksEncodeAndDecodeAsGgml) {
  const Rows rows = read_input("quant/mxfp4_edge.bin");
  ASSERT_EQ(rows.lengths.size(), 1u);
  const int64_t n = rows.lengths[0];
  const std::vector<uint8_t> want_q = read_bytes("quant/mxfp4_edge.q");
  const std::vector<uint8_t> deq_bytes = read_bytes("quant/mxfp4_edge.deq");
  ASSERT_EQ(want_q.size(), ggml_row_bytes(GgmlType::MXFP4, n));
  ASSERT_EQ(deq_bytes.size(), size_t(4 * n));
  std::vector<uint8_t> q(want_q.size());
  quantize_row(GgmlType::MXFP4, rows.values.data(), q.data(), n);
  for (size_t i = 0; i < q.size(); ++i)
    EXPECT_EQ(int(q[i]), int(want_q[i])) << "block " << i / 17 << " byte " << i % 17;
  std::vector<float> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
  std::memcpy(want.data(), deq_bytes.data(), deq_bytes.size());
  dequantize_row(GgmlType::MXFP4, want_q.data(), got.data(), n);
  for (int64_t i = 0; i < n; ++i)
    EXPECT_TRUE(same_bits(got[size_t(i)], want[size_t(i)])) << "weight " << i << ": " << got[size_t(i)] << " vs ggml "
                                                            << want[size_t(i)];
}

// Hand-made blocks: value = e2m1 code's value (0, 0.5, 1, 1.5, 2, 3, 4, 6, sign in bit 3) · 2^(e − 127), weight j
// in the low nibble of byte j, weight j + 16 in the high one; code 8 is +0; e = 0 and 1 give f32 subnormals.
TEST(QuantMxfp4, DecodesHandMadeBlocks) {
  uint8_t b[17] = {127};
  for (int j = 0; j < 16; ++j) b[1 + j] = uint8_t(j | ((15 - j) << 4));
  float y[32];
  dequantize_row(GgmlType::MXFP4, b, y, 32);
  const float magnitude[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j & 8 ? -1.f : 1.f) * magnitude[j & 7]) << j;
    EXPECT_EQ(y[16 + j], ((15 - j) & 8 ? -1.f : 1.f) * magnitude[(15 - j) & 7]) << 16 + j;
  }
  EXPECT_FALSE(std::signbit(y[8])) << "code 8 decodes to +0, as in ggml";
  b[0] = 0;  // 2^-127: code 1 (0.5) is 2^-128, code 7 (6) is 3 · 2^-126
  dequantize_row(GgmlType::MXFP4, b, y, 32);
  EXPECT_EQ(y[1], std::ldexp(1.f, -128));
  EXPECT_EQ(y[7], std::ldexp(3.f, -126));
  b[0] = 1;
  dequantize_row(GgmlType::MXFP4, b, y, 32);
  EXPECT_EQ(y[1], std::ldexp(1.f, -127));
  b[0] = 255;  // 2^128 (e8m0's NaN, a power of two here as in ggml): code 1 is 2^127, code 2 (1) 2^128 overflows f32
  dequantize_row(GgmlType::MXFP4, b, y, 32);
  EXPECT_EQ(y[1], std::ldexp(1.f, 127));
  EXPECT_TRUE(std::isinf(y[2]));
}

TEST(QuantLayout, BlockSizesAreGgmls) {
  struct Want { GgmlType type; int weights, bytes; };
  for (const Want& w : {Want{GgmlType::F32, 1, 4}, Want{GgmlType::F16, 1, 2}, Want{GgmlType::BF16, 1, 2},
                        Want{GgmlType::Q8_0, 32, 34}, Want{GgmlType::Q4_0, 32, 18}, Want{GgmlType::Q4_K, 256, 144},
                        Want{GgmlType::Q5_K, 256, 176}, Want{GgmlType::Q6_K, 256, 210},
                        Want{GgmlType::MXFP4, 32, 17}}) {
    EXPECT_EQ(ggml_type_traits(w.type).block_weights, w.weights) << ggml_type_traits(w.type).name;
    EXPECT_EQ(ggml_type_traits(w.type).block_bytes, w.bytes) << ggml_type_traits(w.type).name;
  }
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q4_K, 4096), 16u * 144u);
  EXPECT_EQ(ggml_type_traits(10u), nullptr);  // q2_K: ggml has it, moep does not read it
  EXPECT_STREQ(ggml_type_name_any(10), "q2_K");
  EXPECT_EQ(ggml_type_name_any(4), nullptr);  // removed from ggml
  EXPECT_EQ(ggml_type_name_any(1000), nullptr);
}

// Fresh random rows (not ggml's): every type's round trip stays within its resolution of the row's scale.
TEST(QuantRoundTrip, ErrorWithinEachTypesResolution) {
  struct Case { GgmlType type; double max_rel_l2; };
  for (const Case& c : {Case{GgmlType::Q8_0, 0.01}, Case{GgmlType::Q4_0, 0.15}, Case{GgmlType::Q4_K, 0.12},
                        Case{GgmlType::Q5_K, 0.06}, Case{GgmlType::Q6_K, 0.03}, Case{GgmlType::MXFP4, 0.2},
                        Case{GgmlType::F16, 1e-3},
                        Case{GgmlType::BF16, 1e-2}, Case{GgmlType::F32, 0.0}}) {
    const int64_t n = 1024;
    const std::vector<float> x = test::random_floats(n, 1234u + uint32_t(c.type));
    std::vector<uint8_t> q(ggml_row_bytes(c.type, n));
    std::vector<float> y(n);
    quantize_row(c.type, x.data(), q.data(), n);
    dequantize_row(c.type, q.data(), y.data(), n);
    EXPECT_LE(test::rel_l2(y.data(), x.data(), n), c.max_rel_l2) << ggml_type_traits(c.type).name;
  }
}

}  // namespace
}  // namespace moep
