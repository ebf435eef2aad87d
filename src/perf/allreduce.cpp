#include "perf/allreduce.h"

#include <algorithm>

#include "core/error.h"

namespace moep::perf {

int ceil_log2(int n) {
  int s = 0;
  while ((1 << s) < n) ++s;
  return s;
}

int allreduce_steps(AllreduceAlgorithm a, int nodes) {
  if (nodes < 1) fail("all-reduce over ", nodes, " nodes: expected at least 1");
  if (nodes == 1) return 0;
  switch (a) {
    case AllreduceAlgorithm::RecursiveDoubling: return ceil_log2(nodes);
    case AllreduceAlgorithm::Ring: return 2 * (nodes - 1);
    case AllreduceAlgorithm::Auto: break;
  }
  fail("allreduce_steps: the step count of 'auto' depends on the message size");
}

double allreduce_seconds(AllreduceAlgorithm a, int nodes, double bytes, double alpha_s, double beta_bps,
                         AllreduceAlgorithm* chosen) {
  if (nodes < 1) fail("all-reduce over ", nodes, " nodes: expected at least 1");
  if (beta_bps <= 0) fail("all-reduce: bandwidth must be positive");
  if (nodes == 1) {
    if (chosen) *chosen = a == AllreduceAlgorithm::Auto ? AllreduceAlgorithm::RecursiveDoubling : a;
    return 0.0;
  }
  const double rd = ceil_log2(nodes) * (alpha_s + bytes / beta_bps);
  const double ring = 2.0 * (nodes - 1) * (alpha_s + bytes / (double(nodes) * beta_bps));
  AllreduceAlgorithm pick = a;
  if (a == AllreduceAlgorithm::Auto) pick = rd <= ring ? AllreduceAlgorithm::RecursiveDoubling : AllreduceAlgorithm::Ring;
  if (chosen) *chosen = pick;
  return pick == AllreduceAlgorithm::RecursiveDoubling ? rd : ring;
}

double allreduce_seconds(const NetworkProfile& net, int nodes, double bytes, AllreduceAlgorithm* chosen) {
  if (nodes > 1) {
    auto it = net.measured_fits.find(nodes);
    if (it != net.measured_fits.end()) {
      if (chosen) *chosen = AllreduceAlgorithm::Auto;  // whatever the MPI library chose when it was measured
      return it->second.micros(bytes) * 1e-6;
    }
  }
  return allreduce_seconds(net.algorithm, nodes, bytes, net.alpha_us.value * 1e-6, net.beta_gbs.value * 1e9, chosen);
}

double jitter_fraction(const NetworkProfile& net, int nodes) {
  if (nodes <= 1) return 0.0;
  auto it = net.measured_fits.find(nodes);
  return it == net.measured_fits.end() ? 0.0 : it->second.jitter_fraction;
}

double emulated_latency_seconds(double us, int nodes) {
  if (nodes <= 1 || us <= 0) return 0.0;
  return us * 1e-6 * ceil_log2(nodes);
}

}  // namespace moep::perf
