#include "perf/calibrate.h"

#include <unistd.h>

#include <algorithm>
#include <numeric>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "core/page_buffer.h"
#include "kernels/kernels.h"
#include "kernels/membw.h"
#include "kernels/ops.h"
#include "perf/allreduce.h"

namespace moep::perf {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A buffer of weights of one dtype with valid, varied values (no NaN, no denormals), on the pages the engine's
// weights would have (huge: copied weights on 2 MiB pages; else 4 KiB pages, as the file mappings have).
// Timing through the page cache of a written-back scratch file instead was tried for `--weights map` and fitted
// this project's 2-core VM worse (docs/validation/epyc-2core-s-map-pagecache.md).
struct WeightBuffer {
  DType dtype;
  PageBuffer mem;
  size_t size;
  uint8_t* data() const { return mem.data(); }
  WeightBuffer(DType dt, size_t n_bytes, bool huge) : dtype(dt), mem(n_bytes, huge), size(n_bytes) {
    uint64_t s = 0x9e3779b97f4a7c15ull;
    const size_t esz = dtype_size(dt);
    for (size_t i = 0; i + esz <= n_bytes; i += esz) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      const float v = float(int32_t(s >> 40) - (1 << 23)) / float(1 << 25);  // about [-0.25, 0.25)
      if (dt == DType::F32) std::memcpy(data() + i, &v, 4);
      else {
        const uint16_t h = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(data() + i, &h, 2);
      }
    }
  }
};

DType parse_dtype(const std::string& s) {
  DType d;
  if (!dtype_from_name(s, &d)) fail("calibrate: dtype '", s, "' is not one moep runs (bf16, f16, f32)");
  return d;
}

// Mean over ranks, element-wise (every rank passes a vector of the same length).
std::vector<double> mean_over_ranks(Communicator& comm, const std::vector<double>& v) {
  if (comm.size() == 1) return v;
  std::vector<double> all(v.size() * size_t(comm.size()));
  comm.allgather(v.data(), v.size() * sizeof(double), all.data());
  std::vector<double> out(v.size(), 0.0);
  for (int r = 0; r < comm.size(); ++r)
    for (size_t i = 0; i < v.size(); ++i) out[i] += all[size_t(r) * v.size() + i] / comm.size();
  return out;
}

// Seconds per call of `call(i)` for i cycling over `copies` weight copies, best of 3 trials of at least
// `target` seconds. `cursor` carries the position in the cycle across trials so that every call reads
// weights that have not been read recently.
template <class F>
double time_calls(F&& call, int64_t copies, double target, int64_t* cursor, int trials = 3) {
  // Visit the copies in a scattered order (a stride coprime with their count, near the golden ratio of it):
  // the engine reads the experts a token picks from scattered places in the checkpoint, so every matrix starts
  // a new stream; copies read back to back would let the hardware prefetchers run on from one into the next.
  int64_t stride = std::max<int64_t>(1, int64_t(double(copies) * 0.618));
  while (copies > 1 && std::gcd(stride, copies) != 1) ++stride;
  double best = std::numeric_limits<double>::infinity();
  for (int trial = 0; trial < trials; ++trial) {
    int64_t calls = 0;
    const auto t0 = Clock::now();
    double el = 0;
    do {
      call(*cursor);
      *cursor = (*cursor + stride) % copies;
      ++calls;
      el = seconds_since(t0);
    } while (el < target || calls < 3);
    best = std::min(best, el / double(calls));
  }
  return best;
}

// The engine's attention (ops::attention, as transformer.cpp calls it, with scratch sized as the engine sizes
// it): per (row, head) an online softmax over `ctx` positions, dot products of head_dim for the scores and an
// axpy for the values. Returns nanoseconds per (row, head, position).
double time_attention(ThreadPool& pool, double target, int64_t hd) {
  const int64_t rows = 4, H = 16, KVH = 4, ctx = 256;
  const kernels::AttentionShape shape{H, KVH, hd, 1.f / std::sqrt(float(hd))};
  std::vector<float> q(size_t(rows * H * hd)), out(q.size()), kc(size_t(ctx * KVH * hd)), vc(kc.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = float(int(i % 97) - 48) / 480.f;
  for (size_t i = 0; i < kc.size(); ++i) kc[i] = float(int(i % 89) - 44) / 440.f, vc[i] = float(int(i % 83) - 41) / 410.f;
  // Every row attends to all ctx positions of one sequence.
  const std::vector<ops::AttentionRow> seq(size_t(rows), {{kc.data(), vc.data(), KVH * hd}, ctx});
  std::vector<float> scratch(ops::attention_scratch_floats(rows, shape));
  auto run = [&] { ops::attention(pool, shape, q.data(), seq.data(), rows, scratch.data(), out.data()); };
  int64_t cursor = 0;
  const double s = time_calls([&](int64_t) { run(); }, 1, target, &cursor);
  return s * 1e9 / double(rows * H * ctx);
}

}  // namespace

