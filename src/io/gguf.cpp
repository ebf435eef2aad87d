#include "io/gguf.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <regex>
#include <set>

#include "core/error.h"

namespace moep {
namespace {

constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
constexpr size_t kDefaultAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT

// Bytes of one scalar of type t; 0 for String and Array, whose sizes vary.
size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::String: case GgufType::Array: return 0;
  }
  return 0;
}

bool is_integer(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

// An integer value of any width as a signed 128-bit number (no width loses information in it).
__int128 integer_value(GgufType t, uint64_t raw) {
  switch (t) {
    case GgufType::I8: return int8_t(uint8_t(raw));
    case GgufType::I16: return int16_t(uint16_t(raw));
    case GgufType::I32: return int32_t(uint32_t(raw));
    case GgufType::I64: return int64_t(raw);
    default: return __int128(raw);
  }
}

std::string int128_str(__int128 v) {
  if (v < 0) return "-" + std::to_string(uint64_t(-v));
  return std::to_string(uint64_t(v));
}

uint64_t load_raw(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  std::memcpy(&v, p, n);  // little-endian: the low bytes
  return v;
}

// Reads a file front to back; every read is checked against the bytes left.
class Cursor {
 public:
  explicit Cursor(const MappedFile& f) : data_(f.data()), size_(f.size()), path_(f.path()) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  const uint8_t* here() const { return data_ + pos_; }
  const std::string& path() const { return path_; }

  void need(size_t n, const std::string& what) const {
    if (n > left())
      fail(path_, ": truncated GGUF file: ", what, " at byte ", pos_, " needs ", n, " bytes, but the file ends ",
           left(), " bytes later (", size_, " bytes in all)");
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  void skip(size_t n) { pos_ += n; }
  std::string_view read_string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " (its length)");
    if (len > left())
      fail(path_, ": ", what, " at byte ", pos_ - 8, " is a string of ", len, " bytes, but only ", left(),
           " bytes are left in the file (truncated or corrupt)");
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  const std::string& path_;
  size_t pos_ = 0;
};

GgufType read_value_type(Cursor& c, const std::string& what) {
  const uint32_t t = c.read<uint32_t>(what);
  if (t > uint32_t(GgufType::F64))
    fail(c.path(), ": ", what, " is ", t, ", which is no GGUF value type (0 to 12: u8 … f64)");
  return GgufType(t);
}

GgufValue read_value(Cursor& c, GgufType type, const std::string& key) {
  GgufValue v;
  v.type = type;
  const std::string what = "the value of metadata key '" + key + "'";
  if (type == GgufType::String) {
    v.str = c.read_string(what);
  } else if (type == GgufType::Array) {
    v.elem_type = read_value_type(c, "the element type of metadata array '" + key + "'");
    v.count = c.read<uint64_t>("the length of metadata array '" + key + "'");
    if (v.elem_type == GgufType::Array)
      fail(c.path(), ": metadata key '", key, "' is an array of arrays, which GGUF readers (ggml's, moep's) do not ",
           "read; expected an array of numbers or strings");
    // Each element takes at least this many bytes (a string its 8-byte length): a count the file cannot hold is
    // refused before anything is allocated for it.
    const size_t min_elem = v.elem_type == GgufType::String ? 8 : scalar_size(v.elem_type);
    if (v.count > c.left() / min_elem)
      fail(c.path(), ": metadata array '", key, "' at byte ", c.pos(), " claims ", v.count, " elements of ",
           gguf_type_name(v.elem_type), " (at least ", min_elem, " bytes each), but only ", c.left(),
           " bytes are left in the file (truncated or corrupt)");
    if (v.elem_type == GgufType::String) {
      v.strings.reserve(size_t(v.count));
      for (uint64_t i = 0; i < v.count; ++i)
        v.strings.push_back(c.read_string(str_cat("element ", i, " of metadata array '", key, "'")));
    } else {
      v.array_data = c.here();
      c.skip(size_t(v.count) * min_elem);
    }
  } else {
    const size_t n = scalar_size(type);
    c.need(n, what);
    v.raw = load_raw(c.here(), n);
    c.skip(n);
  }
  return v;
}

struct ParsedPart {
  uint32_t version = 0;
  size_t alignment = kDefaultAlignment;
  size_t data_offset = 0;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensor> tensors;  // in file order
};

std::string supported_types() {
  std::string s;
  std::string load_only;
  for (uint32_t id = 0; id < 64; ++id)
    if (const GgmlTypeTraits* t = ggml_type_traits(id))
      (ggml_type_load_only(t->type) ? load_only : s) += (s.empty() ? "" : ", ") + std::string(t->name);
  if (!load_only.empty()) s += "; and " + load_only.substr(2) + " where it converts a tensor at load (deepseek2's "
                               "attn_k_b and attn_v_b)";
  return s;
}

ParsedPart parse_part(const MappedFile& file, int part) {
  Cursor c(file);
  const std::string& path = file.path();
  ParsedPart out;

  c.need(4, "the magic");
  if (std::memcmp(c.here(), "GGUF", 4) != 0) {
    const uint8_t* m = c.here();
    fail(path, ": not a GGUF file: it starts with bytes ", int(m[0]), " ", int(m[1]), " ", int(m[2]), " ", int(m[3]),
         ", expected the magic 'GGUF' (71 71 85 70)");
  }
  c.skip(4);
  out.version = c.read<uint32_t>("the version");
  if (out.version != 2 && out.version != 3) {
    if (out.version == 1)
      fail(path, ": GGUF version 1, which moep does not read (it reads versions 2 and 3); convert the model again ",
           "with a current llama.cpp");
    if ((out.version & 0xffff) == 0)
      fail(path, ": GGUF version ", out.version, " reads as a big-endian file (version ",
           __builtin_bswap32(out.version),
           " byte-swapped); moep reads little-endian GGUF, versions 2 and 3");
    fail(path, ": unsupported GGUF version ", out.version, "; moep reads versions 2 and 3");
  }
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the metadata count");
  // The least a key/value takes is 8 (key length) + 4 (type) + 1 (a u8) bytes; a tensor info 8 (name length)
  // + 4 (dims) + 8 (one dim) + 4 (type) + 8 (offset).
  if (n_kv > c.left() / 13)
    fail(path, ": the header claims ", n_kv, " metadata entries, more than the ", c.left(),
         " bytes left in the file can hold (13 bytes at least each): truncated or corrupt");
  if (n_tensors > c.left() / 32)
    fail(path, ": the header claims ", n_tensors, " tensors, more than the ", c.left(),
         " bytes left in the file can hold (32 bytes at least each): truncated or corrupt");

  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key(c.read_string(str_cat("the key of metadata entry ", i)));
    const GgufType type = read_value_type(c, "the value type of metadata key '" + key + "'");
    GgufValue v = read_value(c, type, key);
    if (!out.metadata.emplace(key, std::move(v)).second)
      fail(path, ": metadata key '", key, "' appears twice; each key must be unique");
  }

  if (auto it = out.metadata.find("general.alignment"); it != out.metadata.end()) {
    const GgufValue& v = it->second;
    if (v.type != GgufType::U32)
      fail(path, ": metadata key 'general.alignment' is ", v.type_str(), ", expected u32");
    if (v.raw == 0 || (v.raw & (v.raw - 1)) != 0)
      fail(path, ": general.alignment is ", v.raw, ", expected a power of two");
    out.alignment = size_t(v.raw);
  }

  std::set<std::string_view> names;
  out.tensors.reserve(size_t(n_tensors));
  std::vector<uint64_t> offsets;
  offsets.reserve(size_t(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = std::string(c.read_string(str_cat("the name of tensor ", i)));
    const uint32_t n_dims = c.read<uint32_t>("the dimension count of tensor '" + t.name + "'");
    if (n_dims < 1 || n_dims > kMaxDims)
      fail(path, ": tensor '", t.name, "' has ", n_dims, " dimensions, expected 1 to ", kMaxDims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t dim = c.read<int64_t>(str_cat("dimension ", d, " of tensor '", t.name, "'"));
      if (dim < 0) fail(path, ": tensor '", t.name, "' has dimension ", d, " = ", dim, ", expected ≥ 0");
      if (__builtin_mul_overflow(numel, dim, &numel))
        fail(path, ": tensor '", t.name, "' has more elements than fit in 64 bits (dimension ", d, " = ", dim, ")");
      t.dims.push_back(dim);
    }
    const uint32_t type_id = c.read<uint32_t>("the type of tensor '" + t.name + "'");
    const GgmlTypeTraits* traits = ggml_type_traits(type_id);
    if (!traits) {
      const char* name = ggml_type_name_any(type_id);
      fail(path, ": tensor '", t.name, "' (the first of its type in the file) has ggml type ", type_id,
           name ? str_cat(" (", name, ")") : std::string(" (not a ggml type)"),
           ", which moep does not read; it reads ", supported_types());
    }
    t.type = traits->type;
    if (t.dims[0] % traits->block_weights != 0)
      fail(path, ": tensor '", t.name, "' has rows of ", t.dims[0], " weights, not a whole number of ", traits->name,
           " blocks (", traits->block_weights, " weights each)");
    const uint64_t blocks = uint64_t(numel) / uint64_t(traits->block_weights);
    uint64_t nbytes;
    if (__builtin_mul_overflow(blocks, uint64_t(traits->block_bytes), &nbytes) || nbytes > file.size())
      fail(path, ": tensor '", t.name, "' ", t.shape_str(), " of ", traits->name,
           " needs more bytes than the file has (", file.size(), ")");
    t.nbytes = size_t(nbytes);
    t.part = part;
    offsets.push_back(c.read<uint64_t>("the data offset of tensor '" + t.name + "'"));
    out.tensors.push_back(std::move(t));
  }
  for (const GgufTensor& t : out.tensors)
    if (!names.insert(t.name).second) fail(path, ": tensor '", t.name, "' appears twice; tensor names must be unique");

  // The data section starts at the first multiple of the alignment after the tensor infos.
  const size_t infos_end = c.pos();
  out.data_offset = (infos_end + out.alignment - 1) / out.alignment * out.alignment;
  if (out.data_offset > file.size()) {
    if (n_tensors > 0)
      fail(path, ": truncated GGUF file: the data section would start at byte ", out.data_offset, " (the tensor infos ",
           "end at ", infos_end, ", aligned to ", out.alignment, "), but the file has ", file.size(), " bytes");
    out.data_offset = file.size();  // no tensors: a file may end right after its metadata
  }
  const size_t data_bytes = file.size() - out.data_offset;
  for (size_t i = 0; i < out.tensors.size(); ++i) {
    GgufTensor& t = out.tensors[i];
    const uint64_t off = offsets[i];
    if (off % out.alignment != 0)
      fail(path, ": tensor '", t.name, "' data offset ", off, " is not a multiple of the alignment (", out.alignment,
           ")");
    if (off > data_bytes || t.nbytes > data_bytes - off)
      fail(path, ": tensor '", t.name, "' ", t.shape_str(), " ", ggml_type_traits(t.type).name, " takes bytes [", off,
           ", ", off + t.nbytes, ") of the data section, which has ", data_bytes, " bytes (starting at byte ",
           out.data_offset, " of ", file.size(), "): truncated or corrupt");
    t.file_offset = out.data_offset + size_t(off);
    t.data = file.data() + t.file_offset;
  }
  // No two tensors share bytes (a writer's bug, or a crafted file): in offset order, each ends before the next.
  std::vector<const GgufTensor*> by_offset;
  by_offset.reserve(out.tensors.size());
  for (const GgufTensor& t : out.tensors)
    if (t.nbytes > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) {
              return a->file_offset != b->file_offset ? a->file_offset < b->file_offset : a->name < b->name;
            });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& a = *by_offset[i - 1];
    const GgufTensor& b = *by_offset[i];
    if (a.file_offset + a.nbytes > b.file_offset)
      fail(path, ": tensors '", a.name, "' (bytes [", a.file_offset, ", ", a.file_offset + a.nbytes, ")) and '", b.name,
           "' (from byte ", b.file_offset, ") overlap; each tensor's data must be its own");
  }
  return out;
}

