// moep bench MODEL [--prompt P --gen G --batch B --threads T] [--json FILE]   |   moep bench --membw
// Prefill and decode speed, weight bytes read per token, achieved bandwidth against the machine's measured
// read bandwidth, and prefill FLOP rate against the measured FMA peak. Under mpirun, per rank too.
#include <algorithm>
#include "moep_commit.h"
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "comm/communicator.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/system_info.h"
#include "kernels/kernels.h"
#include "kernels/membw.h"
#include "kernels/peak.h"
#include "runtime/engine.h"
#include "runtime/run_report.h"

namespace moep::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double mat_bytes(const MatRef& m) { return m.empty() ? 0.0 : double(m.bytes()); }

// Weight bytes this rank reads: per step for everything but experts, and per local expert that has work.
struct WeightCost {
  double per_step = 0;    // attention, router, dense/shared MLP, output head
  double per_expert = 0;  // one expert's three matrices
  double flops_per_token_dense = 0;  // 2 × non-expert weights used per token (head excluded)
  double flops_per_expert_pair = 0;  // 2 × one expert's weights
  double head_flops = 0;
};

WeightCost weight_cost(const Engine& e) {
  WeightCost c;
  const ModelWeights& w = e.model().weights();
  const double esz = dtype_size(w.embed.dtype);
  for (const auto& L : w.layers) {
    const double attn = mat_bytes(L.wq) + mat_bytes(L.wk) + mat_bytes(L.wv) + mat_bytes(L.wo);
    const double mlp = mat_bytes(L.router) + mat_bytes(L.dense.gate) + mat_bytes(L.dense.up) +
                       mat_bytes(L.dense.down) + mat_bytes(L.shared_expert.gate) + mat_bytes(L.shared_expert.up) +
                       mat_bytes(L.shared_expert.down) + mat_bytes(L.shared_expert_gate);
    c.per_step += attn + mlp;
    c.flops_per_token_dense += 2.0 * (attn + mlp) / esz;
    for (const auto& x : L.experts)
      if (x.local) {
        c.per_expert = mat_bytes(x.gate) + mat_bytes(x.up) + mat_bytes(x.down);
        break;
      }
  }
  c.per_step += mat_bytes(w.lm_head);
  c.head_flops = 2.0 * mat_bytes(w.lm_head) / esz;
  c.flops_per_expert_pair = 2.0 * c.per_expert / esz;
  return c;
}

int64_t sum_touched(const std::vector<LayerStats>& s) {
  int64_t n = 0;
  for (const auto& l : s) n += l.experts_touched;
  return n;
}
int64_t sum_pairs(const std::vector<LayerStats>& s) {
  int64_t n = 0;
  for (const auto& l : s) n += l.expert_pairs;
  return n;
}

}  // namespace

