// Flags and helpers shared by the subcommands that run a model.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "text/tokenizer.h"

namespace moep::cli {

struct EngineFlags {
  int threads = 0;
  std::string placement = kDefaultPlacement;
  bool mlock = false;
  bool no_prefault = false;
  std::string weights = "auto";  // auto, copy or map: EngineOptions::weights
  bool bf16_dot = false;   // prefill bf16 weights with bf16 dot products (kernels::set_bf16_dot)
  double emulate_latency_us = 0.0;
  std::string attention = "auto";  // EngineOptions::attention
  std::string head = "auto";       // EngineOptions::head
  double rank_timeout_s = 60.0;  // EngineOptions::rank_timeout_s
  std::string stats_json;  // per-layer/per-rank timing as JSON
  std::string trace;       // Chrome trace
  bool stats = false;      // print the summary table
  std::string record_routing;  // write the routing decisions (moep-routing-v1) for `moep plan --routing`
  std::string device = "auto";  // cpu, gpu or auto: EngineOptions::device
  int gpu = -1;                 // EngineOptions::gpu_index
};

// A --threads value of any command: `threads` when positive, default_thread_count() for 0.
int thread_count_or_default(int threads);

void add_engine_flags(CLI::App* cmd, EngineFlags& f);
EngineOptions make_engine_options(const std::string& model_dir, const EngineFlags& f);
// "1,2,3" -> {1,2,3}; throws moep::Error naming `flag` for anything else.
std::vector<int32_t> parse_id_list(const std::string& s, const char* flag);
// Installs what the flags ask for once the engine exists (--record-routing). Call before running.
void start_run(Engine& engine, const EngineFlags& f);
// Prints/writes what the flags ask for at the end of a run (summary table, --stats-json, --trace,
// --record-routing). Collective: every rank calls it.
void finish_run(Engine& engine, const EngineFlags& f);

// End-of-sequence ids of the model in `dir`: config.json's, generation_config.json's eos_token_id and
// tokenizer_config.json's eos_token (when a tokenizer is given). Throws moep::Error for a malformed file.
std::vector<int32_t> eos_token_ids(const std::string& dir, const ModelConfig& cfg, const Tokenizer* tok);

}  // namespace moep::cli
