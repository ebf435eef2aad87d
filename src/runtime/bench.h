// The measurement behind `moep bench`: on a loaded engine, the machine's ceilings (read bandwidth, FMA peak),
// a timed prefill, timed decode steps, a plain read of one step's worth of weights, and decode steps each paired
// with such a read. Collective: every rank of the engine calls run_bench with the same options.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "runtime/engine.h"
#include "runtime/run_report.h"
#include "text/json_grammar.h"

namespace moep {

struct BenchOptions {
  int prompt = 32;  // prompt tokens prefilled per sequence (random ids, seeded)
  int gen = 32;     // timed decode steps, one token per sequence each
  int batch = 1;    // sequences decoded together
  int warmup = 2;   // untimed decode steps before the timed ones
  int paired = 8;   // decode steps after the timed ones, each right after a plain read of as many weight bytes
};

// The engine limits a run of `o` needs: a slot per sequence, every position it reaches, and rows for a batch or a
// prefill chunk (at most 512 tokens).
EngineLimits bench_limits(const BenchOptions& o);

// One rank's figures (every rank gets every rank's).
struct BenchRankFigures {
  double bytes = 0;             // weight bytes read over the timed decode steps
  double membw_gbs = 0;         // read bandwidth of 1 GiB on 2 MiB pages, with the engine's threads
  double peak_gflops = 0;       // FMA peak with the engine's threads
  double weights_read_gbs = 0;  // a plain read of one decode step's worth of the rank's weights
  // Decode's read rate over the plain read's, pair by pair: median, lowest and highest (0 without pairs).
  double paired_median = 0, paired_min = 0, paired_max = 0;
};

struct BenchResult {
  double prefill_s = 0;      // all sequences' prompts, wall seconds (after a barrier)
  double prefill_flops = 0;  // this rank's: 2 × weights used per token, the experts it ran, the head
  double decode_s = 0;       // the timed decode steps, wall seconds (after a barrier)
  std::vector<double> step_ms;  // each timed decode step on this rank, sorted
  double read_bytes = 0;     // bytes of the plain read (one step's worth of this rank's weights)
  ThreadPool::Stats pool;    // this rank's pool over the timed decode steps
  RunStats decode_stats;     // over the timed decode steps (gather_run_stats: rank 0 has every rank's)
  std::vector<BenchRankFigures> ranks;  // [comm.size()]
};

BenchResult run_bench(Engine& engine, const BenchOptions& o);

// The cost of constrained decoding per decode step, alone (it runs on rank 0 between forward steps): `steps`
// steps of a random walk under the grammar (random logits, seeded; the server's default sampling at temperature 1,
// as from a random model), each timing the mask (a cache hit or a trie walk), the masked sampling against the
// same sampling unmasked, and feeding the token to the matcher. A value that completes starts over.
struct GrammarBenchResult {
  int steps = 0;
  std::vector<double> mask_ms;  // mask + accept, per step, sorted
  double mask_ms_mean = 0;
  double sample_masked_ms = 0, sample_plain_ms = 0;  // mean per step
  uint64_t cache_hits = 0, cache_misses = 0;
  int values_completed = 0;
};
GrammarBenchResult run_grammar_bench(std::shared_ptr<const JsonGrammar> grammar,
                                     std::shared_ptr<const TokenVocabulary> vocab, int steps, uint64_t seed);

}  // namespace moep
