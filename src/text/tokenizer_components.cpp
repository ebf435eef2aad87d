// Normalizers, pre-tokenizers, post-processors and decoders of tokenizer.json, each mirroring the
// `tokenizers` component of the same name.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>

#include "core/error.h"
#include "text/tokenizer_internal.h"

namespace moep::tok {

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------------
// JSON helpers: every error names the object (`where`) and the field.

std::string type_of(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": expected an object");
  auto t = j.find("type");
  if (t == j.end() || !t->is_string()) fail(where, ".type: expected a string");
  return t->get<std::string>();
}

const json& field(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) fail(where, ".", key, ": missing");
  return *it;
}

std::string get_string(const json& j, const char* key, const std::string& where, const char* dflt = nullptr) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (dflt) return dflt;
    fail(where, ".", key, ": missing");
  }
  if (!it->is_string()) fail(where, ".", key, ": expected a string");
  return it->get<std::string>();
}

bool get_bool(const json& j, const char* key, const std::string& where, bool dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail(where, ".", key, ": expected true or false");
  return it->get<bool>();
}

size_t get_size(const json& j, const char* key, const std::string& where, size_t dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
    fail(where, ".", key, ": expected a non-negative integer");
  return it->get<size_t>();
}

// A one-character string field (Rust `char`).
char32_t get_char(const json& j, const char* key, const std::string& where, const char* dflt) {
  const std::string s = get_string(j, key, where, dflt);
  size_t i = 0;
  if (s.empty()) fail(where, ".", key, ": expected one character");
  const char32_t c = next_char(s, i);
  if (i != s.size()) fail(where, ".", key, ": expected one character, got \"", s, "\"");
  return c;
}

const json& get_array(const json& j, const char* key, const std::string& where) {
  const json& a = field(j, key, where);
  if (!a.is_array()) fail(where, ".", key, ": expected an array");
  return a;
}

SplitBehavior parse_behavior(const json& j, const char* key, const std::string& where, const char* dflt) {
  const std::string b = get_string(j, key, where, dflt);
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail(where, ".", key, ": unknown behavior \"", b,
       "\" (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
}

// {"String": s} (a literal) or {"Regex": r}, as Split and Replace take them.
Regex parse_pattern(const json& j, const std::string& where) {
  const json& p = field(j, "pattern", where);
  if (p.is_object() && p.size() == 1) {
    if (auto s = p.find("String"); s != p.end() && s->is_string())
      return Regex(escape_regex(s->get<std::string>()), where + ".pattern");
    if (auto r = p.find("Regex"); r != p.end() && r->is_string()) return Regex(r->get<std::string>(), where + ".pattern");
  }
  fail(where, ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
}

// ---------------------------------------------------------------------------------------------------------
// Finding delimiters (tokenizers' Pattern::find_matches) and splitting by behavior (NormalizedString::split).

void regex_spans(const Regex& re, std::string_view text, std::vector<Span>& spans) {
  spans.clear();
  if (text.empty()) {
    spans.push_back(Span{0, 0, false});
    return;
  }
  static thread_local std::vector<std::pair<size_t, size_t>> matches;
  matches.clear();
  re.find_all(text, matches);
  size_t prev = 0;
  for (const auto& [s, e] : matches) {
    if (prev != s) spans.push_back(Span{prev, s, false});
    spans.push_back(Span{s, e, true});
    prev = e;
  }
  if (prev != text.size()) spans.push_back(Span{prev, text.size(), false});
}

template <class Pred>
void char_spans(Pred&& is_delim, std::string_view text, std::vector<Span>& spans) {
  spans.clear();
  if (text.empty()) {
    spans.push_back(Span{0, 0, false});
    return;
  }
  size_t last = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t b = i;
    const char32_t c = next_char(text, i);
    if (is_delim(c)) {
      if (last < b) spans.push_back(Span{last, b, false});
      spans.push_back(Span{b, i, true});
      last = i;
    }
  }
  if (text.size() > last) spans.push_back(Span{last, text.size(), false});
}

void invert(std::vector<Span>& spans) {
  for (Span& s : spans) s.is_match = !s.is_match;
}

// The [start, end) ranges that a split keeps; a Span's is_match means "remove" after this.
void apply_behavior(std::vector<Span>& spans, SplitBehavior behavior) {
  std::vector<Span> out;
  out.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (Span s : spans) out.push_back(Span{s.start, s.end, false});
      break;
    case SplitBehavior::Removed: out = spans; break;
    case SplitBehavior::Contiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !out.empty()) out.back().end = s.end;
        else out.push_back(Span{s.start, s.end, false});
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) out.back().end = s.end;
        else out.push_back(Span{s.start, s.end, false});
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) out.back().start = it->start;
        else out.push_back(Span{it->start, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  spans = std::move(out);
}

// Appends the kept, non-empty ranges of `p` as new pieces.
void emit_spans(const Piece& p, const std::vector<Span>& spans, std::vector<Piece>& out) {
  for (const Span& s : spans) {
    if (s.is_match || s.end <= s.start) continue;
    out.push_back(Piece{p.text.substr(s.start, s.end - s.start), -1, p.at_origin && s.start == 0});
  }
}

// Runs `fn(piece, out)` on every piece that is not yet a token; drops empty pieces.
template <class Fn>
void split_pieces(std::vector<Piece>& pieces, Fn&& fn) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (Piece& p : pieces) {
    if (p.token_id >= 0) out.push_back(std::move(p));
    else fn(p, out);
  }
  std::erase_if(out, [](const Piece& p) { return p.token_id < 0 && p.text.empty(); });
  pieces = std::move(out);
}

