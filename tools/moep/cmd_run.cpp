// moep run MODEL_DIR -p "prompt"   |   moep run MODEL_DIR --chat
// Streams generated text. Under mpirun, rank 0 reads input and prints; every rank computes its experts.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "comm/communicator.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/file_read.h"
#include "progress.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/step_driver.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moep::cli {

namespace {


bool is_synthetic(const std::string& dir) {
  try {
    // Read as load_model_config reads it (which has refused a bad config.json before this runs).
    const std::string path = (std::filesystem::path(dir) / "config.json").string();
    const std::string text = read_regular_file(path, kMaxConfigJsonBytes, "config.json");
    check_json_depth(text, kMaxJsonDepth, path);
    const auto j = nlohmann::json::parse(text);
    return j.value("moep_synthetic", false);
  } catch (...) {
    return false;
  }
}

}  // namespace

void register_run(CLI::App& app) {
  struct Opts {
    std::string model, prompt, system, prompt_ids, chat_template;
    bool chat = false, print_ids = false, raw = false;
    int64_t ctx = 4096;
    SamplingParams sp;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("run", "Generate text from a prompt, or chat (--chat)");
  cmd->add_option("model", o->model, "Model directory (config.json, safetensors, tokenizer.json) or a .gguf file")->required();
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text (with --chat: the first user message)");
  cmd->add_flag("--chat", o->chat,
                "Interactive conversation through the model's chat template (stdin; leave with /bye, /exit or Ctrl-D)");
  cmd->add_option("--system", o->system, "System message for --chat");
  cmd->add_option("--chat-template", o->chat_template, "Jinja file to use instead of the model's chat template (--chat)");
  cmd->add_flag("--raw", o->raw,
                "Changes nothing: -p text always reaches the model as written, without the chat template (kept so "
                "that scripts using it run); use --chat for the template");
  cmd->add_option("-n,--max-tokens", o->sp.max_tokens, "Tokens to generate at most")->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--temp,--temperature", o->sp.temperature, "Sampling temperature (0: greedy)");
  cmd->add_option("--top-k", o->sp.top_k, "Keep the k most likely tokens (0: off)");
  cmd->add_option("--top-p", o->sp.top_p, "Keep the smallest set with this probability mass (1: off)");
  cmd->add_option("--min-p", o->sp.min_p, "Drop tokens below this fraction of the top probability (0: off)");
  cmd->add_option("--repeat-penalty", o->sp.repetition_penalty, "Repetition penalty (1: off)");
  cmd->add_option("--seed", o->sp.seed, "Random seed (same seed, same text; 0: random)");
  cmd->add_option("--stop", o->sp.stop, "Stop string (repeatable)");
  cmd->add_flag("--ignore-eos", o->sp.ignore_eos, "Do not stop at end-of-sequence tokens");
  cmd->add_option("--ctx", o->ctx, "Context length (tokens)")->check(CLI::Range(16, 1 << 22));
  cmd->add_option("--prompt-ids", o->prompt_ids, "Prompt as token ids (comma-separated) instead of text");
  cmd->add_flag("--print-ids", o->print_ids, "Print the generated token ids on a last line");
  add_engine_flags(cmd, o->engine);
  cmd->callback([o] {
    o->sp.validate();
    if (!o->chat && o->prompt.empty() && o->prompt_ids.empty())
      fail("run: the prompt is empty (give text with -p \"...\", or --prompt-ids, or use --chat)");
    auto comm = make_communicator();
    const bool root = comm->rank() == 0;
    const bool tty = isatty(2);
    EngineOptions eo = make_engine_options(o->model, o->engine);
    eo.limits.n_slots = 1;
    eo.limits.max_rows = 64;
    const ModelConfig peek = load_model_config(o->model);
    eo.model_config = peek;
    eo.limits.max_ctx = std::min<int64_t>(o->ctx, std::max<int64_t>(peek.max_position, 16));
    ProgressBar bar("loading weights");
    if (root) eo.load_progress = [&](size_t d, size_t t) { bar.update(d, t); };
    const auto tl = std::chrono::steady_clock::now();
    auto engine = Engine::create(eo, std::move(comm));
    bar.finish();
    StepDriver driver(*engine);
    start_run(*engine, o->engine);
    if (!root) {
      driver.follow();
      finish_run(*engine, o->engine);
      return;
    }
    try {
      if (tty || engine->comm().size() > 1)
        std::fprintf(stderr, "moep: %s on %d rank(s), %d threads; loaded in %.1f s; %s\n",
                     engine->config().summary().c_str(), engine->comm().size(), engine->pool().size(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - tl).count(),
                     engine->memory_summary().c_str());
      if (is_synthetic(o->model))
        std::fprintf(stderr, "moep: note: this model has RANDOM weights (made by moep synth): its text is meaningless\n");
      std::optional<Tokenizer> tok;
      if (o->prompt_ids.empty() || !o->print_ids) tok = Tokenizer::load(o->model);
      const auto eos = eos_token_ids(o->model, engine->config(), tok ? &*tok : nullptr);
      SequenceGenerator gen(driver, tok ? &*tok : nullptr, eos);
      auto print = [](const std::string& s) {
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::fflush(stdout);
        return true;
      };
      auto report = [&](const GenerationResult& r) {
        std::fprintf(stderr, "\nmoep: prompt %lld tokens (%lld reused) at %.1f tokens/s; generated %zu tokens at %.2f tokens/s (%s)\n",
                     (long long)r.prompt_tokens, (long long)r.reused_tokens,
                     double(r.prompt_tokens - r.reused_tokens) / std::max(1e-9, r.prefill_seconds), r.tokens.size(),
                     double(r.tokens.size()) / std::max(1e-9, r.decode_seconds), r.finish_reason.c_str());
      };
      if (!o->chat) {
        std::vector<int32_t> ids = o->prompt_ids.empty() ? tok->encode(o->prompt, true)
                                                         : parse_id_list(o->prompt_ids, "--prompt-ids");
        if (ids.empty()) fail("run: the prompt is empty");
        if (o->prompt_ids.empty()) print(o->prompt);
        const GenerationResult r = gen.generate(ids, o->sp, o->print_ids && !tok ? std::function<bool(const std::string&)>() : print);
        if (o->print_ids) {
          std::string s;
          for (size_t i = 0; i < r.tokens.size(); ++i) s += (i ? "," : "") + std::to_string(r.tokens[i]);
          std::printf("\n%s\n", s.c_str());
        }
        report(r);
      } else {
        const ChatTemplate tmpl = ChatTemplate::load(o->model, o->chat_template);
        nlohmann::json messages = nlohmann::json::array();
        if (!o->system.empty()) messages.push_back({{"role", "system"}, {"content", o->system}});
        std::string line = o->prompt;
        bool first = true;
        std::fprintf(stderr, "moep: chatting through the chat template of %s; leave with /bye, /exit or Ctrl-D\n",
                     tmpl.source.c_str());
        for (;;) {
          if (!first || line.empty()) {
            std::fprintf(stderr, "\n> ");
            if (!std::getline(std::cin, line)) break;
          }
          first = false;
          if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
          if (line == "/bye" || line == "/exit") break;
          messages.push_back({{"role", "user"}, {"content", line}});
          const std::string text = render_chat(tmpl, messages, true);
          const std::vector<int32_t> ids = tok->encode(text, false);
          const GenerationResult r = gen.generate(ids, o->sp, print);
          messages.push_back({{"role", "assistant"}, {"content", r.text}});
          report(r);
          line.clear();
        }
      }
    } catch (...) {
      driver.release();
      throw;
    }
    driver.release();
    finish_run(*engine, o->engine);
  });
}

}  // namespace moep::cli
