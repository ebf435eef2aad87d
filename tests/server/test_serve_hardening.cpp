// moep serve against hostile or unlucky clients (issue 21), over raw sockets: slow clients (slowloris), pipelined
// and half-closed requests, clients that leave mid-generation, a runaway chat template, and SIGTERM while
// generating (1 rank and mpirun -np 2). Each test starts its own server on a free port and kills its process group
// at the end, whatever happened.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string read_file(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A temporary directory with `moep synth --preset demo` in it, made once for the whole suite.
const std::string& model_dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/moep-harden-XXXXXX";
    const std::string d = mkdtemp(tmpl);
    static const std::string removed_at_exit = d;
    std::atexit([] { std::filesystem::remove_all(removed_at_exit); });
    const std::string cmd = std::string(MOEP_BINARY) + " synth " + d + "/m --preset demo > " + d + "/synth.log 2>&1";
    if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << read_file(d + "/synth.log");
    // A template whose few steps are slow (each copies 32 MB): far under the step budget, minutes without a deadline.
    std::ofstream(d + "/slow.jinja") << "{%- set s = 'x' * 16000000 -%}{%- for i in range(99999) -%}"
                                         "{%- set t = s ~ s -%}{%- endfor -%}{{ messages[0]['content'] }}";
    // The issue's nested loops: ten billion cheap steps, which the template's step budget stops.
    std::ofstream(d + "/loops.jinja") << "{% for i in range(99999) %}{% for j in range(99999) %}{{ i }}{% endfor %}"
                                          "{% endfor %}{{ messages[0]['content'] }}";
    return d;
  }();
  return dir;
}

bool have_mpirun() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

// `moep serve` (under mpirun with ranks > 1) in a process group of its own.
class Serve {
 public:
  explicit Serve(const std::string& args, int ranks = 1) {
    log_ = model_dir() + "/serve." + std::to_string(getpid()) + "." + std::to_string(counter_++) + ".log";
    std::string cmd = std::string(MOEP_BINARY) + " serve " + model_dir() + "/m --port 0 --threads 1 " + args;
    if (ranks > 1)
      cmd = "mpirun --allow-run-as-root --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 --mca btl self,vader "
            "--mca btl_vader_single_copy_mechanism none -np " + std::to_string(ranks) + " " + cmd;
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
      setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
      execl("/bin/sh", "sh", "-c", ("exec " + cmd + " > " + log_ + " 2>&1").c_str(), (char*)nullptr);
      _exit(127);
    }
    setpgid(pid_, pid_);
    const auto t0 = Clock::now();
    while (since(t0) < 120 && port_ == 0 && alive()) {
      const std::string text = read_file(log_);
      const size_t at = text.find("listening on http://127.0.0.1:");
      if (at != std::string::npos && text.find('(', at) != std::string::npos) port_ = std::atoi(text.c_str() + at + 30);
      else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  // mpirun puts its ranks in process groups of their own, and a SIGKILLed mpirun leaves them running: a server
  // still there gets SIGTERM first (which mpirun passes on), then SIGKILL, its ranks included.
  ~Serve() {
    const std::vector<pid_t> ranks = children();
    if (alive() && terminate(15) < 0) {
      for (pid_t r : ranks) kill(r, SIGKILL);
      kill(-pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
    }
  }
  // The server's child processes (mpirun's ranks), while it runs.
  std::vector<pid_t> children() const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) + "/children");
    std::vector<pid_t> out;
    pid_t p;
    while (f >> p) out.push_back(p);
    return out;
  }
  int port() const { return port_; }
  std::string log() const { return read_file(log_); }
  bool alive() {
    if (exited_) return false;
    if (waitpid(pid_, &status_, WNOHANG) == pid_) exited_ = true;
    return !exited_;
  }
  // Sends SIGTERM; returns the seconds until the process ended (or -1 past `limit`).
  double terminate(double limit) {
    const auto t0 = Clock::now();
    kill(pid_, SIGTERM);
    while (alive() && since(t0) < limit) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return alive() ? -1 : since(t0);
  }
  // Whether any of `pids` is still there after up to `wait_s` seconds.
  static bool any_left(const std::vector<pid_t>& pids, double wait_s) {
    auto left = [&] {
      for (pid_t p : pids)
        if (kill(p, 0) == 0) return true;
      return false;
    };
    const auto t0 = Clock::now();
    while (left() && since(t0) < wait_s) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return left();
  }
  int exit_status() const { return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_); }

 private:
  static inline int counter_ = 0;
  pid_t pid_ = -1;
  int port_ = 0;
  int status_ = 0;
  bool exited_ = false;
  std::string log_;
};

