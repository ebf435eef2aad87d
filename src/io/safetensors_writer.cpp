#include "io/safetensors_writer.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"

namespace moep {

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  size_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot open ", path, " for writing");
  const uint64_t len = h.size();
  bool ok = std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(h.data(), 1, h.size(), f) == h.size();
  std::vector<uint8_t> buf;
  for (const auto& t : tensors) {
    if (!ok) break;
    buf.resize(t.nbytes);
    if (t.fill) t.fill(buf.data());
    ok = std::fwrite(buf.data(), 1, t.nbytes, f) == t.nbytes;
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) fail("failed writing ", path, " (disk full?)");
}

}  // namespace moep
