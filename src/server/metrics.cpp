#include "server/metrics.h"
#include "moep_commit.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace moep::server {

namespace {

std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string num(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

class Writer {
 public:
  void family(const char* name, const char* type, const char* help) {
    os_ << "# HELP " << name << ' ' << help << '\n' << "# TYPE " << name << ' ' << type << '\n';
  }
  void sample(const std::string& name, double v, const std::string& labels = "") {
    os_ << name;
    if (!labels.empty()) os_ << '{' << labels << '}';
    os_ << ' ' << num(v) << '\n';
  }
  void one(const char* name, const char* type, const char* help, double v) {
    family(name, type, help);
    sample(name, v);
  }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};

}  // namespace

void Metrics::count_http(const std::string& route, int status) {
  std::lock_guard<std::mutex> lk(mu_);
  http_[{route, status}]++;
}

void Metrics::count_generation(const std::string& finish_reason, double ttft) {
  std::lock_guard<std::mutex> lk(mu_);
  finished_[finish_reason]++;
  if (ttft > 0) {
    ttft_count_++;
    ttft_sum_ += ttft;
    for (size_t i = 0; i < kTtftBuckets.size(); ++i)
      if (ttft <= kTtftBuckets[i]) {
        ttft_counts_[i]++;
        break;
      }
  }
}

std::string Metrics::render(const SchedulerStats& s, const ServerInfo& info) const {
  Writer w;
  w.family("moep_info", "gauge", "The model served and the build (value 1).");
  w.sample("moep_info", 1,
           "model=\"" + escape_label(info.model_id) + "\",version=\"" MOEP_VERSION "\",commit=\"" MOEP_GIT_COMMIT "\"");
  w.one("moep_ranks", "gauge", "MPI ranks taking part in every step.", info.n_ranks);
  w.one("moep_slots", "gauge", "Sequences decoded together at most (--parallel).", double(info.slots));
  w.one("moep_context_tokens", "gauge", "Context per sequence (prompt + completion), tokens.", double(info.max_context));
  w.one("moep_uptime_seconds", "gauge", "Seconds since the server started.", info.uptime_seconds);
  {
    std::lock_guard<std::mutex> lk(mu_);
    w.family("moep_http_requests_total", "counter", "HTTP requests answered, by route and status code.");
    for (const auto& [key, n] : http_)
      w.sample("moep_http_requests_total", double(n),
               "route=\"" + escape_label(key.first) + "\",code=\"" + std::to_string(key.second) + "\"");
    w.family("moep_generations_total", "counter", "Generations ended, by finish reason (stop, length, cancelled, error).");
    for (const auto& [reason, n] : finished_)
      w.sample("moep_generations_total", double(n), "finish_reason=\"" + escape_label(reason) + "\"");
    w.family("moep_time_to_first_token_seconds", "histogram",
             "From submission to the scheduler to the first sampled token, seconds.");
    uint64_t cum = 0;
    for (size_t i = 0; i < kTtftBuckets.size(); ++i) {
      cum += ttft_counts_[i];
      w.sample("moep_time_to_first_token_seconds_bucket", double(cum), "le=\"" + num(kTtftBuckets[i]) + "\"");
    }
    w.sample("moep_time_to_first_token_seconds_bucket", double(ttft_count_), "le=\"+Inf\"");
    w.sample("moep_time_to_first_token_seconds_sum", ttft_sum_);
    w.sample("moep_time_to_first_token_seconds_count", double(ttft_count_));
  }
  w.one("moep_requests_submitted_total", "counter", "Generation requests accepted by the scheduler.",
        double(s.requests_submitted));
  w.one("moep_requests_finished_total", "counter", "Generation requests that ended (stop or length).",
        double(s.requests_finished));
  w.one("moep_requests_cancelled_total", "counter", "Generation requests cancelled (client gone, or shutdown).",
        double(s.requests_cancelled));
  w.one("moep_prompt_tokens_total", "counter", "Prompt tokens admitted.", double(s.prompt_tokens));
  w.one("moep_completion_tokens_total", "counter", "Tokens generated.", double(s.completion_tokens));
  w.one("moep_tokens_per_second", "gauge", "Tokens generated per second over the last few seconds (all sequences).",
        s.recent_tokens_per_s);
  w.one("moep_queue_length", "gauge", "Requests waiting for a free slot.", double(s.queued));
  w.one("moep_active_sequences", "gauge", "Sequences in a slot (prefilling or decoding).", double(s.active));
  w.one("moep_steps_total", "counter", "Batched forward steps run.", double(s.steps));
  w.one("moep_step_seconds_total", "counter", "Wall time inside forward steps, seconds.", s.step_seconds);
  w.one("moep_step_compute_seconds_total", "counter",
        "Of the step time: attention, router, experts, dense layers and head on rank 0, seconds.", s.compute_seconds);
  w.one("moep_step_communication_seconds_total", "counter",
        "Of the step time: all-reduce between ranks, including waiting for the slowest, seconds.", s.comm_seconds);
  const double steps = s.steps ? double(s.steps) : 1.0;
  w.one("moep_step_seconds_mean", "gauge", "Mean wall time per step since start, seconds.",
        s.steps ? s.step_seconds / steps : 0.0);
  w.one("moep_step_compute_seconds_mean", "gauge", "Mean compute time per step since start, seconds.",
        s.steps ? s.compute_seconds / steps : 0.0);
  w.one("moep_step_communication_seconds_mean", "gauge", "Mean communication time per step since start, seconds.",
        s.steps ? s.comm_seconds / steps : 0.0);
  return w.str();
}

}  // namespace moep::server