void register_bench(CLI::App& app) {
  struct Opts {
    std::string model, json;
    int prompt = 32, gen = 32, batch = 1, warmup = 2, paired = 8;
    bool membw = false;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("bench", "Measure prefill and decode speed against the machine's limits");
  cmd->add_option("model", o->model, "Model directory (optional with --membw)");
  cmd->add_option("--prompt,-p", o->prompt, "Prompt tokens to prefill (per sequence)")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gen,-n", o->gen, "Decode steps")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--batch,-b", o->batch, "Sequences decoded together")->check(CLI::Range(1, 4096));
  cmd->add_option("--warmup", o->warmup, "Untimed decode steps first")->check(CLI::Range(0, 1000));
  cmd->add_flag("--membw", o->membw, "Measure the machine's read bandwidth (alone: only that)");
  cmd->add_option("--paired", o->paired,
                  "Decode steps, after the timed ones, each followed by a plain read of as many weight bytes "
                  "(the ratio of the two, pair by pair, is immune to slow drifts of the machine's bandwidth)")
      ->check(CLI::Range(0, 1000));
  cmd->add_option("--json", o->json, "Also write the figures as JSON");
  add_engine_flags(cmd, o->engine);
  cmd->callback([o] {
    const int threads = o->engine.threads > 0 ? o->engine.threads : default_thread_count();
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
    eo.limits.n_slots = o->batch;
    eo.limits.max_ctx = int64_t(o->prompt) + o->gen + o->warmup + o->paired + 1;
    eo.limits.max_rows = std::max<int64_t>(o->batch, std::min(o->prompt, 512));
    auto engine = Engine::create(eo, make_communicator());
    start_run(*engine, o->engine);
    Communicator& comm = engine->comm();
    Transformer& tr = engine->transformer();
    const ModelConfig& cfg = engine->config();
    const int64_t V = cfg.vocab_size, B = o->batch;
    const WeightCost cost = weight_cost(*engine);

    // Machine ceilings, measured on this rank with the engine's threads (before the model runs).
    double membw = 0, peak = 0;
    membw = kernels::measure_read_bandwidth_gbs(engine->pool(), size_t(1) << 30, 5);
    peak = kernels::measure_peak_gflops(engine->pool());

    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> tok(0, int32_t(V - 1));
    std::vector<int32_t> prompt(size_t(o->prompt));
    for (auto& t : prompt) t = tok(rng);
    std::vector<float> logits(size_t(B * V));

    // Warm-up: a short prefill and a few decode steps (pages, caches, thread wake-up), then reset.
    engine->run_sequence(std::vector<int32_t>(prompt.begin(), prompt.begin() + std::min(o->prompt, 8)), 0, 0, false,
                         false, logits.data());
    comm.barrier();
    tr.reset_stats();
    comm.reset_stats();

    // Prefill: every sequence's prompt, each as one batch (chunks of max_rows).
    const auto tp = std::chrono::steady_clock::now();
    for (int64_t b = 0; b < B; ++b) engine->run_sequence(prompt, int32_t(b), 0, false, false, &logits[size_t(b * V)]);
    comm.barrier();
    const double prefill_s = seconds_since(tp);
    const int64_t prefill_pairs = sum_pairs(tr.layer_stats());
    const double prefill_flops =
        double(B) * o->prompt * cost.flops_per_token_dense + double(prefill_pairs) * cost.flops_per_expert_pair +
        double(B) * cost.head_flops;
    const RunStats prefill_stats = gather_run_stats(*engine);

    // Decode: batch B, one token per sequence per step, greedy.
    std::vector<BatchRow> rows(static_cast<size_t>(B));
    std::vector<int32_t> next(static_cast<size_t>(B));
    auto pick = [&] {
      for (int64_t b = 0; b < B; ++b)
        next[size_t(b)] = int32_t(std::max_element(&logits[size_t(b * V)], &logits[size_t((b + 1) * V)]) -
                                  &logits[size_t(b * V)]);
    };
    pick();
    int32_t pos = o->prompt;
    for (int i = 0; i < o->warmup; ++i, ++pos) {
      for (int64_t b = 0; b < B; ++b) rows[size_t(b)] = {next[size_t(b)], int32_t(b), pos, true};
      tr.forward(rows, logits.data());
      pick();
    }
    comm.barrier();
    tr.reset_stats();
    comm.reset_stats();
    engine->pool().reset_stats();
    std::vector<double> step_ms;
    step_ms.reserve(size_t(o->gen));
    const auto td = std::chrono::steady_clock::now();
    for (int i = 0; i < o->gen; ++i, ++pos) {
      const auto ts = std::chrono::steady_clock::now();
      for (int64_t b = 0; b < B; ++b) rows[size_t(b)] = {next[size_t(b)], int32_t(b), pos, true};
      tr.forward(rows, logits.data());
      pick();
      step_ms.push_back(seconds_since(ts) * 1e3);
    }
    const ThreadPool::Stats ps = engine->pool().stats();  // this rank's pool, decode steps only
    comm.barrier();
    const double decode_s = seconds_since(td);
    const int64_t touched = sum_touched(tr.layer_stats());
    const double my_bytes = double(o->gen) * cost.per_step + double(touched) * cost.per_expert;
    RunStats stats = gather_run_stats(*engine);
    stats.tokens = int64_t(o->gen) * B;
    stats.wall_seconds = decode_s;
    // A plain read of as many bytes of this rank's mapped weights as one decode step read (the tensors in load
    // order, every thread): what the machine gives for a working set of that size in these mappings, next to
    // the 1 GiB figure above. Measured after decoding.
    std::vector<kernels::ReadSpan> spans;
    const double step_bytes = my_bytes / double(std::max(1, o->gen));
    double span_total = 0;
    for (const auto& sp : engine->model().weight_spans()) {
      if (span_total >= step_bytes) break;
      const size_t take = size_t(std::min(double(sp.bytes), step_bytes - span_total));
      spans.push_back({sp.data, take});
      span_total += double(take);
    }
    comm.barrier();
    const double weights_bw = kernels::measure_span_read_gbs(engine->pool(), spans.data(), spans.size(), 3);

    // Paired: decode steps, each right after a plain read of as many bytes (one pass). This VM's bandwidth moves
    // by tens of percent within seconds; the two halves of a pair are a tenth of a second apart, so the ratio
    // of their rates tracks the decode's efficiency, not the drift. The step's bytes are counted exactly (the
    // experts it touched).
    std::vector<double> pair_ratio;
    pair_ratio.reserve(size_t(o->paired));
    for (int i = 0; i < o->paired; ++i, ++pos) {
      comm.barrier();
      const double read_gbs = kernels::measure_span_read_gbs(engine->pool(), spans.data(), spans.size(), 1);
      comm.barrier();
      const int64_t touched0 = sum_touched(tr.layer_stats());
      const auto ts = std::chrono::steady_clock::now();
      for (int64_t b = 0; b < B; ++b) rows[size_t(b)] = {next[size_t(b)], int32_t(b), pos, true};
      tr.forward(rows, logits.data());
      pick();
      const double step_s = seconds_since(ts);
      const double bytes = cost.per_step + double(sum_touched(tr.layer_stats()) - touched0) * cost.per_expert;
      pair_ratio.push_back(bytes / step_s * 1e-9 / read_gbs);
    }
    std::sort(pair_ratio.begin(), pair_ratio.end());
    const double paired_median = pair_ratio.empty() ? 0.0 : pair_ratio[pair_ratio.size() / 2];

    // Every rank's bytes and bandwidths, for the per-rank lines.
    struct RankFig {
      double bytes, membw, peak, weights_bw, paired_median, paired_min, paired_max;
    } mine{my_bytes,
           membw,
           peak,
           weights_bw,
           paired_median,
           pair_ratio.empty() ? 0.0 : pair_ratio.front(),
           pair_ratio.empty() ? 0.0 : pair_ratio.back()};
    std::vector<RankFig> figs(static_cast<size_t>(comm.size()));
    comm.allgather(&mine, sizeof(mine), figs.data());
    finish_run(*engine, o->engine);
    if (!engine->is_root()) return;

    std::sort(step_ms.begin(), step_ms.end());
    const double p50 = step_ms[step_ms.size() / 2];
    double total_bytes = 0;
    for (const auto& f : figs) total_bytes += f.bytes;
    const double decode_tps = double(o->gen * B) / decode_s;
    const double prefill_tps = double(o->prompt * B) / prefill_s;
    const double bytes_per_token = total_bytes / double(o->gen * B);
    const double achieved = my_bytes / decode_s / 1e9;
    const double prefill_gflops = prefill_flops / prefill_s / 1e9;

    std::printf("moep bench: commit %s, %s, %d rank(s) x %d threads, kernels %s\n", MOEP_GIT_COMMIT,
                cpu_model_name().c_str(), comm.size(), engine->pool().size(), kernels::best_kernels().name);
    std::printf("model: %s, %s weights, %.2f GB resident on rank 0, %s\n", cfg.summary().c_str(),
                dtype_name(engine->model().weights().embed.dtype),
                double(engine->model().bytes_mapped_for_use()) / 1e9, engine->model().residence().c_str());
    std::printf("prefill: %d x %d tokens in %.3f s = %.2f tokens/s, %.1f GFLOP/s (rank 0 FMA peak %.1f GFLOP/s: %.0f%%)\n",
                o->batch, o->prompt, prefill_s, prefill_tps, prefill_gflops, peak, 100.0 * prefill_gflops / peak);
    std::printf("decode:  batch %d, %d steps in %.3f s = %.2f tokens/s (step p50 %.2f ms)\n", o->batch, o->gen,
                decode_s, decode_tps, p50);
    std::printf("weights read per token: %.3f GB (all ranks); rank 0 read %.2f GB/s of its measured %.1f GB/s "
                "(1 GiB on 2 MiB pages) = %.0f%%\n",
                bytes_per_token / 1e9, achieved, membw, 100.0 * achieved / membw);
    std::printf("         a plain read of %.2f GB of rank 0's weights (one step's worth): %.1f GB/s; decode read %.0f%% of that\n",
                span_total / 1e9, weights_bw, 100.0 * achieved / weights_bw);
    if (o->paired > 0)
      std::printf("         paired: %d more decode steps, each right after a plain read of as many bytes: decode read "
                  "%.0f%% of the read (median pair; %.0f-%.0f%%)\n",
                  o->paired, 100.0 * paired_median, 100.0 * mine.paired_min, 100.0 * mine.paired_max);
    if (comm.size() > 1)
      for (int r = 0; r < comm.size(); ++r)
        std::printf("  rank %d: %.2f GB/s achieved of %.1f GB/s measured (%.0f%%); plain read of its weights %.1f GB/s (%.0f%%); "
                  "paired %.0f%%\n",
                  r, figs[size_t(r)].bytes / decode_s / 1e9, figs[size_t(r)].membw,
                  100.0 * figs[size_t(r)].bytes / decode_s / 1e9 / figs[size_t(r)].membw, figs[size_t(r)].weights_bw,
                  100.0 * figs[size_t(r)].bytes / decode_s / 1e9 / figs[size_t(r)].weights_bw,
                  100.0 * figs[size_t(r)].paired_median);
    // Where rank 0's threads spent decode: inside parallel regions (all threads on one matrix op), waiting in
    // them (for a region's last task, or waking up), or outside them (one thread: norms, softmax, routing, ops
    // too small to split).
    const double region_s = double(ps.wall_ns) * 1e-9, threads_n = double(engine->pool().size());
    const double wait_share = ps.wall_ns > 0 ? 1.0 - double(ps.busy_ns) / (threads_n * double(ps.wall_ns)) : 0.0;
    std::printf("threads (rank 0): %.0f parallel regions per step, %.0f%% of decode time inside them; inside, "
                "threads waited %.1f%% of their time (last task of a region, wake-up)\n",
                double(ps.regions) / std::max(1, o->gen), 100.0 * region_s / decode_s, 100.0 * wait_share);
    std::fputs(format_stats_table(stats).c_str(), stdout);

    if (!o->json.empty()) {
      nlohmann::json j;
      j["commit"] = MOEP_GIT_COMMIT;
      j["cpu"] = cpu_model_name();
      j["ranks"] = comm.size();
      j["threads"] = engine->pool().size();
      j["kernels"] = kernels::best_kernels().name;
      j["model"] = cfg.summary();
      j["dtype"] = dtype_name(engine->model().weights().embed.dtype);
      j["batch"] = o->batch;
      j["prompt"] = o->prompt;
      j["gen"] = o->gen;
      j["emulate_latency_us"] = o->engine.emulate_latency_us;
      j["prefill_tokens_per_s"] = prefill_tps;
      j["prefill_gflops"] = prefill_gflops;
      j["peak_gflops"] = peak;
      j["decode_tokens_per_s"] = decode_tps;
      j["decode_step_ms_p50"] = p50;
      j["weight_bytes_per_token"] = bytes_per_token;
      j["achieved_gbs"] = achieved;
      j["membw_gbs"] = membw;
      j["weights_read_gbs"] = weights_bw;
      j["paired"] = {{"steps", o->paired},
                     {"decode_over_read_median", paired_median},
                     {"decode_over_read_min", mine.paired_min},
                     {"decode_over_read_max", mine.paired_max}};
      j["weights_residence"] = engine->model().residence();
      j["pool"] = {{"regions_per_step", double(ps.regions) / std::max(1, o->gen)},
                   {"region_share_of_decode", region_s / decode_s},
                   {"wait_share_inside_regions", wait_share}};
      for (int r = 0; r < comm.size(); ++r)
        j["per_rank"].push_back({{"rank", r},
                                 {"achieved_gbs", figs[size_t(r)].bytes / decode_s / 1e9},
                                 {"membw_gbs", figs[size_t(r)].membw},
                                 {"weights_read_gbs", figs[size_t(r)].weights_bw},
                                 {"paired_decode_over_read_median", figs[size_t(r)].paired_median},
                                 {"peak_gflops", figs[size_t(r)].peak}});
      // Decode time split per token (ms), averaged over ranks' rank-0 view.
      double attn = 0, router = 0, experts = 0, ar = 0, dense = 0;
      for (const auto& l : stats.ranks[0].layers) {
        attn += l.attention_ns;
        router += l.router_ns;
        experts += l.experts_ns;
        ar += l.allreduce_ns;
        dense += l.dense_ns;
      }
      const double per = 1e6 * o->gen;
      j["decode_ms_per_step"] = {{"attention", attn / per}, {"router", router / per}, {"experts", experts / per},
                                 {"allreduce", ar / per},   {"dense", dense / per},   {"head", stats.ranks[0].head_ns / per},
                                 {"total", decode_s * 1e3 / o->gen}};
      (void)prefill_stats;
      std::ofstream f(o->json);
      f << j.dump(2) << "\n";
      if (!f) fail("cannot write ", o->json);
    }
  });
}

}  // namespace moep::cli
