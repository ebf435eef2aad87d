// Hardware and network profiles: the figures the performance model runs on, each with its source. They live
// in JSON files (data/profiles/*.json, or a user's --profiles DIR); `moep calibrate` writes measured ones.
//
// File format: one profile object, or {"profiles": [profile, ...]}. A profile:
//   {"kind": "hardware" | "network", "name": "m2-ultra-192gb", "description": "...",
//    "backend": "cpu" | "vulkan" | "metal",     // hardware only, required: see Backend
//    "<figure>": {"value": 800, "source": "https://... or 'measured by moep calibrate on HOST, DATE'",
//                 "estimate": true|false (default false), "note": "..."}, ...,
//    "measured": {...}}                         // only in calibrated profiles, see HardwareMeasured below
// Hardware figures: memory_bandwidth_gbs, memory_gb (required); usable_memory_fraction, bandwidth_efficiency,
//   peak_tflops_16 (bf16/f16 matrix), peak_tflops_32, compute_efficiency, op_overhead_us, price_usd, power_w.
//   GPU backends only (the GPU hardware class): dispatch_us and allreduce_roundtrip_us (required), host_copy_gbs;
//   a GPU profile gives its per-kernel cost as dispatch_us, not op_overhead_us.
// Network figures: alpha_us (per message, one exchange step), beta_gbs (payload bandwidth of one link)
//   (required); price_per_node_usd; "algorithm": "auto" | "recursive-doubling" | "ring".
// Every figure must name its source; a figure that is an estimate says so ("estimate": true).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace moep::perf {

// The compute backend a hardware profile models: where moep does the model's arithmetic on that machine. The
// same machine can be two profiles (a Mac's CPU, and its GPU through a Metal backend), and they predict very
// different speeds: a profile that does not say which it models is not honest about what moep does there.
//   cpu:    moep's CPU kernels (what moep does today on every machine);
//   vulkan: the GPU through moep's Vulkan backend;
//   metal:  the GPU through a Metal backend, which moep does not have: what such a backend would do.
enum class Backend { Cpu, Vulkan, Metal };
const char* backend_name(Backend b);
bool backend_is_gpu(Backend b);
// Whether this build of moep can compute on `b`. The planner does not link the GPU layer: the build that has a
// Vulkan backend says so by defining MOEP_HAVE_VULKAN for moep_perf.
bool backend_in_this_build(Backend b);
// One line for reports: empty for a backend this build has, else what the predictions of such a profile mean.
std::string backend_caveat(Backend b);

struct Figure {
  double value = 0.0;
  std::string source;
  std::string note;
  bool estimate = false;
  bool present = false;
};

// Where and how a profile was measured (`moep calibrate`).
struct MeasuredInfo {
  std::string date, host, cpu, commit;
  int ranks = 1;          // ranks of the job that measured (all on `host` when ranks_per_host == ranks)
  int ranks_per_host = 1;
  int threads = 1;        // threads per rank
  bool present = false;
};

// Time of one ops::linear call at `batch` rows. `times` holds the measured (weight bytes, microseconds) pairs,
// ascending in bytes; where there are two or more, a call's time is interpolated between them (linearly in bytes;
// beyond the largest, at the slope of the last segment). overhead_us + bytes × ns_per_byte is a fit over them,
// a summary for readers (and the whole table of profiles written before the times were kept).
struct LinearPoint {
  int64_t batch = 1;
  double overhead_us = 0.0;
  double ns_per_byte = 0.0;
  std::vector<std::pair<double, double>> times;
  double seconds(double bytes) const;
};

struct HardwareMeasured {
  MeasuredInfo info;
  double membw_gbs = 0.0;  // read bandwidth per rank, all ranks of the host reading together
  // By dtype name ("bf16", ...): points sorted by batch, for W [out, in] (linear) and W [in, out] (in_out).
  std::map<std::string, std::vector<LinearPoint>> linear, linear_in_out;
  // The attention inner loop: per (position, head) a fixed part (softmax bookkeeping, exp) and per multiply-add
  // of the scores and values (fitted over two head dimensions).
  double attention_ns_per_mac = 0.0;
  double attention_ns_per_head_pos = 0.0;
  // Informational: one expert (gate, up, down) at batch 1, by dtype, in microseconds, for `expert_shape`.
  std::map<std::string, double> expert_us;
  int64_t expert_d_model = 0, expert_ffn = 0;
  // With several ranks on one host: how much faster one rank streams weights when the host's other ranks are
  // idle than when all read at once (batch-1 linear time, all reading / one reading; 1 when not measured).
  // In decode the ranks with fewer experts wait at the all-reduce while the busiest one finishes alone.
  double alone_speedup = 1.0;
};

