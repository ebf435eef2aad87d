// Tokenizers from and into GGUF metadata (see gguf_tokenizer.h): llama.cpp's SentencePiece merging, its
// pre-tokenizer regexes, the tokenizer built from a GGUF file, and the metadata written from a model directory.
#include "text/gguf_tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "text/tokenizer_internal.h"

namespace moep {

namespace {

using json = nlohmann::json;

// llama.cpp's token types (tokenizer.ggml.token_type, enum llama_token_type).
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

const char* const kSpace = "\xE2\x96\x81";  // ▁ (U+2581), SentencePiece's space

// The pre-tokenizer regexes of llama.cpp's llama-vocab.cpp, by the tokenizer.ggml.pre names that select them.
// Each regex splits every piece the one before left (matches and the text between them both kept).
struct PreTokenizerSpec {
  std::vector<std::string> names;
  std::vector<std::string> regexes;
  bool ignore_merges = false;  // a word that is a token is not merged (llama.cpp's LLAMA3 pre-tokenizers)
  bool add_bos = false;        // llama.cpp's default for tokenizer.ggml.add_bos_token
};

const std::string kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
// llama.cpp writes tokenizers' (?i:'s|…) contractions as explicit case pairs.
const std::string kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const std::vector<PreTokenizerSpec>& pre_tokenizer_specs() {
  static const std::vector<PreTokenizerSpec> specs = {
      {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Regex, R"(\p{N}+)", R"([0-9][0-9][0-9])"}},
      {{"gpt-2", "olmo", "mpt", "phi-2"}, {kGpt2Regex}},
      {{"llama3", "llama-v3", "llama-bpe"}, {kLlama3Regex}, true, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Regex}},
      {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"}, {kQwen2Regex}},
      {{"deepseek-v3"},
       {R"(\p{N}{1,3})", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
        R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}},
  };
  return specs;
}

std::string supported_pre_list() {
  std::string out;
  for (const std::string& n : gguf_pre_tokenizers()) out += (out.empty() ? "" : ", ") + n;
  return out;
}

bool bool_or(const GgufFile& f, const std::string& key, bool fallback) { return f.has(key) ? f.get_bool(key) : fallback; }

// ---------------------------------------------------------------------------------------------------------
// llama.cpp's SentencePiece tokenization (llm_tokenizer_spm): start from single characters; repeatedly join the
// adjacent pair whose joined text is the token of highest score (the leftmost on a tie); emit each symbol's
// token, or its bytes as "<0xXX>" tokens when it is a character with no token.
class SpmModel final : public tok::Model {
 public:
  SpmModel(std::vector<std::string> tokens, std::vector<float> scores, const std::string& where)
      : where_(where), tokens_(std::move(tokens)), scores_(std::move(scores)) {
    vocab_.reserve(tokens_.size());
    for (size_t id = 0; id < tokens_.size(); ++id) {
      auto [it, added] = vocab_.emplace(tokens_[id], int32_t(id));
      if (!added)
        fail(where, ": token \"", tokens_[id], "\" appears twice in tokenizer.ggml.tokens (ids ", it->second, " and ",
             id, "); expected each token once");
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      int32_t id = token_to_id(name);
      if (id < 0) id = token_to_id(std::string(1, char(b)));  // llama.cpp's fallback: the byte itself
      byte_ids_[size_t(b)] = id;
    }
  }

