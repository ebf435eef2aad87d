// Generating text for one sequence: prompt → prefill (reusing the KV cache for a prefix shared with the
// previous turn) → sample token by token, streaming text pieces, until an end-of-sequence token, a stop
// string or the token limit. Runs on rank 0 through a StepDriver (other ranks follow).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "runtime/step_driver.h"
#include "text/tokenizer.h"

namespace moep {

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (without the prompt)
  std::string text;             // their text, cut at a stop string
  std::string finish_reason;    // "stop" (eos or stop string) or "length"
  int64_t prompt_tokens = 0;
  int64_t reused_tokens = 0;    // prompt tokens whose KV entries were kept from the previous call
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// Keeps track of what slot 0 of the KV cache holds, so that a conversation's next turn only computes the
// tokens that changed.
class SequenceGenerator {
 public:
  SequenceGenerator(StepDriver& driver, const Tokenizer* tokenizer, std::vector<int32_t> eos_ids);

  // `on_text` receives text pieces as they become final (never half a UTF-8 character, never part of a stop
  // string); returning false stops generation. Throws moep::Error if the prompt is empty or does not fit the
  // context.
  GenerationResult generate(const std::vector<int32_t>& prompt, const SamplingParams& params,
                            const std::function<bool(const std::string&)>& on_text = {});

 private:
  StepDriver& driver_;
  const Tokenizer* tok_;
  std::vector<int32_t> eos_;
  std::vector<int32_t> cached_;  // tokens whose K/V are in slot 0, positions 0..size-1
  std::vector<float> logits_;
  std::vector<BatchRow> rows_;
};

// Longest prefix of `text` that cannot be the beginning of any stop string (what may be shown already).
size_t stop_safe_prefix(const std::string& text, const std::vector<std::string>& stops);

}  // namespace moep
