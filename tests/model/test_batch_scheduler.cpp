// Continuous batching: several requests decoded together give what each gives alone (the transformers greedy
// reference), whatever the row budget; cancellation frees a slot; bad requests are refused at submit.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>

#include "comm/communicator.h"
#include "core/error.h"
#include "runtime/batch_scheduler.h"
#include "test_util.h"

namespace moep {
namespace {

struct Collected {
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  RequestEvent done;
  std::promise<void> finished;
};

// (max rows per step, on the GPU): the same continuous batching on the CPU and on a Vulkan device.
class Scheduler : public ::testing::TestWithParam<std::tuple<int64_t, bool>> {};

TEST_P(Scheduler, ConcurrentGreedyRequestsMatchReference) {
  if (std::get<1>(GetParam())) MOEP_NEED_GPU();
  const std::string fx = "qwen2_moe_f32";
  std::ifstream f(test::fixture_dir(fx) + "/reference.json");
  const auto ref = nlohmann::json::parse(f);
  EngineOptions o;
  o.model_dir = test::fixture_dir(fx);
  o.threads = 2;
  o.limits.max_rows = std::get<0>(GetParam());
  o.device = std::get<1>(GetParam()) ? gpu::DeviceKind::Gpu : gpu::DeviceKind::Cpu;
  o.limits.n_slots = 2;  // fewer slots than requests: the third waits in the queue
  o.limits.max_ctx = 64;
  auto engine = Engine::create(o, std::make_unique<LocalCommunicator>());
  ASSERT_EQ(engine->on_gpu(), std::get<1>(GetParam()));
  StepDriver driver(*engine);
  const Tokenizer tok = Tokenizer::load(test::testdata_path("tokenizers/gpt2"));
  BatchScheduler sched(driver, tok, {});
  std::thread loop([&] { sched.run(); });

  std::vector<std::unique_ptr<Collected>> out;
  for (const auto& c : ref["cases"]) {
    out.push_back(std::make_unique<Collected>());
    Collected* col = out.back().get();
    GenerationRequest r;
    r.prompt = c["prompt"].get<std::vector<int32_t>>();
    r.params = SamplingParams::greedy();
    r.params.max_tokens = 24;
    r.params.ignore_eos = true;
    r.top_logprobs = out.size() == 1 ? 5 : -1;  // the first request asks for logprobs; they change nothing else
    r.on_event = [col](const RequestEvent& ev) {
      if (ev.kind == RequestEvent::Text) {
        col->text += ev.text;
        col->logprobs.insert(col->logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
      } else {
        col->done = ev;
        col->finished.set_value();
      }
    };
    sched.submit(std::move(r));
  }
  for (auto& c : out) ASSERT_EQ(c->finished.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready);
  sched.stop();
  loop.join();
  for (size_t i = 0; i < out.size(); ++i) {
    const auto ids = ref["cases"][i]["greedy"].get<std::vector<int32_t>>();
    EXPECT_EQ(out[i]->text, tok.decode(ids, true)) << "request " << i;
    EXPECT_EQ(out[i]->done.finish_reason, "length");
    EXPECT_EQ(out[i]->done.completion_tokens, 24);
    EXPECT_EQ(out[i]->done.prompt_tokens, int64_t(ref["cases"][i]["prompt"].size()));
    if (i > 0) {
      EXPECT_TRUE(out[i]->logprobs.empty());
      continue;
    }
    // Greedy: every sampled token is the first of its top list, with the same logprob; the list is sorted and
    // its probabilities sum to at most 1.
    ASSERT_EQ(out[i]->logprobs.size(), ids.size());
    for (size_t k = 0; k < ids.size(); ++k) {
      const TokenLogprobs& lp = out[i]->logprobs[k];
      EXPECT_EQ(lp.token, ids[k]) << "token " << k;
      ASSERT_EQ(lp.n_top, 5);
      EXPECT_EQ(lp.top_ids[0], lp.token);
      EXPECT_EQ(lp.top_logprobs[0], lp.logprob);
      double mass = 0;
      for (int j = 0; j < 5; ++j) {
        EXPECT_LE(lp.top_logprobs[size_t(j)], 0.f);
        if (j) {
          EXPECT_LE(lp.top_logprobs[size_t(j)], lp.top_logprobs[size_t(j - 1)]);
        }
        mass += std::exp(double(lp.top_logprobs[size_t(j)]));
      }
      EXPECT_LE(mass, 1.0 + 1e-5);
    }
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.requests_submitted, 3u);
  EXPECT_EQ(st.completion_tokens, 72u);
}

INSTANTIATE_TEST_SUITE_P(RowBudgets, Scheduler,
                         ::testing::Combine(::testing::Values(int64_t(4), int64_t(64)), ::testing::Bool()),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + (std::get<1>(info.param) ? "_gpu" : "_cpu");
                         });

TEST(SchedulerRequests, RefusedAtSubmit) {
  EngineOptions o;
  o.model_dir = test::fixture_dir("olmoe_bf16");
  o.threads = 1;
  o.limits.max_rows = 8;
  o.limits.n_slots = 1;
  o.limits.max_ctx = 32;
  auto engine = Engine::create(o, std::make_unique<LocalCommunicator>());
  StepDriver driver(*engine);
  const Tokenizer tok = Tokenizer::load(test::testdata_path("tokenizers/gpt2"));
  BatchScheduler sched(driver, tok, {});
  GenerationRequest r;
  EXPECT_THROW(sched.submit(r), Error);  // empty prompt
  r.prompt = {1, 2, 3};
  r.params.max_tokens = 40;
  EXPECT_THROW(sched.submit(r), Error);  // exceeds the context
  r.params.max_tokens = 4;
  r.prompt = {1, 5000};
  EXPECT_THROW(sched.submit(r), Error);  // outside the vocabulary
}

TEST(SchedulerRequests, CancelFreesTheSlot) {
  EngineOptions o;
  o.model_dir = test::fixture_dir("mixtral_bf16");
  o.threads = 1;
  o.limits.max_rows = 8;
  o.limits.n_slots = 1;
  o.limits.max_ctx = 256;
  auto engine = Engine::create(o, std::make_unique<LocalCommunicator>());
  StepDriver driver(*engine);
  const Tokenizer tok = Tokenizer::load(test::testdata_path("tokenizers/gpt2"));
  BatchScheduler sched(driver, tok, {});
  std::thread loop([&] { sched.run(); });
  std::promise<RequestEvent> first_done, second_done;
  std::atomic<int> pieces{0};
  GenerationRequest a;
  a.prompt = {1, 2, 3};
  a.params = SamplingParams::greedy();
  a.params.max_tokens = 200;
  a.params.ignore_eos = true;
  a.on_event = [&](const RequestEvent& ev) {
    if (ev.kind == RequestEvent::Done) first_done.set_value(ev);
    else pieces++;
  };
  const uint64_t id = sched.submit(std::move(a));
  GenerationRequest b = {};
  b.prompt = {4, 5};
  b.params = SamplingParams::greedy();
  b.params.max_tokens = 3;
  b.params.ignore_eos = true;
  b.on_event = [&](const RequestEvent& ev) {
    if (ev.kind == RequestEvent::Done) second_done.set_value(ev);
  };
  sched.submit(std::move(b));  // waits: one slot only
  while (pieces.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  sched.cancel(id);
  auto f1 = first_done.get_future();
  auto f2 = second_done.get_future();
  ASSERT_EQ(f1.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(f1.get().finish_reason, "cancelled");
  ASSERT_EQ(f2.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  const RequestEvent e2 = f2.get();
  EXPECT_EQ(e2.finish_reason, "length");
  EXPECT_EQ(e2.completion_tokens, 3);
  sched.stop();
  loop.join();
}

}  // namespace
}  // namespace moep
