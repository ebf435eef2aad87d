#include "perf/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace moep::perf {

using nlohmann::json;

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string money(double usd) {
  if (usd <= 0) return "-";
  const long long v = std::llround(usd);
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return "$" + out;
}

std::string pad(const std::string& s, size_t w, bool right = true) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

std::string routing_label(const Scenario& s) {
  std::string l = s.routing ? "recorded routing (" + s.routing->source + ")" : "uniform routing";
  if (s.identical_rows) l += ", rows of a step alike";
  return l;
}

// Why nothing fits: the smallest node count that would, or why none can (contiguous placement).
std::string explain_no_fit(const ModelShape& m, const HardwareProfile& hw, const Scenario& base) {
  Scenario s = base;
  s.nodes = 1;
  const MemoryUse one = memory_use(m, hw, s);
  const double fixed = one.replicated + one.kv_cache + one.activations;
  const double per_expert = one.experts / double(std::max<int64_t>(1, one.experts_held));
  std::ostringstream o;
  o.precision(4);
  if (fixed >= one.capacity) {
    o << "cannot fit on " << hw.name << " at any node count: every node must hold the non-expert weights ("
      << one.replicated * 1e-9 << " GB) and its KV cache and buffers (" << (one.kv_cache + one.activations) * 1e-9
      << " GB), together more than its usable " << one.capacity * 1e-9 << " GB";
    return o.str();
  }
  for (int n = 1; n <= std::max<int64_t>(1, m.n_experts); ++n) {
    const int64_t per_node = (m.n_experts + n - 1) / n * m.n_moe_layers();
    if (fixed + double(per_node) * per_expert <= one.capacity) {
      o << "needs at least " << n << " nodes of " << hw.name << " (" << (fixed + double(per_node) * per_expert) * 1e-9
        << " GB per node of " << one.capacity * 1e-9 << " GB usable)";
      return o.str();
    }
  }
  o << "cannot fit on " << hw.name << " even with one expert per node (" << (fixed + m.n_moe_layers() * per_expert) * 1e-9
    << " GB per node, " << one.capacity * 1e-9 << " GB usable)";
  return o.str();
}

// A copy of `net` with α and β set and no measured fits (for the sweeps).
NetworkProfile with_alpha_beta(const NetworkProfile& net, double alpha_us, double beta_gbs) {
  NetworkProfile n = net;
  n.measured_fits.clear();
  n.alpha_us.value = alpha_us;
  n.beta_gbs.value = beta_gbs;
  return n;
}

std::vector<int> sweep_nodes(const PlanRequest& req) {
  std::set<int> s;
  for (int n : req.nodes)
    if (n >= 2) s.insert(n);
  std::vector<int> v(s.begin(), s.end());
  if (v.size() > 3) v = {v.front(), v[v.size() / 2], v.back()};
  if (v.empty()) v = {2};
  return v;
}

}  // namespace

