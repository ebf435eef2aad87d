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
  // deepseek_v3 / deepseek_v2 (multi-head latent attention): the MLA dimensions, routing groups, shared experts
  // (each of size ffn; shared_ffn is not used), and the dense first layers with their MLP size.
  int64_t shared_experts = 1;
  int64_t q_lora_rank = 1536;  // 0: q_proj (DeepSeek-V2-Lite)
  int64_t kv_lora_rank = 512;
  int64_t qk_nope_head_dim = 128, qk_rope_head_dim = 64, v_head_dim = 128;
  int64_t groups = 1, topk_groups = 1;
  int64_t dense_layers = 0;  // first_k_dense_replace
  int64_t dense_ffn = 0;     // 0: 4 · ffn
  std::string dtype = "bf16";  // bf16, f16, f32
  uint64_t seed = 1;
  std::string tokenizer;     // tokenizer.json to copy in ("" for none)
  double shard_gb = 4.0;     // largest shard file
};

// Presets: "dbrx" (DBRX's true layer dimensions), "mixtral-8x7b", "mixtral-8x22b", "qwen3-30b-a3b",
// "qwen1.5-moe-a2.7b", "olmoe-1b-7b", "deepseek-v3" (DeepSeek-V3/R1 671B), "kimi-k2", "deepseek-v2-lite",
// "gpt-oss-120b", "gpt-oss-20b", "demo" (tiny). Layer counts are small (the real ones: V3 and K2 61, V2-Lite 27,
// gpt-oss-120b 36, gpt-oss-20b 24); --layers sets them. Returns false for an unknown name.
bool synth_preset(const std::string& name, SynthSpec* spec);
std::string synth_preset_names();

// Writes config.json, the safetensors files (sharded above shard_gb, with an index), tokenizer.json and
// tokenizer_config.json (with a ChatML chat template) when a tokenizer is given, and a README noting that the
// weights are random. `progress(bytes done, total)` may be empty. Throws moep::Error for a bad spec or I/O error.
void write_synthetic_checkpoint(const SynthSpec& spec, const std::string& out_dir, int threads,
                                const std::function<void(size_t, size_t)>& progress = {});

}  // namespace moep
