// moep tokenize MODEL_DIR TEXT            prints the token ids of TEXT on one line, comma-separated
// moep tokenize MODEL_DIR --decode 1,2,3  prints the text of the ids
// --no-special: encode without the special tokens the tokenizer adds (e.g. BOS); decode without special tokens.
// MODEL_DIR needs only a tokenizer.json (or is the tokenizer.json file itself).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "text/tokenizer.h"

namespace moep::cli {

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
      const std::vector<int32_t> ids = parse_id_list(o->decode, "--decode");
      for (int32_t id : ids)
        if (id >= tokenizer.vocab_size() || tokenizer.id_to_token(id).empty())
          fail("--decode: token id ", id, " is not in the vocabulary of ", o->model, " (ids 0..",
               tokenizer.vocab_size() - 1, ")");
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
