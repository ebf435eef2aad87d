// Tokenizer tests: the real vocabularies' llama.cpp test vectors, every vectors.json made by Hugging Face
// `tokenizers` (tests/reference/make_tokenizer_vectors.py), the stream decoder, errors, and `moep tokenize`.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>

#include "core/error.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

namespace moep {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string tokenizers_dir() { return test::testdata_path("tokenizers"); }

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// The loaded tokenizers are shared by the tests (loading takes a fraction of a second each).
const Tokenizer& tokenizer(const std::string& family) {
  static std::map<std::string, Tokenizer>* cache = new std::map<std::string, Tokenizer>();
  auto it = cache->find(family);
  if (it == cache->end()) it = cache->emplace(family, Tokenizer::load(tokenizers_dir() + "/" + family)).first;
  return it->second;
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += " " + std::to_string(id);
  return s;
}

// ------------------------------------------------------------------------------------------------------------
// llama.cpp's test vectors of the two real vocabularies: FAMILY/*.inp holds the strings, each followed by a line
// "__ggml_vocab_test__"; FAMILY/*.out holds one line of expected ids per string (" id id ...", no BOS).

struct GgmlVectors {
  std::vector<std::string> texts;
  std::vector<std::string> expected;  // " id id ..." as in the file
};

GgmlVectors read_ggml_vectors(const std::string& family) {
  GgmlVectors v;
  std::string inp, out;
  for (const auto& e : fs::directory_iterator(tokenizers_dir() + "/" + family)) {
    if (e.path().extension() == ".inp") inp = read_file(e.path());
    if (e.path().extension() == ".out") out = read_file(e.path());
  }
  const std::string sep = "\n__ggml_vocab_test__\n";
  for (size_t p = 0;;) {
    const size_t q = inp.find(sep, p);
    if (q == std::string::npos) break;
    v.texts.push_back(inp.substr(p, q - p));
    p = q + sep.size();
  }
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) v.expected.push_back(line);
  return v;
}

