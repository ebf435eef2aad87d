#include "runtime/engine.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "core/error.h"
#include "io/mapped_file.h"
#include "kernels/kernels.h"
#include "model/gguf_model.h"
#include "perf/model_shape.h"
#include "perf/perf_model.h"

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

perf::HardwareProfile auto_split_hardware() {
  perf::HardwareProfile h;
  h.name = "built-in (10 GB/s per rank)";
  h.memory_bandwidth_gbs = perf::Figure{10, "moep's built-in figure for --attention/--head auto", "", true, true};
  h.memory_gb = perf::Figure{1e6, "not used by auto", "", true, true};
  return h;
}

perf::NetworkProfile auto_split_network() {
  perf::NetworkProfile n;
  n.name = "built-in (20 us, 10 GB/s)";
  n.alpha_us = perf::Figure{20, "moep's built-in figure for --attention/--head auto", "", true, true};
  n.beta_gbs = perf::Figure{10, "moep's built-in figure for --attention/--head auto", "", true, true};
  return n;
}

namespace {

// The performance model's name for the weights' storage: the known type with the same bytes per weight, or the
// nearest (K-quants have no name there; q4_k's 4.5 bits are q4_0's).
std::string perf_dtype(DType d) {
  const double bpw = double(dtype_row_bytes(d, 256)) / 256.0;
  if (d == DType::F32) return "f32";
  if (d == DType::F16) return "f16";
  if (d == DType::BF16) return "bf16";
  if (d == DType::MXFP4) return "mxfp4";
  if (bpw <= 0.6) return "q4_0";
  if (bpw <= 1.2) return "q8_0";
  return "bf16";
}

}  // namespace

DenseSplit choose_dense_split(const ModelConfig& cfg, int n_ranks, SplitMode attention, SplitMode head,
                              double latency_us, bool gguf, bool on_gpu, std::string* why,
                              const perf::HardwareProfile* hw, const perf::NetworkProfile* net, int64_t context) {
  std::string scratch;
  if (!why) why = &scratch;
  why->clear();
  const std::string gpu = on_gpu ? "the GPU backend runs attention and the head whole on every rank" : "";
  auto first = [](std::initializer_list<std::string> reasons) {
    for (const auto& r : reasons)
      if (!r.empty()) return r;
    return std::string();
  };
  const std::string refuse_attention = first({gpu, gguf ? "a GGUF model's attention is not divided yet" : "",
                                              cfg.is_mla() ? "multi-head latent attention is not divided" : ""});
  const std::string refuse_head = gpu;
  // Per part: the choices left open (true: may split, false: may stay whole).
  struct Part {
    const char* name;
    SplitMode mode;
    std::string refuse;
    std::vector<bool> options;
  };
  Part parts[2] = {{"attention", attention, refuse_attention, {}}, {"head", head, refuse_head, {}}};
  for (Part& p : parts) {
    if (!p.refuse.empty() && p.mode == SplitMode::Split) fail(p.name, " split: ", p.refuse);
    if (p.mode == SplitMode::Replicated || (n_ranks == 1 && p.mode == SplitMode::Auto) || !p.refuse.empty())
      p.options = {false};
    else if (p.mode == SplitMode::Split)
      p.options = {true};
    else
      p.options = {false, true};
  }
  // The prediction of each open combination (only where auto has a choice to make).
  double best_s = 0, rep_s = 0;
  bool best_a = parts[0].options[0], best_h = parts[1].options[0];
  const bool choose = parts[0].options.size() > 1 || parts[1].options.size() > 1;
  const perf::HardwareProfile builtin_hw = auto_split_hardware();
  const perf::NetworkProfile builtin_net = auto_split_network();
  if (!hw) hw = &builtin_hw;
  if (!net) net = &builtin_net;
  if (choose) {
    const perf::ModelShape shape = perf::shape_from_config(cfg, "this model");
    perf::Predictor pred(shape, *hw);
    perf::Scenario s;
    s.nodes = n_ranks;
    s.batch = 1;
    s.prompt = 0;
    s.context = std::max<int64_t>(1, context);
    s.dtype = perf_dtype(cfg.stored_dtype);
    s.emulate_latency_us = latency_us;
    s.samples = 64;
    bool have = false;
    for (bool a : parts[0].options)
      for (bool h : parts[1].options) {
        s.split_attention = a;
        s.split_head = h;
        const double t = pred.predict(*net, s).decode.total();
        if (!a && !h) rep_s = t;
        if (!have || t < best_s) best_s = t, best_a = a, best_h = h, have = true;
      }
  }
  const bool chosen[2] = {best_a, best_h};
  for (int i = 0; i < 2; ++i) {
    const Part& p = parts[i];
    std::string reason = "asked";
    if (p.mode == SplitMode::Auto)
      reason = n_ranks == 1 ? "auto: one rank has nothing to divide" : !p.refuse.empty() ? "auto: " + p.refuse : "auto";
    *why += str_cat(i ? "; " : "", p.name, ": ", chosen[i] ? "split" : "replicated", " (", reason, ")");
  }
  if (choose) {
    std::ostringstream o;
    o << std::fixed << std::setprecision(3) << "; the performance model predicts " << best_s * 1e3 << " ms per token";
    if ((best_a || best_h) && rep_s > 0) o << " against " << rep_s * 1e3 << " ms with both replicated";
    o << " (" << hw->name << "; " << net->name;
    if (latency_us > 0) o << "; + " << latency_us << " us emulated per exchange step";
    o << ")";
    *why += o.str();
  }
  DenseSplit out;
  out.attention = best_a;
  out.head = best_h;
  return out;
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
                                                is_gguf_path(opts.model_dir), may_use_gpu, &e->dense_split_note_,
                                                opts.auto_hardware.get(), opts.auto_network.get(),
                                                std::max<int64_t>(1, opts.limits.max_ctx / 2));
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
