#include "server/http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace moep::server::http {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kSliceMs = 100;            // longest single poll: how soon a waiting connection sees stop()
constexpr double kProbeIntervalS = 1.0;  // interim answers to a client that closed its side, at most this often
constexpr size_t kRecvBytes = 16 << 10;

bool iequal(const std::string& a, const std::string& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}

// Whether a comma-separated header value has `token` (case-insensitive): "keep-alive, Upgrade".
bool has_token(const std::string& value, const std::string& token) {
  size_t at = 0;
  while (at <= value.size()) {
    size_t comma = value.find(',', at);
    if (comma == std::string::npos) comma = value.size();
    if (iequal(trim(value.substr(at, comma - at)), token)) return true;
    at = comma + 1;
  }
  return false;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %-decodes a path; false on a malformed escape.
bool decode_path(const std::string& in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = hex_digit(in[i + 1]), lo = hex_digit(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out += char(hi * 16 + lo);
    i += 2;
  }
  return true;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 102: return "Processing";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
  }
}

double seconds_until(Clock::time_point t) { return std::chrono::duration<double>(t - Clock::now()).count(); }

}  // namespace

bool Request::has_header(const std::string& name) const {
  for (const auto& [k, v] : headers)
    if (iequal(k, name)) return true;
  return false;
}

std::string Request::get_header_value(const std::string& name) const {
  for (const auto& [k, v] : headers)
    if (iequal(k, name)) return v;
  return "";
}

void Response::set_header(const std::string& name, const std::string& value) {
  for (auto& [k, v] : headers)
    if (iequal(k, name)) {
      v = value;
      return;
    }
  headers.emplace_back(name, value);
}

bool Response::has_header(const std::string& name) const {
  for (const auto& [k, v] : headers)
    if (iequal(k, name)) return true;
  return false;
}

void Response::set_content(std::string b, const std::string& content_type) {
  body = std::move(b);
  provider = nullptr;
  set_header("Content-Type", content_type);
}

void Response::set_chunked_content_provider(const std::string& content_type, ContentProvider p, ContentReleaser r) {
  body.clear();
  provider = std::move(p);
  releaser = std::move(r);
  set_header("Content-Type", content_type);
}

// One client connection: its socket, the bytes read but not yet used (pipelined requests wait there), and what is
// known about the client.
class Server::Conn : public Connection {
 public:
  Conn(int fd, const Options& o, const std::atomic<bool>& stopping) : fd_(fd), opt_(o), stopping_(stopping) {}
  ~Conn() override { ::close(fd_); }

  std::string buf;        // received, not yet consumed
  bool http11 = true;     // of the request being answered
  bool answering = false; // the answer's head has been written (no interim answers after that)

  enum class Fill { Data, Eof, Timeout, Stopped, Error };
  // Receives more bytes into buf, waiting until `deadline`.
  Fill fill(Clock::time_point deadline, bool stop_aborts) {
    for (;;) {
      if (stop_aborts && stopping_) return Fill::Stopped;
      const double left = seconds_until(deadline);
      if (left <= 0) return Fill::Timeout;
      pollfd p{fd_, POLLIN, 0};
      const int ms = std::min(kSliceMs, std::max(1, int(left * 1000)));
      const int r = ::poll(&p, 1, ms);
      if (r < 0 && errno != EINTR) return Fill::Error;
      if (r <= 0) continue;
      char tmp[kRecvBytes];
      const ssize_t n = ::recv(fd_, tmp, sizeof tmp, MSG_DONTWAIT);
      if (n > 0) {
        buf.append(tmp, size_t(n));
        return Fill::Data;
      }
      if (n == 0) {
        eof_ = true;
        return Fill::Eof;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      dead_ = true;
      return Fill::Error;
    }
  }

  bool write_all(const char* data, size_t n) override {
    while (n > 0) {
      if (dead_) return false;
      const ssize_t w = ::send(fd_, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        data += w;
        n -= size_t(w);
        continue;
      }
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        // The client does not read: wait for room, at most write_timeout_s without progress.
        pollfd p{fd_, POLLOUT, 0};
        const int r = ::poll(&p, 1, int(opt_.write_timeout_s * 1000));
        if (r > 0 && !(p.revents & (POLLERR | POLLHUP | POLLNVAL))) continue;
        if (r < 0 && errno == EINTR) continue;
      }
      dead_ = true;
      return false;
    }
    return true;
  }
  bool write_all(const std::string& s) { return write_all(s.data(), s.size()); }

