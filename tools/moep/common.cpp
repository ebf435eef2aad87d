#include "common.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_read.h"
#include "perf/routing.h"
#include "runtime/run_report.h"
#include "this_machine.h"

namespace moep::cli {

int thread_count_or_default(int threads) { return threads > 0 ? threads : default_thread_count(); }

void add_engine_flags(CLI::App* cmd, EngineFlags& f) {
  cmd->add_option("--threads,-t", f.threads, "Threads per rank (0: the cores this process may use)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--placement", f.placement,
                  "Expert placement over ranks: split (default: every rank a slice of every expert's ffn dimension, the "
                  "same work on every rank at any batch), contiguous or round-robin (whole experts divided among "
                  "ranks), or a JSON file {\"experts\": [[ranks]...]} (whole experts, replicas allowed)");
  cmd->add_option("--attention", f.attention,
                  "Attention over ranks: split (each rank whole KV heads and their query heads, its part of the KV "
                  "cache; one more all-reduce per layer), replicated (every rank all of it) or auto (default: the "
                  "faster as the performance model predicts it, from this machine's `moep calibrate --save` or "
                  "built-in figures; see docs/PERFORMANCE.md)")
      ->check(CLI::IsMember({"auto", "replicated", "split"}));
  cmd->add_option("--head", f.head,
                  "Output head over ranks: split (each rank its rows of the vocabulary; the logits are gathered to "
                  "rank 0 once per step), replicated or auto (default, as --attention)")
      ->check(CLI::IsMember({"auto", "replicated", "split"}));
  cmd->add_flag("--mlock", f.mlock, "Lock the weights in memory (needs a large RLIMIT_MEMLOCK)");
  cmd->add_flag("--no-prefault", f.no_prefault, "Do not load every weight page before the first token");
  cmd->add_option("--weights", f.weights,
                  "Where the weights live: copy (anonymous memory on 2 MiB pages, fastest to stream), map (read in "
                  "place from the page cache, shared by ranks on one host) or auto (copy when this is the only rank "
                  "on its host and it fits)")
      ->check(CLI::IsMember({"auto", "copy", "map"}));
  cmd->add_flag("--bf16-dot", f.bf16_dot,
                "Prefill bf16 weights with bf16 dot products (activations rounded to bf16; faster, not bit-faithful: "
                "see docs/PERFORMANCE.md)");
  cmd->add_option("--emulate-latency-us", f.emulate_latency_us,
                  "Add this many microseconds to every inter-rank exchange step (latency emulation, see docs)")
      ->check(CLI::Range(0.0, 1e7));
  cmd->add_option("--rank-timeout", f.rank_timeout_s,
                  "Under mpirun: seconds a rank waits for the others in a step before the job ends, naming the ranks "
                  "that stopped answering and their hosts (0: wait for ever; see docs/NETWORK.md)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  cmd->add_option("--device", f.device,
                  "Where the model runs: cpu, gpu (Vulkan; an error when no GPU can) or auto (default: a hardware GPU "
                  "with enough memory when there is one, else the CPU, with a note)")
      ->check(CLI::IsMember({"cpu", "gpu", "auto"}));
  cmd->add_option("--gpu", f.gpu,
                  "Which GPU (an index of `moep devices`; default: under mpirun each rank takes the GPU of its index "
                  "among the ranks on its host)")
      ->check(CLI::Range(0, 1024));
  cmd->add_flag("--stats", f.stats, "Print the per-layer time split (attention, router, experts, all-reduce, wait)");
  cmd->add_option("--stats-json", f.stats_json, "Write per-layer, per-rank statistics as JSON");
  cmd->add_option("--trace", f.trace, "Write a Chrome trace (chrome://tracing, Perfetto) of the run");
  cmd->add_option("--record-routing", f.record_routing,
                  "Write the experts chosen per layer (JSON, for `moep plan --routing`)");
  cmd->footer("The terms in --stats and in the summaries are explained in docs/GLOSSARY.md.");
}

EngineOptions make_engine_options(const std::string& model_dir, const EngineFlags& f) {
  EngineOptions o;
  o.model_dir = model_dir;
  o.threads = f.threads;
  o.placement = PlacementSpec::parse(f.placement);
  o.mlock = f.mlock;
  o.prefault = !f.no_prefault;
  o.weights = parse_weight_residence(f.weights);
  o.bf16_dot = f.bf16_dot;  // applied by Engine::create, before the ranks compare kernel sets
  o.emulate_latency_us = f.emulate_latency_us;
  o.attention = parse_split_mode(f.attention, "--attention");
  o.head = parse_split_mode(f.head, "--head");
  if (o.attention == SplitMode::Auto || o.head == SplitMode::Auto) {
    StoredProfiles p = stored_profiles_for_auto(thread_count_or_default(f.threads));
    o.auto_hardware = std::move(p.hardware);
    o.auto_network = std::move(p.network);
  }
  o.rank_timeout_s = f.rank_timeout_s;
  if (!f.trace.empty()) o.trace_events = 1 << 20;
  o.device = gpu::parse_device_kind(f.device);
  o.gpu_index = f.gpu;
  if (f.gpu >= 0 && o.device == gpu::DeviceKind::Auto) o.device = gpu::DeviceKind::Gpu;
  return o;
}

std::vector<int32_t> parse_id_list(const std::string& s, const char* flag) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i >= s.size()) break;
    size_t j = i;
    while (j < s.size() && s[j] != ',' && s[j] != ' ') ++j;
    const std::string tok = s.substr(i, j - i);
    char* end = nullptr;
    const long long v = std::strtoll(tok.c_str(), &end, 10);
    if (tok.empty() || *end != '\0' || v < 0 || v > INT32_MAX)
      fail(flag, ": '", tok, "' is not a token id (expected non-negative integers separated by commas)");
    ids.push_back(int32_t(v));
    i = j;
  }
  return ids;
}

