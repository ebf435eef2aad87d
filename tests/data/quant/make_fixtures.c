// Writes ggml's own quantization of a few rows, for tests/unit/test_quant.cpp to compare moep's against bit for bit.
// Built and run by make_fixtures.sh (which says how); not part of moep's build.
//
// Files (little-endian):
//   input.bin          u32 rows, u32 length of each row, then every row's f32 values
//   <type>.q           ggml_quantize_chunk(type, row, no importance matrix), row after row
//   <type>.deq         ggml's to_float of those bytes (f32), row after row
//   ggml.gguf          a GGUF file written by ggml's gguf writer: metadata of several types, and tensors
//                      "row0.q4_K" (row 0 as q4_K, dims [256, 2]) and "row3.f32" (the first 8 values of row 3)
//   mxfp4_edge.bin     rows in input.bin's format, blocks of 32 at MXFP4's corners (see fill_edge), and
//   mxfp4_edge.q/.deq  ggml's MXFP4 of them and its decoding (added later: the files above did not change)
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "gguf.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double uniform01(void) {  // xorshift64*, fixed seed: the same rows on every run
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}

static float normal(void) {  // Box-Muller
  const double u1 = uniform01() + 1e-12, u2 = uniform01();
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

enum { kRows = 5 };
static const int kLen[kRows] = {512, 256, 256, 256, 256};

static void fill_row(int r, float* x, int n) {
  for (int i = 0; i < n; ++i) {
    switch (r) {
      case 0: x[i] = 0.02f * normal(); break;                           // like trained weights
      case 1: x[i] = 0.f; break;                                         // all zeros
      case 2: x[i] = 1e-7f * normal(); break;                            // tiny: scales underflow f16
      case 3: x[i] = (float)(2.0 * uniform01() - 1.0); break;            // uniform, outlier below
      case 4: x[i] = (float)(0.5 + uniform01()); break;                  // all positive (K types' min = 0)
    }
  }
  if (r == 3) x[77] = 50.f;
}

// MXFP4's corners, one block of 32 each: levels and the midpoints between them (ties go to the lower code), a
// value past 6 times the scale (it clamps), amax at and just below powers of two (log2f's rounding decides the
// scale), signed zeros, tiny (scales 0 and 1, f32 subnormals), amax below 2^-125 (ggml's uint8_t conversion of a
// negative exponent: x86-64 keeps the low byte) and near FLT_MAX.
enum { kEdgeBlocks = 10 };
static void fill_edge(float* x) {
  static const float mid[8] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.f, 7.f};  // in units of the scale
  for (int b = 0; b < kEdgeBlocks; ++b) {
    float* y = x + 32 * b;
    for (int i = 0; i < 32; ++i) {
      const float u = (float)(2.0 * uniform01() - 1.0);
      switch (b) {
        case 0: y[i] = (i % 2 ? -1.f : 1.f) * mid[i % 8] * 0.5f; break;     // amax 3.5: scale 1/2, midpoints
        case 1: y[i] = (i % 2 ? -1.f : 1.f) * (float)(i % 8) * 0.25f; break;  // exact levels
        case 2: y[i] = 4.f * u; y[0] = 7.99f; break;                           // 7.99: past 6 · scale
        case 3: y[i] = u; y[5] = 4.f; break;                                   // amax exactly 2^2
        case 4: y[i] = u; y[9] = 3.99999976f; break;                           // amax just below 2^2
        case 5: y[i] = (i % 3 == 0) ? -0.f : (i % 3 == 1 ? 0.f : u * 1e-3f); break;  // signed zeros
        case 6: y[i] = u * 0x1p-126f; break;                                   // scales near 0 and 1
        case 7: y[i] = u * 0x1p-146f; break;                                   // subnormal amax: wraps
        case 8: y[i] = u * 3e38f; break;                                       // near FLT_MAX
        case 9: y[i] = 0.f; break;                                             // all zeros: scale 0
      }
    }
  }
}

static void write_file(const char* dir, const char* name, const void* data, size_t bytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
}