int smallest_fitting_nodes(const ModelShape& model, const HardwareProfile& hw, const Scenario& base, int max_nodes) {
  // A node's share of the model shrinks as nodes are added (fewer whole experts, or a thinner slice of each), so
  // whether it fits is monotone in the count: a binary search. (A linear scan costs nodes² × layers × experts: a
  // profile with little memory, which needs thousands of nodes for DBRX, took minutes.)
  Scenario s = base;
  auto fits = [&](int n) {
    s.nodes = n;
    return memory_use(model, hw, s).fits();
  };
  if (max_nodes < 1 || !fits(max_nodes)) return -1;
  int lo = 1, hi = max_nodes;  // hi fits
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (fits(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  return hi;
}

double PlanRow::tps_per_kusd() const { return p.price_usd > 0 ? p.decode_tokens_per_s / (p.price_usd / 1000.0) : 0.0; }

PlanResult make_plan(const PlanRequest& req) {
  if (!req.model) fail("plan: no model");
  if (req.hardware.empty()) fail("plan: no hardware profile given (--hardware)");
  if (req.networks.empty()) fail("plan: no network profile given (--network)");
  if (req.nodes.empty()) fail("--nodes: no node counts given (e.g. 1..8 or 2,4)");
  for (int n : req.nodes)
    if (n < 1) fail("--nodes: node counts must be 1 or more, got ", n);
  if (req.target_tps < 0) fail("--target-tps must not be negative");
  PlanResult res;
  for (const HardwareProfile* hw : req.hardware) {
    Predictor pred(*req.model, *hw);
    for (int n : req.nodes) {
      for (size_t ni = 0; ni < req.networks.size(); ++ni) {
        if (n == 1 && ni > 0) break;  // one node: the network plays no part
        Scenario s = req.base;
        s.nodes = n;
        PlanRow row;
        row.hardware = hw;
        row.network = n == 1 ? nullptr : req.networks[ni];
        row.nodes = n;
        row.p = pred.predict(*req.networks[ni], s);
        res.rows.push_back(row);
      }
    }
  }
  bool any_fit = false;
  for (size_t i = 0; i < res.rows.size(); ++i) {
    const PlanRow& r = res.rows[i];
    if (!r.p.memory.fits()) continue;
    any_fit = true;
    if (res.fastest < 0 || r.p.decode_tokens_per_s > res.rows[size_t(res.fastest)].p.decode_tokens_per_s)
      res.fastest = int(i);
    if (r.p.price_usd > 0 &&
        (res.best_value < 0 || r.tps_per_kusd() > res.rows[size_t(res.best_value)].tps_per_kusd()))
      res.best_value = int(i);
    if (req.target_tps > 0 && r.p.decode_tokens_per_s >= req.target_tps) {
      const int c = res.cheapest_meeting_target;
      if (c < 0 || r.p.price_usd < res.rows[size_t(c)].p.price_usd ||
          (r.p.price_usd == res.rows[size_t(c)].p.price_usd &&
           r.p.decode_tokens_per_s > res.rows[size_t(c)].p.decode_tokens_per_s))
        res.cheapest_meeting_target = int(i);
    }
  }
  if (!any_fit) {
    std::string why;
    for (const HardwareProfile* hw : req.hardware) why += (why.empty() ? "" : "; ") + explain_no_fit(*req.model, *hw, req.base);
    int lo = *std::min_element(req.nodes.begin(), req.nodes.end());
    int hi = *std::max_element(req.nodes.begin(), req.nodes.end());
    fail(req.model->name, " in ", req.base.dtype, " fits on none of the configurations asked for (", lo, "..", hi,
         " nodes): ", why);
  }
  return res;
}

DenseSplitRow dense_split_row(const ModelShape& m, const Scenario& s, const PlanRow& row) {
  DenseSplitRow out;
  Scenario rep = s, split = s;
  rep.nodes = split.nodes = row.nodes;
  rep.split_attention = rep.split_head = false;
  split.split_attention = m.attn_split_exchanges > 0;
  split.split_head = true;
  NetworkProfile none;
  none.alpha_us.value = 0;
  none.beta_gbs.value = 1e9;
  const NetworkProfile& net = row.network ? *row.network : none;
  Predictor pred(m, *row.hardware);
  const Prediction pr = pred.predict(net, rep), ps = pred.predict(net, split);
  out.bytes_replicated = pr.weight_bytes_per_step;
  out.bytes_split = ps.weight_bytes_per_step;
  out.exchanges_replicated = pr.exchanges_per_step;
  out.exchanges_split = ps.exchanges_per_step;
  out.tps_replicated = pr.decode_tokens_per_s;
  out.tps_split = ps.decode_tokens_per_s;
  out.held_replicated = pr.memory.replicated + pr.memory.experts + pr.memory.kv_cache;
  out.held_split = ps.memory.replicated + ps.memory.experts + ps.memory.kv_cache;
  return out;
}

std::string format_dense_split(const PlanRequest& req, const PlanResult& res) {
  std::vector<std::vector<std::string>> cells;
  for (const PlanRow& r : res.rows) {
    if (r.nodes < 2) continue;
    const DenseSplitRow x = dense_split_row(*req.model, req.base, r);
    cells.push_back({r.hardware->name, r.network ? r.network->name : "-", std::to_string(r.nodes),
                     fmt("%.3f", x.bytes_replicated * 1e-9), fmt("%.3f", x.bytes_split * 1e-9),
                     fmt("%.1f", x.held_replicated * 1e-9), fmt("%.1f", x.held_split * 1e-9),
                     std::to_string(x.exchanges_replicated), std::to_string(x.exchanges_split),
                     fmt("%.2f", x.tps_replicated), fmt("%.2f", x.tps_split),
                     x.tps_split > x.tps_replicated ? "split" : "replicated"});
  }
  if (cells.empty()) return "";
  const std::vector<std::string> header = {"hardware", "network", "nodes", "GB/rank rep", "GB/rank split", "held rep", "held split", "exch rep",
                                           "exch split", "tok/s rep", "tok/s split", "faster"};
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& row : cells) width[c] = std::max(width[c], row[c].size());
  }
  std::ostringstream o;
  auto put_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) line += (c ? "  " : "") + pad(row[c], width[c], /*right=*/c >= 2);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    o << line << "\n";
  };
  o << "\nattention and head (--attention, --head): replicated against split, per decode step\n";
  put_row(header);
  for (const auto& row : cells) put_row(row);
  o << "columns: GB/rank = weights one rank reads per step; held = GB of weights and KV cache on the fullest rank;\n"
       "exch = collectives per step (all-reduces; the split head's all-gather of greedy picks); split = each rank its KV heads\n"
       "and vocabulary rows, one more all-reduce per layer (two with a whole-projection q/k norm).\n";
  return o.str();
}

