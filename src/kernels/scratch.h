// Per-thread scratch buffers of the fast kernels (staged activations, packed weight panels, output tiles).
//
// Each kernel table (one instruction-set file) keeps its own set of slots, with sizes fixed by its blocking. A
// thread's set is created on its first kernel call and written through once, so that the decode loop neither
// allocates nor takes a page fault for scratch; a call that needs more than a slot holds grows it, once, which
// happens during warm-up. Buffers are 64-byte aligned and freed when the thread ends. An allocation that fails
// throws std::bad_alloc.
//
// Compiled with the baseline flags (not an instruction-set file), so every table can use it.
#pragma once

#include <cstddef>

namespace moep::kernels {

enum ScratchOwner { kScratchAvx512 = 0, kScratchAvx2 = 1, kScratchNeon = 2, kScratchOwners = 3 };
constexpr int kMaxScratchSlots = 4;

// Creates this thread's buffers of `owner` with the given sizes (in f32) if it has none yet.
void scratch_prepare(ScratchOwner owner, const size_t* initial_floats, int n_slots);
// This thread's buffer `slot` of `owner`: at least `floats` f32.
float* scratch_buffer(ScratchOwner owner, int slot, size_t floats);

}  // namespace moep::kernels
