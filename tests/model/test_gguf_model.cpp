// GGUF models: every fixture written by `moep quantize` (model/gguf_export.h) and loaded back computes what the
// safetensors checkpoint computes; quantized files compute what the same weights dequantized to f32 compute;
// llama.cpp's per-tensor type rules; 2 ranks equal 1 on a quantized model; and bad files give clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "core/error.h"
#include "core/quant.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/npy.h"
#include "model/gguf_export.h"
#include "model/gguf_model.h"
#include "model/synth.h"
#include "moe/placement.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace moep {
namespace {

std::unique_ptr<Engine> make_engine(const std::string& path, gpu::DeviceKind device = gpu::DeviceKind::Cpu,
                                    WeightResidence weights = WeightResidence::Auto) {
  EngineOptions o;
  o.weights = weights;
  o.model_dir = path;
  o.threads = 2;
  o.limits.max_rows = 64;
  o.limits.max_ctx = 64;
  o.limits.n_slots = 1;
  o.device = device;
  return Engine::create(o, std::make_unique<LocalCommunicator>());
}

// Logits [tokens, vocab] of `ids` (whole prompt, or one token at a time). The weights are copied (auto, one rank)
// unless `weights` says otherwise.
std::vector<float> logits(const std::string& path, const std::vector<int32_t>& ids, bool incremental,
                          WeightResidence weights = WeightResidence::Auto) {
  auto e = make_engine(path, gpu::DeviceKind::Cpu, weights);
  std::vector<float> out(ids.size() * size_t(e->config().vocab_size));
  e->run_sequence(ids, 0, 0, true, incremental, out.data());
  return out;
}

// Every position's logits of `got` within `tol` of `want` (test::rel_max: max |a - b| / max |b|).
void expect_close(const std::vector<float>& got, const std::vector<float>& want, int64_t vocab, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t t = 0; t < got.size() / size_t(vocab); ++t)
    EXPECT_LE(test::rel_max(&got[t * size_t(vocab)], &want[t * size_t(vocab)], size_t(vocab)), tol)
        << what << ", position " << t;
}

std::vector<int32_t> fixture_tokens(const std::string& fixture) {
  std::ifstream f(test::fixture_dir(fixture) + "/reference.json");
  return nlohmann::json::parse(f)["cases"][2]["logits_tokens"].get<std::vector<int32_t>>();
}

const std::vector<std::string> kFamilies = {"dbrx",      "mixtral",   "olmoe",      "qwen2_moe",
                                            "qwen3_moe", "deepseek_v3", "deepseek_v2", "gpt_oss"};

// An f32 GGUF of every fixture, both stored dtypes: the same logits as the checkpoint. The weights are the same
// values; only where the layout changes the order of additions (DBRX's down projection, stored transposed) may
// the last bits differ.
class GgufF32 : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufF32, LogitsEqualTheCheckpoints) {
  for (const char* dtype : {"_f32", "_bf16", "_fp8", "_mxfp4"}) {
    const std::string fx = GetParam() + dtype;
    if (!std::filesystem::exists(test::fixture_dir(fx))) continue;  // deepseek_v2: f32 only; fp8: deepseek_v3; mxfp4: gpt_oss
    test::TempDir d;
    const std::string gguf = d.str() + "/model.gguf";
    const QuantizeResult r = quantize_to_gguf(test::fixture_dir(fx), gguf, GgufFileType::F32);
    for (const auto& t : r.tensors) EXPECT_EQ(t.type, GgmlType::F32) << t.name;
    ModelConfig a = load_model_config(test::fixture_dir(fx));
    const ModelConfig b = load_model_config(gguf);
    a.fp8_block_weights = false;  // the FP8 checkpoint's weights are written dequantized
    EXPECT_EQ(a.fingerprint(), b.fingerprint()) << fx << ": " << a.summary() << " vs " << b.summary();
    const auto ids = fixture_tokens(fx);
    for (bool incremental : {false, true})
      expect_close(logits(gguf, ids, incremental), logits(test::fixture_dir(fx), ids, incremental), a.vocab_size,
                   1e-5, fx + (incremental ? " incremental" : " whole"));
    // Read in place from the mapping rather than copied.
    expect_close(logits(gguf, ids, false, WeightResidence::Map), logits(test::fixture_dir(fx), ids, false),
                 a.vocab_size, 1e-5, fx + " mapped");
  }
}

INSTANTIATE_TEST_SUITE_P(Families, GgufF32, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return info.param; });

// The tensors of a GGUF file by name: their types.
std::map<std::string, GgmlType> tensor_types(const std::string& path) {
  std::map<std::string, GgmlType> m;
  const GgufFile f = GgufFile::open(path);
  for (const auto& [name, t] : f.tensors()) m[name] = t.type;
  return m;
}

// A quantized GGUF against the same file's weights dequantized to f32 (moep quantize of the GGUF itself): the
// quantized weights are read in place, and must give what their f32 values give.
void expect_quantized_equals_dequantized(const std::string& source, GgufFileType type, const std::string& what) {
  test::TempDir d;
  const std::string q = d.str() + "/q.gguf", f = d.str() + "/deq.gguf";
  quantize_to_gguf(source, q, type);
  quantize_to_gguf(q, f, GgufFileType::F32);
  const ModelConfig c = load_model_config(q);
  std::vector<int32_t> ids;
  for (int i = 0; i < 9; ++i) ids.push_back(int32_t((i * 37 + 5) % c.vocab_size));
  for (bool incremental : {false, true})
    expect_close(logits(q, ids, incremental), logits(f, ids, incremental), c.vocab_size, 1e-4,
                 what + (incremental ? " incremental" : " whole"));
}

