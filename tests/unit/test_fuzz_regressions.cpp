// Regression tests for what fuzzing the file and request parsers (tests/fuzz, scripts/fuzz.sh) and writing its
// targets turned up: each input that once went wrong is fed to the regular reader here and must get a clean
// moep::Error naming what is wrong. docs/RELIABILITY.md lists the campaigns and their findings.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "moe/placement.h"
#include "text/jinja.h"
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

namespace {

// The moep::Error message load_model_config gives for the olmoe_f32 fixture's config.json with `key` set to the
// JSON text `value`, or "" if it accepted it.
std::string config_error(const std::string& key, const std::string& value) {
  nlohmann::json j;
  std::ifstream(test::fixture_dir("olmoe_f32") + "/config.json") >> j;
  j[key] = nlohmann::json::parse(value);
  test::TempDir dir;
  std::ofstream(dir.str() + "/config.json") << j.dump();
  try {
    (void)load_model_config(dir.str());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// Found by fuzz_config in CI: a size written as a float beyond int64 (2.88889e+36) was converted to int64, which
// is undefined behaviour (UBSan: "outside the range of representable values of type 'long'").
TEST(FuzzRegressions, ConfigFloatBeyondInt64IsRefused) {
  for (const char* v : {"2.88889e+36", "-2.88889e+36", "9.3e18", "1e300", "18446744073709551615"}) {
    const std::string msg = config_error("hidden_size", v);
    EXPECT_NE(msg.find("'hidden_size'"), std::string::npos) << v << ": " << msg;
  }
  // A whole number written as a float is still read, and an ordinary size passes.
  EXPECT_EQ(config_error("hidden_size", "64.0"), config_error("hidden_size", "64"));
  EXPECT_EQ(config_error("num_hidden_layers", "2.0"), "");
}

// Found by fuzz_safetensors in CI: a shard name in model.safetensors.index.json longer than the filesystem's
// name limit made std::filesystem::exists throw filesystem_error ("File name too long") past moep's errors.
TEST(FuzzRegressions, SafetensorsShardNameTooLongIsAnError) {
  test::TempDir dir;
  const std::string shard(5000, 'V');
  std::ofstream(dir.str() + "/model.safetensors.index.json")
      << R"({"weight_map": {"a": ")" << shard << R"(.safetensors"}})";
  try {
    (void)SafetensorsIndex::open(dir.str());
    FAIL() << "a 5000-character shard name was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("of tensor 'a'"), std::string::npos) << msg;
  }
}

// Found by fuzz_chat_template (the campaign on the device): `'3999…9.7' | int` truncated a float beyond int64 to
// int64, undefined behaviour (UBSan). Python's int has no bound; moep's template integers are 64-bit, so such a
// value is now a template error naming the filter, and ordinary conversions are unchanged.
TEST(FuzzRegressions, JinjaIntOfAHugeFloatIsAnError) {
  auto render = [](const std::string& src) {
    return jinja::Template(src, "test").render(nlohmann::ordered_json::object());
  };
  for (const char* src : {"{{ '3999999999999999999999999999999999999999999.7' | int }}", "{{ 4e42 | int }}",
                          "{{ -9.3e18 | int }}", "{{ '%d' % 1e30 }}"}) {
    try {
      const std::string out = render(src);
      ADD_FAILURE() << src << " rendered '" << out << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("beyond the 64-bit integers"), std::string::npos) << src << ": " << e.what();
    }
  }
  EXPECT_EQ(render("{{ 3.9 | int }} {{ '-2.5' | int }} {{ '42' | int + 1 }} {{ '%d' % 7.9 }}"), "3 -2 43 7");
}