std::string format_plan(const PlanRequest& req, const PlanResult& res) {
  const Scenario& b = req.base;
  std::ostringstream o;
  o << "model     " << req.model->summary() << "\n";
  if (!req.model->approximations.empty()) o << "          approximations: " << req.model->approximations << "\n";
  o << "scenario  " << b.dtype << " weights, batch " << b.batch << ", context " << b.context << " (KV " << b.kv_dtype
    << "), prompt " << b.prompt << ", " << routing_label(b) << ", " << b.placement << " placement";
  if (b.emulate_latency_us > 0) o << ", emulated latency " << b.emulate_latency_us << " us/step";
  o << "\n";
  for (const HardwareProfile* hw : req.hardware) {
    o << "hardware  " << hw->name << " (" << backend_name(hw->backend) << "): " << hw->description << "; "
      << fmt("%.0f", hw->memory_bandwidth_gbs.value) << " GB/s";
    if (hw->measured) o << " (measured: " << fmt("%.1f", hw->measured->membw_gbs) << " GB/s read, streaming "
                        << fmt("%.1f", hw->streaming_bandwidth_bps(b.dtype) * 1e-9) << " GB/s)";
    else if (hw->bandwidth_efficiency.present) o << " x " << hw->bandwidth_efficiency.value << " efficiency";
    o << ", " << fmt("%.0f", hw->memory_gb.value) << " GB (" << fmt("%.0f", hw->usable_bytes() * 1e-9) << " usable), "
      << money(hw->price_usd.value) << ", " << fmt("%.0f", hw->power_w.value) << " W";
    if (hw->gpu()) {
      o << "; " << fmt("%.3g", hw->dispatch_us.value) << " us per dispatch, all-reduce host round trip "
        << fmt("%.3g", hw->allreduce_roundtrip_us.value) << " us";
      if (hw->host_copy_gbs.present) o << " + copies at " << fmt("%.3g", hw->host_copy_gbs.value) << " GB/s";
    }
    o << "\n";
    // Say it where it is read: these rows are not what this moep does on that machine.
    if (const std::string caveat = backend_caveat(hw->backend); !caveat.empty()) o << "          " << caveat << "\n";
  }
  for (const NetworkProfile* n : req.networks) {
    o << "network   " << n->name << ": alpha " << fmt("%.3g", n->alpha_us.value) << " us, beta "
      << fmt("%.3g", n->beta_gbs.value) << " GB/s, " << algorithm_name(n->algorithm);
    if (!n->measured_fits.empty()) o << " (measured all-reduce for";
    for (const auto& [k, f] : n->measured_fits) o << " " << k;
    if (!n->measured_fits.empty()) o << " nodes)";
    o << "\n";
  }
  o << "\n";
  // Columns are as wide as their widest cell, two spaces apart: long profile names never run together.
  const std::vector<std::string> header = {"hardware", "backend", "network", "nodes", "fits", "GB/node", "tok/s", "ms/tok",
                                           "compute", "comm", "imbal", "prefill", "price", "tok/s/$1k", "W"};
  const size_t left_aligned = 3;  // hardware, backend and network read left to right; numbers align right
  std::vector<std::vector<std::string>> cells;
  for (const PlanRow& r : res.rows) {
    const StepTimes& d = r.p.decode;
    const double step_ms = d.total() * 1e3;
    // A backend this build lacks is starred: the rows predict a backend, not this moep (the note below says so).
    const std::string backend = std::string(backend_name(r.hardware->backend)) + (backend_in_this_build(r.hardware->backend) ? "" : "*");
    cells.push_back({r.hardware->name, backend, r.network ? r.network->name : "-", std::to_string(r.nodes),
                     r.p.memory.fits() ? "yes" : "NO", fmt("%.1f", r.p.memory.total() * 1e-9),
                     r.p.memory.fits() ? fmt("%.2f", r.p.decode_tokens_per_s)
                                       : "(" + fmt("%.2f", r.p.decode_tokens_per_s) + ")",
                     fmt("%.2f", step_ms / double(b.batch)), fmt("%.0f%%", 100 * d.compute() / d.total()),
                     fmt("%.0f%%", 100 * d.communication() / d.total()), fmt("%.0f%%", 100 * d.imbalance() / d.total()),
                     b.prompt > 0 ? fmt("%.1f", r.p.prefill_tokens_per_s) : "-", money(r.p.price_usd),
                     r.p.price_usd > 0 && r.p.memory.fits() ? fmt("%.3f", r.tps_per_kusd()) : "-",
                     r.p.power_w > 0 ? fmt("%.0f", r.p.power_w) : "-"});
  }
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& row : cells) width[c] = std::max(width[c], row[c].size());
  }
  auto put_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      if (c > 0) line += "  ";
      line += pad(row[c], width[c], /*right=*/c >= left_aligned);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    o << line;
  };
  put_row(header);
  o << "\n";
  for (size_t i = 0; i < cells.size(); ++i) {
    put_row(cells[i]);
    if (int(i) == res.cheapest_meeting_target) o << "  <- cheapest meeting target";
    o << "\n";
  }
  o << "\ncolumns: tok/s = decode tokens/s (all sequences; in parentheses where it does not fit); ms/tok = step time / batch; compute, comm (all-reduce),\n"
       "imbal (busiest rank's experts beyond the mean) as shares of the step; prefill = prompt tokens/s of one\n"
       "sequence; GB/node = weights + KV cache + buffers on the fullest node; backend = what the hardware profile models\n"
       "(cpu: moep's CPU kernels; vulkan: the GPU through moep's Vulkan backend; metal: the GPU through a Metal backend).\n";
  {
    std::set<Backend> lacking;
    for (const PlanRow& r : res.rows)
      if (!backend_in_this_build(r.hardware->backend)) lacking.insert(r.hardware->backend);
    for (Backend bk : lacking) o << "* " << backend_caveat(bk) << "\n";
  }
  if (req.target_tps > 0) {
    if (res.cheapest_meeting_target >= 0) {
      const PlanRow& r = res.rows[size_t(res.cheapest_meeting_target)];
      o << "target " << req.target_tps << " tok/s: cheapest is " << r.nodes << " x " << r.hardware->name
        << (r.network ? " over " + r.network->name : std::string()) << " at " << money(r.p.price_usd) << " ("
        << fmt("%.2f", r.p.decode_tokens_per_s) << " tok/s)\n";
    } else {
      o << "target " << req.target_tps << " tok/s: no configuration asked for reaches it";
      if (res.fastest >= 0) {
        const PlanRow& r = res.rows[size_t(res.fastest)];
        o << " (fastest: " << r.nodes << " x " << r.hardware->name << (r.network ? " over " + r.network->name : std::string())
          << ", " << fmt("%.2f", r.p.decode_tokens_per_s) << " tok/s)";
      }
      o << "\n";
    }
  }
  if (res.best_value >= 0) {
    const PlanRow& r = res.rows[size_t(res.best_value)];
    o << "most tokens/s per $1,000: " << r.nodes << " x " << r.hardware->name
      << (r.network ? " over " + r.network->name : std::string()) << " (" << fmt("%.3f", r.tps_per_kusd()) << ")\n";
  }
  bool exact = true;
  int64_t samples = 0;
  for (const auto& r : res.rows) exact = exact && r.p.experts_exact, samples = std::max(samples, r.p.expert_samples);
  o << "busiest-rank expert time: " << (exact ? "exact enumeration of all routings" : "Monte Carlo, up to " + std::to_string(samples) + " routings per layer, seed " + std::to_string(b.seed)) << "\n";
  return o.str();
}

