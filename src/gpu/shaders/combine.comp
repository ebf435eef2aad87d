// out[t, :] (+)= Σ over the token's pairs, in increasing slot (= expert) order, of weight × expert output, plus the
// gated shared expert when F_SHARED: sigmoid(gate[t]) × shared[t, :]. With one rank out is the residual stream x
// (accumulate); with several it is the buffer the all-reduce sums.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant) uniform PC {
  Floats y;         // [slots, d] expert outputs
  Floats pair_w;
  Ints tok_slots;   // [T, k]
  Floats dst;       // [T, d]
  Floats shared_;   // [T, d]
  Floats sgate;     // [T]
  uint d, k, flags;
} pc;
const uint C_ACCUM = 1u, C_SHARED = 2u, C_SHARED_GATE = 4u;
void main() {
  const uint t = gl_WorkGroupID.y, j = gl_GlobalInvocationID.x;
  if (j >= pc.d) return;
  float acc = 0.0;
  for (uint r = 0u; r < pc.k; ++r) {
    const int s = pc.tok_slots.v[t * pc.k + r];
    if (s < 0) break;
    acc += pc.pair_w.v[s] * pc.y.v[uint(s) * pc.d + j];
  }
  if ((pc.flags & C_SHARED) != 0u) {
    float sh = pc.shared_.v[t * pc.d + j];
    if ((pc.flags & C_SHARED_GATE) != 0u) sh *= 1.0 / (1.0 + exp(-pc.sgate.v[t]));
    acc += sh;
  }
  const uint o = t * pc.d + j;
  pc.dst.v[o] = (pc.flags & C_ACCUM) != 0u ? pc.dst.v[o] + acc : acc;
}