  void tokenize(std::string_view text, std::vector<int32_t>& out) const override {
    struct Symbol {
      int32_t prev, next;
      size_t start, len;  // len 0 once merged into its left neighbour
    };
    std::vector<Symbol> symbols;
    symbols.reserve(text.size());
    for (size_t off = 0; off < text.size();) {
      const size_t len = std::min(tok::utf8_len(static_cast<unsigned char>(text[off])), text.size() - off);
      const int32_t index = int32_t(symbols.size());
      symbols.push_back(Symbol{index - 1, off + len == text.size() ? -1 : index + 1, off, len});
      off += len;
    }
    struct Bigram {
      float score;
      int32_t left, right;
      size_t len;
    };
    auto lower = [](const Bigram& a, const Bigram& b) { return a.score < b.score || (a.score == b.score && a.left > b.left); };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(lower);
    auto try_add = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0) return;
      const std::string_view joined = text.substr(symbols[size_t(left)].start, symbols[size_t(left)].len + symbols[size_t(right)].len);
      const int32_t id = token_to_id(joined);
      if (id < 0) return;
      queue.push(Bigram{scores_[size_t(id)], left, right, joined.size()});
    };
    for (size_t i = 1; i < symbols.size(); ++i) try_add(int32_t(i - 1), int32_t(i));
    while (!queue.empty()) {
      const Bigram top = queue.top();
      queue.pop();
      Symbol& left = symbols[size_t(top.left)];
      Symbol& right = symbols[size_t(top.right)];
      if (left.len == 0 || right.len == 0 || left.len + right.len != top.len) continue;  // stale
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[size_t(right.next)].prev = top.left;
      try_add(left.prev, top.left);
      try_add(top.left, left.next);
    }
    // Every joined symbol is a token; a single character may not be, and becomes its bytes.
    for (int32_t i = symbols.empty() ? -1 : 0; i != -1; i = symbols[size_t(i)].next) {
      const Symbol& s = symbols[size_t(i)];
      const std::string_view piece = text.substr(s.start, s.len);
      if (const int32_t id = token_to_id(piece); id >= 0) {
        out.push_back(id);
        continue;
      }
      for (char ch : piece) {
        const int32_t id = byte_ids_[static_cast<unsigned char>(ch)];
        if (id < 0)
          fail(where_, ": no token for byte 0x", "0123456789ABCDEF"[static_cast<unsigned char>(ch) >> 4],
               "0123456789ABCDEF"[ch & 15], " (expected a \"<0xXX>\" byte token in tokenizer.ggml.tokens)");
        out.push_back(id);
      }
    }
  }

  int32_t token_to_id(std::string_view token) const override {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
  }
  const std::string* id_to_token(int32_t id) const override {
    return id >= 0 && size_t(id) < tokens_.size() ? &tokens_[size_t(id)] : nullptr;
  }
  size_t vocab_len() const override { return tokens_.size(); }
  int32_t max_id() const override { return int32_t(tokens_.size()) - 1; }

 private:
  std::string where_;
  std::vector<std::string> tokens_;  // id → token
  std::vector<float> scores_;        // id → score
  tok::Vocab vocab_;
  std::array<int32_t, 256> byte_ids_{};
};

// Adds BOS in front and EOS behind when asked for special tokens (llama.cpp's add_bos / add_eos).
class BosEosPostProcessor final : public tok::PostProcessor {
 public:
  BosEosPostProcessor(int32_t bos, int32_t eos) : bos_(bos), eos_(eos) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    if (bos_ >= 0) ids.insert(ids.begin(), bos_);
    if (eos_ >= 0) ids.push_back(eos_);
  }

 private:
  int32_t bos_, eos_;
};

}  // namespace

std::vector<std::string> gguf_pre_tokenizers() {
  std::vector<std::string> names;
  for (const PreTokenizerSpec& s : pre_tokenizer_specs()) names.insert(names.end(), s.names.begin(), s.names.end());
  return names;
}

GgufSpecialTokens gguf_special_tokens(const GgufFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  const GgufValue* token_list = f.find("tokenizer.ggml.tokens");
  if (!token_list || token_list->type != GgufType::Array || token_list->elem_type != GgufType::String)
    f.get_string_array("tokenizer.ggml.tokens");  // throws, naming the key and what it holds
  const uint64_t n_tokens = token_list->count;
  GgufSpecialTokens s;
  if (model == "llama") {
    s = GgufSpecialTokens{1, 2, 0, -1, true, false};
  } else if (model == "gpt2") {
    const std::string pre = f.get_string_or("tokenizer.ggml.pre", "default");
    for (const PreTokenizerSpec& spec : pre_tokenizer_specs())
      if (std::find(spec.names.begin(), spec.names.end(), pre) != spec.names.end()) s.add_bos = spec.add_bos;
  }
  auto read_id = [&](const char* key, int32_t& id) {
    if (id >= 0 && uint64_t(id) >= n_tokens) id = -1;  // a default beyond a small vocabulary (llama.cpp drops it)
    if (!f.has(key)) return;
    const uint32_t v = f.get_u32(key);
    if (v >= n_tokens)
      fail(f.files().front()->path(), ": ", key, " = ", v, " is not a token (tokenizer.ggml.tokens has ", n_tokens,
           "); expected an id below ", n_tokens);
    id = int32_t(v);
  };
  read_id("tokenizer.ggml.bos_token_id", s.bos);
  read_id("tokenizer.ggml.eos_token_id", s.eos);
  read_id("tokenizer.ggml.unknown_token_id", s.unk);
  read_id("tokenizer.ggml.padding_token_id", s.pad);
  s.add_bos = bool_or(f, "tokenizer.ggml.add_bos_token", s.add_bos);
  s.add_eos = bool_or(f, "tokenizer.ggml.add_eos_token", s.add_eos);
  if (s.add_bos && s.bos < 0)
    fail(f.files().front()->path(), ": tokenizer.ggml.add_bos_token is true but there is no tokenizer.ggml.bos_token_id");
  if (s.add_eos && s.eos < 0)
    fail(f.files().front()->path(), ": tokenizer.ggml.add_eos_token is true but there is no tokenizer.ggml.eos_token_id");
  return s;
}

