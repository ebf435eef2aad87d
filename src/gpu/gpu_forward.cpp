#include "gpu/gpu_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "core/clock.h"
#include "core/error.h"

#if MOEP_WITH_VULKAN
#include "gpu/shaders.h"
#include "gpu/vk.h"
#include "model/rope.h"
#endif

namespace moep::gpu {

DeviceKind parse_device_kind(std::string_view name) {
  if (name == "cpu") return DeviceKind::Cpu;
  if (name == "gpu") return DeviceKind::Gpu;
  if (name == "auto") return DeviceKind::Auto;
  fail("unknown device '", name, "': expected cpu, gpu or auto");
}

const char* device_kind_name(DeviceKind k) {
  switch (k) {
    case DeviceKind::Cpu: return "cpu";
    case DeviceKind::Gpu: return "gpu";
    case DeviceKind::Auto: return "auto";
  }
  return "?";
}

namespace {

int64_t pad8(int64_t k) { return (k + 7) / 8 * 8; }

uint64_t mat_bytes(const MatRef& m, bool transposed = false) {
  if (m.empty()) return 0;
  const int64_t n = transposed ? m.cols : m.rows, k = transposed ? m.rows : m.cols;
  return uint64_t(n * pad8(k)) * dtype_size(m.dtype);
}

}  // namespace

std::string unsupported_features(const ModelConfig& c) {
  std::string missing;
  auto add = [&](bool lacks, const char* what) {
    if (lacks) missing += (missing.empty() ? "" : ", ") + std::string(what);
  };
  add(c.attention_sinks, "attention sinks");
  add(!c.layer_window.empty(), "per-layer sliding windows");
  add(c.router_bias || c.expert_bias, "router and expert biases");
  add(c.swiglu_limit > 0, "the clamped SwiGLU");
  add(c.is_mla(), "multi-head latent attention");
  return missing;
}

uint64_t device_bytes_needed(const Model& model, const EngineLimits& lim) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  uint64_t b = mat_bytes(w.embed);
  if (w.lm_head.data != w.embed.data) b += mat_bytes(w.lm_head);
  for (const auto& L : w.layers) {
    b += mat_bytes(L.wq) + mat_bytes(L.wk) + mat_bytes(L.wv) + mat_bytes(L.wo) + mat_bytes(L.router);
    b += mat_bytes(L.dense.gate) + mat_bytes(L.dense.up) + mat_bytes(L.dense.down);
    b += mat_bytes(L.shared_expert.gate) + mat_bytes(L.shared_expert.up) + mat_bytes(L.shared_expert.down) +
         mat_bytes(L.shared_expert_gate);
    for (const auto& e : L.experts)
      if (e.local) b += mat_bytes(e.gate) + mat_bytes(e.up) + mat_bytes(e.down, e.down_in_out);
  }
  const uint64_t kv = uint64_t(2 * c.n_layers * lim.n_slots * lim.max_ctx * c.kv_dim()) * 4;
  const int64_t R = lim.max_rows, pairs = R * std::max<int64_t>(c.top_k, 1);
  const int64_t f = std::max({c.expert_ffn, c.dense_ffn, c.shared_expert_ffn, int64_t(1)});
  const uint64_t act = uint64_t(R * (6 * c.d_model + c.q_dim() * 2 + 2 * c.kv_dim() + c.n_experts + c.vocab_size) +
                                pairs * (c.d_model + f + 4) + R * f) * 4;
  return b + kv + act + (uint64_t(16) << 20);
}

#if !MOEP_WITH_VULKAN

bool built_with_vulkan() { return false; }
bool inside_driver_call() { return false; }
std::vector<DeviceSummary> list_gpus() {
  fail("this build of moep has no GPU backend (CMake found no Vulkan headers or glslc: install libvulkan-dev and "
       "glslc, then rebuild); run on the CPU with --device cpu");
}
struct GpuForward::Impl {};
GpuForward::GpuForward(const Model&, const ExpertPlacement&, Communicator&, const EngineLimits&, int) {
  list_gpus();
}
GpuForward::~GpuForward() = default;
void GpuForward::forward(std::span<const BatchRow>, std::span<const int32_t>, float*) {}
const DeviceSummary& GpuForward::device() const {
  static DeviceSummary none;
  return none;
}
uint64_t GpuForward::device_bytes() const { return 0; }
uint64_t GpuForward::device_objects_created() const { return 0; }
const std::vector<LayerTimes>& GpuForward::layer_times() const {
  static std::vector<LayerTimes> none;
  return none;
}
int64_t GpuForward::head_ns() const { return 0; }
const std::vector<StepSpan>& GpuForward::last_step() const {
  static std::vector<StepSpan> none;
  return none;
}
void GpuForward::reset_times() {}
double GpuForward::measure_read_bandwidth_gbs(uint64_t, int) { return 0; }
GpuCalibration calibrate_gpu(int, uint64_t, int64_t) {
  list_gpus();
  return {};
}

#else

bool built_with_vulkan() { return true; }
bool inside_driver_call() { return driver_call_active(); }

std::vector<DeviceSummary> list_gpus() {
  std::vector<DeviceSummary> out;
  for (const DeviceInfo& d : list_devices())
    out.push_back(DeviceSummary{d.index, d.name, d.type, d.driver, d.device_local_bytes, d.software, d.usable,
                                d.why_unusable});
  return out;
}

