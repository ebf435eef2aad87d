// Fuzzes the expert placement file (src/moe/placement.*: ExpertPlacement::from_json_file, through from_spec as
// --placement FILE reaches it) and the placement names.
//
// Input: three bytes for the model's shape (layers 1..8, experts 1..64, ranks 1..8), then the file.
#include "fuzz_util.h"
#include "moe/placement.h"

using namespace moep;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const int64_t n_layers = 1 + data[0] % 8;
  const int64_t n_experts = 1 + data[1] % 64;
  const int n_ranks = 1 + data[2] % 8;
  const std::string text(reinterpret_cast<const char*>(data + 3), size - 3);
  fuzz::expect_clean([&] {
    const std::string path = fuzz::write_scratch("placement.json", data + 3, size - 3);
    const ExpertPlacement p = ExpertPlacement::from_spec(PlacementSpec{PlacementKind::kFile, path}, n_layers,
                                                         n_experts, n_ranks);
    // Every question the loader and the MoE block ask of it.
    int64_t held = 0;
    for (int r = 0; r < n_ranks; ++r) {
      const RankShare share(p, r);
      for (int64_t l = 0; l < n_layers; ++l)
        for (int64_t e = 0; e < n_experts; ++e) held += share.holds(l, e) + int64_t(p.replicas(l, e).size());
      held += share.ffn_slice(1024).count;
    }
    volatile int64_t sink = held;
    (void)sink;
  });
  // A name that is not a known one is a path; only the known names are tried here (no stray files).
  const PlacementSpec spec = PlacementSpec::parse(text);
  if (spec.kind != PlacementKind::kFile)
    fuzz::expect_clean([&] { (void)ExpertPlacement::from_spec(spec, n_layers, n_experts, n_ranks); });
  return 0;
}
