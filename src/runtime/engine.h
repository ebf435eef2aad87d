// The engine: a model loaded on this rank (its share of the experts), the communicator, the thread pool and
// the forward pass. Under mpirun every rank builds one; they check at start that they agree (protocol
// version, model fingerprint, placement, kernels) and refuse to run otherwise.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "moe/placement.h"
#include "perf/profiles.h"
#include "runtime/transformer.h"

namespace moep {

// Bumped whenever what ranks exchange or compute in lockstep changes.
constexpr uint32_t kProtocolVersion = 2;

// --attention and --head: repeat the part on every rank, divide it (DenseSplit), or let the engine choose.
enum class SplitMode { Auto, Replicated, Split };
// "auto", "replicated" or "split"; throws moep::Error naming `flag` and the value otherwise.
SplitMode parse_split_mode(std::string_view name, const char* flag);

// What `auto` decides for a model on n_ranks CPU ranks: the performance model (perf::Predictor) predicts one
// decode step (batch 1) with each choice `auto` leaves open (attention and head, replicated or split) and the
// fastest is taken, at `context` attended positions (the engine passes half its context limit: the mean over
// sequences that fill it). Its figures: `hw` and `net` when given (the caller's calibration of this machine and
// network, `moep calibrate --save`), else built-in ones (auto_split_hardware, auto_split_network); latency_us
// is the emulated latency added to every exchange. Auto never divides on one rank (an explicit Split there runs
// the split path over one part). Never divided: on a GPU (on_gpu), and attention of a GGUF file (gguf) or with
// multi-head latent attention; an explicit Split there throws moep::Error saying why. `why` gets one line
// saying, per part, what was chosen and why.
DenseSplit choose_dense_split(const ModelConfig& cfg, int n_ranks, SplitMode attention, SplitMode head,
                              double latency_us, bool gguf, bool on_gpu, std::string* why,
                              const perf::HardwareProfile* hw = nullptr, const perf::NetworkProfile* net = nullptr,
                              int64_t context = 1024);
// The built-in figures of auto's prediction where no calibration is given: a rank that streams its weights at
// 10 GB/s, and links of 20 µs per message step at 10 GB/s (a conservative small cluster over TCP).
perf::HardwareProfile auto_split_hardware();
perf::NetworkProfile auto_split_network();

struct EngineOptions {
  std::string model_dir;
  std::optional<ModelConfig> model_config;  // config.json of model_dir when the caller has parsed it; else read
  int threads = 0;                        // 0: the cores this process may use
  // "split" (every rank a slice of every expert: the same work on every rank), "contiguous", "round-robin" or
  // a JSON file; see ExpertPlacement.
  PlacementSpec placement = PlacementSpec::parse(kDefaultPlacement);  // parsed once, from the flag
  EngineLimits limits;
  bool prefault = true;
  bool mlock = false;
  // Where the weights live (see WeightResidence); Auto copies only when this rank is the only one on its host
  // (and the copy fits).
  WeightResidence weights = WeightResidence::Auto;
  double emulate_latency_us = 0.0;        // added to every inter-rank exchange step (latency emulation)
  SplitMode attention = SplitMode::Auto;  // --attention (choose_dense_split)
  SplitMode head = SplitMode::Auto;       // --head
  // What auto predicts with (choose_dense_split): this machine's calibration when the caller found one, else
  // the built-in figures.
  std::shared_ptr<const perf::HardwareProfile> auto_hardware;
  std::shared_ptr<const perf::NetworkProfile> auto_network;
  // Deadline of every collective once the model is loaded (Communicator::set_rank_timeout; 0: none).
  double rank_timeout_s = 60.0;
  bool bf16_dot = false;                  // kernels::set_bf16_dot (process-wide; applied by create)
  size_t trace_events = 0;                // capacity of the trace buffer (0: no trace)
  // Where the forward pass runs: the CPU, a GPU (Vulkan), or a GPU when a usable hardware one with enough memory
  // exists (auto; never a software device such as lavapipe). gpu_index ≥ 0 picks a device of gpu::list_gpus();
  // -1: the rank's index among the ranks of its host, modulo the devices.
  gpu::DeviceKind device = gpu::DeviceKind::Cpu;
  int gpu_index = -1;
  std::function<void(size_t, size_t)> load_progress;  // (bytes done, total) while prefaulting
};

class Engine {
 public:
  // Loads the model on every rank (each its own experts) and checks that all ranks agree. A failure on any
  // rank (bad file, disagreement) is reported on every rank as a moep::Error naming the rank, so that no rank
  // is left waiting.
  static std::unique_ptr<Engine> create(const EngineOptions& opts, std::unique_ptr<Communicator> comm);

  Communicator& comm() { return *comm_; }
  const Model& model() const { return *model_; }
  const ModelConfig& config() const { return model_->config(); }
  const ExpertPlacement& placement() const { return placement_; }
  // Whether attention and the output head are divided over the ranks, and why (one line).
  const DenseSplit& dense_split() const { return model_->weights().split; }
  const std::string& dense_split_note() const { return dense_split_note_; }
  ThreadPool& pool() { return *pool_; }
  Transformer& transformer() { return *transformer_; }
  // What runs the forward pass on this rank, for the user: "CPU, 16 threads" or "GPU 0: NVIDIA H200 (...)".
  const std::string& device_summary() const { return device_summary_; }
  // A one-line note when --device auto fell back to the CPU (why), else empty.
  const std::string& device_note() const { return device_note_; }
  bool on_gpu() const { return transformer_ && transformer_->gpu() != nullptr; }
  gpu::GpuForward* gpu() { return transformer_ ? transformer_->gpu() : nullptr; }
  int rank() const { return comm_->rank(); }
  // Per rank (gathered at start): weight bytes it reads and its resident set size after loading.
  const std::vector<uint64_t>& rank_weight_bytes() const { return rank_weight_bytes_; }
  const std::vector<uint64_t>& rank_rss_bytes() const { return rank_rss_bytes_; }
  // "rank 0: 7.9 GB weights (RSS 8.1 GB), rank 1: ..." of a checkpoint of N GB.
  std::string memory_summary() const;
  bool is_root() const { return comm_->rank() == 0; }

  // Runs `tokens` through slot `slot` starting at position `start_pos`, in chunks of at most limits.max_rows.
  // With all_logits, writes logits for every token ([n, vocab] into out); otherwise only for the last token
  // ([1, vocab]). incremental = one token per forward() call (the KV-cache path).
  void run_sequence(const std::vector<int32_t>& tokens, int32_t slot, int32_t start_pos, bool all_logits,
                    bool incremental, float* out);

 private:
  Engine() = default;
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<Model> model_;
  ExpertPlacement placement_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Transformer> transformer_;
  std::vector<BatchRow> rows_;
  std::vector<uint64_t> rank_weight_bytes_, rank_rss_bytes_;
  std::string device_summary_, device_note_, dense_split_note_;
};

// This process's resident set size in bytes (0 where unknown).
uint64_t resident_set_bytes();

// Runs `fn` on every rank and then agrees on the outcome: if it threw moep::Error on any rank, every rank
// throws moep::Error with the first failing rank's message (prefixed with that rank when size > 1).
void run_collectively(Communicator& comm, const std::function<void()>& fn);

}  // namespace moep
