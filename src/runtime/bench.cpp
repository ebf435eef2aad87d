#include "runtime/bench.h"

#include "runtime/sampler.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "kernels/membw.h"
#include "kernels/peak.h"

namespace moep {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double mat_bytes(const MatRef& m) { return m.empty() ? 0.0 : double(m.bytes()); }
// Weights (not bytes: a GGUF model mixes types of different sizes) of a matrix.
double mat_weights(const MatRef& m) { return m.empty() ? 0.0 : double(m.rows) * double(m.cols); }

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
  double expert_weights = 0;
  for (const auto& L : w.layers) {
    const MatRef* non_expert[] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.router, &L.dense.gate, &L.dense.up, &L.dense.down,
                                  &L.shared_expert.gate, &L.shared_expert.up, &L.shared_expert.down,
                                  &L.shared_expert_gate};
    for (const MatRef* m : non_expert) {
      c.per_step += mat_bytes(*m);
      c.flops_per_token_dense += 2.0 * mat_weights(*m);
    }
    for (const auto& x : L.experts)
      if (x.local) {
        c.per_expert = mat_bytes(x.gate) + mat_bytes(x.up) + mat_bytes(x.down);
        expert_weights = mat_weights(x.gate) + mat_weights(x.up) + mat_weights(x.down);
        break;
      }
  }
  c.per_step += mat_bytes(w.lm_head);
  c.head_flops = 2.0 * mat_weights(w.lm_head);
  c.flops_per_expert_pair = 2.0 * expert_weights;
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

// Greedy decode of `batch` sequences (slot b is sequence b), one token each per step, from the logits of their
// last prefill. After the prefill, with a split head only rank 0 has the logits: it picks, and broadcasts the
// picks. Each decode step asks the transformer for the picks alone (with a split head, one all-gather of each
// rank's best (value, id) per row instead of the logits).
class GreedyDecoder {
 public:
  GreedyDecoder(Transformer& tr, Communicator& comm, bool split_head, int64_t batch, int64_t vocab)
      : tr_(tr), comm_(comm), split_head_(split_head), batch_(batch), vocab_(vocab), logits_(size_t(batch * vocab)),
        rows_(size_t(batch)), next_(size_t(batch)) {}
  float* logits() { return logits_.data(); }
  float* logits_of(int64_t b) { return &logits_[size_t(b * vocab_)]; }
  // Takes each sequence's most likely next token from the logits.
  void pick() {
    for (int64_t b = 0; b < batch_; ++b)
      next_[size_t(b)] = int32_t(std::max_element(&logits_[size_t(b * vocab_)], &logits_[size_t((b + 1) * vocab_)]) -
                                 &logits_[size_t(b * vocab_)]);
    if (split_head_) comm_.broadcast(next_.data(), next_.size() * sizeof(int32_t), 0);
  }
  // One step at position pos: every sequence's picked token, then the next picks.
  void step(int32_t pos) {
    for (int64_t b = 0; b < batch_; ++b) rows_[size_t(b)] = {next_[size_t(b)], int32_t(b), pos, true};
    tr_.forward(rows_, logits_.data(), next_.data());
  }

 private:
  Transformer& tr_;
  Communicator& comm_;
  bool split_head_;
  int64_t batch_, vocab_;
  std::vector<float> logits_;
  std::vector<BatchRow> rows_;
  std::vector<int32_t> next_;
};

void reset_engine_stats(Engine& engine) {
  engine.transformer().reset_stats();
  engine.comm().reset_stats();
}

// The first of the rank's mapped weights (tensors in load order) up to `bytes` in all.
std::vector<kernels::ReadSpan> weight_spans_up_to(const Engine& engine, double bytes, double* total) {
  std::vector<kernels::ReadSpan> spans;
  *total = 0;
  for (const auto& sp : engine.model().weight_spans()) {
    if (*total >= bytes) break;
    const size_t take = size_t(std::min(double(sp.bytes), bytes - *total));
    spans.push_back({sp.data, take});
    *total += double(take);
  }
  return spans;
}

