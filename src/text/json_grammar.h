// Constrained decoding for JSON: a JSON Schema (or "any JSON object") compiled into a byte-level pushdown
// matcher, and the token mask built from it — the vocabulary tokens whose bytes keep the output inside the
// grammar. Used for response_format json_object / json_schema and for forcing the JSON of a tool call.
//
// Schemas supported (what OpenAI's strict structured outputs allow, minus recursion):
//   type: object | array | string | number | integer | boolean | null, or a list of them (e.g. ["string", "null"]);
//   object: properties, required, additionalProperties: false (an object with properties never gets other keys;
//           one without properties is any object, or only {} with additionalProperties: false); properties come
//           out in the order the schema declares them (optional ones may be left out);
//   array: items, minItems, maxItems;   string: minLength, maxLength (in characters);
//   enum, const (any JSON values);   anyOf (alternatives must begin differently: different types, or enums/consts
//   whose texts start with different characters; several objects must share a required first property whose
//   enum/const values tell them apart, as a tool call's "name" does);   {} (any JSON value);
//   annotations that constrain nothing are accepted and ignored: title, description, $schema, default, examples,
//   $comment, strict.
// Anything else (pattern, format, minimum, $ref, oneOf, allOf, additionalProperties: true, ...) is refused with a
// JsonSchemaError naming the keyword, so that a schema is never silently weakened.
//
// Output shape: no whitespace outside strings except runs of at most kMaxWhitespaceRun bytes (space, tab, at most
// one newline) after { [ , : and before , : } ]; none before or after the top-level value. Numbers have at most
// 15 integer digits, 15 fraction digits and 2 exponent digits; nesting is at most kMaxDepth deep. Strings are valid
// UTF-8 without lone-surrogate escapes. These bounds keep every prefix completable and let a random model finish.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/error.h"

namespace moep {

class Tokenizer;

// A schema refused. path: where in the schema, as a dotted path from its root ("properties.tags.items.type"; "" for
// the root); reason: what is wrong and what was expected; what(): "schema.<path>: <reason>".
class JsonSchemaError : public Error {
 public:
  JsonSchemaError(std::string path, std::string reason)
      : Error("schema" + (path.empty() ? std::string() : "." + path) + ": " + reason),
        path_(std::move(path)),
        reason_(std::move(reason)) {}
  const std::string& path() const { return path_; }
  const std::string& reason() const { return reason_; }

 private:
  std::string path_, reason_;
};

namespace grammar_detail {
struct Node;
struct LiteralSet;
}  // namespace grammar_detail

// A compiled grammar: immutable, shared by every matcher of it (thread-safe to share).
class JsonGrammar {
 public:
  static constexpr int kMaxDepth = 24;          // frames on the matcher's stack: values nested this deep at most
  static constexpr int kMaxWhitespaceRun = 12;  // bytes of one run of whitespace between tokens

  // response_format {"type": "json_object"}: any JSON object.
  static std::shared_ptr<const JsonGrammar> any_object();
  // A JSON Schema (see the top of this file). Throws JsonSchemaError for a malformed or unsupported schema.
  static std::shared_ptr<const JsonGrammar> from_schema(const nlohmann::ordered_json& schema);
  // The schema of a forced tool call, {"name": "<name>", "arguments": <parameters>}: what a template's tool-call
  // JSON holds (Hermes/Qwen <tool_call>, Llama 3, Mistral's list items). `parameters` is the function's JSON Schema
  // (null or absent: any object). Compile it with from_schema; wrap the matcher's output in the family's markers.
  static nlohmann::ordered_json tool_call_schema(const std::string& name, const nlohmann::ordered_json& parameters);
  // tool_choice "required" over several tools: {"anyOf": [tool_call_schema(name_i, parameters_i), ...]}, which
  // from_schema compiles into one object whose "name" picks the arguments' schema. For parallel calls wrap it in
  // {"type": "array", "items": ..., "minItems": 1}.
  static nlohmann::ordered_json any_tool_call_schema(
      const std::vector<std::pair<std::string, nlohmann::ordered_json>>& tools);