json plan_to_json(const PlanRequest& req, const PlanResult& res) {
  const Scenario& b = req.base;
  json j;
  j["model"] = {{"name", req.model->name},
                {"summary", req.model->summary()},
                {"approximations", req.model->approximations},
                {"parameters", req.model->total_elems()},
                {"non_expert_parameters", req.model->replicated_elems()}};
  j["scenario"] = {{"dtype", b.dtype},         {"kv_dtype", b.kv_dtype},   {"batch", b.batch},
                   {"context", b.context},     {"prompt", b.prompt},       {"prefill_chunk", b.prefill_chunk},
                   {"placement", b.placement}, {"routing", b.routing ? b.routing->source : "uniform"},
                   {"identical_rows", b.identical_rows},
                   {"attention", b.split_attention ? "split" : "replicated"}, {"head", b.split_head ? "split" : "replicated"},
                   {"emulate_latency_us", b.emulate_latency_us}, {"seed", b.seed}, {"target_tps", req.target_tps}};
  json rows = json::array();
  auto times = [](const StepTimes& t) {
    return json{{"attention_ms", t.attention * 1e3},       {"router_ms", t.router * 1e3},
                {"dense_ms", t.dense * 1e3},               {"experts_mean_ms", t.experts_mean * 1e3},
                {"experts_max_ms", t.experts_max * 1e3},   {"allreduce_ms", t.allreduce * 1e3},
                {"head_ms", t.head * 1e3},                 {"sync_ms", t.sync * 1e3},
                {"dispatch_ms", t.dispatch * 1e3},
                {"attention_allreduce_ms", t.attention_allreduce * 1e3}, {"head_gather_ms", t.head_gather * 1e3},
                {"compute_ms", t.compute() * 1e3},
                {"communication_ms", t.communication() * 1e3}, {"imbalance_ms", t.imbalance() * 1e3},
                {"total_ms", t.total() * 1e3}};
  };
  for (size_t i = 0; i < res.rows.size(); ++i) {
    const PlanRow& r = res.rows[i];
    rows.push_back({{"hardware", r.hardware->name},
                    {"backend", backend_name(r.hardware->backend)},
                    {"backend_in_this_build", backend_in_this_build(r.hardware->backend)},
                    {"network", r.network ? r.network->name : ""},
                    {"nodes", r.nodes},
                    {"fits", r.p.memory.fits()},
                    {"memory_per_node_gb", r.p.memory.total() * 1e-9},
                    {"memory",
                     {{"replicated_gb", r.p.memory.replicated * 1e-9},
                      {"experts_gb", r.p.memory.experts * 1e-9},
                      {"kv_cache_gb", r.p.memory.kv_cache * 1e-9},
                      {"activations_gb", r.p.memory.activations * 1e-9},
                      {"usable_gb", r.p.memory.capacity * 1e-9}}},
                    {"decode_tokens_per_s", r.p.decode_tokens_per_s},
                    {"prefill_tokens_per_s", r.p.prefill_tokens_per_s},
                    {"decode_step", times(r.p.decode)},
                    {"prefill", times(r.p.prefill)},
                    {"weight_bytes_per_step", r.p.weight_bytes_per_step},
                    {"allreduce_bytes", r.p.allreduce_bytes},
                    {"allreduce_algorithm", algorithm_name(r.p.algorithm)},
                    {"experts_exact", r.p.experts_exact},
                    {"expert_samples", r.p.expert_samples},
                    {"price_usd", r.p.price_usd},
                    {"power_w", r.p.power_w},
                    {"tokens_per_s_per_kusd", r.tps_per_kusd()},
                    {"cheapest_meeting_target", int(i) == res.cheapest_meeting_target}});
  }
  j["rows"] = rows;
  // The side-by-side of format_dense_split: attention and head replicated against split, per multi-node row.
  json splits = json::array();
  for (size_t i = 0; i < res.rows.size(); ++i) {
    const PlanRow& r = res.rows[i];
    if (r.nodes < 2) continue;
    const DenseSplitRow x = dense_split_row(*req.model, req.base, r);
    splits.push_back({{"row", int(i)},
                      {"weight_bytes_per_step_replicated", x.bytes_replicated},
                      {"weight_bytes_per_step_split", x.bytes_split},
                      {"held_bytes_replicated", x.held_replicated},
                      {"held_bytes_split", x.held_split},
                      {"exchanges_per_step_replicated", x.exchanges_replicated},
                      {"exchanges_per_step_split", x.exchanges_split},
                      {"decode_tokens_per_s_replicated", x.tps_replicated},
                      {"decode_tokens_per_s_split", x.tps_split},
                      {"faster", x.tps_split > x.tps_replicated ? "split" : "replicated"}});
  }
  j["attention_and_head"] = splits;
  j["cheapest_meeting_target"] = res.cheapest_meeting_target;
  j["fastest"] = res.fastest;
  j["best_value"] = res.best_value;
  return j;
}