namespace tok {

std::shared_ptr<TokenizerImpl> build_from_gguf(const GgufFile& f) {
  const std::string source = f.files().front()->path();
  auto impl = std::make_shared<TokenizerImpl>();
  impl->source = source;

  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "llama" && model != "gpt2")
    fail(source, ": tokenizer.ggml.model = \"", model,
         "\" is not supported (expected \"llama\" (SentencePiece) or \"gpt2\" (byte-level BPE))");
  std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  if (n == 0) fail(source, ": tokenizer.ggml.tokens is empty");
  for (size_t id = 0; id < n; ++id)
    if (tokens[id].empty()) tokens[id] = str_cat("[EMPTY_", id, "]");  // as llama.cpp names an empty token
  // One type and one score per token: a count that differs means the arrays do not describe the same tokens.
  auto check_count = [&](const char* key, size_t count) {
    if (count != n)
      fail(source, ": ", key, " has ", count, " values but tokenizer.ggml.tokens has ", n, " tokens; expected one per token");
  };
  std::vector<int64_t> types(n, kNormal);
  if (f.has("tokenizer.ggml.token_type")) {
    types = f.get_int_array("tokenizer.ggml.token_type");
    check_count("tokenizer.ggml.token_type", types.size());
    for (size_t id = 0; id < n; ++id)
      if (types[id] < kNormal || types[id] > kByte)
        fail(source, ": tokenizer.ggml.token_type[", id, "] = ", types[id],
             " is not a token type (expected 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused or 6 byte)");
  }
  const GgufSpecialTokens special = gguf_special_tokens(f);

