// The device's read bandwidth: every thread reads 16-byte words at a stride of the whole grid and keeps their xor,
// written once per thread so that no read can be left out.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant) uniform PC {
  Quads src;
  Ints dst;
  uint n;  // uvec4 words
} pc;
void main() {
  const uint stride = gl_NumWorkGroups.x * 256u;
  uvec4 acc = uvec4(0u);
  // Four loads in flight per thread.
  uint i = gl_GlobalInvocationID.x;
  for (; i + 3u * stride < pc.n; i += 4u * stride)
    acc ^= pc.src.v[i] ^ pc.src.v[i + stride] ^ pc.src.v[i + 2u * stride] ^ pc.src.v[i + 3u * stride];
  for (; i < pc.n; i += stride) acc ^= pc.src.v[i];
  pc.dst.v[gl_GlobalInvocationID.x] = int(acc.x ^ acc.y ^ acc.z ^ acc.w);
}
