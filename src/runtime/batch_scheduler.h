// Continuous batching for a server: many sequences decoded together, one batched forward pass per step.
// Requests join and leave between steps; each has its own sampling settings, stop strings and token limit.
//
// Threads: submit()/cancel() may be called from any thread (HTTP handlers). run() is the engine loop and runs
// on one thread of rank 0 (it leads every step through the StepDriver; other ranks follow). Events of a
// request (text pieces, then the end) are delivered through its callback on the engine thread; callbacks
// must be quick (copy the text into the handler's queue) and must not call into the scheduler.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "runtime/step_driver.h"
#include "text/json_grammar.h"
#include "text/tokenizer.h"

namespace moep {

struct RequestEvent {
  enum Kind { Text, Done } kind = Text;
  std::string text;             // Text: the next piece (complete UTF-8, never part of a stop string)
  // Text, when the request asked for logprobs: the tokens sampled since the previous Text event, in order (the
  // text of a token may come in a later piece: pieces are cut at stop strings and whole characters, not tokens).
  // A last Text event, maybe with empty text, carries those not yet delivered before Done. End-of-sequence
  // tokens are not listed.
  std::vector<TokenLogprobs> logprobs;
  std::string finish_reason;    // Done: "stop", "length", "cancelled" or "error"
  std::string error;            // Done with "error": what went wrong
  int64_t prompt_tokens = 0;    // Done
  int64_t completion_tokens = 0;  // Done
  double time_to_first_token_s = 0;  // Done: from submission to the first sampled token
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams params;
  // -1: no logprobs; 0..TokenLogprobs::kMaxTop: each sampled token's log-probability and this many alternatives.
  int32_t top_logprobs = -1;
  // Special tokens are left out of the text unless this is false (tool-call markers such as Mistral's
  // [TOOL_CALLS] are special tokens, and the server's parser must see them).
  bool skip_special_tokens = true;
  std::function<void(const RequestEvent&)> on_event;
  // Constrained decoding (response_format json_object / json_schema, forced tool calls): when set, every sampled
  // token keeps the output inside the grammar, and the request ends ("stop") as soon as the value is complete.
  std::shared_ptr<const JsonGrammar> grammar;
};

struct SchedulerStats {
  uint64_t requests_submitted = 0;
  uint64_t requests_finished = 0;
  uint64_t requests_cancelled = 0;
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  uint64_t steps = 0;
  size_t queued = 0;
  size_t active = 0;
  double step_seconds = 0;       // wall time inside forward steps
  double compute_seconds = 0;    // of which attention, router, experts, dense, head (rank 0)
  double comm_seconds = 0;       // of which all-reduce (incl. waiting)
  double grammar_seconds = 0;    // computing constrained-decoding token masks (outside the forward steps)
  double recent_tokens_per_s = 0;  // completion tokens per second over the last few seconds
};

class BatchScheduler {
 public:
  // The engine's limits decide the batch: n_slots sequences at once, max_rows rows per step (prefill is
  // chunked to fit), max_ctx tokens per sequence.
  BatchScheduler(StepDriver& driver, const Tokenizer& tokenizer, std::vector<int32_t> eos_ids);
  ~BatchScheduler();

  // Queues a request; returns its id. Throws moep::Error (nothing queued) when the prompt is empty, has ids
  // outside the vocabulary, or prompt + max_tokens exceeds the context; or when the scheduler has stopped.
  // The first request with a grammar builds the vocabulary's byte trie (once; on the caller's thread).
  uint64_t submit(GenerationRequest req);
  // Ends a request early (client gone): its slot is freed before the next step; it gets Done "cancelled".
  void cancel(uint64_t id);

  // The engine loop; returns after stop(). Releases the followers on return.
  void run();
  // Asks run() to finish: queued and active requests end with "cancelled".
  void stop();

  SchedulerStats stats() const;
  int64_t max_context() const;
  int64_t slots() const;

 private:
  struct Sequence;
  void admit_locked();
  void finish(Sequence& s, const std::string& reason, const std::string& error = "");
  // The vocabulary as bytes for token masks, built on the first request with a grammar.
  std::shared_ptr<const TokenVocabulary> grammar_vocabulary();

  StepDriver& driver_;
  const Tokenizer& tok_;
  std::vector<int32_t> eos_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, GenerationRequest>> queue_;
  std::vector<uint64_t> cancelled_;
  std::vector<std::unique_ptr<Sequence>> slots_;  // [n_slots]; null when free
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  SchedulerStats stats_;
  std::vector<BatchRow> rows_;
  std::vector<int32_t> row_slot_;  // slot of each row that wants logits, in order
  std::vector<float> logits_;
  std::deque<std::pair<double, uint64_t>> recent_;  // (time, tokens) for recent_tokens_per_s
  std::mutex vocab_mu_;
  std::shared_ptr<const TokenVocabulary> grammar_vocab_;
};

}  // namespace moep
