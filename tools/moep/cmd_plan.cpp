// moep plan --model CONFIG_OR_NAME [--hardware H] [--network NET] [--nodes 1..8] [--batch B] [--routing FILE] ...
// moep plan --validate MANIFEST [--out FILE]
// Predicts tokens/s, time split, memory per node and cost for each configuration (no weights needed).
#include <chrono>
#include <filesystem>
#include <deque>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "perf/planner.h"
#include "perf/validate.h"
#include "this_machine.h"

namespace moep::cli {

namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  std::string cur;
  for (char ch : s) {
    if (ch == ',') {
      if (!cur.empty()) v.push_back(cur);
      cur.clear();
    } else if (ch != ' ') {
      cur += ch;
    }
  }
  if (!cur.empty()) v.push_back(cur);
  return v;
}

int parse_count(const std::string& tok, const char* flag) {
  char* end = nullptr;
  const long v = std::strtol(tok.c_str(), &end, 10);
  if (tok.empty() || *end != '\0') fail(flag, ": '", tok, "' is not a whole number");
  if (v < 1) fail(flag, ": node counts must be 1 or more, got ", v);
  if (v > 4096) fail(flag, ": ", v, " nodes is more than the planner considers (4096)");
  return int(v);
}

// "1..8", "2,4,8", "4" or a mix ("1,2..4").
std::vector<int> parse_nodes(const std::string& s) {
  std::vector<int> out;
  for (const std::string& part : split_list(s)) {
    const size_t dots = part.find("..");
    if (dots == std::string::npos) {
      out.push_back(parse_count(part, "--nodes"));
      continue;
    }
    const int lo = parse_count(part.substr(0, dots), "--nodes"), hi = parse_count(part.substr(dots + 2), "--nodes");
    if (hi < lo) fail("--nodes: range '", part, "' runs backwards");
    for (int n = lo; n <= hi; ++n) out.push_back(n);
  }
  if (out.empty()) fail("--nodes: expected node counts such as 1..8 or 2,4");
  return out;
}

// Without --nodes: 1..8, or, when the model needs more nodes than 8 of every hardware asked for, the powers of
// two below the fewest that fit, that count, and the next power of two (e.g. 1, 2, 4, 8, 16, 25, 32).
std::vector<int> default_nodes(const perf::ModelShape& shape, const std::vector<const perf::HardwareProfile*>& hw,
                               const perf::Scenario& base) {
  const int max_nodes = 4096;
  int fewest = -1;
  try {
    for (const perf::HardwareProfile* h : hw) {
      const int n = perf::smallest_fitting_nodes(shape, *h, base, max_nodes);
      if (n > 0 && (fewest < 0 || n < fewest)) fewest = n;
    }
  } catch (const Error&) {
    fewest = -1;  // a scenario some node count cannot take (a placement file for fixed ranks): make_plan says why
  }
  std::vector<int> nodes;
  if (fewest <= 8) {  // fits on 8 or fewer, or on none (make_plan then says why)
    for (int n = 1; n <= 8; ++n) nodes.push_back(n);
    return nodes;
  }
  int p = 1;
  for (; p < fewest; p *= 2) nodes.push_back(p);
  nodes.push_back(fewest);
  if (p > fewest && p <= max_nodes) nodes.push_back(p);
  return nodes;
}

// Without --network: the links people build clusters of such machines with.
const std::vector<std::string> kCommonNetworks = {"1gbe-tcp", "10gbe-tcp", "25gbe-tcp", "100gbe-tcp"};

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

