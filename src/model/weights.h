// The weights of a model as views into the memory-mapped checkpoint or into one copy of it (never widened), and the
// binder that maps checkpoint tensor names to them while checking shapes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "moe/placement.h"

namespace moep {

struct ExpertWeights {
  MatRef gate;  // [ffn, d_model]
  MatRef up;    // [ffn, d_model]
  MatRef down;  // [d_model, ffn], or [ffn, d_model] when down_in_out (DBRX w2)
  bool down_in_out = false;
  bool local = false;  // held by this rank; the views are empty otherwise
  // gpt-oss: biases of this rank's slice of gate and up [slice], and of down [d_model] (only on the rank holding
  // the slice that starts the ffn dimension, so that the sum over slices adds it once); empty when none.
  VecRef gate_bias, up_bias, down_bias;
};

struct MlpWeights {  // a dense SwiGLU MLP (Qwen2-MoE's shared expert and dense layers)
  MatRef gate, up, down;  // [ffn, d], [ffn, d], [d, ffn]
  bool empty() const { return gate.empty(); }
};

struct LayerWeights {
  VecRef attn_norm_w, attn_norm_b;
  MatRef wq, wk, wv, wo;  // [q_dim, d], [kv_dim, d], [kv_dim, d], [d, q_dim]; may be row blocks of one fused tensor
  VecRef bq, bk, bv, bo;  // empty when the model has no such bias
  VecRef q_norm, k_norm;  // [head_dim] (PerHead) or [q_dim]/[kv_dim] (Full); empty when none
  VecRef sinks;           // gpt-oss: [this rank's query heads] attention sink logits; empty when none
  VecRef ffn_norm_w, ffn_norm_b;

  // Multi-head latent attention (ModelConfig::mla): wq is q_proj [H·qk_head_dim, d] when there is no q_lora_rank,
  // wo is o_proj [d, H·v_head_dim].
  MatRef q_a, q_b;            // [q_lora_rank, d], [H·qk_head_dim, q_lora_rank]
  VecRef q_a_norm;            // [q_lora_rank]
  MatRef kv_a;                // [kv_lora_rank + qk_rope_head_dim, d]
  VecRef kv_a_norm;           // [kv_lora_rank]
  MatRef kv_b;                // [H·(qk_nope_head_dim + v_head_dim), kv_lora_rank]

  bool is_moe = false;
  MatRef router;                       // [n_experts, d]
  VecRef router_choice_bias;           // [n_experts] DeepSeek-V3's e_score_correction_bias (f32); empty when none
  VecRef router_bias;                  // [n_experts] (gpt-oss); empty when none
  std::vector<ExpertWeights> experts;  // [n_experts]
  MlpWeights shared_expert;            // Qwen2-MoE
  MatRef shared_expert_gate;           // [1, d]
  MlpWeights dense;                    // non-MoE layers
};

class WeightBinder;

// Of a split attention (DenseSplit::attention) every layer's wq, wk, wv hold this rank's heads' rows, wo the
// matching input columns, bq/bk/bv and a full q_norm/k_norm their elements; bo and a per-head norm stay whole.
struct ModelWeights {
  MatRef embed;    // [vocab, d]
  MatRef lm_head;  // [vocab_rows.count, d]: this rank's rows of the head (all; the embedding's when tied)
  VecRef final_norm_w, final_norm_b;
  std::vector<LayerWeights> layers;
  DenseSplit split;    // what the rank's share divides (RankShare::dense)
  FfnSlice vocab_rows;  // the rows of the vocabulary lm_head holds
  FfnSlice kv_heads;    // the KV heads every layer's attention holds; its query heads follow (× n_heads/n_kv_heads)
};

// Binds the output head: this rank's rows of lm_head (or of the embedding, when tied), and sets w.vocab_rows.
// `embed` must be bound first; `head_name` is the untied head's tensor.
void bind_output_head(const ModelConfig& c, WeightBinder& b, const std::string& head_name, ModelWeights& w);

// The value of a float8_e4m3fn byte (1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no infinities; S.1111.111
// is NaN).
float fp8_e4m3_to_f32(uint8_t b);

// Tensors the loader had to rewrite rather than view in place (rows reordered, small block-quantized tensors made
// f32), by checkpoint name: owned by the Model, so that a second binding of the same model (relocation) finds
// them made and views them again. Each entry's bytes start 16-byte aligned.
using ConvertedTensors = std::map<std::string, std::vector<float>>;

// Hands out checkpoint tensors by name, checking dtype and shape, and remembers what was used so that
// finish() can refuse a checkpoint with tensors the model did not use. Byte ranges that this rank will read
// are collected for prefaulting.
//
// Shapes are in torch's order, outermost first (a GGUF tensor's ggml dims reversed). Block-quantized tensors
// (GGUF) are viewed in whole blocks: a part of a row must start and end on a block boundary.
class WeightBinder {
 public:
  // Binds what `share` holds: whole experts where share.holds, and of each bound expert and of a shared expert
  // only the slice share.ffn_slice (rows of gate and up, the matching inputs of down).
  explicit WeightBinder(const SafetensorsIndex& index, RankShare share = {})
      : tensors_(&index.tensors()), share_(share) {}
  // The same over any index of tensors (a GGUF file's, see model/gguf_model.h); `converted` holds what
  // matrix_row_permuted and small quantized vectors make (may be null when nothing needs converting).
  WeightBinder(const std::map<std::string, TensorInfo>& tensors, RankShare share, ConvertedTensors* converted)
      : tensors_(&tensors), share_(share), converted_(converted) {}
  // Recording mode: no checkpoint; every request records (name, shape) and returns an empty view. Used to
  // list the tensors a model of some config needs (moep synth writes exactly these).
  WeightBinder() = default;

