#include "kernels/scratch.h"

#include <pthread.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace moep::kernels {

namespace {

// Trivially destructible, so that the thread_local below needs no destructor registered with the C library: when
// memory is short, glibc aborts the process if that registration fails ("failed to register TLS destructor"),
// where an allocation that fails here throws. A thread's buffers are freed by the key's destructor instead.
struct ThreadBuffers {
  float* p[kScratchOwners][kMaxScratchSlots] = {};
  size_t cap[kScratchOwners][kMaxScratchSlots] = {};
  bool prepared[kScratchOwners] = {};
  bool registered = false;  // with buffers_key(), which frees the buffers when the thread ends
  void grow(int owner, int slot, size_t floats) {
    std::free(p[owner][slot]);
    p[owner][slot] = nullptr;
    cap[owner][slot] = 0;
    const size_t rounded = (floats + 15) / 16 * 16;
    float* q = static_cast<float*>(std::aligned_alloc(64, rounded * sizeof(float)));
    if (!q) throw std::bad_alloc();  // ThreadPool carries it to the caller
    std::memset(q, 0, rounded * sizeof(float));  // fault every page in now
    p[owner][slot] = q;
    cap[owner][slot] = rounded;
  }
};

void free_buffers(void* arg) {
  for (auto& owner : static_cast<ThreadBuffers*>(arg)->p)
    for (float* q : owner) std::free(q);
}

pthread_key_t buffers_key() {
  static const pthread_key_t key = [] {
    pthread_key_t k;
    if (pthread_key_create(&k, free_buffers) != 0) throw std::bad_alloc();
    return k;
  }();
  return key;
}

ThreadBuffers& buffers() {
  thread_local ThreadBuffers b;
  if (!b.registered) {
    if (pthread_setspecific(buffers_key(), &b) != 0) throw std::bad_alloc();
    b.registered = true;
  }
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
