// Validation: predicted against measured tokens/s for runs of `moep bench`, each predicted with the profile
// calibrated for its rank count. Used by `moep plan --validate MANIFEST` (scripts/validate_perf_model.sh
// writes the manifest).
//
// Manifest:
//   {"machine": "what ran it", "cases": [
//     {"label": "...", "model": "MODEL_DIR", "hardware": "PROFILE_FILE_OR_NAME", "network": "PROFILE_FILE_OR_NAME",
//      "bench": "BENCH.json", "emulate_latency_us": 0, "prompt": 32, "gen": 32, "warmup": 2}, ...]}
// (prompt, gen, emulate_latency_us default to the bench JSON's; warmup to 2, moep bench's default; an empty
// "network" means a single rank; "routing": a routing record of the run (see routing.h), "uniform",
// "identical", or "auto" (the default: identical rows when the run read only top_k experts per layer per step
// at batch > 1, as greedy decoding of a random-weight model does; else uniform).)
// The bench JSON (`moep bench --json`) gives decode_tokens_per_s, decode_step_ms_p50, prefill_tokens_per_s,
// batch, ranks, threads. The accuracy target is judged on the median-step rate (batch / median step time):
// the model predicts the steady state, and on a machine shared with other work a few preempted steps inflate
// the mean; errors against the mean rate are reported too.
// Relative paths are taken from the manifest's directory.
#pragma once

#include <string>
#include <vector>

#include "perf/profiles.h"

namespace moep::perf {

struct ValidationRow {
  std::string label, model;
  int ranks = 1, threads = 1;
  int64_t batch = 1, prompt = 0, gen = 0;
  double emulate_latency_us = 0;
  double measured_decode = 0, predicted_decode = 0, decode_error = 0;    // error = predicted/measured − 1
  // batch / median step time: the steady-state rate without the heavy tail that other processes' preemption
  // adds to some steps on a shared machine (0 when the bench JSON has no decode_step_ms_p50).
  double measured_decode_median = 0, decode_median_error = 0;
  double measured_prefill = 0, predicted_prefill = 0, prefill_error = 0;
  double predicted_comm_share = 0;
  int profiles = 1;  // calibrations whose predicted step times were averaged  // share of the decode step spent in the all-reduce (predicted)
  // Distinct experts run per MoE layer per decode step (all ranks): predicted from the routing used, and what
  // the run read (from the bench's weight bytes per token). A large gap means the run's routing differed from
  // the one predicted (e.g. greedy decoding of a random-weight model, where all sequences pick the same token).
  double predicted_experts = 0, measured_experts = 0;
  std::string routing;  // the routing the prediction used
  bool shared_host = false;  // ranks on one host: replicated weights timed with the 1-rank profile
  bool split_attention = false, split_head = false;  // the run's --attention and --head (bench JSON)
};

// Where the manifest has the same run (model, ranks, batch, latency) with the attention and head replicated
// and with both split: which the model predicted faster and which measured faster (the choice `auto` makes
// from the model's prediction).
struct SplitChoice {
  std::string label;  // the replicated run's case
  double measured_replicated = 0, measured_split = 0, predicted_replicated = 0, predicted_split = 0;
  bool agrees() const {
    return (predicted_split > predicted_replicated) == (measured_split > measured_replicated);
  }
};

struct ValidationResult {
  std::string machine;
  std::vector<ValidationRow> rows;
  double median_abs_error = 0, worst_abs_error = 0;                  // decode, against the median-step rate
  double mean_median_abs_error = 0, mean_worst_abs_error = 0;        // decode, against the mean rate
  double prefill_median_abs_error = 0, prefill_worst_abs_error = 0;  // prefill (reported, no target)
  std::vector<SplitChoice> split_choices;
  int split_choices_right() const {
    int n = 0;
    for (const auto& c : split_choices) n += c.agrees();
    return n;
  }
  bool meets_target(double median_max = 0.10, double worst_max = 0.20) const {
    return median_abs_error <= median_max && worst_abs_error <= worst_max;
  }
};

// Throws moep::Error naming the manifest or bench file for a missing or malformed one.
ValidationResult run_validation(const std::string& manifest_path, ProfileSet& profiles);
// A Markdown table with the summary lines.
std::string format_validation(const ValidationResult& r);

}  // namespace moep::perf