class TokenizerGgmlVectors : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerGgmlVectors, AllMatchAndRoundTrip) {
  const Tokenizer& tok = tokenizer(GetParam());
  const GgmlVectors v = read_ggml_vectors(GetParam());
  ASSERT_EQ(v.texts.size(), 46u);
  ASSERT_EQ(v.expected.size(), v.texts.size());
  for (size_t i = 0; i < v.texts.size(); ++i) {
    const std::vector<int32_t> ids = tok.encode(v.texts[i], /*add_special_tokens=*/false);
    EXPECT_EQ(join_ids(ids), v.expected[i]) << "text #" << i << ": " << json(v.texts[i]).dump();
    EXPECT_EQ(tok.decode(ids, false), v.texts[i]) << "text #" << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Real, TokenizerGgmlVectors, ::testing::Values("gpt2", "llama-spm"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// ------------------------------------------------------------------------------------------------------------
// Every tests/data/tokenizers/*/vectors.json: ids, decode and decode without special tokens as `tokenizers` gave.

std::vector<std::string> vector_families() {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(tokenizers_dir()))
    if (e.is_directory() && fs::exists(e.path() / "vectors.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class TokenizerReferenceVectors : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerReferenceVectors, MatchHuggingFace) {
  const Tokenizer& tok = tokenizer(GetParam());
  const json vectors = json::parse(read_file(fs::path(tokenizers_dir()) / GetParam() / "vectors.json"));
  ASSERT_TRUE(vectors.is_array());
  ASSERT_GT(vectors.size(), 0u);
  int failures = 0;
  for (const json& v : vectors) {
    const std::string text = v.at("text");
    const bool add = v.at("add_special_tokens");
    const std::vector<int32_t> expected = v.at("ids");
    const std::vector<int32_t> ids = tok.encode(text, add);
    EXPECT_EQ(ids, expected) << "text " << json(text).dump() << " add_special_tokens=" << add;
    EXPECT_EQ(tok.decode(expected, false), v.at("decoded").get<std::string>()) << "decode of " << json(text).dump();
    if (v.contains("decoded_skip_special")) {
      EXPECT_EQ(tok.decode(expected, true), v.at("decoded_skip_special").get<std::string>())
          << "decode (skip special) of " << json(text).dump();
    }
    if (ids != expected && ++failures > 20) FAIL() << "too many mismatches";
  }
}

INSTANTIATE_TEST_SUITE_P(Families, TokenizerReferenceVectors, ::testing::ValuesIn(vector_families()),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TokenizerReferenceVectors);

// ------------------------------------------------------------------------------------------------------------
// Lookups and special tokens.

TEST(Tokenizer, LookupsGpt2) {
  const Tokenizer& tok = tokenizer("gpt2");
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 50256);
  EXPECT_EQ(tok.token_to_id("Hello"), 15496);
  EXPECT_EQ(tok.token_to_id("no such token"), -1);
  EXPECT_EQ(tok.id_to_token(15496), "Hello");
  EXPECT_EQ(tok.id_to_token(-3), "");
  EXPECT_EQ(tok.id_to_token(1 << 20), "");
  EXPECT_TRUE(tok.is_special(50256));
  EXPECT_FALSE(tok.is_special(15496));
  // A special token written in the text is one token; decode can drop it; unknown ids are skipped.
  EXPECT_EQ(tok.encode("Hello<|endoftext|>", false), (std::vector<int32_t>{15496, 50256}));
  const std::vector<int32_t> ids = {15496, 50256, 995, 999999};
  EXPECT_EQ(tok.decode(ids, false), "Hello<|endoftext|> world");
  EXPECT_EQ(tok.decode(ids, true), "Hello world");
}

TEST(Tokenizer, LookupsLlamaSpm) {
  const Tokenizer& tok = tokenizer("llama-spm");
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.token_to_id("<s>"), 1);
  EXPECT_EQ(tok.token_to_id("<0x0A>"), 13);
  EXPECT_TRUE(tok.is_special(1));
  EXPECT_TRUE(tok.is_special(2));
  EXPECT_FALSE(tok.is_special(13));
  // No post-processor in this file: add_special_tokens adds nothing.
  EXPECT_EQ(tok.encode("Hello", true), tok.encode("Hello", false));
  // Characters outside the vocabulary fall back to bytes and come back whole.
  const std::string text = "\xF0\x9F\xA6\x99 \xE2\x9C\x85 \xF0\x9D\x8C\x86";  // 🦙 ✅ 𝌆
  EXPECT_EQ(tok.decode(tok.encode(text, false), false), text);
}

TEST(Tokenizer, EmptyText) {
  for (const char* family : {"gpt2", "llama-spm"}) {
    EXPECT_TRUE(tokenizer(family).encode("", false).empty()) << family;
    EXPECT_EQ(tokenizer(family).decode({}, false), "") << family;
  }
}

TEST(Tokenizer, RejectsInvalidUtf8Input) {
  try {
    (void)tokenizer("gpt2").encode("abc\xFF", false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, LongInputsRoundTripAndAreConsistent) {
  // Thousands of tokens: the SentencePiece one is a single word of the whole text (no pre-tokenizer).
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += "The quick brown fox jumps over the lazy dog " + std::to_string(i * 7919) + ". Été 日本語 🦙\n";
  for (const char* family : {"gpt2", "llama-spm"}) {
    const Tokenizer& tok = tokenizer(family);
    const std::vector<int32_t> ids = tok.encode(text, false);
    EXPECT_GT(ids.size(), 4000u) << family;
    EXPECT_EQ(tok.decode(ids, false), text) << family;
    EXPECT_EQ(tok.encode(text, false), ids) << family;  // second time through the word cache
  }
}

TEST(Tokenizer, ConcurrentEncodeIsConsistent) {
  const Tokenizer& tok = tokenizer("gpt2");
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back("thread text " + std::to_string(i * 31337) + " héllo wörld " + std::to_string(i));
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok.encode(t, false));
  std::vector<int> bad(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20; ++rep)
        for (size_t i = 0; i < texts.size(); ++i) bad[size_t(t)] += tok.encode(texts[i], false) != expected[i];
    });
  for (auto& th : threads) th.join();
  for (int b : bad) EXPECT_EQ(b, 0);
}

// ------------------------------------------------------------------------------------------------------------
// Stream decoder.

std::string stream_all(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special,
                       std::vector<std::string>* pieces) {
  StreamDecoder stream(tok, skip_special);
  std::string out;
  for (int32_t id : ids) {
    std::string piece = stream.step(id);
    if (pieces) pieces->push_back(piece);
    out += piece;
  }
  const std::string rest = stream.finish();
  if (pieces) pieces->push_back(rest);
  return out + rest;
}

TEST(TokenizerStream, EmojiAndCjkNeverSplitACharacter) {
  const std::string text =
      "Hi 🦙🦙! 日本語のテキスト、中文。한국어 👨‍👩‍👧‍👦 café ñ 𝌆\n\tend <|endoftext|> more 🙂";
  for (const char* family : {"gpt2", "llama-spm"}) {
    const Tokenizer& tok = tokenizer(family);
    const std::vector<int32_t> ids = tok.encode(text, false);
    for (bool skip : {false, true}) {
      std::vector<std::string> pieces;
      EXPECT_EQ(stream_all(tok, ids, skip, &pieces), tok.decode(ids, skip)) << family;
      size_t nonempty = 0;
      for (const std::string& p : pieces) {
        EXPECT_TRUE(tok::is_valid_utf8(p, nullptr)) << family << ": " << json(p).dump();
        EXPECT_EQ(p.find("\xEF\xBF\xBD"), std::string::npos) << family << ": half a character in " << json(p).dump();
        nonempty += !p.empty();
      }
      EXPECT_GT(nonempty, 10u) << family << ": the stream should give text as it goes";
    }
  }
}

TEST(TokenizerStream, MatchesDecodeOnEveryReferenceVector) {
  for (const std::string& family : vector_families()) {
    const Tokenizer& tok = tokenizer(family);
    const json vectors = json::parse(read_file(fs::path(tokenizers_dir()) / family / "vectors.json"));
    for (const json& v : vectors) {
      const std::vector<int32_t> ids = v.at("ids");
      for (bool skip : {false, true})
        EXPECT_EQ(stream_all(tok, ids, skip, nullptr), tok.decode(ids, skip)) << family << " " << v.at("text").dump();
    }
  }
}

TEST(TokenizerStream, RandomIdsMatchDecode) {
  // Random ids, many of them byte tokens, so that invalid UTF-8 and split characters are common.
  std::mt19937 rng(1234);
  for (const auto& [family, byte_lo, byte_hi] : {std::tuple{"gpt2", 150, 260}, std::tuple{"llama-spm", 3, 259}}) {
    const Tokenizer& tok = tokenizer(family);
    for (int it = 0; it < 300; ++it) {
      std::vector<int32_t> ids;
      const int n = int(rng() % 24);
      for (int k = 0; k < n; ++k)
        ids.push_back(rng() % 3 ? byte_lo + int(rng() % uint32_t(byte_hi - byte_lo)) : int(rng() % uint32_t(tok.vocab_size())));
      if (it % 5 == 0) ids.push_back(tok.token_to_id(family == std::string("gpt2") ? "<|endoftext|>" : "</s>"));
      for (bool skip : {false, true}) {
        std::vector<std::string> pieces;
        ASSERT_EQ(stream_all(tok, ids, skip, &pieces), tok.decode(ids, skip)) << family << " " << json(ids).dump();
        for (const std::string& p : pieces) EXPECT_TRUE(tok::is_valid_utf8(p, nullptr));
      }
    }
  }
}

TEST(TokenizerStream, IncompleteCharacterIsHeldThenFlushed) {
  const Tokenizer& tok = tokenizer("gpt2");
  const std::vector<int32_t> ids = tok.encode("a€", false);  // '€' is 3 bytes, several byte tokens
  StreamDecoder stream(tok, false);
  EXPECT_EQ(stream.step(ids[0]), "a");
  const int32_t e2 = tok.token_to_id("\xC3\xA2");  // the byte-level token of the lone byte 0xE2
  ASSERT_GE(e2, 0);
  EXPECT_EQ(stream.step(e2), "");                   // held: the character is not complete
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");        // at the end it is what decode gives: U+FFFD
  EXPECT_EQ(stream.step(ids[0]), "a");               // finish() reset the stream
}

// ------------------------------------------------------------------------------------------------------------
// Errors: a missing or malformed tokenizer.json gives a moep::Error naming the file and what is wrong.

std::string load_error(const std::string& path) {
  try {
    (void)Tokenizer::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string json_error(const std::string& text) {
  try {
    (void)Tokenizer::from_json(text, "bad/tokenizer.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void expect_contains(const std::string& msg, std::initializer_list<const char*> parts) {
  for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "\"" << p << "\" not in: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

TEST(TokenizerErrors, MissingFile) {
  test::TempDir dir;
  expect_contains(load_error(dir.str()), {"tokenizer.json", "not found"});
  expect_contains(load_error(dir.str() + "/nope.json"), {"nope.json", "not found"});
}

TEST(TokenizerErrors, MalformedJson) {
  test::TempDir dir;
  const std::string full = read_file(fs::path(tokenizers_dir()) / "gpt2" / "tokenizer.json");
  std::ofstream(dir.path() / "tokenizer.json") << full.substr(0, full.size() / 2);  // truncated
  expect_contains(load_error(dir.str()), {"tokenizer.json", "not valid JSON"});
  expect_contains(json_error(""), {"bad/tokenizer.json", "not valid JSON"});
  expect_contains(json_error("[1, 2]"), {"bad/tokenizer.json", "expected a JSON object"});
  expect_contains(json_error("{}"), {"bad/tokenizer.json", "model"});
}

TEST(TokenizerErrors, OnlyRegularFilesOfBoundedSizeAreRead) {
  test::TempDir dir;
  // A link to /dev/zero was read until bad_alloc.
  fs::create_symlink("/dev/zero", dir.path() / "tokenizer.json");
  expect_contains(load_error(dir.str()), {"tokenizer.json", "is a character device; expected a regular file"});
  fs::remove(dir.path() / "tokenizer.json");
  ASSERT_EQ(::mkfifo((dir.path() / "tokenizer.json").c_str(), 0600), 0);
  expect_contains(load_error(dir.str()), {"tokenizer.json", "is a FIFO"});
  fs::remove(dir.path() / "tokenizer.json");
  // Sparse: 1 GiB + 1 byte of zeros costs no disk, and is refused before a byte is read.
  std::ofstream(dir.path() / "tokenizer.json").close();
  fs::resize_file(dir.path() / "tokenizer.json", (size_t(1) << 30) + 1);
  expect_contains(load_error(dir.str()), {"tokenizer.json of 1073741825 bytes", "at most 1024 MiB for tokenizer.json"});
}

// 100,000 nested Sequence normalizers: a stack overflow, and memory quadratic in the depth, before the limits.
std::string nested_sequences(const char* kind, const char* list_key, const char* leaf, int depth) {
  std::string open = std::string(R"({"type": "Sequence", ")") + list_key + "\": [";
  std::string text;
  text.reserve(size_t(depth) * (open.size() + 2) + 64);
  for (int i = 0; i < depth; ++i) text += open;
  text += leaf;
  for (int i = 0; i < depth; ++i) text += "]}";
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  return std::string("{\"") + kind + "\": " + text + ", " + model + "}";
}

TEST(TokenizerErrors, DeepNestingIsRefusedNamingTheLimit) {
  // Deeper than any JSON moep reads: refused by the scan before parsing, naming the file and the limit.
  expect_contains(json_error(nested_sequences("normalizer", "normalizers", R"({"type": "NFC"})", 100000)),
                  {"bad/tokenizer.json", "JSON nested more than 512 levels"});
  // Shallow enough for the JSON limit, deeper than components nest.
  expect_contains(json_error(nested_sequences("normalizer", "normalizers", R"({"type": "NFC"})", 40)),
                  {"bad/tokenizer.json: normalizer", "Sequences nested more than 32 deep"});
  expect_contains(json_error(nested_sequences("pre_tokenizer", "pretokenizers", R"({"type": "Whitespace"})", 40)),
                  {"pre_tokenizer", "more than 32 deep"});
  expect_contains(json_error(nested_sequences("decoder", "decoders", R"({"type": "Fuse"})", 40)),
                  {"decoder", "more than 32 deep"});
  expect_contains(json_error(nested_sequences("post_processor", "processors", R"({"type": "ByteLevel"})", 40)),
                  {"post_processor", "more than 32 deep"});
  // Within the limits, nested Sequences still work.
  const Tokenizer t = Tokenizer::from_json(nested_sequences("normalizer", "normalizers", R"({"type": "Lowercase"})", 30), "ok");
  EXPECT_EQ(t.encode("AB", false), std::vector<int32_t>({2}));
}

TEST(TokenizerErrors, DeepNestingThroughTheCliExitsCleanly) {
  test::TempDir dir;
  std::ofstream(dir.path() / "tokenizer.json") << nested_sequences("normalizer", "normalizers", R"({"type": "NFC"})", 100000);
  std::string out;
  const int status = test::run_command(test::moep_binary() + " tokenize " + dir.str() + " hello", &out);
  EXPECT_EQ(status, 1) << out;
  expect_contains(out.substr(0, out.find_last_not_of('\n') + 1), {"moep: error:", "JSON nested more than 512 levels"});
}

TEST(TokenizerErrors, InconsistentOrUnsupportedContent) {
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  auto with = [&](const std::string& extra) { return "{" + extra + (extra.empty() ? "" : ", ") + model + "}"; };
  EXPECT_EQ(json_error(with("")), "(no error)");
  expect_contains(json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})"),
                  {"bad/tokenizer.json", "merges[0]", "\"b\"", "not in the vocabulary"});
  expect_contains(json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})"),
                  {"merged token \"ab\""});
  expect_contains(json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}})"), {"merges[0]"});
  expect_contains(json_error(R"({"model": {"type": "Unigram", "vocab": [], "merges": []}})"), {"model", "Unigram", "not supported"});
  expect_contains(json_error(R"({"model": {"type": "BPE", "vocab": [1], "merges": []}})"), {"model.vocab", "expected an object"});
  expect_contains(json_error(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})"), {"vocab[\"a\"]", "integer"});
  expect_contains(json_error(with(R"("pre_tokenizer": {"type": "FancySplit"})")), {"pre_tokenizer", "FancySplit", "not supported"});
  expect_contains(json_error(with(R"("normalizer": {"type": "Precompiled"})")), {"normalizer", "Precompiled", "not supported"});
  expect_contains(json_error(with(R"("decoder": {"type": "CTC"})")), {"decoder", "CTC", "not supported"});
  expect_contains(json_error(with(R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated", "invert": false})")),
                  {"pre_tokenizer", "regex", "does not compile"});
  expect_contains(json_error(with(R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways", "invert": false})")),
                  {"behavior", "Sideways"});
  expect_contains(json_error(with(R"("post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}})")),
                  {"post_processor", "<s>"});
  expect_contains(json_error(with(R"("added_tokens": [{"id": 5}])")), {"added_tokens[0]", "content"});
  expect_contains(json_error(with(R"("version": "2.0")")), {"version"});
}

