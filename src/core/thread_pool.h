// A fixed set of worker threads for data-parallel loops. The calling thread takes part, so a pool of
// n threads starts n-1 workers. parallel_for allocates nothing and may be called from one thread at a time
// (not thread-safe: each engine owns its pool).
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace moep {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Where the pool's time went since the last reset: parallel regions run (parallel_for calls that used more
  // than one thread), their wall time, and the time threads spent inside tasks. threads × wall − busy is the
  // time threads of the pool waited inside regions: for the last task of a region, or to wake up.
  struct Stats {
    int64_t regions = 0, wall_ns = 0, busy_ns = 0;
  };
  Stats stats() const {
    return {regions_.load(std::memory_order_relaxed), wall_ns_.load(std::memory_order_relaxed),
            busy_ns_.load(std::memory_order_relaxed)};
  }
  void reset_stats() {
    regions_.store(0);
    wall_ns_.store(0);
    busy_ns_.store(0);
  }

  // Calls fn(task) for every task in [0, n_tasks), spread over the threads; returns when all are done. If a task
  // throws, the tasks not yet started are skipped and the first exception is rethrown here once all threads are done.
  // Tasks are handed out one at a time from a shared counter, so uneven tasks balance themselves.
  template <class F>
  void parallel_for(int64_t n_tasks, F&& fn) {
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1) {
      for (int64_t i = 0; i < n_tasks; ++i) fn(i);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run(n_tasks, const_cast<void*>(static_cast<const void*>(&fn)),
        [](void* ctx, int64_t i) { (*static_cast<Fn*>(ctx))(i); });
  }

  // Calls fn() once on each of the pool's threads (the caller's included), e.g. to set up thread-local state
  // before it is needed. Every thread waits until all have arrived, so no thread takes two of the calls.
  template <class F>
  void on_every_thread(F&& fn) {
    if (n_threads_ == 1) {
      fn();
      return;
    }
    std::atomic<int> arrived{0};
    parallel_for(n_threads_, [&](int64_t) {
      arrived.fetch_add(1);
      while (arrived.load() < n_threads_) std::this_thread::yield();
      fn();
    });
  }

  // Splits [0, n) into about `size()` contiguous chunks aligned to `align` and calls fn(begin, end) for each.
  template <class F>
  void parallel_range(int64_t n, int64_t align, F&& fn) {
    if (n <= 0) return;
    const int64_t chunks = std::min<int64_t>(n_threads_, (n + align - 1) / align);
    int64_t per = (n + chunks - 1) / chunks;
    per = (per + align - 1) / align * align;
    parallel_for(chunks, [&](int64_t c) {
      const int64_t b = c * per;
      const int64_t e = std::min(n, b + per);
      if (b < e) fn(b, e);
    });
  }

 private:
  using TaskFn = void (*)(void*, int64_t);
  void run(int64_t n_tasks, void* ctx, TaskFn fn);
  void worker_loop(int index);
  void work(int64_t n_tasks);

  int n_threads_;
  std::vector<std::thread> workers_;
  // The current job; published by bumping generation_.
  void* ctx_ = nullptr;
  TaskFn fn_ = nullptr;
  int64_t n_tasks_ = 0;
  alignas(64) std::atomic<int64_t> next_{0};
  alignas(64) std::atomic<int> pending_{0};
  alignas(64) std::atomic<uint32_t> generation_{0};
  std::mutex failure_mu_;
  std::exception_ptr failure_;  // the first exception a task of the current job threw
  void stop_workers();  // ends and joins every worker
  std::atomic<bool> stop_{false};
  alignas(64) std::atomic<int64_t> regions_{0}, wall_ns_{0}, busy_ns_{0};
};

// Number of threads to use when the user gives none: the cores this process may run on.
int default_thread_count();

// Touches `bytes` of the calling thread's stack below its current frame, a write per page, so that deeper frames
// later (an attention task's accumulator of up to 4 KiB) take no page fault in the steady-state decode loop.
void prefault_stack(size_t bytes);

}  // namespace moep