void byte_level_map(std::string& s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += byte_to_char_utf8(static_cast<unsigned char>(c));
  s = std::move(out);
}

std::string replace_char(std::string_view s, char32_t from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t b = i;
    if (next_char(s, i) == from) out += to;
    else out.append(s.substr(b, i - b));
  }
  return out;
}

std::string utf8_of(char32_t c) {
  std::string s;
  append_utf8(s, c);
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Normalizers

class NormalizerSequence final : public Normalizer {
 public:
  explicit NormalizerSequence(std::vector<std::unique_ptr<Normalizer>> items) : items_(std::move(items)) {}
  void normalize(std::string& s) const override {
    for (const auto& n : items_) n->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> items_;
};

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  void normalize(std::string& s) const override { s = unicode_normalize(s, form_); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s) const override { s = lowercase(s); }
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

// Replaces every match of a pattern (NormalizedString::replace).
std::string replace_matches(const Regex& re, std::string_view s, std::string_view content) {
  static thread_local std::vector<Span> spans;
  regex_spans(re, s, spans);
  std::string out;
  out.reserve(s.size());
  for (const Span& sp : spans) {
    if (sp.is_match) out += content;
    else out.append(s.substr(sp.start, sp.end - sp.start));
  }
  return out;
}

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Regex re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  void normalize(std::string& s) const override { s = replace_matches(re_, s, content_); }

 private:
  Regex re_;
  std::string content_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s) const override {
    size_t begin = 0, end = s.size();
    if (left_) {
      while (begin < end) {
        size_t i = begin;
        if (!is_whitespace(next_char(s, i))) break;
        begin = i;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t b = end - 1;
        while (b > begin && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
        size_t i = b;
        if (!is_whitespace(next_char(s, i))) break;
        end = b;
      }
    }
    s = s.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class StripAccentsNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      const size_t b = i;
      if (!is_combining_mark(next_char(s, i))) out.append(s, b, i - b);
    }
    s = std::move(out);
  }
};

class ByteLevelNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s) const override { byte_level_map(s); }
};

// ---------------------------------------------------------------------------------------------------------
// Pre-tokenizers

