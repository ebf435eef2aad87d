// The router of one row per invocation, as route_token on the CPU: softmax over the experts' logits, the k largest by
// repeated insertion (ties: the lower expert), then the top-k weights normalized (none, sum or p-norm).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC {
  Floats logits;  // [T, E], overwritten with the probabilities
  Ints ids;       // [T, k]
  Floats w;       // [T, k]
  uint T, E, k, norm;
  float pnorm;
} pc;
void main() {
  const uint t = gl_GlobalInvocationID.x;
  if (t >= pc.T) return;
  const uint lo = t * pc.E, o = t * pc.k;
  float m = pc.logits.v[lo];
  for (uint e = 1u; e < pc.E; ++e) m = max(m, pc.logits.v[lo + e]);
  float s = 0.0;
  for (uint e = 0u; e < pc.E; ++e) {
    const float v = exp(pc.logits.v[lo + e] - m);
    pc.logits.v[lo + e] = v;
    s += v;
  }
  const float inv = 1.0 / s;
  uint n = 0u;
  for (uint e = 0u; e < pc.E; ++e) {
    const float p = pc.logits.v[lo + e] * inv;
    if (n == pc.k && !(p > pc.w.v[o + pc.k - 1u])) continue;
    uint i = n < pc.k ? n++ : pc.k - 1u;
    while (i > 0u && p > pc.w.v[o + i - 1u]) {
      pc.w.v[o + i] = pc.w.v[o + i - 1u];
      pc.ids.v[o + i] = pc.ids.v[o + i - 1u];
      --i;
    }
    pc.w.v[o + i] = p;
    pc.ids.v[o + i] = int(e);
  }
  if (pc.norm == 1u) {
    float z = 0.0;
    for (uint i = 0u; i < pc.k; ++i) z += pc.w.v[o + i];
    for (uint i = 0u; i < pc.k; ++i) pc.w.v[o + i] /= z;
  } else if (pc.norm == 2u) {
    float z = 0.0;
    for (uint i = 0u; i < pc.k; ++i) z += pow(abs(pc.w.v[o + i]), pc.pnorm);
    const float nrm = pow(z, 1.0 / pc.pnorm);
    for (uint i = 0u; i < pc.k; ++i) pc.w.v[o + i] /= nrm;
  }
}
