// x[t, :] = f32(E[token[t], :]): the embedding rows of the step's tokens.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant) uniform PC {
  Words e;
  Ints tokens;
  Floats x;
  uint d, lde, T;
} pc;
void main() {
  const uint t = gl_WorkGroupID.y, j = gl_GlobalInvocationID.x;
  if (j >= pc.d) return;
  pc.x.v[t * pc.d + j] = welem(pc.e, uint(pc.tokens.v[t]) * pc.lde + j);
}
