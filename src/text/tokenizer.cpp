// Tokenizer: loading tokenizer.json, added tokens, encode / decode and the stream decoder.
#include "text/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/gguf.h"
#include "core/file_read.h"
#include "text/tokenizer_internal.h"

namespace moep {

namespace tok {

namespace {

using json = nlohmann::json;

// Rust regex \w at the end / start of a string (added tokens' single_word rule).
bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return is_regex_word(next_char(s, b));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return is_regex_word(next_char(s, i));
}

// Offset where the trailing run of whitespace of `s` begins (Rust regex `\s*$`).
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t b = end - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t i = b;
    if (!is_whitespace(next_char(s, i))) break;
    end = b;
  }
  return end;
}

// Length of the leading run of whitespace of `s` (Rust regex `^\s*`).
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t k = i;
    if (!is_whitespace(next_char(s, k))) break;
    i = k;
  }
  return i;
}

bool same_token(const AddedToken& a, const AddedToken& b) {
  return a.content == b.content && a.single_word == b.single_word && a.lstrip == b.lstrip && a.rstrip == b.rstrip &&
         a.normalized == b.normalized && a.special == b.special;
}

bool flag(const json& t, const char* key, bool dflt, const std::string& where) {
  auto it = t.find(key);
  if (it == t.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail(where, ".", key, ": expected true or false");
  return it->get<bool>();
}

}  // namespace

void TokenTrie::insert(std::string_view pattern, int32_t value) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (char ch : pattern) {
    const uint64_t key = (uint64_t(node) << 8) | static_cast<unsigned char>(ch);
    auto it = edges_.find(key);
    if (it == edges_.end()) {
      nodes_.push_back(Node{});
      it = edges_.emplace(key, int32_t(nodes_.size() - 1)).first;
    }
    node = it->second;
  }
  if (nodes_[size_t(node)].value < 0) nodes_[size_t(node)].value = value;
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
}