TEST(GgufQuantized, FixturesEqualTheirDequantizedWeights) {
  for (const std::string fx : {"mixtral_bf16", "olmoe_f32", "qwen2_moe_bf16", "dbrx_f32", "deepseek_v3_bf16",
                               "deepseek_v2_f32", "gpt_oss_bf16"})
    for (GgufFileType type : {GgufFileType::Q8_0, GgufFileType::Q4_K_M, GgufFileType::Q4_0, GgufFileType::MXFP4_MOE}) {
      SCOPED_TRACE(fx + " " + gguf_file_type_name(type));
      expect_quantized_equals_dequantized(test::fixture_dir(fx), type, fx);
    }
}

// The fixtures are 64 wide, narrower than a K-quant block: a synthetic model 256 wide has real q4_K, q5_K, q6_K
// tensors where llama.cpp's rules put them.
std::string synth_model(const test::TempDir& d, const std::string& arch, int64_t experts) {
  SynthSpec s;
  s.arch = arch;
  s.layers = 2;
  s.d_model = 256;
  s.ffn = 512;
  s.experts = experts;
  s.top_k = 2;
  s.heads = 4;
  s.kv_heads = 2;
  s.vocab = 320;
  s.max_position = 256;
  s.dtype = "bf16";
  s.shared_ffn = arch == "qwen2_moe" ? 512 : 0;
  const std::string dir = d.str() + "/" + arch;
  write_synthetic_checkpoint(s, dir, 2);
  return dir;
}

TEST(GgufQuantized, KQuantMixturesFollowLlamaCppAndEqualTheirDequantizedWeights) {
  test::TempDir d;
  for (const std::string arch : {"mixtral", "qwen2_moe", "dbrx"}) {
    const std::string dir = synth_model(d, arch, 4);
    for (GgufFileType type : {GgufFileType::Q4_K_M, GgufFileType::Q5_K_M, GgufFileType::Q6_K}) {
      SCOPED_TRACE(arch + " " + gguf_file_type_name(type));
      const std::string path = d.str() + "/" + arch + "." + gguf_file_type_name(type) + ".gguf";
      quantize_to_gguf(dir, path, type);
      const auto types = tensor_types(path);
      const GgmlType base = type == GgufFileType::Q4_K_M   ? GgmlType::Q4_K
                            : type == GgufFileType::Q5_K_M ? GgmlType::Q5_K
                                                           : GgmlType::Q6_K;
      EXPECT_EQ(types.at("output.weight"), GgmlType::Q6_K);
      EXPECT_EQ(types.at("token_embd.weight"), base);
      EXPECT_EQ(types.at("blk.0.ffn_gate_exps.weight"), base);
      EXPECT_EQ(types.at("blk.0.ffn_gate_inp.weight"), GgmlType::F32);
      EXPECT_EQ(types.at("blk.1.attn_norm.weight"), GgmlType::F32);
      // use_more_bits over 2 layers picks layer 1 (i >= 7n/8), not layer 0.
      const bool k_m = type != GgufFileType::Q6_K;
      EXPECT_EQ(types.at("blk.0.ffn_down_exps.weight"), base);
      EXPECT_EQ(types.at("blk.1.ffn_down_exps.weight"), k_m ? GgmlType::Q6_K : base);
      const std::string v = arch == "dbrx" ? ".attn_qkv.weight" : ".attn_v.weight";
      EXPECT_EQ(types.at("blk.0" + v), base);
      EXPECT_EQ(types.at("blk.1" + v), k_m ? GgmlType::Q6_K : base);
      if (arch == "qwen2_moe") {
        EXPECT_EQ(types.at("blk.1.ffn_down_shexp.weight"), k_m ? GgmlType::Q6_K : base);
      }
    }
    expect_quantized_equals_dequantized(dir, GgufFileType::Q4_K_M, arch + " q4_k_m");
    expect_quantized_equals_dequantized(dir, GgufFileType::Q5_K_M, arch + " q5_k_m");
  }
}