class PreTokenizerSequence final : public PreTokenizer {
 public:
  explicit PreTokenizerSequence(std::vector<std::unique_ptr<PreTokenizer>> items) : items_(std::move(items)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : items_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> items_;
};

const Regex& gpt2_regex() {
  static const Regex re("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
                        "ByteLevel pre-tokenizer");
  return re;
}

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](Piece& p, std::vector<Piece>& out) {
      if (add_prefix_space_ && !p.text.starts_with(' ')) p.text.insert(0, " ");
      if (!use_regex_) {
        out.push_back(std::move(p));
        return;
      }
      static thread_local std::vector<Span> spans;
      regex_spans(gpt2_regex(), p.text, spans);
      apply_behavior(spans, SplitBehavior::Isolated);
      emit_spans(p, spans, out);
    });
    for (Piece& p : pieces)
      if (p.token_id < 0) byte_level_map(p.text);
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex re, SplitBehavior behavior, bool invert)
      : re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](Piece& p, std::vector<Piece>& out) {
      static thread_local std::vector<Span> spans;
      regex_spans(re_, p.text, spans);
      if (invert_) invert(spans);
      apply_behavior(spans, behavior_);
      emit_spans(p, spans, out);
    });
  }

 private:
  Regex re_;
  SplitBehavior behavior_;
  bool invert_;
};

// Splits on single characters that `is_delim` accepts.
class CharSplitPreTokenizer final : public PreTokenizer {
 public:
  CharSplitPreTokenizer(std::function<bool(char32_t)> is_delim, SplitBehavior behavior)
      : is_delim_(std::move(is_delim)), behavior_(behavior) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](Piece& p, std::vector<Piece>& out) {
      static thread_local std::vector<Span> spans;
      char_spans(is_delim_, p.text, spans);
      apply_behavior(spans, behavior_);
      emit_spans(p, spans, out);
    });
  }

 private:
  std::function<bool(char32_t)> is_delim_;
  SplitBehavior behavior_;
};

enum class PrependScheme { Always, First, Never };

PrependScheme parse_prepend_scheme(const json& j, const std::string& where) {
  // Legacy files say add_prefix_space instead; false means never.
  if (auto a = j.find("add_prefix_space"); a != j.end() && a->is_boolean() && !a->get<bool>())
    return PrependScheme::Never;
  const std::string s = get_string(j, "prepend_scheme", where, "always");
  if (s == "always") return PrependScheme::Always;
  if (s == "first") return PrependScheme::First;
  if (s == "never") return PrependScheme::Never;
  fail(where, ".prepend_scheme: unknown value \"", s, "\" (expected always, first or never)");
}

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(replacement), rep_(utf8_of(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](Piece& p, std::vector<Piece>& out) {
      p.text = replace_char(p.text, U' ', rep_);
      const bool starts = p.text.starts_with(rep_);
      if ((scheme_ == PrependScheme::Always && !starts) || (scheme_ == PrependScheme::First && !starts && p.at_origin))
        p.text.insert(0, rep_);
      if (!split_) {
        out.push_back(std::move(p));
        return;
      }
      static thread_local std::vector<Span> spans;
      char_spans([&](char32_t c) { return c == replacement_; }, p.text, spans);
      apply_behavior(spans, SplitBehavior::MergedWithNext);
      emit_spans(p, spans, out);
    });
  }

 private:
  char32_t replacement_;
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

// Whitespace: keeps runs of \w and runs of [^\w\s] (Rust regex `\w+|[^\w\s]+`), drops the rest.
class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](Piece& p, std::vector<Piece>& out) {
      std::vector<Span> spans;
      const std::string& t = p.text;
      int run = -1;  // 0: word run, 1: other run, -1: none
      size_t run_start = 0;
      for (size_t i = 0; i < t.size();) {
        const size_t b = i;
        const char32_t c = next_char(t, i);
        const int kind = is_regex_word(c) ? 0 : is_whitespace(c) ? -1 : 1;
        if (kind != run) {
          if (run >= 0) spans.push_back(Span{run_start, b, false});
          run = kind;
          run_start = b;
        }
      }
      if (run >= 0) spans.push_back(Span{run_start, t.size(), false});
      emit_spans(p, spans, out);
    });
  }
};

