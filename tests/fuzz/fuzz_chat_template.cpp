// Fuzzes chat templates (src/text/jinja*.cpp and chat_template.cpp): parsing a template and rendering it with
// arbitrary messages, the way a model's template meets a request.
//
// Input: the template text, then optionally a NUL byte and a JSON value: an array is the messages, an object the
// extra variables (tools, chat_template_kwargs' keys, …) with a fixed conversation. Either way it is rendered
// with and without the generation prompt, within a reduced budget (the same checks, reached sooner).
#include <cstring>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "text/chat_template.h"

using namespace moep;
using ojson = nlohmann::ordered_json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* begin = reinterpret_cast<const char*>(data);
  const char* nul = static_cast<const char*>(std::memchr(begin, 0, size));
  const std::string source(begin, nul ? size_t(nul - begin) : size);
  ojson messages = ojson::array({{{"role", "system"}, {"content", "Be brief."}},
                                 {{"role", "user"}, {"content", "Hi <s> {{ x }}"}},
                                 {{"role", "assistant"}, {"content", "Hello."}},
                                 {{"role", "user"}, {"content", "Weather?"}}});
  ojson extra = ojson::object();
  if (nul) {
    // Not depth-checked here: nlohmann's parser is the server's too, behind its own body checks.
    ojson j = ojson::parse(nul + 1, begin + size, nullptr, /*allow_exceptions=*/false);
    if (j.is_array()) messages = std::move(j);
    else if (j.is_object()) extra = std::move(j);
  }
  jinja::RenderOptions options;
  options.now = 1700000000;
  options.max_steps = 20'000;
  options.max_output_bytes = size_t(1) << 20;
  fuzz::expect_clean([&] {
    const ChatTemplate tmpl = ChatTemplate::from_string(source, "<s>", "</s>", "fuzz template");
    for (bool add_generation_prompt : {false, true}) {
      fuzz::expect_clean([&] {
        const ojson ready = template_messages(tmpl, messages, extra);
        const std::string out = render_chat(tmpl, ready, add_generation_prompt, extra, options);
        volatile size_t sink = out.size();
        (void)sink;
      });
    }
  });
  return 0;
}