  if (model == "llama") {
    std::vector<float> scores(n, 0.0f);  // llama.cpp reads a missing array as all zeros
    if (const GgufValue* v = f.find("tokenizer.ggml.scores")) {
      if (v->type == GgufType::Array && v->elem_type != GgufType::F32 && v->elem_type != GgufType::F64) {
        const std::vector<int64_t> ints = f.get_int_array("tokenizer.ggml.scores");
        scores.assign(ints.begin(), ints.end());
      } else {
        scores = f.get_f32_array("tokenizer.ggml.scores");
      }
      check_count("tokenizer.ggml.scores", scores.size());
    }
    const bool space_prefix = bool_or(f, "tokenizer.ggml.add_space_prefix", true);
    json normalizers = json::array();
    if (space_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", kSpace}});
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}});
    json decoders = json::array({json{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                                 json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}}});
    if (space_prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    impl->model = std::make_unique<SpmModel>(tokens, std::move(scores), source);
    impl->normalizer = make_normalizer({{"type", "Sequence"}, {"normalizers", normalizers}}, source + ": normalizer");
    impl->decoder = make_decoder({{"type", "Sequence"}, {"decoders", decoders}}, source + ": decoder");
    impl->byte_fallback_decoder = true;
  } else {
    if (f.has("tokenizer.ggml.scores"))
      check_count("tokenizer.ggml.scores", f.find("tokenizer.ggml.scores")->count);
    const std::string pre = f.get_string_or("tokenizer.ggml.pre", "default");  // llama.cpp's default when absent
    const PreTokenizerSpec* spec = nullptr;
    for (const PreTokenizerSpec& s : pre_tokenizer_specs())
      if (std::find(s.names.begin(), s.names.end(), pre) != s.names.end()) spec = &s;
    if (!spec)
      fail(source, ": tokenizer.ggml.pre = \"", pre, "\" is not a supported pre-tokenizer (supported: ",
           supported_pre_list(), ")");
    if (!f.has("tokenizer.ggml.merges"))
      fail(source, ": tokenizer.ggml.model is \"gpt2\" but there is no tokenizer.ggml.merges (expected the BPE merges)");
    impl->model = std::make_unique<BpeModel>(tokens, f.get_string_array("tokenizer.ggml.merges"), spec->ignore_merges,
                                             source);
    json steps = json::array();
    for (const std::string& r : spec->regexes)
      steps.push_back({{"type", "Split"}, {"pattern", {{"Regex", r}}}, {"behavior", "Isolated"}, {"invert", false}});
    steps.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}});
    impl->pre_tokenizer = make_pre_tokenizer({{"type", "Sequence"}, {"pretokenizers", steps}},
                                             source + ": pre-tokenizer \"" + pre + "\"");
    impl->decoder = make_decoder({{"type", "ByteLevel"}}, source + ": decoder");
    impl->byte_level_decoder = true;
  }
  impl->post_processor =
      std::make_unique<BosEosPostProcessor>(special.add_bos ? special.bos : -1, special.add_eos ? special.eos : -1);

  // Control, unknown and user-defined tokens are found in the raw text before the model sees it.
  for (size_t id = 0; id < n; ++id) {
    const int64_t type = types[id];
    if (type != kControl && type != kUnknown && type != kUserDefined) continue;
    AddedToken token;
    token.content = tokens[id];
    token.special = type != kUserDefined;
    token.normalized = false;
    impl->added_ids.emplace(token.content, int32_t(id));
    if (token.special) impl->special_contents.emplace(token.content, true);
    impl->raw_trie.insert(token.content, int32_t(id));
    impl->added_tokens.emplace(int32_t(id), std::move(token));
  }
  impl->vocab_size = int32_t(n);
  impl->bos_id = special.bos;
  impl->eos_id = special.eos;
  impl->unk_id = special.unk;
  impl->pad_id = special.pad;
  return impl;
}

}  // namespace tok

// ---------------------------------------------------------------------------------------------------------
// Writing: convert_hf_to_gguf.py's _set_vocab_gpt2 / _set_vocab_sentencepiece and gguf-py's SpecialVocab.

namespace {

namespace fs = std::filesystem;

std::optional<json> read_json_file(const fs::path& path, bool required) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!required && !fs::exists(path)) return std::nullopt;
    fail(path.string(), fs::exists(path) ? ": cannot be read" : ": not found");
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  try {
    json j = json::parse(buf.str());
    if (!j.is_object()) fail(path.string(), ": expected a JSON object");
    return j;
  } catch (const json::exception& e) {
    fail(path.string(), ": not valid JSON (", e.what(), ")");
  }
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot be read");
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

const json& member(const json& j, const char* key) {
  static const json null_json;
  if (!j.is_object()) return null_json;
  auto it = j.find(key);
  return it == j.end() ? null_json : *it;
}

std::string string_member(const json& j, const char* key) {
  const json& v = member(j, key);
  return v.is_string() ? v.get<std::string>() : std::string();
}

// convert_hf_to_gguf.py's does_token_look_special.
bool looks_special(const std::string& t) {
  auto wrapped = [&](std::string_view open, std::string_view close) {
    return t.size() >= open.size() + close.size() && t.starts_with(open) && t.ends_with(close);
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\xEF\xBD\x9C", "\xEF\xBD\x9C>") || wrapped("<unused", ">");
}

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
  return s;
}