// ------------------------------------------------------------------------------------------------------------
// Added tokens and components on small in-memory tokenizers (expected values follow `tokenizers`' rules;
// the same configurations were checked against `tokenizers` 0.23 with random strings).

TEST(Tokenizer, AddedTokenFlags) {
  // Byte-level alphabet for a few letters, no merges; added tokens with each flag.
  const std::string text = R"({
    "added_tokens": [
      {"id": 10, "content": "<x>", "special": true, "normalized": false, "lstrip": true, "rstrip": true},
      {"id": 11, "content": "ab", "special": false, "normalized": false, "single_word": true},
      {"id": 12, "content": "CD", "special": false, "normalized": true}
    ],
    "normalizer": {"type": "Lowercase"},
    "pre_tokenizer": {"type": "WhitespaceSplit"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "x": 4}, "merges": []}
  })";
  const Tokenizer tok = Tokenizer::from_json(text);
  // As in `tokenizers`, added tokens get the ids after the model's vocabulary in file order (5, 6, 7), whatever
  // "id" the file gives them.
  EXPECT_EQ(tok.token_to_id("<x>"), 5);
  EXPECT_EQ(tok.encode("a  <x>  b", false), (std::vector<int32_t>{0, 5, 1}));  // lstrip/rstrip take the spaces
  EXPECT_EQ(tok.encode("ab xab abx ab", false), (std::vector<int32_t>{6, 4, 0, 1, 0, 1, 4, 6}));  // single_word
  EXPECT_EQ(tok.encode("xCDx cd", false), (std::vector<int32_t>{4, 7, 4, 7}));  // matched after lowercasing
  EXPECT_EQ(tok.id_to_token(7), "cd");  // a normalized added token decodes as its normalized form
  EXPECT_TRUE(tok.is_special(5));
  EXPECT_FALSE(tok.is_special(6));
  EXPECT_EQ(tok.vocab_size(), 8);
  EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 5, 1}, false), "a <x> b");  // no decoder: tokens joined by spaces
  EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 5, 1}, true), "a b");
}

