// moep bench MODEL [--prompt P --gen G --batch B --threads T] [--json FILE]   |   moep bench --membw
// moep bench [MODEL] --grammar json_object|SCHEMA.json [--grammar-vocab tokenizer.json|FILE.tiktoken]: the cost of
// constrained decoding per step (token mask, masked sampling), beside the model's decode step when MODEL is given.
// Prefill and decode speed, weight bytes read per token, achieved bandwidth against the machine's measured
// read bandwidth, and prefill FLOP rate against the measured FMA peak. Under mpirun, per rank too. The
// measuring is runtime/bench.h's; this parses the flags and prints.
#include <algorithm>
#include "moep_commit.h"
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/system_info.h"
#include "kernels/kernels.h"
#include "kernels/membw.h"
#include "runtime/bench.h"
#include "runtime/engine.h"
#include "runtime/run_report.h"
#include "text/tokenizer.h"

namespace moep::cli {

namespace {

// A .tiktoken file (OpenAI's vocabularies: "<base64 of the token's bytes> <rank>" per line): bytes by rank.
std::vector<std::string> read_tiktoken(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail("--grammar-vocab: cannot read ", path);
  auto b64 = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  std::vector<std::string> bytes;
  std::string token;
  int64_t rank = 0, line = 0;
  while (f >> token >> rank) {
    ++line;
    if (rank < 0 || rank > (int64_t(1) << 24)) fail(path, ":", line, ": rank ", rank, " is out of range");
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : token) {
      if (c == '=') break;
      const int v = b64(c);
      if (v < 0) fail(path, ":", line, ": '", token, "' is not base64");
      acc = (acc << 6) | uint32_t(v);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out += char((acc >> bits) & 0xFF);
      }
    }
    if (size_t(rank) >= bytes.size()) bytes.resize(size_t(rank) + 1);
    bytes[size_t(rank)] = std::move(out);
  }
  if (bytes.empty()) fail(path, ": no tokens (expected \"<base64> <rank>\" lines)");
  return bytes;
}

}  // namespace