namespace {

// Push constants, laid out as the shaders' blocks (std430: 8-byte addresses first, then 4-byte fields).
struct MvPush {
  uint64_t w, w2, x, xrow, y, bias, groups;
  uint32_t N, K, ldw8, ldx, ldy, T, flags, pad;
};
struct EmbedPush {
  uint64_t e, tokens, x;
  uint32_t d, lde, T, pad;
};
struct NormPush {
  uint64_t x, y, w, b, rows;
  uint32_t n, ldx, ldy, flags;
  float eps, pad;
};
struct QkvPush {
  uint64_t qkv, bias, qn, kn, pos, slot, kc, vc, rope;
  uint32_t H, KVH, hd, ctx, flags;
  float eps, clip, pad;
};
struct AttnPush {
  uint64_t q, out, pos, slot, kc, vc;
  uint32_t H, KVH, hd, ctx, ldq;
  float scale;
};
struct RouterPush {
  uint64_t logits, ids, w;
  uint32_t T, E, k, norm;
  float pnorm, pad;
};
struct SortPush {
  uint64_t ids, w, replicas, offsets, pair_row, pair_w, tok_slots, stats;
  uint32_t T, k, E, rank, n_ranks, split;
};
struct CombinePush {
  uint64_t y, pair_w, tok_slots, out, shared, sgate;
  uint32_t d, k, flags, pad;
};
struct MembwPush {
  uint64_t src, dst;
  uint32_t n, pad;
};
struct AddPush {
  uint64_t x, a, b, gate;
  uint32_t n, d, flags, pad;
};
static_assert(sizeof(MvPush) <= Context::kPushBytes && sizeof(QkvPush) <= Context::kPushBytes);

constexpr uint32_t F_GROUPED = 1, F_XROW = 2, F_ACCUM = 4, F_BIAS = 8, F_SWIGLU = 16, F_X4 = 32;
// x read as vec4 when every row starts on 16 bytes (activation buffers start on 256).
uint32_t x4_flag(uint32_t ldx) { return ldx % 4 == 0 ? F_X4 : 0u; }
constexpr uint32_t N_LAYER = 1, N_W = 2, N_B = 4, N_ROWS = 8;
constexpr uint32_t P_BIAS = 1, P_QK_HEAD = 2, P_QK_FULL = 4, P_CLIP = 8;
constexpr uint32_t C_ACCUM = 1, C_SHARED = 2, C_SHARED_GATE = 4;

int dt_index(DType t) { return t == DType::F32 ? 0 : t == DType::F16 ? 1 : 2; }

// A weight matrix on the device: [n, ldw] in the checkpoint's dtype, and the address of its table entry (the
// matrix shaders take a table, so that one dispatch can run every expert of a layer).
struct Mat {
  uint64_t table = 0;  // address of a table entry holding the matrix's address
  uint64_t data = 0;
  uint32_t n = 0, k = 0, ldw8 = 0;
  int dt = 2;
  bool empty() const { return data == 0; }
};

struct Layer {
  uint64_t attn_norm_w = 0, attn_norm_b = 0, ffn_norm_w = 0, ffn_norm_b = 0;
  Mat qkv, wo, router, shared_gate;
  uint64_t qkv_bias = 0, o_bias = 0, q_norm = 0, k_norm = 0;
  bool is_moe = false;
  uint64_t gate_table = 0, up_table = 0, down_table = 0;  // [E] entries each
  uint32_t ffn = 0;                                        // this rank's part of an expert's ffn
  int expert_dt = 2;
  Mat sh_gate, sh_up, sh_down;  // shared expert (or the dense MLP)
  uint64_t replicas = 0;        // [E, 4]
  uint64_t k_cache = 0, v_cache = 0;
};

// A recorded step: command buffers separated by the all-reduce's host round trips, and its timestamp queries.
struct Plan {
  std::vector<VkCommandBuffer> segments;
  VkQueryPool queries = VK_NULL_HANDLE;
  uint32_t n_queries = 0;
  VkQueryPool prof = VK_NULL_HANDLE;  // MOEP_GPU_PROFILE: a stamp after every dispatch
  std::vector<std::string> prof_labels;
};

}  // namespace

struct GpuForward::Impl {
  const Model& model;
  const ModelConfig& c;
  Communicator& comm;
  RankShare share;
  const ExpertPlacement& placement;
  EngineLimits lim;
  Context ctx;
  DeviceSummary summary;

  // Pipelines: [dtype] for the weight-reading shaders.
  VkPipeline mv1[3]{}, mv8[3]{}, mm[3]{}, embed[3]{};
  // Output features per workgroup of the mv1 / mv8 pipelines, and per workgroup column of mm's.
  uint32_t mv1_nr[3]{4, 4, 4}, mv8_nr[3]{2, 2, 2}, mm_bn[3]{64, 64, 64};
  VkPipeline norm = VK_NULL_HANDLE, qkv_post = VK_NULL_HANDLE, attention = VK_NULL_HANDLE, router = VK_NULL_HANDLE,
             moe_sort = VK_NULL_HANDLE, combine = VK_NULL_HANDLE, add = VK_NULL_HANDLE, membw = VK_NULL_HANDLE;

  std::vector<uint64_t> table_host;  // filled while loading, uploaded once
  DeviceSpan tables;
  Mat embed_m, head;
  uint64_t final_norm_w = 0, final_norm_b = 0, rope = 0;
  std::vector<Layer> layers;

  // Activations (device) and the host-visible step buffers.
  uint64_t x = 0, h = 0, qkv = 0, att = 0, rlogits = 0, ids = 0, pw = 0, offsets = 0, pair_row = 0, pair_w = 0,
           tok_slots = 0, eh = 0, ey = 0, m = 0, sh_h = 0, sh_out = 0, sgate = 0, head_in = 0, logits = 0;
  DeviceSpan params_dev, logits_dev, params_host, logits_host, xfer, moe_stats;
  int64_t R = 0, pairs_max = 0;

  std::map<std::pair<int64_t, int64_t>, Plan> plans;
  std::vector<uint64_t> stamps;
  std::vector<LayerTimes> times;
  int64_t head_time = 0;
  std::vector<StepSpan> spans;  // reserved for every phase of a step

  Impl(const Model& mo, const ExpertPlacement& pl, Communicator& cm, const EngineLimits& l, int device)
      : model(mo), c(mo.config()), comm(cm), share(pl.share(cm.rank())), placement(pl), lim(l), ctx(device) {
    if (const std::string missing = unsupported_features(c); !missing.empty())
      fail("the GPU backend does not run ", c.model_type, " yet: it lacks ", missing, "; use --device cpu");
    const DeviceInfo& d = ctx.info();
    summary = DeviceSummary{d.index, d.name, d.type, d.driver, d.device_local_bytes, d.software, d.usable, ""};
    const uint64_t need = device_bytes_needed(mo, l);
    if (need > d.device_local_bytes)
      fail("GPU ", d.index, " (", d.name, ") has ", double(d.device_local_bytes) / 1e9, " GB of device memory; this rank's ",
           "share of the model needs ", double(need) / 1e9, " GB (weights, KV cache, activations). With the experts ",
           "divided over more ranks (mpirun -np N, one GPU each) about ",
           int64_t(std::ceil(double(need) / (0.9 * double(d.device_local_bytes)))),
           " ranks would fit; or use a smaller --ctx/--max-batch, or --device cpu");
    if (c.n_experts > 256) fail("the GPU backend handles up to 256 experts per layer; this model has ", c.n_experts);
    if (comm.size() > 64) fail("the GPU backend handles up to 64 ranks");
    if (c.head_dim > 256 || c.n_heads + c.n_kv_heads > 256)
      fail("the GPU backend handles head_dim ≤ 256 and ≤ 256 heads; this model has head_dim ", c.head_dim);
    build_pipelines();
    upload_weights();
    allocate_activations();
    times.resize(size_t(c.n_layers));
    spans.reserve(size_t(3 * c.n_layers + 1));
  }

