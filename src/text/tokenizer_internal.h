// Internals of the tokenizer.json tokenizer (see tokenizer.h). Each piece mirrors the component of the
// Rust `tokenizers` library of the same name; offsets and alignments are not tracked (only ids and text).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace moep {
class GgufFile;
}

namespace moep::tok {

// ---------------------------------------------------------------------------------------------------------
// UTF-8 and Unicode (tokenizer_unicode.cpp). Character classes follow Rust's std / regex crate definitions,
// which is what `tokenizers` uses; ICU provides the Unicode data.

// Length of the UTF-8 sequence starting with `lead` (1 for a stray byte; input is assumed valid).
inline size_t utf8_len(unsigned char lead) {
  return lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 1;
}
// Decodes the character at s[i] (valid UTF-8) and advances i past it.
char32_t next_char(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t c);
// True if `s` is valid UTF-8; otherwise *bad_offset is the offset of the first invalid byte.
bool is_valid_utf8(std::string_view s, size_t* bad_offset);
// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// True if `s` ends with U+FFFD.
bool ends_with_replacement_char(std::string_view s);

bool is_whitespace(char32_t c);     // Rust char::is_whitespace (White_Space)
bool is_numeric(char32_t c);        // Rust char::is_numeric (Nd, Nl, No)
bool is_alphanumeric(char32_t c);   // Rust char::is_alphanumeric (Alphabetic or numeric)
bool is_punctuation(char32_t c);    // ASCII punctuation or a P* category (tokenizers' is_punc)
bool is_regex_word(char32_t c);     // Rust regex \w (Alphabetic, M, Nd, Pc, Join_Control)
bool is_combining_mark(char32_t c); // M* categories

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string unicode_normalize(std::string_view s, NormalForm form);
// Rust's char::to_lowercase applied to every character (full mappings, no context).
std::string lowercase(std::string_view s);

// GPT-2's byte ↔ character alphabet (bytes_to_unicode).
const std::string& byte_to_char_utf8(uint8_t b);  // UTF-8 of the character that stands for byte b
int char_to_byte(char32_t c);                     // the byte a character stands for, or -1

// ---------------------------------------------------------------------------------------------------------
// Regular expressions (tokenizer_regex.cpp): PCRE2 in UTF + UCP mode, compiled (and JIT-compiled) once.
// Patterns are Oniguruma patterns as `tokenizers` writes them; \s \S \w \W are rewritten to Oniguruma's
// Unicode definitions, ^ and $ match at line boundaries (Oniguruma's Ruby syntax), and empty matches are
// iterated as the Rust `onig` crate's find_iter does.
class Regex {
 public:
  // Throws moep::Error naming `what` and the PCRE2 message if the pattern does not compile.
  Regex(const std::string& pattern, const std::string& what);
  // Appends the non-overlapping matches in `text` (valid UTF-8) as [start, end) byte offsets.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  std::shared_ptr<void> code_;  // pcre2_code_8
};
// A pattern that matches `literal` exactly (what regex::escape gives `tokenizers`).
std::string escape_regex(std::string_view literal);
// \s \S \w \W → Oniguruma's Unicode classes, in a form PCRE2 understands.
std::string translate_onig_pattern(std::string_view pattern);

// ---------------------------------------------------------------------------------------------------------
// A piece of the input on its way to the model (tokenizers' Split of a PreTokenizedString).
struct Piece {
  std::string text;        // normalized text
  int32_t token_id = -1;   // set when the piece is an added token (then it is final)
  bool at_origin = false;  // the piece begins at offset 0 of the original input (Metaspace "first")
};

// How a split keeps the delimiters it finds (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// A [start, end) byte range and whether it is a match of the splitting pattern.
struct Span {
  size_t start, end;
  bool is_match;
};

// ---------------------------------------------------------------------------------------------------------
// Components (tokenizer_components.cpp). Each is built from its JSON object; `where` names the object
// (e.g. "tokenizer.json: pre_tokenizer.pretokenizers[1]") for error messages.

// The components below nest through Sequences at most this deep (real tokenizers nest 1 or 2); the make_*
// functions below refuse deeper nesting with an error naming the path, so that neither building nor running
// them recurses without bound. `depth` counts the Sequences around `j`.
inline constexpr int kMaxComponentNesting = 32;

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where, int depth = 0);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may transform) every piece that is not yet a token; drops empty pieces.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& where, int depth = 0);

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j, const std::string& where, int depth = 0);

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& where, int depth = 0);
// The byte of a byte-fallback token "<0xXX>" (as tokenizers' ByteFallback decoder reads it), or -1.
int byte_fallback_value(std::string_view token);
// True if the decoder object (or a Sequence inside it) has a ByteFallback step.
bool has_byte_fallback(const nlohmann::json& decoder);
// True if the decoder object (or a Sequence inside it) has a step of this type (e.g. "ByteLevel").
bool has_decoder_step(const nlohmann::json& decoder, std::string_view type);

