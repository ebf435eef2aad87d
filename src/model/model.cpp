#include "model/model.h"

#include "core/error.h"
#include "model/arch.h"

namespace moep {

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opts) {
  auto m = std::make_unique<Model>();
  m->dir_ = dir;
  m->config_ = load_model_config(dir);
  m->index_ = SafetensorsIndex::open(dir);
  const ArchSpec* arch = find_arch(m->config_.model_type);
  MOEP_ASSERT(arch != nullptr);
  WeightBinder binder(m->index_);
  ExpertFilter all = [](int64_t, int64_t) { return true; };
  arch->bind(m->config_, binder, opts.is_local ? opts.is_local : all, m->weights_);
  binder.finish();
  m->bytes_used_ = binder.bytes_read();
  for (const auto& r : binder.read_ranges()) m->spans_.push_back({r.file->data() + r.offset, r.bytes});
  if (opts.prefault || opts.mlock) {
    size_t done = 0;
    bool locked = true;
    for (const auto& r : binder.read_ranges()) {
      locked &= r.file->prefault(r.offset, r.bytes, opts.mlock);
      done += r.bytes;
      if (opts.progress) opts.progress(done, m->bytes_used_);
    }
    m->locked_ = opts.mlock && locked;
  }
  return m;
}

}  // namespace moep