size_t TokenTrie::longest_at(std::string_view text, size_t pos, int32_t* value) const {
  if (!first_byte_[static_cast<unsigned char>(text[pos])]) return 0;
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = edges_.find((uint64_t(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges_.end()) break;
    node = it->second;
    if (nodes_[size_t(node)].value >= 0) {
      best = i + 1 - pos;
      *value = nodes_[size_t(node)].value;
    }
  }
  return best;
}

// As tokenizers' AddedVocabulary::find_matches + split_with_indices: leftmost-longest matches, then the
// single_word / lstrip / rstrip rules. The search goes on from the end of each match, as daachorse's
// iterator does, even when rstrip has taken more.
void TokenizerImpl::split_added(const Piece& piece, const TokenTrie& trie, std::vector<Piece>& out) const {
  const std::string& text = piece.text;
  if (text.empty()) return;
  if (trie.empty()) {
    out.push_back(piece);
    return;
  }
  auto emit = [&](size_t s, size_t e, int32_t id) {
    if (e <= s) return;
    out.push_back(Piece{text.substr(s, e - s), id, piece.at_origin && s == 0});
  };
  size_t start_offset = 0;
  for (size_t pos = 0; pos < text.size();) {
    int32_t id = -1;
    const size_t len = trie.longest_at(text, pos, &id);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;
    const AddedToken& token = added_tokens.at(id);
    if (token.single_word) {
      const bool start_space = start == 0 || !ends_with_word(std::string_view(text).substr(0, start));
      const bool stop_space = stop == text.size() || !starts_with_word(std::string_view(text).substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) start = std::max(trailing_space_start(std::string_view(text).substr(0, start)), start_offset);
    if (token.rstrip) stop += leading_space_len(std::string_view(text).substr(stop));
    if (start_offset < start) emit(start_offset, start, -1);
    emit(start, stop, id);
    start_offset = stop;
  }
  if (start_offset < text.size()) emit(start_offset, text.size(), -1);
}

std::vector<Piece> TokenizerImpl::extract_and_normalize(std::string_view text) const {
  std::vector<Piece> raw;
  split_added(Piece{std::string(text), -1, true}, raw_trie, raw);
  std::vector<Piece> pieces;
  pieces.reserve(raw.size());
  for (Piece& p : raw) {
    if (p.token_id >= 0) {
      pieces.push_back(std::move(p));
      continue;
    }
    if (normalizer) normalizer->normalize(p.text);
    split_added(p, normalized_trie, pieces);
  }
  return pieces;
}

const std::string* TokenizerImpl::token_string(int32_t id) const {
  if (auto it = added_tokens.find(id); it != added_tokens.end()) {
    if (auto n = normalized_content.find(id); n != normalized_content.end()) return &n->second;
    return &it->second.content;
  }
  return model->id_to_token(id);
}

namespace {

std::shared_ptr<TokenizerImpl> build(const json& j, const std::string& source) {
  auto impl = std::make_shared<TokenizerImpl>();
  impl->source = source;
  if (!j.is_object()) fail(source, ": expected a JSON object (a Hugging Face tokenizer.json)");
  if (auto v = j.find("version"); v != j.end() && !(v->is_string() && v->get<std::string>() == "1.0"))
    fail(source, ": version ", v->dump(), " is not supported (expected \"1.0\")");
  auto m = j.find("model");
  if (m == j.end()) fail(source, ": no \"model\" (expected a Hugging Face tokenizer.json)");
  impl->model = std::make_unique<BpeModel>(*m, source + ": model");
  const json null_json;
  auto part = [&](const char* key) -> const json& {
    auto it = j.find(key);
    return it == j.end() ? null_json : *it;
  };
  impl->normalizer = make_normalizer(part("normalizer"), source + ": normalizer");
  impl->pre_tokenizer = make_pre_tokenizer(part("pre_tokenizer"), source + ": pre_tokenizer");
  impl->post_processor = make_post_processor(part("post_processor"), source + ": post_processor");
  impl->decoder = make_decoder(part("decoder"), source + ": decoder");
  impl->byte_fallback_decoder = has_byte_fallback(part("decoder"));
  impl->byte_level_decoder = has_decoder_step(part("decoder"), "ByteLevel");

  // Added tokens get their ids as tokenizers' AddedVocabulary::add_tokens gives them: the id of the same
  // content already added or in the model's vocabulary, else the next free id after the model's vocabulary.
  const json& added = part("added_tokens");
  if (!added.is_null() && !added.is_array()) fail(source, ": added_tokens: expected an array");
  int32_t next_id = int32_t(impl->model->vocab_len());
  int32_t max_id = impl->model->max_id();
  for (size_t i = 0; added.is_array() && i < added.size(); ++i) {
    const std::string where = str_cat(source, ": added_tokens[", i, "]");
    const json& t = added[i];
    if (!t.is_object()) fail(where, ": expected an object");
    auto c = t.find("content");
    if (c == t.end() || !c->is_string()) fail(where, ".content: expected a string");
    AddedToken token;
    token.content = c->get<std::string>();
    token.special = flag(t, "special", false, where);
    token.single_word = flag(t, "single_word", false, where);
    token.lstrip = flag(t, "lstrip", false, where);
    token.rstrip = flag(t, "rstrip", false, where);
    token.normalized = flag(t, "normalized", !token.special, where);
    if (token.content.empty()) continue;
    if (auto it = impl->added_ids.find(token.content); it != impl->added_ids.end())
      if (same_token(impl->added_tokens.at(it->second), token)) continue;
    int32_t id;
    if (auto it = impl->added_ids.find(token.content); it != impl->added_ids.end()) id = it->second;
    else if (const int32_t mid = impl->model->token_to_id(token.content); mid >= 0) id = mid;
    else id = next_id++;
    if (token.normalized && impl->normalizer) {
      std::string normed = token.content;
      impl->normalizer->normalize(normed);
      if (normed != token.content) impl->normalized_content[id] = std::move(normed);
    }
    impl->added_ids[token.content] = id;
    if (token.special) impl->special_contents.emplace(token.content, true);
    impl->added_tokens[id] = std::move(token);
    max_id = std::max(max_id, id);
  }
  // Tries in id order, so that a pattern shared by two tokens resolves the same way every time.
  std::vector<int32_t> ids;
  for (const auto& [id, token] : impl->added_tokens) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (int32_t id : ids) {
    const AddedToken& token = impl->added_tokens.at(id);
    if (token.normalized) {
      auto n = impl->normalized_content.find(id);
      impl->normalized_trie.insert(n != impl->normalized_content.end() ? n->second : token.content, id);
    } else {
      impl->raw_trie.insert(token.content, id);
    }
  }
  impl->vocab_size = max_id + 1;
  return impl;
}

}  // namespace

}  // namespace tok

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  check_json_depth(json_text, kMaxJsonDepth, source);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (const nlohmann::json::exception& e) {
    fail(source, ": not valid JSON: ", e.what());
  }
  try {
    return Tokenizer(tok::build(j, source));
  } catch (const nlohmann::json::exception& e) {  // a value of an unexpected type that no check caught
    fail(source, ": unexpected content: ", e.what());
  }
}

Tokenizer Tokenizer::load(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path path(path_or_dir);
  if (path.extension() == ".gguf" && fs::is_regular_file(path, ec)) return from_gguf(GgufFile::open(path.string()));
  if (fs::is_directory(path, ec)) path /= "tokenizer.json";
  if (!fs::exists(path, ec)) fail(path.string(), ": not found (expected a Hugging Face tokenizer.json)");
  return from_json(read_regular_file(path.string(), kMaxTokenizerJsonBytes, "tokenizer.json"), path.string());
}