void register_plan(CLI::App& app) {
  struct Opts {
    std::string model, hardware, network, nodes, routing, dtype, kv_dtype = "f32", placement = kDefaultPlacement;
    std::string svg, validate, out;
    std::vector<std::string> profile_dirs;
    int64_t batch = 1, context = 1024, prompt = 512, prefill_chunk = 64, samples = 0;
    uint64_t seed = 1;
    double target_tps = 0, emulate_latency_us = 0;
    double bandwidth_efficiency = 0, alpha_us = -1, beta_gbs = 0;
    bool json = false, list = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "plan", "Predict tokens/s, time split, memory per node and cost for node counts, hardware and networks");
  cmd->add_option("--model", o->model,
                  "A model directory or config.json, or a built-in: " + join(perf::builtin_model_names()));
  cmd->add_option("--hardware", o->hardware,
                  "Hardware profile name(s) or file(s), comma-separated (default: this machine, from the calibration "
                  "`moep calibrate --save` stored, or a quick one made now)");
  cmd->add_option("--network", o->network,
                  "Network profile name(s) or file(s), comma-separated (default: " + join(kCommonNetworks) + ")");
  cmd->add_option("--nodes", o->nodes,
                  "Node counts: 1..8, 2,4,8 or 4 (default: 1..8, or up to the fewest nodes the model fits on)");
  cmd->add_option("--batch", o->batch, "Sequences decoded together (rows per decode step)")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--context", o->context, "Positions each sequence attends over while decoding (and KV capacity)")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--prompt", o->prompt, "Prompt tokens per sequence, for prefill (0: skip)")->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "Rows per forward step in prefill")->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--dtype", o->dtype, "Weight dtype: " + join(perf::weight_type_names()) +
                                           " (default: the checkpoint's, bf16 for built-ins)");
  cmd->add_option("--kv-dtype", o->kv_dtype, "KV cache dtype (moep keeps f32)");
  cmd->add_option("--placement", o->placement, "split (the engine's default), contiguous, round-robin or a placement JSON file");
  cmd->add_option("--routing", o->routing,
                  "uniform (default), identical (all rows of a step route alike), or a routing record (JSON, see "
                  "docs/PERFORMANCE_MODEL.md)");
  cmd->add_option("--emulate-latency-us", o->emulate_latency_us,
                  "Add moep's emulated latency (microseconds per exchange step, as --emulate-latency-us)")
      ->check(CLI::Range(0.0, 1e7));
  cmd->add_option("--bandwidth-efficiency", o->bandwidth_efficiency,
                  "What-if: replace the hardware profiles' bandwidth efficiency (0..1; roofline profiles only; 0: keep the profiles')")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--alpha-us", o->alpha_us, "What-if: replace the networks' per-message latency (microseconds; -1: keep the networks')")
      ->check(CLI::Range(0.0, 1e7));
  cmd->add_option("--beta-gbs", o->beta_gbs, "What-if: replace the networks' bandwidth (GB/s; 0: keep the networks')")->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--target-tps", o->target_tps, "Decode tokens/s wanted: report the cheapest configuration reaching it (0: no target)")
      ->check(CLI::Range(0.0, 1e12));
  cmd->add_option("--samples", o->samples, "Random routings per layer for the busiest rank (0: automatic)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--seed", o->seed, "Seed of the routing samples");
  cmd->add_flag("--json", o->json, "Print JSON instead of the table");
  cmd->add_option("--svg", o->svg, "Write plots PREFIX-nodes.svg, PREFIX-latency.svg, PREFIX-bandwidth.svg");
  cmd->add_option("--profiles", o->profile_dirs, "Another directory of profile files (repeatable)");
  cmd->add_flag("--list", o->list, "List the known profiles and built-in models");
  cmd->add_option("--validate", o->validate, "Compare predictions with measured runs listed in a manifest (JSON)");
  cmd->add_option("--out", o->out, "With --validate: also write the table (Markdown) to this file");
  cmd->footer("Example: moep plan --model dbrx (this machine, common networks). The columns are explained in "
              "docs/GLOSSARY.md.");
  cmd->callback([o] {
    const auto t0 = std::chrono::steady_clock::now();
    perf::ProfileSet profiles;
    // The built-in profiles live in the source tree (or $MOEP_PROFILES). A binary copied elsewhere can still
    // plan with profile files given by path; a name then fails as unknown, with this note to explain why.
    const std::string builtin = perf::default_profile_dir();
    if (std::filesystem::is_directory(builtin)) {
      profiles.load_dir(builtin);
    } else {
      std::fprintf(stderr, "moep: note: no built-in profiles at %s (set MOEP_PROFILES to a copy of data/profiles)\n",
                   builtin.c_str());
    }
    for (const auto& d : o->profile_dirs) profiles.load_dir(d);

    if (o->list) {
      // Each with the backend it models: the same machine is often there twice (a Mac's CPU and its GPU).
      std::vector<std::string> hw;
      for (const auto& n : profiles.hardware_names())
        hw.push_back(n + " (" + perf::backend_name(profiles.hardware(n).backend) + ")");
      std::printf("hardware: %s\nnetworks: %s\nmodels:   %s\n", join(hw).c_str(),
                  join(profiles.network_names()).c_str(), join(perf::builtin_model_names()).c_str());
      return;
    }
    if (!o->validate.empty()) {
      const perf::ValidationResult r = perf::run_validation(o->validate, profiles);
      const std::string text = perf::format_validation(r);
      std::fputs(text.c_str(), stdout);
      if (!o->out.empty()) {
        std::ofstream f(o->out);
        if (!f) fail("--out: cannot write ", o->out);
        f << text;
      }
      if (!r.meets_target()) throw Error("validation: the model missed its accuracy target (see the table above)");
      return;
    }
    if (o->model.empty()) fail("--model: required (a model directory, a config.json or a built-in name)");
    const perf::ModelShape shape = perf::resolve_model(o->model);
    perf::PlanRequest req;
    req.model = &shape;
    // What-if overrides work on copies (kept alive here) of the named profiles.
    std::deque<perf::HardwareProfile> hw_copies;
    std::deque<perf::NetworkProfile> net_copies;
    std::vector<const perf::HardwareProfile*> hardware;
    if (o->hardware.empty()) {
      hardware.push_back(&this_machine_profile(profiles));
    } else {
      for (const auto& h : split_list(o->hardware)) hardware.push_back(&profiles.hardware(h));
    }
    for (const perf::HardwareProfile* hp : hardware) {
      if (o->bandwidth_efficiency > 0) {
        hw_copies.push_back(*hp);
        hw_copies.back().bandwidth_efficiency = {o->bandwidth_efficiency, "--bandwidth-efficiency (what-if)", "", true, true};
        hp = &hw_copies.back();
      }
      req.hardware.push_back(hp);
    }
    perf::RoutingRecord routing;
    perf::Scenario& s = req.base;
    if (o->routing == "identical") {
      s.identical_rows = true;
    } else if (!o->routing.empty() && o->routing != "uniform") {
      routing = perf::load_routing_record(o->routing);
      s.routing = &routing;
    }
    s.batch = o->batch;
    s.context = o->context;
    s.prompt = o->prompt;
    s.prefill_chunk = o->prefill_chunk;
    s.dtype = o->dtype.empty() ? shape.stored_dtype : perf::weight_type(o->dtype).name;
    s.kv_dtype = o->kv_dtype;
    s.placement = o->placement;
    s.emulate_latency_us = o->emulate_latency_us;
    s.samples = o->samples;
    s.seed = o->seed;
    req.target_tps = o->target_tps;
    if (!o->nodes.empty()) {
      req.nodes = parse_nodes(o->nodes);
    } else {
      req.nodes = default_nodes(shape, req.hardware, s);
      if (req.nodes.back() > 8) {
        std::string counts;
        for (int n : req.nodes) counts += (counts.empty() ? "" : ", ") + std::to_string(n);
        std::fprintf(stderr, "moep: note: %s needs more than 8 nodes of %s; showing %s nodes (--nodes to choose)\n",
                     shape.name.c_str(), req.hardware.size() == 1 ? req.hardware[0]->name.c_str() : "each hardware",
                     counts.c_str());
      }
    }
    bool multi = false;
    for (int n : req.nodes) multi |= n > 1;
    perf::NetworkProfile none;
    none.name = "none";
    none.beta_gbs.value = 1;
    std::vector<std::string> networks = split_list(o->network);
    if (o->network.empty() && multi) networks = kCommonNetworks;
    if (networks.empty()) {
      req.networks.push_back(&none);
    } else {
      for (const auto& n : networks) {
        const perf::NetworkProfile* np = &profiles.network(n);
        if (o->alpha_us >= 0 || o->beta_gbs > 0) {
          net_copies.push_back(*np);
          perf::NetworkProfile& c = net_copies.back();
          c.measured_fits.clear();  // the what-if replaces the measurement
          if (o->alpha_us >= 0) c.alpha_us = {o->alpha_us, "--alpha-us (what-if)", "", true, true};
          if (o->beta_gbs > 0) c.beta_gbs = {o->beta_gbs, "--beta-gbs (what-if)", "", true, true};
          c.name += "*";
          np = &c;
        }
        req.networks.push_back(np);
      }
    }
    const perf::PlanResult res = perf::make_plan(req);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o->json) {
      nlohmann::json j = perf::plan_to_json(req, res);
      j["planner_seconds"] = secs;
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::fputs(perf::format_plan(req, res).c_str(), stdout);
      std::fputs(perf::format_dense_split(req, res).c_str(), stdout);
      std::printf("planned in %.3f s\n", secs);
    }
    if (!o->svg.empty()) {
      perf::write_svg(perf::chart_nodes(req, res), o->svg + "-nodes.svg");
      perf::write_svg(perf::chart_latency(req), o->svg + "-latency.svg");
      perf::write_svg(perf::chart_bandwidth(req), o->svg + "-bandwidth.svg");
      if (!o->json) std::printf("wrote %s-nodes.svg, %s-latency.svg, %s-bandwidth.svg\n", o->svg.c_str(), o->svg.c_str(), o->svg.c_str());
    }
  });
}

}  // namespace moep::cli