Chart chart_nodes(const PlanRequest& req, const PlanResult& res) {
  Chart c;
  const HardwareProfile* hw = req.hardware.front();
  c.title = "Decode tokens/s by node count: " + req.model->name + " on " + hw->name;
  c.subtitle = req.base.dtype + ", batch " + std::to_string(req.base.batch) + ", context " +
               std::to_string(req.base.context) + ", " + routing_label(req.base) + " (points only where it fits)";
  c.x_label = "nodes";
  c.y_label = "decode tokens/s";
  const PlanRow* single = nullptr;
  for (const auto& r : res.rows)
    if (r.hardware == hw && r.nodes == 1) single = &r;
  for (const NetworkProfile* net : req.networks) {
    ChartSeries s;
    s.name = net->name;
    if (single && single->p.memory.fits()) s.points.emplace_back(1, single->p.decode_tokens_per_s);
    for (const auto& r : res.rows)
      if (r.hardware == hw && r.network == net)
        s.points.emplace_back(r.nodes, r.p.memory.fits() ? r.p.decode_tokens_per_s : std::nan(""));
    std::sort(s.points.begin(), s.points.end());
    c.series.push_back(s);
  }
  return c;
}

// One series per node count: decode tokens/s as a link property x sweeps [lo, hi] in steps of 10^0.1 (log
// scale); `link(x)` gives the network at x.
template <class Link>
void add_link_sweep(Chart& c, const PlanRequest& req, Predictor& pred, double lo, double hi, Link&& link) {
  for (int n : sweep_nodes(req)) {
    ChartSeries s;
    s.name = std::to_string(n) + " nodes";
    s.dots = false;
    for (double x = lo; x <= hi * 1.0001; x *= std::pow(10.0, 0.1)) {
      Scenario sc = req.base;
      sc.nodes = n;
      sc.prompt = 0;
      const Prediction p = pred.predict(link(x), sc);
      s.points.emplace_back(x, p.memory.fits() ? p.decode_tokens_per_s : std::nan(""));
    }
    c.series.push_back(s);
  }
}

