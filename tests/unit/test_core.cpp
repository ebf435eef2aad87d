#include <gtest/gtest.h>

#include <chrono>

#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#include <fstream>

#include "core/dtype.h"
#include "core/error.h"
#include "core/page_buffer.h"
#include "core/thread_pool.h"
#include "io/npy.h"
#include "test_util.h"

namespace moep {
namespace {

TEST(DType, Bf16RoundTripAndRounding) {
  // Values exactly representable in bf16 survive; others round to nearest even.
  for (float f : {0.f, 1.f, -2.5f, 3.140625f, std::ldexp(1.f, -100), -65536.f}) EXPECT_EQ(bf16_to_f32(f32_to_bf16(f)), f);
  const float one_plus = 1.f + 1.f / 256.f;  // halfway between two bf16 values: rounds to even (1.0)
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(one_plus)), 1.f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16MatchesKnownEncodings) {
  EXPECT_EQ(f32_to_f16(1.f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(5.960464477539063e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x0001), 5.960464477539063e-08f);
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  // Every finite f16 value round-trips.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    EXPECT_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h) << h;
  }
}

TEST(ThreadPool, RunsEveryTaskOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int rep = 0; rep < 200; ++rep) {
      std::vector<std::atomic<int>> hits(97);
      pool.parallel_for(97, [&](int64_t i) { hits[i].fetch_add(1); });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    }
    std::atomic<int64_t> sum{0};
    pool.parallel_range(1000, 16, [&](int64_t b, int64_t e) {
      EXPECT_EQ(b % 16, 0);
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 999 * 1000 / 2);
  }
}

// The pool's accounting: regions counted, busy time within threads × wall, and a region whose tasks are
// lopsided (one long task, the others short) shows the others waiting.
// A task that throws (an allocation that failed in a worker) ended the process with std::terminate; the exception
// now reaches the caller of parallel_for once every thread is done, and the pool stays usable.
TEST(ThreadPool, ATasksExceptionReachesTheCaller) {
  ThreadPool pool(4);
  for (int round = 0; round < 20; ++round) {
    std::atomic<int> ran{0};
    EXPECT_THROW(pool.parallel_for(64, [&](int64_t i) {
      ran.fetch_add(1);
      if (i == round) throw std::bad_alloc();
    }), std::bad_alloc);
    EXPECT_GE(ran.load(), 1);
    std::atomic<int64_t> sum{0};
    pool.parallel_for(100, [&](int64_t i) { sum.fetch_add(i); });
    EXPECT_EQ(sum.load(), 4950);
  }
}

TEST(ThreadPool, StatsSeeRegionsAndWaiting) {
  ThreadPool pool(2);
  pool.reset_stats();
  auto spin_us = [](int us) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    while (std::chrono::steady_clock::now() < end) {
    }
  };
  for (int r = 0; r < 5; ++r) pool.parallel_for(2, [&](int64_t i) { spin_us(i == 0 ? 4000 : 200); });
  pool.parallel_for(1, [&](int64_t) { spin_us(100); });  // one task runs inline: not a region
  const ThreadPool::Stats st = pool.stats();
  EXPECT_EQ(st.regions, 5);
  EXPECT_GE(st.busy_ns, 5 * (4000 + 200) * 1000LL);
  EXPECT_LE(st.busy_ns, 2 * st.wall_ns);
  const double wait = 1.0 - double(st.busy_ns) / (2.0 * double(st.wall_ns));
  EXPECT_GT(wait, 0.3) << "one thread waits about 3.8 of every 4.2 ms";
  pool.reset_stats();
  EXPECT_EQ(pool.stats().regions, 0);
  EXPECT_EQ(pool.stats().busy_ns, 0);
}

TEST(PageBuffer, AlignedMovableAndProcFields) {
  PageBuffer a(3 << 20, true);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % kHugePageBytes, 0u);
  EXPECT_EQ(a.size(), size_t(4) << 20);  // whole 2 MiB pages
  a.data()[a.size() - 1] = 7;
  PageBuffer b = std::move(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.data()[b.size() - 1], 7);
  EXPECT_TRUE(PageBuffer().empty());
#if defined(__linux__)
  EXPECT_GT(proc_kb_field_bytes("/proc/meminfo", "MemTotal"), size_t(1) << 20);
  EXPECT_EQ(proc_kb_field_bytes("/proc/meminfo", "MemTotalNoSuchField"), 0u);
  EXPECT_EQ(proc_kb_field_bytes("/proc/meminfo", "MemTot"), 0u);  // a prefix of a name is not the name
#endif
  EXPECT_EQ(proc_kb_field_bytes("/nonexistent/meminfo", "MemTotal"), 0u);
}

TEST(Npy, WriteThenRead) {
  test::TempDir dir;
  auto v = test::random_floats(3 * 5, 7);
  const std::string p = dir.str() + "/a.npy";
  write_npy_f32(p, v.data(), {3, 5});
  auto a = read_npy_f32(p);
  ASSERT_EQ(a.shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(0, std::memcmp(a.data.data(), v.data(), v.size() * 4));
}

// A .npy whose shape claims more floats than the file holds (or than 64 bits count) is refused before anything
// is allocated for it.
TEST(Npy, AbsurdShapesAreRefusedBeforeAllocating) {
  test::TempDir dir;
  auto write = [&](const std::string& shape) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header.push_back('\n');
    std::ofstream f(dir.str() + "/a.npy", std::ios::binary | std::ios::trunc);
    f.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = uint16_t(header.size());
    f.write(reinterpret_cast<const char*>(&len), 2);
    f << header << std::string(8, '\0');  // two floats
  };
  auto error = [&] {
    try {
      read_npy_f32(dir.str() + "/a.npy");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  write("2,");
  EXPECT_EQ(error(), "(no error)");
  write("4611686018427387906,");  // 2^62 + 2 floats: 2^64 + 8 bytes, 8 after wrapping
  EXPECT_NE(error().find("holds 4611686018427387906 floats but the file has 8 bytes"), std::string::npos) << error();
  write("4294967296, 4294967296");  // the element count itself wraps to 0
  EXPECT_NE(error().find("shape overflows 64 bits"), std::string::npos) << error();
}

}  // namespace
}  // namespace moep
