#include "runtime/engine.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iomanip>

#include "core/error.h"
#include "io/mapped_file.h"
#include "kernels/kernels.h"
#include "model/gguf_model.h"

namespace moep {

void run_collectively(Communicator& comm, const std::function<void()>& fn) {
  std::string err;
  try {
    fn();
  } catch (const Error& e) {
    err = e.what();
    if (err.empty()) err = "unknown error";
  }
  if (comm.size() == 1) {
    if (!err.empty()) throw CollectiveError(err);
    return;
  }
  // Share each rank's message (truncated to a fixed size) so that every rank fails alike.
  constexpr size_t kMsg = 512;
  std::vector<char> mine(kMsg, 0), all(kMsg * size_t(comm.size()), 0);
  std::strncpy(mine.data(), err.c_str(), kMsg - 1);
  comm.allgather(mine.data(), kMsg, all.data());
  for (int r = 0; r < comm.size(); ++r) {
    const char* m = &all[size_t(r) * kMsg];
    if (m[0] != 0) throw CollectiveError(str_cat("rank ", r, ": ", m));
  }
}

SplitMode parse_split_mode(std::string_view name, const char* flag) {
  if (name == "auto") return SplitMode::Auto;
  if (name == "replicated") return SplitMode::Replicated;
  if (name == "split") return SplitMode::Split;
  fail(flag, " '", name, "' is unknown (expected auto, replicated or split)");
}

DenseSplit choose_dense_split(const ModelConfig& cfg, int n_ranks, SplitMode attention, SplitMode head,
                              double latency_us, bool gguf, bool on_gpu, std::string* why) {
  const double bytes_per_weight = double(dtype_row_bytes(cfg.stored_dtype, 256)) / 256.0;
  int log2n = 0;
  while ((1 << log2n) < n_ranks) ++log2n;
  const double exchange_s = (kAutoExchangeUs + latency_us) * 1e-6 * log2n;
  // Decides one part: `refuse` says why it cannot be divided (empty: it can).
  auto decide = [&](const char* part, SplitMode mode, const std::string& refuse, double bytes, double largest_share,
                    double exchanges) {
    if (mode == SplitMode::Replicated) {
      *why += str_cat(part, ": replicated (asked)\n");
      return false;
    }
    if (n_ranks == 1 && mode == SplitMode::Auto) {
      *why += str_cat(part, ": replicated (auto: one rank has nothing to divide)\n");
      return false;
    }
    if (!refuse.empty()) {
      if (mode == SplitMode::Split) fail(part, " split: ", refuse);
      *why += str_cat(part, ": replicated (auto: ", refuse, ")\n");
      return false;
    }
    if (mode == SplitMode::Split) {
      *why += str_cat(part, ": split (asked)\n");
      return true;
    }
    const double saved_s = bytes * (1.0 - largest_share) / kAutoRankBytesPerSecond, added_s = exchanges * exchange_s;
    const bool split = saved_s > added_s;
    *why += str_cat(part, ": ", split ? "split" : "replicated", " (auto: ", std::fixed, std::setprecision(0),
                    saved_s * 1e6, " us of reading saved per token against ", added_s * 1e6, " us of exchanges)\n");
    return split;
  };
  const std::string gpu = on_gpu ? "the GPU backend runs attention and the head whole on every rank" : "";
  auto first = [](std::initializer_list<std::string> reasons) {
    for (const auto& r : reasons)
      if (!r.empty()) return r;
    return std::string();
  };
  if (why) why->clear();
  std::string scratch;
  if (!why) why = &scratch;
  DenseSplit s;
  int64_t most_kv = 0;
  for (int r = 0; r < n_ranks; ++r) most_kv = std::max(most_kv, kv_head_split(cfg.n_kv_heads, r, n_ranks).count);
  const double attention_bytes =
      double(cfg.n_layers) * double(2 * cfg.q_dim() + 2 * cfg.kv_dim()) * double(cfg.d_model) * bytes_per_weight;
  const double attention_exchanges = double(cfg.n_layers) * (cfg.qk_norm == QKNorm::Full ? 2 : 1);
  s.attention = decide("attention", attention,
                       first({gpu, gguf ? "a GGUF model's attention is not divided yet" : "",
                              cfg.is_mla() ? "multi-head latent attention is not divided" : ""}),
                       attention_bytes, double(most_kv) / double(cfg.n_kv_heads), attention_exchanges);
  int64_t most_rows = 0;
  for (int r = 0; r < n_ranks; ++r) most_rows = std::max(most_rows, ffn_split(cfg.vocab_size, r, n_ranks).count);
  s.head = decide("head", head, first({gpu}), double(cfg.vocab_size) * double(cfg.d_model) * bytes_per_weight,
                  double(most_rows) / double(cfg.vocab_size), 1.0);
  // One line: "attention: ... (...); head: ... (...)".
  why->pop_back();
  for (size_t at = why->find('\n'); at != std::string::npos; at = why->find('\n', at)) why->replace(at, 1, "; ");
  return s;
}

namespace {

// What every rank must agree on before running in lockstep.
struct Agreement {
  uint32_t protocol;
  uint32_t n_ranks;
  uint64_t model_fingerprint;
  uint64_t placement_fingerprint;
  int64_t max_rows, n_slots, max_ctx;
  char kernels[16];
  char model[96];  // a short description, to name the difference
  char weights_dtype[8];
  uint8_t split_attention, split_head;
};

void check_agreement(Communicator& comm, const Agreement& mine) {
  std::vector<Agreement> all(static_cast<size_t>(comm.size()));
  comm.allgather(&mine, sizeof(Agreement), all.data());
  const Agreement& a = all[0];
  for (int r = 1; r < comm.size(); ++r) {
    const Agreement& b = all[size_t(r)];
    auto diff = [&](const char* what, const std::string& va, const std::string& vb) {
      fail("ranks disagree on the ", what, ": rank 0 has ", va, ", rank ", r, " has ", vb, "; refusing to run");
    };
    if (a.protocol != b.protocol) diff("protocol version", std::to_string(a.protocol), std::to_string(b.protocol));
    if (a.n_ranks != b.n_ranks) diff("number of ranks", std::to_string(a.n_ranks), std::to_string(b.n_ranks));
    if (a.model_fingerprint != b.model_fingerprint)
      diff("model", str_cat(a.model, " (fingerprint ", std::hex, a.model_fingerprint, ")"),
           str_cat(b.model, " (fingerprint ", std::hex, b.model_fingerprint, ")"));
    if (a.placement_fingerprint != b.placement_fingerprint)
      diff("expert placement (fingerprint)", str_cat(std::hex, a.placement_fingerprint),
           str_cat(std::hex, b.placement_fingerprint));
    if (a.split_attention != b.split_attention || a.split_head != b.split_head)
      diff("split of attention / head (--attention, --head)", str_cat(int(a.split_attention), "/", int(a.split_head)),
           str_cat(int(b.split_attention), "/", int(b.split_head)));
    if (std::strncmp(a.weights_dtype, b.weights_dtype, sizeof(a.weights_dtype)) != 0)
      diff("weight dtype", a.weights_dtype, b.weights_dtype);
    if (std::strncmp(a.kernels, b.kernels, sizeof(a.kernels)) != 0)
      diff("kernel set (set MOEP_KERNELS to one every rank supports, and --bf16-dot on all ranks or none)",
           a.kernels, b.kernels);
    if (a.max_rows != b.max_rows || a.n_slots != b.n_slots || a.max_ctx != b.max_ctx)
      diff("engine limits (rows/slots/context)", str_cat(a.max_rows, "/", a.n_slots, "/", a.max_ctx),
           str_cat(b.max_rows, "/", b.n_slots, "/", b.max_ctx));
  }
}

}  // namespace

std::unique_ptr<Engine> Engine::create(const EngineOptions& opts, std::unique_ptr<Communicator> comm) {
  std::unique_ptr<Engine> e(new Engine());
  e->comm_ = std::move(comm);
  Communicator& c = *e->comm_;
  c.set_emulated_latency_us(opts.emulate_latency_us);
  const int host_ranks = ranks_on_this_host(c);  // before anything can fail on one rank only
  run_collectively(c, [&] {
    // Before the kernel set's name goes into the agreement: "avx512+bf16dot" while on, so all ranks must agree.
    kernels::set_bf16_dot(opts.bf16_dot);
    const ModelConfig cfg = opts.model_config ? *opts.model_config : load_model_config(opts.model_dir);
    e->placement_ = ExpertPlacement::from_spec(opts.placement, cfg.n_layers, std::max<int64_t>(cfg.n_experts, 1),
                                               c.size());
    // A GGUF model's quantized down projections are cut between blocks (a checkpoint's anywhere).
    e->placement_.set_ffn_block(ffn_block_weights(opts.model_dir));
    e->placement_.require_splittable(cfg.expert_ffn);
    e->placement_.require_splittable(cfg.shared_expert_ffn);
    // Split attention and head run on the CPU only: where a GPU may be used (asked for, or auto with a
    // hardware GPU present), auto keeps them whole.
    bool may_use_gpu = opts.device == gpu::DeviceKind::Gpu;
    if (opts.device == gpu::DeviceKind::Auto) {
      try {
        for (const auto& d : gpu::list_gpus()) may_use_gpu |= d.usable && !d.software;
      } catch (const Error&) {
        // no Vulkan: the CPU it is
      }
    }
    const DenseSplit split = choose_dense_split(cfg, c.size(), opts.attention, opts.head, opts.emulate_latency_us,
                                                is_gguf_path(opts.model_dir), may_use_gpu, &e->dense_split_note_);
    LoadOptions lo;
    lo.share = e->placement_.share(c.rank(), split);
    lo.prefault = opts.prefault;
    lo.mlock = opts.mlock;
    // On a GPU the host's copy is read once, to upload it: read it in place rather than copy it first.
    lo.residence = opts.device == gpu::DeviceKind::Gpu ? WeightResidence::Map : residence_on_host(opts.weights, host_ranks);
    lo.progress = opts.load_progress;
    e->model_ = Model::load(opts.model_dir, cfg, lo);
  });
  const ModelConfig& cfg = e->model_->config();
  Agreement mine{};
  mine.protocol = kProtocolVersion;
  mine.n_ranks = uint32_t(c.size());
  mine.model_fingerprint = cfg.fingerprint();
  mine.placement_fingerprint = e->placement_.fingerprint();
  mine.max_rows = opts.limits.max_rows;
  mine.n_slots = opts.limits.n_slots;
  mine.max_ctx = opts.limits.max_ctx;
  std::strncpy(mine.kernels, kernels::best_kernels().name, sizeof(mine.kernels) - 1);
  const std::string short_model = str_cat(cfg.model_type, " ", cfg.n_layers, " layers, d_model ", cfg.d_model, ", ",
                                          cfg.n_experts, " experts top-", cfg.top_k);
  std::strncpy(mine.model, short_model.c_str(), sizeof(mine.model) - 1);
  std::strncpy(mine.weights_dtype, dtype_name(e->model_->weights().embed.dtype), sizeof(mine.weights_dtype) - 1);
  mine.split_attention = e->model_->weights().split.attention;
  mine.split_head = e->model_->weights().split.head;
  run_collectively(c, [&] { check_agreement(c, mine); });

  if (opts.prefault) prefault_code_pages();
  const int threads = opts.threads > 0 ? opts.threads : default_thread_count();
  e->pool_ = std::make_unique<ThreadPool>(threads);
  // Every thread's kernel scratch and the stack its tasks run on now, not on whichever later step first hands
  // that thread a task.
  e->pool_->on_every_thread([] {
    kernels::warm_thread_scratch();
    prefault_stack(size_t(64) << 10);
  });
  // The device: chosen on every rank, failing on all ranks together.
  int gpu = -1;
  const int local_rank = local_rank_on_this_host(c);
  run_collectively(c, [&] {
    if (opts.device == gpu::DeviceKind::Cpu) return;
    if (const DType q = e->model_->quantized_dtype(); dtype_is_quantized(q)) {
      const std::string why = str_cat("this model's weights are block-quantized (", dtype_name(q),
                                      "), which the GPU backend does not read yet");
      if (opts.device == gpu::DeviceKind::Gpu) fail("--device gpu: ", why, "; run it with --device cpu");
      e->device_note_ = str_cat("--device auto: ", why, "; running on the CPU");
      return;
    }
    std::vector<gpu::DeviceSummary> devs;
    try {
      devs = gpu::list_gpus();
    } catch (const Error& err) {
      if (opts.device == gpu::DeviceKind::Gpu) throw;
      e->device_note_ = str_cat("--device auto: no GPU (", err.what(), "); running on the CPU");
      return;
    }
    std::vector<int> usable;
    for (const auto& d : devs)
      if (d.usable && (opts.device == gpu::DeviceKind::Gpu || !d.software)) usable.push_back(d.index);
    if (opts.gpu_index >= 0) {
      if (size_t(opts.gpu_index) >= devs.size())
        fail("--gpu ", opts.gpu_index, ": Vulkan sees ", devs.size(), " device", devs.size() == 1 ? "" : "s",
             devs.empty() ? "" : str_cat(" (0..", devs.size() - 1, ")"), "; `moep devices` lists them");
      gpu = opts.gpu_index;
    } else if (usable.empty()) {
      std::string seen;
      for (const auto& d : devs)
        seen += str_cat(seen.empty() ? "" : "; ", d.index, ": ", d.name, " (", d.type,
                        d.usable ? "" : str_cat(", unusable: ", d.why_unusable), ")");
      if (opts.device == gpu::DeviceKind::Gpu)
        fail("--device gpu: no usable Vulkan device", seen.empty() ? "" : str_cat(" (seen: ", seen, ")"),
             "; run on the CPU with --device cpu");
      e->device_note_ = str_cat("--device auto: no GPU", seen.empty() ? "" : str_cat(" (only ", seen, ")"),
                                "; running on the CPU");
      return;
    } else {
      gpu = usable[size_t(local_rank) % usable.size()];
    }
    if (const std::string missing = gpu::unsupported_features(e->model_->config()); !missing.empty()) {
      const std::string why = str_cat("the GPU backend lacks ", e->model_->config().model_type, "'s ", missing);
      if (opts.device == gpu::DeviceKind::Gpu) fail("--device gpu: ", why, "; use --device cpu");
      e->device_note_ = str_cat("--device auto: ", why, "; running on the CPU");
      gpu = -1;
      return;
    }
    if (const DenseSplit& sp = e->model_->weights().split; sp.attention || sp.head) {
      const std::string why = "split attention or head (--attention, --head) runs on the CPU only";
      if (opts.device == gpu::DeviceKind::Gpu) fail("--device gpu: ", why, "; use --attention replicated --head replicated");
      e->device_note_ = str_cat("--device auto: ", why, "; running on the CPU");
      gpu = -1;
      return;
    }
    if (opts.device == gpu::DeviceKind::Auto) {
      const uint64_t need = gpu::device_bytes_needed(*e->model_, opts.limits);
      const auto& d = devs[size_t(gpu)];
      if (need > d.memory_bytes) {
        e->device_note_ = str_cat("--device auto: GPU ", gpu, " (", d.name, ") has ", double(d.memory_bytes) / 1e9,
                                  " GB, this rank needs ", double(need) / 1e9, " GB; running on the CPU");
        gpu = -1;
      }
    }
  });
  run_collectively(c, [&] {
    e->transformer_ = std::make_unique<Transformer>(*e->model_, e->placement_, c, *e->pool_, opts.limits, gpu);
  });
  if (const gpu::GpuForward* g = e->transformer_->gpu())
    e->device_summary_ = str_cat("GPU ", g->device().index, ": ", g->device().name, " (", g->device().driver, "), ",
                                 std::fixed, std::setprecision(2), double(g->device_bytes()) / 1e9, " GB on the device");
  else
    e->device_summary_ = str_cat("CPU, ", threads, " threads, ", kernels::best_kernels().name, " kernels");
  if (opts.trace_events) e->transformer_->tracer().enable(opts.trace_events);
  // Memory per rank, for the user (experts divided over ranks shrink each rank's share).
  uint64_t mem[2] = {uint64_t(e->model_->bytes_mapped_for_use()), resident_set_bytes()};
  std::vector<uint64_t> all(size_t(2 * c.size()));
  c.allgather(mem, sizeof(mem), all.data());
  for (int r = 0; r < c.size(); ++r) {
    e->rank_weight_bytes_.push_back(all[size_t(2 * r)]);
    e->rank_rss_bytes_.push_back(all[size_t(2 * r + 1)]);
  }
  e->rows_.reserve(size_t(opts.limits.max_rows));
  // From here the ranks run in lockstep; loading, above, may take very different times on different ranks.
  c.set_rank_timeout(opts.rank_timeout_s);
  return e;
}

uint64_t resident_set_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, rss = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &rss);
  std::fclose(f);
  return n == 2 ? uint64_t(rss) * uint64_t(sysconf(_SC_PAGESIZE)) : 0;
}