Chart chart_latency(const PlanRequest& req) {
  const HardwareProfile* hw = req.hardware.front();
  const NetworkProfile* net = req.networks.front();
  Predictor pred(*req.model, *hw);
  Chart c;
  c.title = "Decode tokens/s against link latency: " + req.model->name + " on " + hw->name;
  c.subtitle = "beta " + fmt("%.3g", net->beta_gbs.value) + " GB/s (" + net->name + "), batch " +
               std::to_string(req.base.batch) + "; dashed: alpha = m/beta, named networks";
  c.x_label = "per-message latency alpha (microseconds, log scale)";
  c.y_label = "decode tokens/s";
  c.log_x = true;
  add_link_sweep(c, req, pred, 0.5, 5000, [&](double a) { return with_alpha_beta(*net, a, net->beta_gbs.value); });
  const double m = double(req.base.batch) * double(req.model->d_model) * 4.0;
  c.markers.push_back({m / (net->beta_gbs.value * 1e9) * 1e6, "alpha = m/beta (" + fmt("%.3g", m / (net->beta_gbs.value * 1e3)) + " us)"});
  for (const NetworkProfile* n : req.networks) c.markers.push_back({n->alpha_us.value, n->name});
  return c;
}

Chart chart_bandwidth(const PlanRequest& req) {
  const HardwareProfile* hw = req.hardware.front();
  const NetworkProfile* net = req.networks.front();
  Predictor pred(*req.model, *hw);
  Chart c;
  c.title = "Decode tokens/s against link bandwidth: " + req.model->name + " on " + hw->name;
  c.subtitle = "alpha " + fmt("%.3g", net->alpha_us.value) + " us (" + net->name + "), batch " +
               std::to_string(req.base.batch) + "; dashed: beta = m/alpha";
  c.x_label = "link bandwidth beta (GB/s, log scale)";
  c.y_label = "decode tokens/s";
  c.log_x = true;
  add_link_sweep(c, req, pred, 0.01, 1000, [&](double bw) { return with_alpha_beta(*net, net->alpha_us.value, bw); });
  const double m = double(req.base.batch) * double(req.model->d_model) * 4.0;
  if (net->alpha_us.value > 0)
    c.markers.push_back({m / (net->alpha_us.value * 1e-6) * 1e-9, "beta = m/alpha"});
  return c;
}

}  // namespace moep::perf