void register_bench(CLI::App& app) {
  struct Opts {
    std::string model, json, grammar, grammar_vocab;
    int grammar_steps = 400;
    BenchOptions bench;
    bool membw = false;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("bench", "Measure prefill and decode speed against the machine's limits");
  cmd->add_option("model", o->model, "Model directory or .gguf file (optional with --membw)");
  cmd->add_option("--prompt,-p", o->bench.prompt, "Prompt tokens to prefill (per sequence)")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gen,-n", o->bench.gen, "Decode steps")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--batch,-b", o->bench.batch, "Sequences decoded together")->check(CLI::Range(1, 4096));
  cmd->add_option("--warmup", o->bench.warmup, "Untimed decode steps first")->check(CLI::Range(0, 1000));
  cmd->add_flag("--membw", o->membw, "Measure the machine's read bandwidth (alone: only that)");
  cmd->add_option("--paired", o->bench.paired,
                  "Decode steps, after the timed ones, each followed by a plain read of as many weight bytes "
                  "(the ratio of the two, pair by pair, is immune to slow drifts of the machine's bandwidth)")
      ->check(CLI::Range(0, 1000));
  cmd->add_option("--json", o->json, "Also write the figures as JSON");
  cmd->add_option("--grammar", o->grammar,
                  "Also measure constrained decoding: json_object, or a file holding a JSON Schema");
  cmd->add_option("--grammar-vocab", o->grammar_vocab,
                  "The vocabulary for --grammar: a tokenizer.json (or its directory) or a .tiktoken file (default: the "
                  "model's tokenizer)");
  cmd->add_option("--grammar-steps", o->grammar_steps, "Steps of the --grammar measurement")->check(CLI::Range(1, 1 << 20));
  add_engine_flags(cmd, o->engine);
  cmd->callback([o] {
    const int threads = thread_count_or_default(o->engine.threads);
    // Constrained decoding's cost per step, on this machine (rank 0 samples, so one thread's time is what counts).
    auto grammar_bench = [o](int64_t rows, double step_ms, const std::string& model_tokenizer) {
      std::shared_ptr<const JsonGrammar> g;
      if (o->grammar == "json_object") {
        g = JsonGrammar::any_object();
      } else {
        std::ifstream f(o->grammar);
        if (!f) fail("--grammar: cannot read ", o->grammar, " (expected json_object or a JSON Schema file)");
        nlohmann::ordered_json schema;
        try {
          schema = nlohmann::ordered_json::parse(f);
        } catch (const nlohmann::json::exception& e) {
          fail("--grammar: ", o->grammar, " is not JSON: ", e.what());
        }
        try {
          g = JsonGrammar::from_schema(schema);
        } catch (const JsonSchemaError& e) {
          fail("--grammar: ", o->grammar, ": ", e.what());
        }
      }
      const std::string vocab_path = o->grammar_vocab.empty() ? model_tokenizer : o->grammar_vocab;
      if (vocab_path.empty()) fail("--grammar: give --grammar-vocab (a tokenizer.json or .tiktoken file) or a model");
      std::shared_ptr<const TokenVocabulary> vocab;
      int64_t tokens = 0;
      if (vocab_path.size() > 9 && vocab_path.substr(vocab_path.size() - 9) == ".tiktoken") {
        std::vector<std::string> bytes = read_tiktoken(vocab_path);
        tokens = int64_t(bytes.size());
        const int32_t eos = int32_t(bytes.size());  // cl100k's <|endoftext|> comes right after the ranks
        const int64_t n = std::max<int64_t>(rows, tokens + 1);
        vocab = std::make_shared<TokenVocabulary>(bytes, n, std::vector<int32_t>{eos});
      } else {
        const Tokenizer tok = Tokenizer::load(vocab_path);
        tokens = tok.vocab_size();
        std::vector<int32_t> eos;
        for (const char* name : {"<|endoftext|>", "</s>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>"})
          if (tok.token_to_id(name) >= 0) eos.push_back(tok.token_to_id(name));
        vocab = TokenVocabulary::from_tokenizer(tok, std::max<int64_t>(rows, tokens), eos);
      }
      const GrammarBenchResult r = run_grammar_bench(g, vocab, o->grammar_steps, 1);
      const auto& m = r.mask_ms;
      std::printf("grammar: %s; vocabulary %s: %lld tokens, %lld rows, trie of %zu nodes (%zu plain-text tokens; "
                  "the others' trie %zu nodes); commit %s, %s, 1 thread\n",
                  o->grammar.c_str(), vocab_path.c_str(), (long long)tokens, (long long)vocab->rows(),
                  vocab->trie_nodes(), vocab->plain_tokens(), vocab->other_trie_nodes(), MOEP_GIT_COMMIT,
                  cpu_model_name().c_str());
      std::printf("grammar: %d steps (%d values completed): mask + accept per step mean %.3f ms, p50 %.3f, p90 %.3f, "
                  "p99 %.3f, max %.3f ms; mask cache %llu hits, %llu misses; sampling %.3f ms masked vs %.3f ms plain\n",
                  r.steps, r.values_completed, r.mask_ms_mean, m[m.size() / 2], m[m.size() * 9 / 10],
                  m[m.size() * 99 / 100], m.back(), (unsigned long long)r.cache_hits,
                  (unsigned long long)r.cache_misses, r.sample_masked_ms, r.sample_plain_ms);
      if (step_ms > 0) {
        const double extra = r.mask_ms_mean + std::max(0.0, r.sample_masked_ms - r.sample_plain_ms);
        std::printf("grammar: per decode step %.3f ms of the model's %.2f ms step (p50) = %.2f%%\n", extra, step_ms,
                    100.0 * extra / step_ms);
      }
    };
    if (o->model.empty() && !o->grammar.empty()) {
      grammar_bench(0, 0, "");
      return;
    }
    if (o->model.empty()) {
      if (!o->membw) fail("bench: give a model directory, or --membw to measure only the memory bandwidth");
      ThreadPool pool(threads);
      const double bw = kernels::measure_read_bandwidth_gbs(pool, size_t(1) << 30, 5);
      const double bw4k = kernels::measure_read_bandwidth_gbs(pool, size_t(1) << 30, 5, false);
      std::printf("memory read bandwidth: %.1f GB/s on 2 MiB pages, %.1f GB/s on 4 KiB pages (1 GiB, %d threads, %s, "
                  "commit %s)\n",
                  bw, bw4k, threads, cpu_model_name().c_str(), MOEP_GIT_COMMIT);
      return;
    }
    EngineOptions eo = make_engine_options(o->model, o->engine);
    eo.limits = bench_limits(o->bench);
    auto engine = Engine::create(eo, make_communicator());
    start_run(*engine, o->engine);
    Communicator& comm = engine->comm();
    const ModelConfig& cfg = engine->config();
    const BenchOptions& bo = o->bench;
    const BenchResult res = run_bench(*engine, bo);
    finish_run(*engine, o->engine);
    if (!engine->is_root()) return;

    const BenchRankFigures& mine = res.ranks[size_t(comm.rank())];
    const std::vector<BenchRankFigures>& figs = res.ranks;
    const double membw = mine.membw_gbs, peak = mine.peak_gflops, my_bytes = mine.bytes;
    const double weights_bw = mine.weights_read_gbs, paired_median = mine.paired_median;
    const double prefill_s = res.prefill_s, decode_s = res.decode_s, span_total = res.read_bytes;
    const ThreadPool::Stats& ps = res.pool;
    const RunStats& stats = res.decode_stats;
    const int64_t B = bo.batch;
    const double p50 = res.step_ms[res.step_ms.size() / 2];
    double total_bytes = 0;
    for (const auto& f : figs) total_bytes += f.bytes;
    const double decode_tps = double(bo.gen * B) / decode_s;
    const double prefill_tps = double(bo.prompt * B) / prefill_s;
    const double bytes_per_token = total_bytes / double(bo.gen * B);
    const double achieved = my_bytes / decode_s / 1e9;
    const double prefill_gflops = res.prefill_flops / prefill_s / 1e9;

    std::printf("moep bench: commit %s, %s, %d rank(s) x %d threads, kernels %s\n", MOEP_GIT_COMMIT,
                cpu_model_name().c_str(), comm.size(), engine->pool().size(), kernels::best_kernels().name);
    std::printf("device: %s\n", engine->device_summary().c_str());
    std::printf("model: %s, %s weights, %.2f GB resident on rank 0, %s\n", cfg.summary().c_str(),
                dtype_name(engine->model().weights().embed.dtype),
                double(engine->model().bytes_mapped_for_use()) / 1e9, engine->model().residence().c_str());
    std::printf("split: %s\n", engine->dense_split_note().c_str());
    {
      // Per position of one sequence, all layers, this rank (MLA: the latent and the rope key only).
      const Transformer& tr = engine->transformer();
      const size_t per_token = tr.kv_cache_bytes_per_token();
      if (cfg.is_mla())
        std::printf("KV cache: %zu bytes per token (multi-head latent attention: %lld layers x (%lld latent + %lld rope) "
                    "f32)\n", per_token, (long long)cfg.n_layers, (long long)cfg.mla.kv_lora_rank,
                    (long long)cfg.mla.qk_rope_head_dim);
      else
        std::printf("KV cache: %zu bytes per token\n", per_token);
    }
    for (const RankStats& r : stats.ranks)
      std::printf("  rank %d resident: %.3f GB of weights, %.1f MB of KV cache\n", r.rank, double(r.weight_bytes) / 1e9,
                  double(r.kv_cache_bytes) / 1e6);
    std::printf("prefill: %d x %d tokens in %.3f s = %.2f tokens/s, %.1f GFLOP/s (rank 0 FMA peak %.1f GFLOP/s: %.0f%%)\n",
                o->bench.batch, o->bench.prompt, prefill_s, prefill_tps, prefill_gflops, peak, 100.0 * prefill_gflops / peak);
    std::printf("decode:  batch %d, %d steps in %.3f s = %.2f tokens/s (step p50 %.2f ms)\n", o->bench.batch, o->bench.gen,
                decode_s, decode_tps, p50);
    std::printf("weights read per token: %.3f GB (all ranks); rank 0 read %.2f GB/s of its measured %.1f GB/s "
                "(%s) = %.0f%%\n",
                bytes_per_token / 1e9, achieved, membw,
                engine->on_gpu() ? "a plain shader reading 1 GiB of device memory" : "1 GiB on 2 MiB pages",
                100.0 * achieved / membw);
    if (!engine->on_gpu())
      std::printf("         a plain read of %.2f GB of rank 0's weights (one step's worth): %.1f GB/s; decode read %.0f%% of that\n",
                span_total / 1e9, weights_bw, 100.0 * achieved / weights_bw);
    if (bo.paired > 0)
      std::printf("         paired: %d more decode steps, each right after a plain read of as many bytes: decode read "
                  "%.0f%% of the read (median pair; %.0f-%.0f%%)\n",
                  bo.paired, 100.0 * paired_median, 100.0 * mine.paired_min, 100.0 * mine.paired_max);
    if (comm.size() > 1)
      for (int r = 0; r < comm.size(); ++r)
        std::printf("  rank %d: %.2f GB/s achieved of %.1f GB/s measured (%.0f%%); plain read of its weights %.1f GB/s (%.0f%%); "
                  "paired %.0f%%\n",
                  r, figs[size_t(r)].bytes / decode_s / 1e9, figs[size_t(r)].membw_gbs,
                  100.0 * figs[size_t(r)].bytes / decode_s / 1e9 / figs[size_t(r)].membw_gbs, figs[size_t(r)].weights_read_gbs,
                  100.0 * figs[size_t(r)].bytes / decode_s / 1e9 / figs[size_t(r)].weights_read_gbs,
                  100.0 * figs[size_t(r)].paired_median);
    // Where rank 0's threads spent decode: inside parallel regions (all threads on one matrix op), waiting in
    // them (for a region's last task, or waking up), or outside them (one thread: norms, softmax, routing, ops
    // too small to split).
    const double region_s = double(ps.wall_ns) * 1e-9, threads_n = double(engine->pool().size());
    const double wait_share = ps.wall_ns > 0 ? 1.0 - double(ps.busy_ns) / (threads_n * double(ps.wall_ns)) : 0.0;
    std::printf("threads (rank 0): %.0f parallel regions per step, %.0f%% of decode time inside them; inside, "
                "threads waited %.1f%% of their time (last task of a region, wake-up)\n",
                double(ps.regions) / std::max(1, bo.gen), 100.0 * region_s / decode_s, 100.0 * wait_share);
    std::fputs(format_stats_table(stats).c_str(), stdout);
    if (!o->grammar.empty()) grammar_bench(cfg.vocab_size, p50, o->model);

    if (!o->json.empty()) {
      nlohmann::json j;
      j["commit"] = MOEP_GIT_COMMIT;
      j["cpu"] = cpu_model_name();
      j["ranks"] = comm.size();
      j["threads"] = engine->pool().size();
      j["kernels"] = kernels::best_kernels().name;
      j["device"] = engine->device_summary();
      j["model"] = cfg.summary();
      j["dtype"] = dtype_name(engine->model().weights().embed.dtype);
      j["batch"] = bo.batch;
      j["prompt"] = bo.prompt;
      j["gen"] = bo.gen;
      j["emulate_latency_us"] = o->engine.emulate_latency_us;
      j["attention"] = engine->dense_split().attention ? "split" : "replicated";
      j["head"] = engine->dense_split().head ? "split" : "replicated";
      j["placement"] = engine->placement().describe();
      j["prefill_tokens_per_s"] = prefill_tps;
      j["prefill_gflops"] = prefill_gflops;
      j["peak_gflops"] = peak;
      j["decode_tokens_per_s"] = decode_tps;
      j["decode_step_ms_p50"] = p50;
      j["weight_bytes_per_token"] = bytes_per_token;
      j["achieved_gbs"] = achieved;
      j["membw_gbs"] = membw;
      j["weights_read_gbs"] = weights_bw;
      j["paired"] = {{"steps", bo.paired},
                     {"decode_over_read_median", paired_median},
                     {"decode_over_read_min", mine.paired_min},
                     {"decode_over_read_max", mine.paired_max}};
      j["weights_residence"] = engine->model().residence();
      j["pool"] = {{"regions_per_step", double(ps.regions) / std::max(1, bo.gen)},
                   {"region_share_of_decode", region_s / decode_s},
                   {"wait_share_inside_regions", wait_share}};
      for (int r = 0; r < comm.size(); ++r)
        j["per_rank"].push_back({{"rank", r},
                                 {"achieved_gbs", figs[size_t(r)].bytes / decode_s / 1e9},
                                 {"membw_gbs", figs[size_t(r)].membw_gbs},
                                 {"weights_read_gbs", figs[size_t(r)].weights_read_gbs},
                                 {"paired_decode_over_read_median", figs[size_t(r)].paired_median},
                                 {"peak_gflops", figs[size_t(r)].peak_gflops}});
      // Decode time split per token (ms), averaged over ranks' rank-0 view.
      double attn = 0, router = 0, experts = 0, ar = 0, dense = 0;
      for (const auto& l : stats.ranks[0].layers) {
        attn += l.attention_ns;
        router += l.router_ns;
        experts += l.experts_ns;
        ar += l.allreduce_ns;
        dense += l.dense_ns;
      }
      const double per = 1e6 * bo.gen;
      j["decode_ms_per_step"] = {{"attention", attn / per}, {"router", router / per}, {"experts", experts / per},
                                 {"allreduce", ar / per},   {"dense", dense / per},   {"head", stats.ranks[0].head_ns / per},
                                 {"total", decode_s * 1e3 / bo.gen}};
      std::ofstream f(o->json);
      f << j.dump(2) << "\n";
      if (!f) fail("cannot write ", o->json);
    }
  });
}

}  // namespace moep::cli