std::string Engine::memory_summary() const {
  std::string s;
  for (size_t r = 0; r < rank_weight_bytes_.size(); ++r)
    s += str_cat(r ? ", " : "", "rank ", r, ": ", std::fixed, std::setprecision(2), double(rank_weight_bytes_[r]) / 1e9,
                 " GB weights (RSS ", double(rank_rss_bytes_[r]) / 1e9, " GB)");
  return str_cat(s, " of a ", std::fixed, std::setprecision(2), double(model_->checkpoint_bytes()) / 1e9,
                 " GB checkpoint");
}

void Engine::run_sequence(const std::vector<int32_t>& tokens, int32_t slot, int32_t start_pos, bool all_logits,
                          bool incremental, float* out) {
  const int64_t n = int64_t(tokens.size());
  const int64_t vocab = config().vocab_size;
  const int64_t chunk = incremental ? 1 : transformer_->limits().max_rows;
  for (int64_t b = 0; b < n; b += chunk) {
    const int64_t e = std::min(n, b + chunk);
    rows_.clear();
    for (int64_t i = b; i < e; ++i)
      rows_.push_back(BatchRow{tokens[size_t(i)], slot, int32_t(start_pos + i), all_logits || i == n - 1});
    float* dst = all_logits ? out + b * vocab : out;
    transformer_->forward(rows_, dst);
  }
}

}  // namespace moep