int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : ".";
  int total = 0;
  for (int r = 0; r < kRows; ++r) total += kLen[r];
  float* x = malloc(sizeof(float) * total);
  size_t in_bytes = 4 * (1 + kRows) + sizeof(float) * total;
  uint8_t* in = malloc(in_bytes);
  uint32_t hdr[1 + kRows] = {kRows};
  for (int r = 0, off = 0; r < kRows; off += kLen[r], ++r) {
    hdr[1 + r] = kLen[r];
    fill_row(r, x + off, kLen[r]);
  }
  memcpy(in, hdr, sizeof hdr);
  memcpy(in + sizeof hdr, x, sizeof(float) * total);
  write_file(dir, "input.bin", in, in_bytes);

  const enum ggml_type types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
  for (size_t t = 0; t < sizeof types / sizeof types[0]; ++t) {
    const enum ggml_type type = types[t];
    size_t q_bytes = 0;
    for (int r = 0; r < kRows; ++r) q_bytes += ggml_row_size(type, kLen[r]);
    uint8_t* q = malloc(q_bytes);
    float* deq = malloc(sizeof(float) * total);
    size_t q_off = 0;
    for (int r = 0, off = 0; r < kRows; off += kLen[r], ++r) {
      const size_t written = ggml_quantize_chunk(type, x + off, q + q_off, 0, 1, kLen[r], NULL);
      ggml_get_type_traits(type)->to_float(q + q_off, deq + off, kLen[r]);
      q_off += written;
    }
    char name[64];
    snprintf(name, sizeof name, "%s.q", ggml_type_name(type));
    write_file(dir, name, q, q_bytes);
    snprintf(name, sizeof name, "%s.deq", ggml_type_name(type));
    write_file(dir, name, deq, sizeof(float) * total);
    free(q);
    free(deq);
  }

  {  // MXFP4 (ggml type 39): the same rows as the others, and the edge rows.
    const enum ggml_type type = GGML_TYPE_MXFP4;
    size_t q_bytes = 0;
    for (int r = 0; r < kRows; ++r) q_bytes += ggml_row_size(type, kLen[r]);
    uint8_t* q = malloc(q_bytes);
    float* deq = malloc(sizeof(float) * total);
    size_t q_off = 0;
    for (int r = 0, off = 0; r < kRows; off += kLen[r], ++r) {
      q_off += ggml_quantize_chunk(type, x + off, q + q_off, 0, 1, kLen[r], NULL);
      ggml_get_type_traits(type)->to_float(q + q_off - ggml_row_size(type, kLen[r]), deq + off, kLen[r]);
    }
    write_file(dir, "mxfp4.q", q, q_bytes);
    write_file(dir, "mxfp4.deq", deq, sizeof(float) * total);

    const int n = 32 * kEdgeBlocks;
    float edge[32 * kEdgeBlocks];
    fill_edge(edge);
    uint8_t edge_in[4 * 2 + sizeof edge];
    const uint32_t edge_hdr[2] = {1, (uint32_t)n};
    memcpy(edge_in, edge_hdr, sizeof edge_hdr);
    memcpy(edge_in + sizeof edge_hdr, edge, sizeof edge);
    write_file(dir, "mxfp4_edge.bin", edge_in, sizeof edge_in);
    uint8_t edge_q[17 * kEdgeBlocks];
    float edge_deq[32 * kEdgeBlocks];
    ggml_quantize_chunk(type, edge, edge_q, 0, 1, n, NULL);
    ggml_get_type_traits(type)->to_float(edge_q, edge_deq, n);
    write_file(dir, "mxfp4_edge.q", edge_q, sizeof edge_q);
    write_file(dir, "mxfp4_edge.deq", edge_deq, sizeof edge_deq);
    free(q);
    free(deq);
  }

  struct ggml_init_params params = {1 << 20, NULL, false};
  struct ggml_context* ctx = ggml_init(params);
  struct gguf_context* gguf = gguf_init_empty();
  gguf_set_val_str(gguf, "general.architecture", "qwen3moe");
  gguf_set_val_u32(gguf, "qwen3moe.block_count", 48);
  gguf_set_val_f32(gguf, "qwen3moe.rope.freq_base", 1e6f);
  gguf_set_val_bool(gguf, "t.bool", true);
  gguf_set_val_i64(gguf, "t.i64", -5);
  gguf_set_val_u16(gguf, "split.count", 1);
  const char* tokens[] = {"<s>", "hello", ""};
  gguf_set_arr_str(gguf, "tokenizer.ggml.tokens", tokens, 3);
  const float scores[] = {0.f, -1.5f, 2.25f};
  gguf_set_arr_data(gguf, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 3);
  struct ggml_tensor* q = ggml_new_tensor_2d(ctx, GGML_TYPE_Q4_K, 256, 2);
  ggml_set_name(q, "row0.q4_K");
  ggml_quantize_chunk(GGML_TYPE_Q4_K, x, q->data, 0, 2, 256, NULL);
  struct ggml_tensor* f = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 8);
  ggml_set_name(f, "row3.f32");
  memcpy(f->data, x + kLen[0] + kLen[1] + kLen[2], 8 * sizeof(float));
  gguf_add_tensor(gguf, q);
  gguf_add_tensor(gguf, f);
  char path[4096];
  snprintf(path, sizeof path, "%s/ggml.gguf", dir);
  if (!gguf_write_to_file(gguf, path, false)) {
    fprintf(stderr, "cannot write %s\n", path);
    return 1;
  }
  gguf_free(gguf);
  ggml_free(ctx);
  free(x);
  free(in);
  return 0;
}
