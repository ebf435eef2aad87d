// The MPI communicator (OpenMPI). One rank per node; moep calls MPI from one thread only.
//
// Failure handling: MPI errors are returned (MPI_ERRORS_RETURN), and any failed call prints which collective
// failed on which rank and calls MPI_Abort, which makes mpirun end every rank. A rank that dies outright is
// noticed by mpirun, which ends the others. A rank that stops without dying (SIGSTOP, a sleeping or cut-off
// machine) is noticed by the deadline (set_rank_timeout): see wait() and report_stall().
//
// Waiting: every collective is non-blocking (MPI_I*) and polled with MPI_Test. OpenMPI's blocking calls poll
// without pause, so a follower idle between requests kept a core at 100%. Here a wait polls without pause for
// its first kSpinSeconds (an all-reduce between two parts of a step, or the next decode step, comes sooner: no
// added latency), then sleeps between polls for 1/8 of the time waited so far, from 50 µs to 4 ms: an idle rank
// costs a poll every 4 ms, and a long wait overshoots by at most 1/8 of its length. MOEP_COMM_SPIN=1 polls without
// pause instead (as OpenMPI's blocking calls do): only for measuring what the backoff costs (docs/SERVER.md).
#define OMPI_SKIP_MPICXX 1  // the C API only; OpenMPI's deprecated C++ bindings are not linked
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "core/error.h"

namespace moep {

namespace {

void abort_all(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

// Busy-waits `us` microseconds: sleeping has a granularity of tens of microseconds, too coarse for latency
// emulation.
void spin_for_us(double us) {
  if (us <= 0) return;
  const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(int64_t(us * 1000.0));
  while (std::chrono::steady_clock::now() < until) {
  }
}

int log2_ceil(int n) {
  int s = 0;
  while ((1 << s) < n) ++s;
  return s;
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr double kSpinSeconds = 1e-3;
constexpr double kMinSleepSeconds = 50e-6, kMaxSleepSeconds = 4e-3;
// How long a rank that saw a deadline pass waits for the others to answer its ping before naming them silent.
constexpr double kPingGraceSeconds = 2.0;
constexpr int kHostNameBytes = 64;
constexpr int kPingTag = 1, kPongTag = 2;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      std::atexit([] {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
      });
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    detail::set_abort_hook(abort_all);
    // Pings (is a rank still there?) travel apart from the collectives, so they never match a collective's
    // messages.
    check(MPI_Comm_dup(MPI_COMM_WORLD, &ping_comm_), "MPI_Comm_dup");
    // Every rank's host name, to name a silent rank's machine.
    char mine[kHostNameBytes] = {};
    ::gethostname(mine, sizeof mine - 1);
    std::vector<char> all(size_t(size_) * kHostNameBytes);
    check(MPI_Allgather(mine, kHostNameBytes, MPI_CHAR, all.data(), kHostNameBytes, MPI_CHAR, MPI_COMM_WORLD),
          "MPI_Allgather (host names)");
    for (int r = 0; r < size_; ++r) hosts_.emplace_back(&all[size_t(r) * kHostNameBytes]);
    gather_counts_.resize(size_t(size_));
    gather_displs_.resize(size_t(size_));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  void allreduce_sum(float* buf, size_t count) override {
    stats_.allreduce_calls++;
    stats_.allreduce_bytes += count * sizeof(float);
    // Recursive doubling sends the whole buffer once per step.
    stats_.bytes_sent += uint64_t(log2_ceil(size_)) * count * sizeof(float);
    if (size_ == 1) return;
    spin_for_us(emulated_latency_us_ * log2_ceil(size_));
    // MPI_Iallreduce's algorithms (OpenMPI's libnbc: binomial reduce + broadcast, chain, ring, reduce-scatter +
    // all-gather) reduce each element on one rank and send the result to the others, so every rank receives the
    // same bits; the engine relies on that for identical routing on every rank, and tests check it.
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, buf, int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req), "MPI_Iallreduce");
    wait(req, "all-reduce", true);
  }

  void broadcast(void* data, size_t bytes, int root) override { broadcast_chunks(data, bytes, root, true); }
  void await_broadcast(void* data, size_t bytes, int root) override { broadcast_chunks(data, bytes, root, false); }

