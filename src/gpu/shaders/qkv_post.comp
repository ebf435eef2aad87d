// One row of the fused q|k|v projection [q_dim + 2 kv_dim], in the CPU path's order: biases, q/k norm, clipping,
// RoPE on q and k; then k and v go into the KV cache at the row's slot and position. q stays in place for attention.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#define WG 256
layout(local_size_x = WG) in;
layout(push_constant) uniform PC {
  Floats qkv;
  Floats bias;   // [q_dim + 2 kv_dim]
  Floats qn;     // q norm weights ([head_dim] per head, or [q_dim])
  Floats kn;
  Ints pos;      // per row
  Ints slot;     // per row
  Floats kc;     // this layer's caches [slots, ctx, kv_dim]
  Floats vc;
  Floats rope;   // [ctx, half] cos, then [ctx, half] sin
  uint H, KVH, hd, ctx, flags;
  float eps, clip;
} pc;
const uint P_BIAS = 1u, P_QK_HEAD = 2u, P_QK_FULL = 4u, P_CLIP = 8u;
shared float red[WG / 4];
shared float scale[256];

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
  const uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
  const uint qd = pc.H * pc.hd, kvd = pc.KVH * pc.hd, width = qd + 2u * kvd, base = t * width;
  if ((pc.flags & P_BIAS) != 0u)
    for (uint j = tid; j < width; j += WG) pc.qkv.v[base + j] += pc.bias.v[j];
  barrier();
  memoryBarrierBuffer();
  if ((pc.flags & P_QK_FULL) != 0u) {
    float s = 0.0;
    for (uint j = tid; j < qd; j += WG) s += pc.qkv.v[base + j] * pc.qkv.v[base + j];
    const float iq = inversesqrt(wg_sum(s) / float(qd) + pc.eps);
    s = 0.0;
    for (uint j = tid; j < kvd; j += WG) s += pc.qkv.v[base + qd + j] * pc.qkv.v[base + qd + j];
    const float ik = inversesqrt(wg_sum(s) / float(kvd) + pc.eps);
    for (uint j = tid; j < qd; j += WG) pc.qkv.v[base + j] = pc.qn.v[j] * (pc.qkv.v[base + j] * iq);
    for (uint j = tid; j < kvd; j += WG) pc.qkv.v[base + qd + j] = pc.kn.v[j] * (pc.qkv.v[base + qd + j] * ik);
  } else if ((pc.flags & P_QK_HEAD) != 0u) {
    // One head per subgroup pass: heads of q then of k, each summed by one subgroup.
    const uint heads = pc.H + pc.KVH;
    for (uint h = gl_SubgroupID; h < heads; h += gl_NumSubgroups) {
      const uint o = base + h * pc.hd;  // k heads follow q heads contiguously
      float s = 0.0;
      for (uint j = gl_SubgroupInvocationID; j < pc.hd; j += gl_SubgroupSize) s += pc.qkv.v[o + j] * pc.qkv.v[o + j];
      s = subgroupAdd(s);
      if (subgroupElect()) scale[h] = inversesqrt(s / float(pc.hd) + pc.eps);
    }
    barrier();
    for (uint j = tid; j < qd + kvd; j += WG) {
      const uint h = j / pc.hd, i = j % pc.hd;
      const float w = h < pc.H ? pc.qn.v[i] : pc.kn.v[i];
      pc.qkv.v[base + j] = w * (pc.qkv.v[base + j] * scale[h]);
    }
  }
  barrier();
  memoryBarrierBuffer();
  if ((pc.flags & P_CLIP) != 0u)
    for (uint j = tid; j < width; j += WG) pc.qkv.v[base + j] = clamp(pc.qkv.v[base + j], -pc.clip, pc.clip);
  barrier();
  memoryBarrierBuffer();
  const uint half_ = pc.hd / 2u, p = uint(pc.pos.v[t]), sl = uint(pc.slot.v[t]);
  const uint pairs = (pc.H + pc.KVH) * half_;
  for (uint j = tid; j < pairs; j += WG) {
    const uint h = j / half_, i = j % half_;
    const uint o = base + h * pc.hd + i;
    const float c = pc.rope.v[p * half_ + i], sn = pc.rope.v[pc.ctx * half_ + p * half_ + i];
    const float a = pc.qkv.v[o], b = pc.qkv.v[o + half_];
    pc.qkv.v[o] = a * c - b * sn;
    pc.qkv.v[o + half_] = b * c + a * sn;
  }
  barrier();
  memoryBarrierBuffer();
  const uint co = (sl * pc.ctx + p) * kvd;
  for (uint j = tid; j < kvd; j += WG) {
    pc.kc.v[co + j] = pc.qkv.v[base + qd + j];
    pc.vc.v[co + j] = pc.qkv.v[base + qd + kvd + j];
  }
}
