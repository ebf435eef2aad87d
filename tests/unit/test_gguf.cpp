// The GGUF reader against files written by GgufWriter: a round trip of every metadata type and a few tensor types,
// split models, and every kind of bad file (each must give a moep::Error that says what is wrong, never a crash).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "core/error.h"
#include "io/gguf.h"
#include "core/quant.h"
#include "io/gguf_writer.h"
#include "test_util.h"

namespace moep {
namespace {

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_all(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// The message of the moep::Error that opening `path` throws ("" if it opens).
std::string open_error(const std::string& path) {
  try {
    GgufFile::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Where the bytes of `s` (a name as stored, after its 8-byte length) end in `bytes`.
size_t after_string(const std::vector<uint8_t>& bytes, const std::string& s) {
  for (size_t i = 8; i + s.size() <= bytes.size(); ++i) {
    uint64_t len;
    std::memcpy(&len, &bytes[i - 8], 8);
    if (len == s.size() && std::memcmp(&bytes[i], s.data(), s.size()) == 0) return i + s.size();
  }
  ADD_FAILURE() << "no string '" << s << "' in the file";
  return 0;
}

template <class T>
void patch(std::vector<uint8_t>& bytes, size_t pos, T v) {
  std::memcpy(&bytes[pos], &v, sizeof(T));
}

std::vector<uint8_t> iota_bytes(size_t n) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t(i * 7 + 3);
  return b;
}

// A small file with every metadata type and three tensors.
void write_sample(const std::string& path, uint32_t alignment = 32) {
  GgufWriter w(alignment);
  w.set_string("general.architecture", "llama");
  w.set_u8("t.u8", 200);
  w.set_i8("t.i8", -5);
  w.set_u16("t.u16", 60000);
  w.set_i16("t.i16", -30000);
  w.set_u32("t.u32", 4000000000u);
  w.set_i32("t.i32", -7);
  w.set_f32("t.f32", 0.25f);
  w.set_bool("t.bool", true);
  w.set_u64("t.u64", 1ull << 40);
  w.set_i64("t.i64", -(1ll << 40));
  w.set_f64("t.f64", 1e-6);
  const float fa[] = {1.5f, -2.f, 3.25f};
  w.set_array("t.f32s", GgufType::F32, fa, 3);
  const int32_t ia[] = {-1, 2, 300000};
  w.set_array("t.i32s", GgufType::I32, ia, 3);
  w.set_string_array("t.strings", {"a", "", "hello world"});
  w.add_tensor("w.f32", GgmlType::F32, {4, 2}, iota_bytes(32));
  w.add_tensor("w.q8", GgmlType::Q8_0, {64, 3}, iota_bytes(ggml_row_bytes(GgmlType::Q8_0, 64) * 3));
  w.add_tensor("w.q4k", GgmlType::Q4_K, {256}, iota_bytes(144));
  w.write(path);
}

TEST(Gguf, RoundTripsEveryMetadataTypeAndTensors) {
  for (uint32_t alignment : {32u, 64u}) {
    test::TempDir dir;
    const std::string path = dir.str() + "/m.gguf";
    write_sample(path, alignment);
    const GgufFile g = GgufFile::open(path);
    EXPECT_EQ(g.version(), 3u);
    EXPECT_EQ(g.alignment(), alignment);
    EXPECT_EQ(g.data_offset(0) % alignment, 0u);
    EXPECT_EQ(g.get_string("general.architecture"), "llama");
    EXPECT_EQ(g.get_u32("t.u8"), 200u);
    EXPECT_EQ(g.get_i64("t.i8"), -5);
    EXPECT_EQ(g.get_u32("t.u16"), 60000u);
    EXPECT_EQ(g.get_i64("t.i16"), -30000);
    EXPECT_EQ(g.get_u32("t.u32"), 4000000000u);
    EXPECT_EQ(g.get_i64("t.i32"), -7);
    EXPECT_EQ(g.get_f32("t.f32"), 0.25f);
    EXPECT_TRUE(g.get_bool("t.bool"));
    EXPECT_EQ(g.get_u64("t.u64"), 1ull << 40);
    EXPECT_EQ(g.get_i64("t.i64"), -(1ll << 40));
    EXPECT_EQ(g.get_f32("t.f64"), 1e-6f);
    EXPECT_EQ(g.get_f32_array("t.f32s"), (std::vector<float>{1.5f, -2.f, 3.25f}));
    EXPECT_EQ(g.get_int_array("t.i32s"), (std::vector<int64_t>{-1, 2, 300000}));
    EXPECT_EQ(g.get_string_array("t.strings"), (std::vector<std::string>{"a", "", "hello world"}));
    EXPECT_EQ(g.get_u32_or("absent", 9), 9u);
    EXPECT_EQ(g.get_f32_or("absent", 1e-5f), 1e-5f);
    EXPECT_EQ(g.get_string_or("absent", "x"), "x");

    ASSERT_EQ(g.tensors().size(), 3u);
    const GgufTensor* q8 = g.find_tensor("w.q8");
    ASSERT_NE(q8, nullptr);
    EXPECT_EQ(q8->type, GgmlType::Q8_0);
    EXPECT_EQ(q8->dims, (std::vector<int64_t>{64, 3}));
    EXPECT_EQ(q8->shape_str(), "[64, 3]");
    EXPECT_EQ(q8->nbytes, 3u * 68u);
    EXPECT_EQ(q8->file_offset % alignment, 0u);
    const std::vector<uint8_t> want = iota_bytes(q8->nbytes);
    EXPECT_EQ(std::memcmp(q8->data, want.data(), want.size()), 0);
    EXPECT_EQ(g.find_tensor("w.q4k")->nbytes, 144u);
    EXPECT_EQ(std::memcmp(g.find_tensor("w.f32")->data, iota_bytes(32).data(), 32), 0);
    EXPECT_EQ(g.find_tensor("absent"), nullptr);
  }
}

TEST(Gguf, TypedAccessorsNameTheKeyAndTheExpectedType) {
  test::TempDir dir;
  const std::string path = dir.str() + "/m.gguf";
  write_sample(path);
  const GgufFile g = GgufFile::open(path);
  auto message = [&](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::string m = message([&] { g.get_u32("general.architecture"); });
  EXPECT_NE(m.find("'general.architecture' is a string, expected a u32"), std::string::npos) << m;
  m = message([&] { g.get_string("llama.block_count"); });
  EXPECT_NE(m.find("'llama.block_count' is missing (expected a string)"), std::string::npos) << m;
  m = message([&] { g.get_u32("t.i32"); });  // -7
  EXPECT_NE(m.find("does not fit a u32"), std::string::npos) << m;
  m = message([&] { g.get_f32_array("t.strings"); });
  EXPECT_NE(m.find("'t.strings' is an array of string, expected an array of f32"), std::string::npos) << m;
  m = message([&] { g.get_string_array("t.f32"); });
  EXPECT_NE(m.find("'t.f32' is an f32, expected an array of string"), std::string::npos) << m;
  m = message([&] { g.get_bool("t.u8"); });
  EXPECT_NE(m.find("expected a bool"), std::string::npos) << m;
}

TEST(Gguf, EveryTruncationIsAnError) {
  test::TempDir dir;
  const std::string good = dir.str() + "/good.gguf", bad = dir.str() + "/bad.gguf";
  write_sample(good);
  const std::vector<uint8_t> bytes = read_all(good);
  // The padding after the last tensor's data may go: the file ends where that data does.
  const GgufFile sample = GgufFile::open(good);
  const GgufTensor* last = sample.find_tensor("w.q4k");
  const size_t end = last->file_offset + last->nbytes;
  ASSERT_LT(end, bytes.size());
  write_all(bad, std::vector<uint8_t>(bytes.begin(), bytes.begin() + end));
  EXPECT_EQ(open_error(bad), "");
  for (size_t n = 0; n < end; ++n) {
    write_all(bad, std::vector<uint8_t>(bytes.begin(), bytes.begin() + n));
    const std::string m = open_error(bad);
    ASSERT_FALSE(m.empty()) << "a file cut to " << n << " of " << bytes.size() << " bytes opened";
    ASSERT_TRUE(m.find("truncated") != std::string::npos) << n << ": " << m;
  }
}

// Random byte changes in the header and infos (fixed seed): each file opens or gives a moep::Error, never a
// crash, an abort or another exception.
TEST(Gguf, CorruptedBytesGiveErrorsNotCrashes) {
  test::TempDir dir;
  const std::string good = dir.str() + "/good.gguf", bad = dir.str() + "/bad.gguf";
  write_sample(good);
  const std::vector<uint8_t> bytes = read_all(good);
  const size_t header_end = size_t(GgufFile::open(good).data_offset(0));
  std::mt19937 rng(20261204);
  int errors = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    std::vector<uint8_t> b = bytes;
    const int changes = 1 + int(rng() % 4);
    for (int k = 0; k < changes; ++k) {
      const size_t pos = rng() % header_end;
      b[pos] = (rng() % 2) ? uint8_t(rng()) : uint8_t(b[pos] ^ (1u << (rng() % 8)));
    }
    write_all(bad, b);
    try {
      GgufFile::open(bad);
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 500);
}

TEST(Gguf, WrongMagicAndVersions) {
  test::TempDir dir;
  const std::string good = dir.str() + "/good.gguf", bad = dir.str() + "/bad.gguf";
  write_sample(good);
  const std::vector<uint8_t> bytes = read_all(good);

  std::vector<uint8_t> b = bytes;
  b[0] = 'X';
  write_all(bad, b);
  EXPECT_NE(open_error(bad).find("not a GGUF file"), std::string::npos) << open_error(bad);

  for (uint32_t v : {1u, 4u}) {
    b = bytes;
    patch<uint32_t>(b, 4, v);
    write_all(bad, b);
    const std::string m = open_error(bad);
    EXPECT_NE(m.find("version " + std::to_string(v)), std::string::npos) << m;
    EXPECT_NE(m.find("versions 2 and 3"), std::string::npos) << m;
  }
  b = bytes;
  patch<uint32_t>(b, 4, 0x03000000u);
  write_all(bad, b);
  EXPECT_NE(open_error(bad).find("big-endian"), std::string::npos) << open_error(bad);

  b = bytes;
  patch<uint32_t>(b, 4, 2u);  // version 2 has the same layout
  write_all(bad, b);
  EXPECT_EQ(open_error(bad), "");
  EXPECT_EQ(GgufFile::open(bad).version(), 2u);
}

TEST(Gguf, TensorDataOutOfRangeMisalignedOrOverlapping) {
  test::TempDir dir;
  const std::string good = dir.str() + "/good.gguf", bad = dir.str() + "/bad.gguf";
  write_sample(good);
  const std::vector<uint8_t> bytes = read_all(good);
  // w.q4k: name, u32 n_dims (1), one i64 dim, u32 type, u64 offset.
  const size_t offset_pos = after_string(bytes, "w.q4k") + 4 + 8 + 4;
  uint64_t offset;
  std::memcpy(&offset, &bytes[offset_pos], 8);

  std::vector<uint8_t> b = bytes;
  patch<uint64_t>(b, offset_pos, offset + 4);
  write_all(bad, b);
  std::string m = open_error(bad);
  EXPECT_NE(m.find("'w.q4k' data offset " + std::to_string(offset + 4) + " is not a multiple of the alignment (32)"),
            std::string::npos) << m;

  b = bytes;
  patch<uint64_t>(b, offset_pos, offset + 32);  // the last tensor: its end passes the end of the file
  write_all(bad, b);
  m = open_error(bad);
  EXPECT_NE(m.find("'w.q4k' [256] q4_K takes bytes"), std::string::npos) << m;

  b = bytes;
  patch<uint64_t>(b, offset_pos, 0);  // onto w.f32's bytes
  write_all(bad, b);
  m = open_error(bad);
  EXPECT_NE(m.find("tensors 'w.f32' (bytes ["), std::string::npos) << m;
  EXPECT_NE(m.find("and 'w.q4k' (from byte "), std::string::npos) << m;
  EXPECT_NE(m.find(") overlap"), std::string::npos) << m;

  b = bytes;
  patch<uint64_t>(b, offset_pos, ~uint64_t(0) - 31);  // aligned, and would wrap around
  write_all(bad, b);
  EXPECT_NE(open_error(bad).find("takes bytes"), std::string::npos) << open_error(bad);
}

TEST(Gguf, UnknownTensorTypeNamesTheIdAndTheTensor) {
  test::TempDir dir;
  const std::string good = dir.str() + "/good.gguf", bad = dir.str() + "/bad.gguf";
  write_sample(good);
  const std::vector<uint8_t> bytes = read_all(good);
  const size_t type_pos = after_string(bytes, "w.q8") + 4 + 2 * 8;
  std::vector<uint8_t> b = bytes;
  patch<uint32_t>(b, type_pos, 10u);
  write_all(bad, b);
  std::string m = open_error(bad);
  EXPECT_NE(m.find("tensor 'w.q8' (the first of its type in the file) has ggml type 10 (q2_K)"), std::string::npos)
      << m;
  EXPECT_NE(m.find("it reads f32, f16, q4_0, q8_0, q4_K, q5_K, q6_K, bf16, mxfp4"), std::string::npos) << m;
  patch<uint32_t>(b, type_pos, 999u);
  write_all(bad, b);
  m = open_error(bad);
  EXPECT_NE(m.find("ggml type 999 (not a ggml type)"), std::string::npos) << m;
}

TEST(Gguf, AbsurdCountsAreRefusedBeforeAllocating) {
  test::TempDir dir;
  const std::string good = dir.str() + "/good.gguf", bad = dir.str() + "/bad.gguf";
  write_sample(good);
  const std::vector<uint8_t> bytes = read_all(good);

  // An array claiming 2^60 strings, and 2^60 f32.
  for (const char* key : {"t.strings", "t.f32s"}) {
    std::vector<uint8_t> b = bytes;
    patch<uint64_t>(b, after_string(bytes, key) + 4 + 4, 1ull << 60);
    write_all(bad, b);
    const std::string m = open_error(bad);
    EXPECT_NE(m.find(std::string("metadata array '") + key + "'"), std::string::npos) << m;
    EXPECT_NE(m.find("claims 1152921504606846976 elements"), std::string::npos) << m;
  }
  // A string value 2^62 bytes long.
  std::vector<uint8_t> b = bytes;
  patch<uint64_t>(b, after_string(bytes, "general.architecture") + 4, 1ull << 62);
  write_all(bad, b);
  std::string m = open_error(bad);
  EXPECT_NE(m.find("the value of metadata key 'general.architecture'"), std::string::npos) << m;
  EXPECT_NE(m.find("is a string of 4611686018427387904 bytes"), std::string::npos) << m;
  // Header counts.
  b = bytes;
  patch<uint64_t>(b, 8, 1ull << 50);
  write_all(bad, b);
  EXPECT_NE(open_error(bad).find("claims 1125899906842624 tensors"), std::string::npos) << open_error(bad);
  b = bytes;
  patch<uint64_t>(b, 16, 1ull << 50);
  write_all(bad, b);
  EXPECT_NE(open_error(bad).find("claims 1125899906842624 metadata entries"), std::string::npos) << open_error(bad);
  // A value type that does not exist.
  b = bytes;
  patch<uint32_t>(b, after_string(bytes, "t.u8"), 13u);
  write_all(bad, b);
  EXPECT_NE(open_error(bad).find("value type of metadata key 't.u8' is 13"), std::string::npos) << open_error(bad);
}

TEST(Gguf, DuplicateNamesAreRefused) {
  test::TempDir dir;
  const std::string path = dir.str() + "/m.gguf";
  GgufWriter w;
  w.add_tensor("same", GgmlType::F32, {8}, iota_bytes(32));
  w.add_tensor("same", GgmlType::F32, {8}, iota_bytes(32));
  w.write(path);
  EXPECT_NE(open_error(path).find("tensor 'same' appears twice"), std::string::npos) << open_error(path);

  // A key twice (the writer refuses that, so patch one key into the other's name).
  GgufWriter w2;
  w2.set_u32("key.a", 1);
  w2.set_u32("key.b", 2);
  w2.write(path);
  std::vector<uint8_t> b = read_all(path);
  b[after_string(b, "key.b") - 1] = 'a';
  write_all(path, b);
  EXPECT_NE(open_error(path).find("metadata key 'key.a' appears twice"), std::string::npos) << open_error(path);
}

// Writes part k (1-based) of n of a split model with tensors "t<k>.a", "t<k>.b".
void write_split_part(const std::string& prefix, int k, int n, int total_tensors) {
  GgufWriter w;
  w.set_u16("split.no", uint16_t(k - 1));
  w.set_u16("split.count", uint16_t(n));
  w.set_i32("split.tensors.count", total_tensors);
  if (k == 1) w.set_string("general.architecture", "qwen3moe");
  for (const char* suffix : {".a", ".b"})
    w.add_tensor("t" + std::to_string(k) + suffix, GgmlType::Q8_0, {32, 2}, iota_bytes(68));
  w.write(gguf_split_path(prefix, k, n));
}

TEST(Gguf, SplitModelOpensFromAnyPart) {
  test::TempDir dir;
  const std::string prefix = dir.str() + "/model";
  for (int k = 1; k <= 3; ++k) write_split_part(prefix, k, 3, 6);
  EXPECT_EQ(gguf_split_path(prefix, 2, 3), prefix + "-00002-of-00003.gguf");
  for (int k = 1; k <= 3; ++k) {
    const GgufFile g = GgufFile::open(gguf_split_path(prefix, k, 3));
    ASSERT_EQ(g.files().size(), 3u);
    EXPECT_EQ(g.tensors().size(), 6u);
    EXPECT_EQ(g.get_string("general.architecture"), "qwen3moe");  // the first part's metadata
    const GgufTensor* t = g.find_tensor("t3.b");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->part, 2);
    EXPECT_EQ(t->data, g.files()[2]->data() + t->file_offset);
  }
}

TEST(Gguf, SplitModelErrors) {
  test::TempDir dir;
  const std::string prefix = dir.str() + "/model";
  for (int k = 1; k <= 3; ++k) write_split_part(prefix, k, 3, 6);
  std::filesystem::remove(gguf_split_path(prefix, 3, 3));
  std::string m = open_error(gguf_split_path(prefix, 1, 3));
  EXPECT_NE(m.find("part 3 of 3 of this split model is missing: expected " + gguf_split_path(prefix, 3, 3)),
            std::string::npos) << m;

  write_split_part(prefix, 3, 3, 7);  // split.tensors.count is read from the first part
  write_split_part(prefix, 1, 3, 7);
  m = open_error(gguf_split_path(prefix, 2, 3));
  EXPECT_NE(m.find("split.tensors.count says 7 tensors, but the 3 parts hold 6"), std::string::npos) << m;

  // A part whose name and metadata disagree.
  write_split_part(prefix, 1, 3, 6);
  std::filesystem::copy_file(gguf_split_path(prefix, 1, 3), gguf_split_path(prefix, 3, 3),
                             std::filesystem::copy_options::overwrite_existing);
  m = open_error(gguf_split_path(prefix, 1, 3));
  EXPECT_NE(m.find("expected part 3 of 3 (split.no = 2, split.count = 3), but its metadata says split.no = 0"),
            std::string::npos) << m;

  // A renamed part.
  write_split_part(prefix, 3, 3, 6);
  std::filesystem::rename(gguf_split_path(prefix, 2, 3), dir.str() + "/renamed.gguf");
  m = open_error(dir.str() + "/renamed.gguf");
  EXPECT_NE(m.find("its name is not NAME-0000k-of-0000n.gguf"), std::string::npos) << m;
}

}  // namespace
}  // namespace moep

namespace moep {
namespace {

std::vector<uint8_t> testdata_bytes(const std::string& rel) { return read_all(test::testdata_path(rel)); }

// tests/data/quant/ggml.gguf was written by ggml's own gguf writer (make_fixtures.c).
TEST(Gguf, ReadsAFileWrittenByGgml) {
  const GgufFile g = GgufFile::open(test::testdata_path("quant/ggml.gguf"));
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.get_string("general.architecture"), "qwen3moe");
  EXPECT_EQ(g.get_u32("qwen3moe.block_count"), 48u);
  EXPECT_EQ(g.get_f32("qwen3moe.rope.freq_base"), 1e6f);
  EXPECT_TRUE(g.get_bool("t.bool"));
  EXPECT_EQ(g.get_i64("t.i64"), -5);
  EXPECT_EQ(g.get_u32("split.count"), 1u);
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"<s>", "hello", ""}));
  EXPECT_EQ(g.get_f32_array("tokenizer.ggml.scores"), (std::vector<float>{0.f, -1.5f, 2.25f}));

  const GgufTensor* q = g.find_tensor("row0.q4_K");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, GgmlType::Q4_K);
  EXPECT_EQ(q->dims, (std::vector<int64_t>{256, 2}));
  ASSERT_EQ(q->nbytes, 2u * 144u);
  const std::vector<uint8_t> want_q = testdata_bytes("quant/q4_K.q");  // row 0 (512 values) comes first
  EXPECT_EQ(std::memcmp(q->data, want_q.data(), q->nbytes), 0);
  std::vector<float> deq(512);
  dequantize_row(q->type, q->data, deq.data(), 512);
  const std::vector<uint8_t> want_deq = testdata_bytes("quant/q4_K.deq");
  EXPECT_EQ(std::memcmp(deq.data(), want_deq.data(), 512 * 4), 0);

  const GgufTensor* f = g.find_tensor("row3.f32");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->type, GgmlType::F32);
  const std::vector<uint8_t> input = testdata_bytes("quant/input.bin");
  const size_t row3 = 4 * 6 + 4 * size_t(512 + 256 + 256);  // header: 5 rows; rows 0-2 before it
  EXPECT_EQ(std::memcmp(f->data, input.data() + row3, 8 * 4), 0);
}

}  // namespace
}  // namespace moep
