// Fuzzes config.json → ModelConfig (src/model/config.cpp and every architecture's parse in the registry), through
// load_model_config, the path `moep run` takes. The input is the config.json file.
#include "fuzz_util.h"
#include "model/config.h"

using namespace moep;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean([&] {
    const std::string path = fuzz::write_scratch("config.json", data, size);
    const ModelConfig c = load_model_config(path);
    volatile size_t sink = c.model_type.size();
    (void)sink;
  });
  return 0;
}
