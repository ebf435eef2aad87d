// Regression tests for what fuzzing the file and request parsers (tests/fuzz, scripts/fuzz.sh) and writing its
// targets turned up: each input that once went wrong is fed to the regular reader here and must get a clean
// moep::Error naming what is wrong. docs/RELIABILITY.md lists the campaigns and their findings.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "core/error.h"
#include "moe/placement.h"
#include "test_util.h"

using namespace moep;

namespace {

// The moep::Error message from_json_file gives for `text`, or "" if it accepted it.
std::string placement_error(const std::string& text, int64_t n_layers, int64_t n_experts, int n_ranks) {
  test::TempDir dir;
  const std::string path = dir.str() + "/placement.json";
  std::ofstream(path) << text;
  try {
    (void)ExpertPlacement::from_json_file(path, n_layers, n_experts, n_ranks);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// Found while writing fuzz_placement: ranks were read as int, so 2^32 wrapped to rank 0 and was taken.
TEST(FuzzRegressions, PlacementRankBeyondIntIsRefused) {
  for (const char* rank : {"4294967296", "4294967297", "18446744073709551615", "-1", "2"}) {
    const std::string msg = placement_error(std::string(R"({"experts": [[0], [)") + rank + "]]}", 1, 2, 2);
    EXPECT_NE(msg.find("names rank " + std::string(rank)), std::string::npos) << rank << ": " << msg;
    EXPECT_NE(msg.find("the job has 2 ranks"), std::string::npos) << msg;
  }
  EXPECT_EQ(placement_error(R"({"experts": [[0], [1, 0]]})", 1, 2, 2), "");
}

// A layer key is the whole index: "1x" or " 1" used to be read as layer 1 (std::stoll stops at the first non-digit).
TEST(FuzzRegressions, PlacementLayerKeyMustBeAnIndex) {
  for (const char* key : {"1x", " 1", "+1", "", "99999999999999999999"}) {
    const std::string msg =
        placement_error(std::string(R"({"experts": [[0], [1]], "layers": {")") + key + R"(": [[1], [0]]}})", 2, 2, 2);
    EXPECT_NE(msg.find("layer '" + std::string(key) + "' is not a layer index below 2"), std::string::npos)
        << key << ": " << msg;
  }
  EXPECT_EQ(placement_error(R"({"experts": [[0], [1]], "layers": {"1": [[1], [0]]}})", 2, 2, 2), "");
}