// An integer metadata value of part `p`, or -1 if absent (split keys are small non-negative integers).
int64_t split_key(const ParsedPart& p, const std::string& key, const std::string& path) {
  auto it = p.metadata.find(key);
  if (it == p.metadata.end()) return -1;
  if (!is_integer(it->second.type))
    fail(path, ": metadata key '", key, "' is ", it->second.type_str(), ", expected an integer");
  const __int128 v = integer_value(it->second.type, it->second.raw);
  if (v < 0 || v > 1'000'000) fail(path, ": metadata key '", key, "' is ", int128_str(v), ", expected 0 to 1000000");
  return int64_t(v);
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::Bool: return "bool";
    case GgufType::String: return "string";
    case GgufType::Array: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "?";
}

std::string GgufValue::type_str() const {
  if (type == GgufType::Array) return std::string("an array of ") + gguf_type_name(elem_type);
  const char* n = gguf_type_name(type);
  return (n[0] == 'i' || n[0] == 'f' ? "an " : "a ") + std::string(n);  // "an i32", "a u32"

}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::string GgufTensor::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::string gguf_split_path(const std::string& prefix, int no, int count) {
  char tail[64];
  std::snprintf(tail, sizeof tail, "-%05d-of-%05d.gguf", no, count);
  return prefix + tail;
}