// ---------------------------------------------------------------------------------------------------------
// Post-processors

class ByteLevelPostProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class TemplatePostProcessor final : public PostProcessor {
 public:
  // One piece of the template: the input sequence (ids empty, is_sequence) or a special token's ids.
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;
  };
  explicit TemplatePostProcessor(std::vector<Item> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& it : items_) {
      if (it.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), it.ids.begin(), it.ids.end());
    }
    ids = std::move(out);
  }

 private:
  std::vector<Item> items_;
};

class PostProcessorSequence final : public PostProcessor {
 public:
  explicit PostProcessorSequence(std::vector<std::unique_ptr<PostProcessor>> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : items_) p->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> items_;
};

// The single-sequence template of a TemplateProcessing object.
std::vector<TemplatePostProcessor::Item> parse_template(const json& j, const std::string& where) {
  const json& special = field(j, "special_tokens", where);
  if (!special.is_object()) fail(where, ".special_tokens: expected an object");
  auto special_ids = [&](const std::string& name) {
    auto it = special.find(name);
    if (it == special.end()) fail(where, ".single: special token \"", name, "\" is not in special_tokens");
    const json& ids = field(*it, "ids", where + ".special_tokens[\"" + name + "\"]");
    std::vector<int32_t> out;
    if (!ids.is_array()) fail(where, ".special_tokens[\"", name, "\"].ids: expected an array");
    for (const json& id : ids) {
      if (!id.is_number_integer()) fail(where, ".special_tokens[\"", name, "\"].ids: expected integers");
      out.push_back(id.get<int32_t>());
    }
    return out;
  };
  std::vector<TemplatePostProcessor::Item> items;
  const json& single = field(j, "single", where);
  auto add_piece_string = [&](const std::string& s) {  // "$A", "$0", "$B:1", "<s>:0", "<s>"
    const std::string name = s.substr(0, s.rfind(':') == std::string::npos ? s.size() : s.rfind(':'));
    if (!name.empty() && name[0] == '$') {
      if (name != "$B" && name != "$b") items.push_back({true, {}});
    } else {
      items.push_back({false, special_ids(name)});
    }
  };
  if (single.is_string()) {
    const std::string s = single.get<std::string>();
    size_t i = 0;
    while (i < s.size()) {
      const size_t e = std::min(s.find(' ', i), s.size());
      if (e > i) add_piece_string(s.substr(i, e - i));
      i = e + 1;
    }
    return items;
  }
  if (!single.is_array()) fail(where, ".single: expected an array of pieces");
  for (const json& piece : single) {
    if (auto seq = piece.find("Sequence"); piece.is_object() && seq != piece.end()) {
      if (get_string(*seq, "id", where + ".single[].Sequence", "A") == "A") items.push_back({true, {}});
    } else if (auto sp = piece.find("SpecialToken"); piece.is_object() && sp != piece.end()) {
      items.push_back({false, special_ids(get_string(*sp, "id", where + ".single[].SpecialToken"))});
    } else if (piece.is_string()) {
      add_piece_string(piece.get<std::string>());
    } else {
      fail(where, ".single: expected {\"Sequence\": ...} or {\"SpecialToken\": ...} pieces");
    }
  }
  return items;
}

// [token, id] of RobertaProcessing / BertProcessing.
int32_t token_pair_id(const json& j, const char* key, const std::string& where) {
  const json& p = field(j, key, where);
  if (!p.is_array() || p.size() != 2 || !p[1].is_number_integer()) fail(where, ".", key, ": expected [token, id]");
  return p[1].get<int32_t>();
}

// ---------------------------------------------------------------------------------------------------------
// Decoders