namespace {
std::unique_ptr<perf::RoutingCounter> g_routing;  // --record-routing, rank 0
}

void start_run(Engine& engine, const EngineFlags& f) {
  if (engine.is_root() && !engine.device_note().empty()) std::fprintf(stderr, "note: %s\n", engine.device_note().c_str());
  if (f.record_routing.empty() || !engine.is_root()) return;
  if (engine.on_gpu()) fail("--record-routing runs on the CPU only (the GPU keeps the routing on the device); add --device cpu");
  const ModelConfig& c = engine.config();
  g_routing = std::make_unique<perf::RoutingCounter>(c.n_layers, c.n_experts, c.top_k, c.layer_is_moe, c.summary());
  engine.transformer().set_routing_observer(
      [](const std::vector<std::vector<int32_t>>& routing, int64_t rows) { g_routing->add_step(routing, rows); });
}

void finish_run(Engine& engine, const EngineFlags& f) {
  if (g_routing && engine.is_root()) {
    engine.transformer().set_routing_observer(nullptr);
    g_routing->write(f.record_routing);
    g_routing.reset();
  }
  if (!f.stats && f.stats_json.empty() && f.trace.empty()) return;
  const RunStats stats = gather_run_stats(engine);
  if (engine.is_root()) {
    if (f.stats) std::fputs(format_stats_table(stats).c_str(), stderr);
    if (!f.stats_json.empty()) write_stats_json(stats, f.stats_json);
    if (!f.trace.empty()) write_chrome_trace(stats, f.trace);
  }
}

// End-of-sequence ids: config.json, generation_config.json and tokenizer_config.json's eos_token.
std::vector<int32_t> eos_token_ids(const std::string& dir, const ModelConfig& cfg, const Tokenizer* tok) {
  std::vector<int32_t> ids = cfg.eos_token_ids;
  auto add_json = [&](const nlohmann::json& v) {
    if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
    if (v.is_array())
      for (const auto& x : v)
        if (x.is_number_integer()) ids.push_back(x.get<int32_t>());
  };
  namespace fs = std::filesystem;
  // A GGUF file carries its end-of-sequence id in tokenizer.ggml.eos_token_id.
  if (tok && tok->special_ids().eos >= 0) ids.push_back(tok->special_ids().eos);
  try {
    auto read_json = [](const fs::path& path, size_t cap) {
      const std::string text = read_regular_file(path.string(), cap, path.filename().string());
      check_json_depth(text, kMaxJsonDepth, path.string());
      return nlohmann::json::parse(text);
    };
    if (fs::is_directory(dir) && fs::exists(fs::path(dir) / "generation_config.json")) {
      const auto j = read_json(fs::path(dir) / "generation_config.json", kMaxConfigJsonBytes);
      if (j.contains("eos_token_id")) add_json(j["eos_token_id"]);
    }
    if (tok && fs::is_directory(dir) && fs::exists(fs::path(dir) / "tokenizer_config.json")) {
      const auto j = read_json(fs::path(dir) / "tokenizer_config.json", kMaxTokenizerConfigBytes);
      if (j.contains("eos_token")) {
        const auto& e = j["eos_token"];
        const std::string s = e.is_string() ? e.get<std::string>() : e.is_object() ? e.value("content", "") : "";
        if (!s.empty() && tok->token_to_id(s) >= 0) ids.push_back(tok->token_to_id(s));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail(dir, ": malformed generation_config.json or tokenizer_config.json (", e.what(), ")");
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace moep::cli