int connect_to(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += size_t(n);
  }
}

// Everything until the server closes (or the 30 s receive timeout).
std::string read_to_end(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return out;
    out.append(buf, size_t(n));
  }
}

struct Answer {
  int status = 0;
  std::string body;
};

// Splits a byte stream into answers (Content-Length bodies), skipping interim 1xx answers.
std::vector<Answer> parse_answers(std::string s) {
  std::vector<Answer> out;
  for (;;) {
    const size_t he = s.find("\r\n\r\n");
    if (he == std::string::npos || s.compare(0, 5, "HTTP/") != 0) return out;
    Answer a;
    a.status = std::atoi(s.c_str() + 9);
    const std::string head = s.substr(0, he);
    s.erase(0, he + 4);
    if (a.status < 200) continue;
    const size_t cl = head.find("Content-Length: ");
    if (cl == std::string::npos) {  // chunked: the rest, as is
      a.body = s;
      out.push_back(a);
      return out;
    }
    const size_t n = std::stoul(head.substr(cl + 16));
    a.body = s.substr(0, n);
    s.erase(0, n);
    out.push_back(a);
  }
}

std::string post(const std::string& path, const std::string& body, bool close_after = false) {
  return "POST " + path + " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + (close_after ? "\r\nConnection: close" : "") + "\r\n\r\n" + body;
}
std::string get(const std::string& path, bool close_after = false) {
  return "GET " + path + " HTTP/1.1\r\nHost: t\r\n" + (close_after ? "Connection: close\r\n" : "") + "\r\n";
}

Answer request(int port, const std::string& raw) {
  const int fd = connect_to(port);
  if (fd < 0) return {};
  send_all(fd, raw);
  auto answers = parse_answers(read_to_end(fd));
  close(fd);
  return answers.empty() ? Answer{} : answers[0];
}

// A value of GET /metrics ("" when absent).
std::string metric(int port, const std::string& name) {
  const Answer a = request(port, get("/metrics", true));
  std::istringstream in(a.body);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + " ", 0) == 0) return line.substr(name.size() + 1);
  return "";
}