// ---------------------------------------------------------------------------------------------------------
// Models: the BPE of tokenizer.json (tokenizer_bpe.cpp) and llama.cpp's score-ordered SentencePiece merging
// for GGUF files of tokenizer model "llama" (gguf_tokenizer.cpp).

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one pre-tokenized word. Thread-safe.
  virtual void tokenize(std::string_view word, std::vector<int32_t>& out) const = 0;
  virtual int32_t token_to_id(std::string_view token) const = 0;  // -1 if none
  virtual const std::string* id_to_token(int32_t id) const = 0;   // nullptr if none
  virtual size_t vocab_len() const = 0;
  virtual int32_t max_id() const = 0;
};

class BpeModel final : public Model {
 public:
  BpeModel(const nlohmann::json& model, const std::string& where);
  // A byte-level BPE as llama.cpp's GGUF keys give it: `tokens` (id = index; none twice) and `merges` ("A B",
  // split at the first space after the first byte, as llama.cpp does), every token of a merge and its result
  // in `tokens`. ignore_merges: a word that is a token is that token (llama.cpp's llama-bpe pre-tokenizers).
  // `where` names the file in error messages.
  BpeModel(const std::vector<std::string>& tokens, const std::vector<std::string>& merges, bool ignore_merges,
           const std::string& where);
  // The cache is locked, so tokenize is thread-safe.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const override;
  int32_t token_to_id(std::string_view token) const override;
  const std::string* id_to_token(int32_t id) const override;
  size_t vocab_len() const override { return vocab_.size(); }
  int32_t max_id() const override { return int32_t(vocab_r_.size()) - 1; }

 private:
  void init_byte_ids();
  // Adds merge `a b` at the next rank; `what` names the merge in error messages. A pair already there keeps its
  // rank if keep_first (llama.cpp), else takes the new one (tokenizers).
  void add_merge(const std::string& a, const std::string& b, const std::string& what, bool keep_first = false);
  struct MergeInfo {
    uint32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  std::string where_;
  Vocab vocab_;
  std::vector<std::string> vocab_r_;  // id → token ("" where no token has the id)
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, MergeInfo> merges_;  // (left id, right id) → rank, merged id
  uint32_t next_rank_ = 0;
  std::optional<std::string> unk_token_;
  std::optional<std::string> continuing_subword_prefix_;
  std::optional<std::string> end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // id of "<0xXX>" or -1

  // Word → ids cache (words shorter than kMaxCachedWord bytes, at most kCacheCapacity of them).
  static constexpr size_t kMaxCachedWord = 256;
  static constexpr size_t kCacheCapacity = 100000;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

// ---------------------------------------------------------------------------------------------------------
// Added tokens (tokenizers' AddedVocabulary), in tokenizer.cpp.

struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest matching of a set of byte strings (a trie walked from each position).
class TokenTrie {
 public:
  void insert(std::string_view pattern, int32_t value);
  bool empty() const { return nodes_.size() <= 1; }
  // Longest pattern that starts at text[pos]: returns its length (0 if none) and sets *value.
  size_t longest_at(std::string_view text, size_t pos, int32_t* value) const;

 private:
  struct Node {
    int32_t value = -1;
  };
  std::vector<Node> nodes_{Node{}};
  std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) → child
  std::array<bool, 256> first_byte_{};
};

struct TokenizerImpl {
  std::string source;  // file name for messages
  std::unique_ptr<Model> model;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;

  Vocab added_ids;                                       // content → id
  std::unordered_map<int32_t, AddedToken> added_tokens;  // id → token
  std::unordered_map<int32_t, std::string> normalized_content;  // id → content after the normalizer
  std::unordered_map<std::string, bool, StringHash, std::equal_to<>> special_contents;
  TokenTrie raw_trie;         // tokens with normalized=false, matched on the raw text
  TokenTrie normalized_trie;  // tokens with normalized=true, matched on the normalized text
  int32_t vocab_size = 0;
  bool byte_fallback_decoder = false;  // the decoder has a ByteFallback step
  bool byte_level_decoder = false;     // the decoder has a ByteLevel step (tokens spell bytes in GPT-2's alphabet)
  // Special token ids named by a GGUF file (tokenizer.ggml.*_token_id); -1 for none and for a tokenizer.json.
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;

  // Splits `text` around added tokens found by `trie` (with their single_word/lstrip/rstrip rules).
  void split_added(const Piece& piece, const TokenTrie& trie, std::vector<Piece>& out) const;
  std::vector<Piece> extract_and_normalize(std::string_view text) const;
  // Token string as decode sees it, or nullptr.
  const std::string* token_string(int32_t id) const;
  bool is_special_content(std::string_view s) const { return special_contents.find(s) != special_contents.end(); }
};

// The tokenizer of a GGUF file's metadata (gguf_tokenizer.cpp).
std::shared_ptr<TokenizerImpl> build_from_gguf(const GgufFile& file);

}  // namespace moep::tok
