// Causal attention of one (row, query head) per workgroup over its sequence's cache, positions 0..pos, in blocks
// of WG positions with a running max (online softmax): each thread scores one position of the block, then each
// thread accumulates its dimensions of the block's weighted values.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#define WG 128
layout(local_size_x = WG) in;
layout(push_constant) uniform PC {
  Floats q;    // rows of the fused projection; q at the start of each row
  Floats dst;  // [T, q_dim]
  Ints pos;
  Ints slot;
  Floats kc;
  Floats vc;
  uint H, KVH, hd, ctx, ldq;
  float scale;
} pc;
shared float qs[256];
shared float sc[WG];
shared float red[WG];

void main() {
  const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
  const uint kvd = pc.KVH * pc.hd, kvh = h / (pc.H / pc.KVH);
  const uint n = uint(pc.pos.v[t]) + 1u, seq = uint(pc.slot.v[t]) * pc.ctx * kvd + kvh * pc.hd;
  for (uint j = tid; j < pc.hd; j += WG) qs[j] = pc.q.v[t * pc.ldq + h * pc.hd + j];
  barrier();
  float m = uintBitsToFloat(0xff800000u), l = 0.0;
  float acc0 = 0.0, acc1 = 0.0;  // dimensions tid and tid + WG (head_dim ≤ 2 WG)
  for (uint p0 = 0u; p0 < n; p0 += WG) {
    const uint p = p0 + tid;
    float s = uintBitsToFloat(0xff800000u);
    if (p < n) {
      s = 0.0;
      const uint ko = seq + p * kvd;
      for (uint j = 0u; j < pc.hd; ++j) s += qs[j] * pc.kc.v[ko + j];
      s *= pc.scale;
    }
    sc[tid] = s;
    float bm = subgroupMax(s);
    if (subgroupElect()) red[gl_SubgroupID] = bm;
    barrier();
    bm = red[0];
    for (uint i = 1u; i < gl_NumSubgroups; ++i) bm = max(bm, red[i]);
    const float mn = max(m, bm);
    const float corr = exp(m - mn);
    const uint nb = min(uint(WG), n - p0);
    float lb = 0.0, a0 = 0.0, a1 = 0.0;
    for (uint i = 0u; i < nb; ++i) {
      const float e = exp(sc[i] - mn);
      lb += e;
      const uint vo = seq + (p0 + i) * kvd;
      if (tid < pc.hd) a0 += e * pc.vc.v[vo + tid];
      if (tid + WG < pc.hd) a1 += e * pc.vc.v[vo + tid + WG];
    }
    l = l * corr + lb;
    acc0 = acc0 * corr + a0;
    acc1 = acc1 * corr + a1;
    m = mn;
    barrier();
  }
  const uint o = t * pc.H * pc.hd + h * pc.hd;
  if (tid < pc.hd) pc.dst.v[o + tid] = acc0 / l;
  if (tid + WG < pc.hd) pc.dst.v[o + tid + WG] = acc1 / l;
}
