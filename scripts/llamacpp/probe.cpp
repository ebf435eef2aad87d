// A small program linked against llama.cpp's own libraries (llama, ggml), for side-by-side checks with moep.
// It is not part of moep's build: scripts/llamacpp/side_by_side.sh compiles it against a llama.cpp build.
//
//   probe logits MODEL.gguf IDS OUT.npy [THREADS]
//       llama.cpp's logits of the comma-separated token ids, one batch, every position: float32 [n, vocab].
//   probe dequant FILE.gguf TENSOR ROWS OUT_PREFIX
//       the first ROWS rows of TENSOR as stored (OUT_PREFIX.bin) and as ggml's to_float decodes them
//       (OUT_PREFIX.npy, float32 [ROWS, ne0]); prints the type name.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

namespace {

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "probe: %s\n", why.c_str());
  std::exit(1);
}

void write_npy(const std::string& path, const float* data, long rows, long cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) die("cannot write " + path);
  const unsigned char magic[] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  std::fwrite(magic, 1, sizeof magic, f);
  const unsigned short len = static_cast<unsigned short>(header.size());
  std::fwrite(&len, 2, 1, f);
  std::fwrite(header.data(), 1, header.size(), f);
  std::fwrite(data, sizeof(float), size_t(rows * cols), f);
  std::fclose(f);
}

int cmd_logits(int argc, char** argv) {
  if (argc < 5) die("usage: probe logits MODEL.gguf IDS OUT.npy [THREADS]");
  std::vector<llama_token> ids;
  std::stringstream ss(argv[3]);
  for (std::string t; std::getline(ss, t, ',');) ids.push_back(std::atoi(t.c_str()));
  const int threads = argc > 5 ? std::atoi(argv[5]) : 4;
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(argv[2], mp);
  if (!model) die(std::string("llama.cpp could not load ") + argv[2]);
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 512;
  cp.n_batch = 512;
  cp.n_ubatch = 512;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  // An f32 KV cache (llama.cpp's default is f16), so that the comparison measures the weights' types only.
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) die("llama.cpp could not make a context");
  const int n = int(ids.size());
  llama_batch b = llama_batch_init(n, 0, 1);
  b.n_tokens = n;
  for (int i = 0; i < n; ++i) {
    b.token[i] = ids[size_t(i)];
    b.pos[i] = i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = 1;
  }
  if (llama_decode(ctx, b) != 0) die("llama_decode failed");
  const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::vector<float> out(size_t(n) * size_t(vocab));
  for (int i = 0; i < n; ++i) {
    const float* l = llama_get_logits_ith(ctx, i);
    if (!l) die("no logits for position " + std::to_string(i));
    std::memcpy(&out[size_t(i) * size_t(vocab)], l, sizeof(float) * size_t(vocab));
  }
  write_npy(argv[4], out.data(), n, vocab);
  llama_batch_free(b);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}

int cmd_dequant(int argc, char** argv) {
  if (argc < 6) die("usage: probe dequant FILE.gguf TENSOR ROWS OUT_PREFIX");
  ggml_context* gctx = nullptr;
  gguf_init_params gp{false, &gctx};
  gguf_context* g = gguf_init_from_file(argv[2], gp);
  if (!g) die(std::string("cannot read ") + argv[2]);
  ggml_tensor* t = ggml_get_tensor(gctx, argv[3]);
  if (!t) die(std::string("no tensor ") + argv[3]);
  const long rows = std::atol(argv[4]);
  const long cols = long(t->ne[0]);
  if (rows <= 0 || rows * cols > ggml_nelements(t)) die("bad ROWS");
  const size_t row_bytes = ggml_row_size(t->type, cols);
  const std::string prefix = argv[5];
  FILE* f = std::fopen((prefix + ".bin").c_str(), "wb");
  if (!f) die("cannot write " + prefix + ".bin");
  std::fwrite(t->data, 1, row_bytes * size_t(rows), f);
  std::fclose(f);
  std::vector<float> out(size_t(rows * cols));
  const ggml_type_traits* tr = ggml_get_type_traits(t->type);
  if (t->type == GGML_TYPE_F32) std::memcpy(out.data(), t->data, out.size() * sizeof(float));
  else if (tr->to_float) tr->to_float(t->data, out.data(), rows * cols);
  else die("no to_float for this type");
  write_npy(prefix + ".npy", out.data(), rows, cols);
  std::printf("%s %s %ld x %ld (%zu bytes a row)\n", argv[3], ggml_type_name(t->type), rows, cols, row_bytes);
  gguf_free(g);
  ggml_free(gctx);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: probe logits|dequant ...");
  const std::string cmd = argv[1];
  if (cmd == "logits") return cmd_logits(argc, argv);
  if (cmd == "dequant") return cmd_dequant(argc, argv);
  die("unknown command " + cmd);
}
