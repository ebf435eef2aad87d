// Y[s, n] (+)= X[row(s), :] · W[n, :] for many rows (prefill, large batches), in f32 arithmetic: 64 rows × 128
// features per workgroup, 32 weights deep per step through shared memory. Weights are read 16 bytes at a time (a
// chunk of 8), every thread holds 4 rows × 8 features (and as many for W2 with F_SWIGLU), and reads them from shared
// memory as vec4. The same push constants and flags as mv.comp; grid (N / 128, row tiles, groups): tiles past a
// group's rows return at once.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

#define BM 64
#define BN 128
#define BK 32
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

shared vec4 Xs[BK][BM / 4];
shared vec4 Ws[BK][BN / 4];
shared vec4 W2s[BK][BN / 4];

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
  Quads W = pc.w.m[grouped ? g : 0u];
  Quads W2 = swiglu ? pc.w2.m[grouped ? g : 0u] : W;
  const uint tid = gl_LocalInvocationID.x, tx = tid % 16u, ty = tid / 16u;
  vec4 acc[4][2], acc2[4][2];
  for (uint i = 0u; i < 4u; ++i)
    for (uint j = 0u; j < 2u; ++j) {
      acc[i][j] = vec4(0.0);
      acc2[i][j] = vec4(0.0);
    }
  for (uint k0 = 0u; k0 < pc.K; k0 += BK) {
    // X: 64 rows × 32 values, 8 per thread, a row's 32 by 32 consecutive threads.
    for (uint i = 0u; i < 8u; ++i) {
      const uint idx = tid + i * 256u, row = idx / BK, kk = idx % BK, k = k0 + kk;
      float xv = 0.0;
      const uint s = m0 + row;
      if (s < r1 && k < pc.K) {
        const uint xr = (pc.flags & F_XROW) != 0u ? uint(pc.xrow.v[s]) : s;
        xv = pc.x.v[xr * pc.ldx + k];
      }
      Xs[kk][row / 4u][row % 4u] = xv;
    }
    // W (and W2): 128 features × 4 chunks of 8, two chunks per thread.
    for (uint i = 0u; i < 2u; ++i) {
      const uint idx = tid + i * 256u, f = idx / 4u, q = idx % 4u, n = n0 + f, c = k0 / 8u + q;
      vec4 a = vec4(0.0), b = vec4(0.0), a2 = vec4(0.0), b2 = vec4(0.0);
      if (n < pc.N && c < pc.ldw8) {
        load8(W, n * pc.ldw8 + c, a, b);
        if (swiglu) load8(W2, n * pc.ldw8 + c, a2, b2);
      }
      for (uint j = 0u; j < 4u; ++j) {
        Ws[q * 8u + j][f / 4u][f % 4u] = a[j];
        Ws[q * 8u + 4u + j][f / 4u][f % 4u] = b[j];
      }
      if (swiglu)
        for (uint j = 0u; j < 4u; ++j) {
          W2s[q * 8u + j][f / 4u][f % 4u] = a2[j];
          W2s[q * 8u + 4u + j][f / 4u][f % 4u] = b2[j];
        }
    }
    barrier();
    for (uint kk = 0u; kk < BK; ++kk) {
      const vec4 xv = Xs[kk][ty];
      const vec4 w0 = Ws[kk][tx * 2u], w1 = Ws[kk][tx * 2u + 1u];
      for (uint i = 0u; i < 4u; ++i) {
        acc[i][0] += xv[i] * w0;
        acc[i][1] += xv[i] * w1;
      }
      if (swiglu) {
        const vec4 v0 = W2s[kk][tx * 2u], v1 = W2s[kk][tx * 2u + 1u];
        for (uint i = 0u; i < 4u; ++i) {
          acc2[i][0] += xv[i] * v0;
          acc2[i][1] += xv[i] * v1;
        }
      }
    }
    barrier();
  }
  for (uint i = 0u; i < 4u; ++i) {
    const uint s = m0 + ty * 4u + i;
    if (s >= r1) continue;
    for (uint j = 0u; j < 8u; ++j) {
      const uint n = n0 + tx * 8u + j;
      if (n >= pc.N) continue;
      const float a = acc[i][j / 4u][j % 4u];
      float v = swiglu ? silu(a) * acc2[i][j / 4u][j % 4u] : a;
      if ((pc.flags & F_BIAS) != 0u) v += pc.bias.v[n];
      const uint yo = s * pc.ldy + n;
      if ((pc.flags & F_ACCUM) != 0u) v += pc.y.v[yo];
      pc.y.v[yo] = v;
    }
  }
}