// mxfp4 (llama.cpp's MXFP4_MOE): the stacked experts MXFP4, every other matrix q8_0, vectors f32; read in place,
// the experts by the MXFP4 kernels.
TEST(GgufQuantized, Mxfp4FilesHoldMxfp4ExpertsAndQ8_0ElsewhereAndEqualTheirDequantizedWeights) {
  test::TempDir d;
  for (const std::string arch : {"mixtral", "qwen2_moe"}) {
    SCOPED_TRACE(arch);
    const std::string dir = synth_model(d, arch, 4), path = d.str() + "/" + arch + ".mxfp4.gguf";
    quantize_to_gguf(dir, path, GgufFileType::MXFP4_MOE);
    const auto types = tensor_types(path);
    for (const char* t : {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"})
      EXPECT_EQ(types.at(std::string("blk.1.") + t + ".weight"), GgmlType::MXFP4) << t;
    for (const char* t : {"output.weight", "token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight",
                          "blk.1.attn_output.weight"})
      EXPECT_EQ(types.at(t), GgmlType::Q8_0) << t;
    EXPECT_EQ(types.at("blk.0.ffn_gate_inp.weight"), GgmlType::F32);
    if (arch == "qwen2_moe") {
      EXPECT_EQ(types.at("blk.0.ffn_down_shexp.weight"), GgmlType::Q8_0);
    }
    {
      const auto model = Model::load(path, LoadOptions{});
      const ExpertWeights& x = model->weights().layers[1].experts[2];
      EXPECT_EQ(x.gate.dtype, DType::MXFP4);
      EXPECT_EQ(x.down.dtype, DType::MXFP4);
    }
    expect_quantized_equals_dequantized(dir, GgufFileType::MXFP4_MOE, arch + " mxfp4");
  }
}

TEST(GgufQuantized, ThreadsDoNotChangeTheFile) {
  test::TempDir d;
  const std::string dir = synth_model(d, "qwen3_moe", 4), a = d.str() + "/a.gguf", b = d.str() + "/b.gguf";
  quantize_to_gguf(dir, a, GgufFileType::Q4_K_M, {}, 1);
  quantize_to_gguf(dir, b, GgufFileType::Q4_K_M, {}, 3);
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  const std::vector<char> ba((std::istreambuf_iterator<char>(fa)), {}), bb((std::istreambuf_iterator<char>(fb)), {});
  EXPECT_GT(ba.size(), 1000000u);
  EXPECT_TRUE(ba == bb);
}

TEST(GgufQuantized, TypeRulesOfLlamaCpp) {
  GgufTypeContext c;
  c.n_layers = 16;
  c.attn_v_count = 16;
  c.n_experts = 8;
  const std::vector<int64_t> square = {4096, 4096}, narrow = {1000, 64}, experts = {14336, 4096, 8};
  // 8 experts: attn_v and attn_k get q8_0, attn_output q5_K (q4_K_M only).
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.3.attn_v.weight", square, c), GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.3.attn_k.weight", square, c), GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.3.attn_output.weight", square, c), GgmlType::Q5_K);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q5_K_M, "blk.3.attn_output.weight", square, c), GgmlType::Q5_K);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.3.attn_q.weight", square, c), GgmlType::Q4_K);
  // ffn_down: use_more_bits(i, 16) = i < 2 || i >= 14 || (i - 2) % 3 == 2.
  for (int i = 0; i < 16; ++i) {
    const bool more = i < 2 || i >= 14 || (i - 2) % 3 == 2;
    EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk." + std::to_string(i) + ".ffn_down_exps.weight",
                               {14336, 4096, 8}, c),
              more ? GgmlType::Q6_K : GgmlType::Q4_K)
        << i;
  }
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.5.ffn_up_exps.weight", experts, c), GgmlType::Q4_K);
  // Not 8 experts: attn_v follows use_more_bits by its index.
  c.n_experts = 60;
  c.attn_v_index = 0;
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.0.attn_v.weight", square, c), GgmlType::Q6_K);
  c.attn_v_index = 3;
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.3.attn_v.weight", square, c), GgmlType::Q4_K);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.3.attn_k.weight", square, c), GgmlType::Q4_K);
  // Never quantized: vectors, norms, the router.
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.0.ffn_gate_inp.weight", {4096, 60}, c), GgmlType::F32);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q8_0, "blk.0.attn_q_norm.weight", {128}, c), GgmlType::F32);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q8_0, "blk.0.ffn_gate_inp_shexp.weight", {4096, 1}, c), GgmlType::F32);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q8_0, "blk.0.attn_q.bias", {4096}, c), GgmlType::F32);
  // The output: q6_K, q8_0 in q8_0 files, and q8_0 when its rows are not whole blocks of the file's type.
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_0, "output.weight", square, c), GgmlType::Q6_K);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q8_0, "output.weight", square, c), GgmlType::Q8_0);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "output.weight", {2080, 1000}, c), GgmlType::Q8_0);
  c.tied_output = true;
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "token_embd.weight", square, c), GgmlType::Q6_K);
  c.tied_output = false;
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "token_embd.weight", square, c), GgmlType::Q4_K);
  // Fallbacks: rows of 1000 are no whole q4_K block (q8_0, where llama.cpp takes q5_0), rows of 1000 no whole
  // 32-block either... 1000 = 31.25 × 32: f16. Rows of 96: q8_0.
  bool fell_back = false;
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.0.ffn_up_exps.weight", {96, 32, 8}, c, &fell_back),
            GgmlType::Q8_0);
  EXPECT_TRUE(fell_back);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q6_K, "blk.0.ffn_up_exps.weight", narrow, c), GgmlType::F16);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q8_0, "blk.0.ffn_up_exps.weight", narrow, c), GgmlType::F16);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::Q4_K_M, "blk.0.ffn_up_exps.weight", experts, c, &fell_back),
            GgmlType::Q4_K);
  EXPECT_FALSE(fell_back);
  // Unquantized files: every weight matrix in the file's type, vectors f32.
  EXPECT_EQ(gguf_tensor_type(GgufFileType::BF16, "blk.0.attn_q.weight", narrow, c), GgmlType::BF16);
  EXPECT_EQ(gguf_tensor_type(GgufFileType::F16, "blk.0.ffn_norm.weight", {4096}, c), GgmlType::F32);
}

// Fixture q8_0 files: what falls back where (the fixtures' rows: 64 wide, Mixtral's experts 48).
TEST(GgufQuantized, FixtureFallbacks) {
  test::TempDir d;
  const std::string q = d.str() + "/m.gguf";
  const QuantizeResult r = quantize_to_gguf(test::fixture_dir("mixtral_f32"), q, GgufFileType::Q4_K_M);
  std::map<std::string, QuantizedTensor> by_name;
  for (const auto& t : r.tensors) by_name.emplace(t.name, t);
  // q4_K's 256-weight blocks do not fit rows of 64: q8_0; rows of 48 fit no 32-block: f16.
  EXPECT_EQ(by_name.at("blk.0.ffn_gate_exps.weight").type, GgmlType::Q8_0);
  EXPECT_TRUE(by_name.at("blk.0.ffn_gate_exps.weight").fell_back);
  EXPECT_EQ(by_name.at("blk.0.ffn_down_exps.weight").type, GgmlType::F16);
  EXPECT_EQ(by_name.at("blk.0.attn_v.weight").type, GgmlType::Q8_0);  // Mixtral's 8 experts
  EXPECT_FALSE(by_name.at("blk.0.attn_v.weight").fell_back);
  EXPECT_EQ(by_name.at("output.weight").type, GgmlType::Q8_0);
  std::map<std::string, GgmlType> reported;
  for (const auto& t : r.tensors) reported[t.name] = t.type;
  EXPECT_EQ(tensor_types(q), reported);
}