  void build_pipelines() {
    const char* dts[3] = {"f32", "f16", "bf16"};
    for (int i = 0; i < 3; ++i) {
      auto get = [&](const char* base) {
        const std::string name = std::string(base) + "_" + dts[i];
        const Shader& s = shader(name.c_str());
        VkPipeline p = ctx.pipeline(s.words, s.n_words, s.name);
        pipe_names[p] = s.name;
        return p;
      };
      mv1[i] = get("mv1");
      mv8[i] = get("mv8");
      mm[i] = get("mm");
      // Tuning: MOEP_GPU_MM=mm2 takes the 64×128 tile shader.
      if (const char* v = std::getenv("MOEP_GPU_MM"); v && std::string(v) == "mm2") {
        mm[i] = get("mm2");
        mm_bn[i] = 128;
      }
      embed[i] = get("embed");
    }
    auto get1 = [&](const char* name) {
      const Shader& s = shader(name);
      VkPipeline p = ctx.pipeline(s.words, s.n_words, s.name);
      pipe_names[p] = s.name;
      return p;
    };
    // Tuning: MOEP_GPU_MV1 / MOEP_GPU_MV8 = a variant of the bf16 shader (n<features>w<threads>[u<in flight>], the
    // list in CMakeLists.txt).
    auto variant = [&](const char* env, const char* base, VkPipeline* p, uint32_t* nr) {
      const char* v = std::getenv(env);
      if (!v || !*v) return;
      *p = get1((std::string(base) + "_" + v + "_bf16").c_str());
      const char* n = std::strchr(v, 'n');
      *nr = n ? uint32_t(std::atoi(n + 1)) : 0;
      if (*nr == 0) fail(env, "=", v, ": expected a variant named [t<rows>]n<features>w<threads>[u<loads>]");
    };
    variant("MOEP_GPU_MV1", "mv1", &mv1[2], &mv1_nr[2]);
    variant("MOEP_GPU_MV8", "mv8", &mv8[2], &mv8_nr[2]);
    norm = get1("norm");
    qkv_post = get1("qkv_post");
    attention = get1("attention");
    router = get1("router");
    moe_sort = get1("moe_sort");
    combine = get1("combine");
    add = get1("add");
    membw = get1("membw");
  }

  DeviceSpan bw_src, bw_dst;
  // Workgroups of the plain read (membw.comp): the best of these is the device's read bandwidth.
  static constexpr uint32_t kMembwGrids[] = {528, 1056, 2112, 4224, 8448};
  // A plain read of `bytes` of device memory, reps times in one submission, at a few grid sizes: the best.
  double read_bandwidth(uint64_t bytes, int reps) {
    if (!bw_src.address) {
      bytes = std::min<uint64_t>(bytes, summary.memory_bytes / 8) & ~uint64_t(15);
      bw_src = ctx.alloc_device(bytes);
      bw_dst = ctx.alloc_device(uint64_t(kMembwGrids[std::size(kMembwGrids) - 1]) * 256 * 4);
    }
    const MembwPush push{bw_src.address, bw_dst.address, uint32_t(bw_src.bytes / 16), 0};
    double best = 0;
    for (uint32_t groups : kMembwGrids) {
      VkCommandBuffer cb = begin();
      for (int i = 0; i < reps; ++i) dispatch(cb, membw, push, groups);
      check(api().vkEndCommandBuffer(cb), "vkEndCommandBuffer");
      // One untimed pass first (in its own submission), then the timed ones.
      VkCommandBuffer warm = begin();
      dispatch(warm, membw, push, groups);
      check(api().vkEndCommandBuffer(warm), "vkEndCommandBuffer");
      ctx.submit_and_wait(warm);
      const int64_t t0 = now_ns();
      ctx.submit_and_wait(cb);
      const double sec = double(now_ns() - t0) * 1e-9;
      best = std::max(best, double(bw_src.bytes) * double(reps) / sec / 1e9);
    }
    return best;
  }

  // ---- Loading ----

  uint64_t table_entry(uint64_t addr) {
    table_host.push_back(addr);
    return table_host.size() - 1;  // an index until tables are uploaded (resolved in finish_tables)
  }

  // Uploads rows [0, N) of the device matrix [N, ldw] from m (or from mᵀ when transposed) at device row row0.
  void put_rows(const DeviceSpan& dst, int64_t row0, int64_t ldw, const MatRef& m, bool transposed) {
    const size_t es = dtype_size(m.dtype);
    const int64_t N = transposed ? m.cols : m.rows, K = transposed ? m.rows : m.cols;
    VkDeviceSize cap = 0;
    uint8_t* st = ctx.staging(&cap);
    const int64_t row_bytes = ldw * int64_t(es);
    const int64_t per = std::max<int64_t>(1, int64_t(cap) / row_bytes);
    MOEP_ASSERT(row_bytes <= int64_t(cap), "a matrix row larger than the staging buffer");
    for (int64_t r0 = 0; r0 < N; r0 += per) {
      const int64_t nr = std::min(per, N - r0);
      std::memset(st, 0, size_t(nr * row_bytes));
      for (int64_t r = 0; r < nr; ++r) {
        uint8_t* out = st + r * row_bytes;
        if (!transposed) {
          std::memcpy(out, m.row_ptr(r0 + r), size_t(K) * es);
        } else {
          for (int64_t k = 0; k < K; ++k) std::memcpy(out + k * int64_t(es), m.row_ptr(k) + (r0 + r) * int64_t(es), es);
        }
      }
      ctx.flush_staging(dst, VkDeviceSize((row0 + r0) * row_bytes), VkDeviceSize(nr * row_bytes));
    }
  }

  Mat upload_mat(const MatRef& m, bool transposed = false) {
    Mat out;
    if (m.empty()) return out;
    out.n = uint32_t(transposed ? m.cols : m.rows);
    out.k = uint32_t(transposed ? m.rows : m.cols);
    const int64_t ldw = pad8(out.k);
    out.ldw8 = uint32_t(ldw / 8);
    out.dt = dt_index(m.dtype);
    const DeviceSpan s = ctx.alloc_device(VkDeviceSize(out.n) * VkDeviceSize(ldw) * dtype_size(m.dtype));
    put_rows(s, 0, ldw, m, transposed);
    out.data = s.address;
    out.table = table_entry(s.address);
    return out;
  }

  // Several matrices of the same dtype and width stacked by rows (q, k and v).
  Mat upload_stacked(std::initializer_list<MatRef> parts) {
    Mat out;
    const MatRef& first = *parts.begin();
    out.k = uint32_t(first.cols);
    out.dt = dt_index(first.dtype);
    for (const MatRef& p : parts) {
      if (p.dtype != first.dtype || p.cols != first.cols) fail("q, k and v projections of different dtypes or widths");
      out.n += uint32_t(p.rows);
    }
    const int64_t ldw = pad8(out.k);
    out.ldw8 = uint32_t(ldw / 8);
    const DeviceSpan s = ctx.alloc_device(VkDeviceSize(out.n) * VkDeviceSize(ldw) * dtype_size(first.dtype));
    int64_t row = 0;
    for (const MatRef& p : parts) {
      put_rows(s, row, ldw, p, false);
      row += p.rows;
    }
    out.data = s.address;
    out.table = table_entry(s.address);
    return out;
  }

