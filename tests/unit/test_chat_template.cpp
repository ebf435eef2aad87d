// Tests of chat templates (src/text/chat_template.h): loading from model directories, template selection, and
// rendering of the real templates stored under tests/data/chat_templates (see README.md there).
//
// The expected prompts written here were derived by reading each template. tests/reference/make_chat_vectors.py
// renders many more conversations with transformers' apply_chat_template into vectors.json; ChatTemplate.
// MatchesTransformersVectors checks every one of them when that file is present.
#include <gtest/gtest.h>

#include <ctime>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "test_util.h"
#include "text/chat_template.h"

namespace moep {
namespace {

using nlohmann::ordered_json;
namespace fs = std::filesystem;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary);
  f << text;
}

ChatTemplate stored(const std::string& file, const std::string& bos = "", const std::string& eos = "") {
  std::string path = test::testdata_path("chat_templates/" + file);
  return ChatTemplate::from_string(read_file(path), bos, eos, file);
}

ordered_json msg(const std::string& role, const std::string& content) { return {{"role", role}, {"content", content}}; }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// --- rendering the stored templates -----------------------------------------------------------------------------------

TEST(ChatTemplate, Qwen2ChatMLAddsDefaultSystem) {
  ChatTemplate t = stored("qwen2_chatml.jinja", "", "<|im_end|>");
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi")}, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(t, ordered_json{msg("system", "Be brief."), msg("user", "Hi")}, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

// gpt-oss's harmony template runs in moep's interpreter (macros, namespaces, slices, the date). The expected text
// is read off the template; transformers' renderings of many more conversations come with vectors.json (below) once
// make_chat_vectors.py has run where transformers is installed.
TEST(ChatTemplate, GptOssHarmonyRendersTheSystemDeveloperAndChannels) {
  ChatTemplate t = stored("gpt_oss.jinja", "<|startoftext|>", "<|return|>");
  jinja::RenderOptions opt;
  std::tm tm{};
  tm.tm_year = 2026 - 1900;
  tm.tm_mon = 7;
  tm.tm_mday = 1;
  tm.tm_hour = 12;
  tm.tm_isdst = -1;
  opt.now = std::mktime(&tm);
  const std::string system =
      "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
      "Knowledge cutoff: 2024-06\nCurrent date: 2026-08-01\n\nReasoning: medium\n\n"
      "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>";
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi")}, true, ordered_json::object(), opt),
            system + "<|start|>user<|message|>Hi<|end|><|start|>assistant");
  ordered_json answered = ordered_json{msg("developer", "Be brief."), msg("user", "2+2?"), msg("assistant", "4")};
  answered[2]["thinking"] = "Add.";
  EXPECT_EQ(render_chat(t, answered, false, ordered_json::object(), opt),
            system + "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>"
                     "<|start|>user<|message|>2+2?<|end|>"
                     "<|start|>assistant<|channel|>analysis<|message|>Add.<|end|>"
                     "<|start|>assistant<|channel|>final<|message|>4<|return|>");
  EXPECT_THROW(render_chat(t, ordered_json{msg("user", "Hi"), msg("tool", "x")}, true, ordered_json::object(), opt),
               jinja::TemplateRaised);
}

TEST(ChatTemplate, Qwen15LeavesTheLastTurnOpen) {
  ChatTemplate t = stored("qwen1.5_chat.jinja", "", "<|im_end|>");
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi"), msg("assistant", "Yo")}, false),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo");
}