TEST(Tokenizer, SplitBehaviors) {
  auto split = [](const char* behavior, bool invert) {
    const std::string text = std::string(R"({"pre_tokenizer": {"type": "Split", "pattern": {"String": "-"}, "behavior": ")") +
                             behavior + R"(", "invert": )" + (invert ? "true" : "false") +
                             R"(}, "model": {"type": "BPE", "vocab": {"the": 0, "final": 1, "countdown": 2, "-": 3,
                             "the-": 4, "final-": 5, "-final": 6, "-countdown": 7, "--": 8, "t": 9}, "merges": [],
                             "ignore_merges": true, "unk_token": "t"}})";
    return Tokenizer::from_json(text).encode("the-final--countdown", false);
  };
  using V = std::vector<int32_t>;
  EXPECT_EQ(split("Removed", false), (V{0, 1, 2}));
  EXPECT_EQ(split("Isolated", false), (V{0, 3, 1, 3, 3, 2}));
  EXPECT_EQ(split("MergedWithPrevious", false), (V{4, 5, 3, 2}));
  EXPECT_EQ(split("MergedWithNext", false), (V{0, 6, 3, 7}));
  EXPECT_EQ(split("Contiguous", false), (V{0, 3, 1, 8, 2}));
  EXPECT_EQ(split("Removed", true), (V{3, 3, 3}));  // inverted: the words are the delimiters
  EXPECT_EQ(split("MergedWithPrevious", true), (V{0, 6, 3, 7}));
  EXPECT_EQ(split("MergedWithNext", true), (V{4, 5, 3, 2}));
}