  uint64_t upload_f32(const std::vector<float>& v) {
    if (v.empty()) return 0;
    const DeviceSpan s = ctx.alloc_device(v.size() * sizeof(float));
    ctx.upload(s, 0, v.data(), v.size() * sizeof(float));
    return s.address;
  }
  uint64_t upload_vec(const VecRef& v) {
    if (v.empty()) return 0;
    std::vector<float> f(size_t(v.size));
    for (int64_t i = 0; i < v.size; ++i) f[size_t(i)] = v.at(i);
    return upload_f32(f);
  }

  void upload_weights() {
    const ModelWeights& w = model.weights();
    embed_m = upload_mat(w.embed);
    head = w.lm_head.data == w.embed.data && w.lm_head.rows == w.embed.rows ? embed_m : upload_mat(w.lm_head);
    final_norm_w = upload_vec(w.final_norm_w);
    final_norm_b = upload_vec(w.final_norm_b);
    // RoPE tables exactly as the CPU path makes them.
    const int64_t half = c.head_dim / 2;
    std::vector<float> rt(size_t(2 * lim.max_ctx * half));
    rope_tables(c.rope_theta, c.rope_scaling, c.head_dim, lim.max_ctx, rt.data(), rt.data() + lim.max_ctx * half);
    rope = upload_f32(rt);

    const int64_t qd = c.q_dim(), kvd = c.kv_dim(), E = c.n_experts;
    layers.resize(size_t(c.n_layers));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const LayerWeights& L = w.layers[size_t(l)];
      Layer& G = layers[size_t(l)];
      G.attn_norm_w = upload_vec(L.attn_norm_w);
      G.attn_norm_b = upload_vec(L.attn_norm_b);
      G.ffn_norm_w = upload_vec(L.ffn_norm_w);
      G.ffn_norm_b = upload_vec(L.ffn_norm_b);
      G.qkv = upload_stacked({L.wq, L.wk, L.wv});
      G.wo = upload_mat(L.wo);
      if (!L.bq.empty() || !L.bk.empty() || !L.bv.empty()) {
        std::vector<float> b(size_t(qd + 2 * kvd), 0.f);
        for (int64_t i = 0; i < qd && !L.bq.empty(); ++i) b[size_t(i)] = L.bq.at(i);
        for (int64_t i = 0; i < kvd && !L.bk.empty(); ++i) b[size_t(qd + i)] = L.bk.at(i);
        for (int64_t i = 0; i < kvd && !L.bv.empty(); ++i) b[size_t(qd + kvd + i)] = L.bv.at(i);
        G.qkv_bias = upload_f32(b);
      }
      G.o_bias = upload_vec(L.bo);
      G.q_norm = upload_vec(L.q_norm);
      G.k_norm = upload_vec(L.k_norm);
      G.is_moe = L.is_moe;
      if (L.is_moe) {
        G.router = upload_mat(L.router);
        // The experts' tables: E consecutive entries each for gate, up and down (0 where not held).
        std::vector<Mat> gate(static_cast<size_t>(E)), up(static_cast<size_t>(E)), down(static_cast<size_t>(E));
        for (int64_t e = 0; e < E; ++e) {
          const ExpertWeights& x = L.experts[size_t(e)];
          if (!x.local) continue;
          gate[size_t(e)] = upload_mat(x.gate);
          up[size_t(e)] = upload_mat(x.up);
          down[size_t(e)] = upload_mat(x.down, x.down_in_out);
          G.ffn = gate[size_t(e)].n;
          G.expert_dt = gate[size_t(e)].dt;
          if (gate[size_t(e)].dt != up[size_t(e)].dt || gate[size_t(e)].dt != down[size_t(e)].dt)
            fail("layer ", l, " expert ", e, ": gate, up and down of different dtypes");
        }
        G.gate_table = table_host.size();
        for (auto& g : gate) table_host.push_back(g.data);
        G.up_table = table_host.size();
        for (auto& g : up) table_host.push_back(g.data);
        G.down_table = table_host.size();
        for (auto& g : down) table_host.push_back(g.data);
        if (!L.shared_expert.empty()) {
          G.sh_gate = upload_mat(L.shared_expert.gate);
          G.sh_up = upload_mat(L.shared_expert.up);
          G.sh_down = upload_mat(L.shared_expert.down);
          G.shared_gate = upload_mat(L.shared_expert_gate);
        }
        if (!placement.is_split()) {
          std::vector<int32_t> reps(size_t(E * 4), -1);
          for (int64_t e = 0; e < E; ++e) {
            const auto& r = placement.replicas(l, e);
            if (r.size() > 4) fail("the GPU backend handles up to 4 replicas of an expert; layer ", l, " expert ", e,
                                   " has ", r.size());
            for (size_t j = 0; j < r.size(); ++j) reps[size_t(e * 4) + j] = r[j];
          }
          const DeviceSpan s = ctx.alloc_device(reps.size() * 4);
          ctx.upload(s, 0, reps.data(), reps.size() * 4);
          G.replicas = s.address;
        }
      } else {
        G.sh_gate = upload_mat(L.dense.gate);
        G.sh_up = upload_mat(L.dense.up);
        G.sh_down = upload_mat(L.dense.down);
      }
      const VkDeviceSize kv = VkDeviceSize(lim.n_slots * lim.max_ctx * kvd) * 4;
      G.k_cache = ctx.alloc_device(kv).address;
      G.v_cache = ctx.alloc_device(kv).address;
    }
    // The tables: indices become addresses.
    tables = ctx.alloc_device(std::max<size_t>(table_host.size(), 1) * 8);
    ctx.upload(tables, 0, table_host.data(), table_host.size() * 8);
    auto resolve = [&](Mat& m) {
      if (!m.empty()) m.table = tables.address + m.table * 8;
    };
    resolve(embed_m);
    resolve(head);
    for (auto& G : layers) {
      for (Mat* m : {&G.qkv, &G.wo, &G.router, &G.shared_gate, &G.sh_gate, &G.sh_up, &G.sh_down}) resolve(*m);
      if (G.is_moe) {
        G.gate_table = tables.address + G.gate_table * 8;
        G.up_table = tables.address + G.up_table * 8;
        G.down_table = tables.address + G.down_table * 8;
      }
    }
  }

  void allocate_activations() {
    R = lim.max_rows;
    pairs_max = R * std::max<int64_t>(c.top_k, 1);
    const int64_t d = c.d_model, E = std::max<int64_t>(c.n_experts, 1);
    int64_t f = 1;
    for (const auto& G : layers) f = std::max({f, int64_t(G.ffn), int64_t(G.sh_gate.n)});
    auto dev = [&](int64_t floats) { return ctx.alloc_device(VkDeviceSize(std::max<int64_t>(floats, 1)) * 4).address; };
    x = dev(R * d);
    h = dev(R * d);
    qkv = dev(R * (c.q_dim() + 2 * c.kv_dim()));
    att = dev(R * c.q_dim());
    rlogits = dev(R * E);
    ids = dev(pairs_max);
    pw = dev(pairs_max);
    offsets = dev(E + 1);
    pair_row = dev(pairs_max);
    pair_w = dev(pairs_max);
    tok_slots = dev(pairs_max);
    eh = dev(pairs_max * f);
    ey = dev(pairs_max * d);
    m_span = ctx.alloc_device(VkDeviceSize(R * d) * 4);
    m = m_span.address;
    sh_h = dev(R * f);
    sh_out = dev(R * d);
    sgate = dev(R);
    head_in = dev(R * d);
    logits_dev = ctx.alloc_device(VkDeviceSize(R * c.vocab_size) * 4);
    logits = logits_dev.address;
    params_dev = ctx.alloc_device(VkDeviceSize(4 * R) * 4);
    params_host = ctx.alloc_host(VkDeviceSize(4 * R) * 4);
    logits_host = ctx.alloc_host(VkDeviceSize(R * c.vocab_size) * 4);
    xfer = ctx.alloc_host(VkDeviceSize(R * d) * 4);
    moe_stats = ctx.alloc_host(VkDeviceSize(2 * c.n_layers) * 4);
    std::memset(moe_stats.host, 0, size_t(moe_stats.bytes));
  }

  // ---- Recording ----

  uint64_t p_tokens() const { return params_dev.address; }
  uint64_t p_pos() const { return params_dev.address + uint64_t(R) * 4; }
  uint64_t p_slot() const { return params_dev.address + uint64_t(2 * R) * 4; }
  uint64_t p_want() const { return params_dev.address + uint64_t(3 * R) * 4; }

  template <class P>
  void dispatch(VkCommandBuffer cb, VkPipeline p, const P& push, uint32_t gx, uint32_t gy = 1, uint32_t gz = 1) {
    const Api& a = api();
    a.vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, p);
    a.vkCmdPushConstants(cb, ctx.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(P), &push);
    a.vkCmdDispatch(cb, gx, gy, gz);
    barrier(cb);
    if (profiling && recording && recording->prof_labels.size() + 1 < kProfQueries) {
      recording->prof_labels.push_back(str_cat(pipe_names[p], " grid ", gx, "x", gy, "x", gz));
      a.vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, recording->prof,
                            uint32_t(recording->prof_labels.size()));
    }
  }
  // MOEP_GPU_PROFILE=1: a timestamp after every dispatch; the time per shader and grid, summed over the run, is
  // printed to stderr at the end (for tuning the shaders; it adds a little time to each step).
  static constexpr size_t kProfQueries = 2048;
  const bool profiling = std::getenv("MOEP_GPU_PROFILE") != nullptr;
  Plan* recording = nullptr;
  std::map<VkPipeline, std::string> pipe_names;
  std::map<std::string, std::pair<double, int64_t>> prof_acc;
  std::vector<uint64_t> prof_stamps;
  void profile_step(Plan& plan) {
    const size_t n = plan.prof_labels.size() + 1;
    prof_stamps.resize(n);
    DriverCall in_driver;
    if (api().vkGetQueryPoolResults(ctx.device(), plan.prof, 0, uint32_t(n), n * 8, prof_stamps.data(), 8,
                                    VK_QUERY_RESULT_64_BIT) != VK_SUCCESS)
      return;
    for (size_t i = 1; i < n; ++i) {
      auto& e = prof_acc[plan.prof_labels[i - 1]];
      e.first += double(prof_stamps[i] - prof_stamps[i - 1]) * ctx.timestamp_period_ns();
      e.second++;
    }
  }
  void print_profile() {
    if (prof_acc.empty()) return;
    std::vector<std::pair<double, std::string>> rows;
    double total = 0;
    for (const auto& [k, v] : prof_acc) {
      rows.push_back({v.first, str_cat(k, " (", v.second, " runs)")});
      total += v.first;
    }
    std::sort(rows.rbegin(), rows.rend());
    std::fprintf(stderr, "GPU profile (MOEP_GPU_PROFILE): %.3f ms in all\n", total * 1e-6);
    for (const auto& [ns, k] : rows) std::fprintf(stderr, "  %10.3f ms %5.1f%%  %s\n", ns * 1e-6, 100 * ns / total, k.c_str());
  }
  static void barrier(VkCommandBuffer cb) {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_READ_BIT;
    const VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    api().vkCmdPipelineBarrier(cb, st, st | VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, nullptr, 0, nullptr);
  }

  // y[rows, m.n] (+)= x[rows, m.k] · mᵀ. rows ≤ T (or grouped by expert: groups, the expert tables).
  void matmul(VkCommandBuffer cb, const Mat& w, const Mat* w2, uint64_t xa, uint32_t ldx, uint64_t ya, uint32_t ldy,
              int64_t T, uint32_t flags, uint64_t bias = 0) {
    MvPush p{w.table, w2 ? w2->table : 0, xa, 0, ya, bias, 0, w.n, w.k, w.ldw8, ldx, ldy, uint32_t(T),
             flags | (w2 ? F_SWIGLU : 0u) | (bias ? F_BIAS : 0u) | x4_flag(ldx), 0};
    if (T <= 8) {
      const uint32_t nr = (T == 1 ? mv1_nr : mv8_nr)[w.dt];
      dispatch(cb, (T == 1 ? mv1 : mv8)[w.dt], p, (w.n + nr - 1) / nr);
    } else {
      dispatch(cb, mm[w.dt], p, (w.n + mm_bn[w.dt] - 1) / mm_bn[w.dt], uint32_t((T + 63) / 64));
    }
  }
  // The experts of a layer: rows grouped by expert (offsets), tables of E matrices.
  void grouped(VkCommandBuffer cb, uint64_t table, uint64_t table2, uint32_t N, uint32_t K, int dt, uint64_t xa,
               uint64_t xrow, uint32_t ldx, uint64_t ya, uint32_t ldy, int64_t T, uint32_t flags) {
    const uint32_t E = uint32_t(c.n_experts);
    MvPush p{table, table2, xa, xrow, ya, 0, offsets, N, K, uint32_t(pad8(K) / 8), ldx, ldy, uint32_t(T),
             flags | F_GROUPED | (xrow ? F_XROW : 0u) | (table2 ? F_SWIGLU : 0u) | x4_flag(ldx), 0};
    // At most T rows per expert (a token picks an expert once).
    if (T <= 8) {
      const uint32_t nr = (T == 1 ? mv1_nr : mv8_nr)[dt];
      dispatch(cb, (T == 1 ? mv1 : mv8)[dt], p, (N + nr - 1) / nr, E);
    } else {
      dispatch(cb, mm[dt], p, (N + mm_bn[dt] - 1) / mm_bn[dt], uint32_t((T + 63) / 64), E);
    }
  }
  void norm_rows(VkCommandBuffer cb, uint64_t xa, uint64_t ya, uint64_t w, uint64_t b, uint32_t n, int64_t rows,
                 uint64_t row_index = 0) {
    NormPush p{xa, ya, w, b, row_index, n, n, n,
               (c.norm == NormKind::LayerNorm ? N_LAYER : 0u) | (w ? N_W : 0u) | (b ? N_B : 0u) |
                   (row_index ? N_ROWS : 0u),
               c.norm_eps, 0};
    dispatch(cb, norm, p, uint32_t(rows));
  }
  void stamp(VkCommandBuffer cb, Plan& plan, uint32_t i) {
    if (ctx.has_timestamps())
      api().vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, plan.queries, i);
  }

  VkCommandBuffer begin() {
    VkCommandBuffer cb = ctx.new_command_buffer();
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    check(api().vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
    return cb;
  }

  // Timestamps: per layer [start, after attention, after the MoE block / MLP], then head start and end.
  Plan record(int64_t T, int64_t n_want) {
    const Api& a = api();
    Plan plan;
    plan.n_queries = uint32_t(3 * c.n_layers + 2);
    if (ctx.has_timestamps()) plan.queries = ctx.query_pool(plan.n_queries);
    const uint32_t d = uint32_t(c.d_model), qd = uint32_t(c.q_dim()), kvd = uint32_t(c.kv_dim());
    const uint32_t wqkv = qd + 2 * kvd, k = uint32_t(c.top_k), E = uint32_t(c.n_experts);
    const bool multi = comm.size() > 1, split = placement.is_split();

    VkCommandBuffer cb = begin();
    if (ctx.has_timestamps()) a.vkCmdResetQueryPool(cb, plan.queries, 0, plan.n_queries);
    if (profiling && ctx.has_timestamps()) {
      plan.prof = ctx.query_pool(kProfQueries);
      a.vkCmdResetQueryPool(cb, plan.prof, 0, kProfQueries);
      a.vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, plan.prof, 0);
      recording = &plan;
    }
    VkBufferCopy pc{params_host.offset, params_dev.offset, VkDeviceSize(4 * R) * 4};
    a.vkCmdCopyBuffer(cb, params_host.buffer, params_dev.buffer, 1, &pc);
    barrier(cb);
    dispatch(cb, embed[embed_m.dt], EmbedPush{embed_m.data, p_tokens(), x, d, embed_m.ldw8 * 8, uint32_t(T), 0},
             (d + 255) / 256, uint32_t(T));

    for (int64_t l = 0; l < c.n_layers; ++l) {
      const Layer& G = layers[size_t(l)];
      const uint32_t q0 = uint32_t(3 * l);
      stamp(cb, plan, q0);
      norm_rows(cb, x, h, G.attn_norm_w, G.attn_norm_b, d, T);
      matmul(cb, G.qkv, nullptr, h, d, qkv, wqkv, T, 0);
      uint32_t pf = (G.qkv_bias ? P_BIAS : 0u) | (c.clip_qkv > 0 ? P_CLIP : 0u);
      if (c.qk_norm == QKNorm::Full) pf |= P_QK_FULL;
      if (c.qk_norm == QKNorm::PerHead) pf |= P_QK_HEAD;
      dispatch(cb, qkv_post,
               QkvPush{qkv, G.qkv_bias, G.q_norm, G.k_norm, p_pos(), p_slot(), G.k_cache, G.v_cache, rope,
                       uint32_t(c.n_heads), uint32_t(c.n_kv_heads), uint32_t(c.head_dim), uint32_t(lim.max_ctx), pf,
                       c.norm_eps, c.clip_qkv, 0},
               uint32_t(T));
      dispatch(cb, attention,
               AttnPush{qkv, att, p_pos(), p_slot(), G.k_cache, G.v_cache, uint32_t(c.n_heads),
                        uint32_t(c.n_kv_heads), uint32_t(c.head_dim), uint32_t(lim.max_ctx), wqkv,
                        1.f / std::sqrt(float(c.head_dim))},
               uint32_t(c.n_heads), uint32_t(T));
      matmul(cb, G.wo, nullptr, att, qd, x, d, T, F_ACCUM, G.o_bias);
      norm_rows(cb, x, h, G.ffn_norm_w, G.ffn_norm_b, d, T);
      stamp(cb, plan, q0 + 1);
      if (!G.is_moe) {
        matmul(cb, G.sh_gate, &G.sh_up, h, d, sh_h, G.sh_gate.n, T, 0);
        matmul(cb, G.sh_down, nullptr, sh_h, G.sh_down.k, x, d, T, F_ACCUM);
        stamp(cb, plan, q0 + 2);
        continue;
      }
      matmul(cb, G.router, nullptr, h, d, rlogits, E, T, 0);
      dispatch(cb, router,
               RouterPush{rlogits, ids, pw, uint32_t(T), E, k,
                          c.topk_norm == TopKNorm::Sum ? 1u : c.topk_norm == TopKNorm::PNorm ? 2u : 0u,
                          float(c.topk_pnorm), 0},
               uint32_t((T + 63) / 64));
      dispatch(cb, moe_sort,
               SortPush{ids, pw, G.replicas, offsets, pair_row, pair_w, tok_slots,
                        moe_stats.address + uint64_t(l) * 8, uint32_t(T), k, E,
                        uint32_t(comm.rank()), uint32_t(comm.size()), split ? 1u : 0u},
               1);
      const bool shared = !G.sh_gate.empty();
      if (shared) {
        matmul(cb, G.sh_gate, &G.sh_up, h, d, sh_h, G.sh_gate.n, T, 0);
        matmul(cb, G.sh_down, nullptr, sh_h, G.sh_down.k, sh_out, d, T, 0);
        if (!G.shared_gate.empty()) matmul(cb, G.shared_gate, nullptr, h, d, sgate, 1, T, 0);
      }
      const uint32_t f = G.ffn;
      if (f > 0) {
        grouped(cb, G.gate_table, G.up_table, f, d, G.expert_dt, h, pair_row, d, eh, f, T, 0);
        grouped(cb, G.down_table, 0, d, f, G.expert_dt, eh, 0, f, ey, d, T, 0);
      }
      // The shared expert joins before the all-reduce when its slices must be summed (split) or there is nothing to
      // sum (one rank); whole, every rank has all of it and adds it after.
      const bool shared_now = shared && (split || !multi);
      const uint32_t sflags = (shared_now ? C_SHARED : 0u) | (shared_now && !G.shared_gate.empty() ? C_SHARED_GATE : 0u);
      // A rank that holds none of this layer's experts (f == 0) is given no pairs by the sort: its sum is zero.
      if (!multi) {
        dispatch(cb, combine, CombinePush{ey, pair_w, tok_slots, x, sh_out, sgate, d, k, C_ACCUM | sflags, 0},
                 (d + 255) / 256, uint32_t(T));
        stamp(cb, plan, q0 + 2);
        continue;
      }
      dispatch(cb, combine, CombinePush{ey, pair_w, tok_slots, m, sh_out, sgate, d, k, sflags, 0}, (d + 255) / 256,
               uint32_t(T));
      stamp(cb, plan, q0 + 2);
      VkBufferCopy cp{m_span.offset, xfer.offset, VkDeviceSize(T * d) * 4};
      a.vkCmdCopyBuffer(cb, m_span.buffer, xfer.buffer, 1, &cp);
      barrier(cb);
      check(a.vkEndCommandBuffer(cb), "vkEndCommandBuffer");
      plan.segments.push_back(cb);
      cb = begin();
      const bool shared_after = shared && !split;
      dispatch(cb, add,
               AddPush{x, xfer.address, sh_out, sgate, uint32_t(T * d), d,
                       (shared_after ? 1u : 0u) | (shared_after && !G.shared_gate.empty() ? 2u : 0u), 0},
               uint32_t((T * d + 255) / 256));
    }
    // Head: the final norm of the rows that want logits, then the output head.
    stamp(cb, plan, uint32_t(3 * c.n_layers));
    if (n_want > 0) {
      norm_rows(cb, x, head_in, final_norm_w, final_norm_b, d, n_want, p_want());
      matmul(cb, head, nullptr, head_in, d, logits, uint32_t(c.vocab_size), n_want, 0);
      VkBufferCopy cp{logits_dev.offset, logits_host.offset, VkDeviceSize(n_want * c.vocab_size) * 4};
      a.vkCmdCopyBuffer(cb, logits_dev.buffer, logits_host.buffer, 1, &cp);
      barrier(cb);
    }
    stamp(cb, plan, uint32_t(3 * c.n_layers + 1));
    check(a.vkEndCommandBuffer(cb), "vkEndCommandBuffer");
    plan.segments.push_back(cb);
    recording = nullptr;
    return plan;
  }

  DeviceSpan m_span;  // m, for the copy to the host

  void forward(std::span<const BatchRow> rows, std::span<const int32_t> want, float* out) {
    const int64_t T = int64_t(rows.size()), n_want = int64_t(want.size());
    auto it = plans.find({T, n_want});
    if (it == plans.end()) {
      it = plans.emplace(std::make_pair(T, n_want), Plan{}).first;
      it->second = record(T, n_want);  // recording points at the plan while it is made
    }
    Plan& plan = it->second;
    int32_t* p = reinterpret_cast<int32_t*>(params_host.host);
    for (int64_t t = 0; t < T; ++t) {
      p[t] = rows[size_t(t)].token;
      p[R + t] = rows[size_t(t)].pos;
      p[2 * R + t] = rows[size_t(t)].slot;
    }
    for (int64_t i = 0; i < n_want; ++i) p[3 * R + i] = want[size_t(i)];
    const int64_t d = c.d_model;
    int64_t l = 0;
    spans.clear();
    const int64_t t_submit = now_ns();
    for (size_t s = 0; s < plan.segments.size(); ++s) {
      ctx.submit_and_wait(plan.segments[s]);
      if (s + 1 < plan.segments.size()) {
        // The MoE layer whose all-reduce this is: the next MoE layer from l.
        while (l < c.n_layers && !layers[size_t(l)].is_moe) ++l;
        const int64_t t0 = now_ns();
        comm.allreduce_sum(reinterpret_cast<float*>(xfer.host), size_t(T * d));
        const int64_t t1 = now_ns();
        if (l < c.n_layers) times[size_t(l)].allreduce_ns += t1 - t0;
        spans.push_back(StepSpan{StepSpan::AllReduce, int32_t(l), t0, t1});
        ++l;
      }
    }
    if (n_want > 0)
      std::memcpy(out, logits_host.host, size_t(n_want * c.vocab_size) * sizeof(float));
    if (ctx.has_timestamps()) {
      stamps.resize(plan.n_queries);
      DriverCall in_driver;
      if (api().vkGetQueryPoolResults(ctx.device(), plan.queries, 0, plan.n_queries, stamps.size() * 8, stamps.data(), 8,
                                      VK_QUERY_RESULT_64_BIT) == VK_SUCCESS) {
        const double ns = ctx.timestamp_period_ns();
        auto span_ns = [&](uint32_t a, uint32_t b) {
          return stamps[b] >= stamps[a] ? int64_t(double(stamps[b] - stamps[a]) * ns) : 0;
        };
        auto host = [&](uint32_t i) { return t_submit + span_ns(0, i); };
        for (int64_t i = 0; i < c.n_layers; ++i) {
          const uint32_t q = uint32_t(3 * i);
          times[size_t(i)].attention_ns += span_ns(q, q + 1);
          times[size_t(i)].moe_ns += span_ns(q + 1, q + 2);
          spans.push_back(StepSpan{StepSpan::Attention, int32_t(i), host(q), host(q + 1)});
          spans.push_back(StepSpan{layers[size_t(i)].is_moe ? StepSpan::Moe : StepSpan::Dense, int32_t(i), host(q + 1),
                                   host(q + 2)});
        }
        const uint32_t hq = uint32_t(3 * c.n_layers);
        head_time += span_ns(hq, hq + 1);
        spans.push_back(StepSpan{StepSpan::Head, -1, host(hq), host(hq + 1)});
      }
    }
    if (plan.prof) profile_step(plan);
    auto* ms = reinterpret_cast<int32_t*>(moe_stats.host);
    for (int64_t i = 0; i < c.n_layers; ++i) {
      times[size_t(i)].experts_touched += ms[2 * i];
      times[size_t(i)].expert_pairs += ms[2 * i + 1];
      ms[2 * i] = ms[2 * i + 1] = 0;
    }
    for (auto& t : times) t.calls++;
  }
};