// Paired: decode steps, each right after a plain read of as many bytes (one pass). This VM's bandwidth moves by
// tens of percent within seconds; the two halves of a pair are a tenth of a second apart, so the ratio of their
// rates tracks the decode's efficiency, not the drift. The step's bytes are counted exactly (the experts it
// touched). Returns the ratios, sorted; *pos advances by `steps`.
std::vector<double> paired_ratios(Engine& engine, GreedyDecoder& decoder, const WeightCost& cost,
                                  const std::vector<kernels::ReadSpan>& spans, int steps, int32_t* pos) {
  Communicator& comm = engine.comm();
  Transformer& tr = engine.transformer();
  std::vector<double> ratios;
  ratios.reserve(size_t(steps));
  for (int i = 0; i < steps; ++i, ++*pos) {
    comm.barrier();
    const double read_gbs = kernels::measure_span_read_gbs(engine.pool(), spans.data(), spans.size(), 1);
    comm.barrier();
    const int64_t touched0 = sum_touched(tr.layer_stats());
    const auto ts = std::chrono::steady_clock::now();
    decoder.step(*pos);
    const double step_s = seconds_since(ts);
    const double bytes = cost.per_step + double(sum_touched(tr.layer_stats()) - touched0) * cost.per_expert;
    ratios.push_back(bytes / step_s * 1e-9 / read_gbs);
  }
  std::sort(ratios.begin(), ratios.end());
  return ratios;
}

}  // namespace

EngineLimits bench_limits(const BenchOptions& o) {
  EngineLimits limits;
  limits.n_slots = o.batch;
  limits.max_ctx = int64_t(o.prompt) + o.gen + o.warmup + o.paired + 1;
  limits.max_rows = std::max<int64_t>(o.batch, std::min(o.prompt, 512));
  return limits;
}

BenchResult run_bench(Engine& engine, const BenchOptions& o) {
  Communicator& comm = engine.comm();
  Transformer& tr = engine.transformer();
  const int64_t V = engine.config().vocab_size, B = o.batch;
  const WeightCost cost = weight_cost(engine);
  BenchResult res;
  BenchRankFigures mine;

  // Machine ceilings, measured on this rank with the engine's threads (before the model runs).
  // On a GPU, the device's: a plain shader reading 1 GiB of device memory.
  gpu::GpuForward* gpu = engine.gpu();
  mine.membw_gbs = gpu ? gpu->measure_read_bandwidth_gbs(uint64_t(1) << 30, 10)
                       : kernels::measure_read_bandwidth_gbs(engine.pool(), size_t(1) << 30, 5);
  mine.peak_gflops = kernels::measure_peak_gflops(engine.pool());

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(V - 1));
  std::vector<int32_t> prompt(size_t(o.prompt));
  for (auto& t : prompt) t = tok(rng);
  GreedyDecoder decoder(tr, comm, engine.dense_split().head, B, V);

  // Warm-up: a short prefill and a few decode steps (pages, caches, thread wake-up), then reset.
  engine.run_sequence(std::vector<int32_t>(prompt.begin(), prompt.begin() + std::min(o.prompt, 8)), 0, 0, false,
                      false, decoder.logits());
  comm.barrier();
  reset_engine_stats(engine);

  // Prefill: every sequence's prompt, each as one batch (chunks of max_rows).
  const auto tp = std::chrono::steady_clock::now();
  for (int64_t b = 0; b < B; ++b) engine.run_sequence(prompt, int32_t(b), 0, false, false, decoder.logits_of(b));
  comm.barrier();
  res.prefill_s = seconds_since(tp);
  res.prefill_flops = double(B) * o.prompt * cost.flops_per_token_dense +
                      double(sum_pairs(tr.layer_stats())) * cost.flops_per_expert_pair + double(B) * cost.head_flops;

  // Decode: batch B, one token per sequence per step, greedy.
  decoder.pick();
  int32_t pos = o.prompt;
  for (int i = 0; i < o.warmup; ++i, ++pos) decoder.step(pos);
  comm.barrier();
  reset_engine_stats(engine);
  engine.pool().reset_stats();
  res.step_ms.reserve(size_t(o.gen));
  const auto td = std::chrono::steady_clock::now();
  for (int i = 0; i < o.gen; ++i, ++pos) {
    const auto ts = std::chrono::steady_clock::now();
    decoder.step(pos);
    res.step_ms.push_back(seconds_since(ts) * 1e3);
  }
  res.pool = engine.pool().stats();  // this rank's pool, decode steps only
  comm.barrier();
  res.decode_s = seconds_since(td);
  mine.bytes = double(o.gen) * cost.per_step + double(sum_touched(tr.layer_stats())) * cost.per_expert;
  res.decode_stats = gather_run_stats(engine);
  res.decode_stats.tokens = int64_t(o.gen) * B;
  res.decode_stats.wall_seconds = res.decode_s;

  // A plain read of as many bytes of this rank's mapped weights as one decode step read (the tensors in load
  // order, every thread): what the machine gives for a working set of that size in these mappings, next to the
  // 1 GiB figure above. Measured after decoding.
  // On a GPU the weights are in device memory: the device read test stands for it, and there are no pairs.
  const std::vector<kernels::ReadSpan> spans =
      weight_spans_up_to(engine, mine.bytes / double(std::max(1, o.gen)), &res.read_bytes);
  comm.barrier();
  mine.weights_read_gbs =
      gpu ? mine.membw_gbs : kernels::measure_span_read_gbs(engine.pool(), spans.data(), spans.size(), 3);

  const std::vector<double> ratios = paired_ratios(engine, decoder, cost, spans, gpu ? 0 : o.paired, &pos);
  if (!ratios.empty()) {
    mine.paired_median = ratios[ratios.size() / 2];
    mine.paired_min = ratios.front();
    mine.paired_max = ratios.back();
  }
  std::sort(res.step_ms.begin(), res.step_ms.end());

  res.ranks.resize(size_t(comm.size()));
  comm.allgather(&mine, sizeof(mine), res.ranks.data());
  return res;
}