GgufFile GgufFile::open(const std::string& path) {
  GgufFile g;
  auto first = std::make_unique<MappedFile>(path);
  ParsedPart parsed = parse_part(*first, 0);
  const int64_t count = split_key(parsed, "split.count", path);
  std::vector<ParsedPart> parts;
  if (count <= 1) {
    g.files_.push_back(std::move(first));
    parts.push_back(std::move(parsed));
  } else {
    const int64_t no = split_key(parsed, "split.no", path);
    static const std::regex kSplitName(R"((.*)-(\d{5})-of-(\d{5})\.gguf)");
    std::smatch m;
    if (!std::regex_match(path, m, kSplitName))
      fail(path, ": this file is part of a split model (split.count = ", count, ") but its name is not ",
           "NAME-0000k-of-0000n.gguf, so its other parts cannot be found");
    if (std::stoll(m[3].str()) != count || std::stoll(m[2].str()) != no + 1)
      fail(path, ": the name says part ", m[2].str(), " of ", m[3].str(), ", but the metadata says part ", no + 1,
           " of ", count, " (split.no = ", no, ", split.count = ", count, ")");
    const std::string prefix = m[1].str();
    for (int k = 0; k < count; ++k) {
      if (k == no) {
        for (GgufTensor& t : parsed.tensors) t.part = k;
        g.files_.push_back(std::move(first));
        parts.push_back(std::move(parsed));
        continue;
      }
      const std::string part_path = gguf_split_path(prefix, k + 1, int(count));
      if (!std::filesystem::exists(part_path))
        fail(path, ": part ", k + 1, " of ", count, " of this split model is missing: expected ", part_path);
      g.files_.push_back(std::make_unique<MappedFile>(part_path));
      parts.push_back(parse_part(*g.files_.back(), k));
      const int64_t part_no = split_key(parts.back(), "split.no", part_path);
      const int64_t part_count = split_key(parts.back(), "split.count", part_path);
      if (part_no != k || part_count != count)
        fail(part_path, ": expected part ", k + 1, " of ", count, " (split.no = ", k, ", split.count = ", count,
             "), but its metadata says split.no = ", part_no, ", split.count = ", part_count);
    }
  }

  g.version_ = parts[0].version;
  g.alignment_ = parts[0].alignment;
  for (ParsedPart& p : parts) {
    g.data_offsets_.push_back(p.data_offset);
    for (GgufTensor& t : p.tensors) {
      const std::string name = t.name;
      const int part = t.part;
      auto [it, inserted] = g.tensors_.emplace(name, std::move(t));
      if (!inserted)
        fail(g.files_[part]->path(), ": tensor '", name, "' is also in ", g.files_[it->second.part]->path(),
             "; tensor names must be unique across the parts of a split model");
    }
  }
  if (count > 1) {
    const int64_t want = split_key(parts[0], "split.tensors.count", g.files_[0]->path());
    if (want >= 0 && uint64_t(want) != g.tensors_.size())
      fail(g.files_[0]->path(), ": split.tensors.count says ", want, " tensors, but the ", count, " parts hold ",
           g.tensors_.size());
  }
  g.metadata_ = std::move(parts[0].metadata);
  return g;
}

