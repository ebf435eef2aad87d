// Bad input gives a one-line error and a non-zero exit, never a crash: checkpoints that are truncated,
// inconsistent or of the wrong shape, config.json files that are malformed or name an unknown model, bad flags.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <list>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moep {
namespace {

// Copies a fixture's config and checkpoint (not its reference files) into a temp dir.
void copy_fixture(const std::string& name, const fs::path& to) {
  for (const auto& e : fs::directory_iterator(test::fixture_dir(name))) {
    const auto fn = e.path().filename().string();
    if (fn == "config.json" || fn.find(".safetensors") != std::string::npos) fs::copy(e.path(), to / fn);
  }
}

// Rewrites DIR/model.safetensors through `edit`, which may drop, add or change tensors.
void rewrite_checkpoint(const fs::path& dir, const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  const std::string path = (dir / "model.safetensors").string();
  std::vector<TensorToWrite> ts;
  std::list<std::vector<uint8_t>> keep;  // stable addresses for the fill callbacks
  {
    SafetensorsIndex idx = SafetensorsIndex::open(path);
    for (const auto& [name, t] : idx.tensors()) {
      keep.emplace_back(t.data, t.data + t.nbytes);
      const auto* bytes = &keep.back();
      ts.push_back({name, t.dtype_name, t.shape, t.nbytes, [bytes](uint8_t* o) { std::copy(bytes->begin(), bytes->end(), o); }});
    }
  }
  edit(ts);
  write_safetensors(path, ts);
}

struct RunResult {
  int status;
  std::string output;
};

RunResult run_logits(const fs::path& dir, const std::string& extra = "") {
  RunResult r;
  r.status = test::run_command(test::moep_binary() + " logits " + dir.string() + " --ids 1,2,3 --out " +
                                   (dir / "out.npy").string() + " --device cpu " + extra,
                               &r.output);
  return r;
}

// One line, starting "moep: error:", exit status 1 (not a signal).
void expect_clean_error(const RunResult& r, const std::string& must_contain) {
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output.rfind("moep: error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_NE(r.output.find(must_contain), std::string::npos) << "expected '" << must_contain << "' in: " << r.output;
}

TEST(CheckpointErrors, GoodCopyRuns) {
  test::TempDir d;
  copy_fixture("mixtral_bf16", d.path());
  const RunResult r = run_logits(d.path());
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(CheckpointErrors, TruncatedFile) {
  test::TempDir d;
  copy_fixture("mixtral_bf16", d.path());
  const fs::path f = d.path() / "model.safetensors";
  fs::resize_file(f, fs::file_size(f) / 2);
  expect_clean_error(run_logits(d.path()), "truncated");
}

TEST(CheckpointErrors, TruncatedHeader) {
  test::TempDir d;
  copy_fixture("mixtral_bf16", d.path());
  fs::resize_file(d.path() / "model.safetensors", 100);
  expect_clean_error(run_logits(d.path()), "model.safetensors");
}

TEST(CheckpointErrors, MissingShard) {
  test::TempDir d;
  copy_fixture("dbrx_bf16", d.path());
  fs::remove(d.path() / "model-00002-of-00004.safetensors");
  expect_clean_error(run_logits(d.path()), "model-00002-of-00004.safetensors is missing");
}

TEST(CheckpointErrors, MissingTensor) {
  test::TempDir d;
  copy_fixture("mixtral_bf16", d.path());
  rewrite_checkpoint(d.path(), [](std::vector<TensorToWrite>& ts) {
    std::erase_if(ts, [](const TensorToWrite& t) { return t.name == "model.layers.1.block_sparse_moe.experts.3.w2.weight"; });
  });
  expect_clean_error(run_logits(d.path()), "missing tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight'");
}

TEST(CheckpointErrors, WrongShape) {
  test::TempDir d;
  copy_fixture("qwen3_moe_f32", d.path());
  rewrite_checkpoint(d.path(), [](std::vector<TensorToWrite>& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.mlp.experts.2.up_proj.weight") std::swap(t.shape[0], t.shape[1]);
  });
  expect_clean_error(run_logits(d.path()), "'model.layers.0.mlp.experts.2.up_proj.weight' has shape [64, 32]");
}

TEST(CheckpointErrors, UnusedTensor) {
  test::TempDir d;
  copy_fixture("olmoe_bf16", d.path());
  rewrite_checkpoint(d.path(), [](std::vector<TensorToWrite>& ts) {
    ts.push_back({"model.layers.0.mlp.experts.99.gate_proj.weight", "BF16", {2, 2}, 8, [](uint8_t* o) { std::fill(o, o + 8, 1); }});
  });
  expect_clean_error(run_logits(d.path()), "does not use: 'model.layers.0.mlp.experts.99.gate_proj.weight'");
}

TEST(CheckpointErrors, ByteCountMismatch) {
  test::TempDir d;
  copy_fixture("olmoe_bf16", d.path());
  rewrite_checkpoint(d.path(), [](std::vector<TensorToWrite>& ts) {
    for (auto& t : ts)
      if (t.name == "model.norm.weight") t.shape = {65};
  });
  expect_clean_error(run_logits(d.path()), "'model.norm.weight': holds 128 bytes but BF16 [65] needs 130");
}

TEST(CheckpointErrors, OverlappingTensors) {
  test::TempDir d;
  copy_fixture("olmoe_bf16", d.path());
  // Hand-made header: two tensors sharing bytes.
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  std::ofstream f(d.path() / "model.safetensors", std::ios::binary | std::ios::trunc);
  const uint64_t len = header.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f << header << std::string(12, '\0');
  f.close();
  expect_clean_error(run_logits(d.path()), "overlap");
}

// A hand-made safetensors file: the header JSON, then `data_bytes` zero bytes.
void write_raw_safetensors(const fs::path& path, const std::string& header, size_t data_bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  const uint64_t len = header.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f << header << std::string(data_bytes, '\0');
}

std::string open_error(const fs::path& path) {
  try {
    SafetensorsIndex::open(path.string());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CheckpointErrors, ShapeProductOverflowIsRefused) {
  test::TempDir d;
  // [2^40, 2^40] F32 wraps to 0 elements: it matched an empty byte range.
  write_raw_safetensors(d.path() / "a.safetensors",
                        R"({"huge":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})", 0);
  std::string m = open_error(d.path() / "a.safetensors");
  EXPECT_NE(m.find("tensor 'huge'"), std::string::npos) << m;
  EXPECT_NE(m.find("more elements or bytes than fit in 64 bits"), std::string::npos) << m;
  // (2^62 + 2) F32 is 2^64 + 8 bytes, which wraps to exactly the 8 bytes stored.
  write_raw_safetensors(d.path() / "b.safetensors",
                        R"({"wraps":{"dtype":"F32","shape":[4611686018427387906],"data_offsets":[0,8]}})", 8);
  m = open_error(d.path() / "b.safetensors");
  EXPECT_NE(m.find("tensor 'wraps'"), std::string::npos) << m;
  EXPECT_NE(m.find("64 bits"), std::string::npos) << m;
  // A dimension beyond int64 (it read back negative).
  write_raw_safetensors(d.path() / "c.safetensors",
                        R"({"neg":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})", 0);
  m = open_error(d.path() / "c.safetensors");
  EXPECT_NE(m.find("tensor 'neg'"), std::string::npos) << m;
  // Through the CLI: a clean error, exit status 1.
  test::TempDir model;
  copy_fixture("olmoe_bf16", model.path());
  fs::copy_file(d.path() / "b.safetensors", model.path() / "model.safetensors", fs::copy_options::overwrite_existing);
  expect_clean_error(run_logits(model.path()), "tensor 'wraps'");
}

TEST(CheckpointErrors, IndexShardOutsideTheModelDirectoryIsRefused) {
  test::TempDir d;
  const fs::path model = d.path() / "hub" / "model", outside = d.path() / "outside";
  fs::create_directories(model);
  fs::create_directories(outside);
  copy_fixture("dbrx_bf16", model);
  // A complete shard, moved out of the directory and named from the index by a path that climbs out of it.
  const std::string shard = "model-00002-of-00004.safetensors";
  fs::rename(model / shard, outside / "x.safetensors");
  std::ifstream in(model / "model.safetensors.index.json");
  auto j = nlohmann::json::parse(in);
  in.close();
  for (auto& [name, file] : j["weight_map"].items())
    if (file == shard) file = "../../outside/x.safetensors";
  std::ofstream(model / "model.safetensors.index.json") << j.dump();
  expect_clean_error(run_logits(model), "shard '../../outside/x.safetensors'");
  expect_clean_error(run_logits(model), "is outside the model directory");
  // An absolute name too.
  for (auto& [name, file] : j["weight_map"].items())
    if (file == "../../outside/x.safetensors") file = (outside / "x.safetensors").string();
  std::ofstream(model / "model.safetensors.index.json") << j.dump();
  expect_clean_error(run_logits(model), "is outside the model directory");
}

// Runs `moep logits` on DIR with a time limit; the elapsed seconds in *seconds.
RunResult run_logits_timed(const fs::path& dir, double* seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  RunResult r;
  r.status = test::run_command("timeout 20 " + test::moep_binary() + " logits " + dir.string() + " --ids 1,2,3 --out " +
                                   (dir / "out.npy").string() + " --device cpu",
                               &r.output);
  *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

TEST(CheckpointErrors, FifoConfigOrShardIsRefusedAtOnce) {
  test::TempDir d;
  copy_fixture("mixtral_f32", d.path());
  fs::remove(d.path() / "config.json");
  ASSERT_EQ(::mkfifo((d.path() / "config.json").c_str(), 0600), 0);
  double seconds = 0;
  expect_clean_error(run_logits_timed(d.path(), &seconds), "config.json is a FIFO (named pipe); expected a regular file");
  EXPECT_LT(seconds, 10);  // refused, not waited on (timeout kills at 20 s)
  fs::remove(d.path() / "config.json");
  fs::copy_file(test::fixture_dir("mixtral_f32") + "/config.json", d.path() / "config.json");
  const fs::path shard = d.path() / "model-00002-of-00004.safetensors";
  fs::remove(shard);
  ASSERT_EQ(::mkfifo(shard.c_str(), 0600), 0);
  expect_clean_error(run_logits_timed(d.path(), &seconds), "model-00002-of-00004.safetensors is a FIFO (named pipe)");
  EXPECT_LT(seconds, 10);
}

TEST(CheckpointErrors, OversizedConfigIsRefusedNamingTheCap) {
  test::TempDir d;
  copy_fixture("mixtral_f32", d.path());
  // A sparse file: 16 MiB + 1 of zeros costs no disk and is refused before a byte is read.
  fs::resize_file(d.path() / "config.json", (size_t(16) << 20) + 1);
  expect_clean_error(run_logits(d.path()), "at most 16 MiB for config.json");
}

TEST(ConfigErrors, UnknownModelType) {
  test::TempDir d;
  copy_fixture("mixtral_f32", d.path());
  std::ifstream in(d.path() / "config.json");
  auto j = nlohmann::json::parse(in);
  in.close();
  j["model_type"] = "llama4_moe";
  std::ofstream(d.path() / "config.json") << j.dump();
  expect_clean_error(run_logits(d.path()), "model_type 'llama4_moe' is not supported");
}

TEST(ConfigErrors, MalformedJson) {
  test::TempDir d;
  copy_fixture("mixtral_f32", d.path());
  std::ofstream(d.path() / "config.json") << "{\"model_type\": \"mixtral\", \"hidden_size\": 64,";
  expect_clean_error(run_logits(d.path()), "malformed JSON");
}

TEST(ConfigErrors, MissingField) {
  test::TempDir d;
  copy_fixture("qwen2_moe_f32", d.path());
  std::ifstream in(d.path() / "config.json");
  auto j = nlohmann::json::parse(in);
  in.close();
  j.erase("num_experts_per_tok");
  std::ofstream(d.path() / "config.json") << j.dump();
  expect_clean_error(run_logits(d.path()), "field 'num_experts_per_tok' is missing");
}

TEST(ConfigErrors, ConfigDisagreesWithCheckpoint) {
  test::TempDir d;
  copy_fixture("dbrx_f32", d.path());
  std::ifstream in(d.path() / "config.json");
  auto j = nlohmann::json::parse(in);
  in.close();
  j["ffn_config"]["ffn_hidden_size"] = 40;
  std::ofstream(d.path() / "config.json") << j.dump();
  expect_clean_error(run_logits(d.path()), "but the config implies");
}

// Sets `field` of DIR/config.json to `value`.
void set_config_field(const fs::path& dir, const std::string& field, const nlohmann::json& value) {
  std::ifstream in(dir / "config.json");
  auto j = nlohmann::json::parse(in);
  in.close();
  j[field] = value;
  std::ofstream(dir / "config.json") << j.dump();
}

TEST(ConfigErrors, AbsurdSizesFailBeforeAllocating) {
  test::TempDir d;
  copy_fixture("mixtral_f32", d.path());
  // 10 million layers allocated over 4 GB before any tensor was checked; under a 1 GB address-space limit that was
  // a bad_alloc. Now the field is refused by name before anything is sized by it.
  set_config_field(d.path(), "num_hidden_layers", 10000000);
  expect_clean_error(run_logits(d.path(), "") , "field 'num_hidden_layers' is 10000000; moep reads at most 4096");
  RunResult limited;
  limited.status = test::run_command("ulimit -v 1000000; " + test::moep_binary() + " logits " + d.str() +
                                         " --ids 1,2,3 --out " + (d.path() / "out.npy").string() + " --device cpu",
                                     &limited.output);
  expect_clean_error(limited, "field 'num_hidden_layers' is 10000000");
  // Within the bound, but more layers than the checkpoint has tensors.
  set_config_field(d.path(), "num_hidden_layers", 4000);
  expect_clean_error(run_logits(d.path()), "the config says 4000 layers, but the checkpoint holds only");
  set_config_field(d.path(), "num_hidden_layers", 2);
  set_config_field(d.path(), "vocab_size", int64_t(1) << 40);
  expect_clean_error(run_logits(d.path()), "field 'vocab_size' is 1099511627776; moep reads at most 16777216");
  set_config_field(d.path(), "vocab_size", 256);
  set_config_field(d.path(), "hidden_size", int64_t(1) << 50);
  expect_clean_error(run_logits(d.path()), "field 'hidden_size' is 1125899906842624");
  set_config_field(d.path(), "hidden_size", 64);
  set_config_field(d.path(), "num_local_experts", 1000000);
  expect_clean_error(run_logits(d.path()), "field 'num_local_experts' is 1000000");
}

TEST(ConfigErrors, NoConfig) {
  test::TempDir d;
  expect_clean_error(run_logits(d.path()), "no config.json");
}

// Hostile chat templates through `moep run --chat`: the deep-nesting inputs of issue 21 (a SIGSEGV each before) and
// a runaway loop (ran without bound) end with a one-line error and exit status 1.
TEST(TemplateErrors, HostileTemplatesEndCleanly) {
  test::TempDir d;
  std::string out;
  ASSERT_EQ(test::run_command(test::moep_binary() + " synth " + d.str() +
                                  " --layers 1 --d-model 32 --ffn 32 --experts 2 --top-k 1 --heads 2 --kv-heads 1",
                              &out),
            0)
      << out;
  auto repeated = [](const std::string& piece, int n) {
    std::string r;
    for (int i = 0; i < n; ++i) r += piece;
    return r;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {repeated("{% if true %}", 100000) + "x" + repeated("{% endif %}", 100000), "nested more than 300 levels deep"},
      {"{{ messages[0].content" + repeated("|trim", 100000) + " }}", "expression nested more than 300 levels deep"},
      {"{{ 1" + repeated(" + 1", 100000) + " }}", "expression nested more than 300 levels deep"},
      {"{% for i in range(99999) %}{% for j in range(99999) %}{{ i }}{% endfor %}{% endfor %}",
       "more than 500000 steps"},
  };
  for (const auto& [tmpl, error] : cases) {
    std::ofstream(d.path() / "chat_template.jinja") << tmpl;
    RunResult r;
    r.status = test::run_command("timeout 30 " + test::moep_binary() + " run " + d.str() +
                                     " --chat -p hi -n 1 --device cpu",
                                 &r.output);
    // Less the notes before it (random weights, chat mode).
    while (r.output.rfind("moep: ", 0) == 0 && r.output.rfind("moep: error: ", 0) != 0)
      r.output.erase(0, r.output.find('\n') + 1);
    expect_clean_error(r, error);
    expect_clean_error(r, "chat_template.jinja");
  }
}

// -t 150 under an address-space limit: thread creation or an allocation fails somewhere between start-up and the
// first token, depending on the limit. Each ended in SIGABRT (a joinable thread destroyed, a worker's exception, glibc
// failing to register a thread-local destructor); now every limit gives exit status 0 or a one-line error, status 1.
TEST(ResourceErrors, ThreadAndAllocationFailuresAreCleanErrors) {
  test::TempDir d;
  std::string out;
  ASSERT_EQ(test::run_command(test::moep_binary() + " synth " + d.str() +
                                  " --layers 1 --d-model 32 --ffn 32 --experts 2 --top-k 1 --heads 2 --kv-heads 1",
                              &out),
            0)
      << out;
  int errors = 0;
  for (int limit_mb : {700, 1000, 1500, 2000, 2500, 3000}) {
    RunResult r;
    // stderr only: the generated text goes to /dev/null.
    r.status = test::run_command("(ulimit -v " + std::to_string(limit_mb * 1000) + "; " + test::moep_binary() + " run " +
                                     d.str() + " -p hi -n 2 --device cpu -t 150 2>&1 >/dev/null)",
                                 &r.output);
    if (r.status == 0) continue;
    while (r.output.rfind("moep: ", 0) == 0 && r.output.rfind("moep: error: ", 0) != 0)
      r.output.erase(0, r.output.find('\n') + 1);  // the notes before it
    ++errors;
    expect_clean_error(r, "");
    EXPECT_TRUE(r.output.find("cannot start thread") != std::string::npos ||
                r.output.find("out of memory") != std::string::npos)
        << limit_mb << " MB: " << r.output;
  }
  EXPECT_GT(errors, 0);  // the smallest limits do fail
}

TEST(FlagErrors, BadIds) {
  RunResult r;
  r.status = test::run_command(test::moep_binary() + " logits " + test::fixture_dir("olmoe_f32") +
                                   " --ids 1,x,3 --out /dev/null",
                               &r.output);
  expect_clean_error(r, "--ids: 'x' is not a token id");
  r.status = test::run_command(test::moep_binary() + " logits " + test::fixture_dir("olmoe_f32") +
                                   " --ids 1,999999 --out /dev/null --device cpu",
                               &r.output);
  expect_clean_error(r, "token id 999999 is outside the vocabulary");
}

TEST(FlagErrors, UnknownFlagNamesIt) {
  std::string out;
  const int st = test::run_command(
      test::moep_binary() + " logits " + test::fixture_dir("olmoe_f32") + " --ids 1 --out /dev/null --bogus", &out);
  EXPECT_NE(st, 0);
  EXPECT_EQ(out.rfind("moep: error: ", 0), 0u) << out;
  EXPECT_NE(out.find("--bogus"), std::string::npos) << out;
  const int st2 = test::run_command(
      test::moep_binary() + " logits " + test::fixture_dir("olmoe_f32") + " --ids 1 --out /dev/null --threads -3", &out);
  EXPECT_NE(st2, 0);
  EXPECT_NE(out.find("--threads"), std::string::npos) << out;
  const int st3 = test::run_command(
      test::moep_binary() + " logits " + test::fixture_dir("olmoe_f32") + " --ids 1 --out /dev/null --weights disk", &out);
  EXPECT_NE(st3, 0);
  EXPECT_NE(out.find("--weights"), std::string::npos) << out;
  EXPECT_NE(out.find("disk"), std::string::npos) << out;
}

TEST(FlagErrors, UnknownWeightResidenceFromTheLibrary) {
  try {
    parse_weight_residence("disk");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'disk' is unknown (expected auto, copy or map)"), std::string::npos)
        << e.what();
  }
}

TEST(CheckpointErrors, Mxfp4ScalesOfTheWrongShape) {
  test::TempDir d;
  copy_fixture("gpt_oss_mxfp4", d.path());
  rewrite_checkpoint(d.path(), [](std::vector<TensorToWrite>& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.1.mlp.experts.down_proj_scales") t.shape = {8, 2, 64};
  });
  expect_clean_error(run_logits(d.path()), "'model.layers.1.mlp.experts.down_proj_scales' has shape [8, 2, 64]");
}

TEST(CheckpointErrors, Mxfp4MissingScales) {
  test::TempDir d;
  copy_fixture("gpt_oss_mxfp4", d.path());
  rewrite_checkpoint(d.path(), [](std::vector<TensorToWrite>& ts) {
    std::erase_if(ts, [](const TensorToWrite& t) { return t.name == "model.layers.0.mlp.experts.gate_up_proj_scales"; });
  });
  expect_clean_error(run_logits(d.path()), "missing tensor 'model.layers.0.mlp.experts.gate_up_proj_scales'");
}

}  // namespace
}  // namespace moep