  void allgather(const void* in, size_t bytes, void* out) override {
    stats_.other_calls++;
    stats_.other_bytes += bytes;
    stats_.bytes_sent += bytes * uint64_t(size_ > 1 ? size_ - 1 : 0);
    if (size_ == 1) {
      std::memcpy(out, in, bytes);
      return;
    }
    spin_for_us(emulated_latency_us_ * log2_ceil(size_));
    MPI_Request req;
    check(MPI_Iallgather(in, int(bytes), MPI_BYTE, out, int(bytes), MPI_BYTE, MPI_COMM_WORLD, &req), "MPI_Iallgather");
    wait(req, "all-gather", true);
  }

  void gather(const float* in, const size_t* counts, float* out, int root) override {
    stats_.other_calls++;
    const size_t mine = counts[rank_] * sizeof(float);
    stats_.other_bytes += mine;
    if (rank_ != root) stats_.bytes_sent += mine;
    if (size_ == 1) {
      std::memcpy(out, in, mine);
      return;
    }
    spin_for_us(emulated_latency_us_ * log2_ceil(size_));
    // MPI counts are ints: a step's logits (rows × vocabulary) stay far below 2^31 floats.
    int at = 0;
    for (int r = 0; r < size_; ++r) {
      MOEP_ASSERT(counts[r] < size_t(1) << 30, "a gather of ", counts[r], " floats from rank ", r);
      gather_counts_[size_t(r)] = int(counts[r]);
      gather_displs_[size_t(r)] = at;
      at += int(counts[r]);
    }
    MPI_Request req;
    check(MPI_Igatherv(in, int(counts[rank_]), MPI_FLOAT, out, gather_counts_.data(), gather_displs_.data(),
                       MPI_FLOAT, root, MPI_COMM_WORLD, &req),
          "MPI_Igatherv");
    wait(req, "gather", true);
  }

  void barrier() override {
    stats_.other_calls++;
    if (size_ == 1) return;
    MPI_Request req;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "MPI_Ibarrier");
    wait(req, "barrier", true);
  }