// ------------------------------------------------------------------------------------------------------------
// `moep tokenize`.

TEST(TokenizerCli, EncodeDecodeAndErrors) {
  const std::string moep = test::moep_binary();
  const std::string gpt2 = tokenizers_dir() + "/gpt2";
  std::string out;
  ASSERT_EQ(test::run_command(moep + " tokenize " + gpt2 + " 'Hello world'", &out), 0) << out;
  EXPECT_EQ(out, "15496,995\n");
  ASSERT_EQ(test::run_command(moep + " tokenize " + gpt2 + " --decode 15496,995,50256", &out), 0) << out;
  EXPECT_EQ(out, "Hello world<|endoftext|>\n");
  ASSERT_EQ(test::run_command(moep + " tokenize " + gpt2 + " --decode 15496,995,50256 --no-special", &out), 0) << out;
  EXPECT_EQ(out, "Hello world\n");
  // A directory that holds only a tokenizer.json, with a post-processor that adds BOS.
  const std::string mixtral = tokenizers_dir() + "/mixtral";
  if (fs::exists(mixtral + "/tokenizer.json")) {
    ASSERT_EQ(test::run_command(moep + " tokenize " + mixtral + " 'Hello world'", &out), 0) << out;
    EXPECT_EQ(out, "1,15043,3186\n");
    ASSERT_EQ(test::run_command(moep + " tokenize " + mixtral + " 'Hello world' --no-special", &out), 0) << out;
    EXPECT_EQ(out, "15043,3186\n");
  }
  test::TempDir empty;
  EXPECT_NE(test::run_command(moep + " tokenize " + empty.str() + " hi", &out), 0);
  EXPECT_NE(out.find("tokenizer.json"), std::string::npos) << out;
  EXPECT_NE(test::run_command(moep + " tokenize " + gpt2 + " --decode 1,x", &out), 0);
  EXPECT_NE(out.find("--decode"), std::string::npos) << out;
  EXPECT_NE(test::run_command(moep + " tokenize " + gpt2, &out), 0);
}

TEST(TokenizerCli, DecodeRefusesIdsOutsideTheVocabulary) {
  const std::string moep = test::moep_binary();
  const std::string gpt2 = tokenizers_dir() + "/gpt2";
  std::string out;
  // GPT-2 has ids 0..50256: the last one decodes, the next one is refused (as `moep logits` refuses it).
  ASSERT_EQ(test::run_command(moep + " tokenize " + gpt2 + " --decode 50256", &out), 0) << out;
  EXPECT_EQ(out, "<|endoftext|>\n");
  EXPECT_EQ(test::run_command(moep + " tokenize " + gpt2 + " --decode 15496,50257", &out), 1) << out;
  EXPECT_NE(out.find("token id 50257 is not in the vocabulary"), std::string::npos) << out;
  EXPECT_NE(out.find("0..50256"), std::string::npos) << out;
  EXPECT_EQ(out.find("Hello"), std::string::npos) << "nothing is printed for a refused list: " << out;
  EXPECT_EQ(test::run_command(moep + " tokenize " + gpt2 + " --decode 4000000000", &out), 1) << out;
  EXPECT_NE(out.find("--decode"), std::string::npos) << out;
}

}  // namespace
}  // namespace moep
