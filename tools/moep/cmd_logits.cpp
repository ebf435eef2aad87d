// moep logits MODEL_DIR --ids 1,2,3 --out FILE.npy [--incremental]
// Writes float32 logits [tokens, vocab] as .npy (rank 0 under mpirun).
#include <algorithm>
#include <cstdio>

#include "comm/communicator.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "io/npy.h"
#include "runtime/engine.h"

namespace moep::cli {

void register_logits(CLI::App& app) {
  struct Opts {
    std::string model, ids, out;
    bool incremental = false;
    int greedy = 0;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("logits", "Write the logits of a token sequence as a float32 .npy [tokens, vocab]");
  cmd->add_option("model", o->model, "Model directory (config.json + safetensors) or a .gguf file")->required();
  cmd->add_option("--ids", o->ids, "Token ids, comma-separated")->required();
  cmd->add_option("--out", o->out, "Output .npy file")->required();
  cmd->add_flag("--incremental", o->incremental, "Feed one token at a time through the KV cache");
  cmd->add_option("--greedy", o->greedy, "Then generate N tokens greedily and print their ids (comma-separated; 0: none)")
      ->check(CLI::Range(0, 1 << 20));
  add_engine_flags(cmd, o->engine);
  cmd->callback([o] {
    const std::vector<int32_t> ids = parse_id_list(o->ids, "--ids");
    if (ids.empty()) fail("--ids: expected at least one token id");
    EngineOptions eo = make_engine_options(o->model, o->engine);
    eo.limits.max_ctx = int64_t(ids.size()) + o->greedy;
    eo.limits.max_rows = std::min<int64_t>(int64_t(ids.size()), 256);
    eo.limits.n_slots = 1;
    auto engine = Engine::create(eo, make_communicator());
    start_run(*engine, o->engine);
    const int64_t vocab = engine->config().vocab_size;
    std::vector<float> logits(ids.size() * size_t(vocab));
    engine->run_sequence(ids, 0, 0, /*all_logits=*/true, o->incremental, logits.data());
    if (engine->is_root()) write_npy_f32(o->out, logits.data(), {int64_t(ids.size()), vocab});
    if (o->greedy > 0) {
      // Continue from the last prompt position. Rank 0 picks the first token from the prompt's logits (a split
      // head's logits are there only) and tells the others; each later pick comes out of the step itself, on every
      // rank (a split head's distributed argmax: no logits are gathered).
      std::vector<float> last(logits.end() - vocab, logits.end());
      std::string printed;
      int32_t tok = int32_t(std::max_element(last.begin(), last.end()) - last.begin());
      engine->comm().broadcast(&tok, sizeof tok, 0);
      for (int i = 0; i < o->greedy; ++i) {
        printed += (i ? "," : "") + std::to_string(tok);
        if (i + 1 == o->greedy) break;
        const BatchRow row{tok, 0, int32_t(ids.size()) + i, true};
        engine->transformer().forward(std::span<const BatchRow>(&row, 1), last.data(), &tok);
      }
      if (engine->is_root()) std::printf("%s\n", printed.c_str());
    }
    finish_run(*engine, o->engine);
  });
}

}  // namespace moep::cli