Tokenizer Tokenizer::from_gguf(const GgufFile& file) { return Tokenizer(tok::build_from_gguf(file)); }

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  size_t bad = 0;
  if (!tok::is_valid_utf8(text, &bad)) fail("tokenizer: input text is not valid UTF-8 (byte offset ", bad, ")");
  std::vector<tok::Piece> pieces = impl_->extract_and_normalize(text);
  if (impl_->pre_tokenizer) impl_->pre_tokenizer->pre_tokenize(pieces);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const tok::Piece& p : pieces) {
    if (p.token_id >= 0) ids.push_back(p.token_id);
    else impl_->model->tokenize(p.text, ids);
  }
  if (impl_->post_processor) impl_->post_processor->process(ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* t = impl_->token_string(id);
    if (!t || (skip_special_tokens && impl_->is_special_content(*t))) continue;
    tokens.push_back(*t);
  }
  std::string out;
  if (impl_->decoder) {
    impl_->decoder->decode_chain(tokens);
    for (const std::string& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  const std::string* t = impl_->token_string(id);
  if (!t) return {};
  if (impl_->added_tokens.count(id)) return *t;  // added tokens are their text
  if (impl_->byte_fallback_decoder) {
    const int byte = tok::byte_fallback_value(*t);
    if (byte >= 0) return std::string(1, char(byte));
  }
  std::string out;
  if (impl_->byte_level_decoder) {
    for (size_t i = 0; i < t->size();) {
      const int b = tok::char_to_byte(tok::next_char(*t, i));
      if (b < 0) return *t;  // outside the byte alphabet: taken as it is (as the ByteLevel decoder does)
      out += char(b);
    }
    return out;
  }
  // SentencePiece-style: U+2581 stands for a space (the Metaspace / Replace decoders).
  static constexpr std::string_view kMetaspace = "\xE2\x96\x81";
  for (size_t i = 0; i < t->size();) {
    if (std::string_view(*t).substr(i, kMetaspace.size()) == kMetaspace) {
      out += ' ';
      i += kMetaspace.size();
    } else {
      out += (*t)[i++];
    }
  }
  return out;
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  const std::string* t = impl_->token_string(id);
  return t ? *t : std::string();
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool Tokenizer::is_special(int32_t id) const {
  const std::string* t = impl_->token_string(id);
  return t && impl_->is_special_content(*t);
}

Tokenizer::SpecialIds Tokenizer::special_ids() const {
  return SpecialIds{impl_->bos_id, impl_->eos_id, impl_->unk_id, impl_->pad_id};
}

StreamDecoder::StreamDecoder(Tokenizer tokenizer, bool skip_special_tokens)
    : tokenizer_(std::move(tokenizer)), skip_special_(skip_special_tokens) {}

namespace {

// The part of `text` after `prefix`. The decoders supported never change text already decoded, so `text`
// starts with `prefix`; should one not, the part after their common prefix is given (where `tokenizers`'
// DecodeStream fails).
std::string text_after(const std::string& text, const std::string& prefix) {
  if (text.starts_with(prefix)) return text.substr(prefix.size());
  size_t n = 0;
  while (n < text.size() && n < prefix.size() && text[n] == prefix[n]) ++n;
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return text.substr(n);
}

}  // namespace

// As tokenizers' step_decode_stream: decode the window of recent ids; once it grows past the text already
// given and does not end in U+FFFD, give the difference and slide the window.
std::string StreamDecoder::step(int32_t id) {
  // (With nothing given yet, the held ids' text is the prefix only if it was held for ending in U+FFFD and
  // now does not; ids held as a byte run were not given.)
  if (prefix_.empty() && !ids_.empty() && !in_byte_run_) {
    std::string p = tokenizer_.decode(ids_, skip_special_);
    if (!tok::ends_with_replacement_char(p)) {
      prefix_ = std::move(p);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  // ByteFallback turns a whole run of byte tokens into U+FFFDs if any of it is invalid UTF-8, so text from
  // such a run is final only once a token that is not a byte token ends it.
  const tok::TokenizerImpl& impl = *tokenizer_.impl_;
  if (impl.byte_fallback_decoder) {
    const std::string* t = impl.token_string(id);
    if (t && !(skip_special_ && impl.is_special_content(*t))) in_byte_run_ = tok::byte_fallback_value(*t) >= 0;
    if (in_byte_run_) return std::string();
  }
  const std::string text = tokenizer_.decode(ids_, skip_special_);
  if (text.size() <= prefix_.size() || tok::ends_with_replacement_char(text)) return std::string();
  std::string out = text_after(text, prefix_);
  const size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + std::ptrdiff_t(prefix_index_));
  prefix_ = tokenizer_.decode(ids_, skip_special_);
  prefix_index_ = new_prefix_index;
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  if (!ids_.empty()) out = text_after(tokenizer_.decode(ids_, skip_special_), prefix_);
  reset();
  return out;
}

void StreamDecoder::reset() {
  in_byte_run_ = false;
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
}

}  // namespace moep