GrammarBenchResult run_grammar_bench(std::shared_ptr<const JsonGrammar> grammar,
                                     std::shared_ptr<const TokenVocabulary> vocab, int steps, uint64_t seed) {
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  const int64_t V = vocab->rows();
  SamplingParams sp;  // the server's defaults (top-k 40, top-p, min-p) at temperature 1
  sp.seed = seed;
  sp.temperature = 1.f;
  Sampler masked(V, sp), plain(V, sp);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  std::vector<float> logits(static_cast<size_t>(V)), copy(static_cast<size_t>(V));
  GrammarBenchResult r;
  auto masker = std::make_unique<GrammarMasker>(grammar, vocab);
  double masked_total = 0, plain_total = 0;
  for (int i = 0; i < steps; ++i) {
    if (masker->complete()) {
      r.cache_hits += masker->cache_hits();
      r.cache_misses += masker->cache_misses();
      masker = std::make_unique<GrammarMasker>(grammar, vocab);
      r.values_completed++;
    }
    for (float& x : logits) x = u(rng);
    copy = logits;
    const auto t0 = clock::now();
    const auto allowed = masker->mask();
    const auto t1 = clock::now();
    const int32_t tok = masked.sample(logits.data(), {}, allowed);
    const auto t2 = clock::now();
    (void)plain.sample(copy.data(), {});
    const auto t3 = clock::now();
    double accept_ms = 0;
    if (std::find(vocab->eos().begin(), vocab->eos().end(), tok) != vocab->eos().end()) {
      masker = std::make_unique<GrammarMasker>(grammar, vocab);  // the value ended: start over
      r.values_completed++;
    } else {
      const auto a0 = clock::now();
      MOEP_ASSERT(masker->accept(tok), "the masked sampler chose a refused token");
      accept_ms = ms(a0, clock::now());
    }
    r.mask_ms.push_back(ms(t0, t1) + accept_ms);
    masked_total += ms(t1, t2);
    plain_total += ms(t2, t3);
  }
  r.cache_hits += masker->cache_hits();
  r.cache_misses += masker->cache_misses();
  r.steps = steps;
  double sum = 0;
  for (double x : r.mask_ms) sum += x;
  r.mask_ms_mean = steps ? sum / steps : 0;
  r.sample_masked_ms = steps ? masked_total / steps : 0;
  r.sample_plain_ms = steps ? plain_total / steps : 0;
  std::sort(r.mask_ms.begin(), r.mask_ms.end());
  return r;
}

}  // namespace moep
