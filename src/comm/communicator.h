// The collectives moep needs between ranks (one rank per node). Only src/comm/ knows about MPI; everything
// else talks to this interface. A size-1 communicator (LocalCommunicator) short-circuits every call.
//
// Contract: every rank calls the same collectives in the same order with the same sizes. A collective that
// fails (a rank died, the network broke) does not return: the process prints a clear message and ends every
// rank with a non-zero status (see MpiCommunicator).
#pragma once

#include <cstddef>
#include <cstdint>
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
  // out[r * bytes .. (r+1) * bytes) = rank r's `in` (out has size() * bytes bytes).
  virtual void allgather(const void* in, size_t bytes, void* out) = 0;
  virtual void barrier() = 0;
  // Ends every rank: prints msg on this rank and terminates the job with `code`. Does not return.
  [[noreturn]] virtual void abort(int code, const std::string& msg) = 0;

  // Emulated per-exchange latency, added to every collective (see --emulate-latency-us).
  void set_emulated_latency_us(double us) { emulated_latency_us_ = us; }
  double emulated_latency_us() const { return emulated_latency_us_; }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 protected:
  CommStats stats_;
  double emulated_latency_us_ = 0.0;
};

// Size-1 communicator: every collective is a no-op.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }
  void allreduce_sum(float*, size_t count) override;
  void broadcast(void*, size_t, int) override {}
  void allgather(const void* in, size_t bytes, void* out) override;
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
