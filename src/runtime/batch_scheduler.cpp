#include "runtime/batch_scheduler.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "runtime/generate.h"

namespace moep {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

struct BatchScheduler::Sequence {
  uint64_t id = 0;
  int32_t slot = 0;
  GenerationRequest req;
  Sampler sampler;
  StreamDecoder stream;
  std::vector<int32_t> context;  // prompt + generated (for the repetition penalty)
  size_t prefilled = 0;          // prompt tokens already in the KV cache
  int32_t pos = 0;               // next position to write
  int32_t pending_token = -1;    // sampled, not yet fed
  int64_t generated = 0;
  std::string text;              // shown so far
  std::string held;              // decoded but held back (may start a stop string)
  double submitted_at = 0;
  double first_token_at = 0;
  bool done = false;
  // With logprobs asked for: the raw logits of this sequence's row (the sampler changes the row in place), and the
  // tokens' logprobs not yet delivered. Sized at admission so that a decode step allocates nothing for them.
  std::vector<float> raw_logits;
  std::vector<TokenLogprobs> pending_logprobs;
  std::unique_ptr<GrammarMasker> masker;  // with a grammar: matcher, mask buffer and mask cache, sized here

  Sequence(uint64_t id_, int32_t slot_, GenerationRequest r, int64_t vocab, const Tokenizer& tok,
           std::shared_ptr<const TokenVocabulary> grammar_vocab)
      : id(id_), slot(slot_), req(std::move(r)), sampler(vocab, req.params), stream(tok, req.skip_special_tokens),
        context(req.prompt) {
    if (req.top_logprobs >= 0) {
      raw_logits.resize(size_t(vocab));
      pending_logprobs.reserve(64);
    }
    if (req.grammar) masker = std::make_unique<GrammarMasker>(req.grammar, std::move(grammar_vocab));
  }

  // A Text event with `piece` and the logprobs gathered so far.
  void emit(std::string piece) {
    RequestEvent ev;
    ev.text = std::move(piece);
    ev.logprobs.assign(pending_logprobs.begin(), pending_logprobs.end());
    pending_logprobs.clear();
    if (req.on_event) req.on_event(ev);
  }
};

BatchScheduler::BatchScheduler(StepDriver& driver, const Tokenizer& tokenizer, std::vector<int32_t> eos_ids)
    : driver_(driver), tok_(tokenizer), eos_(std::move(eos_ids)) {
  const auto& lim = driver.engine().transformer().limits();
  slots_.resize(size_t(lim.n_slots));
  rows_.reserve(size_t(lim.max_rows));
  row_slot_.reserve(size_t(lim.max_rows));
  logits_.resize(size_t(lim.max_rows * driver.engine().config().vocab_size));
}

BatchScheduler::~BatchScheduler() = default;

int64_t BatchScheduler::max_context() const { return driver_.engine().transformer().limits().max_ctx; }
int64_t BatchScheduler::slots() const { return int64_t(slots_.size()); }

std::shared_ptr<const TokenVocabulary> BatchScheduler::grammar_vocabulary() {
  std::lock_guard<std::mutex> lk(vocab_mu_);
  if (!grammar_vocab_)
    grammar_vocab_ = TokenVocabulary::from_tokenizer(tok_, driver_.engine().config().vocab_size, eos_);
  return grammar_vocab_;
}

uint64_t BatchScheduler::submit(GenerationRequest req) {
  const int64_t V = driver_.engine().config().vocab_size;
  if (req.grammar) grammar_vocabulary();
  if (req.prompt.empty()) fail("the prompt is empty");
  for (int32_t t : req.prompt)
    if (t < 0 || t >= V) fail("prompt token id ", t, " is outside the vocabulary [0, ", V, ")");
  req.params.validate();
  for (const auto& [token, bias] : req.params.logit_bias)
    if (token >= V) fail("logit_bias: token id ", token, " is outside the vocabulary [0, ", V, ")");
  const int64_t need = int64_t(req.prompt.size()) + req.params.max_tokens;
  if (need > max_context())
    fail("the prompt (", req.prompt.size(), " tokens) plus max_tokens (", req.params.max_tokens,
         ") exceeds the context of ", max_context(), " tokens");
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) fail("the server is shutting down");
  const uint64_t id = next_id_++;
  queue_.emplace_back(id, std::move(req));
  stats_.requests_submitted++;
  cv_.notify_all();
  return id;
}

void BatchScheduler::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  cancelled_.push_back(id);
  cv_.notify_all();
}

