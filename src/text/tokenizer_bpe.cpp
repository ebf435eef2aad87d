// The BPE model of tokenizer.json, as `tokenizers`' models::bpe (merge order, unk and byte fallback included).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <queue>

#include "core/error.h"
#include "text/tokenizer_internal.h"

namespace moep::tok {

namespace {

using json = nlohmann::json;

constexpr int64_t kMaxTokenId = int64_t(1) << 26;  // far above any real vocabulary; guards allocations

std::optional<std::string> optional_string(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) fail(where, ".", key, ": expected a string or null");
  return it->get<std::string>();
}

bool optional_bool(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return false;
  if (!it->is_boolean()) fail(where, ".", key, ": expected true, false or null");
  return it->get<bool>();
}

}  // namespace

BpeModel::BpeModel(const json& model, const std::string& where) : where_(where) {
  if (!model.is_object()) fail(where, ": expected an object");
  if (auto t = model.find("type"); t != model.end() && !(t->is_string() && t->get<std::string>() == "BPE"))
    fail(where, ".type: model ", t->dump(), " is not supported (only BPE)");
  auto v = model.find("vocab");
  if (v == model.end() || !v->is_object()) fail(where, ".vocab: expected an object {token: id}");
  auto m = model.find("merges");
  if (m == model.end() || !m->is_array()) fail(where, ".merges: expected an array");

  vocab_.reserve(v->size());
  int64_t max_id = -1;
  for (auto it = v->begin(); it != v->end(); ++it) {
    if (!it.value().is_number_integer()) fail(where, ".vocab[\"", it.key(), "\"]: expected an integer id");
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) fail(where, ".vocab[\"", it.key(), "\"]: id ", id, " is out of range");
    vocab_[it.key()] = int32_t(id);
    max_id = std::max(max_id, id);
  }
  vocab_r_.assign(size_t(max_id + 1), std::string());
  has_id_.assign(size_t(max_id + 1), false);
  for (const auto& [token, id] : vocab_) {
    vocab_r_[size_t(id)] = token;
    has_id_[size_t(id)] = true;
  }

  unk_token_ = optional_string(model, "unk_token", where);
  continuing_subword_prefix_ = optional_string(model, "continuing_subword_prefix", where);
  end_of_word_suffix_ = optional_string(model, "end_of_word_suffix", where);
  fuse_unk_ = optional_bool(model, "fuse_unk", where);
  byte_fallback_ = optional_bool(model, "byte_fallback", where);
  ignore_merges_ = optional_bool(model, "ignore_merges", where);

  init_byte_ids();

  // Merges: rank = position in the list ("#version" lines of the legacy form excluded); a pair that appears
  // twice keeps its last rank, as tokenizers' HashMap collect does.
  merges_.reserve(m->size());
  for (size_t i = 0; i < m->size(); ++i) {
    const json& e = (*m)[i];
    std::string a, b;
    if (e.is_string()) {
      const std::string& line = e.get_ref<const std::string&>();
      if (line.starts_with("#version")) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        fail(where, ".merges[", i, "]: expected \"A B\" (two tokens separated by one space), got \"", line, "\"");
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      fail(where, ".merges[", i, "]: expected \"A B\" or [\"A\", \"B\"]");
    }
    add_merge(a, b, str_cat(where, ".merges[", i, "]"));
  }
}

BpeModel::BpeModel(const std::vector<std::string>& tokens, const std::vector<std::string>& merges, bool ignore_merges,
                   const std::string& where)
    : where_(where), ignore_merges_(ignore_merges) {
  if (int64_t(tokens.size()) >= kMaxTokenId) fail(where, ": ", tokens.size(), " tokens is more than supported");
  vocab_.reserve(tokens.size());
  vocab_r_ = tokens;
  has_id_.assign(tokens.size(), true);
  for (size_t id = 0; id < tokens.size(); ++id) {
    auto [it, added] = vocab_.emplace(tokens[id], int32_t(id));
    if (!added)
      fail(where, ": token \"", tokens[id], "\" appears twice in tokenizer.ggml.tokens (ids ", it->second, " and ", id,
           "); expected each token once");
  }
  init_byte_ids();
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& line = merges[i];
    const size_t sp = line.empty() ? std::string::npos : line.find(' ', 1);
    if (sp == std::string::npos)
      fail(where, ": tokenizer.ggml.merges[", i, "] = \"", line, "\": expected \"A B\" (two tokens and a space)");
    add_merge(line.substr(0, sp), line.substr(sp + 1), str_cat(where, ": tokenizer.ggml.merges[", i, "]"), true);
  }
}

void BpeModel::init_byte_ids() {
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[size_t(b)] = token_to_id(name);
  }
}