std::pair<double, double> fit_relative(const std::vector<std::pair<double, double>>& pts) {
  // Minimize Σ w (a + b x − t)² with w = 1/t²: normal equations of a weighted linear fit.
  double sw = 0, sx = 0, sxx = 0, st = 0, sxt = 0;
  for (const auto& [x, t] : pts) {
    if (t <= 0) continue;
    const double w = 1.0 / (t * t);
    sw += w, sx += w * x, sxx += w * x * x, st += w * t, sxt += w * x * t;
  }
  const double det = sw * sxx - sx * sx;
  if (pts.size() < 2 || std::fabs(det) < 1e-300) fail("fit_relative: need two or more distinct points");
  const double a = (st * sxx - sx * sxt) / det;
  const double b = (sw * sxt - sx * st) / det;
  return {a, b};
}

size_t last_level_cache_bytes() {
  size_t best = 0;
  int best_level = 0;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lf(dir + "level"), sf(dir + "size");
    int level = 0;
    std::string size;
    if (!(lf >> level) || !(sf >> size) || size.empty()) continue;
    size_t v = size_t(std::strtoull(size.c_str(), nullptr, 10));
    const char unit = size.back();
    if (unit == 'K') v <<= 10;
    else if (unit == 'M') v <<= 20;
    else if (unit == 'G') v <<= 30;
    if (level > best_level || (level == best_level && v > best)) {
      best_level = level;
      best = v;
    }
  }
#if defined(_SC_LEVEL3_CACHE_SIZE)
  if (best == 0) {  // no sysfs cache directory (some VMs): what the C library reads from the CPU
    const long l3 = ::sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) best = size_t(l3);
  }
#endif
  return best;
}

namespace {

using Say = std::function<void(const std::string&)>;

// The options with automatic sizes filled in (rotation_bytes 0: beyond the caches, within a quarter of the
// host's free memory), after checking them. Collective when rotation_bytes is 0.
CalibrateOptions resolved_options(const CalibrateOptions& opts, Communicator& comm, size_t llc) {
  CalibrateOptions o = opts;
  if (o.rotation_bytes == 0) {
    const size_t host_ranks = size_t(ranks_on_this_host(comm));
    const size_t avail = proc_kb_field_bytes("/proc/meminfo", "MemAvailable");
    size_t want = std::max(size_t(256) << 20, 4 * llc);
    if (avail > 0) want = std::max(size_t(256) << 20, std::min(want, avail / 4 / host_ranks));
    o.rotation_bytes = want;
    o.membw_bytes = std::max(o.membw_bytes, want);
  }
  if (o.dtypes.empty()) fail("calibrate: no dtype to measure");
  if (o.batches.empty()) fail("calibrate: no batch sizes to measure");
  for (int64_t b : o.batches)
    if (b < 1 || b > 4096) fail("calibrate: batch sizes must be in 1..4096, got ", b);
  if (o.expert_d_model < 16 || o.expert_ffn < 16) fail("calibrate: expert shape must be at least 16 x 16");
  if (o.max_allreduce_bytes < 64) fail("calibrate: --max-allreduce-bytes must be at least 64");
  return o;
}

// Ranks on the same host as this one (they share its memory bandwidth), by host names of up to 255 bytes.
// Collective.
int ranks_sharing_host(Communicator& comm) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::vector<char> all(size_t(comm.size()) * 256);
  comm.allgather(host, 256, all.data());
  int same = 0;
  for (int r = 0; r < comm.size(); ++r) same += std::strncmp(&all[size_t(r) * 256], host, 256) == 0;
  return same;
}

