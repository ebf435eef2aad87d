// The HTTP front of `moep serve`: an OpenAI-compatible API over a BatchScheduler, on server/http.h.
//
//   POST /v1/chat/completions   POST /v1/completions   (stream: server-sent events ending with "data: [DONE]")
//   GET  /v1/models   GET /v1/models/{id}   GET /health   GET /metrics (Prometheus text)
//
// Each request is parsed and checked (openai_api.h), its prompt rendered (chat template, under --request-timeout)
// and tokenized on the HTTP thread, then submitted to the scheduler, whose engine thread delivers text pieces back
// through a per-request queue. A client that goes away, streaming or not (a write fails, or the socket is found
// closed), has its request cancelled, which frees its slot before the next step.
//
// Threads: listen() runs on a thread of its own; each connection has a thread (server/http.h), up to
// --http-threads; shutdown() may be called from any thread, more than once.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "runtime/batch_scheduler.h"
#include "server/openai_api.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moep::server {

struct ServerOptions {
  std::string host = "127.0.0.1";   // loopback unless told otherwise
  int port = 8080;                   // 0: any free port (bind() returns it)
  std::string api_key;               // empty: no key; else every request but GET /health needs "Bearer <key>"
  size_t max_body_bytes = 1 << 20;   // larger request bodies get 413
  int http_threads = 0;              // connections open at once (a thread each); 0: 512. Beyond: 503
  double read_timeout_s = 20;        // a request's head and body must arrive within this, from its first byte
  size_t max_queued = 64;            // with this many waiting for a slot (and none free), new requests get 503
  double request_timeout_s = 600;    // a generation still running after this is cancelled
  bool log_requests = true;          // one line per request on stderr
  int n_ranks = 1;                   // for /metrics
  RequestLimits limits;
};

class HttpServer {
 public:
  // `chat_template` may be null: chat requests are then refused with 400 saying `template_error`.
  // The scheduler, tokenizer and template must outlive the server.
  HttpServer(ServerOptions options, BatchScheduler& scheduler, const Tokenizer& tokenizer,
             const ChatTemplate* chat_template, std::string template_error);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port. Returns the port (the one chosen when port is 0). Throws moep::Error when it cannot.
  int bind();
  // Accepts and answers requests until shutdown(); run it on its own thread, after bind().
  void listen();
  // Refuses new generations (503), stops the scheduler (requests in flight end with an error event or 503),
  // waits up to `drain_s` seconds for their handlers to finish, then stops listening. Idempotent; later callers
  // wait for the first to finish.
  void shutdown(double drain_s = 5.0);
  // The engine cannot go on (a rank stopped answering): from now /health and every request, new or in flight,
  // get 503 with `message`. Returns once the requests in flight are answered (at most `linger_s` seconds, and at
  // least 1 s, so that health probes see it); the caller then ends the process. Any thread may call it, while the
  // scheduler is stuck in a step.
  void fail_all(const std::string& message, double linger_s = 3.0);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moep::server
