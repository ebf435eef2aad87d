#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace moep {

size_t stop_safe_prefix(const std::string& text, const std::vector<std::string>& stops) {
  size_t safe = text.size();
  for (const auto& s : stops) {
    if (s.empty()) continue;
    // The longest suffix of text that is a proper prefix of s must be held back.
    const size_t max_k = std::min(s.size() - 1, text.size());
    for (size_t k = max_k; k > 0; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        safe = std::min(safe, text.size() - k);
        break;
      }
  }
  return safe;
}

SequenceGenerator::SequenceGenerator(StepDriver& driver, const Tokenizer* tokenizer, std::vector<int32_t> eos_ids)
    : driver_(driver), tok_(tokenizer), eos_(std::move(eos_ids)) {
  Engine& e = driver.engine();
  logits_.resize(size_t(e.config().vocab_size));
  rows_.reserve(size_t(e.transformer().limits().max_rows));
}

GenerationResult SequenceGenerator::generate(const std::vector<int32_t>& prompt, const SamplingParams& params,
                                             const std::function<bool(const std::string&)>& on_text) {
  Engine& e = driver_.engine();
  const int64_t ctx = e.transformer().limits().max_ctx;
  const int64_t max_rows = e.transformer().limits().max_rows;
  const int64_t V = e.config().vocab_size;
  if (prompt.empty()) fail("the prompt is empty");
  if (int64_t(prompt.size()) >= ctx)
    fail("the prompt has ", prompt.size(), " tokens but the context holds ", ctx, " (use a larger --ctx)");
  for (int32_t t : prompt)
    if (t < 0 || t >= V) fail("prompt token id ", t, " is outside the vocabulary [0, ", V, ")");
  Sampler sampler(V, params);

  GenerationResult res;
  res.prompt_tokens = int64_t(prompt.size());
  // Reuse the cached prefix, but always recompute at least the last prompt token (its logits are needed).
  size_t keep = 0;
  while (keep < cached_.size() && keep + 1 < prompt.size() && cached_[keep] == prompt[keep]) ++keep;
  res.reused_tokens = int64_t(keep);
  cached_.resize(keep);

  const auto t0 = std::chrono::steady_clock::now();
  for (size_t b = keep; b < prompt.size(); b += size_t(max_rows)) {
    const size_t end = std::min(prompt.size(), b + size_t(max_rows));
    rows_.clear();
    for (size_t i = b; i < end; ++i) rows_.push_back({prompt[i], 0, int32_t(i), i + 1 == prompt.size()});
    driver_.lead(rows_, logits_.data());
    cached_.insert(cached_.end(), prompt.begin() + int64_t(b), prompt.begin() + int64_t(end));
  }
  const auto t1 = std::chrono::steady_clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  std::optional<StreamDecoder> stream;
  if (tok_) stream.emplace(*tok_, /*skip_special_tokens=*/true);
  std::string pending;  // decoded text not yet shown (may begin a stop string)
  std::vector<int32_t> context = prompt;
  res.finish_reason = "length";
  bool stopped = false;
  for (int32_t i = 0; i < params.max_tokens && !stopped; ++i) {
    if (int64_t(cached_.size()) >= ctx) break;  // context full: "length"
    const int32_t tok = sampler.sample(logits_.data(), context);
    if (!params.ignore_eos && std::find(eos_.begin(), eos_.end(), tok) != eos_.end()) {
      res.finish_reason = "stop";
      break;
    }
    res.tokens.push_back(tok);
    context.push_back(tok);
    if (stream) {
      pending += stream->step(tok);
      // A stop string ends generation; the text before it is the output.
      for (const auto& s : params.stop) {
        if (s.empty()) continue;
        const size_t at = (res.text + pending).find(s);
        if (at != std::string::npos) {
          const std::string all = res.text + pending;
          const std::string before = all.substr(0, at);
          if (on_text && before.size() > res.text.size()) on_text(before.substr(res.text.size()));
          res.text = before;
          pending.clear();
          res.finish_reason = "stop";
          stopped = true;
          break;
        }
      }
      if (stopped) break;
      const size_t safe = stop_safe_prefix(pending, params.stop);
      if (safe > 0) {
        const std::string piece = pending.substr(0, safe);
        pending.erase(0, safe);
        res.text += piece;
        if (on_text && !on_text(piece)) {
          res.finish_reason = "stop";
          break;
        }
      }
    }
    if (i + 1 == params.max_tokens) break;
    rows_.clear();
    rows_.push_back({tok, 0, int32_t(cached_.size()), true});
    driver_.lead(rows_, logits_.data());
    cached_.push_back(tok);
  }
  if (stream && !stopped) {
    pending += stream->finish();
    res.text += pending;
    if (on_text && !pending.empty()) on_text(pending);
  }
  res.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  return res;
}

}  // namespace moep
