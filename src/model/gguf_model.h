// Models in GGUF files (llama.cpp's format), read with llama.cpp's tensor names and their layouts undone where
// moep's differ, so that a GGUF made from a checkpoint computes what the checkpoint does:
//   - ggml lists dims innermost first: a torch [rows, cols] matrix is ggml [cols, rows]; the index below
//     reverses them, so shapes read in torch's order everywhere in the binder.
//   - Experts are stacked, one slab per expert: ffn_gate_exps / ffn_up_exps [n_experts, ffn, d_model], and
//     ffn_down_exps [n_experts, d_model, ffn] (DBRX's w2, stored [ffn, d_model] per expert, is transposed by
//     llama.cpp's converter into that layout too).
//   - The llama architecture (Mixtral) has the rows of q and k reordered within each head for llama.cpp's
//     interleaved RoPE (convert_hf_to_gguf.py's permute); moep rotates halves, so those rows are put back in
//     place once at load (a copy of attn_q and attn_k, in their stored type).
//   - DBRX: one fused attn_qkv [q + 2·kv, d_model]; its second norm is attn_output_norm.
// Weights stay in their stored type (block-quantized ones too) and are views into the mapping; only vectors stored
// block-quantized are made f32.
#pragma once

#include <map>
#include <string>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace moep {

class GgufFile;

// Whether a model path names a GGUF file (ends in ".gguf") rather than a checkpoint directory.
bool is_gguf_path(const std::string& path);

// The tensors of a GGUF file as the weight binder indexes them (shapes in torch's order), each pointing into the
// file's mapping; valid while `f` lives.
std::map<std::string, TensorInfo> gguf_tensor_index(const GgufFile& f);

// llama.cpp's general.architecture for a model_type ("mixtral" -> "llama", "qwen2_moe" -> "qwen2moe", ...).
std::string gguf_arch_name(const std::string& model_type);

// The row of a llama-arch q or k projection ([heads · head_dim, ...]) that holds row r of the checkpoint's: llama.cpp
// stores each head's rows (first half, second half) interleaved, pair by pair.
int64_t llama_rope_stored_row(int64_t r, int64_t head_dim);

// The block (in weights) that a split of the ffn dimensions must not cut: the largest block among the tensors whose
// rows run along an ffn dimension (ffn_down_exps, ffn_down_shexp) of a GGUF model; 1 for a checkpoint directory
// (ExpertPlacement::set_ffn_block).
int64_t ffn_block_weights(const std::string& model_path);

// Binds a GGUF model's tensors into w (of the experts, those b.share() holds, each its slice). Throws moep::Error
// naming the tensor for a missing one or a wrong shape (in torch's order), and for a split that would cut a
// quantized block.
void bind_gguf_weights(const ModelConfig& c, WeightBinder& b, ModelWeights& w);

}  // namespace moep
