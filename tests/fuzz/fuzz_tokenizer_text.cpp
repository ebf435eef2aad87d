// Fuzzes encoding and decoding of arbitrary text and ids with the real tokenizers stored under tests/data
// (byte-level BPE, SentencePiece-style Metaspace and byte fallback, DeepSeek-V3's splits, …).
//
// Input: first byte picks the tokenizer and the flags; the rest is the text to encode, and also, read as
// little-endian int32s, ids to decode (out-of-range ids included).
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "text/tokenizer.h"

using namespace moep;

#ifndef MOEP_TESTDATA_DIR
#error "MOEP_TESTDATA_DIR must name tests/data"
#endif

namespace {

const std::vector<Tokenizer>& tokenizers() {
  static const std::vector<Tokenizer> all = [] {
    std::vector<Tokenizer> v;
    for (const char* name : {"gpt2", "llama-spm", "mistral-metaspace", "deepseek-v3", "qwen2", "dbrx", "olmoe",
                             "mixtral"})
      v.push_back(Tokenizer::load(std::string(MOEP_TESTDATA_DIR) + "/tokenizers/" + name + "/tokenizer.json"));
    return v;
  }();
  return all;
}

}  // namespace

// The 8 tokenizers load before fuzzing starts (about 4 s under ASan): loaded by the first input instead, their
// time counted against that input's -timeout, and in fork mode against every job's first input.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& all = tokenizers();
  const Tokenizer& tok = all[(data[0] & 0x0f) % all.size()];
  const bool add_special = data[0] & 0x10;
  const bool skip_special = data[0] & 0x20;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  fuzz::expect_clean([&] {
    const std::vector<int32_t> ids = tok.encode(text, add_special);
    std::string out = tok.decode(ids, skip_special);
    StreamDecoder stream(tok, skip_special);
    for (int32_t id : ids) out += stream.step(id);
    out += stream.finish();
    // Without special tokens, byte-level tokenizers round-trip any valid UTF-8 (checked elsewhere); here it is
    // enough that nothing breaks.
    std::vector<int32_t> raw((size - 1) / 4);
    if (!raw.empty()) std::memcpy(raw.data(), data + 1, raw.size() * 4);
    out += tok.decode(raw, skip_special);
    StreamDecoder raw_stream(tok, skip_special);
    for (int32_t id : raw) {
      out += raw_stream.step(id);
      out += tok.token_bytes(id);
      out += tok.id_to_token(id);
    }
    out += raw_stream.finish();
    volatile size_t sink = out.size();
    (void)sink;
  });
  return 0;
}
