// Measures this machine's memory read bandwidth, the ceiling for decode (which reads every active weight once
// per token). Used by `moep bench --membw` and by the performance model's calibration.
#pragma once

#include <cstddef>

#include "core/thread_pool.h"

namespace moep::kernels {

// Streams a buffer of `bytes` (make it several times the last-level cache) with every thread of `pool`, each
// reading its own contiguous share, `reps` times after one untimed pass that faults the pages in and warms the
// TLB; each repetition reads it twice, with one stream per thread and with four (some CPUs serve one core more
// from several streams, as the kernels read them). Returns the best pass in GB/s (1e9 bytes per second), the STREAM convention: noise from other
// processes only ever lowers a repetition. The buffer is anonymous memory, on transparent huge pages with
// huge_pages (like weights copied by `--weights copy`), else with the kernel's default page size policy (like
// weights read in place from the file mappings). Allocates `bytes` for the duration of the call; not for the
// decode loop. Throws moep::Error if the memory cannot be had.
double measure_read_bandwidth_gbs(ThreadPool& pool, size_t bytes, int reps, bool huge_pages = true);

// Reads the given ranges of existing memory (e.g. the mapped weights of a model) with every thread of `pool`,
// each range split into one contiguous share per thread, `reps` times; returns the best pass in GB/s. The
// ranges' pages should be resident (a pass over pages that are not is a page-in test). Allocates nothing.
struct ReadSpan {
  const void* data;
  size_t bytes;
};
double measure_span_read_gbs(ThreadPool& pool, const ReadSpan* spans, size_t n_spans, int reps);

// The read loop of measure_read_bandwidth_gbs: the sum of the 64-bit words of `lines` cache lines at p, read as
// `streams` interleaved streams (exposed for tests).
uint64_t sum_lines(const uint64_t* p, size_t lines, int streams);

}  // namespace moep::kernels
