#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/file_read.h"

namespace moep {

namespace fs = std::filesystem;
using nlohmann::json;

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

size_t stored_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

}  // namespace

void SafetensorsIndex::add_file(const std::string& path, const std::vector<std::string>* expected_names) {
  auto file = std::make_unique<MappedFile>(path);
  const size_t size = file->size();
  if (size < 8) fail(path, ": truncated safetensors file (", size, " bytes; expected at least an 8-byte header length)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > size - 8)
    fail(path, ": truncated safetensors file (header says ", header_len, " bytes of JSON, file has ", size - 8,
         " after the length)");
  if (header_len > (uint64_t(100) << 20)) fail(path, ": safetensors header of ", header_len, " bytes is too large");
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(file->data()) + 8,
                         reinterpret_cast<const char*>(file->data()) + 8 + header_len);
  } catch (const json::exception& e) {
    fail(path, ": safetensors header is not valid JSON (", e.what(), ")");
  }
  if (!header.is_object()) fail(path, ": safetensors header is not a JSON object");
  const size_t data_start = 8 + header_len;
  const size_t data_size = size - data_start;

  struct Range {
    size_t b, e;
    const std::string* name;
  };
  std::vector<Range> ranges;
  std::set<std::string> seen;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const json& t = it.value();
    auto bad = [&](const std::string& why) { fail(path, ": tensor '", name, "': ", why); };
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets"))
      bad("entry must have dtype, shape and data_offsets");
    if (!t["dtype"].is_string()) bad("dtype must be a string");
    if (!t["shape"].is_array()) bad("shape must be an array");
    const json& off = t["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad("data_offsets must be two non-negative integers");
    TensorInfo info;
    info.name = name;
    info.dtype_name = t["dtype"].get<std::string>();
    const size_t esize = stored_dtype_size(info.dtype_name);
    if (esize == 0) bad("unknown dtype '" + info.dtype_name + "'");
    info.dtype_supported = dtype_from_safetensors(info.dtype_name, &info.dtype);
    // Checked products: a shape whose element or byte count wraps 64 bits could otherwise match the stored byte
    // count and index far outside the mapping.
    int64_t numel = 1;
    bool overflow = false;
    for (const auto& d : t["shape"]) {
      if (!d.is_number_unsigned()) bad("shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > uint64_t(INT64_MAX)) bad(str_cat("shape entry ", dim, " is larger than 2^63 - 1"));
      info.shape.push_back(int64_t(dim));
      overflow |= __builtin_mul_overflow(numel, int64_t(dim), &numel);
    }
    uint64_t need = 0;
    if (overflow || __builtin_mul_overflow(uint64_t(numel), uint64_t(esize), &need))
      bad(str_cat(info.dtype_name, " ", info.shape_str(), " has more elements or bytes than fit in 64 bits"));
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (e < b) bad("data_offsets end before they begin");
    if (e > data_size)
      bad(str_cat("data ends at byte ", e, " but the file's data section has only ", data_size,
                  " bytes (truncated file?)"));
    if (e - b != need)
      bad(str_cat("holds ", e - b, " bytes but ", info.dtype_name, " ", info.shape_str(), " needs ", need));
    info.nbytes = e - b;
    info.data = file->data() + data_start + b;
    info.file = file.get();
    info.file_offset = data_start + b;
    if (tensors_.count(name)) fail(path, ": tensor '", name, "' appears in more than one file");
    auto [pos, ok] = tensors_.emplace(name, std::move(info));
    ranges.push_back({b, e, &pos->first});
    seen.insert(name);
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.b < b.b; });
  // Sorted by start: a range overlaps an earlier one iff it starts before the furthest end seen so far.
  size_t max_end = 0;
  const std::string* max_name = nullptr;
  for (const auto& r : ranges) {
    if (r.e == r.b) continue;  // empty tensors occupy no bytes
    if (max_name && r.b < max_end) fail(path, ": tensors '", *max_name, "' and '", *r.name, "' overlap");
    if (r.e > max_end) {
      max_end = r.e;
      max_name = r.name;
    }
  }
  if (expected_names) {
    for (const auto& n : *expected_names)
      if (!seen.count(n)) fail(path, ": the index names tensor '", n, "' in this file but the file lacks it");
  }
  files_.push_back(std::move(file));
}

SafetensorsIndex SafetensorsIndex::open(const std::string& path) {
  // The paths come partly from the index file (shard names): a name the filesystem refuses (too long, a
  // component that is a file) is the checkpoint's fault and gets moep's error, never an escaping
  // std::filesystem_error.
  try {
    return open_paths(path);
  } catch (const fs::filesystem_error& e) {
    fail("checkpoint ", path, ": ", e.code().message(), " (", e.path1().string(), ")");
  }
}

SafetensorsIndex SafetensorsIndex::open_paths(const std::string& path) {
  SafetensorsIndex idx;
  if (!fs::is_directory(path)) {
    if (!fs::exists(path)) fail("checkpoint path ", path, " does not exist");
    idx.add_file(path, nullptr);  // refuses anything but a regular file
    return idx;
  }
  const fs::path dir(path);
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    json j;
    const std::string text = read_regular_file(index_path.string(), kMaxIndexJsonBytes, "a safetensors index");
    check_json_depth(text, kMaxJsonDepth, index_path.string());
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      fail(index_path.string(), ": not valid JSON (", e.what(), ")");
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index_path.string(), ": expected an object 'weight_map' {tensor name: file name}");
    std::map<std::string, std::vector<std::string>> by_file;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) fail(index_path.string(), ": weight_map entry '", it.key(), "' is not a file name");
      by_file[it.value().get<std::string>()].push_back(it.key());
    }
    if (by_file.empty()) fail(index_path.string(), ": weight_map is empty");
    for (const auto& [fn, names] : by_file) {
      // Shards live in the model directory: a name that leaves it (absolute, or through "..") would read any
      // file of the machine the index names. Checked on the name, not the resolved path: a hub cache's shards
      // are links into a blob folder outside the directory, and following them is fine.
      const fs::path rel(fn);
      const bool leaves = fn.empty() || rel.is_absolute() || rel.has_root_name() ||
                          std::any_of(rel.begin(), rel.end(), [](const fs::path& part) { return part == ".."; });
      if (leaves)
        fail(index_path.string(), ": shard '", fn, "' (of tensor '", names.front(),
             "') is outside the model directory; expected a file name inside ", dir.string());
      const fs::path p = dir / fn;
      std::error_code ec;
      const bool present = fs::exists(p, ec);
      if (ec) fail(index_path.string(), ": shard '", fn, "' (of tensor '", names.front(), "'): ", ec.message());
      if (!present) fail(index_path.string(), ": shard ", fn, " is missing from ", dir.string());
      idx.add_file(p.string(), &names);
    }
    return idx;
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  if (files.empty()) fail("no .safetensors files in ", path, " (expected model.safetensors or a sharded index)");
  std::sort(files.begin(), files.end());
  for (const auto& p : files) idx.add_file(p.string(), nullptr);
  return idx;
}

const TensorInfo* SafetensorsIndex::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

size_t SafetensorsIndex::total_bytes() const {
  size_t n = 0;
  for (const auto& [k, t] : tensors_) n += t.nbytes;
  return n;
}

}  // namespace moep
