// The compute shaders, compiled from src/gpu/shaders/*.comp to SPIR-V at build time (glslc) and embedded in the
// binary (cmake/embed_spirv.cmake writes the table).
#pragma once

#include <cstddef>
#include <cstdint>

namespace moep::gpu {

struct Shader {
  const char* name;  // "mv1_bf16", "attention", ...
  const uint32_t* words;
  size_t n_words;
};

// The shader of that name; throws moep::Error naming it when this build has none (a build whose shaders failed to
// compile never gets this far: the build stops).
const Shader& shader(const char* name);

}  // namespace moep::gpu