TEST(GgufQuantized, WeightsStayQuantizedInTheMapping) {
  test::TempDir d;
  const std::string dir = synth_model(d, "olmoe", 4), q = d.str() + "/q.gguf";
  quantize_to_gguf(dir, q, GgufFileType::Q4_K_M);
  LoadOptions lo;
  const auto m = Model::load(q, lo);
  const GgufFile f = GgufFile::open(q);
  const GgufTensor& gate = *f.find_tensor("blk.0.ffn_gate_exps.weight");
  const ExpertWeights& x = m->weights().layers[0].experts[1];
  EXPECT_EQ(x.gate.dtype, DType::Q4_K);
  EXPECT_EQ(x.gate.rows, 512);
  EXPECT_EQ(x.down.dtype, DType::Q4_K);
  EXPECT_EQ(m->quantized_dtype(), DType::Q4_K);
  // Expert 1's slab, at its place in the file's bytes (a view, not a copy).
  const size_t slab = ggml_row_bytes(GgmlType::Q4_K, 256) * 512;
  EXPECT_EQ(0, std::memcmp(x.gate.data, gate.data + slab, slab));
  EXPECT_EQ(m->weights().layers[0].attn_norm_w.dtype, DType::F32);
}

// Split placement cuts every expert's ffn dimension; a quantized down projection is cut between its blocks.
TEST(GgufQuantized, SplitCutsOnBlocksOrSaysWhatWorks) {
  test::TempDir d;
  const std::string dir = synth_model(d, "mixtral", 4), q = d.str() + "/q.gguf";
  quantize_to_gguf(dir, q, GgufFileType::Q4_K_M);
  const ModelConfig c = load_model_config(q);
  EXPECT_EQ(ffn_block_weights(q), 256);
  EXPECT_EQ(ffn_block_weights(dir), 1);
  LoadOptions lo;
  // 2 ranks: 256 each, whole q4_K blocks (and q6_K in layer 1).
  ExpertPlacement two = ExpertPlacement::split(c.n_layers, c.n_experts, 2);
  two.set_ffn_block(256);
  lo.share = two.share(1);
  EXPECT_EQ(Model::load(q, lo)->weights().layers[1].experts[0].down.cols, 256);
  // 3 ranks cut on blocks: 512 is 2 blocks, too few for 3 ranks.
  ExpertPlacement three = ExpertPlacement::split(c.n_layers, c.n_experts, 3);
  three.set_ffn_block(256);
  try {
    three.require_splittable(c.expert_ffn);
    FAIL() << "3 ranks split 2 blocks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 block(s) of 256 weights that moep does not cut (use at most 2 ranks"),
              std::string::npos)
        << e.what();
  }
  // A split that ignores the blocks (32-weight steps: 160 | 352) is refused by the loader, naming the tensor.
  const ExpertPlacement unaware = ExpertPlacement::split(c.n_layers, c.n_experts, 3);
  lo.share = unaware.share(1);
  try {
    Model::load(q, lo);
    FAIL() << "a split through q4_K blocks loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("blk.0.ffn_down_exps.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blocks of 256"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--placement contiguous"), std::string::npos) << msg;
  }
  // q8_0 blocks are 32 weights.
  const std::string q8 = d.str() + "/q8.gguf";
  quantize_to_gguf(dir, q8, GgufFileType::Q8_0);
  EXPECT_EQ(ffn_block_weights(q8), 32);
}

TEST(GgufQuantized, GpuRefusesQuantizedWeights) {
  test::TempDir d;
  const std::string q = d.str() + "/q.gguf";
  quantize_to_gguf(test::fixture_dir("olmoe_f32"), q, GgufFileType::Q8_0);
  try {
    make_engine(q, gpu::DeviceKind::Gpu);
    FAIL() << "--device gpu ran a q8_0 model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--device gpu: this model's weights are block-quantized (q8_0)"),
              std::string::npos)
        << e.what();
  }
  auto e = make_engine(q, gpu::DeviceKind::Auto);
  EXPECT_FALSE(e->on_gpu());
  EXPECT_NE(e->device_note().find("block-quantized"), std::string::npos) << e->device_note();
}

// N ranks equal 1 on a quantized model (moep logits under mpirun; the engine cuts split slices on the file's
// blocks): q4_K_M on 2 ranks (256 of 512 each: whole q4_K and q6_K blocks), q8_0 on 3 (5, 5 and 6 blocks of 32),
// split and whole experts.
TEST(GgufQuantized, NRanksEqualOne) {
  if (test::mpirun_prefix(1).empty()) GTEST_SKIP() << "mpirun is not installed";
  test::TempDir d;
  const std::string dir = synth_model(d, "qwen2_moe", 4);
  for (const auto& [type, ranks] : {std::pair{GgufFileType::Q4_K_M, 2}, std::pair{GgufFileType::Q8_0, 3}}) {
    const std::string q = d.str() + "/" + gguf_file_type_name(type) + ".gguf";
    quantize_to_gguf(dir, q, type);
    auto run = [&](int n, const std::string& placement) {
      const std::string out = d.str() + "/logits" + std::to_string(n) + placement + ".npy";
      const std::string cmd = (n > 1 ? test::mpirun_prefix(n) : std::string()) + test::moep_binary() + " logits " +
                              q + " --ids 3,17,250,9,64 --out " + out + " --threads 1 --device cpu --placement " +
                              placement;
      std::string text;
      EXPECT_EQ(test::run_command(cmd, &text), 0) << cmd << "\n" << text;
      return read_npy_f32(out);
    };
    const NpyArray one = run(1, "contiguous");
    const int64_t V = one.shape[1];
    for (const std::string placement : {"split", "contiguous"}) {
      SCOPED_TRACE(std::string(gguf_file_type_name(type)) + " on " + std::to_string(ranks) + " ranks, " + placement);
      const NpyArray many = run(ranks, placement);
      ASSERT_EQ(many.shape, one.shape);
      for (int64_t t = 0; t < one.shape[0]; ++t)
        EXPECT_LE(test::rel_max(&many.data[size_t(t * V)], &one.data[size_t(t * V)], size_t(V)), 1e-5)
            << "position " << t;
    }
  }
}