const std::string& GgufFile::path() const { return files_[0]->path(); }

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

void GgufFile::fail_type(const std::string& key, const GgufValue& v, const char* expected) const {
  fail(path(), ": metadata key '", key, "' is ", v.type_str(), ", expected ", expected);
}

const GgufValue& GgufFile::require(const std::string& key, const char* expected) const {
  const GgufValue* v = find(key);
  if (!v) fail(path(), ": metadata key '", key, "' is missing (expected ", expected, ")");
  return *v;
}

namespace {
template <class T>
T integer_as(const GgufValue& v, __int128 value, const std::string& key, const std::string& path,
             const char* expected) {
  if (value < __int128(std::numeric_limits<T>::min()) || value > __int128(std::numeric_limits<T>::max()))
    fail(path, ": metadata key '", key, "' is ", v.type_str(), " ", int128_str(value), ", which does not fit ",
         expected);
  return T(value);
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = require(key, "a string");
  if (v.type != GgufType::String) fail_type(key, v, "a string");
  return std::string(v.str);
}

uint32_t GgufFile::get_u32(const std::string& key) const {
  const GgufValue& v = require(key, "a u32");
  if (!is_integer(v.type)) fail_type(key, v, "a u32 (or an integer that fits one)");
  return integer_as<uint32_t>(v, integer_value(v.type, v.raw), key, path(), "a u32");
}

uint64_t GgufFile::get_u64(const std::string& key) const {
  const GgufValue& v = require(key, "a u64");
  if (!is_integer(v.type)) fail_type(key, v, "a u64 (or an integer that fits one)");
  return integer_as<uint64_t>(v, integer_value(v.type, v.raw), key, path(), "a u64");
}

int64_t GgufFile::get_i64(const std::string& key) const {
  const GgufValue& v = require(key, "an i64");
  if (!is_integer(v.type)) fail_type(key, v, "an i64 (or an integer that fits one)");
  return integer_as<int64_t>(v, integer_value(v.type, v.raw), key, path(), "an i64");
}

float GgufFile::get_f32(const std::string& key) const {
  const GgufValue& v = require(key, "an f32");
  if (v.type == GgufType::F32) {
    float f;
    const uint32_t bits = uint32_t(v.raw);
    std::memcpy(&f, &bits, 4);
    return f;
  }
  if (v.type == GgufType::F64) {
    double d;
    std::memcpy(&d, &v.raw, 8);
    return float(d);
  }
  fail_type(key, v, "an f32 (or f64)");
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = require(key, "a bool");
  if (v.type != GgufType::Bool) fail_type(key, v, "a bool");
  return v.raw != 0;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = require(key, "an array of string");
  if (v.type != GgufType::Array || v.elem_type != GgufType::String) fail_type(key, v, "an array of string");
  return std::vector<std::string>(v.strings.begin(), v.strings.end());
}

std::vector<float> GgufFile::get_f32_array(const std::string& key) const {
  const GgufValue& v = require(key, "an array of f32");
  if (v.type != GgufType::Array || (v.elem_type != GgufType::F32 && v.elem_type != GgufType::F64))
    fail_type(key, v, "an array of f32 (or f64)");
  std::vector<float> out(size_t(v.count));
  for (size_t i = 0; i < out.size(); ++i) {
    if (v.elem_type == GgufType::F32) {
      std::memcpy(&out[i], v.array_data + 4 * i, 4);
    } else {
      double d;
      std::memcpy(&d, v.array_data + 8 * i, 8);
      out[i] = float(d);
    }
  }
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = require(key, "an array of integers");
  if (v.type != GgufType::Array || !is_integer(v.elem_type)) fail_type(key, v, "an array of integers");
  const size_t n = scalar_size(v.elem_type);
  std::vector<int64_t> out(size_t(v.count));
  for (size_t i = 0; i < out.size(); ++i) {
    const __int128 x = integer_value(v.elem_type, load_raw(v.array_data + n * i, n));
    if (x > __int128(std::numeric_limits<int64_t>::max()))
      fail(path(), ": metadata array '", key, "' element ", i, " is ", int128_str(x), ", which does not fit an i64");
    out[i] = int64_t(x);
  }
  return out;
}

uint32_t GgufFile::get_u32_or(const std::string& key, uint32_t fallback) const {
  return has(key) ? get_u32(key) : fallback;
}

float GgufFile::get_f32_or(const std::string& key, float fallback) const {
  return has(key) ? get_f32(key) : fallback;
}

std::string GgufFile::get_string_or(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

}  // namespace moep