GpuCalibration calibrate_gpu(int device, uint64_t bytes, int64_t d_model) {
  Context ctx(device);
  const Api& a = api();
  GpuCalibration r;
  const DeviceInfo& d = ctx.info();
  r.device = DeviceSummary{d.index, d.name, d.type, d.driver, d.device_local_bytes, d.software, d.usable, ""};
  bytes = std::max<uint64_t>(std::min<uint64_t>(bytes, d.device_local_bytes / 8), uint64_t(1) << 20);
  auto pipe = [&](const char* name) {
    const Shader& s = shader(name);
    return ctx.pipeline(s.words, s.n_words, s.name);
  };
  const VkPipeline membw = pipe("membw"), mv = pipe("mv1_bf16");
  auto begin = [&] {
    VkCommandBuffer cb = ctx.new_command_buffer();
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    check(a.vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
    return cb;
  };
  auto barrier = [&](VkCommandBuffer cb) {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_HOST_READ_BIT;
    const VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    a.vkCmdPipelineBarrier(cb, st, st | VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, nullptr, 0, nullptr);
  };
  auto run = [&](VkPipeline p, const auto& push, uint32_t gx, VkCommandBuffer cb) {
    a.vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, p);
    a.vkCmdPushConstants(cb, ctx.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(push), &push);
    a.vkCmdDispatch(cb, gx, 1, 1);
    barrier(cb);
  };
  auto timed = [&](VkCommandBuffer cb) {
    check(a.vkEndCommandBuffer(cb), "vkEndCommandBuffer");
    ctx.submit_and_wait(cb);  // once to warm up
    const int64_t t0 = now_ns();
    ctx.submit_and_wait(cb);
    return double(now_ns() - t0) * 1e-9;
  };
  const int reps = 10;
  // Read bandwidth.
  // The best of a few grid sizes, as bench's read test.
  const uint32_t grids[] = {528, 1056, 2112, 4224, 8448};
  const DeviceSpan src = ctx.alloc_device(bytes), dst = ctx.alloc_device(uint64_t(8448) * 256 * 4);
  for (uint32_t groups : grids) {
    VkCommandBuffer cb = begin();
    for (int i = 0; i < reps; ++i) run(membw, MembwPush{src.address, dst.address, uint32_t(bytes / 16), 0}, groups, cb);
    r.read_gbs = std::max(r.read_gbs, double(bytes) * reps / timed(cb) / 1e9);
  }
  // The decode shader on a bf16 matrix filling the same bytes: [N, K] with K = 8192.
  {
    const uint32_t K = 8192, N = uint32_t(bytes / (2 * K));
    const DeviceSpan x = ctx.alloc_device(uint64_t(K) * 4), y = ctx.alloc_device(uint64_t(N) * 4);
    const DeviceSpan table = ctx.alloc_device(8);
    ctx.upload(table, 0, &src.address, 8);
    const std::vector<float> ones(K, 1.f);
    ctx.upload(x, 0, ones.data(), uint64_t(K) * 4);
    VkCommandBuffer cb = begin();
    const MvPush p{table.address, 0, x.address, 0, y.address, 0, 0, N, K, K / 8, K, N, 1, 32 /* F_X4 */, 0};
    for (int i = 0; i < reps; ++i) run(mv, p, (N + 3) / 4, cb);
    r.matvec_gbs = double(uint64_t(N) * K * 2) * reps / timed(cb) / 1e9;
    // Cost per dispatch: 1000 tiny products (4 × 64) back to back, against one.
    const MvPush tiny{table.address, 0, x.address, 0, y.address, 0, 0, 4, 64, 8, K, N, 1, 32, 0};
    VkCommandBuffer one = begin(), many = begin();
    run(mv, tiny, 1, one);
    for (int i = 0; i < 1000; ++i) run(mv, tiny, 1, many);
    const double t1 = timed(one), tn = timed(many);
    r.dispatch_us = (tn - t1) / 999 * 1e6;
    r.submit_us = t1 * 1e6;
  }
  // The all-reduce's host round trip for one decode row: copy d_model floats to host memory, wait; the next
  // submission reads them back (as the add shader would).
  {
    const DeviceSpan dev = ctx.alloc_device(uint64_t(d_model) * 4), host = ctx.alloc_host(uint64_t(d_model) * 4);
    VkCommandBuffer down = begin();
    VkBufferCopy cp{dev.offset, host.offset, uint64_t(d_model) * 4};
    a.vkCmdCopyBuffer(down, dev.buffer, host.buffer, 1, &cp);
    barrier(down);
    check(a.vkEndCommandBuffer(down), "vkEndCommandBuffer");
    VkCommandBuffer up = begin();
    VkBufferCopy cu{host.offset, dev.offset, uint64_t(d_model) * 4};
    a.vkCmdCopyBuffer(up, host.buffer, dev.buffer, 1, &cu);
    barrier(up);
    check(a.vkEndCommandBuffer(up), "vkEndCommandBuffer");
    std::vector<double> t;
    for (int i = 0; i < 51; ++i) {
      const int64_t t0 = now_ns();
      ctx.submit_and_wait(down);
      ctx.submit_and_wait(up);
      if (i > 0) t.push_back(double(now_ns() - t0) * 1e-3);
    }
    std::sort(t.begin(), t.end());
    r.roundtrip_us = t[t.size() / 2];
  }
  r.bytes = int64_t(bytes);
  return r;
}

