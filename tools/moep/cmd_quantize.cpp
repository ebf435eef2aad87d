// moep quantize MODEL OUT.gguf --type TYPE
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "commands.h"
#include "core/error.h"
#include "io/gguf_writer.h"
#include "model/gguf_export.h"
#include "text/gguf_tokenizer.h"
#include "progress.h"

namespace moep::cli {

void register_quantize(CLI::App& app) {
  struct Opts {
    std::string model, out, type = "q4_k_m";
    bool list = false;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "quantize", "Write a model as a GGUF file (llama.cpp's format), its weights quantized as llama.cpp's quantizer does");
  cmd->add_option("model", o->model, "Model directory (config.json + safetensors) or a .gguf file")->required();
  cmd->add_option("out", o->out, "Output .gguf file")->required();
  cmd->add_option("--type", o->type,
                  "f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k or mxfp4 (the K mixtures as llama.cpp chooses per "
                  "tensor; mxfp4 as llama.cpp's MXFP4_MOE: the experts MXFP4, the other matrices q8_0; no importance "
                  "matrix)");
  cmd->add_flag("--list", o->list, "Print each tensor's name, dims and type");
  cmd->add_option("--threads,-t", o->threads, "Threads quantizing (0: every core; the file is the same)")
      ->check(CLI::Range(0, 4096));
  cmd->callback([o] {
    const GgufFileType type = parse_gguf_file_type(o->type);
    ProgressBar bar("quantizing");
    const auto t0 = std::chrono::steady_clock::now();
    const QuantizeResult r =
        quantize_to_gguf(
            o->model, o->out, type, [&](size_t done, size_t total) { bar.update(done, total); }, o->threads,
            [&](GgufWriter& w) {
              if (std::filesystem::exists(std::filesystem::path(o->model) / "tokenizer.json"))
                add_tokenizer_metadata(o->model, w);
              else
                std::fprintf(stderr, "note: %s has no tokenizer.json: %s carries no tokenizer\n", o->model.c_str(),
                             o->out.c_str());
            });
    bar.finish();
    std::map<std::string, int> by_type;
    int fell_back = 0;
    for (const auto& t : r.tensors) {
      ++by_type[ggml_type_traits(t.type).name];
      fell_back += t.fell_back;
      if (o->list) {
        std::string dims;
        for (size_t i = 0; i < t.dims.size(); ++i) dims += str_cat(i ? ", " : "", t.dims[i]);
        std::printf("%-36s [%s] %s%s\n", t.name.c_str(), dims.c_str(), ggml_type_traits(t.type).name,
                    t.fell_back ? " (fallback: rows not whole blocks)" : "");
      }
    }
    std::string counts;
    for (const auto& [name, n] : by_type) counts += str_cat(counts.empty() ? "" : ", ", n, " ", name);
    std::fprintf(stderr, "moep: wrote %s (%s, %.2f GB) in %.1f s: %zu tensors (%s)%s\n", o->out.c_str(),
                 gguf_file_type_name(type), double(r.bytes) / 1e9,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), r.tensors.size(),
                 counts.c_str(),
                 fell_back ? str_cat("; ", fell_back, " fell back to another type (rows not whole blocks)").c_str() : "");
  });
}

}  // namespace moep::cli