class DecoderSequence final : public Decoder {
 public:
  explicit DecoderSequence(std::vector<std::unique_ptr<Decoder>> items) : items_(std::move(items)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : items_) d->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> items_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      bool all = true;
      for (size_t i = 0; i < t.size();) {
        const int b = char_to_byte(next_char(t, i));
        if (b < 0) {
          all = false;
          break;
        }
        bytes += char(b);
      }
      if (!all) {  // a token outside the byte alphabet (e.g. an added token) is taken as it is
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&]() {
      if (pending.empty()) return;
      if (is_valid_utf8(pending, nullptr)) {
        out.push_back(pending);
      } else {  // one U+FFFD per byte of an invalid run
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      const int byte = byte_fallback_value(t);
      if (byte >= 0) {
        pending += char(byte);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string s;
    for (const auto& t : tokens) s += t;
    tokens.assign(1, std::move(s));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<size_t, char32_t>> chars;  // byte offset, character
      for (size_t i = 0; i < t.size();) {
        const size_t b = i;
        chars.emplace_back(b, next_char(t, i));
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < std::min(start_, chars.size()) && chars[i].second == content_; ++i) start_cut = i + 1;
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < std::min(stop_, chars.size()); ++i) {
        const size_t index = chars.size() - i - 1;
        if (chars[index].second != content_) break;
        stop_cut = index;
      }
      if (stop_cut < start_cut) stop_cut = start_cut;
      const size_t b0 = start_cut < chars.size() ? chars[start_cut].first : t.size();
      const size_t b1 = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
      t = t.substr(b0, b1 - b0);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Regex re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = replace_matches(re_, t, content_);
  }

 private:
  Regex re_;
  std::string content_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme) : replacement_(replacement), scheme_(scheme) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      const bool drop = k == 0 && scheme_ != PrependScheme::Never;  // the first token loses its replacements
      std::string out;
      const std::string& t = tokens[k];
      for (size_t i = 0; i < t.size();) {
        const size_t b = i;
        if (next_char(t, i) == replacement_) {
          if (!drop) out += ' ';
        } else {
          out.append(t, b, i - b);
        }
      }
      tokens[k] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (suffix_.empty()) return;
    for (size_t k = 0; k < tokens.size(); ++k) {
      const std::string rep = k + 1 == tokens.size() ? "" : " ";
      std::string& t = tokens[k];
      std::string out;
      size_t pos = 0;
      for (size_t f; (f = t.find(suffix_, pos)) != std::string::npos; pos = f + suffix_.size())
        out.append(t, pos, f - pos) += rep;
      out.append(t, pos, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  std::string suffix_;
};

template <class T>
std::vector<std::unique_ptr<T>> make_list(const json& j, const char* key, const std::string& where, int depth,
                                          std::unique_ptr<T> (*make)(const json&, const std::string&, int)) {
  if (depth >= kMaxComponentNesting)
    fail(where, ": Sequences nested more than ", kMaxComponentNesting, " deep; moep reads at most ",
         kMaxComponentNesting, " levels");
  const json& a = get_array(j, key, where);
  std::vector<std::unique_ptr<T>> items;
  for (size_t i = 0; i < a.size(); ++i) {
    auto item = make(a[i], str_cat(where, ".", key, "[", i, "]"), depth + 1);
    if (item) items.push_back(std::move(item));
  }
  return items;
}

}  // namespace

int byte_fallback_value(std::string_view t) {
  // "<0xXX>" → XX (Rust u8::from_str_radix on the two characters, which also takes "+X"), else -1.
  if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return -1;
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  const int lo = hex(t[4]);
  if (lo < 0) return -1;
  if (t[3] == '+') return lo;
  const int hi = hex(t[3]);
  return hi < 0 ? -1 : hi * 16 + lo;
}

bool has_decoder_step(const json& d, std::string_view type) {
  if (!d.is_object()) return false;
  auto t = d.find("type");
  if (t != d.end() && t->is_string() && t->get<std::string>() == type) return true;
  if (auto list = d.find("decoders"); list != d.end() && list->is_array())
    for (const json& x : *list)
      if (has_decoder_step(x, type)) return true;
  return false;
}

bool has_byte_fallback(const json& d) { return has_decoder_step(d, "ByteFallback"); }

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where, int depth) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "Sequence") return std::make_unique<NormalizerSequence>(make_list<Normalizer>(j, "normalizers", where, depth, make_normalizer));
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::NFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(get_string(j, "prepend", where));
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(parse_pattern(j, where), get_string(j, "content", where));
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(get_bool(j, "strip_left", where, true), get_bool(j, "strip_right", where, true));
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  fail(where, ".type: normalizer \"", type, "\" is not supported");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where, int depth) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "Sequence")
    return std::make_unique<PreTokenizerSequence>(make_list<PreTokenizer>(j, "pretokenizers", where, depth, make_pre_tokenizer));
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(get_bool(j, "add_prefix_space", where, true),
                                                   get_bool(j, "use_regex", where, true));
  if (type == "Split")
    return std::make_unique<SplitPreTokenizer>(parse_pattern(j, where), parse_behavior(j, "behavior", where, nullptr),
                                               get_bool(j, "invert", where, false));
  if (type == "Metaspace")
    return std::make_unique<MetaspacePreTokenizer>(get_char(j, "replacement", where, nullptr),
                                                   parse_prepend_scheme(j, where), get_bool(j, "split", where, true));
  if (type == "Digits") {
    const bool individual = get_bool(j, "individual_digits", where, false);
    return std::make_unique<CharSplitPreTokenizer>(is_numeric, individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
  }
  if (type == "Whitespace") return std::make_unique<WhitespacePreTokenizer>();
  if (type == "WhitespaceSplit") return std::make_unique<CharSplitPreTokenizer>(is_whitespace, SplitBehavior::Removed);
  if (type == "Punctuation")
    return std::make_unique<CharSplitPreTokenizer>(is_punctuation, parse_behavior(j, "behavior", where, "Isolated"));
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> items;
    items.push_back(std::make_unique<CharSplitPreTokenizer>(is_whitespace, SplitBehavior::Removed));
    items.push_back(std::make_unique<CharSplitPreTokenizer>(is_punctuation, SplitBehavior::Isolated));
    return std::make_unique<PreTokenizerSequence>(std::move(items));
  }
  if (type == "CharDelimiterSplit") {
    const char32_t d = get_char(j, "delimiter", where, nullptr);
    return std::make_unique<CharSplitPreTokenizer>([d](char32_t c) { return c == d; }, SplitBehavior::Removed);
  }
  fail(where, ".type: pre-tokenizer \"", type, "\" is not supported");
}

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& where, int depth) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPostProcessor>();
  if (type == "TemplateProcessing") return std::make_unique<TemplatePostProcessor>(parse_template(j, where));
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    std::vector<TemplatePostProcessor::Item> items;
    items.push_back({false, {token_pair_id(j, "cls", where)}});
    items.push_back({true, {}});
    items.push_back({false, {token_pair_id(j, "sep", where)}});
    return std::make_unique<TemplatePostProcessor>(std::move(items));
  }
  if (type == "Sequence")
    return std::make_unique<PostProcessorSequence>(make_list<PostProcessor>(j, "processors", where, depth, make_post_processor));
  fail(where, ".type: post-processor \"", type, "\" is not supported");
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where, int depth) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "Sequence") return std::make_unique<DecoderSequence>(make_list<Decoder>(j, "decoders", where, depth, make_decoder));
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip")
    return std::make_unique<StripDecoder>(get_char(j, "content", where, nullptr), get_size(j, "start", where, 0),
                                          get_size(j, "stop", where, 0));
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(parse_pattern(j, where), get_string(j, "content", where));
  if (type == "Metaspace")
    return std::make_unique<MetaspaceDecoder>(get_char(j, "replacement", where, nullptr), parse_prepend_scheme(j, where));
  if (type == "BPEDecoder") return std::make_unique<BpeDecoder>(get_string(j, "suffix", where, "</w>"));
  fail(where, ".type: decoder \"", type, "\" is not supported");
}

}  // namespace moep::tok
