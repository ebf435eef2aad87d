// Hugging Face `tokenizer.json` tokenizers, exact to the `tokenizers` library (0.23): the ids that
// `Tokenizer.from_file(path).encode(text, add_special_tokens).ids` gives, and the text that `decode` gives.
//
// Supported (what MoE checkpoints ship):
//  - model: BPE (byte-level as GPT-2/DBRX/Qwen/OLMoE/DeepSeek; SentencePiece-style with byte_fallback, unk,
//    fuse_unk as Llama/Mixtral), merges as "a b" strings or [a, b] pairs, ignore_merges,
//    continuing_subword_prefix / end_of_word_suffix. Dropout is ignored (inference is deterministic).
//  - added tokens (special or not, single_word / lstrip / rstrip / normalized), matched before the model.
//  - normalizers: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, ByteLevel.
//  - pre-tokenizers: ByteLevel, Split (Regex or String; all five behaviors; invert), Sequence, Metaspace,
//    Digits, Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer, CharDelimiterSplit.
//  - post-processors: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence.
//  - decoders: ByteLevel, ByteFallback, Metaspace, Replace, Strip, Fuse, BPEDecoder, Sequence.
// Anything else (another model type, an unknown component) is refused at load with a moep::Error.
// Truncation and padding settings in the file are ignored.
// Regexes run on PCRE2 with Oniguruma's meaning of \s \w etc.; character classes and normalization use ICU.
// Their Unicode data (Debian 12: PCRE2 Unicode 14, ICU Unicode 15) is older than `tokenizers`', so a character
// assigned only in a recent Unicode version (e.g. an emoji of 2022) may be split differently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moep {

class GgufFile;

namespace tok {
struct TokenizerImpl;
}

// A loaded tokenizer. Immutable after load; every const method is thread-safe. Copies share the loaded data.
class Tokenizer {
 public:
  // Loads `path_or_dir`: a tokenizer.json file, a directory holding one (DIR/tokenizer.json), or a .gguf file
  // (any part of a split model; see from_gguf). Throws moep::Error naming the file when it is missing, is not
  // valid JSON or GGUF, or describes something unsupported or inconsistent (e.g. a merge of tokens that are not
  // in the vocabulary).
  static Tokenizer load(const std::string& path_or_dir);
  // The tokenizer of a GGUF file's metadata, as llama.cpp's tokenizer reads it (text/gguf_tokenizer.h).
  // Throws moep::Error naming the file and the key for an unknown tokenizer.ggml.model or .pre, arrays of
  // tokens, types and scores of different lengths, a merge of an unknown token, a bad special token id.
  static Tokenizer from_gguf(const GgufFile& file);
  // Same, from a tokenizer.json document in memory; `source` names it in error messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& source = "tokenizer.json");

  // Token ids of `text` (UTF-8). add_special_tokens: let the post-processor add its tokens (e.g. BOS).
  // Special tokens written in the text (e.g. "<|im_end|>") are recognised, as `tokenizers` does.
  // Throws moep::Error if `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;

  // Text of `ids`. Ids that are not in the vocabulary are skipped (as `tokenizers` does);
  // skip_special_tokens drops special tokens. Invalid UTF-8 produced by byte tokens becomes U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  // The bytes token `id` adds to the decoded text in the middle of a sequence, before any UTF-8 check (a byte-level
  // token may hold part of a character): GPT-2-alphabet characters mapped back to bytes, a byte-fallback token
  // "<0x0A>" as its byte, SentencePiece's U+2581 as a space; an added token's content as it is; "" for an unknown
  // id. What constrained decoding (text/json_grammar.h) matches against.
  std::string token_bytes(int32_t id) const;
  // Id of a token string (added tokens first, then the model's vocabulary); -1 if none.
  int32_t token_to_id(std::string_view token) const;
  // Token string of an id (as decode sees it); "" if the id is unknown.
  std::string id_to_token(int32_t id) const;
  // 1 + the largest token id (model vocabulary and added tokens): the rows an embedding needs.
  int32_t vocab_size() const;
  // True if `id` is a special token (one that decode(..., skip_special_tokens=true) drops).
  bool is_special(int32_t id) const;

  // The special token ids a GGUF file names (tokenizer.ggml.bos_token_id, …, with llama.cpp's defaults);
  // -1 where it names none. A tokenizer.json names none (tokenizer_config.json does): all -1.
  struct SpecialIds {
    int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  };
  SpecialIds special_ids() const;

 private:
  explicit Tokenizer(std::shared_ptr<const tok::TokenizerImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const tok::TokenizerImpl> impl_;
  friend class StreamDecoder;
};

// Decodes a stream of ids one at a time (as they are generated) into text pieces ready to print.
// Never emits an incomplete UTF-8 character: text that ends in U+FFFD is held back until more ids come.
// Contract: the concatenation of every step() result and then finish() equals
// tokenizer.decode(all ids, skip_special_tokens), invalid byte sequences included. Works like `tokenizers`'
// DecodeStream, keeping only a short window of recent ids, so each step costs O(window), not O(all ids);
// with a ByteFallback decoder, text from a run of byte tokens ("<0x0A>") waits for the token after the run.
// Not thread-safe.
class StreamDecoder {
 public:
  StreamDecoder(Tokenizer tokenizer, bool skip_special_tokens);
  // Adds one id; returns the new text that is now final (often empty).
  std::string step(int32_t id);
  // Returns whatever is still held back (e.g. a trailing incomplete character, as U+FFFD) and resets.
  std::string finish();
  // Forgets all ids (start of a new sequence).
  void reset();

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // window of recent ids
  std::string prefix_;        // decode of ids_[0, prefix_index_)
  size_t prefix_index_ = 0;
  bool in_byte_run_ = false;  // the last token the decoder sees is a byte-fallback token ("<0xE2>")
};

}  // namespace moep