  bool dead() const override { return dead_; }

  // Looks at the socket without waiting: a reset or error makes the connection dead; bytes that came (the next
  // pipelined request) are kept in buf; end of file sets eof.
  void look() {
    if (dead_) return;
    pollfd p{fd_, POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, 0) <= 0) return;
    if (p.revents & (POLLERR | POLLNVAL)) {
      dead_ = true;
      return;
    }
    if (p.revents & POLLHUP) {  // both directions shut: a reset, or our writes refused
      dead_ = true;
      return;
    }
    if (!(p.revents & (POLLIN | POLLRDHUP)) || eof_) return;
    if (buf.size() > opt_.max_head_bytes + opt_.max_body_bytes) return;  // keep no more than one request ahead
    char tmp[kRecvBytes];
    const ssize_t n = ::recv(fd_, tmp, sizeof tmp, MSG_DONTWAIT);
    if (n > 0) buf.append(tmp, size_t(n));
    else if (n == 0) eof_ = true;
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) dead_ = true;
  }

  bool eof() override {
    look();
    return eof_;
  }

  bool client_gone() override {
    look();
    if (dead_) return true;
    // End of file before the answer: a half-close or a closed socket. On HTTP/1.1 an interim answer tells them
    // apart (a closed socket answers with a reset, which the next look() sees); HTTP/1.0 has no interim answers, so
    // the client is taken to wait.
    if (eof_ && http11 && !answering && Clock::now() - last_probe_ > std::chrono::duration<double>(kProbeIntervalS)) {
      last_probe_ = Clock::now();
      if (!write_all("HTTP/1.1 102 Processing\r\n\r\n")) return true;
    }
    return false;
  }

  bool eof_seen() const { return eof_; }
  int fd() const { return fd_; }

 private:
  int fd_;
  const Options& opt_;
  const std::atomic<bool>& stopping_;
  bool dead_ = false;
  bool eof_ = false;
  Clock::time_point last_probe_{};
};

bool DataSink::write(const char* data, size_t n) {
  if (n == 0) return !conn_.dead();  // an empty chunk would end the body
  return conn_.write_all(data, n);
}

bool DataSink::is_writable() const {
  Connection& c = conn_;
  c.eof();  // looks at the socket
  return !c.dead();
}

bool DataSink::peer_eof() const { return conn_.eof(); }

Server::Server(Options o) : opt_(std::move(o)) {
  if (::pipe2(wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) fail("serve: cannot create a pipe: ", std::strerror(errno));
}

Server::~Server() {
  stop(0);
  // Connection threads use this object: wait for the last (each ends within its deadlines once stopping).
  std::unique_lock<std::mutex> lk(conns_mu_);
  conns_cv_.wait(lk, [&] { return n_connections_ == 0; });
  lk.unlock();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  ::close(wake_pipe_[0]);
  ::close(wake_pipe_[1]);
}

void Server::route(const std::string& method, const std::string& pattern, Handler h) {
  routes_.push_back(Route{method, std::regex(pattern), std::move(h)});
}

int Server::bind(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int gai = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
  if (gai != 0) fail("serve: cannot listen on ", host, ":", port, " (", ::gai_strerror(gai), ")");
  std::string why = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    // SO_REUSEADDR allows a quick restart; no SO_REUSEPORT, which would let a second server share the port.
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, SOMAXCONN) == 0) {
      listen_fd_ = fd;
      break;
    }
    why = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  if (listen_fd_ < 0)
    fail("serve: cannot listen on ", host, ":", port, " (", why,
         "; address in use, or not an address of this machine?)");
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  return ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                  : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

