// Constrained decoding through the server's scheduler with a random-weight model and a real byte-level BPE
// vocabulary (GPT-2's): whatever the seed, json_schema output parses and validates against the schema (checked by
// tests/json_schema_check.h, not by the grammar), and json_object output is a JSON object.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "comm/communicator.h"
#include "json_schema_check.h"
#include "model/synth.h"
#include "runtime/batch_scheduler.h"
#include "test_util.h"

namespace moep {
namespace {

using ojson = nlohmann::ordered_json;

struct Collected {
  std::string text;
  RequestEvent done;
  std::promise<void> finished;
};

TEST(ConstrainedDecoding, RandomModelOutputAlwaysValidates) {
  test::TempDir d;
  SynthSpec s;
  s.arch = "mixtral";
  s.layers = 1;
  s.d_model = 64;
  s.ffn = 64;
  s.experts = 4;
  s.top_k = 2;
  s.heads = 4;
  s.kv_heads = 2;
  s.max_position = 1024;
  s.dtype = "f32";
  s.tokenizer = test::testdata_path("tokenizers/gpt2/tokenizer.json");
  write_synthetic_checkpoint(s, d.str() + "/m", 2);
  EngineOptions o;
  o.model_dir = d.str() + "/m";
  o.threads = 2;
  o.limits.n_slots = 8;
  o.limits.max_rows = 64;
  o.limits.max_ctx = 512;
  auto engine = Engine::create(o, std::make_unique<LocalCommunicator>());
  StepDriver driver(*engine);
  const Tokenizer tok = Tokenizer::load(d.str() + "/m");
  const int32_t eos = tok.token_to_id("<|endoftext|>");
  BatchScheduler sched(driver, tok, {eos});
  std::thread loop([&] { sched.run(); });

  const std::vector<std::string> schemas = {test::kNested, test::kEnums, test::kArrays, ""};  // "": json_object
  const int kSeeds = 50;
  std::vector<std::unique_ptr<Collected>> out;
  for (const std::string& schema : schemas) {
    auto grammar = schema.empty() ? JsonGrammar::any_object() : JsonGrammar::from_schema(ojson::parse(schema));
    for (int seed = 1; seed <= kSeeds; ++seed) {
      out.push_back(std::make_unique<Collected>());
      Collected* col = out.back().get();
      GenerationRequest r;
      r.prompt = tok.encode("Reply with JSON:", false);
      r.params.seed = uint64_t(seed);
      // Temperature 1 over the best 1000 allowed tokens: a wide test of the mask (all 50k would spend the test's
      // time sorting them in the sampler).
      r.params.temperature = 1.f;
      r.params.top_k = 1000;
      r.params.top_p = 1.f;
      r.params.min_p = 0.f;
      r.params.max_tokens = 400;
      r.grammar = grammar;
      r.on_event = [col](const RequestEvent& ev) {
        if (ev.kind == RequestEvent::Text) {
          col->text += ev.text;
        } else {
          col->done = ev;
          col->finished.set_value();
        }
      };
      sched.submit(std::move(r));
    }
  }
  for (auto& c : out) ASSERT_EQ(c->finished.get_future().wait_for(std::chrono::seconds(600)), std::future_status::ready);
  sched.stop();
  loop.join();
  int objects_complete = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const std::string& schema = schemas[i / kSeeds];
    const std::string& text = out[i]->text;
    SCOPED_TRACE("schema " + std::to_string(i / kSeeds) + ", seed " + std::to_string(i % kSeeds + 1) + ": " + text);
    if (schema.empty() && out[i]->done.finish_reason == "length") {
      // A random model may write an object longer than max_tokens: then the text must be a prefix of JSON, cut
      // only at its end.
      try {
        const ojson whole = ojson::parse(text);
        ADD_FAILURE() << "cut by the length limit, yet whole: " << whole.dump();
      } catch (const ojson::parse_error& e) {
        EXPECT_EQ(e.byte, text.size() + 1) << e.what();
      }
      continue;
    }
    ASSERT_EQ(out[i]->done.finish_reason, "stop");
    ojson v;
    ASSERT_NO_THROW(v = ojson::parse(text));
    if (schema.empty()) {
      EXPECT_TRUE(v.is_object());
      ++objects_complete;
    } else {
      EXPECT_EQ(test::validate_json(v, ojson::parse(schema)), "");
    }
  }
  const SchedulerStats st = sched.stats();
  std::printf("constrained decoding: %llu steps, %.3f s in forward steps, %.3f s computing masks; %d of %d "
              "json_object outputs complete\n",
              (unsigned long long)st.steps, st.step_seconds, st.grammar_seconds, objects_complete, kSeeds);
}

}  // namespace
}  // namespace moep