TEST(ChatTemplate, DbrxTrimsTheSystemPromptAndHasADefault) {
  ChatTemplate t = stored("dbrx_instruct.jinja", "<|endoftext|>", "<|endoftext|>");
  EXPECT_EQ(render_chat(t, ordered_json{msg("system", "Be brief.  \n"), msg("user", "Hi")}, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  std::string out = render_chat(t, ordered_json{msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Bye")}, false);
  EXPECT_EQ(out.rfind("<|im_start|>system\nYou are DBRX, created by Databricks. You were last updated in December 2023.", 0), 0u) << out;
  const std::string tail =
      "TO THE USER'S QUERY.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>";
  ASSERT_GE(out.size(), tail.size());
  EXPECT_EQ(out.substr(out.size() - tail.size()), tail);
  EXPECT_NE(out.find("code blocks \u2014 remember"), std::string::npos);  // the em dash of the original
}

TEST(ChatTemplate, MixtralPutsTheSystemMessageInTheFirstInstruction) {
  ChatTemplate t = stored("mixtral_8x7b_instruct_v0.1.jinja", "<s>", "</s>");
  ordered_json m = {msg("system", "S"), msg("user", "Hi"), msg("assistant", "Yo"), msg("user", "Q")};
  EXPECT_EQ(render_chat(t, m, false), "<s> [INST] S\n\nHi [/INST] Yo</s> [INST] Q [/INST]");
  EXPECT_EQ(render_chat(t, m, true), "<s> [INST] S\n\nHi [/INST] Yo</s> [INST] Q [/INST]");  // no generation prompt in this template
}

TEST(ChatTemplate, Mixtral8x22bPutsTheSystemMessageInTheLastInstruction) {
  ChatTemplate t = stored("mixtral_8x22b_instruct_v0.1.jinja", "<s>", "</s>");
  ordered_json m = {msg("system", "S"), msg("user", "Hi"), msg("assistant", "Yo"), msg("user", "Q")};
  EXPECT_EQ(render_chat(t, m, false), "<s>[INST] Hi[/INST] Yo</s>[INST] S\n\nQ[/INST]");
}

TEST(ChatTemplate, MixtralRejectsRolesThatDoNotAlternate) {
  ChatTemplate t = stored("mixtral_8x7b_instruct_v0.1.jinja", "<s>", "</s>");
  try {
    render_chat(t, ordered_json{msg("user", "a"), msg("user", "b")}, true);
    FAIL() << "expected the template to raise";
  } catch (const jinja::TemplateRaised& e) {
    EXPECT_EQ(e.message(), "After the optional system message, conversation roles must alternate user/assistant/user/assistant/...");
  }
}

TEST(ChatTemplate, Olmo2TuluFormat) {
  ChatTemplate t = stored("olmo2_tulu.jinja", "<|endoftext|>", "<|endoftext|>");
  EXPECT_EQ(render_chat(t, ordered_json{msg("system", "S"), msg("user", "Hi"), msg("assistant", "Yo")}, false),
            "<|endoftext|><|system|>\nS\n<|user|>\nHi\n<|assistant|>\nYo<|endoftext|>");
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi")}, true), "<|endoftext|><|user|>\nHi\n<|assistant|>\n");
}

TEST(ChatTemplate, DeepSeekV3) {
  const std::string bos = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", eos = "<\uff5cend\u2581of\u2581sentence\uff5c>";
  ChatTemplate t = stored("deepseek_v3.jinja", bos, eos);
  EXPECT_EQ(render_chat(t, ordered_json{msg("system", "S"), msg("user", "Hi"), msg("assistant", "Yo"), msg("user", "Q")}, true),
            bos + "S<\uff5cUser\uff5c>Hi<\uff5cAssistant\uff5c>Yo" + eos + "<\uff5cUser\uff5c>Q<\uff5cAssistant\uff5c>");
}

TEST(ChatTemplate, MistralV03WithoutTools) {
  ChatTemplate t = stored("mistral_7b_instruct_v0.3_tools_2024.jinja", "<s>", "</s>");
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi")}, true), "<s> [INST] Hi [/INST]");
}

TEST(ChatTemplate, Qwen3GenerationPromptAndThinkingSwitch) {
  ChatTemplate t = stored("qwen3.jinja", "", "<|im_end|>");
  ordered_json m = {msg("user", "Hi")};
  EXPECT_EQ(render_chat(t, m, true), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(t, m, true, ordered_json{{"enable_thinking", false}}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(render_chat(t, m, true, ordered_json{{"enable_thinking", true}}), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, Qwen3DropsThinkingFromEarlierTurns) {
  ChatTemplate t = stored("qwen3.jinja", "", "<|im_end|>");
  ordered_json m = {msg("user", "Hi"), msg("assistant", "<think>\nhmm\n</think>\n\nHello!"), msg("user", "2+2?")};
  EXPECT_EQ(render_chat(t, m, true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, Qwen3KeepsReasoningAfterTheLastQuery) {
  ChatTemplate t = stored("qwen3.jinja", "", "<|im_end|>");
  ordered_json m = {msg("user", "2+2?"), {{"role", "assistant"}, {"content", "4"}, {"reasoning_content", "Easy."}}};
  EXPECT_EQ(render_chat(t, m, false), "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nEasy.\n</think>\n\n4<|im_end|>\n");
}

TEST(ChatTemplate, Qwen3ToolsAndToolCalls) {
  ChatTemplate t = stored("qwen3.jinja", "", "<|im_end|>");
  ordered_json tools = ordered_json::parse(R"([{"type": "function", "function": {"name": "get_weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");
  ordered_json m = ordered_json::parse(R"([
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
    {"role": "tool", "content": "{\"temp\": 3}"}])");
  const std::string expected =
      "<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
      "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", \"properties\": "
      "{\"city\": {\"type\": \"string\"}}}}}\n</tools>\n\n"
      "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
      "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
      "<|im_start|>user\nWeather in Zürich?<|im_end|>\n"
      "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call><|im_end|>\n"
      "<|im_start|>user\n<tool_response>\n{\"temp\": 3}\n</tool_response><|im_end|>\n"
      "<|im_start|>assistant\n";
  EXPECT_EQ(render_chat(t, m, true, ordered_json{{"tools", tools}}), expected);
}

TEST(ChatTemplate, SortedJsonOverloadRendersPlainConversations) {
  ChatTemplate t = stored("qwen2_chatml.jinja", "", "<|im_end|>");
  nlohmann::json m = nlohmann::json::array({{{"role", "user"}, {"content", "Hi"}}});
  EXPECT_EQ(render_chat(t, m, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, BadMessagesAreRejected) {
  ChatTemplate t = stored("qwen2_chatml.jinja");
  EXPECT_NE(error_of([&] { render_chat(t, ordered_json{{"role", "user"}}, true); }).find("messages must be a JSON array"), std::string::npos);
  EXPECT_NE(error_of([&] { render_chat(t, ordered_json{"just text"}, true); }).find("every message must be a JSON object"), std::string::npos);
}

// --- loading from model directories ---------------------------------------------------------------------------------

TEST(ChatTemplate, LoadsStringTemplateAndAddedTokenObjects) {
  test::TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", R"({
    "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
    "eos_token": "</s>",
    "pad_token": null,
    "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}{{ pad_token is defined }}"
  })");
  ChatTemplate t = ChatTemplate::load(dir.str());
  ASSERT_NE(t.special_token("bos_token"), nullptr);
  EXPECT_EQ(*t.special_token("bos_token"), "<s>");
  EXPECT_EQ(t.special_token("pad_token"), nullptr);
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi")}, false), "<s>[user] Hi</s>False");
}

TEST(ChatTemplate, ChatTemplateJinjaFileWins) {
  test::TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", R"({"eos_token": "E", "chat_template": "from config"})");
  write_file(dir.path() / "chat_template.jinja", "from file {{ eos_token }}\n");
  ChatTemplate t = ChatTemplate::load(dir.str());
  EXPECT_EQ(render_chat(t, ordered_json::array(), false), "from file E");
}

TEST(ChatTemplate, OverrideFileReplacesTheTemplateAndKeepsTheSpecialTokens) {
  test::TempDir dir;
  write_file(dir.path() / "model" / "tokenizer_config.json", R"({"eos_token": "E", "chat_template": "from config"})");
  write_file(dir.path() / "override.jinja", "override {{ eos_token }} {{ tools|length }}\n");
  ChatTemplate t = ChatTemplate::load((dir.path() / "model").string(), (dir.path() / "override.jinja").string());
  EXPECT_EQ(t.source, (dir.path() / "override.jinja").string());
  ordered_json tools = ordered_json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  EXPECT_EQ(render_chat(t, ordered_json::array(), false, ordered_json{{"tools", tools}}), "override E 1");
  // An empty override path is the model's own template; a model without one is fine when overridden.
  EXPECT_EQ(render_chat(ChatTemplate::load((dir.path() / "model").string(), ""), ordered_json::array(), false),
            "from config");
  write_file(dir.path() / "bare" / "tokenizer_config.json", R"({"bos_token": "B"})");
  EXPECT_EQ(render_chat(ChatTemplate::load_override((dir.path() / "bare").string(), (dir.path() / "override.jinja").string()),
                        ordered_json::array(), false, ordered_json{{"tools", tools}}),
            "override  1");
  const std::string err = error_of([&] { ChatTemplate::load_override(dir.str(), (dir.path() / "missing.jinja").string()); });
  EXPECT_NE(err.find("missing.jinja"), std::string::npos) << err;
}

TEST(ChatTemplate, TemplateMessagesParseToolCallArgumentsAndFillNullContent) {
  const ordered_json in = ordered_json::parse(R"([
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1, \"y\": [2]}"}},
      {"id": "b", "type": "function", "function": {"name": "g", "arguments": "not json"}},
      {"id": "c", "type": "function", "function": {"name": "h", "arguments": "[1]"}}]},
    {"role": "tool", "tool_call_id": "a", "content": "ok"}])");
  // Mistral v0.3 prints the arguments with |tojson: they become objects.
  const ChatTemplate mistral = stored("mistral_7b_instruct_v0.3_tools_2024.jinja", "<s>", "</s>");
  const ordered_json out = template_messages(mistral, in);
  EXPECT_EQ(out[0]["content"], "");
  EXPECT_EQ(out[0]["tool_calls"][0]["function"]["arguments"], ordered_json::parse(R"({"x": 1, "y": [2]})"));
  EXPECT_EQ(out[0]["tool_calls"][1]["function"]["arguments"], "not json");
  EXPECT_EQ(out[0]["tool_calls"][2]["function"]["arguments"], "[1]");
  EXPECT_EQ(out[1], in[1]);
  // Qwen3 takes text or an object: the text is kept, and printed as it came.
  const ChatTemplate qwen3 = stored("qwen3.jinja", "", "<|im_end|>");
  const ordered_json q = template_messages(qwen3, in);
  EXPECT_EQ(q[0]["tool_calls"][0]["function"]["arguments"], in[0]["tool_calls"][0]["function"]["arguments"]);
  EXPECT_EQ(q[0]["content"], "");
  const std::string prompt = render_chat(qwen3, q, true);
  EXPECT_NE(prompt.find("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1, \"y\": [2]}}\n</tool_call>"),
            std::string::npos) << prompt;
  EXPECT_NE(prompt.find("<tool_response>\nok\n</tool_response>"), std::string::npos) << prompt;
  // DeepSeek-V3 concatenates the arguments and marks a tool-call turn by a null content: both are kept.
  const ChatTemplate ds = stored("deepseek_v3.jinja");
  const ordered_json d = template_messages(ds, in);
  EXPECT_TRUE(d[0]["content"].is_null());
  EXPECT_TRUE(d[0]["tool_calls"][0]["function"]["arguments"].is_string());
  const ordered_json ds_in = ordered_json::parse(R"([{"role": "user", "content": "w?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
    {"role": "tool", "tool_call_id": "a", "content": "ok"}])");
  const std::string ds_prompt = render_chat(ds, template_messages(ds, ds_in), true);
  EXPECT_NE(ds_prompt.find("<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"x\": 1}\n```<｜tool▁call▁end｜>"),
            std::string::npos) << ds_prompt;
  EXPECT_NE(ds_prompt.find("<｜tool▁output▁begin｜>ok<｜tool▁output▁end｜>"), std::string::npos) << ds_prompt;
}

TEST(ChatTemplate, SelectsDefaultOrToolUseFromAList) {
  // Mixtral-8x22B-Instruct-v0.1's tokenizer_config.json as first published (April 2024): two named templates.
  ChatTemplate t = ChatTemplate::load(test::testdata_path("chat_templates/mixtral_8x22b_instruct_v0.1_2024-04"));
  ASSERT_EQ(t.templates.size(), 2u);
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Bye")}, false),
            "<s> [INST] Hi [/INST] Hello </s> [INST] Bye [/INST]");
  ordered_json tools = ordered_json::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {}}}])");
  EXPECT_EQ(render_chat(t, ordered_json{msg("user", "Hi")}, false, ordered_json{{"tools", tools}}),
            "<s>[AVAILABLE_TOOLS][{'type': 'function', 'function': {'name': 'f', 'parameters': {}}}][/AVAILABLE_TOOLS][INST]Hi[/INST]");
}

