// Calibration: measures what the performance model needs on this machine, or on every rank of the mpirun job
// it runs in (all ranks measure at the same time, so ranks that share a host share its memory bandwidth as
// they do when running a model):
//  - memory read bandwidth (kernels::measure_read_bandwidth_gbs);
//  - the time of one ops::linear call as overhead + bytes × time-per-byte, fitted over several matrix sizes,
//    for batches 1..64 and each dtype, in both weight layouts ([out, in] and DBRX's [in, out]); the weights
//    are cycled through a buffer much larger than the caches, so every call reads from memory as in decode;
//  - one expert (gate, up, down at batch 1) of a given shape, by dtype (reported; the model uses the table);
//  - the engine's attention (ops::attention: scores and values with an online softmax), per multiply-add;
//  - the all-reduce over the job's ranks for messages of 4 B .. max bytes, fitted to a + b·m (least squares
//    on relative error); α = a / ⌈log2 N⌉ and β = ⌈log2 N⌉ / b under the recursive-doubling assumption.
// Collective: every rank of `comm` must call it with the same options.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/thread_pool.h"
#include "perf/profiles.h"

namespace moep::perf {

struct CalibrateOptions {
  std::string name;                      // profile name (hardware; the network gets "<name>-net")
  std::string description;
  std::vector<std::string> dtypes = {"bf16"};
  std::vector<int64_t> batches = {1, 2, 4, 8, 16, 32, 64};
  int64_t expert_d_model = 1024;         // the expert shape whose batch-1 time is reported
  int64_t expert_ffn = 2816;
  size_t membw_bytes = size_t(512) << 20;  // with rotation_bytes 0, raised to 4x the last-level cache
  // Weights (and the bandwidth test) on 2 MiB pages, as `--weights copy` keeps them, or on 4 KiB pages, as
  // the file mappings of `--weights map` are.
  bool huge_pages = true;
  // Weights cycled through per timed matrix size: decode reads each weight once per token, so this must be
  // well beyond what the caches hold. 0: the larger of 256 MiB and 4x the last-level cache (a server CPU
  // with 300 MB of L3 served most of a 256 MiB rotation from cache: calibrated 72 GB/s where memory gives 36).
  size_t rotation_bytes = 0;
  size_t max_allreduce_bytes = size_t(4) << 20;
  double seconds_per_point = 0.03;       // timing target per measured point and trial
  MeasuredInfo info;                     // date, host, cpu, commit, threads filled by the caller
};

struct CalibrationResult {
  HardwareProfile hardware;
  NetworkProfile network;   // meaningful when comm.size() > 1
  bool has_network = false;
};

// Size of the last-level CPU cache in bytes (Linux sysfs for cpu0, else sysconf), 0 where unknown.
size_t last_level_cache_bytes();

// Least squares fit of t ≈ a + b·x minimizing relative error Σ((a + b·x − t)/t)². Returns {a, b}.
std::pair<double, double> fit_relative(const std::vector<std::pair<double, double>>& points);

CalibrationResult calibrate(ThreadPool& pool, Communicator& comm, const CalibrateOptions& opts,
                            const std::function<void(const std::string&)>& progress);

}  // namespace moep::perf
