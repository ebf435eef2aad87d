// Fuzzes the safetensors reader (src/io/safetensors.*): a single file (header length, header JSON, dtypes,
// shapes, offsets) and a sharded checkpoint's model.safetensors.index.json.
//
// Input: first byte even: the rest is a .safetensors file. Odd: the rest is model.safetensors.index.json, in a
// directory that also holds a small valid shard, model-00001-of-00001.safetensors (tensors "a" F32 [2] and "b"
// BF16 [2, 2]). Every tensor of an opened checkpoint is read end to end, so a view outside its file faults.
#include <filesystem>

#include "fuzz_util.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"

using namespace moep;

namespace {

const std::string& sharded_dir() {
  static const std::string dir = [] {
    const std::string d = fuzz::scratch_dir() + "/sharded";
    std::filesystem::create_directories(d);
    // A valid shard by hand: 8-byte header length, header JSON, data.
    const std::string header =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}})";
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
    file += header;
    file += std::string(16, '\x3f');
    fuzz::write_scratch("sharded/model-00001-of-00001.safetensors", file);
    return d;
  }();
  return dir;
}

void read_all(const SafetensorsIndex& index) {
  uint64_t sum = 0;
  for (const auto& [name, t] : index.tensors()) {
    sum += fuzz::touch(t.data, t.nbytes);
    sum += uint64_t(t.shape_str().size());
    if (t.dtype_supported) sum += uint64_t(t.numel());
  }
  sum += index.total_bytes();
  if (index.find("a")) ++sum;
  volatile uint64_t sink = sum;
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool index_mode = data[0] & 1;
  fuzz::expect_clean([&] {
    if (!index_mode) {
      const std::string path = fuzz::write_scratch("single.safetensors", data + 1, size - 1);
      read_all(SafetensorsIndex::open(path));
    } else {
      const std::string& dir = sharded_dir();
      fuzz::write_scratch("sharded/model.safetensors.index.json", data + 1, size - 1);
      read_all(SafetensorsIndex::open(dir));
    }
  });
  return 0;
}