void Server::listen() {
  if (listen_fd_ < 0) fail("serve: listen() before bind()");
  running_ = true;
  while (!stopping_) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    const int r = ::poll(p, 2, 1000);
    if (r <= 0 || stopping_) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    int yes = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);  // stream chunks go out at once
    char host[INET6_ADDRSTRLEN] = "";
    int remote_port = 0;
    if (ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
      remote_port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
      remote_port = ntohs(a->sin6_port);
    }
    static const char kBusy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        "Content-Length: 98\r\n\r\n"
        "{\"error\":{\"message\":\"too many open connections\",\"type\":\"server_error\",\"code\":\"server_overloaded\"}}";
    bool started = false;
    if (n_connections_ < opt_.max_connections) {
      n_connections_++;
      try {
        std::thread([this, fd, h = std::string(host), remote_port] { serve(fd, h, remote_port); }).detach();
        started = true;
      } catch (const std::system_error&) {
        n_connections_--;
      }
    }
    if (!started) {
      (void)!::send(fd, kBusy, sizeof kBusy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
    }
  }
  // Connections between requests close within kSliceMs; the others after their answer.
  std::unique_lock<std::mutex> lk(conns_mu_);
  conns_cv_.wait_for(lk, std::chrono::duration<double>(stop_wait_s_), [&] { return n_connections_ == 0; });
  running_ = false;
}

void Server::stop(double wait_s) {
  if (stopping_.exchange(true)) return;
  stop_wait_s_ = wait_s;
  (void)!::write(wake_pipe_[1], "x", 1);
}

void Server::finish_error(const Request& req, Response& res) {
  if (res.status >= 400 && res.body.empty() && !res.provider && error_handler_) error_handler_(req, res);
}

void Server::dispatch(Request& req, Response& res, Conn& conn) {
  const std::string& method = req.method == "HEAD" ? std::string("GET") : req.method;
  for (Route& r : routes_) {
    if (r.method != method) continue;
    std::smatch m;
    if (!std::regex_match(req.path, m, r.pattern)) continue;
    req.matches.clear();
    for (const auto& g : m) req.matches.push_back(g.str());
    try {
      r.handler(req, res, conn);
    } catch (...) {
      res = Response();
      if (exception_handler_) exception_handler_(req, res, std::current_exception());
      else res.status = 500;
    }
    if (res.status < 0) res.status = 200;
    return;
  }
  res.status = 404;
}

