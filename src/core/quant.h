// ggml's weight types as GGUF files store them: block layouts, scalar dequantization to f32 and the reference
// quantizers. Both directions are bit-identical to ggml's (dequantize_row_* and quantize_row_*_ref of
// ggml-quants.c, without an importance matrix); tests/data/quant holds ggml's own output to prove it.
//
// A row of n weights is n / block_weights blocks laid end to end; a block is a few scales (f16, or MXFP4's e8m0
// byte) followed by packed integers. Little-endian, as GGUF is.
//
// Every GgmlType here but the load-only ones has a DType of the same layout (ggml_type_of / dtype_of_ggml
// convert).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace moep {

// ggml's numeric type ids (enum ggml_type), as stored in a GGUF tensor info. Only the types moep reads.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q5_0 = 6,  // decode only (see ggml_type_load_only)
  Q5_1 = 7,  // decode only
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
  MXFP4 = 39,  // OCP microscaling FP4 in ggml's block layout (not the safetensors one: core/mxfp4.h)
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;     // ggml's spelling: "f32", "q4_K", ...
  int block_weights;    // weights per block: 1 (f32, f16, bf16), 32 or 256
  int block_bytes;      // bytes per block
};

// The traits of a type id moep reads, or nullptr for any other id (ggml's other types, or no type at all).
const GgmlTypeTraits* ggml_type_traits(uint32_t id);
const GgmlTypeTraits& ggml_type_traits(GgmlType type);
// ggml's name of any type id it has ever defined ("q2_K", "iq4_xs", ...), or nullptr if it names none: for errors
// that say which type a file uses that moep does not read.
const char* ggml_type_name_any(uint32_t id);

// Types moep decodes but has no kernels for (no DType): Q5_0 and Q5_1, which llama-quantize falls back to for rows
// that are not whole K-quant blocks (Q4_K_M and Q5_K_M of DeepSeek's 128-wide attn_k_b). A GGUF may hold them
// only in tensors the loader converts once (deepseek2's attn_k_b and attn_v_b); elsewhere they are refused, named.
bool ggml_type_load_only(GgmlType t);

// The GgmlType of the same layout as a DType, and back (not for the load-only types).
GgmlType ggml_type_of(DType t);
DType dtype_of_ggml(GgmlType t);

// Bytes of a row of n weights; n must be a multiple of the type's block_weights (MOEP_ASSERT).
size_t ggml_row_bytes(GgmlType type, int64_t n);

// Converts n weights (a multiple of block_weights) from `src` (ggml_row_bytes(type, n) bytes) to f32.
void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n);
// Quantizes n f32 weights (a multiple of block_weights) into ggml_row_bytes(type, n) bytes at `dst`, exactly as
// ggml's reference quantizer (no importance matrix) does. Every type above has one.
void quantize_row(GgmlType type, const float* src, uint8_t* dst, int64_t n);

}  // namespace moep
