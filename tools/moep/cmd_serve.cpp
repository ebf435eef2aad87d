// moep serve MODEL_DIR [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--parallel 4] [--ctx 4096] ...
// A private OpenAI-compatible HTTP server (docs/SERVER.md). Under mpirun, rank 0 serves HTTP and leads every
// batched step from its main thread; the other ranks follow. SIGINT/SIGTERM (to rank 0, or to a process run
// without mpirun) and SIGUSR1 (to mpirun, which forwards it) end it cleanly: every rank exits 0.
#include "commands.h"

#ifdef MOEP_WITH_SERVER

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <thread>

#include "comm/communicator.h"
#include "common.h"
#include "core/error.h"
#include "progress.h"
#include "runtime/batch_scheduler.h"
#include "runtime/engine.h"
#include "runtime/step_driver.h"
#include "server/server.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moep::cli {

namespace {


// SIGINT, SIGTERM and SIGUSR1 (which mpirun forwards to every rank, unlike the other two: it ends the job with
// exit status 0), taken by one thread with sigtimedwait (no async-signal-safety concerns). Call block_signals()
// before any other thread exists (threads inherit the mask: MPI's, the pool's, the HTTP server's).
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  return set;
}

void block_signals() {
  // Default dispositions first: a signal ignored by whoever started us would never reach sigtimedwait.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGUSR1, SIG_DFL);
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write must not kill the server
}

// However a stop goes (a handler stuck, a rank not answering), the process ends this long after the first signal.
constexpr double kStopDeadlineS = 10.0;

class SignalWatcher {
 public:
  // on_signal(sig) runs on the watcher's thread for the first signal; a second signal ends the process at once, and
  // so does kStopDeadlineS passing after the first (status 1, saying so).
  explicit SignalWatcher(std::function<void(int)> on_signal) : on_signal_(std::move(on_signal)) {
    thread_ = std::thread([this] { loop(); });
  }
  ~SignalWatcher() {
    done_ = true;
    thread_.join();
  }
  // Seconds since the first signal (negative: none yet).
  double since_signal() const {
    const int64_t t = signalled_ns_.load();
    if (t == 0) return -1;
    return double(std::chrono::steady_clock::now().time_since_epoch().count() - t) * 1e-9;
  }

 private:
  void loop() {
    const sigset_t set = stop_signals();
    const timespec tick{0, 200 * 1000 * 1000};
    while (!done_) {
      const int sig = sigtimedwait(&set, nullptr, &tick);
      if (sig <= 0) {
        if (since_signal() > kStopDeadlineS) {
          std::fprintf(stderr, "moep serve: still running %.0f s after the signal: exiting now\n", kStopDeadlineS);
          std::_Exit(1);
        }
        continue;
      }
      if (signalled_ns_.load() != 0) {
        std::fprintf(stderr, "moep serve: second signal %d: exiting now\n", sig);
        std::_Exit(128 + sig);
      }
      signalled_ns_ = std::chrono::steady_clock::now().time_since_epoch().count();
      on_signal_(sig);
    }
  }
  std::function<void(int)> on_signal_;
  std::atomic<bool> done_{false};
  std::atomic<int64_t> signalled_ns_{0};
  std::thread thread_;
};

std::string default_model_id(const std::string& dir) {
  std::filesystem::path p(dir);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "models/foo/" -> "models/foo"
  // A GGUF file names its model without the extension ("models/x-Q4_K_M.gguf" -> "x-Q4_K_M").
  const std::string name = (p.extension() == ".gguf" ? p.stem() : p.filename()).string();
  return name.empty() || name == "." ? "moep" : name;
}

}  // namespace

