// x[i] += a[i] (+ sigmoid(gate[row]) × b[i] when b is given): the all-reduced MoE output, and a shared expert that
// every rank computed whole, added to the residual stream.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant) uniform PC {
  Floats x;
  Floats a;
  Floats b;
  Floats gate;
  uint n, d, flags;
} pc;
void main() {
  const uint i = gl_GlobalInvocationID.x;
  if (i >= pc.n) return;
  float v = pc.a.v[i];
  if ((pc.flags & 1u) != 0u) {
    float sh = pc.b.v[i];
    if ((pc.flags & 2u) != 0u) sh *= 1.0 / (1.0 + exp(-pc.gate.v[i / pc.d]));
    v += sh;
  }
  pc.x.v[i] += v;
}