GpuForward::GpuForward(const Model& model, const ExpertPlacement& placement, Communicator& comm,
                       const EngineLimits& limits, int device)
    : impl_(std::make_unique<Impl>(model, placement, comm, limits, device)) {}
GpuForward::~GpuForward() { impl_->print_profile(); }
void GpuForward::forward(std::span<const BatchRow> rows, std::span<const int32_t> want, float* logits) {
  impl_->forward(rows, want, logits);
}
const DeviceSummary& GpuForward::device() const { return impl_->summary; }
uint64_t GpuForward::device_bytes() const { return impl_->ctx.device_bytes_allocated(); }
uint64_t GpuForward::device_objects_created() const { return impl_->ctx.objects_created(); }
const std::vector<LayerTimes>& GpuForward::layer_times() const { return impl_->times; }
int64_t GpuForward::head_ns() const { return impl_->head_time; }
const std::vector<StepSpan>& GpuForward::last_step() const { return impl_->spans; }
double GpuForward::measure_read_bandwidth_gbs(uint64_t bytes, int reps) { return impl_->read_bandwidth(bytes, reps); }
void GpuForward::reset_times() {
  std::fill(impl_->times.begin(), impl_->times.end(), LayerTimes{});
  impl_->head_time = 0;
}

#endif

}  // namespace moep::gpu