void BatchScheduler::stop() {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = true;
  cv_.notify_all();
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  SchedulerStats s = stats_;
  s.queued = queue_.size();
  s.active = 0;
  for (const auto& q : slots_) s.active += q != nullptr;
  return s;
}

void BatchScheduler::finish(Sequence& s, const std::string& reason, const std::string& error) {
  if (s.done) return;
  s.done = true;
  // Whatever was held back for a possible stop string is output after all.
  if (reason != "cancelled" && reason != "error") {
    if (reason != "stop-string") s.held += s.stream.finish();
    if (reason == "stop-string") s.held.clear();
    if (!s.held.empty() || !s.pending_logprobs.empty()) s.emit(std::move(s.held));
  }
  RequestEvent ev;
  ev.kind = RequestEvent::Done;
  ev.finish_reason = reason == "stop-string" ? "stop" : reason;
  ev.error = error;
  ev.prompt_tokens = int64_t(s.req.prompt.size());
  ev.completion_tokens = s.generated;
  ev.time_to_first_token_s = s.first_token_at > 0 ? s.first_token_at - s.submitted_at : 0;
  if (s.req.on_event) s.req.on_event(ev);
}

// With mu_ held: moves queued requests into free slots and drops cancelled ones.
void BatchScheduler::admit_locked() {
  const int64_t V = driver_.engine().config().vocab_size;
  for (uint64_t id : cancelled_) {
    for (auto& s : slots_)
      if (s && s->id == id) {
        finish(*s, "cancelled");
        s.reset();
        stats_.requests_cancelled++;
      }
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (it->first == id) {
        it->second.grammar.reset();  // ended before it began: no matcher needed
        Sequence tmp(id, -1, std::move(it->second), V, tok_, nullptr);
        finish(tmp, "cancelled");
        queue_.erase(it);
        stats_.requests_cancelled++;
        break;
      }
  }
  cancelled_.clear();
  for (size_t i = 0; i < slots_.size() && !queue_.empty(); ++i) {
    if (slots_[i]) continue;
    auto [id, req] = std::move(queue_.front());
    queue_.pop_front();
    // grammar_vocab_ was set by submit() before it queued this request (under mu_ since): safe to read for it.
    auto vocab = req.grammar ? grammar_vocab_ : nullptr;
    slots_[i] = std::make_unique<Sequence>(id, int32_t(i), std::move(req), V, tok_, std::move(vocab));
    slots_[i]->submitted_at = now_s();
    stats_.prompt_tokens += slots_[i]->req.prompt.size();
  }
}

