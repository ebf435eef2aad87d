#include "core/thread_pool.h"

#include <time.h>

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <mutex>
#include <system_error>
#include <utility>

#include "core/error.h"

namespace moep {

namespace {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
// Spin this many rounds before sleeping on a futex: decode issues many short loops per token, and waking
// a sleeping thread costs tens of microseconds.
constexpr int kSpinRounds = 20000;
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) {
    try {
      workers_.emplace_back([this, i] { worker_loop(i); });
    } catch (const std::system_error& e) {
      // No destructor runs for a constructor that throws: end the workers started so far here (a joinable thread
      // left to its destructor would terminate the process), and say what failed.
      stop_workers();
      fail("cannot start thread ", i + 1, " of ", n_threads_, " (", e.what(), "); use fewer threads (--threads)");
    }
  }
  // Take every code path of the pool once now (yield, futex wait and wake), so that their pages are mapped
  // before the first token rather than during decoding.
  std::this_thread::yield();
  for (int round = 0; round < 2; ++round) {
    parallel_for(n_threads_, [](int64_t) { std::this_thread::yield(); });
    if (n_threads_ > 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // workers go to futex wait
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

namespace {
int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}
}  // namespace

void ThreadPool::work(int64_t n_tasks) {
  int64_t busy = 0;
  for (;;) {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n_tasks) break;
    const int64_t t0 = mono_ns();
    try {
      fn_(ctx_, i);
    } catch (...) {
      // A task that throws (an allocation that failed) must not end the process from a worker: the first error
      // is kept, the tasks not yet handed out are skipped, and run() rethrows it once every thread is done.
      std::lock_guard<std::mutex> lock(failure_mu_);
      if (!failure_) failure_ = std::current_exception();
      next_.store(n_tasks, std::memory_order_relaxed);
    }
    busy += mono_ns() - t0;
  }
  busy_ns_.fetch_add(busy, std::memory_order_relaxed);
}

void ThreadPool::run(int64_t n_tasks, void* ctx, TaskFn fn) {
  const int64_t start = mono_ns();
  ctx_ = ctx;
  fn_ = fn;
  n_tasks_ = n_tasks;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  work(n_tasks);
  int spins = 0;
  while (pending_.load(std::memory_order_acquire) != 0) {
    if (++spins < kSpinRounds) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
  regions_.fetch_add(1, std::memory_order_relaxed);
  wall_ns_.fetch_add(mono_ns() - start, std::memory_order_relaxed);
  if (failure_) {
    std::exception_ptr e = std::exchange(failure_, nullptr);
    std::rethrow_exception(e);
  }
}

void ThreadPool::worker_loop(int /*index*/) {
  uint32_t seen = 0;
  for (;;) {
    int spins = 0;
    uint32_t g;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinRounds) {
        cpu_relax();
      } else {
        generation_.wait(seen, std::memory_order_acquire);
      }
    }
    seen = g;
    if (stop_.load()) return;
    work(n_tasks_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

__attribute__((noinline)) void prefault_stack(size_t bytes) {
  volatile char* p = static_cast<volatile char*>(__builtin_alloca(bytes));
  for (size_t i = 0; i < bytes; i += 4096) p[i] = 0;
  p[bytes - 1] = 0;
}

int default_thread_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace moep
