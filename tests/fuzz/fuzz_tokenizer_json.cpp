// Fuzzes tokenizer.json loading (src/text/tokenizer*.cpp: models, normalizers, pre-tokenizers, post-processors,
// decoders, added tokens), then uses what loaded: encodes a fixed text, decodes the ids back, and streams them.
// The input is the tokenizer.json text.
#include "fuzz_util.h"
#include "text/tokenizer.h"

using namespace moep;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] {
    const Tokenizer tok = Tokenizer::from_json(text, "fuzz/tokenizer.json");
    const std::vector<int32_t> ids = tok.encode("Hello, world! <s> 123 héllo\n\tdon't ▁x 日本", true);
    std::string out = tok.decode(ids, false) + tok.decode(ids, true);
    StreamDecoder stream(tok, true);
    for (int32_t id : ids) out += stream.step(id);
    out += stream.finish();
    const int32_t n = tok.vocab_size();
    for (int32_t id : {0, 1, n - 1, n, -1}) {
      out += tok.id_to_token(id);
      out += tok.token_bytes(id);
      (void)tok.is_special(id);
    }
    (void)tok.special_ids();
    volatile size_t sink = out.size();
    (void)sink;
  });
  return 0;
}
