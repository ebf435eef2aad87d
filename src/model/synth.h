// Random-weight checkpoints in the Hugging Face layout, of any size, for benchmarks, tests and for trying a
// cluster before downloading a real model. The tensors written are exactly those the loader asks for (the
// architecture's binder is run in recording mode), so a synthetic checkpoint always loads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace moep {

struct SynthSpec {
  std::string arch = "mixtral";  // dbrx, mixtral, qwen2_moe, qwen3_moe, olmoe, gpt_oss
  int64_t layers = 2;
  int64_t d_model = 256;
  int64_t ffn = 512;         // intermediate size of one expert
  int64_t experts = 8;
  int64_t top_k = 2;
  int64_t heads = 8;
  int64_t kv_heads = 2;
  int64_t head_dim = 0;      // 0: d_model / heads
  int64_t vocab = 0;         // 0: the tokenizer's size (or 32000 without one)
  int64_t shared_ffn = 0;    // qwen2_moe shared expert (0: none)
  int64_t max_position = 4096;
  std::string dtype = "bf16";  // bf16, f16, f32
  uint64_t seed = 1;
  std::string tokenizer;     // tokenizer.json to copy in ("" for none)
  double shard_gb = 4.0;     // largest shard file
};

// Presets: "dbrx" (DBRX's true layer dimensions), "mixtral-8x7b", "mixtral-8x22b", "qwen3-30b-a3b",
// "qwen1.5-moe-a2.7b", "olmoe-1b-7b", "gpt-oss-120b", "gpt-oss-20b", "demo" (tiny). Returns false for an unknown name.
bool synth_preset(const std::string& name, SynthSpec* spec);
std::string synth_preset_names();

// Writes config.json, the safetensors files (sharded above shard_gb, with an index), tokenizer.json and
// tokenizer_config.json (with a ChatML chat template) when a tokenizer is given, and a README noting that the
// weights are random. `progress(bytes done, total)` may be empty. Throws moep::Error for a bad spec or I/O error.
void write_synthetic_checkpoint(const SynthSpec& spec, const std::string& out_dir, int threads,
                                const std::function<void(size_t, size_t)>& progress = {});

}  // namespace moep
