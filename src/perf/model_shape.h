// What the performance model needs to know about a model: the sizes of its weights and KV cache, layer by
// layer, in elements. Built from a config.json (load_model_config) or from a built-in name; needs no weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace moep::perf {

// How weights are stored. bf16/f16/f32 are what moep runs; q8_0, q4_0 and mxfp4 (ggml's block formats, 34, 18
// and 17 bytes per 32 weights) are for what-if planning only: there is no calibrated kernel time for them, so the
// model uses the roofline of the hardware profile.
struct WeightType {
  std::string name;          // "bf16", "f16", "f32", "q8_0", "q4_0", "mxfp4"
  double bytes_per_weight;   // 2, 2, 4, 34/32, 18/32, 17/32
};
// Throws moep::Error listing the known names.
WeightType weight_type(const std::string& name);
std::vector<std::string> weight_type_names();

struct ModelShape {
  std::string name;            // built-in name or the config path
  std::string model_type;      // "dbrx", "mixtral", ...
  std::string approximations;  // which fields are approximate, in words ("" when exact)
  std::string stored_dtype = "bf16";  // what the checkpoint's config.json says (the default weight dtype)

  int64_t n_layers = 0;
  int64_t d_model = 0;
  int64_t vocab = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_context = 0;     // trained context (informational)

  // Per layer, in elements.
  int64_t attn_elems = 0;         // all attention projections (q, k, v, o, and MLA's low-rank ones)
  std::vector<int64_t> attn_matrices;  // elements of each projection matrix (one matrix op each)
  int64_t norm_elems = 0;         // norm weights and biases
  int64_t kv_elems_per_pos = 0;   // K and V cached per position
  int64_t attn_macs_per_pos = 0;  // multiply-adds per row per attended position (scores + values, all heads)
  // Split attention (--attention split): the all-reduces per layer that join the ranks' heads (1; 2 where a
  // whole-projection q/k norm needs the sums of squares, as OLMoE's), or 0 where moep cannot divide it (MLA).
  int64_t attn_split_exchanges = 1;

  // Mixture of experts, per MoE layer.
  int64_t n_experts = 0;
  int64_t top_k = 0;
  int64_t expert_ffn = 0;
  int64_t expert_elems = 0;       // one expert's gate + up + down
  bool expert_down_in_out = false;  // DBRX stores w2 as [ffn, d_model] (moep runs it as linear_in_out)
  int64_t router_elems = 0;
  int64_t shared_elems = 0;       // shared expert (+ its gate), computed by every rank

  int64_t dense_elems = 0;        // MLP of a dense (non-MoE) layer
  std::vector<bool> layer_is_moe; // [n_layers]
  std::vector<int64_t> layer_window;  // [n_layers] sliding window (gpt-oss; 0: full attention), or empty: all full

  int64_t embed_elems = 0;        // vocab × d_model (a lookup: B rows are read per step, not the matrix)
  int64_t head_elems = 0;         // output head, read whole per step
  bool tied_embeddings = false;   // head and embedding are one matrix (counted once in memory)

  int64_t n_moe_layers() const;
  int64_t n_dense_layers() const { return n_layers - n_moe_layers(); }
  // Elements every rank holds: everything but the routed experts.
  int64_t replicated_elems() const;
  // Elements of all routed experts of all layers.
  int64_t all_expert_elems() const { return n_moe_layers() * n_experts * expert_elems; }
  int64_t total_elems() const { return replicated_elems() + all_expert_elems(); }
  std::string summary() const;
};

// From a parsed config (what moep's loader reads).
ModelShape shape_from_config(const ModelConfig& c, const std::string& name);
// The built-in shapes (config.json values of the published checkpoints).
std::vector<std::string> builtin_model_names();
// A built-in name, a model directory or a config.json path. Throws moep::Error naming the known built-ins
// when `spec` is neither.
ModelShape resolve_model(const std::string& spec);

}  // namespace moep::perf