  [[noreturn]] void abort(int code, const std::string& msg) override {
    std::fprintf(stderr, "moep: rank %d: %s\n", rank_, msg.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }

 private:
  void broadcast_chunks(void* data, size_t bytes, int root, bool timed) {
    stats_.other_calls++;
    stats_.other_bytes += bytes;
    if (rank_ == root) stats_.bytes_sent += bytes * uint64_t(log2_ceil(size_));
    if (size_ == 1) return;
    spin_for_us(emulated_latency_us_ * log2_ceil(size_));
    // Chunked below 2 GiB: MPI counts are ints.
    auto* p = static_cast<uint8_t*>(data);
    constexpr size_t kChunk = size_t(1) << 30;
    for (size_t off = 0; off < bytes; off += kChunk)
    for (size_t off = 0; off < bytes; off += kChunk) {
      MPI_Request req;
      check(MPI_Ibcast(p + off, int(std::min(kChunk, bytes - off)), MPI_BYTE, root, MPI_COMM_WORLD, &req),
            "MPI_Ibcast");
      wait(req, "broadcast", timed);
    }
  }

  // Polls `req` to completion (see the top of this file); with `timed` and a rank timeout, a wait longer than it
  // ends the job (report_stall).
  void wait(MPI_Request& req, const char* what, bool timed) {
    int done = 0;
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    const Clock::time_point t0 = Clock::now();
    for (;;) {
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      const double waited = seconds_since(t0);
      if (waited < kSpinSeconds || (spin_ && !(timed && rank_timeout_s_ > 0 && waited > rank_timeout_s_))) continue;
      answer_pings();
      if (timed && rank_timeout_s_ > 0 && waited > rank_timeout_s_) report_stall(what, waited);
      const double nap = std::min(kMaxSleepSeconds, std::max(kMinSleepSeconds, waited / 8));
      std::this_thread::sleep_for(std::chrono::duration<double>(nap));
    }
  }

  // Answers every ping that has come: a rank whose collective is overdue asks who is still there. Only waiting
  // ranks answer; a rank computing answers at its next wait, well within kPingGraceSeconds.
  void answer_pings() {
    for (;;) {
      int pending = 0;
      MPI_Status st;
      check(MPI_Iprobe(MPI_ANY_SOURCE, kPingTag, ping_comm_, &pending, &st), "MPI_Iprobe");
      if (!pending) return;
      int32_t ping = 0;
      check(MPI_Recv(&ping, 1, MPI_INT32_T, st.MPI_SOURCE, kPingTag, ping_comm_, MPI_STATUS_IGNORE), "MPI_Recv");
      MPI_Request req;
      check(MPI_Isend(&kPong, 1, MPI_INT32_T, st.MPI_SOURCE, kPongTag, ping_comm_, &req), "MPI_Isend");
      check(MPI_Request_free(&req), "MPI_Request_free");
    }
  }

  // A collective is overdue: pings every other rank, names those that do not answer within kPingGraceSeconds,
  // tells the stall handler, and ends the job with status 1.
  [[noreturn]] void report_stall(const char* what, double waited) {
    std::vector<int32_t> pongs(size_t(size_), 0);
    std::vector<MPI_Request> sent, answers(size_t(size_), MPI_REQUEST_NULL);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request req;
      check(MPI_Isend(&kPing, 1, MPI_INT32_T, r, kPingTag, ping_comm_, &req), "MPI_Isend");
      check(MPI_Request_free(&req), "MPI_Request_free");
      check(MPI_Irecv(&pongs[size_t(r)], 1, MPI_INT32_T, r, kPongTag, ping_comm_, &answers[size_t(r)]), "MPI_Irecv");
    }
    const Clock::time_point t0 = Clock::now();
    const double grace = std::min(kPingGraceSeconds, rank_timeout_s_);
    std::vector<bool> answered(size_t(size_), false);
    answered[size_t(rank_)] = true;
    for (;;) {
      bool all = true;
      for (int r = 0; r < size_; ++r) {
        if (answered[size_t(r)]) continue;
        int done = 0;
        check(MPI_Test(&answers[size_t(r)], &done, MPI_STATUS_IGNORE), "MPI_Test");
        answered[size_t(r)] = done != 0;
        all = all && done;
      }
      if (all || seconds_since(t0) > grace) break;
      answer_pings();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::string silent;
    int n_silent = 0;
    for (int r = 0; r < size_; ++r) {
      if (answered[size_t(r)]) continue;
      silent += std::string(n_silent++ ? ", " : "") + std::to_string(r) + " (host " + hosts_[size_t(r)] + ")";
    }
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.1f", waited);
    const std::string msg =
        n_silent > 0
            ? std::string(n_silent > 1 ? "ranks " : "rank ") + silent + " stopped answering: this rank's " + what +
                  " has waited " + secs + " s for " + (n_silent > 1 ? "them" : "it") +
                  " (--rank-timeout). A stopped process, or a machine asleep or cut off the network; ending every rank"
            : std::string("this rank's ") + what + " has waited " + secs +
                  " s (--rank-timeout) although every rank answers: a rank is slower than the deadline allows, or "
                  "the ranks are out of step; ending every rank";
    if (stall_handler_) stall_handler_(msg);
    abort(1, msg);
  }

  void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char err[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, err, &len);
    abort(4, std::string(what) + " failed (" + std::string(err, size_t(len)) +
                 "); another rank has probably died. Ending every rank.");
  }

  static constexpr int32_t kPing = 1, kPong = 2;  // the payloads (what matters is the tag)
  const bool spin_ = [] {
    const char* v = std::getenv("MOEP_COMM_SPIN");
    return v && std::string(v) == "1";
  }();
  int rank_ = 0;
  int size_ = 1;
  MPI_Comm ping_comm_ = MPI_COMM_NULL;
  std::vector<std::string> hosts_;  // [rank]
  std::vector<int> gather_counts_, gather_displs_;  // [rank]: gather()'s, sized once (a step allocates nothing)
};

}  // namespace

std::unique_ptr<Communicator> make_communicator() {
  if (!launched_by_mpirun()) return std::make_unique<LocalCommunicator>();
  return std::make_unique<MpiCommunicator>();
}

}  // namespace moep
