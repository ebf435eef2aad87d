#include "model/model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>
#include <tuple>

#include "core/error.h"
#include "io/gguf.h"
#include "model/arch.h"
#include "model/gguf_model.h"

namespace moep {

namespace {

// MemAvailable of /proc/meminfo in bytes (what can be had without swapping, page cache included); 0 if unknown.
size_t mem_available_bytes() { return proc_kb_field_bytes("/proc/meminfo", "MemAvailable"); }

std::string gb(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f GB", double(bytes) / 1e9);
  return b;
}

// `count` pieces of `bytes`, `stride` apart in the file from `offset`, to dst densely (count 1: one range).
struct CopyJob {
  const std::string* path;
  size_t offset, bytes;
  uint8_t* dst;
  size_t count = 1, stride = 0;
};

// Reads every job's bytes into place with a few threads (pread: no page faults on the mappings, several
// requests in flight), in 32 MiB pieces; progress is reported from the calling thread. Throws moep::Error
// naming the file if a read fails or comes up short (a file truncated after its index was checked).
void copy_file_ranges(const std::vector<CopyJob>& jobs, size_t total, bool drop_cache,
                      const std::function<void(size_t, size_t)>& progress) {
  std::map<std::string, int> fds;
  auto close_all = [&] {
    for (auto& [path, fd] : fds) ::close(fd);
  };
  struct Piece {  // rows pieces of `bytes`, `stride` apart (rows 1: a plain range)
    int fd;
    const std::string* path;
    size_t offset, bytes;
    uint8_t* dst;
    size_t rows = 1, stride = 0;
  };
  std::vector<Piece> pieces;
  constexpr size_t kPiece = size_t(32) << 20;
  for (const auto& j : jobs) {
    auto it = fds.find(*j.path);
    if (it == fds.end()) {
      const int fd = ::open(j.path->c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        const int e = errno;
        close_all();
        fail("cannot open ", *j.path, ": ", std::strerror(e));
      }
      it = fds.emplace(*j.path, fd).first;
    }
    if (j.count == 1) {
      for (size_t o = 0; o < j.bytes; o += kPiece)
        pieces.push_back({it->second, j.path, j.offset + o, std::min(kPiece, j.bytes - o), j.dst + o});
    } else {
      const size_t per = std::max<size_t>(1, kPiece / std::max<size_t>(1, j.bytes));
      for (size_t r = 0; r < j.count; r += per)
        pieces.push_back({it->second, j.path, j.offset + r * j.stride, j.bytes, j.dst + r * j.bytes,
                          std::min(per, j.count - r), j.stride});
    }
  }
  std::atomic<size_t> next{0}, done{0};
  std::mutex err_mu;
  std::string err;
  auto work = [&](bool report) {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= pieces.size()) return;
      const Piece& p = pieces[i];
      for (size_t row = 0; row < p.rows; ++row) {
        const size_t off = p.offset + row * p.stride;
        uint8_t* dst = p.dst + row * p.bytes;
        size_t got = 0;
        while (got < p.bytes) {
          const ssize_t r = ::pread(p.fd, dst + got, p.bytes - got, off_t(off + got));
          if (r < 0 && errno == EINTR) continue;
          if (r <= 0) {
            std::lock_guard<std::mutex> lock(err_mu);
            if (err.empty())
              err = str_cat("cannot read ", p.bytes, " bytes at offset ", off + got, " of ", *p.path, ": ",
                            r < 0 ? std::strerror(errno) : "the file ends there (truncated after it was opened?)");
            next.store(pieces.size());
            return;
          }
          got += size_t(r);
        }
      }
      const size_t extent = (p.rows - 1) * p.stride + p.bytes, copied = p.rows * p.bytes;
#ifdef POSIX_FADV_DONTNEED
      if (drop_cache) ::posix_fadvise(p.fd, off_t(p.offset), off_t(extent), POSIX_FADV_DONTNEED);
#else
      (void)drop_cache;
      (void)extent;
#endif
      const size_t d = done.fetch_add(copied) + copied;
      if (report && progress) progress(d, total);
    }
  };
  const int helpers = int(std::min<size_t>(pieces.size(), std::clamp(std::thread::hardware_concurrency(), 1u, 4u))) - 1;
  std::vector<std::thread> threads;
  for (int t = 0; t < helpers; ++t) {
    try {
      threads.emplace_back(work, false);
    } catch (const std::system_error&) {
      break;  // helpers only speed the copy up: go on with those that started
    }
  }
  work(true);
  for (auto& t : threads) t.join();
  close_all();
  if (!err.empty()) fail(err);
  if (progress) progress(total, total);
}

}  // namespace