void register_serve(CLI::App& app) {
  struct Opts {
    std::string model, model_name, chat_template;
    server::ServerOptions server;
    int64_t parallel = 4, ctx = 4096, max_rows = 128;
    int32_t max_tokens_cap = 0, default_max_tokens = 256;
    bool quiet = false;
    SamplingParams sp;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API (see docs/SERVER.md)");
  cmd->add_option("model", o->model, "Model directory (config.json, safetensors, tokenizer.json) or a .gguf file")->required();
  cmd->add_option("--host", o->server.host, "Address to listen on (default 127.0.0.1: this machine only)")
      ->capture_default_str();
  cmd->add_option("--port", o->server.port, "Port (0: any free port, printed at start)")->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", o->server.api_key,
                  "Require 'Authorization: Bearer KEY' on every request but GET /health")
      ->envname("MOEP_API_KEY");
  cmd->add_option("--chat-template", o->chat_template, "Jinja file to use instead of the model's chat template");
  cmd->add_option("--model-name", o->model_name, "Model id clients use (default: the model directory's name)");
  cmd->add_option("--parallel", o->parallel, "Sequences decoded together (slots)")->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--ctx", o->ctx, "Context per sequence, tokens (prompt + completion; at most the model's)")
      ->check(CLI::Range(16, 1 << 22))
      ->capture_default_str();
  cmd->add_option("--max-rows", o->max_rows, "Rows per batched step (decode rows + prefill chunks)")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--max-tokens-cap", o->max_tokens_cap, "Largest max_tokens a request may ask for (0: --ctx)")
      ->check(CLI::Range(0, 1 << 22));
  cmd->add_option("--default-max-tokens", o->default_max_tokens,
                  "max_tokens of a request that gives none (cut to the context left)")
      ->check(CLI::Range(1, 1 << 22))
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", o->server.max_body_bytes, "Largest request body accepted (413 beyond)")
      ->check(CLI::Range(size_t(1024), size_t(1) << 30))
      ->capture_default_str();
  cmd->add_option("--max-queued", o->server.max_queued, "With this many requests waiting for a slot, new ones get 503")
      ->check(CLI::Range(size_t(0), size_t(1) << 20))
      ->capture_default_str();
  cmd->add_option("--http-threads", o->server.http_threads,
                  "Connections open at once, a thread each (0: 512); more get 503")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--read-timeout", o->server.read_timeout_s,
                  "Seconds a request's head and body may take to arrive, from its first byte (slower clients are "
                  "dropped with 408)")
      ->check(CLI::Range(0.1, 1e6))
      ->capture_default_str();
  cmd->add_option("--request-timeout", o->server.request_timeout_s,
                  "Seconds after which a generation (and the chat template's rendering) is cancelled")
      ->check(CLI::Range(1.0, 1e6))
      ->capture_default_str();
  cmd->add_flag("--quiet", o->quiet, "Do not log one line per request");
  cmd->add_option("--temp,--temperature", o->sp.temperature, "Default temperature of requests that give none")
      ->capture_default_str();
  cmd->add_option("--top-k", o->sp.top_k, "Default top_k (0: off)")
      ->capture_default_str();
  cmd->add_option("--top-p", o->sp.top_p, "Default top_p (1: off)")
      ->capture_default_str();
  cmd->add_option("--min-p", o->sp.min_p, "Default min_p (0: off)")
      ->capture_default_str();
  cmd->add_option("--repeat-penalty", o->sp.repetition_penalty, "Default repetition_penalty (1: off)")
      ->capture_default_str();
  add_engine_flags(cmd, o->engine);
  cmd->callback([o] {
    if (o->engine.stats || !o->engine.stats_json.empty() || !o->engine.trace.empty())
      fail("serve: --stats, --stats-json and --trace are not available here; GET /metrics reports the time split");
    o->sp.validate();
    block_signals();  // before MPI, the thread pool or the HTTP server start threads

    // A signal while loading or before serving ends the process at once; afterwards it shuts down cleanly.
    std::mutex http_mu;  // guards http_ptr against the server going away while the watcher uses it
    server::HttpServer* http_ptr = nullptr;
    std::atomic<bool> following{false};
    SignalWatcher watcher([&](int sig) {
      std::lock_guard<std::mutex> lk(http_mu);
      if (server::HttpServer* h = http_ptr) {
        std::fprintf(stderr, "moep serve: signal %d: shutting down\n", sig);
        h->shutdown();
      } else if (!following.load()) {
        std::fprintf(stderr, "moep serve: signal %d before serving: exiting\n", sig);
        std::_Exit(128 + sig);
      }
      // Followers wait for rank 0 to release them (it got the same signal from mpirun, or will be told).
    });

    auto comm = make_communicator();
    const bool root = comm->rank() == 0;
    EngineOptions eo = make_engine_options(o->model, o->engine);
    const ModelConfig peek = load_model_config(o->model);
    eo.model_config = peek;
    eo.limits.n_slots = o->parallel;
    eo.limits.max_rows = std::max<int64_t>(o->max_rows, 1);
    eo.limits.max_ctx = std::min<int64_t>(o->ctx, std::max<int64_t>(peek.max_position, 16));
    ProgressBar bar("loading weights");
    if (root) eo.load_progress = [&](size_t d, size_t t) { bar.update(d, t); };
    const auto t_load = std::chrono::steady_clock::now();
    auto engine = Engine::create(eo, std::move(comm));
    bar.finish();
    StepDriver driver(*engine);
    if (!root) {
      following = true;
      // Bounded: rank 0 releases the followers when it stops; if it does not within kStopDeadlineS + 2 s of a signal
      // (rank 0 ends itself by then), give up.
      std::atomic<bool> followed{false};
      std::thread guard([&] {
        while (!followed) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
          if (watcher.since_signal() > kStopDeadlineS + 2 && !followed) {
            std::fprintf(stderr, "moep serve: rank %d: not released %.0f s after a signal: exiting\n", engine->rank(),
                         kStopDeadlineS + 2);
            std::_Exit(1);
          }
        }
      });
      driver.follow();
      followed = true;
      guard.join();
      return;
    }

    // Rank 0 from here on: every path must release the followers (the scheduler's run() does on return).
    std::unique_ptr<BatchScheduler> sched;
    std::unique_ptr<server::HttpServer> http;
    std::optional<Tokenizer> tok;
    std::optional<ChatTemplate> tmpl;
    try {
      tok = Tokenizer::load(o->model);
      std::string template_error;
      try {
        tmpl = ChatTemplate::load(o->model, o->chat_template);
      } catch (const moep::Error& e) {
        if (!o->chat_template.empty()) throw;  // asked for: a file that cannot be read is an error, not a note
        template_error = e.what();
        std::fprintf(stderr, "moep serve: note: no chat template (%s): /v1/chat/completions will refuse requests\n",
                     e.what());
      }
      sched = std::make_unique<BatchScheduler>(driver, *tok, eos_token_ids(o->model, engine->config(), &*tok));

      server::ServerOptions so = o->server;
      so.log_requests = !o->quiet;
      so.n_ranks = engine->comm().size();
      so.limits.model_id = o->model_name.empty() ? default_model_id(o->model) : o->model_name;
      so.limits.max_context = sched->max_context();
      so.limits.vocab_size = engine->config().vocab_size;
      so.limits.max_tokens_cap =
          int32_t(std::min<int64_t>(o->max_tokens_cap > 0 ? o->max_tokens_cap : INT32_MAX, sched->max_context()));
      so.limits.default_max_tokens = o->default_max_tokens;
      so.limits.defaults = o->sp;
      const std::string model_id = so.limits.model_id;
      http = std::make_unique<server::HttpServer>(so, *sched, *tok, tmpl ? &*tmpl : nullptr, template_error);
      const int port = http->bind();
      std::fprintf(stderr, "moep serve: %s on %d rank(s), %d threads; loaded in %.1f s\n",
                   engine->config().summary().c_str(), engine->comm().size(), engine->pool().size(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count());
      std::fprintf(stderr,
                   "moep serve: model '%s', %lld slots, context %lld tokens, API key %s\n"
                   "moep serve: listening on http://%s:%d (pid %d)\n",
                   model_id.c_str(), (long long)sched->slots(), (long long)sched->max_context(),
                   so.api_key.empty() ? "not required" : "required", so.host.c_str(), port, int(getpid()));
      const bool loopback = so.host == "127.0.0.1" || so.host == "localhost" || so.host == "::1";
      if (!loopback && so.api_key.empty())
        std::fprintf(stderr, "moep serve: warning: listening on %s without an API key: anyone who can reach this "
                             "address can use the model (set --api-key or MOEP_API_KEY)\n", so.host.c_str());
      std::fflush(stderr);
    } catch (...) {
      driver.release();
      throw;
    }

    // A rank that stops answering in a step: tell the clients (503) before the job ends (on this, the main thread,
    // stuck in that step).
    engine->comm().set_stall_handler([&](const std::string& msg) {
      std::fprintf(stderr, "moep serve: %s\n", msg.c_str());
      http->fail_all(msg);
    });
    std::thread http_thread([&] { http->listen(); });
    {
      std::lock_guard<std::mutex> lk(http_mu);
      http_ptr = http.get();
    }
    std::exception_ptr failure;
    try {
      sched->run();  // until shutdown() stops it; releases the followers
    } catch (...) {
      failure = std::current_exception();
      driver.release();
    }
    {
      std::lock_guard<std::mutex> lk(http_mu);
      http_ptr = nullptr;
    }
    http->shutdown();
    http_thread.join();
    std::fprintf(stderr, "moep serve: stopped\n");
    if (failure) std::rethrow_exception(failure);
  });
}

}  // namespace moep::cli

#else  // built without the server (MOEP_WITH_SERVER off)

#include "core/error.h"

namespace moep::cli {
void register_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "Serve the model over HTTP (not in this build: MOEP_WITH_SERVER is off)");
  cmd->allow_extras();
  cmd->callback([] { fail("serve: this moep was built without the HTTP server (cmake -DMOEP_WITH_SERVER=ON)"); });
}
}  // namespace moep::cli

#endif