  ~JsonGrammar();
  JsonGrammar(const JsonGrammar&) = delete;
  JsonGrammar& operator=(const JsonGrammar&) = delete;

  // Internals, for the matcher.
  const grammar_detail::Node& node(uint16_t i) const;
  const grammar_detail::LiteralSet& literals(uint32_t i) const;
  uint16_t root() const { return root_; }

 private:
  JsonGrammar();
  friend struct GrammarBuilder;
  std::vector<grammar_detail::Node> nodes_;
  std::vector<grammar_detail::LiteralSet> literal_sets_;
  uint16_t root_ = 0;
};

// Where a matcher is: a stack of frames, one per value being matched. Plain data of fixed size: copying it
// allocates nothing (the token mask copies one per trie level).
struct GrammarFrame {
  uint16_t node = 0;
  uint8_t phase = 0;
  uint8_t flags = 0;
  uint32_t count = 0;  // items, characters, digits or the next property, by node kind
  uint16_t lo = 0, hi = 0, pos = 0;  // literal matching: candidates [lo, hi) of a sorted set, bytes matched
  uint16_t aux = 0;    // property being read, bytes of UTF-8 still expected, ...
};

struct GrammarState {
  uint8_t depth = 0;   // frames in use; 0 with `started`: the value is complete
  uint8_t ws_run = 0;  // whitespace bytes in the current run
  uint8_t ws_newlines = 0;
  bool started = false;
  std::array<GrammarFrame, JsonGrammar::kMaxDepth> frames{};
};

// Matches bytes against a grammar. Not thread-safe; allocates nothing after construction.
class JsonMatcher {
 public:
  explicit JsonMatcher(std::shared_ptr<const JsonGrammar> grammar);
  // Consumes one byte; returns false (state unchanged) if the byte would leave the grammar.
  bool advance(uint8_t byte);
  // Consumes bytes in order; returns false (state unchanged) if any would leave the grammar.
  bool advance(std::string_view bytes);
  // The bytes so far form a whole value (more may still extend it, e.g. digits of a top-level number).
  bool accepting() const;
  // The value is whole and nothing can follow.
  bool complete() const { return state_.started && state_.depth == 0; }
  void reset();

  const GrammarState& state() const { return state_; }
  GrammarState& state() { return state_; }
  const JsonGrammar& grammar() const { return *grammar_; }

  // The step itself, on an explicit state (the token mask walks many): false if `byte` is refused, and then
  // `s` is left in an unspecified state.
  static bool step(const JsonGrammar& g, GrammarState& s, uint8_t byte);
  static bool accepting(const JsonGrammar& g, const GrammarState& s);

 private:
  std::shared_ptr<const JsonGrammar> grammar_;
  GrammarState state_;
};

// The vocabulary as bytes, prepared once at load for every mask: each token's bytes (what it adds to the output,
// mid-sequence) in a trie laid out in preorder, so a mask walks shared prefixes once and skips a refused prefix's
// whole subtree. Special tokens and tokens with no bytes are never allowed; `eos` tokens are allowed exactly when
// the value is accepting. Immutable; share it between requests.
class TokenVocabulary {
 public:
  // token_bytes[id]: the bytes of token id ("" for none); rows: the model's vocabulary rows (>= token_bytes.size()).
  TokenVocabulary(const std::vector<std::string>& token_bytes, int64_t rows, std::vector<int32_t> eos);
  // From a tokenizer: every id's bytes (Tokenizer::token_bytes), special tokens left out.
  static std::shared_ptr<const TokenVocabulary> from_tokenizer(const Tokenizer& tokenizer, int64_t rows,
                                                               std::vector<int32_t> eos);

  int64_t rows() const { return rows_; }
  size_t mask_words() const { return size_t((rows_ + 63) / 64); }
  size_t trie_nodes() const { return all_.byte.size(); }
  // Tokens of plain string text (see below), and the trie nodes of the others.
  size_t plain_tokens() const { return plain_by_chars_.size(); }
  size_t other_trie_nodes() const { return others_.byte.size(); }
  const std::vector<int32_t>& eos() const { return eos_; }
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }

  // Sets `mask` (mask_words() words, bit i of word i/64 = token i) to the tokens allowed after `state`.
  // scratch: max_token_len() + 1 states (one per trie level), so that this allocates nothing.
  void fill_mask(const JsonGrammar& g, const GrammarState& state, uint64_t* mask,
                 std::span<GrammarState> scratch) const;
  size_t max_token_len() const { return max_token_len_; }

 private:
  int64_t rows_;
  std::vector<int32_t> eos_;
  std::vector<std::string> bytes_;
  // A trie in preorder (the root excluded): node i holds byte[i] at depth[i] (1-based); its subtree ends before
  // end[i]; its tokens are tokens[tok_begin[i] .. tok_begin[i + 1]).
  struct Trie {
    std::vector<uint8_t> byte;
    std::vector<uint16_t> depth;
    std::vector<uint32_t> end;
    std::vector<uint32_t> tok_begin;
    std::vector<int32_t> tokens;
  };
  static Trie build_trie(const std::vector<std::string>& bytes, std::vector<int32_t> ids);
  void walk(const Trie& t, const JsonGrammar& g, uint64_t* mask, std::span<GrammarState> scratch) const;

  // Most of a vocabulary is plain text: printable ASCII but '"' and '\', and whole UTF-8 characters. Inside a
  // string such a token is allowed exactly when its characters fit the string's maxLength, whatever the rest of
  // the state: those masks are set from precomputed lists, and only the other tokens' trie is walked.
  Trie all_;     // every token
  Trie others_;  // the tokens that are not plain text
  std::vector<int32_t> plain_by_chars_;     // plain tokens, fewest characters first
  std::vector<uint32_t> plain_upto_chars_;  // [k]: how many plain tokens have at most k characters
  std::vector<uint64_t> plain_mask_;        // every plain token
  size_t max_token_len_ = 0;
};

// One sequence's constrained decoding: the matcher, the mask buffer and a small cache of masks by state (a
// sequence often returns to the same state, e.g. inside a string). Everything is sized at construction: mask()
// and accept() allocate nothing. Not thread-safe.
class GrammarMasker {
 public:
  static constexpr size_t kCacheEntries = 16;

  GrammarMasker(std::shared_ptr<const JsonGrammar> grammar, std::shared_ptr<const TokenVocabulary> vocab);
  // The tokens allowed next: mask_words() words, valid until the next accept().
  std::span<const uint64_t> mask();
  // After mask(): no token at all is allowed (the value is whole and the vocabulary has no end token).
  bool mask_empty() const { return current_ >= 0 && cache_empty_[size_t(current_)]; }
  // Feeds the chosen token's bytes. Returns false if the token is not allowed (the state is then unchanged).
  // An EOS token is accepted (and changes nothing) when the value is accepting.
  bool accept(int32_t token);
  bool complete() const { return matcher_.complete(); }
  bool accepting() const { return matcher_.accepting(); }
  const JsonMatcher& matcher() const { return matcher_; }
  uint64_t cache_hits() const { return hits_; }
  uint64_t cache_misses() const { return misses_; }

 private:
  JsonMatcher matcher_;
  std::shared_ptr<const TokenVocabulary> vocab_;
  std::vector<uint64_t> cache_masks_;  // [kCacheEntries][mask_words]
  std::array<GrammarState, kCacheEntries> cache_states_{};
  std::vector<GrammarState> scratch_;  // fill_mask's per-trie-level states
  std::array<bool, kCacheEntries> cache_valid_{};
  std::array<bool, kCacheEntries> cache_empty_{};
  size_t next_victim_ = 0;
  int64_t current_ = -1;  // cache entry of the current state's mask, once computed
  uint64_t hits_ = 0, misses_ = 0;
};

}  // namespace moep
