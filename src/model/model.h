// A loaded model: its config, the mapped checkpoint and the weight views. Weights stay in the dtype the
// checkpoint stores, inside the mapping (zero-copy), and are prefaulted at load so that no page fault
// happens while generating.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace moep {

struct LoadOptions {
  ExpertFilter is_local;  // which experts to read; empty: all
  bool prefault = true;   // touch every page this rank will read before returning
  bool mlock = false;     // also lock them in memory (needs RLIMIT_MEMLOCK; a failure is reported, not fatal)
  // Called with (bytes done, bytes total) while prefaulting (a progress bar); may be empty.
  std::function<void(size_t, size_t)> progress;
};

class Model {
 public:
  // Loads config.json and the safetensors checkpoint in `dir`. Throws moep::Error for any problem with the
  // files: missing, truncated or malformed, a missing tensor, a wrong shape, an unused tensor.
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opts = {});

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const std::string& dir() const { return dir_; }
  size_t bytes_mapped_for_use() const { return bytes_used_; }  // weight bytes this rank reads
  size_t checkpoint_bytes() const { return index_.total_bytes(); }
  bool locked() const { return locked_; }
  // The byte ranges of the mapping that hold the weights this rank uses (one per tensor, in load order).
  struct Span {
    const uint8_t* data;
    size_t bytes;
  };
  const std::vector<Span>& weight_spans() const { return spans_; }

 private:
  std::string dir_;
  ModelConfig config_;
  SafetensorsIndex index_;
  ModelWeights weights_;
  size_t bytes_used_ = 0;
  bool locked_ = false;
  std::vector<Span> spans_;
};

}  // namespace moep
