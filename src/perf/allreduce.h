// Cost of the one collective per MoE layer: an all-reduce (sum) of `bytes` over `nodes` ranks, from the
// per-message latency α and the link bandwidth β (Hockney's model, t = α + m/β per exchange step):
//   recursive doubling:  ⌈log2 N⌉ steps, each exchanging the whole message:   ⌈log2 N⌉ · (α + m/β)
//   ring (reduce-scatter + all-gather): 2(N−1) steps, each moving m/N:          2(N−1) · (α + m/(N·β))
//   auto: the cheaper of the two for this message size. MPI libraries switch algorithm by message size
//   (OpenMPI's tuned component and MPICH both use recursive doubling for small messages and a
//   bandwidth-optimal algorithm for large ones); taking the cheaper one is the idealization of that switch.
// The reduction arithmetic itself (one add per received value) is folded into β.
#pragma once

#include "perf/profiles.h"

namespace moep::perf {

int ceil_log2(int n);
int allreduce_steps(AllreduceAlgorithm a, int nodes);
// Seconds for the all-reduce with explicit α (seconds) and β (bytes/second). nodes == 1 costs nothing.
// `chosen` (may be null) receives the algorithm used (Auto resolved).
double allreduce_seconds(AllreduceAlgorithm a, int nodes, double bytes, double alpha_s, double beta_bps,
                         AllreduceAlgorithm* chosen = nullptr);
// From a network profile: its measured fit for this node count when it has one, else α/β by algorithm.
double allreduce_seconds(const NetworkProfile& net, int nodes, double bytes, AllreduceAlgorithm* chosen = nullptr);
// The measured skew-and-jitter cost of synchronizing `nodes` ranks, as a fraction of the work between
// all-reduces (0 without a measurement for this node count).
double jitter_fraction(const NetworkProfile& net, int nodes);
// What moep's --emulate-latency-us adds to each all-reduce: us · ⌈log2 N⌉ of busy-waiting (N > 1).
double emulated_latency_seconds(double us, int nodes);

}  // namespace moep::perf