// Serves one connection until it closes, fails a deadline, or the server stops.
void Server::serve(int fd, std::string remote_addr, int remote_port) {
  {
    Conn conn(fd, opt_, stopping_);
    int served = 0;
    for (;;) {
      // The next request: its first byte within the keep-alive timeout.
      const Clock::time_point idle_until =
          Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.keep_alive_timeout_s));
      while (conn.buf.empty()) {
        if (conn.eof_seen() || conn.fill(idle_until, true) != Conn::Fill::Data) break;
      }
      if (conn.buf.empty()) break;
      const Clock::time_point deadline =
          Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.read_timeout_s));

      Request req;
      req.remote_addr = remote_addr;
      req.remote_port = remote_port;
      Response res;
      bool close = false;
      auto refuse = [&](int status) {  // answer a request this layer cannot take, and close
        res = Response();
        res.status = status;
        close = true;
      };
      auto fill_or_refuse = [&]() {  // more bytes of this request; false (answer set, or silent close) when none
        const Conn::Fill f = conn.fill(deadline, true);
        if (f == Conn::Fill::Data) return true;
        if (f == Conn::Fill::Timeout) refuse(408);
        else close = true, res.status = -1;  // end of file, error or stop: nothing to answer
        return false;
      };

      // Head: request line and headers, within max_head_bytes.
      size_t head_end = std::string::npos;
      bool ok = true;
      for (;;) {
        while (conn.buf.size() >= 2 && conn.buf.compare(0, 2, "\r\n") == 0) conn.buf.erase(0, 2);  // RFC 9112 2.2
        head_end = conn.buf.find("\r\n\r\n");
        if (head_end != std::string::npos) break;
        if (conn.buf.size() > opt_.max_head_bytes) {
          refuse(conn.buf.find("\r\n") == std::string::npos && conn.buf.size() > opt_.max_target_bytes ? 414 : 431);
          ok = false;
          break;
        }
        if (!fill_or_refuse()) {
          ok = false;
          break;
        }
      }
      if (ok && head_end > opt_.max_head_bytes) {
        refuse(431);
        ok = false;
      }
      size_t body_len = 0;
      bool chunked = false;
      if (ok) {
        const std::string head = conn.buf.substr(0, head_end);
        conn.buf.erase(0, head_end + 4);
        const size_t line_end = std::min(head.find("\r\n"), head.size());
        const std::string line = head.substr(0, line_end);
        const size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
        if (sp1 == std::string::npos || sp2 == sp1) {
          refuse(400);
          ok = false;
        } else {
          req.method = line.substr(0, sp1);
          req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
          req.version = line.substr(sp2 + 1);
          if (req.target.size() > opt_.max_target_bytes) refuse(414), ok = false;
          else if (req.version != "HTTP/1.1" && req.version != "HTTP/1.0") refuse(req.version.rfind("HTTP/", 0) == 0 ? 505 : 400), ok = false;
          else if (req.method.empty() || req.target.empty() || req.target.find(' ') != std::string::npos)
            refuse(400), ok = false;
        }
        conn.http11 = req.version != "HTTP/1.0";
        for (size_t at = line_end + 2; ok && at < head.size() + 2 && at <= head.size();) {
          size_t e = head.find("\r\n", at);
          if (e == std::string::npos) e = head.size();
          const std::string h = head.substr(at, e - at);
          at = e + 2;
          const size_t colon = h.find(':');
          if (h.empty() || colon == 0 || colon == std::string::npos || h[0] == ' ' || h[0] == '\t' ||
              h.find_first_of(" \t") < colon) {
            refuse(400);  // no name, or obsolete line folding
            ok = false;
            break;
          }
          req.headers.emplace_back(h.substr(0, colon), trim(h.substr(colon + 1)));
        }
        if (ok) {
          const std::string path = req.target.substr(0, req.target.find('?'));
          if (!decode_path(path, req.path)) refuse(400), ok = false;
        }
        if (ok) {
          const std::string te = req.get_header_value("Transfer-Encoding");
          size_t n_cl = 0;
          std::string cl;
          for (const auto& [k, v] : req.headers)
            if (iequal(k, "Content-Length")) {
              if (n_cl++ && v != cl) ok = false;
              cl = v;
            }
          if (!te.empty()) {
            // Both framings at once is how requests are smuggled: refused (RFC 9112 6.1).
            if (n_cl || !iequal(trim(te.substr(te.rfind(',') == std::string::npos ? 0 : te.rfind(',') + 1)), "chunked"))
              ok = false;
            chunked = true;
          } else if (n_cl) {
            if (cl.empty() || cl.size() > 18 || cl.find_first_not_of("0123456789") != std::string::npos) ok = false;
            else body_len = size_t(std::stoull(cl));
          }
          if (!ok) refuse(400);
        }
      }
      // Body.
      if (ok) {
        const bool expect = has_token(req.get_header_value("Expect"), "100-continue") && conn.http11;
        if (!chunked && body_len > opt_.max_body_bytes) {
          req.body_too_large = true;  // not read: the answer closes the connection
          close = true;
        } else if (chunked || body_len > 0) {
          if (expect && conn.buf.empty()) conn.write_all("HTTP/1.1 100 Continue\r\n\r\n");
          if (!chunked) {
            while (ok && conn.buf.size() < body_len) ok = fill_or_refuse();
            if (ok) {
              req.body = conn.buf.substr(0, body_len);
              conn.buf.erase(0, body_len);
            }
          } else {
            // chunk = size [; ext] CRLF data CRLF; ... 0 CRLF [trailers] CRLF
            size_t at = 0;
            for (;;) {
              const size_t le = conn.buf.find("\r\n", at);
              if (le == std::string::npos) {
                if (conn.buf.size() - at > 1024) { refuse(400); ok = false; break; }
                if (!(ok = fill_or_refuse())) break;
                continue;
              }
              const std::string size_text = trim(conn.buf.substr(at, conn.buf.find_first_of(";\r", at) - at));
              size_t size = 0;
              if (size_text.empty() || size_text.size() > 15) { refuse(400); ok = false; break; }
              for (char c : size_text) {
                const int d = hex_digit(c);
                if (d < 0) { ok = false; break; }
                size = size * 16 + size_t(d);
              }
              if (!ok) { refuse(400); break; }
              if (req.body.size() + size > opt_.max_body_bytes) {
                req.body.clear();
                req.body_too_large = true;
                close = true;
                break;
              }
              if (size == 0) {  // trailers, up to an empty line
                size_t t = le + 2;
                for (;;) {
                  const size_t te2 = conn.buf.find("\r\n", t);
                  if (te2 == std::string::npos) {
                    if (conn.buf.size() - t > opt_.max_head_bytes) { refuse(431); ok = false; break; }
                    if (!(ok = fill_or_refuse())) break;
                    continue;
                  }
                  if (te2 == t) { conn.buf.erase(0, t + 2); break; }
                  t = te2 + 2;
                }
                break;
              }
              while (ok && conn.buf.size() < le + 2 + size + 2) ok = fill_or_refuse();
              if (!ok) break;
              if (conn.buf.compare(le + 2 + size, 2, "\r\n") != 0) { refuse(400); ok = false; break; }
              req.body.append(conn.buf, le + 2, size);
              conn.buf.erase(0, le + 2 + size + 2);
              at = 0;
            }
          }
        }
      }
      ++served;
      const std::string connection = req.get_header_value("Connection");
      if (conn.http11 ? has_token(connection, "close") : !has_token(connection, "keep-alive")) close = true;
      if (served >= opt_.keep_alive_max_count || stopping_) close = true;

      if (ok) dispatch(req, res, conn);
      if (res.status < 0) break;  // nothing to answer: the client went, or the server stops
      finish_error(req, res);
      for (const auto& [k, v] : res.headers)
        if (iequal(k, "Connection") && has_token(v, "close")) close = true;

      // The answer.
      const bool streamed = bool(res.provider);
      const bool chunk_out = streamed && conn.http11;
      if (streamed && !conn.http11) close = true;  // HTTP/1.0: the end of the body is the end of the connection
      std::string out = (conn.http11 ? "HTTP/1.1 " : "HTTP/1.0 ") + std::to_string(res.status) + " " +
                        reason_phrase(res.status) + "\r\n";
      for (const auto& [k, v] : res.headers) {
        if (iequal(k, "Connection") || iequal(k, "Content-Length") || iequal(k, "Transfer-Encoding")) continue;
        out += k + ": " + v + "\r\n";
      }
      if (streamed) {
        if (chunk_out) out += "Transfer-Encoding: chunked\r\n";
      } else {
        out += "Content-Length: " + std::to_string(res.body.size()) + "\r\n";
      }
      out += close ? "Connection: close\r\n" : (conn.http11 ? "" : "Connection: keep-alive\r\n");
      out += "\r\n";
      if (req.method != "HEAD" && !streamed) out += res.body;
      conn.answering = true;
      bool written = conn.write_all(out);
      if (streamed) {
        bool finished = false;
        if (written && req.method != "HEAD") {
          struct ChunkedConn final : Connection {  // frames each write as a chunk
            Conn& c;
            bool chunked;
            ChunkedConn(Conn& c_, bool ch) : c(c_), chunked(ch) {}
            bool client_gone() override { return c.client_gone(); }
            bool write_all(const char* d, size_t n) override {
              if (n == 0) return !c.dead();
              if (!chunked) return c.write_all(d, n);
              char size[32];
              const int len = std::snprintf(size, sizeof size, "%zx\r\n", n);
              return c.write_all(size, size_t(len)) && c.write_all(d, n) && c.write_all("\r\n", 2);
            }
            bool dead() const override { return c.dead(); }
            bool eof() override { return c.eof(); }
          } framed(conn, chunk_out);
          DataSink sink(framed);
          while (!sink.is_done() && !framed.dead()) {
            bool more = false;
            try {
              more = res.provider(sink);
            } catch (...) {
              more = false;
            }
            if (!more) break;
          }
          finished = sink.is_done();
          if (finished && chunk_out) written = conn.write_all("0\r\n\r\n", 5);
          if (!finished) close = true;
        } else {
          finished = written;
        }
        if (res.releaser) res.releaser(finished);
      }
      conn.answering = false;
      if (logger_) logger_(req, res);
      if (!written || close || conn.dead()) break;
      if (conn.eof_seen() && conn.buf.empty()) break;
    }
    // Close gracefully: our side first, then read what the client still sends (a refused body) for a moment, so
    // that closing with unread bytes does not reset the connection before the client has read the answer.
    ::shutdown(conn.fd(), SHUT_WR);
    const Clock::time_point linger_until = Clock::now() + std::chrono::milliseconds(500);
    while (!conn.dead() && !conn.eof_seen()) {
      conn.buf.clear();
      if (conn.fill(linger_until, false) != Conn::Fill::Data) break;
    }
  }
  std::lock_guard<std::mutex> lk(conns_mu_);
  n_connections_--;
  conns_cv_.notify_all();
}

}  // namespace moep::server::http