// tokenizers' pre-tokenizer regexes (as tokenizer.json holds them) that llama.cpp knows by a pre name.
const std::string kHfLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kHfQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string choose_pre(const json& tok, const std::string& model_type, const std::string& where) {
  const json& pre = member(tok, "pre_tokenizer");
  const std::string type = string_member(pre, "type");
  const json& use_regex = member(pre, "use_regex");
  const json& prefix_space = member(pre, "add_prefix_space");
  if (type == "ByteLevel" && !(use_regex.is_boolean() && !use_regex.get<bool>()) &&
      prefix_space.is_boolean() && !prefix_space.get<bool>())
    return model_type.starts_with("olmo") ? "olmo" : "gpt-2";
  const json& steps = member(pre, "pretokenizers");
  if (type == "Sequence" && steps.is_array() && steps.size() == 2 && string_member(steps[0], "type") == "Split" &&
      string_member(steps[1], "type") == "ByteLevel") {
    const std::string regex = string_member(member(steps[0], "pattern"), "Regex");
    if (regex == kHfLlama3Regex) return model_type == "dbrx" ? "dbrx" : "llama-bpe";
    if (regex == kHfQwen2Regex) return "qwen2";
  }
  fail(where, ": pre_tokenizer ", pre.dump().substr(0, 300),
       " is not one moep can name for llama.cpp (expected ByteLevel with the GPT-2 regex and no prefix space, or a "
       "Split with the Llama 3 or Qwen2 regex then ByteLevel)");
}

// The text of a special token entry of tokenizer_config.json: "text", or {"content": "text"}.
std::optional<std::string> token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && member(v, "content").is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// gguf-py's SpecialVocab: what it finds and the order in which add_to_gguf writes it.
struct SpecialVocab {
  std::vector<std::pair<std::string, uint32_t>> ids;  // ("bos", id), …
  std::vector<std::pair<std::string, bool>> add;      // ("bos", true), …
  json chat_template;                                 // string, list of {name, template}, or null

  void set_add(const std::string& type, bool value) {
    for (auto& [t, v] : add)
      if (t == type) {
        v = value;
        return;
      }
    add.emplace_back(type, value);
  }
  void set_id(const std::string& type, const json& id, std::optional<size_t> n_vocab, const std::string& where) {
    if (!id.is_number_integer()) return;
    const int64_t v = id.get<int64_t>();
    if (v < 0) fail(where, ": special token ", type, " has id ", v, " (expected a token id)");
    if (n_vocab && uint64_t(v) >= *n_vocab) return;  // SpecialVocab skips it with a warning
    for (const auto& [t, x] : ids)
      if (t == type) return;
    ids.emplace_back(type, uint32_t(v));
  }
};

const char* const kSpecialTypes[] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};

