// The device's read bandwidth: each workgroup reads blocks of 4096 16-byte words (64 KiB), the blocks taken at a
// stride of the grid; every thread has 16 loads in flight (words t, t + 256, …, t + 15·256 of a block) and keeps
// their xor, written once per thread so that no read can be left out.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant) uniform PC {
  Quads src;
  Ints dst;
  uint n;  // uvec4 words
} pc;
const uint BLOCK = 4096u;
void main() {
  const uint tid = gl_LocalInvocationID.x;
  uvec4 acc = uvec4(0u);
  for (uint b = gl_WorkGroupID.x; b * BLOCK < pc.n; b += gl_NumWorkGroups.x) {
    const uint base = b * BLOCK + tid;
    if (base + 15u * 256u < pc.n) {
      uvec4 v[16];
      for (uint u = 0u; u < 16u; ++u) v[u] = pc.src.v[base + u * 256u];
      for (uint u = 0u; u < 16u; ++u) acc ^= v[u];
    } else {
      for (uint u = 0u; u < 16u; ++u)
        if (base + u * 256u < pc.n) acc ^= pc.src.v[base + u * 256u];
    }
  }
  pc.dst.v[gl_GlobalInvocationID.x] = int(acc.x ^ acc.y ^ acc.z ^ acc.w);
}
