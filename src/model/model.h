// A loaded model: its config, the mapped checkpoint and the weight views. Weights stay in the dtype the
// checkpoint stores, either inside the file mapping (zero-copy; ranks on one host share the pages) or copied
// once into anonymous memory on 2 MiB pages (faster to stream: see core/page_buffer.h). Either way every page
// is resident before the first token, so that no page fault happens while generating.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/page_buffer.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace moep {

// Where the weights live (--weights). Copy: copied once into anonymous memory on 2 MiB pages (an error when the
// copy does not fit); Map: read in place from the page cache (ranks on one host share it); Auto: copy when it
// fits, map otherwise.
enum class WeightResidence { Auto, Copy, Map };
// "auto", "copy" or "map"; throws moep::Error naming the value otherwise.
WeightResidence parse_weight_residence(std::string_view name);
// What `asked` means for a rank sharing its host with ranks_on_host - 1 others: Auto maps when there are others
// (the mapping's pages are shared, copies would not be), and stays Auto (copy if it fits) when alone.
WeightResidence residence_on_host(WeightResidence asked, int ranks_on_host);

struct LoadOptions {
  RankShare share;        // which experts, and which slice of each, this rank reads; default: all, whole
  bool prefault = true;   // touch every page this rank will read before returning
  bool mlock = false;     // also lock them in memory (needs RLIMIT_MEMLOCK; a failure is reported, not fatal)
  // Of the weights this rank uses. A copy that would not fit in the memory available (MemAvailable less 1 GiB)
  // throws moep::Error (Copy) or keeps the mapping (Auto): Model::weights_copied() and residence() say which.
  WeightResidence residence = WeightResidence::Map;
  size_t memory_available = 0;  // bytes the copy may use; 0: MemAvailable of /proc/meminfo (tests set it)
  // Called with (bytes done, bytes total) while prefaulting or copying (a progress bar); may be empty.
  std::function<void(size_t, size_t)> progress;
};

class Model {
 public:
  // Loads config.json and the safetensors checkpoint in `dir`, or a GGUF file (a path ending in .gguf; of a split
  // model any part: see model/gguf_model.h). Throws moep::Error for any problem with the files: missing,
  // truncated or malformed, a missing tensor, a wrong shape, an unused tensor.
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opts = {});
  // The same with the config already read (load_model_config(dir)).
  static std::unique_ptr<Model> load(const std::string& dir, ModelConfig config, const LoadOptions& opts);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const std::string& dir() const { return dir_; }
  size_t bytes_mapped_for_use() const { return bytes_used_; }  // weight bytes this rank reads
  size_t checkpoint_bytes() const { return checkpoint_bytes_; }
  // The first block-quantized dtype among the matrices (GGUF files), or F32 when there is none.
  DType quantized_dtype() const;
  bool locked() const { return locked_; }
  // The byte ranges of the mapping that hold the weights this rank uses (one per tensor, in load order).
  struct Span {
    const uint8_t* data;
    size_t bytes;
  };
  const std::vector<Span>& weight_spans() const { return spans_; }
  // Whether the weights were copied (a copy asked for with Auto may not have been: residence() says why).
  bool weights_copied() const { return !arena_.empty(); }
  // Where the weights live, for the user: "mapped from the checkpoint files", "copied into anonymous memory
  // (2 MiB pages requested)", or why a requested copy was not made.
  const std::string& residence() const { return residence_; }

 private:
  std::string dir_;
  ModelConfig config_;
  SafetensorsIndex index_;
  std::unique_ptr<GgufFile> gguf_;                  // a GGUF model's file (index_ stays empty then)
  std::map<std::string, TensorInfo> gguf_tensors_;  // its tensors, as the binder indexes them
  ConvertedTensors converted_;                      // tensors rewritten at load (see WeightBinder)
  size_t checkpoint_bytes_ = 0;
  ModelWeights weights_;
  size_t bytes_used_ = 0;
  bool locked_ = false;
  std::vector<Span> spans_;
  PageBuffer arena_;  // the copies (empty when the weights are read in place)
  std::string residence_;
};

}  // namespace moep