void BpeModel::add_merge(const std::string& a, const std::string& b, const std::string& what, bool keep_first) {
  const int32_t a_id = token_to_id(a), b_id = token_to_id(b);
  if (a_id < 0) fail(what, ": token \"", a, "\" is not in the vocabulary");
  if (b_id < 0) fail(what, ": token \"", b, "\" is not in the vocabulary");
  const size_t prefix_len = continuing_subword_prefix_ ? continuing_subword_prefix_->size() : 0;
  if (b.size() < prefix_len) fail(what, ": token \"", b, "\" is shorter than the subword prefix");
  const std::string merged = a + b.substr(prefix_len);
  const int32_t new_id = token_to_id(merged);
  if (new_id < 0) fail(what, ": merged token \"", merged, "\" is not in the vocabulary");
  const MergeInfo info{next_rank_++, new_id};
  if (keep_first) merges_.emplace(pair_key(a_id, b_id), info);
  else merges_[pair_key(a_id, b_id)] = info;
}

int32_t BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= vocab_r_.size() || !has_id_[size_t(id)]) return nullptr;
  return &vocab_r_[size_t(id)];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const int32_t id = token_to_id(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWord;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t c;
    int32_t prev, next;
    size_t len;  // bytes of the word it covers; 0 once merged into its left neighbour
  };
  std::vector<Symbol> symbols;
  symbols.reserve(w.size());
  auto add = [&](int32_t c, size_t len) {
    const int32_t n = int32_t(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back(Symbol{c, n - 1, -1, len});
  };
  auto unk_id = [&]() {
    const int32_t id = token_to_id(*unk_token_);
    if (id < 0) fail(where_, ".unk_token: \"", *unk_token_, "\" is not in the vocabulary");
    return id;
  };

  // 1. One symbol per character (with the subword prefix / word suffix), unknown characters as bytes or unk.
  bool has_unk = false;  // a pending unk token (fused over consecutive unknown characters)
  int32_t unk_pending_id = -1;
  size_t unk_len = 0;
  std::string s;
  for (size_t i = 0; i < w.size();) {
    const size_t char_len = std::min(utf8_len(static_cast<unsigned char>(w[i])), w.size() - i);
    const bool is_first = i == 0, is_last = i + char_len == w.size();
    s.clear();
    if (!is_first && continuing_subword_prefix_) s += *continuing_subword_prefix_;
    s.append(w.substr(i, char_len));
    if (is_last && end_of_word_suffix_) s += *end_of_word_suffix_;
    i += char_len;

    if (const int32_t id = token_to_id(s); id >= 0) {
      if (has_unk) {
        add(unk_pending_id, unk_len);
        has_unk = false;
      }
      add(id, char_len);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char ch : s) all = all && byte_ids_[static_cast<unsigned char>(ch)] >= 0;
      if (all) {
        for (char ch : s) add(byte_ids_[static_cast<unsigned char>(ch)], 1);
        continue;
      }
    }
    if (unk_token_) {
      if (has_unk && fuse_unk_) {
        unk_len += char_len;
      } else {
        if (has_unk) add(unk_pending_id, unk_len);
        has_unk = true;
        unk_pending_id = unk_id();
        unk_len = char_len;
      }
    }
  }
  if (has_unk) add(unk_pending_id, unk_len);

  // 2. Merge the pair of lowest rank (leftmost first) until none is left, as tokenizers' Word::merge_all.
  struct Merge {
    size_t pos;
    uint32_t rank;
    int32_t new_id;
  };
  auto later = [](const Merge& a, const Merge& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
  std::priority_queue<Merge, std::vector<Merge>, decltype(later)> queue(later);
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (auto it = merges_.find(pair_key(symbols[i].c, symbols[i + 1].c)); it != merges_.end())
      queue.push(Merge{i, it->second.rank, it->second.new_id});
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const size_t next_pos = size_t(cur.next);
    const Symbol right = symbols[next_pos];
    auto it = merges_.find(pair_key(cur.c, right.c));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale entry

    cur.c = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next > -1 && size_t(right.next) < symbols.size()) symbols[size_t(right.next)].prev = int32_t(top.pos);

    if (cur.prev >= 0) {
      if (auto p = merges_.find(pair_key(symbols[size_t(cur.prev)].c, cur.c)); p != merges_.end())
        queue.push(Merge{size_t(cur.prev), p->second.rank, p->second.new_id});
    }
    if (cur.next >= 0 && size_t(cur.next) < symbols.size()) {
      if (auto n = merges_.find(pair_key(cur.c, symbols[size_t(cur.next)].c)); n != merges_.end())
        queue.push(Merge{top.pos, n->second.rank, n->second.new_id});
    }
  }
  for (const Symbol& sym : symbols)
    if (sym.len != 0) out.push_back(sym.c);
}

}  // namespace moep::tok
