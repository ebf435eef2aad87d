// The forward pass on a GPU, through Vulkan compute: the same model, rows and results as the CPU's Transformer
// (logits within 1e-4 relative, the same greedy tokens), with all of this rank's weights, the KV cache and every
// activation in device memory. A step's work is recorded once per shape (rows, rows that want logits) into command
// buffers and replayed: no allocation, pipeline or descriptor is made per token. The one all-reduce per MoE layer
// goes through host memory and the communicator (tokens × d_model floats, as on the CPU); with one rank a step is
// one submission.
//
// What a backend must provide (a Metal or CUDA one would implement this same class's contract): resident weights in
// the checkpoint's dtype, matrix-vector and matrix-matrix products on them (grouped by expert, rows gathered by an
// index), RMS/LayerNorm, RoPE and the q/k norms and clipping, causal attention over a KV cache per slot, the
// router's softmax/top-k/normalization, the MoE pair sort and weighted combine, a host round trip for the
// all-reduce, and timestamps per layer. docs/GPU.md says more.
//
// The public header names no Vulkan type, so that the rest of moep builds and runs without Vulkan's headers or
// loader.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"
#include "model/batch.h"
#include "model/model.h"
#include "moe/placement.h"

namespace moep::gpu {

// Where a model runs (--device): the CPU, a GPU (an error when none can), or a GPU when one with enough memory
// exists and the CPU otherwise.
enum class DeviceKind { Cpu, Gpu, Auto };
// "cpu", "gpu" or "auto"; throws moep::Error naming the value otherwise.
DeviceKind parse_device_kind(std::string_view name);
const char* device_kind_name(DeviceKind k);

// Whether this build has the Vulkan backend (CMake found Vulkan's headers and glslc).
bool built_with_vulkan();

struct DeviceSummary {
  int index = 0;
  std::string name, type, driver;
  uint64_t memory_bytes = 0;  // the largest device-local heap
  bool software = false;      // a CPU implementation (lavapipe): `auto` never picks it
  bool usable = false;
  std::string why_unusable;
};
// The Vulkan devices of this machine. Throws moep::Error when there is no Vulkan loader or driver, or when this
// build has no Vulkan backend.
std::vector<DeviceSummary> list_gpus();

// What the GPU backend lacks to run a model of config c, for messages ("attention sinks, ..."); empty when it
// runs it.
std::string unsupported_features(const ModelConfig& c);

// Device memory the forward pass needs on a rank: its weights as stored (rows padded to 8 elements), the KV cache
// and the activations for `limits`.
uint64_t device_bytes_needed(const Model& model, const EngineLimits& limits);

// Per layer, summed over calls (GPU timestamps where the device has them; else zeros): attention (norms, q/k/v/o,
// RoPE, attention), the MoE block or dense MLP up to the all-reduce, and the all-reduce's host round trip.
struct LayerTimes {
  int64_t attention_ns = 0;
  int64_t moe_ns = 0;
  int64_t allreduce_ns = 0;
  int64_t experts_touched = 0;  // this rank's experts that had work, summed over calls
  int64_t expert_pairs = 0;     // (token, expert) pairs this rank computed
  int64_t calls = 0;
};

// What `moep calibrate --device gpu` measures on a device, for the performance model's GPU class.
struct GpuCalibration {
  DeviceSummary device;
  double read_gbs = 0;        // a plain shader reading device memory
  double matvec_gbs = 0;      // the decode shader (mv1) streaming a bf16 matrix of the same size
  double dispatch_us = 0;     // one more small dispatch (with its barrier) in a recorded command buffer
  double submit_us = 0;       // submitting a command buffer and waiting for it (per step; per segment)
  double roundtrip_us = 0;    // a layer's all-reduce without the network: copy d_model × rows floats to the
                              // host, wait, and hand them back (one extra submission); median of 50
  int64_t bytes = 0;          // of the read and matrix-vector tests
};
// Measures GPU `device` (an index of list_gpus()) with buffers of `bytes` (capped at an eighth of its memory).
GpuCalibration calibrate_gpu(int device, uint64_t bytes, int64_t d_model);

// Whether this thread is inside a call into the Vulkan driver that runs work (a submission, a wait): the
// steady-state test counts the host allocations of moep's own code apart from the driver's.
bool inside_driver_call();

// One phase of the last step on the host's steady clock (GPU timestamps placed from the step's first
// submission), for --trace.
struct StepSpan {
  enum Phase : uint8_t { Attention, Moe, Dense, AllReduce, Head } phase = Attention;
  int32_t layer = -1;
  int64_t start_ns = 0, end_ns = 0;
};

class GpuForward {
 public:
  // Uploads this rank's weights to GPU `device` (an index of list_gpus()). Throws moep::Error for a missing or
  // unusable device, a shader the driver refuses, or too little device memory (saying how much is needed).
  GpuForward(const Model& model, const ExpertPlacement& placement, Communicator& comm, const EngineLimits& limits,
             int device);
  ~GpuForward();

  // As Transformer::forward, with the rows already checked against the limits: logits for the rows listed in
  // want (row indices, increasing), [want.size(), vocab].
  void forward(std::span<const BatchRow> rows, std::span<const int32_t> want, float* logits);

  const DeviceSummary& device() const;
  uint64_t device_bytes() const;  // device memory taken
  // Device objects made so far (memory, pipelines, command buffers, queries): constant while decoding.
  uint64_t device_objects_created() const;
  const std::vector<LayerTimes>& layer_times() const;
  int64_t head_ns() const;  // the final norm and the output head, GPU time
  const std::vector<StepSpan>& last_step() const;
  void reset_times();
  // The device's read bandwidth in GB/s: a plain shader reading `bytes` of device memory `reps` times (wall time of
  // one submission). For `moep bench`'s ratio; allocates its buffer on first use.
  double measure_read_bandwidth_gbs(uint64_t bytes, int reps);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moep::gpu
