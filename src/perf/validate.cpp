#include "perf/validate.h"

#include "moe/placement.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file_read.h"
#include "perf/perf_model.h"
#include "perf/routing.h"

namespace moep::perf {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json read_json(const std::string& path, const char* what) {
  if (!fs::exists(path)) fail("cannot read ", what, " ", path);
  const std::string text = read_regular_file(path, kMaxConfigJsonBytes, what);
  check_json_depth(text, kMaxJsonDepth, path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(path, ": malformed JSON (", e.what(), ")");
  }
}

std::string resolve(const fs::path& base, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  const fs::path q = base / p;
  return fs::exists(q) ? q.string() : p;  // a profile name is not a path
}

// Distinct experts run per MoE layer per decode step, all ranks, from what moep bench says it read: its
// weight bytes per token count, per rank and step, the attention, router, dense/shared MLP and head
// matrices, and each local expert that had work.
// Distinct experts per MoE layer per step, from the bytes all ranks read per token, less what every rank reads
// itself. A split placement's shared expert is read once over all ranks (a slice each), not once per rank.
double measured_experts(const ModelShape& shape, const std::string& dtype, const json& bench, int64_t batch, int ranks,
                        bool split, bool split_attention, bool split_head) {
  const double bytes_per_token = bench.value("weight_bytes_per_token", 0.0);
  if (bytes_per_token <= 0 || shape.n_moe_layers() == 0) return 0;
  const double wb = weight_type(dtype).bytes_per_weight;
  // Split attention and head: the ranks' shares add up to one copy.
  double replicated = split_head ? 0.0 : double(shape.head_elems), shared = 0;
  double divided = split_head ? double(shape.head_elems) : 0.0;
  for (int64_t l = 0; l < shape.n_layers; ++l) {
    for (int64_t w : shape.attn_matrices) (split_attention ? divided : replicated) += double(w);
    if (shape.layer_is_moe[size_t(l)]) {
      replicated += double(shape.router_elems);
      shared += double(shape.shared_elems);
    } else {
      replicated += double(shape.dense_elems);
    }
  }
  const double once = split ? shared : double(ranks) * shared;
  return (bytes_per_token * double(batch) - (double(ranks) * replicated + once + divided) * wb) /
         (double(shape.expert_elems) * wb * double(shape.n_moe_layers()));
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string f(const char* fmt, double v) {
  char b[64];
  std::snprintf(b, sizeof b, fmt, v);
  return b;
}

}  // namespace

ValidationResult run_validation(const std::string& manifest_path, ProfileSet& profiles) {
  const json man = read_json(manifest_path, "validation manifest");
  const fs::path base = fs::path(manifest_path).parent_path();
  if (!man.is_object() || !man.contains("cases") || !man["cases"].is_array() || man["cases"].empty())
    fail(manifest_path, ": expected {\"cases\": [...]} with at least one case");
  ValidationResult res;
  res.machine = man.value("machine", "");
  for (const json& c : man["cases"]) {
    ValidationRow row;
    try {
      row.label = c.value("label", "");
      row.model = resolve(base, c.at("model").get<std::string>());
      const std::string bench_path = resolve(base, c.at("bench").get<std::string>());
      const json bench = read_json(bench_path, "bench result");
      row.measured_decode = bench.at("decode_tokens_per_s").get<double>();
      const double p50 = bench.value("decode_step_ms_p50", 0.0);
      row.measured_prefill = bench.value("prefill_tokens_per_s", 0.0);
      row.batch = bench.value("batch", int64_t(1));
      row.ranks = bench.value("ranks", 1);
      row.threads = bench.value("threads", 1);
      row.measured_decode_median = p50 > 0 ? double(row.batch) * 1e3 / p50 : row.measured_decode;
      row.prompt = c.value("prompt", bench.value("prompt", int64_t(32)));
      row.gen = c.value("gen", bench.value("gen", int64_t(32)));
      row.emulate_latency_us = c.value("emulate_latency_us", bench.value("emulate_latency_us", 0.0));
      // "hardware" (and "network") name one profile, or a list of calibrations of the same setup made at
      // different times of the run (before and after its benches, on a host whose state drifts): the
      // prediction is then the mean of their step times.
      auto names = [&](const char* key) {
        std::vector<std::string> v;
        if (!c.contains(key)) return v;
        const json& x = c.at(key);
        if (x.is_array())
          for (const auto& e : x) v.push_back(e.get<std::string>());
        else
          v.push_back(x.get<std::string>());
        return v;
      };
      const std::vector<std::string> hw_names = names("hardware"), net_names = names("network");
      if (hw_names.empty()) fail(manifest_path, ": case '", c.value("label", "?"), "' names no hardware profile");
      if (net_names.size() > 1 && net_names.size() != hw_names.size())
        fail(manifest_path, ": case '", c.value("label", "?"), "' lists ", net_names.size(), " networks for ",
             hw_names.size(), " hardware profiles (expected one, or one per hardware profile)");
      NetworkProfile none;
      none.name = "none";
      none.alpha_us.value = 0;
      none.beta_gbs.value = 1e9;
      const ModelShape shape = resolve_model(row.model);
      Scenario s;
      s.nodes = row.ranks;
      s.batch = row.batch;
      // moep bench decodes `warmup` untimed steps, then `gen` timed ones; timed step i (0-based) attends over
      // prompt + warmup + i + 1 positions: the mean over the run. Its prefill runs each prompt as one step of
      // up to max(batch, min(prompt, 512)) rows.
      const int64_t warmup = c.value("warmup", bench.value("warmup", int64_t(2)));
      s.context = row.prompt + warmup + (row.gen + 1) / 2;
      s.prompt = row.prompt;
      s.prefill_chunk = c.value("prefill_chunk", std::max(row.batch, std::min<int64_t>(row.prompt, 512)));
      s.dtype = c.value("dtype", shape.stored_dtype);
      s.emulate_latency_us = row.emulate_latency_us;
      s.placement = c.value("placement", std::string(kDefaultPlacement));
      // The run's --attention and --head as it reported them (the choice auto made, where it was auto).
      s.split_attention = row.ranks > 1 && bench.value("attention", std::string("replicated")) == "split";
      s.split_head = row.ranks > 1 && bench.value("head", std::string("replicated")) == "split";
      row.split_attention = s.split_attention;
      row.split_head = s.split_head;
      const bool split =
          ExpertPlacement::from_spec(s.placement, shape.n_layers, std::max<int64_t>(1, shape.n_experts), row.ranks).is_split();
      // Routing: a record of the run (file), "uniform", "identical" (rows of a step route alike), or "auto":
      // identical when the run read only top_k experts per layer per step at batch > 1 (greedy decoding of a
      // random-weight model feeds every sequence the same token), else uniform.
      RoutingRecord routing;
      row.routing = c.value("routing", std::string("auto"));
      if (row.routing == "identical") {
        s.identical_rows = true;
      } else if (row.routing == "auto") {
        row.measured_experts = measured_experts(shape, s.dtype, bench, row.batch, row.ranks, split, s.split_attention, s.split_head);
        s.identical_rows = row.batch > 1 && row.measured_experts > 0 && row.measured_experts <= 1.02 * double(shape.top_k);
        row.routing = s.identical_rows ? "identical (auto)" : "uniform (auto)";
      } else if (row.routing != "uniform") {
        routing = load_routing_record(resolve(base, row.routing));
        s.routing = &routing;
        row.routing = "recorded";
      }
      // Ranks on one host share the checkpoint's pages: "replicated_hardware" (the host's 1-rank profile)
      // times the weights every rank holds (see Predictor::set_replicated_hardware).
      const std::string rep_name = c.value("replicated_hardware", "");
      const HardwareProfile* rep = rep_name.empty() ? nullptr : &profiles.hardware(resolve(base, rep_name));
      row.shared_host = rep != nullptr;
      double decode_s = 0, prefill_s = 0, comm_s = 0, experts = 0;
      for (size_t i = 0; i < hw_names.size(); ++i) {
        const HardwareProfile& hw = profiles.hardware(resolve(base, hw_names[i]));
        const std::string net_name = net_names.empty() ? "" : net_names[net_names.size() == 1 ? 0 : i];
        const NetworkProfile& net = net_name.empty() ? none : profiles.network(resolve(base, net_name));
        Predictor predictor(shape, hw);
        predictor.set_replicated_hardware(rep);
        const Prediction p = predictor.predict(net, s);
        decode_s += p.decode.total() / double(hw_names.size());
        prefill_s += p.prefill.total() / double(hw_names.size());
        comm_s += p.decode.communication() / double(hw_names.size());
        experts += p.experts_per_layer / double(hw_names.size());
      }
      row.profiles = int(hw_names.size());
      row.predicted_decode = double(s.batch) / decode_s;
      row.predicted_prefill = prefill_s > 0 ? double(s.prompt) / prefill_s : 0.0;
      row.predicted_comm_share = comm_s / decode_s;
      row.predicted_experts = experts;
      row.measured_experts = measured_experts(shape, s.dtype, bench, row.batch, row.ranks, split, s.split_attention, s.split_head);
    } catch (const json::exception& e) {
      fail(manifest_path, ": case '", c.value("label", "?"), "' is malformed (", e.what(), ")");
    }
    row.decode_error = row.predicted_decode / row.measured_decode - 1.0;
    row.decode_median_error = row.predicted_decode / row.measured_decode_median - 1.0;
    if (row.measured_prefill > 0) row.prefill_error = row.predicted_prefill / row.measured_prefill - 1.0;
    res.rows.push_back(row);
  }
  std::vector<double> d, dm, pf;
  for (const auto& r : res.rows) {
    d.push_back(std::fabs(r.decode_median_error));
    dm.push_back(std::fabs(r.decode_error));
    if (r.measured_prefill > 0) pf.push_back(std::fabs(r.prefill_error));
  }
  res.median_abs_error = median(d);
  res.worst_abs_error = *std::max_element(d.begin(), d.end());
  res.mean_median_abs_error = median(dm);
  res.mean_worst_abs_error = *std::max_element(dm.begin(), dm.end());
  res.prefill_median_abs_error = median(pf);
  res.prefill_worst_abs_error = pf.empty() ? 0 : *std::max_element(pf.begin(), pf.end());
  // Replicated and split runs of the same configuration: the choice the model makes against the faster run.
  for (const auto& a : res.rows) {
    if (a.ranks < 2 || a.split_attention || a.split_head) continue;
    for (const auto& b : res.rows)
      if (b.split_head && b.model == a.model && b.ranks == a.ranks && b.threads == a.threads && b.batch == a.batch &&
          b.emulate_latency_us == a.emulate_latency_us && b.shared_host == a.shared_host) {
        res.split_choices.push_back({a.label, a.measured_decode_median, b.measured_decode_median, a.predicted_decode,
                                     b.predicted_decode});
        break;
      }
  }
  return res;
}

std::string format_validation(const ValidationResult& r) {
  std::ostringstream o;
  if (!r.machine.empty()) o << "Machine: " << r.machine << "\n\n";
  o << "| case | ranks × threads | batch | emulated latency (µs) | attention, head | decode predicted (tok/s) | measured, median step "
       "| error | measured, mean | error | predicted comm share | routing | experts/layer/step predicted | measured "
       "| prefill predicted | measured | error |\n";
  o << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& x : r.rows) {
    o << "| " << x.label << " | " << x.ranks << " × " << x.threads << (x.shared_host ? " (1 host)" : "") << " | " << x.batch << " | "
      << f("%.0f", x.emulate_latency_us) << " | " << (x.split_attention ? "split" : "rep") << ", "
      << (x.split_head ? "split" : "rep") << " | " << f("%.2f", x.predicted_decode) << " | "
      << f("%.2f", x.measured_decode_median) << " | " << f("%+.1f%%", 100 * x.decode_median_error) << " | "
      << f("%.2f", x.measured_decode) << " | " << f("%+.1f%%", 100 * x.decode_error) << " | "
      << f("%.0f%%", 100 * x.predicted_comm_share) << " | " << x.routing << " | " << f("%.2f", x.predicted_experts) << " | "
      << (x.measured_experts > 0 ? f("%.2f", x.measured_experts) : "-") << " | " << f("%.1f", x.predicted_prefill) << " | "
      << (x.measured_prefill > 0 ? f("%.1f", x.measured_prefill) : "-") << " | "
      << (x.measured_prefill > 0 ? f("%+.1f%%", 100 * x.prefill_error) : "-") << " |\n";
  }
  if (std::any_of(r.rows.begin(), r.rows.end(), [](const ValidationRow& x) { return x.shared_host; }))
    o << "\n(1 host): the ranks share one host's page cache, so the weights every rank holds are timed with the "
         "host's 1-rank profile (manifest field replicated_hardware).\n";
  int max_profiles = 1;
  for (const auto& x : r.rows) max_profiles = std::max(max_profiles, x.profiles);
  if (max_profiles > 1)
    o << "\nPredicted: the mean step time over the case's " << max_profiles
      << " calibrations (each made just before one pass of the benches); measured: the fastest of its runs.\n";
  o << "\nDecode, against the median-step rate: median absolute error " << f("%.1f%%", 100 * r.median_abs_error)
    << ", worst " << f("%.1f%%", 100 * r.worst_abs_error) << " over " << r.rows.size()
    << " runs (target: median <= 10%, worst <= 20%: " << (r.meets_target() ? "met" : "NOT met") << ").\n";
  o << "Decode, against the mean rate: median absolute error " << f("%.1f%%", 100 * r.mean_median_abs_error)
    << ", worst " << f("%.1f%%", 100 * r.mean_worst_abs_error) << ".\n";
  o << "Prefill (no target): median absolute error " << f("%.1f%%", 100 * r.prefill_median_abs_error) << ", worst "
    << f("%.1f%%", 100 * r.prefill_worst_abs_error) << ".\n";
  if (!r.split_choices.empty()) {
    o << "\nAttention and head, replicated against split (decode tok/s, median step; `auto` takes the predicted "
         "faster):\n\n| case | predicted rep | predicted split | measured rep | measured split | predicted faster | "
         "measured faster |\n|---|---|---|---|---|---|---|\n";
    for (const auto& c : r.split_choices)
      o << "| " << c.label << " | " << f("%.2f", c.predicted_replicated) << " | " << f("%.2f", c.predicted_split)
        << " | " << f("%.2f", c.measured_replicated) << " | " << f("%.2f", c.measured_split) << " | "
        << (c.predicted_split > c.predicted_replicated ? "split" : "replicated") << " | "
        << (c.measured_split > c.measured_replicated ? "split" : "replicated") << " |\n";
    o << "\nThe model's choice was the faster one in " << r.split_choices_right() << " of " << r.split_choices.size()
      << " configurations.\n";
  }
  return o.str();
}

}  // namespace moep::perf
