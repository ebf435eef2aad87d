// A small HTTP/1.1 server for moep serve: one thread per connection, requests read whole (head and body) under a
// total deadline, pipelined requests answered in order, half-closed connections answered, and a way for a
// handler to learn that its client has gone.
//
// Why not cpp-httplib (which moep used before): Debian 12 ships 0.11.4 compiled, and three of its behaviours cannot
// be changed from outside. It reads each request of a keep-alive connection through a fresh 4 KiB-buffered stream,
// so the bytes of pipelined requests after the first are dropped; it has only a per-recv() timeout, so a client
// sending a byte a second holds its thread for ever, and its fixed thread pool then starves everyone (33 such
// clients stopped /health); and it gives a handler no socket, so a non-streamed request cannot see its client go.
//
// Threads: listen() runs the accept loop on the caller's thread; each connection gets a thread of its own, up to
// max_connections (beyond: 503 and close). A slow client costs a sleeping thread until its deadline, not a place
// in a queue in front of everyone else. Handlers run on the connection's thread.
//
// Deadlines per request: the first byte of a request must come within keep_alive_timeout_s of the previous answer
// (or of the connect); from then, its head and body must be whole within read_timeout_s, else the connection is
// closed (408 if nothing of the request is answered yet). Each write must make progress within write_timeout_s.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <exception>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace moep::server::http {

struct Request {
  std::string method;   // "GET", "POST", ...
  std::string target;   // as sent ("/v1/models?x=1")
  std::string path;     // target without the query, %-decoded
  std::string version;  // "HTTP/1.1" or "HTTP/1.0"
  std::vector<std::pair<std::string, std::string>> headers;  // in order; names as sent
  std::string body;     // de-chunked
  bool body_too_large = false;  // the body was over max_body_bytes: not read, `body` empty; the connection closes
  std::string remote_addr;
  int remote_port = 0;
  std::vector<std::string> matches;  // the route's regex groups ([0]: the whole path)

  bool has_header(const std::string& name) const;                 // case-insensitive
  std::string get_header_value(const std::string& name) const;    // the first, or ""
};

class Connection;

// What a chunked content provider writes through. write() returns false once the client is gone (the provider
// should then return false); done() ends the response.
class DataSink {
 public:
  explicit DataSink(Connection& c) : conn_(c) {}
  bool write(const char* data, size_t n);
  void done() { done_ = true; }
  bool is_done() const { return done_; }
  // False once the connection is known dead (reset, or closed and a write failed).
  bool is_writable() const;
  // The client has closed its sending side (end of file): it may be gone, or only half-closed. A write tells:
  // to a closed socket it fails soon after.
  bool peer_eof() const;

 private:
  Connection& conn_;
  bool done_ = false;
};

// Called repeatedly until it returns false (stop: the response ends, unfinished) or calls sink.done().
using ContentProvider = std::function<bool(DataSink& sink)>;
// Called once when the response is over; the argument says whether the provider finished (sink.done()).
using ContentReleaser = std::function<void(bool finished)>;

struct Response {
  int status = -1;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  ContentProvider provider;  // set: the body is streamed (chunked on HTTP/1.1)
  ContentReleaser releaser;

  void set_header(const std::string& name, const std::string& value);
  bool has_header(const std::string& name) const;
  void set_content(std::string body, const std::string& content_type);
  void set_chunked_content_provider(const std::string& content_type, ContentProvider p, ContentReleaser r = nullptr);
};

// What a handler may ask about its connection while it works.
class Connection {
 public:
  virtual ~Connection() = default;
  // Whether the client is gone. A client that closed its sending side (EOF) may still be waiting for the answer
  // (half-close); to tell the two apart on HTTP/1.1, an interim "102 Processing" answer is written, at most once
  // a second: a client that closed its socket answers it with a reset, seen at a following call. Cheap (a poll);
  // call it every few hundred ms while waiting.
  virtual bool client_gone() = 0;
  virtual bool write_all(const char* data, size_t n) = 0;  // false once the client is gone
  virtual bool dead() const = 0;                           // a write failed, or the socket reported an error
  virtual bool eof() = 0;                                  // the client's sending side is closed
};

using Handler = std::function<void(const Request&, Response&, Connection&)>;

struct Options {
  size_t max_body_bytes = 1 << 20;
  size_t max_head_bytes = 64 << 10;   // request line and headers; beyond: 431
  size_t max_target_bytes = 8 << 10;  // beyond: 414
  int max_connections = 512;          // open at once; beyond, new ones get 503 and are closed
  double read_timeout_s = 20;         // head + body of one request, from its first byte
  double keep_alive_timeout_s = 5;    // idle between requests of a connection
  double write_timeout_s = 30;        // one write without progress
  int keep_alive_max_count = 1000;    // requests per connection
};

class Server {
 public:
  explicit Server(Options o);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Routes: `pattern` is matched against the whole path (std::regex); the first route that matches is used.
  void route(const std::string& method, const std::string& pattern, Handler h);
  // Fills in the body of answers this layer makes itself (400, 404, 405, 408, 413, 414, 431, 503) when it is
  // empty; also called for a handler's answer with an empty body and a status >= 400.
  void set_error_handler(std::function<void(const Request&, Response&)> f) { error_handler_ = std::move(f); }
  // An exception out of a handler: fill `res` (default: 500).
  void set_exception_handler(std::function<void(const Request&, Response&, std::exception_ptr)> f) {
    exception_handler_ = std::move(f);
  }
  // After each answer is written (or abandoned).
  void set_logger(std::function<void(const Request&, const Response&)> f) { logger_ = std::move(f); }

  // Binds host:port (0: any free port); returns the port. Throws moep::Error when it cannot.
  int bind(const std::string& host, int port);
  // Accepts until stop(); then waits up to `drain` for the connections' threads (see stop()).
  void listen();
  // Stops accepting; connections between requests are closed at once, the others after their current answer.
  // Returns at once; listen() returns once every connection has ended, or `wait_s` seconds after stop().
  void stop(double wait_s = 3.0);
  bool is_running() const { return running_; }
  int open_connections() const { return n_connections_; }

 private:
  struct Route {
    std::string method;
    std::regex pattern;
    Handler handler;
  };
  class Conn;
  void serve(int fd, std::string remote_addr, int remote_port);
  void dispatch(Request& req, Response& res, Conn& conn);
  void finish_error(const Request& req, Response& res);

  Options opt_;
  std::vector<Route> routes_;
  std::function<void(const Request&, Response&)> error_handler_;
  std::function<void(const Request&, Response&, std::exception_ptr)> exception_handler_;
  std::function<void(const Request&, const Response&)> logger_;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  double stop_wait_s_ = 3.0;
  std::atomic<int> n_connections_{0};
  std::mutex conns_mu_;
  std::condition_variable conns_cv_;
};

}  // namespace moep::server::http
