// Fuzzes the GGUF reader (src/io/gguf.cpp: header, metadata key/values and arrays, tensor table, alignment, data
// offsets) and what moep reads from its metadata: the model configuration (src/model/gguf_config.cpp), the
// tokenizer (src/text/gguf_tokenizer.cpp) and the chat template. The input is the .gguf file. Every tensor of an
// opened file is read end to end, so a view outside the file faults.
#include "fuzz_util.h"
#include "io/gguf.h"
#include "model/gguf_config.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

using namespace moep;

namespace {

size_t element_bytes(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    default: return 8;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean([&] {
    const std::string path = fuzz::write_scratch("model.gguf", data, size);
    const GgufFile file = GgufFile::open(path);
    uint64_t sum = 0;
    for (const auto& [key, v] : file.metadata()) {
      sum += v.type_str().size();
      if (v.type == GgufType::Array && v.elem_type != GgufType::String && v.elem_type != GgufType::Array)
        sum += fuzz::touch(v.array_data, size_t(v.count) * element_bytes(v.elem_type));
      for (std::string_view s : v.strings) sum += s.size();
    }
    for (const auto& [name, t] : file.tensors()) {
      sum += fuzz::touch(t.data, t.nbytes);
      sum += uint64_t(t.numel()) + t.shape_str().size();
    }
    fuzz::expect_clean([&] { (void)model_config_from_gguf(file); });
    fuzz::expect_clean([&] {
      const Tokenizer tok = Tokenizer::from_gguf(file);
      const std::vector<int32_t> ids = tok.encode("Hello, world! héllo\n 日本", true);
      sum += tok.decode(ids, false).size();
    });
    fuzz::expect_clean([&] {
      const ChatTemplate tmpl = ChatTemplate::from_gguf(file);
      jinja::RenderOptions options;
      options.max_steps = 20'000;
      options.max_output_bytes = size_t(1) << 20;
      const nlohmann::ordered_json messages = nlohmann::ordered_json::array({{{"role", "user"}, {"content", "Hi"}}});
      sum += render_chat(tmpl, messages, true, nlohmann::ordered_json::object(), options).size();
    });
    volatile uint64_t sink = sum;
    (void)sink;
  });
  return 0;
}