  bool has(const std::string& name) const { return tensors_ && tensors_->count(name) != 0; }
  // The stored shape of a tensor (empty when absent).
  std::vector<int64_t> shape_of(const std::string& name) const;
  // A GGUF tensor's ggml type id (GgmlType), or -1 (absent, or not from a GGUF file).
  int ggml_type_of_tensor(const std::string& name) const;
  const RankShare& share() const { return share_; }
  // A [rows, cols] matrix. Throws moep::Error if the tensor is missing, not a float dtype or of another shape.
  MatRef matrix(const std::string& name, int64_t rows, int64_t cols);
  // Rows [row0, row0 + n) of a [total_rows, cols] tensor (a part of a fused tensor). Only those rows are
  // recorded as read; the whole tensor counts as used.
  MatRef matrix_rows(const std::string& name, int64_t total_rows, int64_t cols, int64_t row0, int64_t n);
  // Columns [col0, col0 + n) of a [rows, total_cols] tensor: recorded as a strided range (rows pieces of n
  // elements). In the mapping the view's row stride is total_cols; a relocated copy is dense (stride n).
  MatRef matrix_cols(const std::string& name, int64_t rows, int64_t total_cols, int64_t col0, int64_t n);
  // Expert `e` of a stacked [n_experts, rows, cols] tensor (GGUF's ffn_*_exps): its rows [row0, row0 + n)
  // (slab_rows), or its columns [col0, col0 + n) (slab_cols, as matrix_cols). The whole tensor counts as used.
  MatRef slab_rows(const std::string& name, int64_t n_experts, int64_t rows, int64_t cols, int64_t e, int64_t row0,
                   int64_t n);
  MatRef slab_cols(const std::string& name, int64_t n_experts, int64_t rows, int64_t cols, int64_t e, int64_t col0,
                   int64_t n);
  // A [rows, cols] matrix stored as `stored_shape` of as many elements (GGUF's [cols] for a [1, cols] matrix).
  MatRef matrix_as(const std::string& name, int64_t rows, int64_t cols, const std::vector<int64_t>& stored_shape);
  // A [rows, cols] matrix whose row r is the stored row source_row(r): copied once into the converted tensors
  // (a permutation of whole rows, any dtype; e.g. undoing llama.cpp's reordering of q and k for its RoPE).
  MatRef matrix_row_permuted(const std::string& name, int64_t rows, int64_t cols,
                             const std::function<int64_t(int64_t)>& source_row);
  // The same for a [n] vector (a bias of such a matrix), made f32.
  VecRef vector_permuted(const std::string& name, int64_t n, const std::function<int64_t(int64_t)>& source_row);
  // A [n] vector. Block-quantized ones are converted to f32 once (the forward pass reads vectors element-wise).
  VecRef vector(const std::string& name, int64_t n);
  // Optional vector: empty when absent (shape still checked when present).
  VecRef optional_vector(const std::string& name, int64_t n);
  // Marks a tensor as accounted for without reading it (an expert held by another rank). It must exist.
  void skip(const std::string& name, const std::vector<int64_t>& shape);
  // The stored tensor `name` of exactly `shape`, marked used: of safetensors dtype `dtype_name` where one is given
  // ("U8": MXFP4 blocks and scales), else of a float dtype. Throws moep::Error naming the tensor and what was
  // expected. Recording mode: records it (the synthetic writer makes every recorded tensor a float one) and
  // returns nullptr.
  const TensorInfo* tensor(const std::string& name, const std::vector<int64_t>& shape,
                           const char* dtype_name = nullptr);
  // A [rows, cols] matrix of `dtype` that the loader makes (a transposed or dequantized part of a stored tensor):
  // fill(dst) writes its rows × cols elements, row-major (rows of dtype_row_bytes(dtype, cols) bytes: a quantized
  // dtype's rows are whole blocks), once per `key`; it lives in the converted tensors.
  // Recording mode: returns an empty view without calling fill.
  MatRef made_matrix(const std::string& key, DType dtype, int64_t rows, int64_t cols,
                     const std::function<void(uint8_t*)>& fill);
  // The same for an f32 vector of n elements.
  VecRef made_vector(const std::string& key, int64_t n, const std::function<void(float*)>& fill);

