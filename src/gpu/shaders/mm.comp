// Y[s, n] (+)= X[row(s), :] · W[n, :] for many rows (prefill, large batches): 64×64 output tiles through shared
// memory, 16 weights deep, each thread a 4×4 block (and the same for W2 with F_SWIGLU). The same push constants and
// flags as mv.comp; grid (N / 64, row tiles, groups): tiles past a group's rows return at once.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

#define BM 64
#define BN 64
#define BK 16
layout(local_size_x = 256) in;

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

shared float Xs[BK][BM + 1];
shared float Ws[BK][BN + 1];
shared float W2s[BK][BN + 1];

void main() {
  const uint g = gl_WorkGroupID.z;
  const bool grouped = (pc.flags & F_GROUPED) != 0u, swiglu = (pc.flags & F_SWIGLU) != 0u;
  uint r0 = 0u, r1 = pc.T;
  if (grouped) {
    r0 = uint(pc.groups.v[g]);
    r1 = uint(pc.groups.v[g + 1u]);
  }
  const uint m0 = r0 + gl_WorkGroupID.y * BM;
  if (m0 >= r1) return;
  const uint n0 = gl_WorkGroupID.x * BN;
  Words W = Words(pc.w.m[grouped ? g : 0u]);
  Words W2 = Words(swiglu ? pc.w2.m[grouped ? g : 0u] : pc.w.m[grouped ? g : 0u]);
  const uint ldw = pc.ldw8 * 8u;
  const uint tid = gl_LocalInvocationID.x, tx = tid % 16u, ty = tid / 16u;
  float acc[4][4], acc2[4][4];
  for (uint i = 0u; i < 4u; ++i)
    for (uint j = 0u; j < 4u; ++j) {
      acc[i][j] = 0.0;
      acc2[i][j] = 0.0;
    }
  for (uint k0 = 0u; k0 < pc.K; k0 += BK) {
    for (uint i = 0u; i < 4u; ++i) {
      const uint idx = tid + i * 256u, row = idx / BK, kk = idx % BK;
      const uint s = m0 + row, k = k0 + kk;
      float xv = 0.0;
      if (s < r1 && k < pc.K) {
        const uint xr = (pc.flags & F_XROW) != 0u ? uint(pc.xrow.v[s]) : s;
        xv = pc.x.v[xr * pc.ldx + k];
      }
      Xs[kk][row] = xv;
      const uint n = n0 + row;
      float wv = 0.0, wv2 = 0.0;
      if (n < pc.N && k < pc.K) {
        wv = welem(W, n * ldw + k);
        if (swiglu) wv2 = welem(W2, n * ldw + k);
      }
      Ws[kk][row] = wv;
      W2s[kk][row] = wv2;
    }
    barrier();
    for (uint kk = 0u; kk < BK; ++kk) {
      float xv[4], wv[4], wv2[4];
      for (uint i = 0u; i < 4u; ++i) xv[i] = Xs[kk][ty * 4u + i];
      for (uint j = 0u; j < 4u; ++j) wv[j] = Ws[kk][tx * 4u + j];
      for (uint i = 0u; i < 4u; ++i)
        for (uint j = 0u; j < 4u; ++j) acc[i][j] += xv[i] * wv[j];
      if (swiglu) {
        for (uint j = 0u; j < 4u; ++j) wv2[j] = W2s[kk][tx * 4u + j];
        for (uint i = 0u; i < 4u; ++i)
          for (uint j = 0u; j < 4u; ++j) acc2[i][j] += xv[i] * wv2[j];
      }
    }
    barrier();
  }
  for (uint i = 0u; i < 4u; ++i) {
    const uint s = m0 + ty * 4u + i;
    if (s >= r1) continue;
    for (uint j = 0u; j < 4u; ++j) {
      const uint n = n0 + tx * 4u + j;
      if (n >= pc.N) continue;
      float v = swiglu ? silu(acc[i][j]) * acc2[i][j] : acc[i][j];
      if ((pc.flags & F_BIAS) != 0u) v += pc.bias.v[n];
      const uint yo = s * pc.ldy + n;
      if ((pc.flags & F_ACCUM) != 0u) v += pc.y.v[yo];
      pc.y.v[yo] = v;
    }
  }
}