// Phase 1: memory read bandwidth in GB/s, every rank reading at once, averaged over ranks.
double measure_bandwidth(ThreadPool& pool, Communicator& comm, const CalibrateOptions& o, size_t llc, const Say& say) {
  comm.barrier();
  say(str_cat("memory read bandwidth (", o.membw_bytes >> 20, " MiB; weights cycled through ", o.rotation_bytes >> 20,
              " MiB per matrix size; last-level cache ", llc >> 20, " MiB) ..."));
  const double bw = kernels::measure_read_bandwidth_gbs(pool, o.membw_bytes, 5, o.huge_pages);
  const double mean = mean_over_ranks(comm, {bw})[0];
  say("  " + std::to_string(mean) + " GB/s per rank");
  return mean;
}

// One point of a linear table: a matrix of `rows` × expert_d_model in one layout (0: ops::linear, 1:
// ops::linear_in_out) at one batch, timed in `copies` copies cycled through the weight buffer.
struct TimedPoint {
  int layout;
  int64_t batch, rows;
  size_t bytes;
  int64_t copies, cursor = 0;
  std::vector<double> rounds;  // seconds per call, one per round
  double median() const {
    std::vector<double> r = rounds;
    std::sort(r.begin(), r.end());
    return r[r.size() / 2];
  }
};

// The points of phase 2 for one dtype: both layouts, every batch, matrices of 128 KiB .. 64 MiB that fit the
// buffer (one per distinct row count). *max_rows: the most rows of any point (at least 16).
std::vector<TimedPoint> linear_points(const CalibrateOptions& o, size_t esz, size_t buffer_bytes, int64_t* max_rows) {
  const int64_t cols = o.expert_d_model;
  const std::vector<double> sizes = {128 * 1024.0, 1048576.0, 4 * 1048576.0, 16 * 1048576.0, 64 * 1048576.0};
  std::vector<TimedPoint> pts;
  *max_rows = 16;
  for (int layout = 0; layout < 2; ++layout)
    for (int64_t b : o.batches) {
      int64_t prev_rows = 0;
      for (double sz : sizes) {
        const int64_t rows = std::max<int64_t>(16, int64_t(sz) / (cols * int64_t(esz)));
        const size_t mbytes = size_t(rows * cols) * esz;
        if (rows == prev_rows || mbytes > buffer_bytes) continue;  // the same matrix again, or past the buffer
        prev_rows = rows;
        *max_rows = std::max(*max_rows, rows);
        pts.push_back(TimedPoint{layout, b, rows, mbytes, std::max<int64_t>(1, int64_t(buffer_bytes / mbytes)), 0, {}});
      }
    }
  return pts;
}

// Phase 2, the table: each point timed in three rounds spread over the whole table, so that the median round
// can be kept: decode is judged by its median step, and on a shared host the best of rounds far apart catches the
// rare quiet moment (the other ranks of the job or other tenants idle), while back-to-back trials all fall into
// the same moment. nt: W [rows, cols], X [b, cols] -> Y [b, rows]. in_out: W [rows, cols] as [in, out], X [b, rows].
void time_linear_points(ThreadPool& pool, Communicator& comm, const CalibrateOptions& o, const WeightBuffer& buf,
                        const std::string& dt_name, std::vector<TimedPoint>& pts, const float* X, float* Y,
                        int64_t max_batch, const Say& say) {
  const int64_t cols = o.expert_d_model;
  for (int round = 0; round < 3; ++round) {
    for (TimedPoint& p : pts) {
      comm.barrier();  // every rank times the same point at the same time, as they run in decode
      const double s = time_calls(
          [&](int64_t i) {
            MatRef W{buf.data() + size_t(i) * p.bytes, buf.dtype, p.rows, cols, cols, !o.huge_pages};
            if (p.layout == 0) ops::linear(pool, W, X, p.batch, Y);
            else ops::linear_in_out(pool, W, X, p.batch, Y);
          },
          p.copies, o.seconds_per_point, &p.cursor, 1);
      p.rounds.push_back(s);
    }
    say(str_cat("  ", dt_name, " linear and linear_in_out, batches 1..", max_batch, ": round ", round + 1, " of 3"));
  }
}

