// Tokenizers in GGUF files, as llama.cpp stores them in the metadata (tokenizer.ggml.*, tokenizer.chat_template).
//
// Reading: Tokenizer::load / Tokenizer::from_gguf (tokenizer.h) and ChatTemplate::load (chat_template.h) accept
// a .gguf file. Writing: add_tokenizer_metadata below, for `moep quantize`.
//
// Tokenizer models read (tokenizer.ggml.model):
//   "llama": SentencePiece as llama.cpp runs it: merges ordered by tokenizer.ggml.scores (highest score first,
//            leftmost on a tie), "<0xXX>" byte tokens for what no token covers, spaces as ▁, and a ▁ put in front
//            of the text and after every special token unless tokenizer.ggml.add_space_prefix is false.
//   "gpt2":  byte-level BPE with tokenizer.ggml.merges (rank = position) and the pre-tokenizer regexes that
//            llama.cpp's llama-vocab.cpp gives tokenizer.ggml.pre (gguf_pre_tokenizers() lists the names read).
// Control, user-defined and unknown tokens (tokenizer.ggml.token_type 3, 4, 2) are matched in the text before
// the model, as llama.cpp does; control and unknown ones are special (decode(…, skip_special_tokens) drops them).
// Where llama.cpp and Hugging Face `tokenizers` differ, moep follows llama.cpp:
//  - no Unicode normalization (tokenizer.json's NFC normalizer of Qwen and OLMoE has no GGUF key);
//  - decode does not apply llama.cpp's clean_spaces (" ." → "."): decode(encode(text)) gives the text back, as
//    moep's tokenizer.json decode does.
// moep matches added tokens leftmost-longest (as `tokenizers`); llama.cpp takes each token in turn, longest
// first, over the whole text. The two differ only where two special tokens overlap in the text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moep {

class GgufFile;
class GgufWriter;

// The special tokens a GGUF file names, with llama.cpp's defaults for the model ("llama": bos 1, eos 2, unk 0;
// "gpt2": none). -1 where there is none. Throws moep::Error if an id is not a token of the file.
struct GgufSpecialTokens {
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = false, add_eos = false;
};
GgufSpecialTokens gguf_special_tokens(const GgufFile& file);

// The tokenizer.ggml.pre values moep reads (each a name llama.cpp gives one of its pre-tokenizer regex sets).
std::vector<std::string> gguf_pre_tokenizers();

// Writes the tokenizer of a Hugging Face model directory (tokenizer.json, and tokenizer_config.json and
// config.json when present) into `w` as llama.cpp's convert_hf_to_gguf.py does for these families:
//  - byte-level BPE (Qwen2/Qwen3-MoE, OLMoE, DBRX, …): _set_vocab_gpt2: tokenizer.ggml.model "gpt2", pre,
//    tokens (padded to config.json's vocab_size with "[PADn]" unused tokens), token_type, merges;
//  - SentencePiece-style BPE with byte fallback (Mixtral, Llama 2): _set_vocab_sentencepiece: model "llama",
//    pre "default", tokens, scores, token_type. The scores come from the merges (a token's score is minus the
//    rank of the first merge that makes it; tokens no merge makes score below every merge), which orders
//    llama.cpp's score-driven merging as the merges order it. (convert reads them from tokenizer.model, which
//    gives that order too; its tokenizer.json-only fallback writes -1000 for every token, and llama.cpp then
//    tokenizes differently from the checkpoint.) add_space_prefix is written only when false.
//  - then gguf-py's SpecialVocab: special token ids from tokenizer_config.json (looked up among tokenizer.json's
//    added tokens), else from config.json's *_token_id; add_bos/eos/sep_token from the post-processor, overridden
//    by tokenizer_config.json; tokenizer.chat_template (or named templates) from tokenizer_config.json, else
//    chat_template.jinja / chat_template.json.
// tokenizer.ggml.pre is chosen from tokenizer.json's pre-tokenizer (convert hashes the tokenization of a test
// text instead): the GPT-2 regex → "olmo" for an OLMo/OLMoE config, else "gpt-2"; the Llama 3 regex → "dbrx" for
// a DBRX config, else "llama-bpe"; the Qwen2 regex → "qwen2".
// Throws moep::Error naming the file for a missing or malformed file, a tokenizer of another kind, or a
// pre-tokenizer that is none of those; and if `w` already holds a tokenizer key.
void add_tokenizer_metadata(const std::string& model_dir, GgufWriter& w);

}  // namespace moep
