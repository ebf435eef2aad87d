#include "perf/profiles.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/data_paths.h"
#include "core/error.h"
#include "core/file_read.h"

namespace moep::perf {

using nlohmann::json;

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

std::string profile_label(const json& j, const std::string& source) {
  std::string name = j.contains("name") && j["name"].is_string() ? j["name"].get<std::string>() : "?";
  return source + ": profile '" + name + "'";
}

Figure read_figure(const json& j, const char* key, bool required, const std::string& where) {
  Figure f;
  if (!j.contains(key) || j[key].is_null()) {
    if (required) fail(where, ": figure '", key, "' is missing");
    return f;
  }
  const json& v = j[key];
  if (!v.is_object()) fail(where, ": figure '", key, "' must be an object {\"value\": ..., \"source\": ...}");
  if (!v.contains("value") || !v["value"].is_number())
    fail(where, ": figure '", key, "' needs a numeric \"value\"");
  if (!v.contains("source") || !v["source"].is_string() || v["source"].get<std::string>().empty())
    fail(where, ": figure '", key, "' needs a \"source\" (a URL, or how it was measured, or why it is an estimate)");
  f.value = v["value"].get<double>();
  f.source = v["source"].get<std::string>();
  if (v.contains("note") && v["note"].is_string()) f.note = v["note"].get<std::string>();
  if (v.contains("estimate")) {
    if (!v["estimate"].is_boolean()) fail(where, ": figure '", key, "': \"estimate\" must be true or false");
    f.estimate = v["estimate"].get<bool>();
  }
  if (!std::isfinite(f.value) || f.value < 0) fail(where, ": figure '", key, "' must be a non-negative number");
  f.present = true;
  return f;
}

Figure default_figure(double value, const char* why) {
  Figure f;
  f.value = value;
  f.source = why;
  f.estimate = true;
  f.present = true;
  return f;
}

void put_figure(json& j, const char* key, const Figure& f) {
  if (!f.present) return;
  json v = {{"value", f.value}, {"source", f.source}};
  if (f.estimate) v["estimate"] = true;
  if (!f.note.empty()) v["note"] = f.note;
  j[key] = v;
}

MeasuredInfo read_info(const json& m) {
  MeasuredInfo i;
  i.present = true;
  i.date = m.value("date", "");
  i.host = m.value("host", "");
  i.cpu = m.value("cpu", "");
  i.commit = m.value("commit", "");
  i.ranks = m.value("ranks", 1);
  i.ranks_per_host = m.value("ranks_per_host", i.ranks);
  i.threads = m.value("threads", 1);
  return i;
}

json info_json(const MeasuredInfo& i) {
  return {{"by", "moep calibrate"}, {"date", i.date},   {"host", i.host},     {"cpu", i.cpu},
          {"commit", i.commit},     {"ranks", i.ranks}, {"ranks_per_host", i.ranks_per_host},
          {"threads", i.threads}};
}

std::vector<LinearPoint> read_points(const json& arr, const std::string& where) {
  std::vector<LinearPoint> pts;
  if (!arr.is_array()) fail(where, ": measured linear table must be a list");
  for (const auto& p : arr) {
    LinearPoint lp;
    lp.batch = p.at("batch").get<int64_t>();
    lp.overhead_us = p.at("overhead_us").get<double>();
    lp.ns_per_byte = p.at("ns_per_byte").get<double>();
    if (lp.batch < 1 || lp.ns_per_byte <= 0) fail(where, ": measured linear point with batch < 1 or ns_per_byte <= 0");
    if (p.contains("times")) {
      for (const auto& t : p["times"]) {
        if (!t.is_array() || t.size() != 2) fail(where, ": measured linear times must be [bytes, microseconds] pairs");
        const double b = t.at(0).get<double>(), us = t.at(1).get<double>();
        if (!(b > 0) || !(us > 0)) fail(where, ": measured linear time with bytes or microseconds <= 0");
        lp.times.emplace_back(b, us);
      }
      std::sort(lp.times.begin(), lp.times.end());
    }
    pts.push_back(lp);
  }
  std::sort(pts.begin(), pts.end(), [](const LinearPoint& a, const LinearPoint& b) { return a.batch < b.batch; });
  if (pts.empty()) fail(where, ": measured linear table is empty");
  return pts;
}

json points_json(const std::vector<LinearPoint>& pts) {
  json a = json::array();
  for (const auto& p : pts) {
    json o = {{"batch", p.batch}, {"overhead_us", p.overhead_us}, {"ns_per_byte", p.ns_per_byte}};
    if (!p.times.empty()) {
      json t = json::array();
      for (const auto& [b, us] : p.times) t.push_back({b, us});
      o["times"] = t;
    }
    a.push_back(o);
  }
  return a;
}

// Interpolates a table in rows (see linear_seconds).
double table_seconds(const std::vector<LinearPoint>& pts, double bytes, double rows) {
  if (rows <= 0) return 0.0;
  const LinearPoint& first = pts.front();
  const LinearPoint& last = pts.back();
  if (rows <= double(first.batch)) return first.seconds(bytes);
  if (rows >= double(last.batch)) {
    // Beyond the table the per-byte part grows with the rows (compute-bound); the fixed part stays.
    const double t = last.seconds(bytes), fixed = std::min(t, last.overhead_us * 1e-6);
    return fixed + (t - fixed) * rows / double(last.batch);
  }
  size_t i = 0;
  while (i + 1 < pts.size() && double(pts[i + 1].batch) < rows) ++i;
  const LinearPoint& a = pts[i];
  const LinearPoint& b = pts[i + 1];
  const double f = (rows - double(a.batch)) / double(b.batch - a.batch);
  return a.seconds(bytes) + f * (b.seconds(bytes) - a.seconds(bytes));
}

}  // namespace

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::Cpu: return "cpu";
    case Backend::Vulkan: return "vulkan";
    case Backend::Metal: return "metal";
  }
  return "?";
}