SpecialVocab load_special_vocab(const fs::path& dir, const json& tok, const std::optional<json>& config,
                                const std::optional<json>& model_config, std::optional<size_t> n_vocab) {
  SpecialVocab sv;
  const std::string where = (dir / "tokenizer_config.json").string();
  const json& added = member(tok, "added_tokens");
  // TemplateProcessing of tokenizer.json: a leading special token is BOS, a trailing one EOS, one between A and B
  // in the pair template a separator (SpecialVocab's crude parse, kept as crude).
  const json null_json;
  const json& cfg = config ? *config : null_json;
  const std::optional<std::string> bos = token_text(member(cfg, "bos_token"));
  const std::optional<std::string> eos = token_text(member(cfg, "eos_token"));
  const std::optional<std::string> sep = token_text(member(cfg, "sep_token"));
  const std::optional<std::string> cls = token_text(member(cfg, "cls_token"));
  const json& post = member(tok, "post_processor");
  std::vector<json> processors;
  if (member(post, "processors").is_array()) {
    for (const json& p : post["processors"]) processors.push_back(p);
  } else if (post.is_object()) {
    processors.push_back(post);
  }
  for (const json& p : processors) {
    const std::string type = string_member(p, "type");
    if (type == "RobertaProcessing") {
      sv.set_add("bos", true);
      sv.set_add("eos", true);
      sv.set_add("sep", true);
      continue;
    }
    if (type != "TemplateProcessing") continue;
    const json& single = member(p, "single");
    if (!single.is_array() || single.size() <= 1) continue;
    const std::string first = string_member(member(single.front(), "SpecialToken"), "id");
    const std::string last = string_member(member(single.back(), "SpecialToken"), "id");
    if (!first.empty()) sv.set_add("bos", config ? (first == bos || first == cls) : true);
    if (!last.empty()) sv.set_add("eos", config ? last == eos : true);
    json pair = member(p, "pair");
    if (!pair.is_array() || pair.empty()) continue;
    size_t begin = !first.empty() && string_member(member(pair.front(), "SpecialToken"), "id") == first ? 1 : 0;
    size_t end = !last.empty() && string_member(member(pair.back(), "SpecialToken"), "id") == last ? pair.size() - 1 : pair.size();
    if (begin >= end) continue;
    const std::string a = string_member(member(pair[begin], "Sequence"), "id");
    const std::string b = string_member(member(pair[end - 1], "Sequence"), "id");
    if (a != "A" || b != "B" || end - begin <= 2) continue;
    bool add_sep = false;
    const std::string mid = string_member(member(pair[begin + 1], "SpecialToken"), "id");
    if (!mid.empty() && (mid == sep || mid == eos) && last.empty()) add_sep = true;
    if (end - begin - 2 == 2) {
      const std::string mid2 = string_member(member(pair[begin + 2], "SpecialToken"), "id");
      if (!mid2.empty() && (mid2 == sep || mid2 == eos)) add_sep = true;
    }
    sv.set_add("sep", add_sep);
  }
  if (config) {
    // tokenizer_config.json's chat_template wins over chat_template.jinja / chat_template.json (as in gguf-py).
    json alt;
    if (fs::exists(dir / "chat_template.jinja")) {
      alt = read_text_file(dir / "chat_template.jinja");
      std::vector<fs::path> extra;
      if (fs::is_directory(dir / "additional_chat_templates"))
        for (const auto& e : fs::directory_iterator(dir / "additional_chat_templates"))
          if (e.path().extension() == ".jinja") extra.push_back(e.path());
      std::sort(extra.begin(), extra.end());
      if (!extra.empty()) {
        alt = json::array({json{{"name", "default"}, {"template", alt}}});
        for (const fs::path& p : extra) alt.push_back({{"name", p.stem().string()}, {"template", read_text_file(p)}});
      }
    } else if (fs::exists(dir / "chat_template.json")) {
      alt = member(*read_json_file(dir / "chat_template.json", true), "chat_template");
    }
    const json& t = cfg.contains("chat_template") ? cfg["chat_template"] : alt;
    if (t.is_string() || t.is_array()) sv.chat_template = t;
    for (const char* type : kSpecialTypes) {
      const json& add = member(cfg, (std::string("add_") + type + "_token").c_str());
      if (add.is_boolean()) sv.set_add(type, add.get<bool>());
      const std::optional<std::string> text = token_text(member(cfg, (std::string(type) + "_token").c_str()));
      if (!text || !added.is_array()) continue;
      for (const json& a : added)
        if (string_member(a, "content") == *text) {
          sv.set_id(type, member(a, "id"), n_vocab, where);
          break;
        }
    }
  }
  if (model_config)
    for (const char* type : kSpecialTypes) {
      const json* id = &member(*model_config, (std::string(type) + "_token_id").c_str());
      if (id->is_null()) id = &member(member(*model_config, "text_config"), (std::string(type) + "_token_id").c_str());
      sv.set_id(type, *id, n_vocab, (dir / "config.json").string());
    }
  return sv;
}

void write_special_vocab(const SpecialVocab& sv, GgufWriter& w) {
  static const std::map<std::string, std::string> id_keys = {
      {"bos", "tokenizer.ggml.bos_token_id"},     {"eos", "tokenizer.ggml.eos_token_id"},
      {"unk", "tokenizer.ggml.unknown_token_id"}, {"sep", "tokenizer.ggml.seperator_token_id"},  // sic (gguf-py)
      {"pad", "tokenizer.ggml.padding_token_id"}, {"cls", "tokenizer.ggml.cls_token_id"},
      {"mask", "tokenizer.ggml.mask_token_id"}};
  for (const auto& [type, id] : sv.ids) w.set_u32(id_keys.at(type), id);
  // gguf-py writes add_bos/eos/sep_token; it has no key for the others.
  for (const auto& [type, value] : sv.add)
    if (type == "bos" || type == "eos" || type == "sep") w.set_bool("tokenizer.ggml.add_" + type + "_token", value);
  if (sv.chat_template.is_string()) {
    w.set_string("tokenizer.chat_template", sv.chat_template.get<std::string>());
  } else if (sv.chat_template.is_array()) {
    // GGUFWriter.add_chat_template: the "default" one as tokenizer.chat_template, the others by name (letters and
    // digits kept, anything else as '_') and listed in tokenizer.chat_templates.
    std::vector<std::string> names;
    std::optional<std::string> default_template;
    for (const json& e : sv.chat_template) {
      std::string name = string_member(e, "name");
      const json& t = member(e, "template");
      for (char& c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80) c = '_';
      if (name.empty() || !t.is_string()) continue;
      if (name == "default") {
        default_template = t.get<std::string>();
      } else if (std::find(names.begin(), names.end(), name) == names.end()) {
        names.push_back(name);
        w.set_string("tokenizer.chat_template." + name, t.get<std::string>());
      }
    }
    if (!names.empty()) w.set_string_array("tokenizer.chat_templates", names);
    if (default_template) w.set_string("tokenizer.chat_template", *default_template);
  }
}