// DeepSeek-V3 (latent attention, sigmoid routing in groups, a dense first layer, a shared expert) as a Q8_0
// deepseek2 GGUF: 2 ranks holding whole experts give the logits of 1.
// 2 ranks equal 1 on the families with their own GGUF forms: DeepSeek's latent attention, and gpt-oss's sinks and
// expert biases (whole experts per rank, and experts split over the ranks, where each rank adds its slice's gate
// and up biases and only the first slice adds down's).
TEST(GgufQuantized, DeepseekAndGptOssNRanksEqualOne) {
  if (test::mpirun_prefix(1).empty()) GTEST_SKIP() << "mpirun is not installed";
  // (The DeepSeek fixture's experts are 32 wide, one Q8_0 block, which moep does not cut: whole experts only.)
  for (const auto& [fx, placement] : {std::pair<std::string, std::string>{"deepseek_v3_bf16", "contiguous"},
                                      {"gpt_oss_bf16", "contiguous"}, {"gpt_oss_bf16", "split"}}) {
      SCOPED_TRACE(fx + " " + placement);
      test::TempDir d;
      const std::string q = d.str() + "/m.gguf";
      quantize_to_gguf(test::fixture_dir(fx), q, GgufFileType::Q8_0);
      auto run = [&](int n) {
        const std::string out = d.str() + "/logits" + std::to_string(n) + ".npy";
        const std::string cmd = (n > 1 ? test::mpirun_prefix(n) : std::string()) + test::moep_binary() + " logits " +
                                q + " --ids 3,17,250,9,64,101,7,33,2,90 --out " + out +
                                " --threads 1 --device cpu --placement " + placement;
        std::string text;
        EXPECT_EQ(test::run_command(cmd, &text), 0) << cmd << "\n" << text;
        return read_npy_f32(out);
      };
      const NpyArray one = run(1), two = run(2);
      ASSERT_EQ(two.shape, one.shape);
      const int64_t V = one.shape[1];
      for (int64_t t = 0; t < one.shape[0]; ++t)
        EXPECT_LE(test::rel_max(&two.data[size_t(t * V)], &one.data[size_t(t * V)], size_t(V)), 1e-5)
            << "position " << t;
    }
}

// A GGUF split in 3 parts (NAME-0000k-of-00003.gguf, as llama.cpp's gguf-split writes them): any part loads the
// whole model, the same logits as the one file (Mixtral: its q/k rows come from whichever part holds them).
TEST(GgufSplit, AnyPartLoadsTheModel) {
  test::TempDir d;
  const std::string one = d.str() + "/one.gguf", prefix = d.str() + "/model";
  quantize_to_gguf(test::fixture_dir("mixtral_bf16"), one, GgufFileType::Q8_0);
  const GgufFile f = GgufFile::open(one);
  std::vector<const GgufTensor*> tensors;
  for (const auto& [name, t] : f.tensors()) tensors.push_back(&t);
  for (int k = 0; k < 3; ++k) {
    GgufWriter w;
    if (k == 0)
      for (const auto& [key, v] : f.metadata()) {
        if (v.type == GgufType::U32) w.set_u32(key, uint32_t(v.raw));
        else if (v.type == GgufType::Bool) w.set_bool(key, v.raw != 0);
        else if (v.type == GgufType::String) w.set_string(key, std::string(v.str));
        else if (v.type == GgufType::F32) {
          float x;
          const uint32_t bits = uint32_t(v.raw);
          std::memcpy(&x, &bits, 4);
          w.set_f32(key, x);
        } else {
          FAIL() << key << ": " << v.type_str();
        }
      }
    w.set_u16("split.no", uint16_t(k));
    w.set_u16("split.count", 3);
    w.set_i32("split.tensors.count", int32_t(tensors.size()));
    for (size_t i = size_t(k); i < tensors.size(); i += 3)
      w.add_tensor(tensors[i]->name, tensors[i]->type, tensors[i]->dims,
                   std::vector<uint8_t>(tensors[i]->data, tensors[i]->data + tensors[i]->nbytes));
    w.write(gguf_split_path(prefix, k + 1, 3));
  }
  const std::vector<int32_t> ids = {1, 7, 200, 33, 5};
  const std::vector<float> want = logits(one, ids, false);
  for (int k = 1; k <= 3; ++k) {
    const std::string part = gguf_split_path(prefix, k, 3);
    expect_close(logits(part, ids, false), want, load_model_config(one).vocab_size, 0.0, part);
    expect_close(logits(part, ids, false, WeightResidence::Map), want, load_model_config(one).vocab_size, 0.0,
                 part + " mapped");
  }
}

// ---- errors ---------------------------------------------------------------------------------------------------