bool backend_is_gpu(Backend b) { return b != Backend::Cpu; }

bool backend_in_this_build(Backend b) {
  switch (b) {
    case Backend::Cpu: return true;
#ifdef MOEP_HAVE_VULKAN
    case Backend::Vulkan: return true;
#else
    case Backend::Vulkan: return false;
#endif
    case Backend::Metal: return false;  // no Metal backend exists yet
  }
  return false;
}

std::string backend_caveat(Backend b) {
  if (backend_in_this_build(b)) return "";
  if (b == Backend::Metal) return "metal: not implemented in moep; what a Metal backend would do";
  return std::string(backend_name(b)) + ": this build of moep has no " + (b == Backend::Vulkan ? "Vulkan" : "such") +
         " backend; what it would do with one";
}

const char* algorithm_name(AllreduceAlgorithm a) {
  switch (a) {
    case AllreduceAlgorithm::Auto: return "auto";
    case AllreduceAlgorithm::RecursiveDoubling: return "recursive-doubling";
    case AllreduceAlgorithm::Ring: return "ring";
  }
  return "?";
}

// ---- LinearPoint ---------------------------------------------------------------------------------------

double LinearPoint::seconds(double bytes) const {
  if (times.size() < 2) return overhead_us * 1e-6 + bytes * ns_per_byte * 1e-9;
  // A larger matrix never takes less time: a measured time above a larger size's was slowed by something else.
  const size_t n = times.size();
  auto t_at = [&](size_t i) {
    double t = times[i].second;
    for (size_t j = i + 1; j < n; ++j) t = std::min(t, times[j].second);
    return t;
  };
  auto line = [&](size_t i) {  // the segment from point i to i + 1: (t_i, slope in us per byte)
    const double t0 = t_at(i), t1 = t_at(i + 1);
    return std::make_pair(t0, (t1 - t0) / (times[i + 1].first - times[i].first));
  };
  double us;
  if (bytes <= times.front().first) {
    const auto [t0, s] = line(0);
    // Below the smallest size: along the first segment, never below proportional to the smallest time.
    us = std::max(t0 + (bytes - times.front().first) * s, t0 * bytes / times.front().first);
  } else if (bytes >= times.back().first) {
    auto [t0, s] = line(n - 2);
    const double tl = t_at(n - 1);
    if (s <= 0) s = tl / times.back().first;
    us = tl + (bytes - times.back().first) * s;
  } else {
    size_t i = 0;
    while (i + 2 < n && times[i + 1].first < bytes) ++i;
    const auto [t0, s] = line(i);
    us = t0 + (bytes - times[i].first) * s;
  }
  return us * 1e-6;
}