// Phase 2, one expert at batch 1 as the engine runs it (gate, up, silu·mul, down): seconds per expert.
double time_expert(ThreadPool& pool, Communicator& comm, const CalibrateOptions& o, const WeightBuffer& buf) {
  comm.barrier();
  const DType dt = buf.dtype;
  const size_t esz = dtype_size(dt);
  const int64_t d = o.expert_d_model, f = o.expert_ffn;
  const size_t expert_bytes = size_t(3 * d * f) * esz;
  const int64_t copies = std::max<int64_t>(1, int64_t(buf.size / expert_bytes));
  std::vector<float> x(static_cast<size_t>(d), 0.01f), g(static_cast<size_t>(f)), u(static_cast<size_t>(f)), y(static_cast<size_t>(d));
  int64_t cursor = 0;
  return time_calls(
      [&](int64_t i) {
        const uint8_t* base = buf.data() + size_t(i) * expert_bytes;
        MatRef gate{base, dt, f, d, d, !o.huge_pages};
        MatRef up{base + size_t(f * d) * esz, dt, f, d, d, !o.huge_pages};
        MatRef down{base + size_t(2 * f * d) * esz, dt, d, f, f, !o.huge_pages};
        ops::linear(pool, gate, x.data(), 1, g.data());
        ops::linear(pool, up, x.data(), 1, u.data());
        ops::silu_mul(g.data(), u.data(), f);
        ops::linear(pool, down, g.data(), 1, y.data());
      },
      copies, o.seconds_per_point * 3, &cursor);
}

// Phase 2, for ranks sharing a host's memory: how much faster one rank streams at batch 1 while the others wait
// than with all of them reading (each rank alone in turn; median of three), on the largest batch-1 matrix of the
// table, clamped to [1, ranks_per_host]. Collective.
double measure_alone_speedup(ThreadPool& pool, Communicator& comm, const CalibrateOptions& o, const WeightBuffer& buf,
                             const std::vector<TimedPoint>& pts, const float* X, float* Y, int ranks_per_host,
                             const Say& say) {
  const int64_t cols = o.expert_d_model;
  const TimedPoint* big = nullptr;
  for (const TimedPoint& p : pts)
    if (p.layout == 0 && (!big || p.batch < big->batch || (p.batch == big->batch && p.bytes > big->bytes))) big = &p;
  int64_t cursor = 0;
  auto one = [&] {
    return time_calls(
        [&](int64_t i) {
          MatRef W{buf.data() + size_t(i) * big->bytes, buf.dtype, big->rows, cols, cols, !o.huge_pages};
          ops::linear(pool, W, X, 1, Y);
        },
        big->copies, o.seconds_per_point, &cursor, 3);
  };
  std::vector<double> ratios;  // median of three: all reading, then each rank alone in turn
  for (int rep = 0; rep < 3; ++rep) {
    comm.barrier();
    const double all = one();
    double alone = 0;
    for (int r = 0; r < comm.size(); ++r) {
      comm.barrier();
      if (r == comm.rank()) alone = one();
      comm.barrier();
    }
    ratios.push_back(all / alone);
  }
  std::sort(ratios.begin(), ratios.end());
  const double speedup = std::clamp(mean_over_ranks(comm, {ratios[1]})[0], 1.0, double(ranks_per_host));
  say(str_cat("  one rank streams ", speedup, "x as fast with the host's other ranks idle"));
  return speedup;
}

// What phase 2 measured of one dtype on this rank: the table's points and one expert's seconds.
struct DtypeTimes {
  std::vector<TimedPoint> points;
  double expert_s = 0;
};

// Phase 2 for one dtype: the linear table, one expert, and (alone_speedup non-null) the alone speedup, all on one
// weight buffer.
DtypeTimes time_dtype(ThreadPool& pool, Communicator& comm, const CalibrateOptions& o, const std::string& dt_name,
                      int ranks_per_host, double* alone_speedup, const Say& say) {
  const DType dt = parse_dtype(dt_name);
  const size_t esz = dtype_size(dt);
  const size_t expert_bytes = size_t(3 * o.expert_d_model * o.expert_ffn) * esz;
  const WeightBuffer buf(dt, std::max(o.rotation_bytes, 2 * expert_bytes), o.huge_pages);
  DtypeTimes times;
  int64_t max_rows = 16;
  times.points = linear_points(o, esz, buf.size, &max_rows);
  const int64_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  std::vector<float> X(size_t(max_batch * std::max(max_rows, o.expert_d_model)), 0.01f), Y(X.size());
  time_linear_points(pool, comm, o, buf, dt_name, times.points, X.data(), Y.data(), max_batch, say);
  times.expert_s = time_expert(pool, comm, o, buf);
  if (alone_speedup)
    *alone_speedup = measure_alone_speedup(pool, comm, o, buf, times.points, X.data(), Y.data(), ranks_per_host, say);
  return times;
}