// A copy of a GGUF file through GgufWriter (scalar and string metadata, as moep quantize writes), with `edit`
// deciding each tensor's fate: false drops it; it may change the dims (same byte count). `extra` adds to it.
struct TensorEdit {
  std::vector<int64_t> dims;
  GgmlType type;
  std::vector<uint8_t> bytes;
};
void rewrite_tensors(const std::string& src, const std::string& dst,
                     const std::function<bool(const std::string&, TensorEdit&)>& edit,
                     const std::function<void(GgufWriter&)>& extra = {}) {
  const GgufFile f = GgufFile::open(src);
  GgufWriter w;
  for (const auto& [key, v] : f.metadata()) {
    switch (v.type) {
      case GgufType::U32: w.set_u32(key, uint32_t(v.raw)); break;
      case GgufType::Bool: w.set_bool(key, v.raw != 0); break;
      case GgufType::String: w.set_string(key, std::string(v.str)); break;
      case GgufType::F32: {
        float x;
        const uint32_t bits = uint32_t(v.raw);
        std::memcpy(&x, &bits, 4);
        w.set_f32(key, x);
        break;
      }
      default: FAIL() << key << ": " << v.type_str();
    }
  }
  for (const auto& [name, t] : f.tensors()) {
    TensorEdit e{t.dims, t.type, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
    if (!edit(name, e)) continue;
    w.add_tensor(name, e.type, e.dims, std::move(e.bytes));
  }
  if (extra) extra(w);
  w.write(dst);
}

void rewrite(const std::string& src, const std::string& dst,
             const std::function<bool(const std::string&, std::vector<int64_t>&)>& edit,
             const std::function<void(GgufWriter&)>& extra = {}) {
  rewrite_tensors(src, dst, [&](const std::string& name, TensorEdit& e) { return edit(name, e.dims); }, extra);
}

std::string load_error(const std::string& path) {
  try {
    make_engine(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// llama-quantize's Q4_K_M and Q5_K_M fall back to Q5_0 and Q5_1 for rows that are not whole K-quant blocks; for
// DeepSeek those are attn_k_b's (qk_nope_head_dim, 128 wide). moep decodes them there, where kv_b is rebuilt at load
// (the model then computes what the same file's weights dequantized to f32 compute), and refuses them in a tensor its
// kernels would read, naming the tensor and the type.
TEST(GgufQuantized, LoadOnlyQ5TypesWhereKvBIsRebuilt) {
  test::TempDir d;
  SynthSpec s;
  s.arch = "deepseek_v3";
  s.layers = 2;
  s.d_model = 64;
  s.ffn = 64;
  s.experts = 4;
  s.top_k = 2;
  s.heads = 2;
  s.vocab = 320;
  s.max_position = 256;
  s.q_lora_rank = 32;
  s.kv_lora_rank = 64;
  s.qk_nope_head_dim = 32;
  s.qk_rope_head_dim = 16;
  s.v_head_dim = 32;
  s.groups = 2;
  s.dense_layers = 1;
  s.dtype = "f32";
  write_synthetic_checkpoint(s, d.str() + "/ds", 2);
  const std::string f32 = d.str() + "/f32.gguf";
  quantize_to_gguf(d.str() + "/ds", f32, GgufFileType::F32);
  auto requantize = [](GgmlType type, TensorEdit& e) {
    const int64_t cols = e.dims[0], rows = int64_t(e.bytes.size() / 4) / cols;
    const size_t row_bytes = ggml_row_bytes(type, cols);
    std::vector<uint8_t> out(row_bytes * size_t(rows));
    for (int64_t r = 0; r < rows; ++r)
      quantize_row(type, reinterpret_cast<const float*>(e.bytes.data()) + r * cols, out.data() + size_t(r) * row_bytes,
                   cols);
    e.type = type;
    e.bytes = std::move(out);
  };
  const std::vector<int32_t> ids = {3, 17, 250, 9, 64, 101, 7};
  const std::vector<float> original = logits(f32, ids, false);
  for (GgmlType type : {GgmlType::Q5_0, GgmlType::Q5_1}) {
    const std::string name = ggml_type_traits(type).name;
    const std::string q = d.str() + "/" + name + ".gguf", deq = d.str() + "/" + name + "-deq.gguf";
    rewrite_tensors(f32, q, [&](const std::string& n, TensorEdit& e) {
      if (n.find("attn_k_b") != std::string::npos || n.find("attn_v_b") != std::string::npos) requantize(type, e);
      return true;
    });
    EXPECT_EQ(tensor_types(q)["blk.1.attn_k_b.weight"], type);
    quantize_to_gguf(q, deq, GgufFileType::F32);
    for (bool incremental : {false, true})
      expect_close(logits(q, ids, incremental), logits(deq, ids, incremental), s.vocab, 1e-5,
                   name + (incremental ? " incremental" : " whole"));
    // The parts really were rounded: the logits moved away from the f32 file's.
    const std::vector<float> got = logits(q, ids, false);
    double moved = 0;
    for (size_t t = 0; t < ids.size(); ++t)
      moved = std::max(moved, test::rel_max(&got[t * size_t(s.vocab)], &original[t * size_t(s.vocab)], size_t(s.vocab)));
    EXPECT_GT(moved, 1e-4) << name;

    const std::string bad = d.str() + "/" + name + "-bad.gguf";
    rewrite_tensors(f32, bad, [&](const std::string& n, TensorEdit& e) {
      if (n == "blk.1.attn_q_b.weight") requantize(type, e);
      return true;
    });
    const std::string msg = load_error(bad);
    EXPECT_NE(msg.find("tensor 'blk.1.attn_q_b.weight' is " + name), std::string::npos) << msg;
    EXPECT_NE(msg.find("attn_k_b and attn_v_b"), std::string::npos) << msg;
  }
}

TEST(GgufErrors, ClearMessages) {
  test::TempDir d;
  const std::string good = d.str() + "/good.gguf", bad = d.str() + "/bad.gguf";
  quantize_to_gguf(test::fixture_dir("olmoe_f32"), good, GgufFileType::Q8_0);
  ASSERT_EQ(load_error(good), "");

  // An architecture moep does not run.
  {
    GgufWriter w;
    w.set_string("general.architecture", "gpt2");
    w.set_u32("gpt2.block_count", 1);
    w.write(bad);
    const std::string msg = load_error(bad);
    EXPECT_NE(msg.find("general.architecture is 'gpt2'"), std::string::npos) << msg;
  }
  // A missing tensor.
  rewrite(good, bad, [](const std::string& n, std::vector<int64_t>&) { return n != "blk.1.attn_k.weight"; });
  EXPECT_NE(load_error(bad).find("missing tensor 'blk.1.attn_k.weight'"), std::string::npos) << load_error(bad);
  // A tensor of the wrong shape (ggml [64, 32] stored as [32, 64]: the same bytes).
  rewrite(good, bad, [](const std::string& n, std::vector<int64_t>& dims) {
    if (n == "blk.0.attn_v.weight") dims = {dims[1], dims[0]};
    return true;
  });
  {
    const std::string msg = load_error(bad);
    EXPECT_NE(msg.find("tensor 'blk.0.attn_v.weight' has shape [64, 32] but the config implies [32, 64]"),
              std::string::npos)
        << msg;
  }
  // llama.cpp's old layout of one tensor per expert.
  rewrite(good, bad, [](const std::string& n, std::vector<int64_t>&) { return n != "blk.0.ffn_gate_exps.weight"; },
          [](GgufWriter& w) {
            w.add_tensor("blk.0.ffn_gate.0.weight", GgmlType::F32, {64, 32}, std::vector<uint8_t>(64 * 32 * 4, 0));
          });
  EXPECT_NE(load_error(bad).find("stores each expert as its own tensor"), std::string::npos) << load_error(bad);
  // A tensor nothing uses.
  rewrite(good, bad, [](const std::string&, std::vector<int64_t>&) { return true; }, [](GgufWriter& w) {
    w.add_tensor("blk.0.extra.weight", GgmlType::F32, {4}, std::vector<uint8_t>(16, 1));
  });
  EXPECT_NE(load_error(bad).find("does not use: 'blk.0.extra.weight'"), std::string::npos) << load_error(bad);
  // A type moep does not read: the type id of a q8_0 tensor made q2_K (10) in the file's bytes.
  {
    std::ifstream in(good, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
    const std::string name = "blk.0.attn_q.weight";
    size_t at = 0;
    for (size_t i = 8; i + name.size() <= bytes.size(); ++i) {
      uint64_t len;
      std::memcpy(&len, &bytes[i - 8], 8);
      if (len == name.size() && std::memcmp(&bytes[i], name.data(), name.size()) == 0) {
        at = i + name.size();
        break;
      }
    }
    ASSERT_NE(at, 0u);
    uint32_t n_dims;
    std::memcpy(&n_dims, &bytes[at], 4);
    const size_t type_at = at + 4 + 8 * n_dims;
    uint32_t type;
    std::memcpy(&type, &bytes[type_at], 4);
    ASSERT_EQ(type, uint32_t(GgmlType::Q8_0));
    const uint32_t q2_k = 10;
    std::memcpy(&bytes[type_at], &q2_k, 4);
    std::ofstream(bad, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(bytes.data()),
                                                                 std::streamsize(bytes.size()));
    const std::string msg = load_error(bad);
    EXPECT_NE(msg.find("tensor 'blk.0.attn_q.weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("q2_K"), std::string::npos) << msg;
    EXPECT_NE(msg.find("which moep does not read"), std::string::npos) << msg;
  }
}

// Vectors stored block-quantized (llama.cpp never writes them, but a file may) are made f32 at load: the same
// logits as the file with those values stored f32.
TEST(GgufQuantized, QuantizedVectorsAreMadeF32) {
  test::TempDir d;
  const std::string f32 = d.str() + "/f32.gguf", q = d.str() + "/qvec.gguf", deq = d.str() + "/deq.gguf";
  quantize_to_gguf(test::fixture_dir("olmoe_f32"), f32, GgufFileType::F32);
  auto requantize = [](TensorEdit& e, bool keep_quantized) {
    const int64_t n = e.dims[0];
    std::vector<float> x(static_cast<size_t>(n));
    std::memcpy(x.data(), e.bytes.data(), size_t(n) * 4);
    std::vector<uint8_t> qb(ggml_row_bytes(GgmlType::Q8_0, n));
    quantize_row(GgmlType::Q8_0, x.data(), qb.data(), n);
    if (keep_quantized) {
      e.type = GgmlType::Q8_0;
      e.bytes = qb;
      return;
    }
    dequantize_row(GgmlType::Q8_0, qb.data(), x.data(), n);
    std::memcpy(e.bytes.data(), x.data(), size_t(n) * 4);
  };
  auto is_vector = [](const std::string& name) {
    return name == "blk.0.attn_norm.weight" || name == "blk.1.attn_q_norm.weight" || name == "output_norm.weight";
  };
  rewrite_tensors(f32, q, [&](const std::string& name, TensorEdit& e) {
    if (is_vector(name)) requantize(e, true);
    return true;
  });
  rewrite_tensors(f32, deq, [&](const std::string& name, TensorEdit& e) {
    if (is_vector(name)) requantize(e, false);
    return true;
  });
  const auto m = Model::load(q);
  EXPECT_EQ(m->weights().layers[0].attn_norm_w.dtype, DType::F32);
  EXPECT_EQ(m->weights().final_norm_w.dtype, DType::F32);
  const std::vector<int32_t> ids = {4, 90, 17, 300};
  const int64_t V = m->config().vocab_size;
  expect_close(logits(q, ids, false), logits(deq, ids, false), V, 1e-6, "q8_0 norms");
  // ... and differ from the unrounded norms (the test sees the stored values).
  EXPECT_GT(test::rel_max(logits(q, ids, false).data(), logits(f32, ids, false).data(), size_t(V)), 1e-6);
}

TEST(GgufErrors, UnknownQuantizationType) {
  try {
    parse_gguf_file_type("q3_k_m");
    FAIL() << "q3_k_m parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'q3_k_m' is unknown (expected one of f32, f16, bf16, q8_0, q4_0, q4_k_m"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moep

namespace moep {
namespace {

// `moep quantize` writes the model directory's tokenizer into the GGUF, and re-quantizing a GGUF copies it: the
// three tokenize a text alike and the GGUFs know the end-of-sequence id.
TEST(GgufTokenizer, QuantizeCarriesTheTokenizer) {
  test::TempDir d;
  const std::string dir = d.str() + "/m", q8 = d.str() + "/m-q8_0.gguf", f32 = d.str() + "/m-f32.gguf";
  const std::string bin = test::moep_binary();
  std::string out;
  ASSERT_EQ(test::run_command(bin + " synth " + dir + " --arch mixtral --layers 1 --d-model 64 --ffn 64 --heads 4 "
                                    "--kv-heads 2 --experts 4 --top-k 2 --dtype f32",
                              &out),
            0)
      << out;
  ASSERT_EQ(test::run_command(bin + " quantize " + dir + " " + q8 + " --type q8_0", &out), 0) << out;
  ASSERT_EQ(test::run_command(bin + " quantize " + q8 + " " + f32 + " --type f32", &out), 0) << out;
  const std::string text = "'Hello, world!  It''s 2026: café, naïve, 東京 🙂'";
  std::string want, got;
  ASSERT_EQ(test::run_command(bin + " tokenize " + dir + " " + text, &want), 0) << want;
  EXPECT_NE(want.find(','), std::string::npos) << want;  // several ids
  for (const std::string& g : {q8, f32}) {
    ASSERT_EQ(test::run_command(bin + " tokenize " + g + " " + text, &got), 0) << got;
    EXPECT_EQ(got, want) << g;
    const GgufFile f = GgufFile::open(g);
    EXPECT_NE(f.metadata().count("tokenizer.ggml.tokens"), 0u) << g;
    EXPECT_NE(f.metadata().count("tokenizer.ggml.eos_token_id"), 0u) << g;
  }
}

// gpt-oss in GGUF: what llama.cpp fixes in its graph (the SwiGLU's limit, one window on a periodic pattern, YaRN
// without rounding as the checkpoints state it) is refused by the writer, naming it, rather than written as
// something llama.cpp or moep would read back differently.
TEST(GgufGptOss, WhatGgufCannotStateIsRefused) {
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"swiglu_limit 5", [](nlohmann::json& c) { c["swiglu_limit"] = 5.0; }, "swiglu_limit 5"},
      {"both layers full", [](nlohmann::json& c) { c["layer_types"] = {"full_attention", "full_attention"}; },
       "sliding_window_pattern"},
      {"YaRN truncated", [](nlohmann::json& c) { c["rope_scaling"]["truncate"] = true; }, "truncate true"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    test::TempDir d;
    std::filesystem::copy(test::fixture_dir("gpt_oss_bf16"), d.path() / "m", std::filesystem::copy_options::recursive);
    const std::string cfg = d.str() + "/m/config.json";
    nlohmann::json c = nlohmann::json::parse(std::ifstream(cfg));
    k.edit(c);
    std::ofstream(cfg) << c.dump(2);
    try {
      quantize_to_gguf(d.str() + "/m", d.str() + "/m.gguf", GgufFileType::F32);
      ADD_FAILURE() << "written";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(k.message), std::string::npos) << e.what();
    }
  }
  // A sliding pattern of period 3 (two sliding layers, then a full one) is stated, and read back.
  test::TempDir d;
  SynthSpec s;
  s.arch = "gpt_oss";
  s.layers = 3;
  s.d_model = 64;
  s.ffn = 64;
  s.experts = 4;
  s.top_k = 2;
  s.heads = 4;
  s.kv_heads = 2;
  s.vocab = 320;
  s.max_position = 256;
  s.dtype = "f32";
  write_synthetic_checkpoint(s, d.str() + "/m", 1);
  const std::string cfg = d.str() + "/m/config.json";
  nlohmann::json c = nlohmann::json::parse(std::ifstream(cfg));
  c["layer_types"] = {"sliding_attention", "sliding_attention", "full_attention"};
  c["sliding_window"] = 4;
  std::ofstream(cfg) << c.dump(2);
  quantize_to_gguf(d.str() + "/m", d.str() + "/m.gguf", GgufFileType::F32);
  EXPECT_EQ(GgufFile::open(d.str() + "/m.gguf").get_u32("gpt-oss.attention.sliding_window_pattern"), 3u);
  const ModelConfig a = load_model_config(d.str() + "/m"), b = load_model_config(d.str() + "/m.gguf");
  EXPECT_EQ(a.fingerprint(), b.fingerprint()) << a.summary() << " vs " << b.summary();
  std::vector<int32_t> ids;
  for (int i = 0; i < 10; ++i) ids.push_back(int32_t((i * 31 + 3) % 320));
  expect_close(logits(d.str() + "/m.gguf", ids, false), logits(d.str() + "/m", ids, false), 320, 1e-5, "period 3");
}

}  // namespace
}  // namespace moep
