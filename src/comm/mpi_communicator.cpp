// The MPI communicator (OpenMPI). One rank per node; moep calls MPI from one thread only.
//
// Failure handling: MPI errors are returned (MPI_ERRORS_RETURN), and any failed call prints which collective
// failed on which rank and calls MPI_Abort, which makes mpirun end every rank. A rank that dies outright is
// noticed by mpirun, which ends the others.
#define OMPI_SKIP_MPICXX 1  // the C API only; OpenMPI's deprecated C++ bindings are not linked
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

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
    // MPI_Allreduce's algorithms (recursive doubling, ring, Rabenseifner) reduce each element once or
    // symmetrically (a+b == b+a), so every rank receives the same bits; the engine relies on that for
    // identical routing on every rank, and tests check it.
    check(MPI_Allreduce(MPI_IN_PLACE, buf, int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    stats_.other_calls++;
    stats_.other_bytes += bytes;
    if (rank_ == root) stats_.bytes_sent += bytes * uint64_t(log2_ceil(size_));
    if (size_ == 1) return;
    spin_for_us(emulated_latency_us_ * log2_ceil(size_));
    // Chunked below 2 GiB: MPI counts are ints.
    auto* p = static_cast<uint8_t*>(data);
    constexpr size_t kChunk = size_t(1) << 30;
    for (size_t off = 0; off < bytes; off += kChunk)
      check(MPI_Bcast(p + off, int(std::min(kChunk, bytes - off)), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
  }

  void allgather(const void* in, size_t bytes, void* out) override {
    stats_.other_calls++;
    stats_.other_bytes += bytes;
    stats_.bytes_sent += bytes * uint64_t(size_ > 1 ? size_ - 1 : 0);
    if (size_ == 1) {
      std::memcpy(out, in, bytes);
      return;
    }
    spin_for_us(emulated_latency_us_ * log2_ceil(size_));
    check(MPI_Allgather(in, int(bytes), MPI_BYTE, out, int(bytes), MPI_BYTE, MPI_COMM_WORLD), "MPI_Allgather");
  }

  void barrier() override {
    stats_.other_calls++;
    if (size_ == 1) return;
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

  [[noreturn]] void abort(int code, const std::string& msg) override {
    std::fprintf(stderr, "moep: rank %d: %s\n", rank_, msg.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }

 private:
  void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char err[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, err, &len);
    abort(4, std::string(what) + " failed (" + std::string(err, size_t(len)) +
                 "); another rank has probably died. Ending every rank.");
  }

  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_communicator() {
  if (!launched_by_mpirun()) return std::make_unique<LocalCommunicator>();
  return std::make_unique<MpiCommunicator>();
}

}  // namespace moep
