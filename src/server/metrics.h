// The server's figures in Prometheus text format (GET /metrics): HTTP requests by path and status, and the
// scheduler's counters (requests, tokens, steps, time per step split into compute and communication, queue,
// active sequences). Names and meanings are listed in docs/SERVER.md.
//
// Thread-safe: HTTP handlers record from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "runtime/batch_scheduler.h"

namespace moep::server {

// What /metrics reports besides the scheduler's own figures.
struct ServerInfo {
  std::string model_id;
  int n_ranks = 1;
  int64_t slots = 0;
  int64_t max_context = 0;
  double uptime_seconds = 0;
};

class Metrics {
 public:
  // Upper bounds (seconds) of the time-to-first-token histogram buckets; +Inf is implied.
  static constexpr std::array<double, 12> kTtftBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

  // One HTTP request answered: its route ("/v1/chat/completions", or "other" for unknown paths) and status.
  void count_http(const std::string& route, int status);
  // A generation ended (finish reason "stop", "length", "cancelled", "error"), with its time to first token
  // (seconds; 0 when no token came).
  void count_generation(const std::string& finish_reason, double time_to_first_token_s);

  // The Prometheus text exposition (version 0.0.4).
  std::string render(const SchedulerStats& s, const ServerInfo& info) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> http_;
  std::map<std::string, uint64_t> finished_;
  std::array<uint64_t, kTtftBuckets.size()> ttft_counts_{};  // per bucket (not cumulative)
  uint64_t ttft_count_ = 0;
  double ttft_sum_ = 0;
};

}  // namespace moep::server
