#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <vector>

#include "comm/communicator.h"

namespace moep {

void LocalCommunicator::allreduce_sum(float*, size_t count) {
  stats_.allreduce_calls++;
  stats_.allreduce_bytes += count * sizeof(float);
}

void LocalCommunicator::allgather(const void* in, size_t bytes, void* out) { std::memcpy(out, in, bytes); }

void LocalCommunicator::gather(const float* in, const size_t* counts, float* out, int) {
  stats_.other_calls++;
  std::memcpy(out, in, counts[0] * sizeof(float));
}

void LocalCommunicator::abort(int code, const std::string& msg) {
  std::fprintf(stderr, "moep: %s\n", msg.c_str());
  std::fflush(stderr);
  std::exit(code);
}

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

int ranks_on_this_host(Communicator& comm) {
  char mine[64] = {0};
  ::gethostname(mine, sizeof mine - 1);
  std::vector<char> all(sizeof mine * size_t(comm.size()));
  comm.allgather(mine, sizeof mine, all.data());
  int n = 0;
  for (int r = 0; r < comm.size(); ++r)
    n += std::strncmp(all.data() + sizeof mine * size_t(r), mine, sizeof mine) == 0;
  return n;
}

int local_rank_on_this_host(Communicator& comm) {
  char mine[64] = {0};
  ::gethostname(mine, sizeof mine - 1);
  std::vector<char> all(sizeof mine * size_t(comm.size()));
  comm.allgather(mine, sizeof mine, all.data());
  int n = 0;
  for (int r = 0; r < comm.rank(); ++r) n += std::strncmp(all.data() + sizeof mine * size_t(r), mine, sizeof mine) == 0;
  return n;
}

#if !defined(MOEP_WITH_MPI)
std::unique_ptr<Communicator> make_communicator() { return std::make_unique<LocalCommunicator>(); }
#endif

}  // namespace moep
