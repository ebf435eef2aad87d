#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "comm/communicator.h"

namespace moep {

void LocalCommunicator::allreduce_sum(float*, size_t count) {
  stats_.allreduce_calls++;
  stats_.allreduce_bytes += count * sizeof(float);
}

void LocalCommunicator::allgather(const void* in, size_t bytes, void* out) { std::memcpy(out, in, bytes); }

void LocalCommunicator::abort(int code, const std::string& msg) {
  std::fprintf(stderr, "moep: %s\n", msg.c_str());
  std::fflush(stderr);
  std::exit(code);
}

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

#if !defined(MOEP_WITH_MPI)
std::unique_ptr<Communicator> make_communicator() { return std::make_unique<LocalCommunicator>(); }
#endif

}  // namespace moep
