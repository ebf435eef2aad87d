// Y[s, n] (+)= X[row(s), :] · W[n, :] for a few rows s (decode): streams the weights once, each workgroup NR output
// features, every thread 16-byte loads; per-row partial sums are reduced over the subgroup, then the workgroup.
// TR rows are accumulated at once (compile-time: 1 for one token, 8 for small batches); more rows loop. WG threads
// per workgroup; U chunks per thread in flight at once (U loads of 16 bytes per output feature before the sums).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

#ifndef TR
#define TR 1
#endif
#ifndef NR
#define NR 4
#endif
#ifndef WG
#define WG 256
#endif
#ifndef U
#define U 1
#endif
layout(local_size_x = WG) in;

layout(push_constant) uniform PC {
  Table w;
  Table w2;
  Floats x;
  Ints xrow;
  Floats y;
  Floats bias;
  Ints groups;
  uint N, K, ldw8, ldx, ldy, T, flags, pad;
} pc;

shared float red[WG / 4][TR * NR * 2];

void main() {
  const uint g = gl_WorkGroupID.y;
  const bool grouped = (pc.flags & F_GROUPED) != 0u, swiglu = (pc.flags & F_SWIGLU) != 0u;
  uint r0 = 0u, r1 = pc.T;
  if (grouped) {
    r0 = uint(pc.groups.v[g]);
    r1 = uint(pc.groups.v[g + 1u]);
  }
  if (r0 >= r1) return;
  const uint n0 = gl_WorkGroupID.x * NR;
  Quads W = pc.w.m[grouped ? g : 0u];
  Quads W2 = swiglu ? pc.w2.m[grouped ? g : 0u] : W;
  const uint tid = gl_LocalInvocationID.x;
  const uint full = pc.K / 8u, chunks = (pc.K + 7u) / 8u;
  const uint sg = gl_SubgroupID, nsg = gl_NumSubgroups;
  for (uint rc = r0; rc < r1; rc += TR) {
    const uint nr = min(uint(TR), r1 - rc);
    uint xr[TR];
    for (uint t = 0u; t < TR; ++t) {
      const uint s = rc + min(t, nr - 1u);
      xr[t] = ((pc.flags & F_XROW) != 0u ? uint(pc.xrow.v[s]) : s) * pc.ldx;
    }
    float acc[TR][NR], acc2[TR][NR];
    for (uint t = 0u; t < TR; ++t)
      for (uint r = 0u; r < NR; ++r) {
        acc[t][r] = 0.0;
        acc2[t][r] = 0.0;
      }
    for (uint c0 = tid; c0 < chunks; c0 += WG * U) {
      vec4 xa[U][TR], xb[U][TR];
      for (uint u = 0u; u < U; ++u) {
        const uint c = c0 + u * WG;
        const uint k = c * 8u;
        if (c < full && (pc.flags & F_X4) != 0u) {
          Vec4s x4 = Vec4s(pc.x);
          for (uint t = 0u; t < TR; ++t) {
            xa[u][t] = x4.v[(xr[t] + k) / 4u];
            xb[u][t] = x4.v[(xr[t] + k) / 4u + 1u];
          }
        } else if (c < full) {
          for (uint t = 0u; t < TR; ++t) {
            xa[u][t] = vec4(pc.x.v[xr[t] + k], pc.x.v[xr[t] + k + 1u], pc.x.v[xr[t] + k + 2u], pc.x.v[xr[t] + k + 3u]);
            xb[u][t] = vec4(pc.x.v[xr[t] + k + 4u], pc.x.v[xr[t] + k + 5u], pc.x.v[xr[t] + k + 6u], pc.x.v[xr[t] + k + 7u]);
          }
        } else {
          // The row's ragged end, or (c ≥ chunks) no chunk at all: zeros, so that the weights read below add 0.
          for (uint t = 0u; t < TR; ++t) {
            float e[8];
            for (uint i = 0u; i < 8u; ++i) e[i] = k + i < pc.K ? pc.x.v[xr[t] + k + i] : 0.0;
            xa[u][t] = vec4(e[0], e[1], e[2], e[3]);
            xb[u][t] = vec4(e[4], e[5], e[6], e[7]);
          }
        }
      }
      for (uint r = 0u; r < NR; ++r) {
        const uint n = min(n0 + r, pc.N - 1u);
        vec4 wa[U], wb[U], wa2[U], wb2[U];
        // All U loads of the row (and of W2's) are issued before any is used.
        for (uint u = 0u; u < U; ++u) {
          const uint c = min(c0 + u * WG, chunks - 1u);
          load8(W, n * pc.ldw8 + c, wa[u], wb[u]);
          if (swiglu) load8(W2, n * pc.ldw8 + c, wa2[u], wb2[u]);
        }
        for (uint u = 0u; u < U; ++u)
          for (uint t = 0u; t < TR; ++t) {
            acc[t][r] += dot(wa[u], xa[u][t]) + dot(wb[u], xb[u][t]);
            if (swiglu) acc2[t][r] += dot(wa2[u], xa[u][t]) + dot(wb2[u], xb[u][t]);
          }
      }
    }
    for (uint t = 0u; t < TR; ++t)
      for (uint r = 0u; r < NR; ++r) {
        const float a = subgroupAdd(acc[t][r]);
        const float b = swiglu ? subgroupAdd(acc2[t][r]) : 0.0;
        if (subgroupElect()) {
          red[sg][(t * NR + r) * 2u] = a;
          red[sg][(t * NR + r) * 2u + 1u] = b;
        }
      }
    barrier();
    if (tid < nr * NR) {
      const uint t = tid / NR, r = tid % NR, n = n0 + r;
      if (n < pc.N) {
        float a = 0.0, b = 0.0;
        for (uint i = 0u; i < nsg; ++i) {
          a += red[i][(t * NR + r) * 2u];
          b += red[i][(t * NR + r) * 2u + 1u];
        }
        float v = swiglu ? silu(a) * b : a;
        if ((pc.flags & F_BIAS) != 0u) v += pc.bias.v[n];
        const uint s = rc + t;
        const uint yo = s * pc.ldy + n;
        if ((pc.flags & F_ACCUM) != 0u) v += pc.y.v[yo];
        pc.y.v[yo] = v;
      }
    }
    barrier();
  }
}