// ---- HardwareProfile ------------------------------------------------------------------------------------

double HardwareProfile::dispatch_seconds() const {
  return gpu() && dispatch_us.present ? dispatch_us.value * 1e-6 : 0.0;
}

double HardwareProfile::allreduce_host_seconds(double bytes) const {
  if (!gpu()) return 0.0;
  double t = allreduce_roundtrip_us.present ? allreduce_roundtrip_us.value * 1e-6 : 0.0;
  // Down before the all-reduce, up after it: the buffer crosses twice.
  if (host_copy_gbs.present && host_copy_gbs.value > 0) t += 2.0 * bytes / (host_copy_gbs.value * 1e9);
  return t;
}

double HardwareProfile::usable_bytes() const {
  const double frac = usable_memory_fraction.present ? usable_memory_fraction.value : 1.0;
  return memory_gb.value * 1e9 * frac;
}

double HardwareProfile::linear_seconds(const std::string& dtype, double bytes_per_weight, double elems, double rows,
                                       bool in_out) const {
  if (rows <= 0 || elems <= 0) return 0.0;
  const double bytes = elems * bytes_per_weight;
  if (measured) {
    const auto& table = in_out && measured->linear_in_out.count(dtype) ? measured->linear_in_out : measured->linear;
    auto it = table.find(dtype);
    if (it != table.end()) return table_seconds(it->second, bytes, rows);
  }
  const double eff = bandwidth_efficiency.present ? bandwidth_efficiency.value : 1.0;
  double bw = memory_bandwidth_gbs.value * 1e9 * eff;
  if (measured && measured->membw_gbs > 0) bw = measured->membw_gbs * 1e9;
  const double t_mem = bytes / bw;
  const Figure& peak = bytes_per_weight >= 4.0 ? peak_tflops_32 : peak_tflops_16;
  const double ceff = compute_efficiency.present ? compute_efficiency.value : 1.0;
  const double t_flop = peak.present && peak.value > 0 ? 2.0 * rows * elems / (peak.value * 1e12 * ceff) : 0.0;
  // A GPU profile has no op_overhead_us (the parser refuses it): its per-op cost is the kernel's dispatch.
  const double overhead = (op_overhead_us.present ? op_overhead_us.value * 1e-6 : 0.0) + dispatch_seconds();
  return overhead + std::max(t_mem, t_flop);
}

double HardwareProfile::expert_extra_seconds(const std::string& dtype, double bytes_per_weight) const {
  if (!measured || measured->expert_d_model <= 0 || measured->expert_ffn <= 0) return 0.0;
  const auto it = measured->expert_us.find(dtype);
  if (it == measured->expert_us.end() || !measured->linear.count(dtype)) return 0.0;
  // The calibration runs gate and up as [ffn, d] and down as [d, ffn], all through ops::linear.
  const double fd = double(measured->expert_d_model) * double(measured->expert_ffn);
  const double table = 3.0 * linear_seconds(dtype, bytes_per_weight, fd, 1.0, false);
  const double expert = it->second * 1e-6;
  // An expert measured at more than twice its matrices' time was disturbed (one such calibration on this
  // shared VM timed a 0.7 ms expert at 6.7 ms): that says nothing about the per-expert cost.
  if (expert > 2.0 * table) return 0.0;
  return std::max(0.0, expert - table);
}

