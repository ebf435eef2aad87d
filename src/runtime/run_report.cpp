#include "runtime/run_report.h"
#include "moep_commit.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/system_info.h"
#include "kernels/kernels.h"
#include "runtime/engine.h"

namespace moep {

namespace {

// memcpy of n bytes; an empty vector's data() may be null, which memcpy must not be given even for 0 bytes (UBSan).
void copy_bytes(void* dst, const void* src, size_t n) {
  if (n > 0) std::memcpy(dst, src, n);
}

struct BlobHeader {
  int32_t rank, threads;
  int64_t n_layers, head_ns, head_gather_ns, n_events;
  uint64_t weight_bytes, kv_cache_bytes;
  CommStats comm;
  char host[64];
};

std::vector<uint8_t> serialize(const RankStats& r) {
  BlobHeader h{};
  h.rank = r.rank;
  h.threads = r.threads;
  h.n_layers = int64_t(r.layers.size());
  h.head_ns = r.head_ns;
  h.head_gather_ns = r.head_gather_ns;
  h.kv_cache_bytes = r.kv_cache_bytes;
  h.n_events = int64_t(r.events.size());
  h.weight_bytes = r.weight_bytes;
  h.comm = r.comm;
  std::strncpy(h.host, r.host.c_str(), sizeof(h.host) - 1);
  std::vector<uint8_t> out(sizeof(h) + r.layers.size() * sizeof(LayerStats) + r.events.size() * sizeof(TraceEvent));
  uint8_t* p = out.data();
  std::memcpy(p, &h, sizeof(h));
  p += sizeof(h);
  copy_bytes(p, r.layers.data(), r.layers.size() * sizeof(LayerStats));
  p += r.layers.size() * sizeof(LayerStats);
  copy_bytes(p, r.events.data(), r.events.size() * sizeof(TraceEvent));
  return out;
}

RankStats deserialize(const std::vector<uint8_t>& b) {
  BlobHeader h;
  MOEP_ASSERT(b.size() >= sizeof(h));
  std::memcpy(&h, b.data(), sizeof(h));
  RankStats r;
  r.rank = h.rank;
  r.threads = h.threads;
  r.head_ns = h.head_ns;
  r.head_gather_ns = h.head_gather_ns;
  r.kv_cache_bytes = h.kv_cache_bytes;
  r.weight_bytes = h.weight_bytes;
  r.comm = h.comm;
  r.host = std::string(h.host, strnlen(h.host, sizeof(h.host)));
  r.layers.resize(size_t(h.n_layers));
  r.events.resize(size_t(h.n_events));
  const uint8_t* p = b.data() + sizeof(h);
  copy_bytes(r.layers.data(), p, r.layers.size() * sizeof(LayerStats));
  p += r.layers.size() * sizeof(LayerStats);
  copy_bytes(r.events.data(), p, r.events.size() * sizeof(TraceEvent));
  return r;
}

double ms(int64_t ns) { return double(ns) / 1e6; }

// Per layer: the smallest all-reduce time over ranks (the exchange itself).
std::vector<int64_t> min_allreduce(const RunStats& s) {
  std::vector<int64_t> m;
  if (s.ranks.empty()) return m;
  m.assign(s.ranks[0].layers.size(), INT64_MAX);
  for (const auto& r : s.ranks)
    for (size_t l = 0; l < r.layers.size() && l < m.size(); ++l) m[l] = std::min(m[l], r.layers[l].allreduce_ns);
  return m;
}

}  // namespace

RunStats gather_run_stats(Engine& engine) {
  Communicator& comm = engine.comm();
  Transformer& tr = engine.transformer();
  RankStats mine;
  mine.rank = comm.rank();
  mine.threads = engine.pool().size();
  mine.host = host_name();
  mine.layers = tr.layer_stats();
  mine.head_ns = tr.head_ns();
  mine.head_gather_ns = tr.head_gather_ns();
  mine.kv_cache_bytes = tr.kv_cache_bytes();
  mine.comm = comm.stats();
  mine.weight_bytes = engine.model().bytes_mapped_for_use();
  mine.events.assign(tr.tracer().data(), tr.tracer().data() + tr.tracer().size());

  RunStats s;
  s.model = engine.config().summary();
  s.placement = str_cat(engine.placement().describe(), "; attention ",
                        engine.dense_split().attention ? "split" : "replicated", ", head ",
                        engine.dense_split().head ? "split" : "replicated");
  s.kernels = kernels::best_kernels().name;
  s.commit = MOEP_GIT_COMMIT;
  s.cpu = cpu_model_name();
  s.n_ranks = comm.size();
  const std::vector<uint8_t> blob = serialize(mine);
  if (comm.size() == 1) {
    s.ranks.push_back(std::move(mine));
    return s;
  }
  uint64_t my_size = blob.size();
  std::vector<uint64_t> sizes(static_cast<size_t>(comm.size()));
  comm.allgather(&my_size, sizeof(my_size), sizes.data());
  for (int r = 0; r < comm.size(); ++r) {
    std::vector<uint8_t> b(sizes[size_t(r)]);
    if (r == comm.rank()) b = blob;
    comm.broadcast(b.data(), b.size(), r);
    if (comm.rank() == 0 || r == comm.rank()) s.ranks.push_back(deserialize(b));
  }
  return s;
}

std::string format_stats_table(const RunStats& s) {
  std::ostringstream os;
  char line[512];
  os << "moep stats: " << s.model << "\n";
  os << "  placement " << s.placement << "; kernels " << s.kernels << "; commit " << s.commit << "; " << s.cpu
     << "\n";
  const auto min_ar = min_allreduce(s);
  // attn-ar: a split attention's all-reduce (waiting for slower ranks included); allreduce/wait: the MoE's.
  std::snprintf(line, sizeof line, "  %-5s %-5s %10s %9s %9s %10s %10s %9s %9s %10s\n", "rank", "layer", "attn ms",
                "attn-ar", "router", "experts", "allreduce", "wait", "dense", "pairs");
  os << line;
  for (const auto& r : s.ranks) {
    LayerStats tot;
    int64_t wait_tot = 0, comm_tot = 0;
    for (size_t l = 0; l < r.layers.size(); ++l) {
      const LayerStats& L = r.layers[l];
      const int64_t wait = L.allreduce_ns - min_ar[l];
      std::snprintf(line, sizeof line, "  %-5d %-5zu %10.3f %9.3f %9.3f %10.3f %10.3f %9.3f %9.3f %10lld\n", r.rank,
                    l, ms(L.attention_ns), ms(L.attention_allreduce_ns), ms(L.router_ns), ms(L.experts_ns), ms(L.allreduce_ns - wait), ms(wait),
                    ms(L.dense_ns), (long long)L.expert_pairs);
      if (r.layers.size() <= 8) os << line;
      tot.attention_ns += L.attention_ns;
      tot.attention_allreduce_ns += L.attention_allreduce_ns;
      tot.router_ns += L.router_ns;
      tot.experts_ns += L.experts_ns;
      tot.dense_ns += L.dense_ns;
      tot.expert_pairs += L.expert_pairs;
      wait_tot += wait;
      comm_tot += L.allreduce_ns - wait;
    }
    std::snprintf(line, sizeof line, "  %-5d %-5s %10.3f %9.3f %9.3f %10.3f %10.3f %9.3f %9.3f %10lld\n", r.rank,
                  "all", ms(tot.attention_ns), ms(tot.attention_allreduce_ns), ms(tot.router_ns), ms(tot.experts_ns), ms(comm_tot), ms(wait_tot),
                  ms(tot.dense_ns), (long long)tot.expert_pairs);
    os << line;
    std::snprintf(line, sizeof line,
                  "  rank %d: head %.3f ms (gather %.3f ms); %llu all-reduces, %.1f KiB payload, %.1f KiB sent; %.1f MiB "
                  "of weights resident, %.1f MiB of KV cache; %d threads on %s\n",
                  r.rank, ms(r.head_ns), ms(r.head_gather_ns), (unsigned long long)r.comm.allreduce_calls,
                  double(r.comm.allreduce_bytes) / 1024.0, double(r.comm.bytes_sent) / 1024.0,
                  double(r.weight_bytes) / (1024.0 * 1024.0), double(r.kv_cache_bytes) / (1024.0 * 1024.0), r.threads,
                  r.host.c_str());
    os << line;
  }
  return os.str();
}

void write_stats_json(const RunStats& s, const std::string& path) {
  nlohmann::json j;
  j["model"] = s.model;
  j["placement"] = s.placement;
  j["kernels"] = s.kernels;
  j["commit"] = s.commit;
  j["cpu"] = s.cpu;
  j["n_ranks"] = s.n_ranks;
  j["tokens"] = s.tokens;
  j["wall_seconds"] = s.wall_seconds;
  const auto min_ar = min_allreduce(s);
  for (const auto& r : s.ranks) {
    nlohmann::json jr;
    jr["rank"] = r.rank;
    jr["host"] = r.host;
    jr["threads"] = r.threads;
    jr["head_ms"] = ms(r.head_ns);
    jr["head_gather_ms"] = ms(r.head_gather_ns);
    jr["kv_cache_bytes"] = r.kv_cache_bytes;
    jr["weight_bytes"] = r.weight_bytes;
    jr["allreduce_calls"] = r.comm.allreduce_calls;
    jr["allreduce_payload_bytes"] = r.comm.allreduce_bytes;
    jr["bytes_sent"] = r.comm.bytes_sent;
    jr["other_collectives"] = r.comm.other_calls;
    for (size_t l = 0; l < r.layers.size(); ++l) {
      const LayerStats& L = r.layers[l];
      const int64_t wait = L.allreduce_ns - min_ar[l];
      jr["layers"].push_back({{"layer", l},
                              {"attention_ms", ms(L.attention_ns)},
                              {"attention_allreduce_ms", ms(L.attention_allreduce_ns)},
                              {"router_ms", ms(L.router_ns)},
                              {"experts_ms", ms(L.experts_ns)},
                              {"allreduce_ms", ms(L.allreduce_ns - wait)},
                              {"wait_ms", ms(wait)},
                              {"dense_ms", ms(L.dense_ns)},
                              {"expert_pairs", L.expert_pairs},
                              {"experts_touched", L.experts_touched},
                              {"calls", L.calls}});
    }
    j["ranks"].push_back(jr);
  }
  std::ofstream f(path);
  if (!f) fail("cannot write stats to ", path);
  f << j.dump(1) << "\n";
}

void write_chrome_trace(const RunStats& s, const std::string& path) {
  // Trace Event Format: one process per rank, one thread; times in microseconds from the earliest event.
  int64_t t0 = INT64_MAX;
  for (const auto& r : s.ranks)
    for (const auto& e : r.events) t0 = std::min(t0, e.start_ns);
  nlohmann::json events = nlohmann::json::array();
  for (const auto& r : s.ranks) {
    events.push_back({{"name", "process_name"},
                      {"ph", "M"},
                      {"pid", r.rank},
                      {"args", {{"name", "rank " + std::to_string(r.rank) + " (" + r.host + ")"}}}});
    for (const auto& e : r.events) {
      nlohmann::json ev = {{"name", trace_phase_name(e.phase)},
                           {"cat", "moep"},
                           {"ph", "X"},
                           {"pid", r.rank},
                           {"tid", 0},
                           {"ts", double(e.start_ns - t0) / 1000.0},
                           {"dur", double(e.dur_ns) / 1000.0}};
      if (e.layer >= 0) ev["args"] = {{"layer", e.layer}};
      events.push_back(ev);
    }
  }
  std::ofstream f(path);
  if (!f) fail("cannot write trace to ", path);
  f << nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump() << "\n";
}

}  // namespace moep