void set_i32_array(GgufWriter& w, const std::string& key, const std::vector<int32_t>& v) {
  w.set_array(key, GgufType::I32, v.data(), v.size());
}

}  // namespace

void add_tokenizer_metadata(const std::string& model_dir, GgufWriter& w) {
  const fs::path dir(model_dir);
  const fs::path tok_path = dir / "tokenizer.json";
  const std::string where = tok_path.string();
  const json tok = *read_json_file(tok_path, true);
  const std::optional<json> config = read_json_file(dir / "tokenizer_config.json", false);
  const std::optional<json> model_config = read_json_file(dir / "config.json", false);
  for (const char* key : {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.chat_template"})
    if (w.has(key)) fail("add_tokenizer_metadata(", model_dir, "): the GGUF already has ", key);

  const json& model = member(tok, "model");
  if (string_member(model, "type") != "BPE" || !member(model, "vocab").is_object() || !member(model, "merges").is_array())
    fail(where, ": model is not a BPE with vocab and merges (moep writes GGUF tokenizers of BPE models only)");
  const bool byte_fallback = member(model, "byte_fallback").is_boolean() && model["byte_fallback"].get<bool>();
  const std::string decoder = string_member(member(tok, "decoder"), "type");
  const bool sentencepiece = byte_fallback && decoder == "Sequence";
  if (!sentencepiece && (byte_fallback || decoder != "ByteLevel"))
    fail(where, ": a BPE with byte_fallback ", byte_fallback, " and decoder \"", decoder,
         "\" is neither kind llama.cpp converts (expected byte-level BPE with a ByteLevel decoder, or "
         "SentencePiece-style BPE with byte_fallback and a Sequence decoder)");

  // Id → token: the model's vocabulary and the added tokens.
  std::map<int64_t, std::string> by_id;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0)
      fail(where, ": model.vocab[\"", it.key(), "\"]: expected a token id");
    by_id[it.value().get<int64_t>()] = it.key();
  }
  struct Added {
    bool special, normalized;
  };
  std::map<int64_t, Added> added;
  const json& added_list = member(tok, "added_tokens");
  if (added_list.is_array())
    for (const json& a : added_list) {
      const json& id = member(a, "id");
      const json& content = member(a, "content");
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || !content.is_string())
        fail(where, ": added_tokens: expected {\"id\": token id, \"content\": string, …}, got ", a.dump());
      const bool special = member(a, "special").is_boolean() && a["special"].get<bool>();
      const bool normalized = member(a, "normalized").is_boolean() ? a["normalized"].get<bool>() : !special;
      by_id[id.get<int64_t>()] = content.get<std::string>();
      added[id.get<int64_t>()] = Added{special, normalized};
    }
  if (by_id.empty()) fail(where, ": the vocabulary is empty");
  size_t n_vocab = size_t(by_id.rbegin()->first) + 1;
  const json* vocab_size = model_config ? &member(*model_config, "vocab_size") : nullptr;
  if (vocab_size && vocab_size->is_null()) vocab_size = &member(member(*model_config, "text_config"), "vocab_size");
  if (vocab_size && vocab_size->is_number_integer()) {
    const int64_t v = vocab_size->get<int64_t>();
    if (v < int64_t(n_vocab))
      fail((dir / "config.json").string(), ": vocab_size ", v, " is smaller than the tokenizer's ", n_vocab,
           " token ids");
    n_vocab = size_t(v);
  }

  std::vector<std::string> tokens(n_vocab);
  std::vector<int32_t> types(n_vocab, kNormal);
  for (size_t id = 0; id < n_vocab; ++id) {
    auto it = by_id.find(int64_t(id));
    if (it == by_id.end()) {
      tokens[id] = str_cat("[PAD", id, "]");
      types[id] = kUnused;
      continue;
    }
    std::string token = it->second;
    if (auto a = added.find(int64_t(id)); a != added.end()) {
      if (a->second.special || looks_special(token)) {
        types[id] = kControl;
      } else {
        token = replace_all(token, kSpace, " ");  // convert's "pre-normalize user-defined spaces"
        types[id] = kUserDefined;
      }
    } else if (sentencepiece && tok::byte_fallback_value(token) >= 0) {
      types[id] = kByte;
    }
    tokens[id] = std::move(token);
  }

  // Merges as "A B" strings; a space inside a token of the [A, B] form is written as U+0120, as gguf-py does.
  std::vector<std::string> merges;
  merges.reserve(model["merges"].size());
  for (const json& m : model["merges"]) {
    if (m.is_string()) {
      merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.push_back(replace_all(m[0].get<std::string>(), " ", "\xC4\xA0") + " " +
                       replace_all(m[1].get<std::string>(), " ", "\xC4\xA0"));
    } else {
      fail(where, ": model.merges: expected \"A B\" or [\"A\", \"B\"], got ", m.dump());
    }
  }

  // Everything is read and checked before the first key is written, so that a refused directory leaves `w` as
  // it was.
  if (!sentencepiece) {
    const std::string pre = choose_pre(tok, model_config ? string_member(*model_config, "model_type") : "", where);
    const SpecialVocab special = load_special_vocab(dir, tok, config, model_config, std::nullopt);
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", pre);
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    set_i32_array(w, "tokenizer.ggml.token_type", types);
    w.set_string_array("tokenizer.ggml.merges", merges);
    write_special_vocab(special, w);
    return;
  }

  // A token's score: minus the rank of the first merge that makes it, so that llama.cpp's highest-score-first
  // merging takes merges in the order of the list; tokens no merge makes (characters, bytes, added tokens) score
  // below every merge.
  const float unmerged = -float(merges.size()) - 1000.0f;
  std::vector<float> scores(n_vocab, unmerged);
  std::unordered_map<std::string, size_t> id_of;
  for (size_t id = 0; id < n_vocab; ++id) id_of.emplace(tokens[id], id);
  for (size_t rank = merges.size(); rank-- > 0;) {
    const std::string& m = merges[rank];
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) fail(where, ": model.merges[", rank, "] = \"", m, "\": expected two tokens");
    auto it = id_of.find(m.substr(0, sp) + m.substr(sp + 1));
    if (it == id_of.end()) fail(where, ": model.merges[", rank, "] = \"", m, "\" makes a token not in the vocabulary");
    scores[it->second] = -float(rank);
  }
  for (const auto& [id, a] : added)
    if (size_t(id) < n_vocab) scores[size_t(id)] = -1000.0f;  // as convert scores added tokens
  // Does tokenizer.json put ▁ in front of the text (Prepend normalizer, or Metaspace with a prepend scheme)?
  bool space_prefix = false;
  std::function<void(const json&)> scan = [&](const json& j) {
    const std::string type = string_member(j, "type");
    if (type == "Prepend" && string_member(j, "prepend") == kSpace) space_prefix = true;
    if (type == "Metaspace" && string_member(j, "prepend_scheme") != "never" &&
        !(member(j, "add_prefix_space").is_boolean() && !j["add_prefix_space"].get<bool>()))
      space_prefix = true;
    for (const char* list : {"normalizers", "pretokenizers"})
      if (member(j, list).is_array())
        for (const json& x : j[list]) scan(x);
  };
  scan(member(tok, "normalizer"));
  scan(member(tok, "pre_tokenizer"));

  const SpecialVocab special = load_special_vocab(dir, tok, config, model_config, n_vocab);
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string("tokenizer.ggml.pre", "default");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_array("tokenizer.ggml.scores", GgufType::F32, scores.data(), scores.size());
  set_i32_array(w, "tokenizer.ggml.token_type", types);
  if (!space_prefix) w.set_bool("tokenizer.ggml.add_space_prefix", false);  // llama.cpp's default is true
  write_special_vocab(special, w);
}

}  // namespace moep