// 40 clients sending a byte a second do not hold up /health (answered within 1 s, every time); past
// --read-timeout they are dropped with 408.
TEST(ServeHardening, SlowClientsDoNotStarveHealthAndAreDropped) {
  Serve s("--quiet --read-timeout 3 --parallel 1");
  ASSERT_GT(s.port(), 0) << s.log();
  std::vector<int> slow;
  for (int i = 0; i < 40; ++i) slow.push_back(connect_to(s.port()));
  std::atomic<bool> stop{false};
  std::thread drip([&] {
    const std::string msg = "GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + std::string(200, 'a');
    for (size_t i = 0; i < msg.size() && !stop; ++i) {
      for (int fd : slow) send(fd, msg.data() + i, 1, MSG_NOSIGNAL);
      for (int k = 0; k < 10 && !stop; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  for (int i = 0; i < 4; ++i) {
    const auto t0 = Clock::now();
    const Answer a = request(s.port(), get("/health", true));
    const double secs = since(t0);
    EXPECT_EQ(a.status, 200);
    EXPECT_LT(secs, 1.0) << "/health took " << secs << " s with 40 slow clients";
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  // By now (3.5 s and more after their first byte) the deadline has passed: each slow client got 408 and EOF.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  int dropped = 0;
  for (int fd : slow) {
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const std::string got = read_to_end(fd);
    if (got.find("HTTP/1.1 408") == 0) ++dropped;
    close(fd);
  }
  stop = true;
  drip.join();
  EXPECT_EQ(dropped, 40);
  EXPECT_GT(s.terminate(10), 0) << s.log();
}

// Several requests written at once on one connection are each answered, in order; a client that sends its request
// and then shuts its sending side (half-close) gets the answer, non-streamed and streamed.
TEST(ServeHardening, PipelinedAndHalfClosedRequestsAreAnswered) {
  Serve s("--quiet");
  ASSERT_GT(s.port(), 0) << s.log();
  const int fd = connect_to(s.port());
  send_all(fd, get("/health") + post("/v1/completions", R"({"prompt":"hi","max_tokens":3})") + get("/v1/models") +
                   get("/nope") + get("/health", true));
  const std::vector<Answer> a = parse_answers(read_to_end(fd));
  close(fd);
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(a[0].status, 200);
  EXPECT_NE(a[0].body.find("\"ok\""), std::string::npos);
  EXPECT_EQ(a[1].status, 200);
  EXPECT_NE(a[1].body.find("text_completion"), std::string::npos) << a[1].body;
  EXPECT_EQ(a[2].status, 200);
  EXPECT_NE(a[2].body.find("\"list\""), std::string::npos) << a[2].body;
  EXPECT_EQ(a[3].status, 404);
  EXPECT_EQ(a[4].status, 200);

  for (const bool stream : {false, true}) {
    const int h = connect_to(s.port());
    send_all(h, post("/v1/completions", std::string(R"({"prompt":"hi","max_tokens":40,"stream":)") +
                                            (stream ? "true" : "false") + "}"));
    shutdown(h, SHUT_WR);
    const std::vector<Answer> got = parse_answers(read_to_end(h));
    close(h);
    ASSERT_EQ(got.size(), 1u) << "stream " << stream;
    EXPECT_EQ(got[0].status, 200);
    EXPECT_NE(got[0].body.find(stream ? "data: [DONE]" : "\"completion_tokens\":40"), std::string::npos)
        << got[0].body;
  }
  EXPECT_GT(s.terminate(10), 0) << s.log();
}

// A client that leaves a long generation, streamed or not, has it cancelled: its slot is free within a second,
// long before the generation would have ended.
TEST(ServeHardening, DisconnectedClientsGenerationIsCancelled) {
  Serve s("--quiet --parallel 1");
  ASSERT_GT(s.port(), 0) << s.log();
  int cancelled = 0;
  for (const bool stream : {false, true}) {
    const std::string before = metric(s.port(), "moep_completion_tokens_total");
    const int fd = connect_to(s.port());
    send_all(fd, post("/v1/completions", std::string(R"({"prompt":"hi","max_tokens":4000,"ignore_eos":true,"stream":)") +
                                             (stream ? "true" : "false") + "}"));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_EQ(metric(s.port(), "moep_active_sequences"), "1") << "stream " << stream;
    close(fd);
    const auto t0 = Clock::now();
    while (metric(s.port(), "moep_active_sequences") != "0" && since(t0) < 10)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const double secs = since(t0);
    EXPECT_LT(secs, 1.0) << "stream " << stream << ": the slot was freed " << secs << " s after the client left";
    ++cancelled;
    EXPECT_EQ(metric(s.port(), "moep_requests_cancelled_total"), std::to_string(cancelled));
    const double generated = std::stod(metric(s.port(), "moep_completion_tokens_total")) - std::stod(before);
    EXPECT_LT(generated, 4000) << "stream " << stream << ": the generation ran to its end";
    // The next request takes the slot at once.
    const auto t1 = Clock::now();
    EXPECT_EQ(request(s.port(), post("/v1/completions", R"({"prompt":"hi","max_tokens":2})", true)).status, 200);
    EXPECT_LT(since(t1), 1.0);
  }
  EXPECT_GT(s.terminate(10), 0) << s.log();
}

// The nested-loop template fails a chat request within 2 s with an error naming the template's limit, and the
// server goes on: the next request (one that renders no template) and /health are answered.
TEST(ServeHardening, NestedLoopTemplateFailsFastAndTheNextRequestSucceeds) {
  Serve s("--quiet --chat-template " + model_dir() + "/loops.jinja");
  ASSERT_GT(s.port(), 0) << s.log();
  const auto t0 = Clock::now();
  const Answer a = request(s.port(), post("/v1/chat/completions",
                                          R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})", true));
  EXPECT_LT(since(t0), 2.0);
  EXPECT_GE(a.status, 400) << a.body;
  EXPECT_LT(a.status, 600) << a.body;
  EXPECT_NE(a.body.find("template"), std::string::npos) << a.body;
  EXPECT_EQ(request(s.port(), post("/v1/completions", R"({"prompt":"hi","max_tokens":2})", true)).status, 200);
  EXPECT_EQ(request(s.port(), "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status, 200);
  EXPECT_GT(s.terminate(10), 0) << s.log();
}

// A chat template that would render for minutes (few, slow steps) is cut off by --request-timeout (503 timeout),
// and SIGTERM during such a render still ends the server within a few seconds.
TEST(ServeHardening, RunawayTemplateFallsUnderRequestTimeoutAndSigterm) {
  Serve s("--quiet --request-timeout 2 --chat-template " + model_dir() + "/slow.jinja");
  ASSERT_GT(s.port(), 0) << s.log();
  const std::string chat = R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})";
  const auto t0 = Clock::now();
  const Answer a = request(s.port(), post("/v1/chat/completions", chat, true));
  const double secs = since(t0);
  EXPECT_EQ(a.status, 503) << a.body;
  EXPECT_NE(a.body.find("--request-timeout"), std::string::npos) << a.body;
  EXPECT_LT(secs, 4.0);
  std::thread client([&] { request(s.port(), post("/v1/chat/completions", chat, true)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const double ended = s.terminate(15);
  client.join();
  EXPECT_GT(ended, 0) << "still running 15 s after SIGTERM\n" << s.log();
  EXPECT_LT(ended, 5.0) << s.log();
}

// SIGTERM while a long generation streams and another waits ends the server within a few seconds, leaving no
// process behind, on 1 rank (exit status 0) and under mpirun -np 2 (SIGTERM to mpirun).
TEST(ServeHardening, SigtermEndsTheServerWhileGenerating) {
  for (const int ranks : {1, 2}) {
    if (ranks > 1 && !have_mpirun()) {
      std::printf("mpirun is not installed: the 2-rank case is skipped\n");
      continue;
    }
    Serve s("--quiet --parallel 1", ranks);
    ASSERT_GT(s.port(), 0) << s.log();
    std::vector<std::thread> clients;
    for (const bool stream : {true, false})
      clients.emplace_back([&, stream] {
        request(s.port(), post("/v1/completions", std::string(R"({"prompt":"hi","max_tokens":4000,"ignore_eos":true,"stream":)") +
                                                      (stream ? "true" : "false") + "}", true));
      });
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    const std::vector<pid_t> rank_pids = s.children();
    if (ranks > 1) {
      EXPECT_EQ(rank_pids.size(), 2u);
    }
    const double secs = s.terminate(20);
    for (auto& c : clients) c.join();
    EXPECT_GT(secs, 0) << ranks << " rank(s): still running 20 s after SIGTERM\n" << s.log();
    EXPECT_LT(secs, 5.0) << ranks << " rank(s)\n" << s.log();
    // mpirun reports a job it was told to end with SIGTERM as failed (status 1); a lone server exits 0.
    if (ranks == 1) {
      EXPECT_EQ(s.exit_status(), 0) << s.log();
    }
    EXPECT_FALSE(Serve::any_left(rank_pids, 2.0)) << ranks << " rank(s): a rank is left 2 s after the server ended";
  }
}

}  // namespace