  // Block-FP8 weights (DeepSeek-V3's float8_e4m3fn tensors with a `<name>_scale_inv` of f32 per 128x128 block):
  // each bound one is dequantized once (fp8 value × its block's scale_inv, in f32) into the converted tensors, as
  // `dtype` (F32: exact; BF16: rounded, half the memory), and viewed there. Needs a converted-tensor store.
  void dequantize_fp8_to(DType dtype) { fp8_dtype_ = dtype; }

  // Throws moep::Error listing tensors in the checkpoint that nothing used.
  void finish() const;

  // `count` pieces of `bytes` each, `stride` bytes apart from `offset` on (count 1: one contiguous range).
  struct Range {
    MappedFile* file;
    size_t offset;
    size_t bytes;
    size_t count = 1;
    size_t stride = 0;
    size_t total() const { return bytes * count; }
  };
  struct Recorded {
    std::string name;
    std::vector<int64_t> shape;
  };
  const std::vector<Recorded>& recorded() const { return recorded_; }
  const std::vector<Range>& read_ranges() const { return ranges_; }
  size_t bytes_read() const;

  // Relocation: the k-th range read (in the order of read_ranges() of an earlier binding of the same model
  // with the same share) lives at dest[k] instead of in the mapping; views point there. Set before binding.
  void relocate_to(std::vector<const uint8_t*> dest) { dest_ = std::move(dest); }

 private:
  const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape);
  bool record(const std::string& name, const std::vector<int64_t>& shape);
  // Rows [row0, row0 + n) of the [rows, cols] matrix that starts base_row rows into tensor t.
  MatRef rows_of(const TensorInfo& t, int64_t base_row, int64_t rows, int64_t cols, int64_t row0, int64_t n);
  // Columns [col0, col0 + n) of that matrix; refuses a cut inside a quantized block, naming the tensor.
  MatRef cols_of(const TensorInfo& t, int64_t base_row, int64_t rows, int64_t cols, int64_t col0, int64_t n);
  std::vector<float>& converted(const std::string& name, size_t floats, bool* fresh);
  // A block-FP8 tensor dequantized into the converted store: its info with data there and no file.
  const TensorInfo& dequantized_fp8(const TensorInfo& t);
  std::map<std::string, TensorInfo> fp8_infos_;
  DType fp8_dtype_ = DType::BF16;
  const std::map<std::string, TensorInfo>* tensors_ = nullptr;
  std::vector<Recorded> recorded_;
  std::set<std::string> used_;
  std::vector<Range> ranges_;
  std::vector<const uint8_t*> dest_;
  RankShare share_;
  ConvertedTensors* converted_ = nullptr;
  // Where the range just pushed lives: its relocated copy, or `mapped` (its bytes in the mapping).
  const void* placed(const void* mapped) const;
  // Views into the mapping sit on the page cache's 4 KiB pages; relocated copies on the arena's 2 MiB pages.
  bool on_small_pages() const { return dest_.empty(); }
};

}  // namespace moep