double HardwareProfile::attention_seconds(double head_positions, double macs, double kv_bytes) const {
  if (macs <= 0) return 0.0;
  if (measured && measured->attention_ns_per_mac > 0) {
    const double bw = measured->membw_gbs > 0 ? measured->membw_gbs * 1e9 : memory_bandwidth_gbs.value * 1e9;
    const double compute = macs * measured->attention_ns_per_mac + head_positions * measured->attention_ns_per_head_pos;
    return std::max(compute * 1e-9, kv_bytes / bw);
  }
  const double eff = bandwidth_efficiency.present ? bandwidth_efficiency.value : 1.0;
  const double t_mem = kv_bytes / (memory_bandwidth_gbs.value * 1e9 * eff);
  const Figure& peak = peak_tflops_16.present ? peak_tflops_16 : peak_tflops_32;
  const double ceff = compute_efficiency.present ? compute_efficiency.value : 1.0;
  const double t_flop = peak.present && peak.value > 0 ? 2.0 * macs / (peak.value * 1e12 * ceff) : 0.0;
  return std::max(t_mem, t_flop);
}

double HardwareProfile::streaming_bandwidth_bps(const std::string& dtype) const {
  if (measured) {
    auto it = measured->linear.find(dtype);
    if (it != measured->linear.end()) {
      const LinearPoint& p = it->second.front();
      if (p.times.size() >= 2) return p.times.back().first / p.seconds(p.times.back().first);
      return 1e9 / p.ns_per_byte;
    }
    if (measured->membw_gbs > 0) return measured->membw_gbs * 1e9;
  }
  const double eff = bandwidth_efficiency.present ? bandwidth_efficiency.value : 1.0;
  return memory_bandwidth_gbs.value * 1e9 * eff;
}

// ---- AllreduceFit ---------------------------------------------------------------------------------------

double AllreduceFit::micros(double bytes) const {
  if (points.size() < 2) return a_us + bytes * b_ns_per_byte * 1e-3;
  if (bytes <= points.front().first) return points.front().second;
  if (bytes >= points.back().first) return points.back().second + (bytes - points.back().first) * b_ns_per_byte * 1e-3;
  size_t i = 0;
  while (i + 1 < points.size() && points[i + 1].first < bytes) ++i;
  const auto& [m0, t0] = points[i];
  const auto& [m1, t1] = points[i + 1];
  const double f = (std::log(bytes) - std::log(m0)) / (std::log(m1) - std::log(m0));
  return std::exp(std::log(t0) + f * (std::log(t1) - std::log(t0)));
}

// ---- parsing --------------------------------------------------------------------------------------------