TEST(ChatTemplate, ListWithoutDefaultIsAnError) {
  test::TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", R"({"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]})");
  ChatTemplate t = ChatTemplate::load(dir.str());
  std::string err = error_of([&] { render_chat(t, ordered_json::array(), false); });
  EXPECT_NE(err.find("none named \"default\""), std::string::npos) << err;
}

TEST(ChatTemplate, MissingTemplateIsAClearError) {
  test::TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", R"({"eos_token": "</s>"})");
  std::string err = error_of([&] { ChatTemplate::load(dir.str()); });
  EXPECT_NE(err.find(dir.str()), std::string::npos) << err;
  EXPECT_NE(err.find("no chat template"), std::string::npos) << err;
  EXPECT_NE(error_of([&] { ChatTemplate::load(dir.str() + "/nope"); }).find("not a directory"), std::string::npos);
}

TEST(ChatTemplate, MalformedConfigIsAClearError) {
  test::TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", "{\"chat_template\": ");
  std::string err = error_of([&] { ChatTemplate::load(dir.str()); });
  EXPECT_NE(err.find("tokenizer_config.json: not valid JSON"), std::string::npos) << err;
  write_file(dir.path() / "tokenizer_config.json", R"({"chat_template": 42})");
  err = error_of([&] { ChatTemplate::load(dir.str()); });
  EXPECT_NE(err.find("must be a string or a list"), std::string::npos) << err;
}

TEST(ChatTemplate, SyntaxErrorNamesFileLineAndColumn) {
  test::TempDir dir;
  write_file(dir.path() / "chat_template.jinja", "{% for m in messages %}\n{{ m.content }\n{% endfor %}");
  std::string err = error_of([&] { ChatTemplate::load(dir.str()); });
  EXPECT_NE(err.find("chat_template.jinja: syntax error at line 2, column"), std::string::npos) << err;
}

TEST(ChatTemplate, OnlyRegularFilesOfBoundedSizeAreRead) {
  test::TempDir dir;
  ASSERT_EQ(::mkfifo((dir.path() / "chat_template.jinja").c_str(), 0600), 0);
  std::string err = error_of([&] { ChatTemplate::load(dir.str()); });
  EXPECT_NE(err.find("chat_template.jinja is a FIFO (named pipe); expected a regular file"), std::string::npos) << err;
  fs::remove(dir.path() / "chat_template.jinja");
  write_file(dir.path() / "chat_template.jinja", "");
  fs::resize_file(dir.path() / "chat_template.jinja", (size_t(4) << 20) + 1);  // sparse
  err = error_of([&] { ChatTemplate::load(dir.str()); });
  EXPECT_NE(err.find("at most 4 MiB for a chat template"), std::string::npos) << err;
  fs::remove(dir.path() / "chat_template.jinja");
  fs::create_symlink("/dev/zero", dir.path() / "tokenizer_config.json");
  err = error_of([&] { ChatTemplate::load(dir.str()); });
  EXPECT_NE(err.find("tokenizer_config.json is a character device"), std::string::npos) << err;
}

// The render budget's default (jinja::RenderOptions) is far above what real templates use: every stored template
// renders a 400-message conversation within a hundredth of it.
TEST(ChatTemplate, StoredTemplatesUseAFractionOfTheRenderBudget) {
  ordered_json messages = ordered_json::array();
  for (int i = 0; i < 200; ++i) {
    messages.push_back(msg("user", "Question " + std::to_string(i) + ": what is " + std::to_string(i) + " + 1?"));
    messages.push_back(msg("assistant", "It is " + std::to_string(i + 1) + "."));
  }
  jinja::RenderOptions hundredth;
  hundredth.max_steps = jinja::RenderOptions{}.max_steps / 100;
  size_t rendered = 0;
  for (const auto& e : fs::directory_iterator(test::testdata_path("chat_templates"))) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".jinja" && !e.is_directory()) continue;
    const ChatTemplate t = e.is_directory() ? ChatTemplate::load(e.path().string())
                                            : ChatTemplate::from_string(read_file(e.path().string()), "<s>", "</s>", name);
    std::string out;
    try {
      out = render_chat(t, messages, true, ordered_json::object(), hundredth);
    } catch (const jinja::TemplateRaised& r) {
      ADD_FAILURE() << name << " raised: " << r.message();
      continue;
    }
    EXPECT_NE(out.find("Question 199"), std::string::npos) << name;
    ++rendered;
  }
  EXPECT_GE(rendered, 10u);
}