// The linear tables of one dtype from the points' seconds averaged over ranks (avg[0..points)): per layout and
// batch, overhead + bytes × time-per-byte fitted on relative error, with the points kept.
void fit_linear_tables(const CalibrateOptions& o, const std::vector<TimedPoint>& pts, const double* avg,
                       std::vector<LinearPoint>* nt, std::vector<LinearPoint>* in_out) {
  for (int layout = 0; layout < 2; ++layout) {
    std::vector<LinearPoint> table;
    for (int64_t b : o.batches) {
      LinearPoint lp;
      lp.batch = b;
      std::vector<std::pair<double, double>> fit_pts;
      for (size_t i = 0; i < pts.size(); ++i)
        if (pts[i].layout == layout && pts[i].batch == b) {
          const double sec = avg[i];
          lp.times.emplace_back(double(pts[i].bytes), sec * 1e6);
          fit_pts.emplace_back(double(pts[i].bytes), sec);
        }
      if (fit_pts.size() >= 2) {
        auto [a, slope] = fit_relative(fit_pts);
        if (slope <= 0) slope = fit_pts.back().second / fit_pts.back().first;
        lp.overhead_us = std::max(0.0, a) * 1e6;
        lp.ns_per_byte = slope * 1e9;
      } else {
        lp.ns_per_byte = fit_pts.back().second / fit_pts.back().first * 1e9;
        lp.times.clear();
      }
      table.push_back(lp);
    }
    std::sort(table.begin(), table.end(), [](const LinearPoint& x, const LinearPoint& y) { return x.batch < y.batch; });
    *(layout == 0 ? nt : in_out) = table;
  }
}

// The hardware profile around what was measured.
HardwareProfile hardware_profile(const CalibrateOptions& o, const HardwareMeasured& hm, const std::string& where) {
  HardwareProfile hw;
  hw.name = o.name;
  hw.description = o.description;
  // What calibrate measures is moep's CPU kernels; a GPU calibration is the GPU backend's to add (it writes a
  // vulkan profile with its dispatch cost and the all-reduce's host round trip measured).
  hw.backend = Backend::Cpu;
  hw.memory_bandwidth_gbs = Figure{hm.membw_gbs, where, "read bandwidth per rank with all ranks of the host reading", false, true};
  const double phys = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  hw.memory_gb = Figure{phys * 1e-9 / double(hm.info.ranks_per_host),
                        "physical memory from sysconf on " + o.info.host + ", divided among the " +
                            std::to_string(hm.info.ranks_per_host) + " rank(s) of the host",
                        "", false, true};
  hw.usable_memory_fraction = Figure{0.9, "default: 10% of memory left to the OS and other processes", "", true, true};
  hw.measured = hm;
  return hw;
}

// Phase 4: the all-reduce over the job's ranks for messages of 4 B .. max_allreduce_bytes (by factors of 4),
// fitted to a + b·m. Collective; comm.size() > 1. `buf` holds at least max_allreduce_bytes of floats.
AllreduceFit measure_allreduce(Communicator& comm, const CalibrateOptions& o, std::vector<float>& buf, const Say& say) {
  const int N = comm.size();
  AllreduceFit fit;
  fit.nodes = N;
  std::vector<std::pair<double, double>> pts;
  for (size_t m = 4; m <= o.max_allreduce_bytes; m *= 4) {
    const size_t count = m / sizeof(float);
    comm.barrier();
    for (int i = 0; i < 3; ++i) comm.allreduce_sum(buf.data(), count);
    // Agree on a call count from rank 0's probe so that every rank makes the same calls.
    auto t0 = Clock::now();
    for (int i = 0; i < 3; ++i) comm.allreduce_sum(buf.data(), count);
    int64_t calls = std::clamp<int64_t>(int64_t(o.seconds_per_point / std::max(1e-7, seconds_since(t0) / 3)), 5, 20000);
    comm.broadcast(&calls, sizeof calls, 0);
    double best = std::numeric_limits<double>::infinity();
    for (int trial = 0; trial < 5; ++trial) {
      comm.barrier();
      t0 = Clock::now();
      for (int64_t i = 0; i < calls; ++i) comm.allreduce_sum(buf.data(), count);
      best = std::min(best, seconds_since(t0) / double(calls));
    }
    const double us = mean_over_ranks(comm, {best * 1e6})[0];
    fit.points.emplace_back(double(m), us);
    pts.emplace_back(double(m), us);
    std::fill(buf.begin(), buf.end(), 1.0f);  // keep the values bounded
  }
  // A larger message cannot be faster than a smaller one: a point above a later one was slowed by something
  // else on the machine (a rank descheduled), so each point is lowered to the fastest of the larger ones.
  for (size_t i = pts.size() - 1; i-- > 0;) {
    pts[i].second = std::min(pts[i].second, pts[i + 1].second);
    fit.points[i].second = pts[i].second;
  }
  const auto [a, b] = fit_relative(pts);
  fit.a_us = std::max(0.0, a);
  fit.b_ns_per_byte = std::max(1e-6, b * 1e3);
  say("  all-reduce over " + std::to_string(N) + " ranks: " + std::to_string(fit.a_us) + " us + " +
      std::to_string(fit.b_ns_per_byte) + " ns/byte");
  return fit;
}

