#include "kernels/scratch.h"

#include <cstdlib>
#include <cstring>

namespace moep::kernels {

namespace {

struct ThreadBuffers {
  float* p[kScratchOwners][kMaxScratchSlots] = {};
  size_t cap[kScratchOwners][kMaxScratchSlots] = {};
  bool prepared[kScratchOwners] = {};
  ~ThreadBuffers() {
    for (auto& owner : p)
      for (float* q : owner) std::free(q);
  }
  void grow(int owner, int slot, size_t floats) {
    std::free(p[owner][slot]);
    cap[owner][slot] = (floats + 15) / 16 * 16;
    p[owner][slot] = static_cast<float*>(std::aligned_alloc(64, cap[owner][slot] * sizeof(float)));
    if (!p[owner][slot]) std::abort();
    std::memset(p[owner][slot], 0, cap[owner][slot] * sizeof(float));  // fault every page in now
  }
};

ThreadBuffers& buffers() {
  thread_local ThreadBuffers b;
  return b;
}

}  // namespace

void scratch_prepare(ScratchOwner owner, const size_t* initial_floats, int n_slots) {
  ThreadBuffers& b = buffers();
  if (b.prepared[owner]) return;
  for (int s = 0; s < n_slots && s < kMaxScratchSlots; ++s)
    if (b.cap[owner][s] < initial_floats[s]) b.grow(owner, s, initial_floats[s]);
  b.prepared[owner] = true;
}

float* scratch_buffer(ScratchOwner owner, int slot, size_t floats) {
  ThreadBuffers& b = buffers();
  if (b.cap[owner][slot] < floats) b.grow(owner, slot, floats);
  return b.p[owner][slot];
}

}  // namespace moep::kernels
