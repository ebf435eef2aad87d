// moep tokenize MODEL_DIR TEXT            prints the token ids of TEXT on one line, comma-separated
// moep tokenize MODEL_DIR --decode 1,2,3  prints the text of the ids
// --no-special: encode without the special tokens the tokenizer adds (e.g. BOS); decode without special tokens.
// MODEL_DIR needs only a tokenizer.json (or is the tokenizer.json file itself).
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "text/tokenizer.h"

namespace moep::cli {

namespace {

// "1,2,3" (spaces allowed) → ids; anything else is a moep::Error naming --decode. Kept here rather than
// shared with the engine's commands so that `moep tokenize` depends on nothing but the tokenizer.
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    size_t j = i;
    while (j < s.size() && s[j] != ',' && s[j] != ' ') ++j;
    if (j == i) break;
    const std::string tok = s.substr(i, j - i);
    char* end = nullptr;
    const long long v = std::strtoll(tok.c_str(), &end, 10);
    if (*end != '\0' || v < 0 || v > INT32_MAX)
      fail("--decode: '", tok, "' is not a token id (expected non-negative integers separated by commas)");
    ids.push_back(int32_t(v));
    i = j;
  }
  return ids;
}

}  // namespace

void register_tokenize(CLI::App& app) {
  struct Opts {
    std::string model, text, decode;
    bool no_special = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("tokenize", "Print the token ids of a text, or the text of token ids (--decode)");
  cmd->add_option("model", o->model, "Model directory with a tokenizer.json (or the tokenizer.json file)")->required();
  auto* text = cmd->add_option("text", o->text, "Text to encode");
  auto* decode = cmd->add_option("--decode", o->decode, "Token ids to decode, comma-separated");
  text->excludes(decode);
  cmd->add_flag("--no-special", o->no_special, "Encode without added special tokens (BOS); decode skipping them");
  cmd->callback([o, text, decode] {
    if (decode->count() == 0 && text->count() == 0) fail("tokenize: expected TEXT to encode or --decode IDS");
    const Tokenizer tokenizer = Tokenizer::load(o->model);
    std::string out;
    if (decode->count() > 0) {
      const std::vector<int32_t> ids = parse_ids(o->decode);
      out = tokenizer.decode(ids, /*skip_special_tokens=*/o->no_special);
    } else {
      for (int32_t id : tokenizer.encode(o->text, /*add_special_tokens=*/!o->no_special)) {
        if (!out.empty()) out += ',';
        out += std::to_string(id);
      }
    }
    out += '\n';
    std::fwrite(out.data(), 1, out.size(), stdout);
  });
}

}  // namespace moep::cli
