// Shared by every shader: buffers are reached through device addresses (GL_EXT_buffer_reference) passed as push
// constants. Weights keep the checkpoint's dtype, chosen at compile time: DT 0 = f32, 1 = f16, 2 = bf16. Every
// weight matrix lies on the device as [rows, ldw] with ldw a multiple of 8 (zero-padded), so that a row is a
// whole number of 16-byte "chunks of 8 weights" (two chunks' worth of uvec4 for f32).
#extension GL_EXT_buffer_reference : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_basic : require

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Floats { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer Ints { int v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer Words { uint v[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) readonly buffer Quads { uvec4 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer Table { Quads m[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) readonly buffer Vec4s { vec4 v[]; };

#ifndef DT
#define DT 2
#endif

// Weight i of a matrix (element index).
float welem(Words w, uint i) {
#if DT == 0
  return uintBitsToFloat(w.v[i]);
#elif DT == 1
  return unpackHalf2x16(w.v[i >> 1])[i & 1u];
#else
  const uint u = w.v[i >> 1];
  return uintBitsToFloat((i & 1u) != 0u ? (u & 0xffff0000u) : (u << 16));
#endif
}

// Chunk c (weights 8c .. 8c+7) of a matrix, as two vec4.
void load8(Quads w, uint c, out vec4 a, out vec4 b) {
#if DT == 0
  a = uintBitsToFloat(w.v[2u * c]);
  b = uintBitsToFloat(w.v[2u * c + 1u]);
#elif DT == 1
  const uvec4 p = w.v[c];
  a = vec4(unpackHalf2x16(p.x), unpackHalf2x16(p.y));
  b = vec4(unpackHalf2x16(p.z), unpackHalf2x16(p.w));
#else
  const uvec4 p = w.v[c];
  a = vec4(uintBitsToFloat(p.x << 16), uintBitsToFloat(p.x & 0xffff0000u), uintBitsToFloat(p.y << 16),
           uintBitsToFloat(p.y & 0xffff0000u));
  b = vec4(uintBitsToFloat(p.z << 16), uintBitsToFloat(p.z & 0xffff0000u), uintBitsToFloat(p.w << 16),
           uintBitsToFloat(p.w & 0xffff0000u));
#endif
}

float silu(float g) { return g / (1.0 + exp(-g)); }

// Flags of the matrix shaders.
const uint F_GROUPED = 1u;   // rows come in groups (experts): groups.v[g] .. groups.v[g+1], matrix table[g]
const uint F_XROW = 2u;      // row s of the output reads row xrow.v[s] of x
const uint F_ACCUM = 4u;     // y += result (else y = result)
const uint F_BIAS = 8u;      // + bias.v[n]
const uint F_SWIGLU = 16u;   // y = silu(x·w) * (x·w2)
const uint F_X4 = 32u;       // rows of x start on 16 bytes (ldx a multiple of 4): read x as vec4
