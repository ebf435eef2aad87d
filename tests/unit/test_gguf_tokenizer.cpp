// Tokenizers and chat templates in GGUF metadata: every family's tokenizer written by add_tokenizer_metadata and
// read back by Tokenizer::load gives the ids, text, special tokens and chat prompt of its tokenizer.json; the
// real vocabularies reproduce llama.cpp's test vectors from GGUF; llama.cpp's score-ordered SentencePiece merging;
// and the errors for a GGUF that moep cannot read.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "test_util.h"
#include "text/chat_template.h"
#include "text/gguf_tokenizer.h"
#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

namespace moep {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using nlohmann::ordered_json;

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_file(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += " " + std::to_string(id);
  return s;
}

// A model directory as a checkpoint ships it: tokenizer.json of tests/data/tokenizers/<tokenizer>, a
// tokenizer_config.json with the family's special tokens and chat template, and a config.json.
struct Family {
  std::string name, tokenizer, chat_template, model_type;
  json tokenizer_config;
  json config;
};

void PrintTo(const Family& f, std::ostream* os) { *os << f.name; }

std::vector<Family> families() {
  return {
      {"mixtral", "mixtral", "mixtral_8x7b_instruct_v0.1.jinja", "mixtral",
       {{"add_bos_token", true}, {"add_eos_token", false}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
        {"unk_token", "<unk>"}, {"pad_token", nullptr}},
       {{"vocab_size", 32000}, {"bos_token_id", 1}, {"eos_token_id", 2}}},
      // vocab_size above the tokenizer's, as Qwen's checkpoints have it: the GGUF pads with unused tokens.
      {"qwen2_moe", "qwen2", "qwen2_chatml.jinja", "qwen2_moe",
       {{"bos_token", nullptr}, {"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}},
       {{"vocab_size", 50304}, {"eos_token_id", 50258}}},
      {"qwen3_moe", "qwen2", "qwen3.jinja", "qwen3_moe",
       {{"bos_token", nullptr}, {"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}},
       {{"vocab_size", 50259}}},
      {"olmoe", "olmoe", "olmo2_tulu.jinja", "olmoe",
       {{"add_bos_token", false}, {"add_eos_token", false}, {"bos_token", nullptr}, {"eos_token", "<|endoftext|>"},
        {"pad_token", "<|padding|>"}},
       {{"vocab_size", 50304}, {"eos_token_id", 50256}, {"pad_token_id", 50258}}},
      {"dbrx", "dbrx", "dbrx_instruct.jinja", "dbrx",
       {{"bos_token", "<|endoftext|>"}, {"eos_token", "<|endoftext|>"}, {"pad_token", "<|pad|>"}},
       {{"vocab_size", 50368}}},
  };
}

// Writes the family's model directory and a GGUF with its tokenizer metadata and one dummy tensor.
struct FamilyFiles {
  test::TempDir dir;
  std::string gguf;
};

std::unique_ptr<FamilyFiles> make_family_files(const Family& f) {
  auto files = std::make_unique<FamilyFiles>();
  const fs::path d = files->dir.path();
  fs::copy_file(test::testdata_path("tokenizers/" + f.tokenizer + "/tokenizer.json"), d / "tokenizer.json");
  json tc = f.tokenizer_config;
  tc["chat_template"] = read_file(test::testdata_path("chat_templates/" + f.chat_template));
  write_file(d / "tokenizer_config.json", tc.dump(2));
  json cfg = f.config;
  cfg["model_type"] = f.model_type;
  write_file(d / "config.json", cfg.dump(2));
  GgufWriter w;
  w.set_string("general.architecture", f.model_type);
  add_tokenizer_metadata(d.string(), w);
  w.add_tensor("dummy", GgmlType::F32, {4}, std::vector<uint8_t>(16, 0));
  files->gguf = (d / "model.gguf").string();
  w.write(files->gguf);
  return files;
}

// Texts no normalizer changes (llama.cpp applies none; Qwen's and OLMoE's tokenizer.json apply NFC).
std::vector<std::string> test_texts(const std::string& tokenizer) {
  std::vector<std::string> texts = {
      "Hello world",
      "The quick brown fox jumps over the lazy dog.",
      "I'M sure you'll see it's DON'T, we've, they'd",
      "café naïve résumé Ærøskøbing Straße",
      "中文测试：你好，世界！日本語のテキスト",
      "emoji 😀🎉 👍🏽 family 👨‍👩‍👧",
      "   leading and   inner\t\ttabs  and trailing   ",
      "line one\nline two\r\n\n\nthree",
      "digits 1234567890 3.14159 1,000,000 and 42nd",
      "code: for (int i = 0; i < n; ++i) { x[i] += y; }",
      " ",
      "\n",
      "",
      "a",
      "<s> and </s> and <unk> inline",
      "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
      "<|endoftext|>after<|endoftext|>",
      "Ünïcödé — “quotes” ‘single’ …",
  };
  // And every text of the family's Hugging Face vectors that normalization leaves alone.
  const json vectors = json::parse(read_file(test::testdata_path("tokenizers/" + tokenizer + "/vectors.json")));
  for (const json& v : vectors) {
    const std::string t = v["text"].get<std::string>();
    if (tok::unicode_normalize(t, tok::NormalForm::NFC) == t) texts.push_back(t);
  }
  return texts;
}

class GgufTokenizerFamily : public ::testing::TestWithParam<Family> {};

TEST_P(GgufTokenizerFamily, MatchesTokenizerJson) {
  const Family& f = GetParam();
  const auto files = make_family_files(f);
  const Tokenizer ref = Tokenizer::load(files->dir.str());
  const Tokenizer tok = Tokenizer::load(files->gguf);

  const std::vector<std::string> texts = test_texts(f.tokenizer);
  ASSERT_GT(texts.size(), 40u);
  for (const std::string& text : texts) {
    for (bool add_special : {false, true}) {
      const std::vector<int32_t> ids = tok.encode(text, add_special);
      const std::vector<int32_t> expected = ref.encode(text, add_special);
      EXPECT_EQ(join_ids(ids), join_ids(expected)) << json(text).dump() << " add_special " << add_special;
      EXPECT_EQ(tok.decode(ids, false), ref.decode(expected, false)) << json(text).dump();
      EXPECT_EQ(tok.decode(ids, true), ref.decode(expected, true)) << json(text).dump();
    }
    // The text comes back, except where SentencePiece's ▁ after a special token adds a space (as it does from
    // tokenizer.json: the decodes above are equal).
    const std::vector<int32_t> ids = tok.encode(text, false);
    if (std::none_of(ids.begin(), ids.end(), [&](int32_t id) { return tok.is_special(id); })) {
      EXPECT_EQ(tok.decode(ids, false), text) << json(text).dump();
    }
    // Streamed one id at a time, the pieces add up to decode's text.
    StreamDecoder stream(tok, false);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.step(id);
    streamed += stream.finish();
    EXPECT_EQ(streamed, tok.decode(ids, false)) << json(text).dump();
  }

  // Special tokens: the ids tokenizer_config.json names, add-BOS as the tokenizer.json post-processor has it.
  const Tokenizer::SpecialIds ids = tok.special_ids();
  auto id_of = [&](const char* key) {
    const json& v = f.tokenizer_config[key];
    return v.is_string() ? ref.token_to_id(v.get<std::string>()) : -1;
  };
  EXPECT_EQ(ids.eos, id_of("eos_token"));
  EXPECT_EQ(ids.pad, id_of("pad_token"));
  const bool ref_adds_bos = ref.encode("x", true).size() > ref.encode("x", false).size();
  EXPECT_EQ(tok.encode("x", true).size() > tok.encode("x", false).size(), ref_adds_bos);
  if (ref_adds_bos) {
    EXPECT_EQ(ids.bos, ref.encode("x", true).front());
  } else if (f.tokenizer_config["bos_token"].is_string()) {
    EXPECT_EQ(ids.bos, id_of("bos_token"));
  }
  for (int32_t id = 0; id < ref.vocab_size(); ++id) {
    ASSERT_EQ(tok.id_to_token(id), ref.id_to_token(id)) << id;
    ASSERT_EQ(tok.is_special(id), ref.is_special(id)) << id << " " << ref.id_to_token(id);
  }
  // Ids the config's vocab_size adds beyond the tokenizer's are unused "[PADn]" tokens.
  EXPECT_EQ(tok.vocab_size(), f.config["vocab_size"].get<int32_t>());

  // The chat template renders the same prompt from the GGUF as from the directory.
  const ChatTemplate from_dir = ChatTemplate::load(files->dir.str());
  const ChatTemplate from_gguf = ChatTemplate::load(files->gguf);
  const ordered_json messages = {{{"role", "user"}, {"content", "What is 2+2?"}},
                                 {{"role", "assistant"}, {"content", "4"}},
                                 {{"role", "user"}, {"content", "And 3+3? café 中文 😀"}}};
  for (bool gen : {false, true}) EXPECT_EQ(render_chat(from_gguf, messages, gen), render_chat(from_dir, messages, gen));
}

INSTANTIATE_TEST_SUITE_P(Families, GgufTokenizerFamily, ::testing::ValuesIn(families()),
                         [](const auto& info) { return info.param.name; });

TEST(GgufTokenizer, WritesWhatConvertWrites) {
  const auto files = make_family_files(families()[1]);  // qwen2_moe
  const GgufFile g = GgufFile::open(files->gguf);
  EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(g.get_string("tokenizer.ggml.pre"), "qwen2");
  const std::vector<std::string> tokens = g.get_string_array("tokenizer.ggml.tokens");
  const std::vector<int64_t> types = g.get_int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 50304u);
  ASSERT_EQ(types.size(), tokens.size());
  EXPECT_EQ(tokens[50258], "<|im_end|>");
  EXPECT_EQ(types[50258], 3);  // control
  EXPECT_EQ(types[100], 1);    // normal
  EXPECT_EQ(tokens[50300], "[PAD50300]");
  EXPECT_EQ(types[50300], 5);  // unused
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.merges").size(), 50000u);
  EXPECT_EQ(g.get_u32("tokenizer.ggml.eos_token_id"), 50258u);   // tokenizer_config.json's eos_token
  EXPECT_EQ(g.get_u32("tokenizer.ggml.padding_token_id"), 50256u);
  EXPECT_FALSE(g.has("tokenizer.ggml.bos_token_id"));
  EXPECT_EQ(g.get_string("tokenizer.chat_template"), read_file(test::testdata_path("chat_templates/qwen2_chatml.jinja")));

  const auto mixtral = make_family_files(families()[0]);
  const GgufFile m = GgufFile::open(mixtral->gguf);
  EXPECT_EQ(m.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(m.get_string("tokenizer.ggml.pre"), "default");
  EXPECT_EQ(m.get_f32_array("tokenizer.ggml.scores").size(), 32000u);
  const std::vector<int64_t> mtypes = m.get_int_array("tokenizer.ggml.token_type");
  EXPECT_EQ(mtypes[1], 3);     // <s>: control
  EXPECT_EQ(mtypes[3], 6);     // <0x00>: byte
  EXPECT_EQ(mtypes[1000], 1);  // normal
  EXPECT_TRUE(m.get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_FALSE(m.get_bool("tokenizer.ggml.add_eos_token"));
  EXPECT_FALSE(m.has("tokenizer.ggml.add_space_prefix"));  // llama.cpp's default, true
  EXPECT_EQ(m.get_u32("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(m.get_u32("tokenizer.ggml.unknown_token_id"), 0u);
}

// A split model keeps the tokenizer in its first part's metadata; any part loads it.
TEST(GgufTokenizer, LoadsFromAnyPartOfASplitModel) {
  const Family qwen = families()[2];
  const auto files = make_family_files(qwen);
  const std::string prefix = files->dir.str() + "/split";
  for (int k = 1; k <= 2; ++k) {
    GgufWriter w;
    w.set_u16("split.no", uint16_t(k - 1));
    w.set_u16("split.count", 2);
    w.set_i32("split.tensors.count", 2);
    if (k == 1) add_tokenizer_metadata(files->dir.str(), w);
    w.add_tensor("t" + std::to_string(k), GgmlType::F32, {4}, std::vector<uint8_t>(16, 0));
    w.write(gguf_split_path(prefix, k, 2));
  }
  const Tokenizer ref = Tokenizer::load(files->dir.str());
  const Tokenizer tok = Tokenizer::load(gguf_split_path(prefix, 2, 2));
  const std::string text = "<|im_start|>user\nSplit 12345 café 中文<|im_end|>";
  EXPECT_EQ(tok.encode(text, true), ref.encode(text, true));
  const ordered_json messages = {{{"role", "user"}, {"content", "Hi"}}};
  EXPECT_EQ(render_chat(ChatTemplate::load(gguf_split_path(prefix, 2, 2)), messages, true),
            render_chat(ChatTemplate::load(files->dir.str()), messages, true));
}

// A list of named templates in tokenizer_config.json becomes tokenizer.chat_template (default) and
// tokenizer.chat_template.tool_use; the GGUF chooses between them as the directory does.
TEST(GgufTokenizer, NamedChatTemplates) {
  test::TempDir dir;
  fs::copy_file(test::testdata_path("tokenizers/mixtral/tokenizer.json"), dir.path() / "tokenizer.json");
  fs::copy_file(test::testdata_path("chat_templates/mixtral_8x22b_instruct_v0.1_2024-04/tokenizer_config.json"),
                dir.path() / "tokenizer_config.json");
  GgufWriter w;
  add_tokenizer_metadata(dir.str(), w);
  const std::string path = (dir.path() / "t.gguf").string();
  w.write(path);
  const GgufFile g = GgufFile::open(path);
  EXPECT_EQ(g.get_string_array("tokenizer.chat_templates"), std::vector<std::string>{"tool_use"});
  EXPECT_TRUE(g.has("tokenizer.chat_template.tool_use"));

  const ChatTemplate from_dir = ChatTemplate::load(dir.str());
  const ChatTemplate from_gguf = ChatTemplate::load(path);
  ASSERT_EQ(from_gguf.templates.size(), 2u);
  const ordered_json messages = {{{"role", "user"}, {"content", "Weather in Paris?"}}};
  const ordered_json tools = {{"tools", ordered_json::array({{{"type", "function"},
                                                              {"function", {{"name", "get_weather"},
                                                                            {"description", "Weather"},
                                                                            {"parameters", ordered_json::object()}}}}})}};
  EXPECT_EQ(render_chat(from_gguf, messages, true), render_chat(from_dir, messages, true));
  EXPECT_EQ(render_chat(from_gguf, messages, true, tools), render_chat(from_dir, messages, true, tools));
  EXPECT_NE(render_chat(from_gguf, messages, true, tools), render_chat(from_gguf, messages, true));
}

// llama.cpp's test vectors of the two real vocabularies (their ids are what llama.cpp gives on its
// ggml-vocab-*.gguf), from a GGUF written out of the tokenizer.json.
TEST(GgufTokenizer, LlamaCppVectorsFromGguf) {
  for (const std::string family : {"gpt2", "llama-spm"}) {
    test::TempDir dir;
    const fs::path src = fs::path("/work/shared/tokenizers") / family;
    const fs::path from = fs::exists(src) ? src : fs::path(test::testdata_path("tokenizers/" + family));
    fs::copy_file(from / "tokenizer.json", dir.path() / "tokenizer.json");
    GgufWriter w;
    add_tokenizer_metadata(dir.str(), w);
    const std::string path = (dir.path() / "t.gguf").string();
    w.write(path);
    const Tokenizer tok = Tokenizer::load(path);
    std::string inp, out;
    for (const auto& e : fs::directory_iterator(from)) {
      if (e.path().extension() == ".inp") inp = read_file(e.path());
      if (e.path().extension() == ".out") out = read_file(e.path());
    }
    std::vector<std::string> texts, expected;
    const std::string sep = "\n__ggml_vocab_test__\n";
    for (size_t p = 0, q; (q = inp.find(sep, p)) != std::string::npos; p = q + sep.size()) texts.push_back(inp.substr(p, q - p));
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) expected.push_back(line);
    ASSERT_EQ(texts.size(), 46u) << family;
    ASSERT_EQ(expected.size(), texts.size()) << family;
    for (size_t i = 0; i < texts.size(); ++i) {
      const std::vector<int32_t> ids = tok.encode(texts[i], false);
      EXPECT_EQ(join_ids(ids), expected[i]) << family << " text #" << i << ": " << json(texts[i]).dump();
      EXPECT_EQ(tok.decode(ids, false), texts[i]) << family << " text #" << i;
    }
  }
}

// A small SentencePiece GGUF written by hand: the pair whose joined token has the highest score is merged first
// (leftmost on a tie), characters with no token become "<0xXX>" byte tokens, ▁ goes in front of the text and
// after a control token, and add_space_prefix=false leaves it out.
struct SpmVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  void add(const std::string& t, float score, int32_t type = 1) {
    tokens.push_back(t);
    scores.push_back(score);
    types.push_back(type);
  }
};

std::string write_spm(const test::TempDir& dir, const SpmVocab& v, bool space_prefix, const std::string& name) {
  GgufWriter w;
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", v.tokens);
  w.set_array("tokenizer.ggml.scores", GgufType::F32, v.scores.data(), v.scores.size());
  w.set_array("tokenizer.ggml.token_type", GgufType::I32, v.types.data(), v.types.size());
  if (!space_prefix) w.set_bool("tokenizer.ggml.add_space_prefix", false);
  const std::string path = (dir.path() / name).string();
  w.write(path);
  return path;
}

TEST(GgufTokenizer, SentencePieceMergesByScore) {
  test::TempDir dir;
  SpmVocab v;
  v.add("<unk>", 0, 2);  // 0
  v.add("<s>", 0, 3);    // 1
  v.add("</s>", 0, 3);   // 2
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v.add(name, 0, 6);  // 3 .. 258
  }
  v.add("\xE2\x96\x81", -5);      // 259 ▁
  v.add("a", -5);                 // 260
  v.add("b", -5);                 // 261
  v.add("c", -5);                 // 262
  v.add("\xE2\x96\x81" "a", -3);  // 263 ▁a
  v.add("bc", -1);                // 264 bc: scores higher than ab, so abc splits a|bc
  v.add("ab", -2);                // 265
  v.add("cc", -1);                // 266: ties with bc; the leftmost pair wins
  const Tokenizer tok = Tokenizer::load(write_spm(dir, v, true, "spm.gguf"));
  EXPECT_EQ(tok.encode("abc", false), (std::vector<int32_t>{263, 264}));  // bc (-1) first, then ▁a (-3)
  EXPECT_EQ(tok.encode("bcc", false), (std::vector<int32_t>{259, 264, 262}));  // bc and cc tie: bc is leftmost
  EXPECT_EQ(tok.encode("ab", true), (std::vector<int32_t>{1, 259, 265}));  // BOS by default; ab (-2) beats ▁a (-3)
  EXPECT_EQ(tok.encode("é", false), (std::vector<int32_t>{259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok.encode("a</s>a", false), (std::vector<int32_t>{263, 2, 263}));
  EXPECT_EQ(tok.decode(tok.encode("a b é", false), false), "a b é");
  EXPECT_EQ(tok.special_ids().bos, 1);
  EXPECT_EQ(tok.special_ids().eos, 2);
  EXPECT_EQ(tok.special_ids().unk, 0);
  const Tokenizer bare = Tokenizer::load(write_spm(dir, v, false, "bare.gguf"));
  EXPECT_EQ(bare.encode("abc", false), (std::vector<int32_t>{260, 264}));
  EXPECT_EQ(bare.decode(bare.encode(" a", false), false), " a");
}

// ---------------------------------------------------------------------------------------------------------
// Errors: each names the key, the value found and what moep reads.

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

struct BpeGguf {
  std::vector<std::string> tokens = {"a", "b", "ab", "<|end|>"};
  std::vector<int32_t> types = {1, 1, 1, 3};
  std::vector<std::string> merges = {"a b"};
  std::string model = "gpt2", pre = "qwen2";
  std::vector<float> scores;
  int64_t eos = -1;
  std::string write(const test::TempDir& dir) const {
    GgufWriter w;
    w.set_string("tokenizer.ggml.model", model);
    w.set_string("tokenizer.ggml.pre", pre);
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_array("tokenizer.ggml.token_type", GgufType::I32, types.data(), types.size());
    if (!scores.empty()) w.set_array("tokenizer.ggml.scores", GgufType::F32, scores.data(), scores.size());
    w.set_string_array("tokenizer.ggml.merges", merges);
    if (eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(eos));
    const std::string path = (dir.path() / "bad.gguf").string();
    w.write(path);
    return path;
  }
};

TEST(GgufTokenizerErrors, NamesKeyValueAndWhatIsSupported) {
  test::TempDir dir;
  auto load_error = [&](const BpeGguf& g) {
    const std::string path = g.write(dir);
    return error_of([&] { Tokenizer::load(path); });
  };
  {
    const BpeGguf ok;
    const Tokenizer t = Tokenizer::load(ok.write(dir));
    EXPECT_EQ(t.encode("ab<|end|>a", false), (std::vector<int32_t>{2, 3, 0}));
  }
  BpeGguf g;
  g.model = "bert";
  std::string e = load_error(g);
  EXPECT_NE(e.find("tokenizer.ggml.model"), std::string::npos) << e;
  EXPECT_NE(e.find("\"bert\""), std::string::npos) << e;
  EXPECT_NE(e.find("\"gpt2\""), std::string::npos) << e;

  g = BpeGguf();
  g.pre = "tekken";
  e = load_error(g);
  EXPECT_NE(e.find("tokenizer.ggml.pre"), std::string::npos) << e;
  EXPECT_NE(e.find("\"tekken\""), std::string::npos) << e;
  EXPECT_NE(e.find("qwen2"), std::string::npos) << e;
  EXPECT_NE(e.find("dbrx"), std::string::npos) << e;

  g = BpeGguf();
  g.types = {1, 1, 1};
  e = load_error(g);
  EXPECT_NE(e.find("tokenizer.ggml.token_type has 3 values"), std::string::npos) << e;
  EXPECT_NE(e.find("has 4 tokens"), std::string::npos) << e;

  g = BpeGguf();
  g.scores = {0, 0, 0, 0, 0};
  e = load_error(g);
  EXPECT_NE(e.find("tokenizer.ggml.scores has 5 values"), std::string::npos) << e;

  g = BpeGguf();
  g.types = {1, 1, 9, 3};
  e = load_error(g);
  EXPECT_NE(e.find("tokenizer.ggml.token_type[2] = 9"), std::string::npos) << e;

  g = BpeGguf();
  g.merges = {"a b", "ab c"};
  e = load_error(g);
  EXPECT_NE(e.find("tokenizer.ggml.merges[1]"), std::string::npos) << e;
  EXPECT_NE(e.find("\"c\" is not in the vocabulary"), std::string::npos) << e;

  g = BpeGguf();
  g.merges = {"b a"};  // "ba" is no token
  e = load_error(g);
  EXPECT_NE(e.find("merged token \"ba\""), std::string::npos) << e;

  g = BpeGguf();
  g.tokens = {"a", "b", "ab", "a"};
  e = load_error(g);
  EXPECT_NE(e.find("appears twice"), std::string::npos) << e;

  g = BpeGguf();
  g.eos = 4;
  e = load_error(g);
  EXPECT_NE(e.find("tokenizer.ggml.eos_token_id = 4"), std::string::npos) << e;

  // A SentencePiece GGUF whose scores do not match its tokens, and one without a tokenizer at all.
  SpmVocab v;
  v.add("a", 0);
  v.add("b", 0);
  v.scores.push_back(0);
  const std::string spm = write_spm(dir, v, true, "spm.gguf");
  e = error_of([&] { Tokenizer::load(spm); });
  EXPECT_NE(e.find("tokenizer.ggml.scores has 3 values but tokenizer.ggml.tokens has 2"), std::string::npos) << e;

  GgufWriter w;
  w.set_string("general.architecture", "mixtral");
  const std::string none = (dir.path() / "none.gguf").string();
  w.write(none);
  e = error_of([&] { Tokenizer::load(none); });
  EXPECT_NE(e.find("tokenizer.ggml.model"), std::string::npos) << e;
  e = error_of([&] { ChatTemplate::load(none); });
  EXPECT_NE(e.find("tokenizer.chat_template"), std::string::npos) << e;
}

TEST(GgufTokenizerErrors, WriterRefusesWhatLlamaCppCannotName) {
  test::TempDir dir;
  // deepseek-v3's three splits are a pre-tokenizer the writer does not name.
  fs::copy_file(test::testdata_path("tokenizers/deepseek-v3/tokenizer.json"), dir.path() / "tokenizer.json");
  GgufWriter w;
  std::string e = error_of([&] { add_tokenizer_metadata(dir.str(), w); });
  EXPECT_NE(e.find("pre_tokenizer"), std::string::npos) << e;
  EXPECT_NE(e.find("Qwen2"), std::string::npos) << e;
  e = error_of([&] { add_tokenizer_metadata((dir.path() / "missing").string(), w); });
  EXPECT_NE(e.find("tokenizer.json: not found"), std::string::npos) << e;
}

}  // namespace
}  // namespace moep
