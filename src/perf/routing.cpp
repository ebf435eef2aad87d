#include "perf/routing.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_read.h"

namespace moep::perf {

using nlohmann::json;

RoutingRecord parse_routing_record(const std::string& text, const std::string& source) {
  check_json_depth(text, kMaxJsonDepth, source);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(source, ": malformed JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail(source, ": a routing record must be a JSON object");
  const std::string format = j.value("format", "");
  if (format != "moep-routing-v1")
    fail(source, ": \"format\" is '", format, "', expected 'moep-routing-v1'");
  RoutingRecord r;
  r.source = source;
  try {
    r.model = j.value("model", "");
    r.n_layers = j.at("n_layers").get<int64_t>();
    r.n_experts = j.at("n_experts").get<int64_t>();
    r.top_k = j.at("top_k").get<int64_t>();
    r.tokens = j.at("tokens").get<int64_t>();
  } catch (const json::exception& e) {
    fail(source, ": routing record needs integer n_layers, n_experts, top_k and tokens (", e.what(), ")");
  }
  if (r.n_layers < 1 || r.n_experts < 1 || r.top_k < 1 || r.top_k > r.n_experts || r.tokens < 1)
    fail(source, ": n_layers, n_experts, tokens must be positive and 1 <= top_k <= n_experts");
  if (!j.contains("counts") || !j["counts"].is_array() || int64_t(j["counts"].size()) != r.n_layers)
    fail(source, ": \"counts\" must be a list of ", r.n_layers, " entries (one per layer)");
  r.counts.resize(size_t(r.n_layers));
  for (int64_t l = 0; l < r.n_layers; ++l) {
    const json& c = j["counts"][size_t(l)];
    if (c.is_null() || (c.is_array() && c.empty())) continue;
    if (!c.is_array() || int64_t(c.size()) != r.n_experts)
      fail(source, ": counts of layer ", l, " must list ", r.n_experts, " numbers (or be null for a dense layer)");
    double sum = 0;
    auto& row = r.counts[size_t(l)];
    for (const auto& v : c) {
      if (!v.is_number() || v.get<double>() < 0) fail(source, ": counts of layer ", l, " must be non-negative numbers");
      row.push_back(v.get<double>());
      sum += row.back();
    }
    const double want = double(r.tokens) * double(r.top_k);
    if (std::fabs(sum - want) > 1e-6 * want + 0.5)
      fail(source, ": counts of layer ", l, " sum to ", sum, ", expected tokens × top_k = ", want);
    for (int64_t e = 0; e < r.n_experts; ++e)
      if (row[size_t(e)] > double(r.tokens) + 0.5)
        fail(source, ": layer ", l, " expert ", e, " was chosen ", row[size_t(e)], " times, more than the ", r.tokens,
             " tokens (a token picks distinct experts)");
  }
  if (j.contains("steps") && !j["steps"].is_null()) {
    if (!j["steps"].is_array()) fail(source, ": \"steps\" must be a list");
    for (const json& st : j["steps"]) {
      RoutingRecord::Step step;
      if (!st.is_object() || !st.contains("rows") || !st["rows"].is_number_integer() || !st.contains("ids") ||
          !st["ids"].is_array() || int64_t(st["ids"].size()) != r.n_layers)
        fail(source, ": step ", r.steps.size(), " needs \"rows\" and \"ids\" with one entry per layer");
      step.rows = st["rows"].get<int64_t>();
      if (step.rows < 1) fail(source, ": step ", r.steps.size(), " has no rows");
      step.ids.resize(size_t(r.n_layers));
      for (int64_t l = 0; l < r.n_layers; ++l) {
        const json& ids = st["ids"][size_t(l)];
        if (ids.is_null() || (ids.is_array() && ids.empty())) continue;
        if (!ids.is_array() || int64_t(ids.size()) != step.rows * r.top_k)
          fail(source, ": step ", r.steps.size(), " layer ", l, " must list rows × top_k = ", step.rows * r.top_k,
               " expert ids");
        for (const auto& e : ids) {
          if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= r.n_experts)
            fail(source, ": step ", r.steps.size(), " layer ", l, " has an expert id outside [0, ", r.n_experts, ")");
          step.ids[size_t(l)].push_back(e.get<int32_t>());
        }
      }
      r.steps.push_back(std::move(step));
    }
  }
  return r;
}

RoutingCounter::RoutingCounter(int64_t n_layers, int64_t n_experts, int64_t top_k, const std::vector<bool>& layer_is_moe,
                               std::string model, int64_t max_steps)
    : n_layers_(n_layers), n_experts_(n_experts), top_k_(top_k), is_moe_(layer_is_moe), model_(std::move(model)),
      counts_(static_cast<size_t>(n_layers)), rows_(static_cast<size_t>(n_layers), 0), max_steps_(max_steps) {
  if (int64_t(is_moe_.size()) != n_layers) fail("RoutingCounter: layer kinds must list every layer");
  for (int64_t l = 0; l < n_layers; ++l)
    if (is_moe_[size_t(l)]) counts_[size_t(l)].assign(size_t(n_experts), 0);
}

void RoutingCounter::add(int64_t layer, const int32_t* ids, int64_t rows) {
  MOEP_ASSERT(layer >= 0 && layer < n_layers_ && is_moe_[size_t(layer)], "routing of a non-MoE layer ", layer);
  auto& c = counts_[size_t(layer)];
  for (int64_t i = 0; i < rows * top_k_; ++i) {
    MOEP_ASSERT(ids[i] >= 0 && ids[i] < n_experts_, "expert id ", ids[i], " out of range");
    c[size_t(ids[i])]++;
  }
  rows_[size_t(layer)] += rows;
}

void RoutingCounter::add_step(const std::vector<std::vector<int32_t>>& routing, int64_t rows) {
  MOEP_ASSERT(int64_t(routing.size()) == n_layers_, "routing of ", routing.size(), " layers, expected ", n_layers_);
  RoutingRecord::Step step;
  step.rows = rows;
  step.ids.resize(size_t(n_layers_));
  for (int64_t l = 0; l < n_layers_; ++l) {
    if (!is_moe_[size_t(l)]) continue;
    const auto& ids = routing[size_t(l)];
    MOEP_ASSERT(int64_t(ids.size()) == rows * top_k_, "layer ", l, " routed ", ids.size(), " pairs, expected ",
                rows * top_k_);
    add(l, ids.data(), rows);
    if (int64_t(steps_.size()) < max_steps_) step.ids[size_t(l)] = ids;
  }
  if (int64_t(steps_.size()) < max_steps_) steps_.push_back(std::move(step));
}

RoutingRecord RoutingCounter::record() const {
  RoutingRecord r;
  r.model = model_;
  r.n_layers = n_layers_;
  r.n_experts = n_experts_;
  r.top_k = top_k_;
  r.counts.resize(size_t(n_layers_));
  for (int64_t l = 0; l < n_layers_; ++l) {
    if (!is_moe_[size_t(l)]) continue;
    if (r.tokens == 0) r.tokens = rows_[size_t(l)];
    for (int64_t v : counts_[size_t(l)]) r.counts[size_t(l)].push_back(double(v));
  }
  r.steps = steps_;
  return r;
}

std::string RoutingCounter::to_json() const {
  json j = {{"format", "moep-routing-v1"}, {"model", model_},  {"n_layers", n_layers_},
            {"n_experts", n_experts_},     {"top_k", top_k_}};
  int64_t tokens = 0;
  json counts = json::array();
  for (int64_t l = 0; l < n_layers_; ++l) {
    if (!is_moe_[size_t(l)]) {
      counts.push_back(nullptr);
      continue;
    }
    if (tokens == 0) tokens = rows_[size_t(l)];
    counts.push_back(counts_[size_t(l)]);
  }
  j["tokens"] = tokens;
  j["counts"] = counts;
  if (!steps_.empty()) {
    json steps = json::array();
    for (const auto& st : steps_) {
      json ids = json::array();
      for (const auto& l : st.ids) ids.push_back(l.empty() ? json(nullptr) : json(l));
      steps.push_back({{"rows", st.rows}, {"ids", ids}});
    }
    j["steps"] = steps;
  }
  return j.dump() + "\n";
}

void RoutingCounter::write(const std::string& path) const {
  std::ofstream f(path);
  if (!f) fail("cannot write routing record ", path);
  f << to_json();
  if (!f) fail("cannot write routing record ", path);
}

RoutingRecord load_routing_record(const std::string& path) {
  if (!std::filesystem::exists(path)) fail("cannot read routing record ", path);
  return parse_routing_record(read_regular_file(path, kMaxRoutingRecordBytes, "a routing record"), path);
}

void check_routing_matches(const RoutingRecord& r, const ModelShape& s) {
  if (r.n_layers != s.n_layers || r.n_experts != s.n_experts || r.top_k != s.top_k)
    fail(r.source, ": routing record is for ", r.n_layers, " layers, ", r.n_experts, " experts, top-", r.top_k,
         "; the model ", s.name, " has ", s.n_layers, " layers, ", s.n_experts, " experts, top-", s.top_k);
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (!s.layer_is_moe[size_t(l)] && !r.counts[size_t(l)].empty())
      fail(r.source, ": layer ", l, " has routing counts but is a dense layer of ", s.name);
}

std::vector<double> inclusion_probabilities(const RoutingRecord* rec, int64_t layer, int64_t E, int64_t k) {
  std::vector<double> pi(size_t(E), double(k) / double(E));
  if (!rec || layer >= int64_t(rec->counts.size()) || rec->counts[size_t(layer)].empty()) return pi;
  const auto& c = rec->counts[size_t(layer)];
  double sum = 0;
  for (double v : c) sum += v;
  if (sum <= 0) return pi;
  for (int64_t e = 0; e < E; ++e) pi[size_t(e)] = std::min(1.0, c[size_t(e)] / sum * double(k));
  // Clamping can only lower the sum below k when a count exceeded the token count (rejected at load).
  return pi;
}

bool is_uniform(const std::vector<double>& pi) {
  for (double p : pi)
    if (std::fabs(p - pi[0]) > 1e-12) return false;
  return true;
}

void sample_experts(const std::vector<double>& pi, int64_t k, std::mt19937_64& rng, int32_t* out,
                    std::vector<int32_t>& order) {
  const int64_t E = int64_t(pi.size());
  if (int64_t(order.size()) != E) {
    order.resize(size_t(E));
    for (int64_t e = 0; e < E; ++e) order[size_t(e)] = int32_t(e);
  }
  if (is_uniform(pi)) {
    // k distinct experts uniformly: a partial Fisher-Yates shuffle, undone afterwards so that `order` stays
    // the identity and the draw costs O(k), not O(E).
    int64_t swapped[64];
    const int64_t kk = std::min<int64_t>(k, 64);
    for (int64_t i = 0; i < k; ++i) {
      std::uniform_int_distribution<int64_t> pick(i, E - 1);
      const int64_t j = pick(rng);
      std::swap(order[size_t(i)], order[size_t(j)]);
      if (i < kk) swapped[i] = j;
      out[i] = order[size_t(i)];
    }
    if (k <= 64) {
      for (int64_t i = k - 1; i >= 0; --i) std::swap(order[size_t(i)], order[size_t(swapped[i])]);
    } else {
      for (int64_t e = 0; e < E; ++e) order[size_t(e)] = int32_t(e);
    }
    return;
  }
  // Systematic sampling (Madow): lay the experts end to end in a random order, each over a length π_e, and
  // take the ones under the points u, u+1, ..., u+k-1. Each expert is taken with probability exactly π_e ≤ 1,
  // never twice; the random order makes the choices of different experts as independent as that allows.
  std::shuffle(order.begin(), order.end(), rng);
  double total = 0;
  for (double p : pi) total += p;
  const double scale = double(k) / total;  // guards against rounding in Σπ
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  const double u = u01(rng);
  double acc = 0.0;
  int64_t taken = 0, i = 0;
  for (; i < E && taken < k; ++i) {
    const int32_t e = order[size_t(i)];
    acc += pi[size_t(e)] * scale;
    if (u + double(taken) < acc) out[taken++] = e;  // π_e ≤ 1: at most one point falls on an expert
  }
  // Only rounding in the last sum can leave a point unmatched: take the experts after the last one taken.
  for (; taken < k && i < E; ++i) out[taken++] = order[size_t(i)];
}

namespace {

// C(n, r) as a double (large values only need to be compared with a limit).
double choose(int64_t n, int64_t r) {
  double c = 1;
  for (int64_t i = 1; i <= r; ++i) c = c * double(n - r + i) / double(i);
  return c;
}

}  // namespace

RoutingSet make_routings(const std::vector<double>& pi, int64_t rows, int64_t k, int64_t samples, uint64_t seed,
                         int64_t exact_limit, bool identical_rows) {
  const int64_t E = int64_t(pi.size());
  if (rows < 1 || k < 1 || k > E) fail("make_routings: need rows >= 1 and 1 <= k <= E");
  RoutingSet set;
  set.rows = rows;
  set.k = k;
  const int64_t per = rows * k;
  if (identical_rows && rows > 1) {
    // One row's routings, each repeated over all rows.
    const RoutingSet one = make_routings(pi, 1, k, samples, seed, exact_limit, false);
    set.count = one.count;
    set.exact = one.exact;
    set.ids.reserve(size_t(one.count * per));
    for (int64_t c = 0; c < one.count; ++c)
      for (int64_t t = 0; t < rows; ++t) set.ids.insert(set.ids.end(), one.ids.begin() + c * k, one.ids.begin() + (c + 1) * k);
    return set;
  }
  const double outcomes = std::pow(choose(E, k), double(rows));
  if (is_uniform(pi) && outcomes <= double(exact_limit) && outcomes * double(per) <= 4e6) {
    // Every token's k-subset is equally likely: enumerate the subsets, then all rows-tuples of them.
    std::vector<std::vector<int32_t>> subsets;
    std::vector<int32_t> cur(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) cur[size_t(i)] = int32_t(i);
    for (;;) {
      subsets.push_back(cur);
      int64_t i = k - 1;
      while (i >= 0 && cur[size_t(i)] == int32_t(E - k + i)) --i;
      if (i < 0) break;
      cur[size_t(i)]++;
      for (int64_t j = i + 1; j < k; ++j) cur[size_t(j)] = cur[size_t(j - 1)] + 1;
    }
    std::vector<size_t> idx(static_cast<size_t>(rows), 0);
    set.ids.reserve(size_t(outcomes) * size_t(per));
    for (;;) {
      for (int64_t t = 0; t < rows; ++t)
        set.ids.insert(set.ids.end(), subsets[idx[size_t(t)]].begin(), subsets[idx[size_t(t)]].end());
      ++set.count;
      int64_t t = rows - 1;
      while (t >= 0 && ++idx[size_t(t)] == subsets.size()) idx[size_t(t--)] = 0;
      if (t < 0) break;
    }
    set.exact = true;
    return set;
  }
  std::mt19937_64 rng(seed);
  std::vector<int32_t> order;
  set.count = std::max<int64_t>(1, samples);
  set.ids.resize(size_t(set.count * per));
  for (int64_t s = 0; s < set.count; ++s)
    for (int64_t t = 0; t < rows; ++t) sample_experts(pi, k, rng, &set.ids[size_t(s * per + t * k)], order);
  return set;
}

RoutingSet recorded_routings(const RoutingRecord& rec, int64_t layer, int64_t rows) {
  RoutingSet set;
  set.rows = rows;
  set.k = rec.top_k;
  for (const auto& st : rec.steps) {
    if (st.rows != rows || layer >= int64_t(st.ids.size()) || st.ids[size_t(layer)].empty()) continue;
    set.ids.insert(set.ids.end(), st.ids[size_t(layer)].begin(), st.ids[size_t(layer)].end());
    ++set.count;
  }
  return set;
}

double shared_memory_finish(std::vector<double>& times, int host_ranks, double alone_speedup) {
  std::sort(times.begin(), times.end());
  double t = 0, done = 0;  // elapsed, and work done by each rank still reading (in all-reading seconds)
  const size_t m = times.size();
  for (size_t i = 0; i < m; ++i) {
    const double readers = double(m - i);
    const double speed = std::min(alone_speedup, double(host_ranks) / readers);
    t += (times[i] - done) / std::max(1.0, speed);
    done = times[i];
  }
  return t;
}

ExpertTimeStats evaluate_routings(const ExpertPlacement& pl, int64_t layer, const RoutingSet& set,
                                  const std::vector<double>& cost, int host_ranks, double alone_speedup) {
  const int64_t n_pairs = set.rows * set.k, E = pl.n_experts();
  const int R = pl.n_ranks();
  if (int64_t(cost.size()) < n_pairs + 1) fail("evaluate_routings: cost table shorter than rows·k + 1");
  std::vector<int32_t> owner(static_cast<size_t>(n_pairs));
  std::vector<int64_t> load(static_cast<size_t>(R)), count(size_t(R) * size_t(E), 0), rank_pairs(static_cast<size_t>(R));
  std::vector<double> rank_time(static_cast<size_t>(R)), group;
  const bool shared = host_ranks > 1 && alone_speedup > 1.0;
  if (shared) group.reserve(size_t(host_ranks));
  double sum_max = 0, sum_mean = 0, sum_pairs = 0, sum_touched = 0;
  for (int64_t s = 0; s < set.count; ++s) {
    const int32_t* experts = &set.ids[size_t(s * n_pairs)];
    if (pl.is_split()) {
      // Every rank runs its slice of every expert the step uses, with all of that expert's pairs: the same
      // time on every rank (cost is per slice); a rank reads 1/R of each expert.
      for (int64_t i = 0; i < n_pairs; ++i) count[size_t(experts[i])]++;
      double t = 0;
      for (int64_t i = 0; i < n_pairs; ++i) {
        int64_t& c = count[size_t(experts[i])];
        if (c == 0) continue;
        t += cost[size_t(c)];
        sum_touched += 1;
        c = 0;
      }
      sum_max += t;
      sum_mean += t;
      sum_pairs += double(n_pairs);
      continue;
    }
    pl.assign(layer, experts, n_pairs, owner.data(), load.data());
    std::fill(rank_time.begin(), rank_time.end(), 0.0);
    std::fill(rank_pairs.begin(), rank_pairs.end(), 0);
    for (int64_t i = 0; i < n_pairs; ++i) count[size_t(int64_t(owner[size_t(i)]) * E + experts[i])]++;
    for (int64_t i = 0; i < n_pairs; ++i) {
      int64_t& c = count[size_t(int64_t(owner[size_t(i)]) * E + experts[i])];
      if (c == 0) continue;  // this (rank, expert) was already added; count is left all zero
      rank_time[size_t(owner[size_t(i)])] += cost[size_t(c)];
      rank_pairs[size_t(owner[size_t(i)])] += c;
      sum_touched += 1;
      c = 0;
    }
    double mx = -1, sum = 0;
    int64_t mp = 0;
    for (int r = 0; r < R; ++r) {
      sum += rank_time[size_t(r)];
      if (rank_time[size_t(r)] > mx) mx = rank_time[size_t(r)], mp = rank_pairs[size_t(r)];
    }
    if (shared) {
      mx = 0;
      for (int g0 = 0; g0 < R; g0 += host_ranks) {
        group.assign(rank_time.begin() + g0, rank_time.begin() + std::min(R, g0 + host_ranks));
        mx = std::max(mx, shared_memory_finish(group, host_ranks, alone_speedup));
      }
    }
    sum_max += mx;
    sum_mean += sum / double(R);
    sum_pairs += double(mp);
  }
  ExpertTimeStats st;
  const double n = double(set.count);
  st.max_rank_s = sum_max / n;
  st.mean_rank_s = sum_mean / n;
  st.max_rank_pairs = sum_pairs / n;
  st.mean_rank_experts = sum_touched / n / double(R);
  st.samples = set.count;
  st.exact = set.exact;
  return st;
}

ExpertTimeStats expected_expert_time(const ExpertPlacement& pl, int64_t layer, const std::vector<double>& pi,
                                     int64_t rows, int64_t k, const std::vector<double>& cost, int64_t samples,
                                     uint64_t seed, int64_t exact_limit) {
  return evaluate_routings(pl, layer, make_routings(pi, rows, k, samples, seed, exact_limit), cost);
}

}  // namespace moep::perf
