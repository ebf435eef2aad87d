// The collectives moep needs between ranks (one rank per node). Only src/comm/ knows about MPI; everything
// else talks to this interface. A size-1 communicator (LocalCommunicator) short-circuits every call.
//
// Contract: every rank calls the same collectives in the same order with the same sizes. A collective that
// fails (a rank died, the network broke) does not return: the process prints a clear message and ends every
// rank with a non-zero status (see MpiCommunicator).
//
// Deadlines: with set_rank_timeout(s > 0), a collective that has not completed after s seconds (a rank stopped,
// its machine asleep or cut off) ends the job with a message naming the ranks that no longer answer and their
// hosts. await_broadcast has no deadline: it is how followers wait, idle, for rank 0's next step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace moep {

struct CommStats {
  uint64_t allreduce_calls = 0;
  uint64_t allreduce_bytes = 0;  // payload bytes this rank contributed (count × sizeof(float))
  uint64_t bytes_sent = 0;       // estimate of bytes this rank put on the wire for all collectives
  uint64_t other_calls = 0;      // broadcasts, gathers, barriers
  uint64_t other_bytes = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "local", "mpi"

  // In place: buf[i] = Σ over ranks of buf[i].
  virtual void allreduce_sum(float* buf, size_t count) = 0;
  // In place: data on `root` is copied to every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // broadcast without a deadline, for a rank that waits for `root`'s next command (which may come after any idle
  // time). Waits without spinning a core once the wait is longer than a step's.
  virtual void await_broadcast(void* data, size_t bytes, int root) = 0;
  // out[r * bytes .. (r+1) * bytes) = rank r's `in` (out has size() * bytes bytes).
  virtual void allgather(const void* in, size_t bytes, void* out) = 0;
  // On `root`: out = rank 0's counts[0] floats, then rank 1's counts[1], ... (Σ counts floats); other ranks'
  // out is not touched (may be null). counts has size() entries, the same on every rank; this rank sends
  // counts[rank()] floats from `in`. (The split output head's logits.)
  virtual void gather(const float* in, const size_t* counts, float* out, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank: prints msg on this rank and terminates the job with `code`. Does not return.
  [[noreturn]] virtual void abort(int code, const std::string& msg) = 0;

  // Emulated per-exchange latency, added to every collective (see --emulate-latency-us).
  void set_emulated_latency_us(double us) { emulated_latency_us_ = us; }
  double emulated_latency_us() const { return emulated_latency_us_; }

  // Deadline of every collective but await_broadcast, in seconds (0: none). Set once the ranks are in lockstep:
  // before that (loading the model) ranks may legitimately take very different times.
  void set_rank_timeout(double seconds) { rank_timeout_s_ = seconds; }
  double rank_timeout() const { return rank_timeout_s_; }
  // Called on the rank that sees a deadline pass, with the message naming the silent ranks, before the job ends
  // (the server answers its clients with it). Runs on the thread that called the collective.
  void set_stall_handler(std::function<void(const std::string&)> handler) { stall_handler_ = std::move(handler); }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 protected:
  CommStats stats_;
  double emulated_latency_us_ = 0.0;
  double rank_timeout_s_ = 0.0;
  std::function<void(const std::string&)> stall_handler_;
};

// Size-1 communicator: every collective is a no-op.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }
  void allreduce_sum(float*, size_t count) override;
  void broadcast(void*, size_t, int) override {}
  void await_broadcast(void*, size_t, int) override {}
  void allgather(const void* in, size_t bytes, void* out) override;
  void gather(const float* in, const size_t* counts, float* out, int root) override;
  void barrier() override {}
  [[noreturn]] void abort(int code, const std::string& msg) override;
};

// Returns the MPI communicator when this process was started by mpirun (and moep was built with MPI),
// otherwise a LocalCommunicator. Initializes MPI on first use.
std::unique_ptr<Communicator> make_communicator();

// True when the environment says this process is one rank of an mpirun job.
bool launched_by_mpirun();

// How many ranks of `comm` run on this rank's host (compared by host name). Collective.
int ranks_on_this_host(Communicator& comm);
// This rank's index among the ranks of its host (0 for the lowest rank there): which GPU it takes. Collective.
int local_rank_on_this_host(Communicator& comm);

}  // namespace moep