struct HardwareProfile {
  std::string name, description, file;
  Backend backend = Backend::Cpu;
  Figure memory_bandwidth_gbs, memory_gb, usable_memory_fraction, bandwidth_efficiency;
  Figure peak_tflops_16, peak_tflops_32, compute_efficiency, op_overhead_us, price_usd, power_w;
  // The GPU hardware class. A GPU runs each kernel as a dispatch recorded into a command buffer: dispatch_us is
  // what one costs beyond its memory and arithmetic (recording, launch, the barrier after it). The all-reduce
  // runs on the host (MPI): each one is a round trip device -> host -> MPI -> host -> device, which costs
  // allreduce_roundtrip_us (submitting, waiting on the fence, resuming) plus copying the buffer both ways at
  // host_copy_gbs (absent: no copy, the host reads the GPU's memory, as on unified-memory machines).
  Figure dispatch_us, allreduce_roundtrip_us, host_copy_gbs;
  std::optional<HardwareMeasured> measured;

  bool gpu() const { return backend_is_gpu(backend); }
  // Seconds of one kernel dispatch (0 on the CPU, whose per-op cost is op_overhead_us).
  double dispatch_seconds() const;
  // Seconds the host round trip adds to one all-reduce of `bytes` (0 on the CPU, whose buffers are the host's).
  double allreduce_host_seconds(double bytes) const;

  double usable_bytes() const;
  // Seconds for one matrix op of `elems` weights stored with `bytes_per_weight` at `rows` rows.
  // From the measured linear table when there is one for `dtype` (interpolated in rows; beyond the last
  // point the per-byte time grows in proportion to rows, the compute-bound regime), else the roofline
  // max(bytes / (bandwidth × efficiency), 2·rows·elems / (peak × efficiency)) + op_overhead (+ dispatch on a GPU).
  double linear_seconds(const std::string& dtype, double bytes_per_weight, double elems, double rows,
                        bool in_out = false) const;
  // Seconds for attention over `head_positions` (row, head, attended position) triples with `macs`
  // multiply-adds in all, reading `kv_bytes` of KV cache.
  double attention_seconds(double head_positions, double macs, double kv_bytes) const;
  // Seconds one expert run costs beyond its three matrix ops (silu·mul, and the ops' calls and synchronization
  // not in the linear table): the calibrated batch-1 expert minus the table's time for its three matrices,
  // when the profile has both for `dtype`; 0 otherwise (roofline profiles, whose op_overhead covers it) and
  // when the expert took more than twice the table's time (a disturbed measurement).
  double expert_extra_seconds(const std::string& dtype, double bytes_per_weight) const;
  // Effective weight-streaming bandwidth at batch 1, bytes/s (for reports).
  double streaming_bandwidth_bps(const std::string& dtype) const;
};

// A measured all-reduce: time = a_us + bytes × b_ns_per_byte, and the points it was fitted to.
struct AllreduceFit {
  int nodes = 2;
  double a_us = 0.0;
  double b_ns_per_byte = 0.0;
  std::vector<std::pair<double, double>> points;  // (bytes, microseconds), sorted by bytes
  // Synchronizing ranks that arrive from work of their own costs more than the all-reduce alone: arrival
  // skew and jitter (a descheduled or slowed rank holds up the others). Measured as a fraction of the work
  // between all-reduces; the model adds it to the communication time.
  double jitter_fraction = 0.0;
  // Microseconds for `bytes`: interpolated between measured points (log-log) inside their range, the fit
  // outside it.
  double micros(double bytes) const;
};

enum class AllreduceAlgorithm { Auto, RecursiveDoubling, Ring };

struct NetworkProfile {
  std::string name, description, file;
  Figure alpha_us, beta_gbs, price_per_node_usd;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
  std::map<int, AllreduceFit> measured_fits;  // by node count
  std::optional<MeasuredInfo> measured;
};

class ProfileSet {
 public:
  // Adds every *.json file of `dir` (not recursive). Throws moep::Error for a malformed file.
  void load_dir(const std::string& dir);
  void load_file(const std::string& path);
  void add(const HardwareProfile& h);
  void add(const NetworkProfile& n);

  // By name, or by path of a profile file (its first profile of that kind). Throws moep::Error listing the
  // known names for an unknown one.
  const HardwareProfile& hardware(const std::string& name_or_path);
  const NetworkProfile& network(const std::string& name_or_path);
  std::vector<std::string> hardware_names() const;
  std::vector<std::string> network_names() const;

 private:
  // Deques: references handed out stay valid when a profile file named on the command line is added.
  std::deque<HardwareProfile> hardware_;
  std::deque<NetworkProfile> networks_;
};

// The built-in profile directory: $MOEP_PROFILES, else data/profiles of the source tree, else the installed copy.
std::string default_profile_dir();

// Parsing and writing, exposed for calibrate and tests. `source` names the file in messages.
HardwareProfile parse_hardware_profile(const nlohmann::json& j, const std::string& source);
NetworkProfile parse_network_profile(const nlohmann::json& j, const std::string& source);
nlohmann::json hardware_profile_to_json(const HardwareProfile& h);
nlohmann::json network_profile_to_json(const NetworkProfile& n);
const char* algorithm_name(AllreduceAlgorithm a);

}  // namespace moep::perf
