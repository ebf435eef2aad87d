// Groups this rank's (token, expert) pairs by expert, as MoeBlock does on the CPU: which rank computes each pair
// (split: this rank, on its slice; else the replica with the least work so far in the step, ties to the lower
// rank), a counting sort by expert (within an expert by token), and for each token its pairs' slots in increasing
// order (the order their outputs are added). One invocation: a step has at most a few thousand pairs.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 1) in;
layout(push_constant) uniform PC {
  Ints ids;       // [T, k]
  Floats w;       // [T, k]
  Ints replicas;  // [E, 4] ranks holding each expert of this layer (-1: none); unused when split
  Ints offsets;   // [E + 1] out
  Ints pair_row;  // [T k] out: the token row of each slot
  Floats pair_w;  // [T k] out
  Ints tok_slots; // [T, k] out: the token's slots, increasing, -1 after the last
  Ints stats;     // this layer's [experts with work, pairs], added to (host-visible; the host reads and clears them)
  uint T, k, E, rank, n_ranks, split;
} pc;
void main() {
  const uint P = pc.T * pc.k;
  int load[64];
  for (uint r = 0u; r < 64u; ++r) load[r] = 0;
  for (uint e = 0u; e <= pc.E; ++e) pc.offsets.v[e] = 0;
  // tok_slots first marks which pairs are this rank's (1) or not (0).
  for (uint p = 0u; p < P; ++p) {
    const uint e = uint(pc.ids.v[p]);
    bool mine = pc.split != 0u;
    if (!mine) {
      int best = pc.replicas.v[e * 4u];
      for (uint j = 1u; j < 4u; ++j) {
        const int r = pc.replicas.v[e * 4u + j];
        if (r >= 0 && load[r] < load[best]) best = r;
      }
      load[best]++;
      mine = uint(best) == pc.rank;
    }
    pc.tok_slots.v[p] = mine ? 1 : 0;
    if (mine) pc.offsets.v[e + 1u]++;
  }
  int touched = 0;
  for (uint e = 0u; e < pc.E; ++e) touched += pc.offsets.v[e + 1u] > 0 ? 1 : 0;
  for (uint e = 0u; e < pc.E; ++e) pc.offsets.v[e + 1u] += pc.offsets.v[e];
  pc.stats.v[0] += touched;
  pc.stats.v[1] += pc.offsets.v[pc.E];
  int next[256];
  for (uint e = 0u; e < pc.E; ++e) next[e] = pc.offsets.v[e];
  for (uint p = 0u; p < P; ++p) {
    if (pc.tok_slots.v[p] == 0) {
      pc.tok_slots.v[p] = -1;
      continue;
    }
    const uint e = uint(pc.ids.v[p]);
    const int s = next[e]++;
    pc.pair_row.v[s] = int(p / pc.k);
    pc.pair_w.v[s] = pc.w.v[p];
    pc.tok_slots.v[p] = s;
  }
  // Each token's slots in increasing order (= increasing expert), the -1s last.
  for (uint t = 0u; t < pc.T; ++t) {
    const uint o = t * pc.k;
    for (uint i = 1u; i < pc.k; ++i) {
      const int v = pc.tok_slots.v[o + i];
      uint j = i;
      while (j > 0u) {
        const int u = pc.tok_slots.v[o + j - 1u];
        if (!(v >= 0 && (u < 0 || u > v))) break;
        pc.tok_slots.v[o + j] = u;
        --j;
      }
      pc.tok_slots.v[o + j] = v;
    }
  }
}