HardwareProfile parse_hardware_profile(const json& j, const std::string& source) {
  const std::string where = profile_label(j, source);
  HardwareProfile h;
  h.file = source;
  h.name = j.at("name").get<std::string>();
  h.description = j.value("description", "");
  // Required: a profile that does not say which backend it models could be read as what moep does there today.
  if (!j.contains("backend"))
    fail(where, ": \"backend\" is missing: say which compute backend the profile models (cpu: moep's CPU kernels; "
                "vulkan: the GPU through moep's Vulkan backend; metal: the GPU through a Metal backend moep does not "
                "have yet)");
  if (!j["backend"].is_string()) fail(where, ": \"backend\" must be a string (cpu, vulkan or metal)");
  const std::string backend = j["backend"].get<std::string>();
  if (backend == "cpu") h.backend = Backend::Cpu;
  else if (backend == "vulkan") h.backend = Backend::Vulkan;
  else if (backend == "metal") h.backend = Backend::Metal;
  else fail(where, ": backend '", backend, "' is not known (cpu, vulkan, metal)");
  h.memory_bandwidth_gbs = read_figure(j, "memory_bandwidth_gbs", true, where);
  h.memory_gb = read_figure(j, "memory_gb", true, where);
  h.usable_memory_fraction = read_figure(j, "usable_memory_fraction", false, where);
  if (!h.usable_memory_fraction.present)
    h.usable_memory_fraction = default_figure(0.9, "default: 10% of memory left to the OS and other processes");
  h.bandwidth_efficiency = read_figure(j, "bandwidth_efficiency", false, where);
  h.peak_tflops_16 = read_figure(j, "peak_tflops_16", false, where);
  h.peak_tflops_32 = read_figure(j, "peak_tflops_32", false, where);
  h.compute_efficiency = read_figure(j, "compute_efficiency", false, where);
  h.op_overhead_us = read_figure(j, "op_overhead_us", false, where);
  h.price_usd = read_figure(j, "price_usd", false, where);
  h.power_w = read_figure(j, "power_w", false, where);
  h.dispatch_us = read_figure(j, "dispatch_us", false, where);
  h.allreduce_roundtrip_us = read_figure(j, "allreduce_roundtrip_us", false, where);
  h.host_copy_gbs = read_figure(j, "host_copy_gbs", false, where);
  if (h.gpu()) {
    // Without them a GPU profile would predict a GPU without its two costs a CPU does not have.
    if (!h.dispatch_us.present)
      fail(where, ": a GPU profile (backend ", backend, ") needs dispatch_us, the cost of one kernel dispatch");
    if (!h.allreduce_roundtrip_us.present)
      fail(where, ": a GPU profile (backend ", backend,
           ") needs allreduce_roundtrip_us, the host round trip of one all-reduce (device -> host -> MPI -> host -> device)");
    if (h.op_overhead_us.present)
      fail(where, ": a GPU profile gives its per-kernel cost as dispatch_us, not op_overhead_us (both would count it twice)");
    if (h.host_copy_gbs.present && h.host_copy_gbs.value <= 0) fail(where, ": host_copy_gbs must be positive");
  } else {
    for (const auto& [key, f] : {std::pair{"dispatch_us", &h.dispatch_us},
                                 std::pair{"allreduce_roundtrip_us", &h.allreduce_roundtrip_us},
                                 std::pair{"host_copy_gbs", &h.host_copy_gbs}})
      if (f->present)
        fail(where, ": ", key, " is a figure of GPU profiles; this one models the cpu backend (use op_overhead_us)");
  }
  if (h.memory_bandwidth_gbs.value <= 0) fail(where, ": memory_bandwidth_gbs must be positive");
  if (h.memory_gb.value <= 0) fail(where, ": memory_gb must be positive");
  if (h.usable_memory_fraction.value <= 0 || h.usable_memory_fraction.value > 1)
    fail(where, ": usable_memory_fraction must be in (0, 1]");
  for (const Figure* f : {&h.bandwidth_efficiency, &h.compute_efficiency})
    if (f->present && (f->value <= 0 || f->value > 1)) fail(where, ": efficiencies must be in (0, 1]");
  if (j.contains("measured")) {
    const json& m = j["measured"];
    HardwareMeasured hm;
    hm.info = read_info(m);
    hm.membw_gbs = m.value("membw_gbs", 0.0);
    hm.alone_speedup = m.value("alone_speedup", 1.0);
    if (!(hm.alone_speedup >= 1.0)) fail(where, ": measured alone_speedup must be 1 or more, got ", hm.alone_speedup);
    hm.attention_ns_per_mac = m.value("attention_ns_per_mac", 0.0);
    hm.attention_ns_per_head_pos = m.value("attention_ns_per_head_pos", 0.0);
    if (m.contains("linear"))
      for (auto& [dt, tab] : m["linear"].items()) {
        if (tab.contains("nt")) hm.linear[dt] = read_points(tab["nt"], where);
        if (tab.contains("in_out")) hm.linear_in_out[dt] = read_points(tab["in_out"], where);
      }
    if (m.contains("expert")) {
      const json& e = m["expert"];
      hm.expert_d_model = e.value("d_model", int64_t(0));
      hm.expert_ffn = e.value("ffn", int64_t(0));
      if (e.contains("batch1_us"))
        for (auto& [dt, v] : e["batch1_us"].items()) hm.expert_us[dt] = v.get<double>();
    }
    h.measured = hm;
  }
  return h;
}