void BatchScheduler::run() {
  Engine& engine = driver_.engine();
  Transformer& tr = engine.transformer();
  const int64_t V = engine.config().vocab_size;
  const int64_t max_rows = tr.limits().max_rows;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      auto any_active = [&] {
        for (const auto& s : slots_)
          if (s) return true;
        return false;
      };
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !cancelled_.empty() || any_active(); });
      if (stopping_) {
        for (auto& s : slots_)
          if (s) {
            finish(*s, "cancelled");
            s.reset();
          }
        while (!queue_.empty()) {
          queue_.front().second.grammar.reset();
          Sequence tmp(queue_.front().first, -1, std::move(queue_.front().second), V, tok_, nullptr);
          finish(tmp, "cancelled");
          queue_.pop_front();
        }
        break;
      }
      admit_locked();
    }
    // Build the step: every decoding sequence feeds its pending token; prefilling sequences fill the rest of
    // the row budget with prompt chunks (oldest slot first).
    rows_.clear();
    row_slot_.clear();
    for (auto& sp : slots_) {
      if (!sp || sp->prefilled < sp->req.prompt.size()) continue;
      if (int64_t(rows_.size()) >= max_rows) break;
      rows_.push_back({sp->pending_token, sp->slot, sp->pos, true});
      row_slot_.push_back(sp->slot);
    }
    for (auto& sp : slots_) {
      if (!sp || sp->prefilled >= sp->req.prompt.size()) continue;
      const int64_t room = max_rows - int64_t(rows_.size());
      if (room <= 0) break;
      const size_t n = std::min<size_t>(size_t(room), sp->req.prompt.size() - sp->prefilled);
      for (size_t i = 0; i < n; ++i) {
        const size_t k = sp->prefilled + i;
        const bool last = k + 1 == sp->req.prompt.size();
        rows_.push_back({sp->req.prompt[k], sp->slot, int32_t(k), last});
        if (last) row_slot_.push_back(sp->slot);
      }
    }
    if (rows_.empty()) continue;

    tr.reset_stats();
    const double t0 = now_s();
    driver_.lead(rows_, logits_.data());
    const double t1 = now_s();
    double comm = 0, compute = 0;
    for (const auto& l : tr.layer_stats()) {
      comm += double(l.allreduce_ns) * 1e-9;
      compute += double(l.attention_ns + l.router_ns + l.experts_ns + l.dense_ns) * 1e-9;
    }
    compute += double(tr.head_ns()) * 1e-9;

    // Advance positions, then sample for every row that produced logits.
    for (const auto& r : rows_) {
      Sequence& s = *slots_[size_t(r.slot)];
      if (s.prefilled < s.req.prompt.size()) {
        s.prefilled++;
        s.pos = int32_t(s.prefilled);
      } else {
        s.pos++;
      }
    }
    uint64_t new_tokens = 0;
    double grammar_s = 0;
    for (size_t i = 0; i < row_slot_.size(); ++i) {
      Sequence& s = *slots_[size_t(row_slot_[i])];
      if (s.req.params.max_tokens == 0) {
        finish(s, "length");
        continue;
      }
      float* row = &logits_[i * size_t(V)];
      if (!s.raw_logits.empty()) std::copy(row, row + V, s.raw_logits.begin());  // the model's, before any mask
      std::span<const uint64_t> allowed;
      if (s.masker) {
        const double g0 = now_s();
        allowed = s.masker->mask();
        grammar_s += now_s() - g0;
        if (s.masker->mask_empty()) {  // the value is whole and the model has no end token to say so
          finish(s, "stop");
          continue;
        }
      }
      const int32_t tok = s.sampler.sample(row, s.context, allowed);
      if (s.first_token_at == 0) s.first_token_at = now_s();
      // With a grammar the end token always ends the response: the grammar allows it only once the value is whole.
      const bool eos = (s.masker || !s.req.params.ignore_eos) && std::find(eos_.begin(), eos_.end(), tok) != eos_.end();
      if (eos) {
        finish(s, "stop");
        continue;
      }
      if (!s.raw_logits.empty()) {
        s.pending_logprobs.emplace_back();
        token_logprobs(s.raw_logits, tok, s.req.top_logprobs, s.pending_logprobs.back());
      }
      if (s.masker) {
        const double g0 = now_s();
        const bool ok = s.masker->accept(tok);
        grammar_s += now_s() - g0;
        MOEP_ASSERT(ok, "the sampler chose token ", tok, ", which the grammar's mask refused");
      }
      s.generated++;
      new_tokens++;
      s.context.push_back(tok);
      s.held += s.stream.step(tok);
      bool stopped = false;
      for (const auto& stop : s.req.params.stop) {
        if (stop.empty()) continue;
        const size_t at = s.held.find(stop);
        if (at != std::string::npos) {
          std::string before = s.held.substr(0, at);
          if (!before.empty() || !s.pending_logprobs.empty()) s.emit(std::move(before));
          s.held.clear();
          finish(s, "stop-string");
          stopped = true;
          break;
        }
      }
      if (stopped) continue;
      const size_t safe = stop_safe_prefix(s.held, s.req.params.stop);
      if (safe > 0) {
        std::string piece = s.held.substr(0, safe);
        s.held.erase(0, safe);
        s.emit(std::move(piece));
      }
      if (s.masker && s.masker->complete()) {  // nothing may follow: end now rather than sample the end token
        finish(s, "stop");
        continue;
      }
      if (s.generated >= s.req.params.max_tokens || s.pos >= tr.limits().max_ctx) {
        finish(s, "length");
        continue;
      }
      s.pending_token = tok;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.steps++;
      stats_.step_seconds += t1 - t0;
      stats_.compute_seconds += compute;
      stats_.comm_seconds += comm;
      stats_.grammar_seconds += grammar_s;
      stats_.completion_tokens += new_tokens;
      recent_.emplace_back(t1, new_tokens);
      while (!recent_.empty() && t1 - recent_.front().first > 5.0) recent_.pop_front();
      uint64_t sum = 0;
      for (const auto& [t, n] : recent_) sum += n;
      const double span = recent_.empty() ? 0 : std::max(1e-3, t1 - recent_.front().first + (t1 - t0));
      stats_.recent_tokens_per_s = span > 0 ? double(sum) / span : 0;
      for (auto& sp : slots_)
        if (sp && sp->done) {
          stats_.requests_finished++;
          sp.reset();
        }
    }
  }
  driver_.release();
}

}  // namespace moep
