#include "server/server.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"
#include "server/http.h"
#include "server/metrics.h"
#include "text/jinja.h"

namespace moep::server {

namespace {

using Clock = std::chrono::steady_clock;
using ojson = nlohmann::ordered_json;

constexpr auto kPollInterval = std::chrono::milliseconds(250);  // how often a waiting handler looks around
constexpr double kKeepAliveCommentS = 15.0;  // an idle stream gets an SSE comment this often
constexpr double kCancelGraceS = 30.0;       // after cancelling, how long to wait for the scheduler's Done

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Events of one request, from the engine thread (push) to its HTTP handler (take).
struct Generation {
  uint64_t id = 0;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<RequestEvent> events;

  void push(const RequestEvent& e) {
    {
      std::lock_guard<std::mutex> lk(mu);
      events.push_back(e);
    }
    cv.notify_one();
  }
  // Waits up to `timeout` for at least one event; returns all there are (maybe none).
  std::vector<RequestEvent> take(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait_for(lk, timeout, [&] { return !events.empty(); });
    std::vector<RequestEvent> out(std::make_move_iterator(events.begin()), std::make_move_iterator(events.end()));
    events.clear();
    return out;
  }
};

// Counts a request in flight for as long as it lives.
class InFlight {
 public:
  explicit InFlight(std::atomic<int>& n) : n_(n) { n_++; }
  ~InFlight() { n_--; }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  std::atomic<int>& n_;
};

const char* route_of(const std::string& path) {
  for (const char* r : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"})
    if (path == r) return r;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

// `s` with control characters replaced, at most 200 bytes (for the log: a client cannot forge log lines).
std::string printable(const std::string& s) {
  std::string out = s.substr(0, 200);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

ApiError server_error(int status, const std::string& message, const std::string& code = "") {
  return ApiError(status, message, "server_error", "", code);
}

}  // namespace

struct HttpServer::Impl {
  ServerOptions opt;
  BatchScheduler& sched;
  const Tokenizer& tok;
  const ChatTemplate* tmpl;
  std::string template_error;
  http::Server svr;
  Metrics metrics;
  const Clock::time_point started = Clock::now();
  const int64_t created = int64_t(std::time(nullptr));
  std::atomic<bool> stopping{false};
  std::atomic<bool> failed{false};  // fail_all() was called: `failure` says why
  std::mutex failure_mu;
  std::string failure;
  std::atomic<int> in_flight{0};
  std::once_flag shutdown_once;
  std::mutex listen_mu;
  bool listen_started = false;   // listen() was entered (and not refused)
  bool listen_refused = false;   // shutdown() came first: listen() must not start
  std::mutex rng_mu;
  std::mt19937_64 rng{std::random_device{}()};

  Impl(ServerOptions o, BatchScheduler& s, const Tokenizer& t, const ChatTemplate* ct, std::string te)
      : opt(std::move(o)), sched(s), tok(t), tmpl(ct), template_error(std::move(te)), svr(http_options(opt)) {}

  static http::Options http_options(const ServerOptions& o) {
    http::Options h;
    h.max_body_bytes = o.max_body_bytes;
    h.max_connections = o.http_threads > 0 ? o.http_threads : 512;
    h.read_timeout_s = o.read_timeout_s;
    return h;
  }

  std::string new_id(const char* prefix) {
    std::lock_guard<std::mutex> lk(rng_mu);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%016llx%08x", (unsigned long long)rng(), unsigned(rng() & 0xffffffffu));
    return std::string(prefix) + buf;
  }

  static void send_error(http::Response& res, const ApiError& e) {
    res.status = e.status();
    res.set_content(error_body(e), "application/json");
    if (e.status() == 401) res.set_header("WWW-Authenticate", "Bearer");
  }

  void check_auth(const http::Request& req) const {
    if (opt.api_key.empty()) return;
    if (!req.has_header("Authorization"))
      throw ApiError(401, "You didn't provide an API key: send the header 'Authorization: Bearer <key>'",
                     "invalid_request_error", "", "invalid_api_key");
    if (!bearer_matches(req.get_header_value("Authorization"), opt.api_key))
      throw ApiError(401, "Incorrect API key provided", "invalid_request_error", "", "invalid_api_key");
  }

  // The body (read whole by the HTTP layer, at most max_body_bytes whatever the transfer encoding). Throws
  // ApiError 413 or 415.
  const std::string& read_body(const http::Request& req) {
    if (req.get_header_value("Content-Type").rfind("multipart/form-data", 0) == 0)
      throw ApiError(415, "multipart/form-data bodies are not accepted; send JSON");
    if (req.body_too_large)  // not read: the connection closes after the answer
      throw ApiError(413, "The request body is larger than this server accepts (" +
                              std::to_string(opt.max_body_bytes) + " bytes, --max-body-bytes)",
                     "invalid_request_error", "", "request_too_large");
    return req.body;
  }

  // Wraps a handler: API errors become OpenAI-shaped JSON answers, anything else a 500.
  template <class F>
  void guarded(http::Response& res, F&& f) {
    try {
      f();
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, server_error(500, std::string("internal error: ") + e.what()));
    }
  }

  // Renders and tokenizes the prompt; for a chat request also decides how its output is parsed (`format`).
  // Rendering must be done by `deadline` (the request's --request-timeout): a template comes with the model, from
  // anyone, and may loop for long on few, slow steps.
  std::vector<int32_t> tokenize(ApiRequest& r, OutputFormat& format, Clock::time_point deadline) {
    std::string text;
    if (r.endpoint == Endpoint::Chat) {
      if (!tmpl) throw ApiError(400, "This model has no chat template (" + template_error + "); use /v1/completions");
      try {
        const ojson extra = template_extra(r);
        jinja::RenderOptions options;
        options.deadline = deadline;
        text = render_chat(*tmpl, template_messages(*tmpl, r.messages, extra), true, extra, options);
        format = detect_output_format(tmpl->select(extra).source(), text);
        if (!extra.contains("tools")) format.tools = ToolCallFormat::None;
        format.max_tool_calls = r.parallel_tool_calls ? format.max_tool_calls : 1;
      } catch (const jinja::TemplateRaised& e) {
        throw ApiError(400, "The chat template refused the messages: " + e.message(), "invalid_request_error",
                       "messages");
      } catch (const moep::Error& e) {
        if (Clock::now() > deadline)
          throw server_error(503, "rendering the chat template ran longer than the server allows (--request-timeout)",
                             "timeout");
        throw ApiError(400, std::string("The chat template could not render the messages: ") + e.what(),
                       "invalid_request_error", "messages");
      }
    }
    try {
      // Chat: the template already wrote the special tokens. Completions: as the tokenizer's post-processor says.
      return r.endpoint == Endpoint::Chat ? tok.encode(text, false) : tok.encode(r.prompt, true);
    } catch (const moep::Error& e) {
      throw ApiError(400, std::string("The prompt could not be tokenized: ") + e.what(), "invalid_request_error",
                     r.endpoint == Endpoint::Chat ? "messages" : "prompt");
    }
  }

  // The text of one token as logprobs show it.
  std::string token_text(int32_t id) const {
    const int32_t ids[1] = {id};
    return tok.decode(ids, /*skip_special_tokens=*/false);
  }

  // The logprobs JSON of `tokens` for a response or a chunk (null when the request asked for none).
  ojson logprobs_json(const ApiRequest& r, std::span<const TokenLogprobs> tokens, int64_t* text_offset) const {
    if (r.logprobs < 0) return nullptr;
    auto text = [this](int32_t id) { return token_text(id); };
    return r.endpoint == Endpoint::Chat ? chat_logprobs_json(tokens, r.logprobs, text)
                                        : completion_logprobs_json(tokens, r.logprobs, text, text_offset);
  }

  // What a request is refused with once the server stops taking requests.
  ApiError refusal() {
    if (!failed) return server_error(503, "the server is shutting down", "shutting_down");
    std::lock_guard<std::mutex> lk(failure_mu);
    return server_error(503, failure, "cluster_failed");
  }

  // The error a generation that ended without "stop"/"length" is answered with.
  ApiError ended_badly(const RequestEvent& done, bool timed_out) const {
    if (done.finish_reason == "error") return server_error(500, "generation failed: " + done.error);
    if (timed_out)
      return server_error(503, "generation ran longer than the server allows (--request-timeout)", "timeout");
    return server_error(503, "the server is shutting down", "shutting_down");
  }

  void handle_generation(Endpoint ep, const http::Request& req, http::Response& res, http::Connection& conn) {
    const Clock::time_point t0 = Clock::now();
    check_auth(req);  // before the body is looked at (a body too large for a bad key is still 401)
    const std::string& body = read_body(req);
    if (stopping) throw refusal();
    ApiRequest r = parse_request(ep, body, opt.limits);
    OutputFormat format;
    std::vector<int32_t> ids =
        tokenize(r, format, t0 + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(opt.request_timeout_s)));
    // tool_choice "required" or a named function: the turn starts with the family's call marker and the call's JSON
    // is held to the tools' schemas.
    std::optional<ForcedToolCall> forced;
    if (ep == Endpoint::Chat) forced = forced_tool_call(format.tools, tool_call_constraint(r));
    if (forced && r.grammar)
      throw ApiError(400, "response_format cannot be combined with a forced tool call (tool_choice \"required\" or a "
                          "named function): the call's JSON already follows the tool's parameters",
                     "invalid_request_error", "response_format");
    if (forced && !forced->prefix.empty()) {
      const std::vector<int32_t> marker = tok.encode(forced->prefix, false);
      ids.insert(ids.end(), marker.begin(), marker.end());
    }
    fit_to_context(r, int64_t(ids.size()), opt.limits);
    const SchedulerStats load = sched.stats();
    if (load.queued >= opt.max_queued && load.queued + load.active >= size_t(sched.slots()))
      throw server_error(503, "The server is busy (" + std::to_string(opt.max_queued) +
                                  " requests are waiting already); try again later",
                         "server_overloaded");

    auto gen = std::make_shared<Generation>();
    GenerationRequest g;
    g.prompt = std::move(ids);
    g.params = r.params;
    g.top_logprobs = r.logprobs;
    g.skip_special_tokens = format.tools == ToolCallFormat::None;
    g.grammar = forced ? forced->grammar : r.grammar;
    g.on_event = [gen](const RequestEvent& e) { gen->push(e); };
    auto in_flight_token = std::make_shared<InFlight>(in_flight);
    try {
      gen->id = sched.submit(std::move(g));
    } catch (const moep::Error& e) {
      if (stopping) throw refusal();
      throw ApiError(400, e.what(), "invalid_request_error");
    }
    const std::string id = new_id(ep == Endpoint::Chat ? "chatcmpl-" : "cmpl-");
    const int64_t created_at = int64_t(std::time(nullptr));
    const std::string prefix = forced ? forced->prefix : "", suffix = forced ? forced->suffix : "";
    if (r.stream)
      stream_response(ep, r, format, gen, std::move(in_flight_token), id, created_at, prefix, suffix, res);
    else
      whole_response(ep, r, format, *gen, id, created_at, prefix, suffix, res, conn);
  }

  // "call_" and 24 random hex digits; Mistral's templates take 9 letters and digits only.
  std::string new_call_id(const OutputFormat& format) {
    if (format.tools != ToolCallFormat::Mistral) return new_id("call_");
    static const char kAlnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    std::lock_guard<std::mutex> lk(rng_mu);
    std::string id(9, 'a');
    for (char& c : id) c = kAlnum[rng() % (sizeof kAlnum - 1)];
    return id;
  }

  // A forced tool call's output is wrapped in `prefix` (always: it is in the prompt) and `suffix` (once the call's
  // JSON is whole, i.e. when the generation stopped rather than ran out of tokens) before it is parsed.
  void whole_response(Endpoint ep, const ApiRequest& r, const OutputFormat& format, Generation& gen,
                      const std::string& id, int64_t created_at, const std::string& prefix, const std::string& suffix,
                      http::Response& res, http::Connection& conn) {
    const Clock::time_point t0 = Clock::now();
    std::string text = prefix;
    std::vector<TokenLogprobs> logprobs;
    std::optional<RequestEvent> done;
    bool timed_out = false;
    // Bounded: the scheduler ends every request (max_tokens, context); past the timeout it is cancelled, and past
    // the grace after that the handler gives up.
    while (!done) {
      for (RequestEvent& e : gen.take(kPollInterval)) {
        if (e.kind == RequestEvent::Text) {
          text += e.text;
          logprobs.insert(logprobs.end(), e.logprobs.begin(), e.logprobs.end());
        } else {
          done = std::move(e);
        }
      }
      if (done) break;
      // The engine cannot go on (fail_all()): no event will come.
      if (failed) throw refusal();
      // The client went away: its generation is cancelled, which frees its slot before the next step. Its Done
      // ("cancelled") is left to the scheduler; nothing is answered.
      if (!timed_out && conn.client_gone()) {
        sched.cancel(gen.id);
        metrics.count_generation("cancelled", 0);
        res.status = 499;  // nginx's "client closed request", for the log
        res.set_content(error_body(server_error(499, "the client closed the connection")), "application/json");
        return;
      }
      const double waited = seconds_since(t0);
      if (!timed_out && waited > opt.request_timeout_s) {
        sched.cancel(gen.id);
        timed_out = true;
      }
      if (timed_out && waited > opt.request_timeout_s + kCancelGraceS)
        throw server_error(500, "the scheduler did not end a cancelled request");
    }
    metrics.count_generation(done->finish_reason, done->time_to_first_token_s);
    if (done->finish_reason != "stop" && done->finish_reason != "length") throw ended_badly(*done, timed_out);
    res.status = 200;
    int64_t text_offset = 0;
    const Usage usage{done->prompt_tokens, done->completion_tokens};
    const ojson lp = logprobs_json(r, logprobs, &text_offset);
    if (ep == Endpoint::Chat) {
      if (done->finish_reason == "stop") text += suffix;
      ParsedOutput out = parse_output(format, text, /*partial=*/false);
      for (ParsedToolCall& c : out.tool_calls)
        if (c.id.empty()) c.id = new_call_id(format);
      res.set_content(dump_json(chat_completion_json(id, created_at, r.model, out, done->finish_reason, usage, lp)),
                      "application/json");
    } else {
      res.set_content(dump_json(completion_json(ep, id, created_at, r.model, text, done->finish_reason, usage, lp)),
                      "application/json");
    }
  }

  // Server-sent events: a chunk per text piece, a last chunk with finish_reason, optionally a usage chunk, then
  // "data: [DONE]". A generation that ends badly sends {"error": {...}} instead (the openai client raises it).
  struct StreamState {
    bool started = false;
    bool finished = false;  // Done received
    bool timed_out = false;
    int64_t text_offset = 0;  // Completions' logprobs.text_offset of the next token
    Clock::time_point t0 = Clock::now();
    Clock::time_point last_write = Clock::now();
    std::optional<OutputStream> output;  // Chat: splits the text into content, reasoning and tool-call deltas
    std::string suffix;                  // a forced tool call's closing marker, pushed when the generation stops
  };

  void stream_response(Endpoint ep, const ApiRequest& r, const OutputFormat& format, std::shared_ptr<Generation> gen,
                       std::shared_ptr<InFlight> in_flight_token, const std::string& id, int64_t created_at,
                       const std::string& prefix, const std::string& suffix, http::Response& res) {
    auto st = std::make_shared<StreamState>();
    if (ep == Endpoint::Chat) {
      st->output.emplace(format, [this, format] { return new_call_id(format); });
      st->output->push(prefix);  // a marker alone: nothing to send yet
      st->suffix = suffix;
    }
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    const std::string model = r.model;
    const bool include_usage = r.include_usage;
    auto provider = [this, ep, r, gen, st, id, created_at, model, include_usage](http::DataSink& sink) {
      auto write = [&](const std::string& s) {
        if (s.empty()) return true;  // an empty write would end the chunked stream
        st->last_write = Clock::now();
        return sink.write(s.data(), s.size());
      };
      if (!st->started) {
        st->started = true;
        if (ep == Endpoint::Chat && !write(sse_event(chunk_json(ep, id, created_at, model, "", "", true))))
          return false;
      }
      if (failed) {  // the engine cannot go on (fail_all()): no Done will come
        st->finished = true;
        metrics.count_generation("error", 0);
        if (write(sse_event(error_json(refusal())) + "data: [DONE]\n\n")) sink.done();
        return false;
      }
      const std::vector<RequestEvent> events = gen->take(kPollInterval);
      std::string out;  // everything that came, in one write
      for (const RequestEvent& e : events) {
        if (e.kind == RequestEvent::Text) {
          const ojson lp = logprobs_json(r, e.logprobs, &st->text_offset);
          if (ep == Endpoint::Chat) {
            const OutputDelta d = st->output->push(e.text);
            if (!d.empty() || !lp.is_null()) out += sse_event(chat_delta_chunk_json(id, created_at, model, d, "", false, lp));
          } else {
            out += sse_event(chunk_json(ep, id, created_at, model, e.text, "", false, lp));
          }
          continue;
        }
        st->finished = true;
        metrics.count_generation(e.finish_reason, e.time_to_first_token_s);
        if (e.finish_reason == "stop" || e.finish_reason == "length") {
          std::string reason = e.finish_reason;
          if (ep == Endpoint::Chat) {
            if (reason == "stop" && !st->suffix.empty()) {
              const OutputDelta closing = st->output->push(st->suffix);
              if (!closing.empty()) out += sse_event(chat_delta_chunk_json(id, created_at, model, closing, "", false, nullptr));
            }
            const OutputDelta d = st->output->finish();
            if (!d.empty()) out += sse_event(chat_delta_chunk_json(id, created_at, model, d, "", false, nullptr));
            if (reason == "stop" && !st->output->tool_calls().empty()) reason = "tool_calls";
          }
          out += sse_event(chunk_json(ep, id, created_at, model, "", reason, false));
          if (include_usage)
            out += sse_event(usage_chunk_json(ep, id, created_at, model, Usage{e.prompt_tokens, e.completion_tokens}));
        } else {
          out += sse_event(error_json(ended_badly(e, st->timed_out)));
        }
        out += "data: [DONE]\n\n";
        break;
      }
      if (!write(out)) return false;
      if (st->finished) {
        sink.done();
        return true;
      }
      const double waited = seconds_since(st->t0);
      if (!st->timed_out && waited > opt.request_timeout_s) {
        sched.cancel(gen->id);  // its Done ("cancelled") comes next and ends the stream with an error event
        st->timed_out = true;
      }
      if (st->timed_out && waited > opt.request_timeout_s + kCancelGraceS) return false;
      if (!events.empty()) return true;
      // Nothing new: is the client still there? A reset connection says so at once; one closed without a reset
      // reads as end of file, as a half-closed one does: a comment tells them apart (a closed socket refuses it).
      if (!sink.is_writable()) return false;
      const double quiet = seconds_since(st->last_write);
      if ((quiet > kKeepAliveCommentS || (sink.peer_eof() && quiet > 1.0)) && !write(": keep-alive\n\n")) return false;
      return true;
    };
    // Runs when the response is done with, however it ended: a request that did not finish is cancelled (the
    // client went away, or a write failed), which frees its slot.
    auto releaser = [this, gen, st, in_flight_token](bool) {
      if (st->finished) return;
      sched.cancel(gen->id);
      metrics.count_generation("cancelled", 0);
    };
    res.set_chunked_content_provider("text/event-stream", std::move(provider), std::move(releaser));
  }

  void handle_models(const http::Request& req, http::Response& res) {
    check_auth(req);
    res.status = 200;
    res.set_content(dump_json(models_json(opt.limits.model_id, created, opt.limits.max_context)), "application/json");
  }

  void handle_model(const http::Request& req, http::Response& res) {
    check_auth(req);
    const std::string name = req.matches.size() > 1 ? req.matches[1] : "";
    if (name != opt.limits.model_id)
      throw ApiError(404, "The model '" + name + "' does not exist", "invalid_request_error", "model",
                     "model_not_found");
    res.status = 200;
    res.set_content(dump_json(model_json(opt.limits.model_id, created, opt.limits.max_context)), "application/json");
  }

  void handle_metrics(const http::Request& req, http::Response& res) {
    check_auth(req);
    ServerInfo info;
    info.model_id = opt.limits.model_id;
    info.n_ranks = opt.n_ranks;
    info.slots = sched.slots();
    info.max_context = sched.max_context();
    info.uptime_seconds = seconds_since(started);
    res.status = 200;
    res.set_content(metrics.render(sched.stats(), info), "text/plain; version=0.0.4; charset=utf-8");
  }

  void handle_health(http::Response& res) {
    // Open without a key (for liveness probes); says nothing but whether the server takes requests.
    ojson j = ojson::object();
    j["status"] = failed ? "error" : stopping ? "shutting_down" : "ok";
    if (failed) {
      std::lock_guard<std::mutex> lk(failure_mu);
      j["error"] = failure;
    }
    res.status = stopping ? 503 : 200;
    res.set_content(dump_json(j), "application/json");
  }

  void setup() {
    auto gen_handler = [this](Endpoint ep) {
      return [this, ep](const http::Request& req, http::Response& res, http::Connection& conn) {
        guarded(res, [&] { handle_generation(ep, req, res, conn); });
      };
    };
    svr.route("POST", "/v1/chat/completions", gen_handler(Endpoint::Chat));
    svr.route("POST", "/v1/completions", gen_handler(Endpoint::Completion));
    svr.route("GET", "/v1/models", [this](const http::Request& req, http::Response& res, http::Connection&) {
      guarded(res, [&] { handle_models(req, res); });
    });
    svr.route("GET", "/v1/models/(.+)", [this](const http::Request& req, http::Response& res, http::Connection&) {
      guarded(res, [&] { handle_model(req, res); });
    });
    svr.route("GET", "/metrics", [this](const http::Request& req, http::Response& res, http::Connection&) {
      guarded(res, [&] { handle_metrics(req, res); });
    });
    svr.route("GET", "/health", [this](const http::Request&, http::Response& res, http::Connection&) {
      handle_health(res);
    });
    for (const char* path : {"/v1/chat/completions", "/v1/completions"})
      svr.route("GET", path, [](const http::Request& req, http::Response& res, http::Connection&) {
        send_error(res, ApiError(405, "Use POST for " + req.path, "invalid_request_error"));
        res.set_header("Allow", "POST");
      });

    // Answers that the HTTP layer makes itself (404 unknown path, 413 body too large, 400 bad request, 408 too
    // slow, ...) get OpenAI-shaped JSON bodies too.
    svr.set_error_handler([](const http::Request& req, http::Response& res) {
      std::string message;
      switch (res.status) {
        case 404: message = "Unknown request URL: " + req.method + " " + req.path; break;
        case 413: message = "The request body is larger than this server accepts"; break;
        case 414: message = "The request URL is too long"; break;
        case 400: message = "Bad request: the HTTP request could not be parsed"; break;
        case 408: message = "The request did not arrive in time (--read-timeout)"; break;
        case 431: message = "The request's headers are too large"; break;
        case 505: message = "Only HTTP/1.0 and HTTP/1.1 are served"; break;
        default: message = "HTTP status " + std::to_string(res.status);
      }
      const ApiError e(res.status, message, res.status >= 500 ? "server_error" : "invalid_request_error");
      res.set_content(error_body(e), "application/json");
    });
    svr.set_exception_handler([](const http::Request&, http::Response& res, std::exception_ptr ep) {
      std::string what = "unknown error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, server_error(500, "internal error: " + what));
    });
    svr.set_logger([this](const http::Request& req, const http::Response& res) {
      metrics.count_http(route_of(req.path), res.status);
      if (opt.log_requests)
        std::fprintf(stderr, "moep serve: %s:%d \"%s %s\" %d\n", req.remote_addr.c_str(), req.remote_port,
                     printable(req.method).c_str(), printable(req.path).c_str(), res.status);
    });
  }
};

HttpServer::HttpServer(ServerOptions options, BatchScheduler& scheduler, const Tokenizer& tokenizer,
                       const ChatTemplate* chat_template, std::string template_error)
    : impl_(std::make_unique<Impl>(std::move(options), scheduler, tokenizer, chat_template,
                                   std::move(template_error))) {
  impl_->setup();
}

HttpServer::~HttpServer() { shutdown(0); }

int HttpServer::bind() {
  return impl_->svr.bind(impl_->opt.host, impl_->opt.port);
}

void HttpServer::listen() {
  {
    std::lock_guard<std::mutex> lk(impl_->listen_mu);
    if (impl_->listen_refused) return;
    impl_->listen_started = true;
  }
  impl_->svr.listen();
}

void HttpServer::fail_all(const std::string& message, double linger_s) {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lk(m.failure_mu);
    m.failure = message;
  }
  m.failed = true;
  m.stopping = true;
  // Handlers poll every kPollInterval and answer with 503; the answer is written after a handler returns, so
  // wait a little past the last one. The linger also lets health probes see the 503.
  const Clock::time_point t0 = Clock::now();
  while (m.in_flight > 0 && seconds_since(t0) < linger_s) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const double least = std::min(linger_s, std::max(seconds_since(t0) + 0.2, 1.0));
  while (seconds_since(t0) < least) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void HttpServer::shutdown(double drain_s) {
  std::call_once(impl_->shutdown_once, [&] {
    Impl& m = *impl_;
    m.stopping = true;
    m.sched.stop();  // every queued and active request ends ("cancelled"): their handlers answer and return
    const Clock::time_point t0 = Clock::now();
    while (m.in_flight > 0 && seconds_since(t0) < drain_s) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    bool started = false;
    {
      std::lock_guard<std::mutex> lk(m.listen_mu);
      m.listen_refused = true;
      started = m.listen_started;
    }
    // Connections between requests close at once; listen() waits up to 2 s for those still answering.
    m.svr.stop(started ? 2.0 : 0.0);
  });
}

}  // namespace moep::server
