// A ModelConfig from the metadata of a GGUF file, for the families moep runs, in llama.cpp's key names:
// general.architecture "llama" with experts (Mixtral), "qwen2moe", "qwen3moe", "olmoe", "dbrx"; then
// <arch>.block_count, .embedding_length, .attention.head_count, ... What llama.cpp hard-codes per family rather
// than storing (top-k renormalization, q/k norms) is set here the way llama.cpp builds that family's graph.
#pragma once

#include "model/config.h"

namespace moep {

class GgufFile;

// Throws moep::Error naming the file and key for an architecture moep does not run, a missing or mistyped key,
// or a shape that makes no sense (validate_config).
ModelConfig model_config_from_gguf(const GgufFile& gguf);

}  // namespace moep