// Phase 5: what synchronizing costs when ranks arrive from work of their own: every rank runs the same stretch of
// matrix work (about one expert) between all-reduces, as in decode. Against the same work without the
// all-reduces (slowest rank), the extra beyond the all-reduce itself (from `fit`) is skew and jitter: a rank that
// is descheduled or slowed holds up all others at the next all-reduce. Returns it as a fraction of the work
// (median of three). Collective.
double measure_sync_jitter(ThreadPool& pool, Communicator& comm, const CalibrateOptions& o, const AllreduceFit& fit,
                           std::vector<float>& buf, const Say& say) {
  const int N = comm.size();
  const DType dt = parse_dtype(o.dtypes.front());
  const size_t esz = dtype_size(dt);
  const int64_t rows = o.expert_ffn, cols = o.expert_d_model;
  const size_t mbytes = size_t(rows * cols) * esz;
  WeightBuffer wbuf(dt, std::max(o.rotation_bytes, 4 * mbytes), o.huge_pages);
  const int64_t copies = int64_t(wbuf.size / mbytes);
  std::vector<float> X(static_cast<size_t>(cols), 0.01f), Y(static_cast<size_t>(rows));
  const size_t count = size_t(cols);  // one decode row of d_model floats
  int64_t cursor = 0;
  auto work = [&] {
    for (int j = 0; j < 3; ++j) {
      MatRef W{wbuf.data() + size_t(cursor) * mbytes, dt, rows, cols, cols, !o.huge_pages};
      ops::linear(pool, W, X.data(), 1, Y.data());
      cursor = (cursor + 1) % copies;
    }
  };
  comm.barrier();
  auto t0 = Clock::now();
  for (int i = 0; i < 5; ++i) work();
  int64_t iters = std::clamp<int64_t>(int64_t(0.4 / std::max(1e-6, seconds_since(t0) / 5)), 20, 20000);
  comm.broadcast(&iters, sizeof iters, 0);
  std::vector<double> fractions;
  for (int rep = 0; rep < 3; ++rep) {
    comm.barrier();
    t0 = Clock::now();
    for (int64_t i = 0; i < iters; ++i) work();
    const double alone = seconds_since(t0) / double(iters);
    std::vector<double> all(static_cast<size_t>(N));
    comm.allgather(&alone, sizeof alone, all.data());
    const double slowest = *std::max_element(all.begin(), all.end());
    comm.barrier();
    t0 = Clock::now();
    for (int64_t i = 0; i < iters; ++i) {
      work();
      comm.allreduce_sum(buf.data(), count);
    }
    const double together = mean_over_ranks(comm, {seconds_since(t0) / double(iters)})[0];
    const double extra = together - slowest - fit.micros(double(count * sizeof(float))) * 1e-6;
    fractions.push_back(std::max(0.0, extra / slowest));
  }
  std::sort(fractions.begin(), fractions.end());
  say("  synchronizing after independent work costs " + std::to_string(100 * fractions[1]) +
      "% of the work (skew and jitter)");
  return fractions[1];
}