// --- transformers' own renderings -------------------------------------------------------------------------------------

TEST(ChatTemplate, MatchesTransformersVectors) {
  const std::string path = test::testdata_path("chat_templates/vectors.json");
  if (!fs::exists(path))
    GTEST_SKIP() << "tests/data/chat_templates/vectors.json not generated yet; run tests/reference/make_chat_vectors.py "
                    "on a machine with transformers";
  ordered_json cases = ordered_json::parse(read_file(path));
  ASSERT_TRUE(cases.is_array());
  std::map<std::string, ChatTemplate> templates;
  size_t checked = 0;
  for (const auto& c : cases) {
    const std::string name = c["template"].get<std::string>();
    auto it = templates.find(name);
    if (it == templates.end()) {
      std::string file = test::testdata_path("chat_templates/" + name);
      ChatTemplate t = fs::is_directory(file) ? ChatTemplate::load(file) : ChatTemplate::from_string(read_file(file), "", "", name);
      t.special_tokens.clear();  // the template sees exactly what transformers passed: special_tokens below
      it = templates.emplace(name, std::move(t)).first;
    }
    ordered_json extra = c.value("special_tokens", ordered_json::object());
    for (auto x = c["extra"].begin(); x != c["extra"].end(); ++x) extra[x.key()] = x.value();
    const std::string label = name + " / " + c["conversation"].get<std::string>() + " / add_generation_prompt=" +
                              (c["add_generation_prompt"].get<bool>() ? "true" : "false") + " / extra=" + c["extra"].dump();
    // Templates that print the date (gpt-oss's harmony) were rendered at a fixed local time.
    jinja::RenderOptions opt;
    if (c.contains("now")) {
      const auto& n = c["now"];
      std::tm tm{};
      tm.tm_year = n[0].get<int>() - 1900;
      tm.tm_mon = n[1].get<int>() - 1;
      tm.tm_mday = n[2].get<int>();
      tm.tm_hour = n[3].get<int>();
      tm.tm_min = n[4].get<int>();
      tm.tm_sec = n[5].get<int>();
      tm.tm_isdst = -1;
      opt.now = std::mktime(&tm);
    }
    std::string got, kind = "output";
    try {
      got = render_chat(it->second, c["messages"], c["add_generation_prompt"].get<bool>(), extra, opt);
    } catch (const jinja::TemplateRaised& e) {
      got = e.message();
      kind = "raises";
    } catch (const Error& e) {
      got = e.what();
      kind = "error";
    }
    if (c.contains("expected")) {
      EXPECT_EQ(kind, "output") << label << ": " << got;
      EXPECT_EQ(got, c["expected"].get<std::string>()) << label;
    } else if (c.contains("raises")) {
      EXPECT_EQ(kind, "raises") << label << ": " << got;
      EXPECT_EQ(got, c["raises"].get<std::string>()) << label;
    } else {
      EXPECT_NE(kind, "output") << label << ": transformers raised " << c.value("error", "") << " but we rendered:\n" << got;
    }
    ++checked;
  }
  EXPECT_GT(checked, 0u);
}

}  // namespace
}  // namespace moep