DType Model::quantized_dtype() const {
  std::vector<const MatRef*> mats = {&weights_.embed, &weights_.lm_head};
  for (const auto& L : weights_.layers) {
    for (const MatRef* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.router, &L.shared_expert_gate, &L.shared_expert.gate,
                            &L.shared_expert.up, &L.shared_expert.down, &L.dense.gate, &L.dense.up, &L.dense.down})
      mats.push_back(m);
    for (const auto& x : L.experts)
      for (const MatRef* m : {&x.gate, &x.up, &x.down}) mats.push_back(m);
  }
  for (const MatRef* m : mats)
    if (!m->empty() && dtype_is_quantized(m->dtype)) return m->dtype;
  return DType::F32;
}

WeightResidence parse_weight_residence(std::string_view name) {
  if (name == "auto") return WeightResidence::Auto;
  if (name == "copy") return WeightResidence::Copy;
  if (name == "map") return WeightResidence::Map;
  fail("weights residence '", name, "' is unknown (expected auto, copy or map)");
}

WeightResidence residence_on_host(WeightResidence asked, int ranks_on_host) {
  return asked == WeightResidence::Auto && ranks_on_host > 1 ? WeightResidence::Map : asked;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opts) {
  return load(dir, load_model_config(dir), opts);
}

std::unique_ptr<Model> Model::load(const std::string& dir, ModelConfig config, const LoadOptions& opts) {
  auto m = std::make_unique<Model>();
  m->dir_ = dir;
  m->config_ = std::move(config);
  // A binder over the checkpoint's tensors, and what binds them: the family's names, or llama.cpp's in a GGUF.
  std::function<WeightBinder()> make_binder;
  void (*bind)(const ModelConfig&, WeightBinder&, ModelWeights&) = nullptr;
  if (is_gguf_path(dir)) {
    m->gguf_ = std::make_unique<GgufFile>(GgufFile::open(dir));
    m->gguf_tensors_ = gguf_tensor_index(*m->gguf_);
    for (const auto& f : m->gguf_->files()) m->checkpoint_bytes_ += f->size();
    make_binder = [&m, &opts] { return WeightBinder(m->gguf_tensors_, opts.share, &m->converted_); };
    bind = bind_gguf_weights;
  } else {
    m->index_ = SafetensorsIndex::open(dir);
    // Every layer has tensors of its own: a config with more layers than the checkpoint has tensors is refused
    // before anything is sized by the layer count.
    if (size_t(m->config_.n_layers) > m->index_.tensors().size())
      fail(dir, ": the config says ", m->config_.n_layers, " layers, but the checkpoint holds only ",
           m->index_.tensors().size(), " tensors");
    m->checkpoint_bytes_ = m->index_.total_bytes();
    make_binder = [&m, &opts] { return WeightBinder(m->index_.tensors(), opts.share, &m->converted_); };
    const ArchSpec* arch = find_arch(m->config_.model_type);
    MOEP_ASSERT(arch != nullptr);
    bind = arch->bind;
  }
  WeightBinder binder = make_binder();
  bind(m->config_, binder, m->weights_);
  binder.finish();
  m->bytes_used_ = binder.bytes_read();
  m->residence_ = "mapped from the checkpoint files";

  if (opts.residence != WeightResidence::Map) {
    // One copy per distinct byte range (a tied head and embedding are one range), each 64-byte aligned.
    const auto& ranges = binder.read_ranges();
    std::map<std::tuple<const MappedFile*, size_t, size_t, size_t>, size_t> at;  // range -> offset in the arena
    std::vector<size_t> offset(ranges.size());
    size_t total = 0;
    for (size_t k = 0; k < ranges.size(); ++k) {
      const auto key = std::make_tuple(ranges[k].file, ranges[k].offset, ranges[k].bytes, ranges[k].count);
      auto it = at.find(key);
      if (it == at.end()) {
        it = at.emplace(key, total).first;
        total += (ranges[k].total() + 63) / 64 * 64;
      }
      offset[k] = it->second;
    }
    const size_t avail = opts.memory_available ? opts.memory_available : mem_available_bytes();
    const size_t margin = size_t(1) << 30;
    if (avail != 0 && total + std::min(margin, avail / 8) > avail) {
      const std::string why = str_cat("copying the weights needs ", gb(total), " of anonymous memory but only ",
                                      gb(avail), " is available (MemAvailable, less a reserve of ", gb(std::min(margin, avail / 8)), ")");
      if (opts.residence == WeightResidence::Copy) fail(why, "; use --weights map to read them in place");
      m->residence_ = str_cat("mapped from the checkpoint files (not copied: ", why, ")");
    } else {
      m->arena_ = PageBuffer(total, true);
      std::vector<const uint8_t*> dest(ranges.size());
      for (size_t k = 0; k < ranges.size(); ++k) dest[k] = m->arena_.data() + offset[k];
      std::vector<CopyJob> jobs;
      std::set<size_t> seen;
      for (size_t k = 0; k < ranges.size(); ++k)
        if (seen.insert(offset[k]).second)
          jobs.push_back({&ranges[k].file->path(), ranges[k].offset, ranges[k].bytes, m->arena_.data() + offset[k],
                          ranges[k].count, ranges[k].stride});
      // When the copy and the files' cached pages cannot both stay in memory, drop the cached pages behind the
      // copy (pages another process maps are kept): reclaiming them under pressure measured 1.2-3x slower here.
      copy_file_ranges(jobs, total, avail != 0 && 2 * total > avail, opts.progress);
      // Bind again with every view pointing into the copies.
      WeightBinder relocated = make_binder();
      relocated.relocate_to(std::move(dest));
      m->weights_ = ModelWeights{};
      bind(m->config_, relocated, m->weights_);
      MOEP_ASSERT(relocated.read_ranges().size() == ranges.size());
      for (size_t k = 0; k < ranges.size(); ++k) m->spans_.push_back({m->arena_.data() + offset[k], ranges[k].total()});
      bool locked = true;
      if (opts.mlock) locked = ::mlock(m->arena_.data(), total) == 0;
      m->locked_ = opts.mlock && locked;
      const size_t huge = anon_huge_page_bytes();
      m->residence_ = str_cat("copied into anonymous memory (", gb(total), "; ", gb(std::min(huge, total)),
                              " on 2 MiB pages)");
      return m;
    }
  }

  // Read in place: a strided range is one span per piece (its other columns belong to other ranks).
  for (const auto& r : binder.read_ranges())
    for (size_t i = 0; i < r.count; ++i) m->spans_.push_back({r.file->data() + r.offset + i * r.stride, r.bytes});
  if (opts.prefault || opts.mlock) {
    size_t done = 0;
    bool locked = true;
    for (const auto& r : binder.read_ranges()) {
      for (size_t i = 0; i < r.count; ++i) locked &= r.file->prefault(r.offset + i * r.stride, r.bytes, opts.mlock);
      done += r.total();
      if (opts.progress) opts.progress(done, m->bytes_used_);
    }
    m->locked_ = opts.mlock && locked;
  }
  return m;
}

}  // namespace moep
