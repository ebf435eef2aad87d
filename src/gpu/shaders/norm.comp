// RMSNorm or LayerNorm of rows of n values, one workgroup a row, sums in f32 over the workgroup:
// y[row] = norm(x[xrow(row)]) · w (+ b). Also the per-head and whole q/k norms (rows of head_dim or q_dim).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#define WG 256
layout(local_size_x = WG) in;
layout(push_constant) uniform PC {
  Floats x;
  Floats y;
  Floats w;
  Floats b;
  Ints rows;  // F_ROWS: row i reads x row rows.v[i]
  uint n, ldx, ldy, flags;
  float eps;
} pc;
const uint N_LAYER = 1u, N_W = 2u, N_B = 4u, N_ROWS = 8u;
shared float red[WG / 4];

float wg_sum(float v) {
  v = subgroupAdd(v);
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  float s = 0.0;
  for (uint i = 0u; i < gl_NumSubgroups; ++i) s += red[i];
  barrier();
  return s;
}

void main() {
  const uint i = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
  const uint xo = ((pc.flags & N_ROWS) != 0u ? uint(pc.rows.v[i]) : i) * pc.ldx, yo = i * pc.ldy;
  float inv, mean = 0.0;
  if ((pc.flags & N_LAYER) != 0u) {
    float s = 0.0;
    for (uint j = tid; j < pc.n; j += WG) s += pc.x.v[xo + j];
    mean = wg_sum(s) / float(pc.n);
    float v = 0.0;
    for (uint j = tid; j < pc.n; j += WG) {
      const float d = pc.x.v[xo + j] - mean;
      v += d * d;
    }
    inv = inversesqrt(wg_sum(v) / float(pc.n) + pc.eps);
  } else {
    float s = 0.0;
    for (uint j = tid; j < pc.n; j += WG) s += pc.x.v[xo + j] * pc.x.v[xo + j];
    inv = inversesqrt(wg_sum(s) / float(pc.n) + pc.eps);
  }
  for (uint j = tid; j < pc.n; j += WG) {
    float v = (pc.x.v[xo + j] - mean) * inv;
    if ((pc.flags & N_W) != 0u) v *= pc.w.v[j];
    if ((pc.flags & N_B) != 0u) v += pc.b.v[j];
    pc.y.v[yo + j] = v;
  }
}