NetworkProfile parse_network_profile(const json& j, const std::string& source) {
  const std::string where = profile_label(j, source);
  NetworkProfile n;
  n.file = source;
  n.name = j.at("name").get<std::string>();
  n.description = j.value("description", "");
  n.alpha_us = read_figure(j, "alpha_us", true, where);
  n.beta_gbs = read_figure(j, "beta_gbs", true, where);
  n.price_per_node_usd = read_figure(j, "price_per_node_usd", false, where);
  if (n.beta_gbs.value <= 0) fail(where, ": beta_gbs must be positive");
  const std::string alg = j.value("algorithm", "auto");
  if (alg == "auto") n.algorithm = AllreduceAlgorithm::Auto;
  else if (alg == "recursive-doubling") n.algorithm = AllreduceAlgorithm::RecursiveDoubling;
  else if (alg == "ring") n.algorithm = AllreduceAlgorithm::Ring;
  else fail(where, ": algorithm '", alg, "' is not known (auto, recursive-doubling, ring)");
  if (j.contains("measured")) {
    const json& m = j["measured"];
    n.measured = read_info(m);
    if (m.contains("allreduce"))
      for (auto& [key, f] : m["allreduce"].items()) {
        AllreduceFit fit;
        fit.nodes = std::atoi(key.c_str());
        if (fit.nodes < 2) fail(where, ": measured all-reduce for '", key, "' nodes (expected 2 or more)");
        fit.a_us = f.at("a_us").get<double>();
        fit.b_ns_per_byte = f.at("b_ns_per_byte").get<double>();
        fit.jitter_fraction = f.value("jitter_fraction", 0.0);
        if (fit.jitter_fraction < 0) fail(where, ": jitter_fraction must not be negative");
        if (f.contains("points"))
          for (const auto& p : f["points"]) fit.points.emplace_back(p.at(0).get<double>(), p.at(1).get<double>());
        std::sort(fit.points.begin(), fit.points.end());
        n.measured_fits[fit.nodes] = fit;
      }
  }
  return n;
}

json hardware_profile_to_json(const HardwareProfile& h) {
  json j = {{"kind", "hardware"}, {"name", h.name}, {"description", h.description}, {"backend", backend_name(h.backend)}};
  put_figure(j, "memory_bandwidth_gbs", h.memory_bandwidth_gbs);
  put_figure(j, "memory_gb", h.memory_gb);
  put_figure(j, "usable_memory_fraction", h.usable_memory_fraction);
  put_figure(j, "bandwidth_efficiency", h.bandwidth_efficiency);
  put_figure(j, "peak_tflops_16", h.peak_tflops_16);
  put_figure(j, "peak_tflops_32", h.peak_tflops_32);
  put_figure(j, "compute_efficiency", h.compute_efficiency);
  put_figure(j, "op_overhead_us", h.op_overhead_us);
  put_figure(j, "price_usd", h.price_usd);
  put_figure(j, "power_w", h.power_w);
  put_figure(j, "dispatch_us", h.dispatch_us);
  put_figure(j, "allreduce_roundtrip_us", h.allreduce_roundtrip_us);
  put_figure(j, "host_copy_gbs", h.host_copy_gbs);
  if (h.measured) {
    const HardwareMeasured& m = *h.measured;
    json mj = info_json(m.info);
    mj["membw_gbs"] = m.membw_gbs;
    if (m.info.ranks_per_host > 1) mj["alone_speedup"] = m.alone_speedup;
    mj["attention_ns_per_mac"] = m.attention_ns_per_mac;
    mj["attention_ns_per_head_pos"] = m.attention_ns_per_head_pos;
    json lin = json::object();
    for (const auto& [dt, pts] : m.linear) lin[dt]["nt"] = points_json(pts);
    for (const auto& [dt, pts] : m.linear_in_out) lin[dt]["in_out"] = points_json(pts);
    mj["linear"] = lin;
    json e = {{"d_model", m.expert_d_model}, {"ffn", m.expert_ffn}, {"batch1_us", json::object()}};
    for (const auto& [dt, us] : m.expert_us) e["batch1_us"][dt] = us;
    mj["expert"] = e;
    j["measured"] = mj;
  }
  return j;
}

json network_profile_to_json(const NetworkProfile& n) {
  json j = {{"kind", "network"}, {"name", n.name}, {"description", n.description}};
  put_figure(j, "alpha_us", n.alpha_us);
  put_figure(j, "beta_gbs", n.beta_gbs);
  put_figure(j, "price_per_node_usd", n.price_per_node_usd);
  j["algorithm"] = algorithm_name(n.algorithm);
  if (n.measured) {
    json mj = info_json(*n.measured);
    json ar = json::object();
    for (const auto& [nodes, f] : n.measured_fits) {
      json pts = json::array();
      for (const auto& [b, us] : f.points) pts.push_back({b, us});
      ar[std::to_string(nodes)] = {{"a_us", f.a_us}, {"b_ns_per_byte", f.b_ns_per_byte},
                                   {"jitter_fraction", f.jitter_fraction}, {"points", pts}};
    }
    mj["allreduce"] = ar;
    j["measured"] = mj;
  }
  return j;
}

