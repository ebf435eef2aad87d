// moep synth OUT_DIR [--preset NAME] [--arch A --layers L --d-model D --ffn F --experts E --top-k K ...]
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "common.h"
#include "core/data_paths.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/synth.h"
#include "progress.h"

namespace moep::cli {

void register_synth(CLI::App& app) {
  struct Opts {
    std::string out, preset;
    SynthSpec spec;
    int threads = 0;
    bool no_tokenizer = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "synth", "Write a random-weight checkpoint in the Hugging Face layout (for benchmarks and trying a cluster)");
  cmd->add_option("out", o->out, "Output directory")->required();
  cmd->add_option("--preset", o->preset, "Start from a preset: " + synth_preset_names() + " (flags given override its values; the defaults shown are for no preset)");
  cmd->add_option("--arch", o->spec.arch, "dbrx, mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3, deepseek_v2 or gpt_oss");
  cmd->add_option("--layers", o->spec.layers, "Number of layers")->check(CLI::Range(1, 1000));
  cmd->add_option("--d-model", o->spec.d_model, "Hidden size")->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--ffn", o->spec.ffn, "Intermediate size of one expert")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--experts", o->spec.experts, "Experts per MoE layer")->check(CLI::Range(1, 4096));
  cmd->add_option("--top-k", o->spec.top_k, "Experts per token")->check(CLI::Range(1, 4096));
  cmd->add_option("--heads", o->spec.heads, "Attention heads")->check(CLI::Range(1, 4096));
  cmd->add_option("--kv-heads", o->spec.kv_heads, "Key/value heads")->check(CLI::Range(1, 4096));
  cmd->add_option("--head-dim", o->spec.head_dim, "Head dimension (qwen3_moe; 0: d_model/heads)");
  cmd->add_option("--shared-ffn", o->spec.shared_ffn, "Shared expert size (qwen2_moe; 0: none)");
  cmd->add_option("--vocab", o->spec.vocab, "Vocabulary size (0: the tokenizer's)");
  cmd->add_option("--q-lora-rank", o->spec.q_lora_rank, "deepseek: query compression rank (0: q_proj)");
  cmd->add_option("--kv-lora-rank", o->spec.kv_lora_rank, "deepseek: key/value latent size (cached per position)");
  cmd->add_option("--shared-experts", o->spec.shared_experts, "deepseek: shared experts (each of size --ffn)");
  cmd->add_option("--groups", o->spec.groups, "deepseek: expert groups (n_group)");
  cmd->add_option("--topk-groups", o->spec.topk_groups, "deepseek: groups kept per token (topk_group)");
  cmd->add_option("--dense-layers", o->spec.dense_layers, "deepseek: dense first layers (first_k_dense_replace)");
  cmd->add_option("--dense-ffn", o->spec.dense_ffn, "deepseek: the dense layers' MLP size (0: 4 × ffn)");
  cmd->add_option("--dtype", o->spec.dtype, "Weight dtype: bf16, f16 or f32");
  cmd->add_option("--seed", o->spec.seed, "Random seed");
  cmd->add_option("--tokenizer", o->spec.tokenizer,
                  "tokenizer.json to include (default: the GPT-2 tokenizer shipped with moep)");
  cmd->add_flag("--no-tokenizer", o->no_tokenizer, "Write no tokenizer");
  cmd->add_option("--shard-gb", o->spec.shard_gb, "Largest safetensors shard in GB");
  cmd->add_option("--threads,-t", o->threads, "Threads for generating weights (0: the cores this process may use)");
  cmd->callback([o, cmd] {
    SynthSpec spec = o->spec;
    if (!o->preset.empty()) {
      SynthSpec p;
      if (!synth_preset(o->preset, &p))
        fail("--preset: unknown preset '", o->preset, "' (known: ", synth_preset_names(), ")");
      // Flags given explicitly override the preset.
      auto given = [&](const char* flag) { return cmd->count(flag) > 0; };
      if (given("--arch")) p.arch = spec.arch;
      if (given("--layers")) p.layers = spec.layers;
      if (given("--d-model")) p.d_model = spec.d_model;
      if (given("--ffn")) p.ffn = spec.ffn;
      if (given("--experts")) p.experts = spec.experts;
      if (given("--top-k")) p.top_k = spec.top_k;
      if (given("--heads")) p.heads = spec.heads;
      if (given("--kv-heads")) p.kv_heads = spec.kv_heads;
      if (given("--head-dim")) p.head_dim = spec.head_dim;
      if (given("--shared-ffn")) p.shared_ffn = spec.shared_ffn;
      if (given("--vocab")) p.vocab = spec.vocab;
      if (given("--q-lora-rank")) p.q_lora_rank = spec.q_lora_rank;
      if (given("--kv-lora-rank")) p.kv_lora_rank = spec.kv_lora_rank;
      if (given("--groups")) p.groups = spec.groups;
      if (given("--shared-experts")) p.shared_experts = spec.shared_experts;
      if (given("--topk-groups")) p.topk_groups = spec.topk_groups;
      if (given("--dense-layers")) p.dense_layers = spec.dense_layers;
      if (given("--dense-ffn")) p.dense_ffn = spec.dense_ffn;
      if (given("--dtype")) p.dtype = spec.dtype;
      if (given("--seed")) p.seed = spec.seed;
      if (given("--shard-gb")) p.shard_gb = spec.shard_gb;
      p.tokenizer = spec.tokenizer;
      spec = p;
    }
    if (o->no_tokenizer) {
      spec.tokenizer.clear();
    } else if (spec.tokenizer.empty()) {
      spec.tokenizer = find_data_path("tests/data/tokenizers/gpt2/tokenizer.json", "tokenizers/gpt2/tokenizer.json");
      if (spec.tokenizer.empty())
        std::fprintf(stderr, "moep synth: note: the GPT-2 tokenizer moep ships was not found; writing no tokenizer\n");
    }
    const auto t0 = std::chrono::steady_clock::now();
    ProgressBar bar("writing weights");
    write_synthetic_checkpoint(spec, o->out, thread_count_or_default(o->threads),
                               [&](size_t done, size_t total) { bar.update(done, total); });
    bar.finish();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "moep synth: wrote %s in %.1f s (random weights)\n", o->out.c_str(), secs);
  });
}

}  // namespace moep::cli