// Phases 4 and 5, and the network profile of this job's transport from them. Collective; comm.size() > 1.
NetworkProfile measure_network(ThreadPool& pool, Communicator& comm, const CalibrateOptions& o,
                               const MeasuredInfo& info, const std::string& where, const Say& say) {
  const int N = comm.size();
  std::vector<float> buf(o.max_allreduce_bytes / sizeof(float) + 1, 1.0f);
  AllreduceFit fit = measure_allreduce(comm, o, buf, say);
  fit.jitter_fraction = measure_sync_jitter(pool, comm, o, fit, buf, say);
  NetworkProfile net;
  net.name = o.name + "-net";
  net.description = "the transport of this mpirun job (" + std::to_string(N) + " ranks, " +
                    std::to_string(info.ranks_per_host) + " per host), measured by moep calibrate";
  const int steps = ceil_log2(N);
  net.alpha_us = Figure{fit.a_us / steps, where, "fit a / ceil(log2 N), recursive doubling assumed", false, true};
  net.beta_gbs = Figure{double(steps) / (fit.b_ns_per_byte * 1e-9) * 1e-9, where,
                        "ceil(log2 N) / fit b, recursive doubling assumed", false, true};
  net.algorithm = AllreduceAlgorithm::RecursiveDoubling;
  net.measured_fits[N] = fit;
  net.measured = info;
  return net;
}

}  // namespace

CalibrationResult calibrate(ThreadPool& pool, Communicator& comm, const CalibrateOptions& opts,
                            const std::function<void(const std::string&)>& progress) {
  const size_t llc = last_level_cache_bytes();
  const CalibrateOptions o = resolved_options(opts, comm, llc);
  const Say say = [&](const std::string& s) {
    if (comm.rank() == 0 && progress) progress(s);
  };

  HardwareMeasured hm;
  hm.info = o.info;
  hm.info.present = true;
  hm.info.ranks = comm.size();
  hm.info.threads = pool.size();
  hm.info.ranks_per_host = ranks_sharing_host(comm);
  const std::string where = "measured by moep calibrate on " + o.info.host + ", " + o.info.date + " (" +
                            std::to_string(comm.size()) + " rank(s), " + std::to_string(pool.size()) + " thread(s) each)";

  hm.membw_gbs = measure_bandwidth(pool, comm, o, llc, say);

  // Phases 2 and 3 on every rank; their seconds are averaged over ranks in one exchange, packed per dtype (the
  // points' median seconds, then the expert's), then attention's two figures.
  std::vector<DtypeTimes> by_dtype;
  std::vector<double> packed;
  double alone_speedup = 1.0;
  for (size_t di = 0; di < o.dtypes.size(); ++di) {
    const bool measure_alone = di == 0 && comm.size() > 1 && hm.info.ranks_per_host > 1;
    by_dtype.push_back(time_dtype(pool, comm, o, o.dtypes[di], hm.info.ranks_per_host,
                                  measure_alone ? &alone_speedup : nullptr, say));
    for (const TimedPoint& p : by_dtype.back().points) packed.push_back(p.median());
    packed.push_back(by_dtype.back().expert_s);
  }
  // Phase 3: attention at two head dimensions: a fixed part per (head, position) and a part per multiply-add
  // (2 · head_dim of them: scores and values).
  comm.barrier();
  packed.push_back(time_attention(pool, o.seconds_per_point * 3, 64));
  packed.push_back(time_attention(pool, o.seconds_per_point * 3, 128));
  const std::vector<double> avg = mean_over_ranks(comm, packed);

  size_t k = 0;
  for (size_t di = 0; di < o.dtypes.size(); ++di) {
    const std::string name = dtype_name(parse_dtype(o.dtypes[di]));
    const std::vector<TimedPoint>& pts = by_dtype[di].points;
    fit_linear_tables(o, pts, &avg[k], &hm.linear[name], &hm.linear_in_out[name]);
    k += pts.size();
    hm.expert_us[name] = avg[k++] * 1e6;
  }
  hm.alone_speedup = alone_speedup;
  {
    const double t64 = avg[k++], t128 = avg[k++];  // ns per (row, head, position)
    hm.attention_ns_per_mac = std::max(1e-3, (t128 - t64) / double(2 * (128 - 64)));
    hm.attention_ns_per_head_pos = std::max(0.0, t64 - hm.attention_ns_per_mac * 2 * 64);
  }
  hm.expert_d_model = o.expert_d_model;
  hm.expert_ffn = o.expert_ffn;

  CalibrationResult res;
  res.hardware = hardware_profile(o, hm, where);
  if (comm.size() > 1) {
    res.network = measure_network(pool, comm, o, hm.info, where, say);
    res.has_network = true;
  }
  return res;
}

}  // namespace moep::perf