// ---- ProfileSet -----------------------------------------------------------------------------------------

void ProfileSet::add(const HardwareProfile& h) {
  for (auto& x : hardware_)
    if (x.name == h.name) {
      x = h;  // a later file (e.g. the user's --profiles) overrides a built-in of the same name
      return;
    }
  hardware_.push_back(h);
}

void ProfileSet::add(const NetworkProfile& n) {
  for (auto& x : networks_)
    if (x.name == n.name) {
      x = n;
      return;
    }
  networks_.push_back(n);
}

void ProfileSet::load_file(const std::string& path) {
  if (!std::filesystem::exists(path)) fail("cannot read profile file ", path);
  const std::string text = read_regular_file(path, kMaxConfigJsonBytes, "a profile file");
  check_json_depth(text, kMaxJsonDepth, path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(path, ": malformed JSON (", e.what(), ")");
  }
  std::vector<json> items;
  if (j.is_object() && j.contains("profiles")) {
    if (!j["profiles"].is_array()) fail(path, ": \"profiles\" must be a list");
    for (const auto& p : j["profiles"]) items.push_back(p);
  } else {
    items.push_back(j);
  }
  for (const auto& p : items) {
    if (!p.is_object() || !p.contains("kind") || !p.contains("name") || !p["name"].is_string())
      fail(path, ": each profile needs \"kind\" (hardware or network) and \"name\"");
    const std::string kind = p["kind"].get<std::string>();
    try {
      if (kind == "hardware") add(parse_hardware_profile(p, path));
      else if (kind == "network") add(parse_network_profile(p, path));
      else fail(path, ": profile kind '", kind, "' is not known (hardware or network)");
    } catch (const json::exception& e) {
      fail(path, ": profile '", p["name"].get<std::string>(), "' is malformed (", e.what(), ")");
    }
  }
}

void ProfileSet::load_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) fail("profile directory ", dir, " does not exist");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) load_file(f);
}

namespace {
bool looks_like_file(const std::string& s) {
  namespace fs = std::filesystem;
  return s.find('/') != std::string::npos || (s.size() > 5 && s.substr(s.size() - 5) == ".json") ||
         fs::is_regular_file(s);
}
}  // namespace

const HardwareProfile& ProfileSet::hardware(const std::string& name) {
  for (const auto& h : hardware_)
    if (h.name == name) return h;
  if (looks_like_file(name)) {
    ProfileSet one;
    one.load_file(name);
    if (one.hardware_.empty()) fail(name, ": has no hardware profile");
    hardware_.push_back(one.hardware_.front());
    return hardware_.back();
  }
  fail("unknown hardware profile '", name, "' (known: ", join(hardware_names()),
       "; add your own with --profiles DIR or give a profile file)");
}

const NetworkProfile& ProfileSet::network(const std::string& name) {
  for (const auto& n : networks_)
    if (n.name == name) return n;
  if (looks_like_file(name)) {
    ProfileSet one;
    one.load_file(name);
    if (one.networks_.empty()) fail(name, ": has no network profile");
    networks_.push_back(one.networks_.front());
    return networks_.back();
  }
  fail("unknown network profile '", name, "' (known: ", join(network_names()),
       "; add your own with --profiles DIR or give a profile file)");
}

std::vector<std::string> ProfileSet::hardware_names() const {
  std::vector<std::string> v;
  for (const auto& h : hardware_) v.push_back(h.name);
  return v;
}

std::vector<std::string> ProfileSet::network_names() const {
  std::vector<std::string> v;
  for (const auto& n : networks_) v.push_back(n.name);
  return v;
}

std::string default_profile_dir() {
  if (const char* env = std::getenv("MOEP_PROFILES")) return env;
  const std::string found = find_data_path("data/profiles", "profiles");
  return found.empty() ? "data/profiles" : found;
}

}  // namespace moep::perf
