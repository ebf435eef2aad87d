// Fuzzes OpenAI request bodies (src/server/openai_api.cpp: parse_request for /v1/chat/completions and
// /v1/completions, with tools, tool_choice, response_format's JSON schemas compiled to a grammar, logit_bias, …),
// then what the server derives from a request it accepted: the template's extra variables, the tool-call
// constraint and its forced call in each family's format, and the fit to the context.
//
// Input: first byte picks the endpoint and the limits; the rest is the body. A moep::ApiError (the 400 the
// server answers) is a clean refusal.
#include "fuzz_util.h"
#include "server/openai_api.h"

using namespace moep;
using namespace moep::server;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Endpoint endpoint = (data[0] & 1) ? Endpoint::Completion : Endpoint::Chat;
  RequestLimits limits;
  limits.model_id = "fuzz-model";
  limits.max_context = (data[0] & 2) ? 64 : 4096;
  limits.vocab_size = (data[0] & 4) ? 0 : 1000;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  fuzz::expect_clean([&] {
    try {
      ApiRequest req = parse_request(endpoint, body, limits);
      (void)template_extra(req);
      const ToolCallConstraint c = tool_call_constraint(req);
      for (ToolCallFormat f : {ToolCallFormat::None, ToolCallFormat::Hermes, ToolCallFormat::Mistral,
                               ToolCallFormat::Llama3, ToolCallFormat::DeepSeekV3})
        (void)forced_tool_call(f, c);
      fit_to_context(req, int64_t(size % 97), limits);
    } catch (const ApiError&) {
    }
  });
  return 0;
}
