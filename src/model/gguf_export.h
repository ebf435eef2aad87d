// `moep quantize`: a model (a checkpoint directory, or a GGUF file) written as a GGUF file with llama.cpp's tensor
// names and metadata, its weights quantized by core/quant's reference quantizers (bit-identical to ggml's, no
// importance matrix). What llama.cpp's converter changes in the layout (model/gguf_model.h) is done here too, so
// that llama.cpp and moep read the file alike.
//
// Which type each tensor gets follows llama.cpp's llama_tensor_get_type (src/llama-quant.cpp) for the file types
// moep writes:
//   - only weights of 2 or more dims are quantized; norms, biases, the router (ffn_gate_inp) and other vectors
//     stay f32 (llama.cpp's converter writes them f32 too);
//   - output.weight (token_embd.weight when the output is tied to it) gets q6_K, or q8_0 when its rows are not
//     whole blocks of the file's type; q8_0 files keep q8_0;
//   - attn_v / attn_qkv: q6_K in q4_K_M and q5_K_M files for the layers use_more_bits picks (the first and last
//     eighth, and every third between, counted in llama.cpp's order of the tensor names); q8_0 in any quantized
//     file when the model has 8 experts (as attn_k);
//   - ffn_down (experts, shared expert, dense): q6_K in q4_K_M and q5_K_M files for the layers use_more_bits picks;
//   - attn_output: q5_K in q4_K_M files of 8-expert models;
//   - the rest gets the file's type (q4_K for q4_K_M, q5_K for q5_K_M);
//   - mxfp4 (llama.cpp's MXFP4_MOE): the stacked experts (3 dims, more than one expert) get MXFP4 and every other
//     quantized tensor (output, token_embd, attention, a shared expert's) q8_0, whatever the rules above say.
// A tensor whose rows are not whole blocks of its type falls back: llama.cpp takes q5_0 for q4_K, q5_1 for q5_K
// and q8_0 for q6_K; moep's kernels read neither q5_0 nor q5_1 (it decodes them only where it converts a tensor at
// load, deepseek2's attn_k_b and attn_v_b) and takes q8_0 for all three (never less precise). Rows not
// of whole 32-weight blocks then get f16 (llama.cpp does the same for K-quants, and refuses for q8_0 / q4_0).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/quant.h"

namespace moep {

struct ModelConfig;
class GgufWriter;

// llama.cpp's llama_ftype, with its values (general.file_type).
enum class GgufFileType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 7, Q4_K_M = 15, Q5_K_M = 17, Q6_K = 18, BF16 = 32, MXFP4_MOE = 38
};
// "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "mxfp4" (MXFP4_MOE) (any case); throws
// moep::Error naming the choices.
GgufFileType parse_gguf_file_type(std::string_view name);
const char* gguf_file_type_name(GgufFileType t);

// What decides a tensor's type besides its name and dims.
struct GgufTypeContext {
  int64_t n_experts = 0;
  int64_t n_layers = 0;
  bool tied_output = false;     // no output.weight: token_embd is quantized as the output
  int64_t attn_v_index = 0;     // this attn_v / attn_qkv tensor's place among them (llama.cpp's order)
  int64_t attn_v_count = 0;
};
// The type llama.cpp's rules (above) give tensor `name` of ggml dims `dims` in a file of type `ftype`;
// *fell_back (may be null) says whether the rules' choice had to fall back for rows that are not whole blocks.
GgmlType gguf_tensor_type(GgufFileType ftype, const std::string& name, const std::vector<int64_t>& dims,
                          const GgufTypeContext& ctx, bool* fell_back = nullptr);

struct QuantizedTensor {
  std::string name;
  std::vector<int64_t> dims;  // ggml order
  GgmlType type;
  bool fell_back;  // rows not whole blocks of the type the rules chose
};
struct QuantizeResult {
  std::vector<QuantizedTensor> tensors;
  uint64_t bytes = 0;  // of the file
};

// Writes the model at `model_path` to `out_path` as a GGUF of type `ftype`. Streams: the source stays in its memory
// mapping (clean file pages the kernel may drop), and one tensor at a time is converted (its output bytes, and per
// thread f32 rows of up to one expert's slab, in memory). `threads` quantize rows at once (0: every core; the bytes
// are the same). `progress(tensors done, total)` may be empty. Throws moep::Error for a model GGUF cannot describe
// as llama.cpp reads it (DBRX with a top-k p-norm other than 1), or an I/O error.
//
// The tokenizer: a GGUF source's tokenizer.* keys are copied as they are; for a model directory, `tokenizer_metadata`
// (the caller's: `moep quantize` passes src/text's add_tokenizer_metadata) writes them from its tokenizer files.
QuantizeResult quantize_to_gguf(const std::string& model_path, const std::string& out_path, GgufFileType ftype,
                                const std::function<void(size_t, size_t)>& progress = {}, int threads = 0,
                                const std::function<void(GgufWriter&)>& tokenizer_metadata = {});

}  // namespace moep
