// Tools, tool_choice, tool results, reasoning_content and logprobs through the official openai client, against
// `moep serve` on a random-weight model with real chat templates (--chat-template): Qwen3 (Hermes <tool_call>,
// <think>) and Mistral v0.3 ([TOOL_CALLS]), plus a template that opens <think> in the prompt (as DeepSeek-R1's and
// Qwen3-Thinking's do). Runs on MOEP_SERVE_RANKS ranks (ctest: 1, and 2 under mpirun).
//
// A random-weight model does not write tool calls by itself. To have it write one, the test model's tokenizer
// (GPT-2's) gets three added tokens that together spell a call in the template's format, and the request steers
// the model to them with OpenAI's logit_bias (+100, +60, +30, and +20 on end-of-sequence) and a repetition
// penalty of 100 (a token once written falls back): greedy decoding then writes the three tokens in order and
// stops. The engine samples them like any others, so the answer's parsing into tool_calls, its streaming as a
// name and then argument deltas, and the tool round trip are end to end. Besides: tools and tool results reach
// the prompt (the server's prompt_tokens equals the count `moep template` prints for the same request, and grows
// with the tools), tool_choice required/named/none and parallel_tool_calls are accepted, bad tools and an unknown
// tool_choice are 400 naming the field, a random answer with tools streams as the whole one. Every family's format
// (and output that is not the format) is tested on strings in tests/server/test_tool_calls.cpp. Reasoning: with
// <think> opened by the prompt, the model's whole output is reasoning_content. Logprobs are end to end.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';

import { makeModel, startServer, fetchT, MOEP, repoRoot } from './helpers.mjs';

const TEMPLATES = path.join(repoRoot, 'tests', 'data', 'chat_templates');
const QWEN3 = path.join(TEMPLATES, 'qwen3.jinja');
const MISTRAL = path.join(TEMPLATES, 'mistral_7b_instruct_v0.3_tools_2024.jinja');

let model, tokenizerDir;
const servers = {};  // template name -> { server, client }

// Added tokens (ids from 50257, after GPT-2's vocabulary and <|endoftext|>) that spell a tool call.
const CALL_PIECES = {
  qwen3: ['<tool_call>\n{"name": "get_weather", "arguments": {"city": ', '"Paris", "unit": ', '"celsius"}}\n</tool_call>'],
  mistral: ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": ', '"Paris", "unit": ', '"celsius"}}]'],
};
const ADDED = [...new Set(Object.values(CALL_PIECES).flat())];
const EOS_ID = 50256;
const idOf = (piece) => 50257 + ADDED.indexOf(piece);

// GPT-2's tokenizer with the pieces added (not special: they are text).
function tokenizerWithPieces(dir) {
  const t = JSON.parse(readFileSync(path.join(repoRoot, 'tests', 'data', 'tokenizers', 'gpt2', 'tokenizer.json'), 'utf8'));
  ADDED.forEach((content, k) => t.added_tokens.push({ id: 50257 + k, content, single_word: false, lstrip: false,
    rstrip: false, normalized: false, special: false }));
  const file = path.join(dir, 'tokenizer.json');
  writeFileSync(file, JSON.stringify(t));
  return file;
}

// What steers the model to write the call of `name`'s format: the pieces in order, then end-of-sequence.
function steer(name) {
  const [a, b, c] = CALL_PIECES[name];
  return { temperature: 0, repetition_penalty: 100, logit_bias: { [idOf(a)]: 100, [idOf(b)]: 60, [idOf(c)]: 30, [EOS_ID]: 20 } };
}

const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Get the current weather in a city.',
      parameters: {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 12 }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
        required: ['city'],
      },
    },
  },
  { type: 'function', function: { name: 'get_time', description: 'The time now.', parameters: { type: 'object', properties: {} } } },
];

// A ChatML template that opens <think> in the generation prompt: the answer starts inside the reasoning.
const THINKING_TEMPLATE = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
  + "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}";

function run(cmd, args) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 60_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

// The prompt `moep template` renders for a request body, and its token count.
async function rendered(template, body) {
  const file = path.join(model.dir, `request-${Math.random().toString(16).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(body));
  const { stdout, stderr } = await run(MOEP, ['template', model.model, '--messages', file, '--chat-template', template]);
  const m = /moep template: (\d+) tokens/.exec(stderr);
  assert.ok(m, stderr);
  return { prompt: stdout, tokens: Number(m[1]) };
}

before(async () => {
  tokenizerDir = mkdtempSync(path.join(os.tmpdir(), 'moep-tools-test-'));
  model = await makeModel(['--tokenizer', tokenizerWithPieces(tokenizerDir)]);
  const thinking = path.join(model.dir, 'thinking.jinja');
  writeFileSync(thinking, THINKING_TEMPLATE);
  for (const [name, file] of [['qwen3', QWEN3], ['mistral', MISTRAL], ['thinking', thinking]]) {
    const server = await startServer({
      model: model.model,
      args: ['--threads', '1', '--parallel', '2', '--ctx', '1024', '--quiet', '--chat-template', file],
    });
    const client = new OpenAI({ baseURL: server.baseURL, apiKey: 'not-needed', maxRetries: 0, timeout: 120_000 });
    servers[name] = { server, client, file };
  }
});

after(async () => {
  try {
    for (const { server } of Object.values(servers))
      assert.equal(await server.stop('SIGTERM'), 0, `moep serve did not exit 0:\n${server.log()}`);
  } finally {
    model?.cleanup();
    if (tokenizerDir) rmSync(tokenizerDir, { recursive: true, force: true });
  }
});

const question = [{ role: 'user', content: 'What is the weather in Paris?' }];
// The same conversation after the model called get_weather and the tool answered.
function afterToolCall(id) {
  return [
    ...question,
    {
      role: 'assistant',
      content: null,
      tool_calls: [{ id, type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }],
    },
    { role: 'tool', tool_call_id: id, content: '18 degrees and sunny' },
  ];
}

function checkMessage(choice) {
  assert.equal(choice.message.role, 'assistant');
  const calls = choice.message.tool_calls ?? [];
  if (calls.length === 0) assert.equal(typeof choice.message.content, 'string');
  for (const c of calls) {
    assert.equal(c.type, 'function');
    assert.ok(['get_weather', 'get_time'].includes(c.function.name));
    JSON.parse(c.function.arguments);
  }
  assert.ok(['stop', 'length', 'tool_calls'].includes(choice.finish_reason), choice.finish_reason);
}

for (const [name, toolResultMarker, callId] of [
  ['qwen3', '<tool_response>\n18 degrees and sunny\n</tool_response>', 'call_abc123'],
  ['mistral', '[TOOL_RESULTS] {"call_id": "abc123XYZ", "content": 18 degrees and sunny} [/TOOL_RESULTS]', 'abc123XYZ'],
]) {
  test(`${name}: a tool round trip (request with tools, tool call, tool result, answer) reaches the template`, async () => {
    const { client, file } = servers[name];
    const plain = await client.chat.completions.create({ model: 'demo', messages: question, max_tokens: 8, temperature: 0 });
    const body = { model: 'demo', messages: question, tools: TOOLS, tool_choice: 'auto', max_tokens: 8, temperature: 0 };
    const first = await client.chat.completions.create(body);
    checkMessage(first.choices[0]);
    // The tools are in the prompt: the server's count is the one `moep template` gives, and more than without.
    const r1 = await rendered(file, body);
    assert.equal(first.usage.prompt_tokens, r1.tokens);
    assert.ok(first.usage.prompt_tokens > plain.usage.prompt_tokens + 20, `${first.usage.prompt_tokens} vs ${plain.usage.prompt_tokens}`);
    assert.ok(r1.prompt.includes('get_weather') && r1.prompt.includes('Get the current weather in a city.'));

    // The tool call and its result go back into the template; the model answers.
    const next = { ...body, messages: afterToolCall(callId) };
    const second = await client.chat.completions.create(next);
    checkMessage(second.choices[0]);
    const r2 = await rendered(file, next);
    assert.equal(second.usage.prompt_tokens, r2.tokens);
    assert.ok(r2.prompt.includes(toolResultMarker), r2.prompt);
    assert.ok(r2.prompt.includes('get_weather'));
    assert.ok(second.usage.prompt_tokens > first.usage.prompt_tokens);
  });

  test(`${name}: the model writes a tool call: parsed, streamed as a name and argument deltas, answered`, async () => {
    const { client, file } = servers[name];
    const req = { model: 'demo', messages: question, tools: TOOLS, max_tokens: 8, ...steer(name) };
    const r = await client.chat.completions.create(req);
    const choice = r.choices[0];
    assert.equal(choice.finish_reason, 'tool_calls', JSON.stringify(choice));
    assert.equal(r.usage.completion_tokens, 3);
    assert.equal(choice.message.content, null);
    assert.equal(choice.message.tool_calls.length, 1);
    const call = choice.message.tool_calls[0];
    assert.equal(call.type, 'function');
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris', unit: 'celsius' });
    assert.ok(name === 'mistral' ? /^[A-Za-z0-9]{9}$/.test(call.id) : /^call_/.test(call.id), call.id);

    const stream = await client.chat.completions.create({ ...req, stream: true });
    const deltas = [];
    let finish = null;
    let content = '';
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (!c) continue;
      content += c.delta.content ?? '';
      deltas.push(...(c.delta.tool_calls ?? []));
      if (c.finish_reason) finish = c.finish_reason;
    }
    assert.equal(finish, 'tool_calls');
    assert.equal(content, '');
    assert.ok(deltas.length >= 3, JSON.stringify(deltas));  // the name (with the first arguments), then more pieces
    assert.equal(deltas[0].index, 0);
    assert.equal(deltas[0].type, 'function');
    assert.equal(deltas[0].function.name, 'get_weather');
    assert.ok(deltas[0].id);
    for (const d of deltas.slice(1)) {
      assert.equal(d.index, 0);
      assert.equal(d.function.name, undefined, 'the name comes once');
    }
    assert.equal(deltas.map((d) => d.function.arguments).join(''), call.function.arguments);

    // The round trip: the call and the tool's result go back, and the model answers (freely, without steering).
    const messages = [...question, choice.message, { role: 'tool', tool_call_id: call.id, content: '18 degrees and sunny' }];
    const answer = await client.chat.completions.create({ model: 'demo', messages, tools: TOOLS, max_tokens: 6 });
    checkMessage(answer.choices[0]);
    const back = await rendered(file, { messages, tools: TOOLS });
    assert.equal(answer.usage.prompt_tokens, back.tokens);
    assert.ok(back.prompt.includes('18 degrees and sunny'));
    assert.ok(back.prompt.includes('"celsius"'), back.prompt);
  });

  test(`${name}: a streamed answer with tools adds up to the whole answer`, async () => {
    const { client } = servers[name];
    const req = { model: 'demo', messages: question, tools: TOOLS, max_tokens: 12, temperature: 1, seed: 99 };
    const whole = await client.chat.completions.create(req);
    const stream = await client.chat.completions.create({ ...req, stream: true });
    let content = '';
    const calls = [];
    let finish = null;
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (!c) continue;
      if (c.delta.content) content += c.delta.content;
      for (const t of c.delta.tool_calls ?? []) {
        if (t.index === calls.length) {
          assert.ok(t.id && t.function.name, 'a call starts with its id and name');
          calls.push({ id: t.id, name: t.function.name, arguments: '' });
        }
        calls[t.index].arguments += t.function.arguments ?? '';
      }
      if (c.finish_reason) finish = c.finish_reason;
    }
    assert.equal(finish, whole.choices[0].finish_reason);
    assert.equal(content, whole.choices[0].message.content ?? '');
    assert.deepEqual(calls.map((c) => [c.name, c.arguments]),
      (whole.choices[0].message.tool_calls ?? []).map((c) => [c.function.name, c.function.arguments]));
  });

  test(`${name}: tool_choice required and a named function force a call that follows the tool's parameters`, async () => {
    const { client } = servers[name];
    const seeds = [1, 2, 3, 4, 5];
    for (const [tool_choice, names] of [['required', ['get_weather', 'get_time']],
      [{ type: 'function', function: { name: 'get_weather' } }, ['get_weather']]]) {
      for (const seed of seeds) {
        const req = { model: 'demo', messages: question, tools: TOOLS, tool_choice, parallel_tool_calls: false,
          max_tokens: 120, temperature: 1, seed };
        const r = await client.chat.completions.create(req);
        const choice = r.choices[0];
        assert.equal(choice.finish_reason, 'tool_calls', JSON.stringify(choice));
        assert.equal(choice.message.tool_calls.length, 1, JSON.stringify(choice.message));
        const call = choice.message.tool_calls[0];
        assert.ok(names.includes(call.function.name), call.function.name);
        const args = JSON.parse(call.function.arguments);
        assert.equal(typeof args, 'object');
        if (call.function.name === 'get_weather') {
          for (const k of Object.keys(args)) assert.ok(['city', 'unit'].includes(k), k);
          assert.equal(typeof args.city, 'string');
          assert.ok([...args.city].length <= 12);
          if ('unit' in args) assert.ok(['celsius', 'fahrenheit'].includes(args.unit));
        } else {
          assert.deepEqual(args, {});
        }
        // Streamed: the same call, as a name and argument deltas.
        const stream = await client.chat.completions.create({ ...req, stream: true });
        let finish = null;
        const streamed = [];
        for await (const chunk of stream) {
          const c = chunk.choices[0];
          if (!c) continue;
          for (const t of c.delta.tool_calls ?? []) {
            if (t.function?.name) streamed[t.index] = { name: t.function.name, arguments: '' };
            streamed[t.index].arguments += t.function?.arguments ?? '';
          }
          if (c.finish_reason) finish = c.finish_reason;
        }
        assert.equal(finish, 'tool_calls');
        assert.deepEqual(streamed, [{ name: call.function.name, arguments: call.function.arguments }]);
      }
    }
    // With response_format as well: refused, naming the field.
    await assert.rejects(client.chat.completions.create({ model: 'demo', messages: question, tools: TOOLS,
      tool_choice: 'required', response_format: { type: 'json_object' } }), (e) => e.status === 400 && e.param === 'response_format');
  });

  test(`${name}: tool_choice required and a named function are accepted; parallel_tool_calls false too`, async () => {
    const { client } = servers[name];
    for (const tool_choice of ['required', { type: 'function', function: { name: 'get_time' } }, 'none']) {
      const r = await client.chat.completions.create({
        model: 'demo', messages: question, tools: TOOLS, tool_choice, parallel_tool_calls: false, max_tokens: 6,
      });
      checkMessage(r.choices[0]);
      assert.ok((r.choices[0].message.tool_calls ?? []).length <= 1);
    }
    // "none": the tools are not shown to the model.
    const none = await client.chat.completions.create({ model: 'demo', messages: question, tools: TOOLS, tool_choice: 'none', max_tokens: 1 });
    const bare = await client.chat.completions.create({ model: 'demo', messages: question, max_tokens: 1 });
    assert.equal(none.usage.prompt_tokens, bare.usage.prompt_tokens);
  });
}

test('bad tools and an unknown tool_choice are 400 naming the field', async () => {
  const { server, client } = servers.qwen3;
  const cases = [
    [{ tools: [{ type: 'retrieval' }] }, 'tools[0].type'],
    [{ tools: [{ type: 'function', function: { description: 'no name' } }] }, 'tools[0].function.name'],
    [{ tools: [{ type: 'function', function: { name: 'f', parameters: 'x' } }] }, 'tools[0].function.parameters'],
    [{ tools: TOOLS, tool_choice: { type: 'function', function: { name: 'launch_rockets' } } }, 'tool_choice'],
    [{ tool_choice: 'required' }, 'tool_choice'],
    [{ messages: [{ role: 'tool', content: 'x', tool_call_id: 5 }] }, 'messages[0].tool_call_id'],
  ];
  for (const [extra, param] of cases) {
    const r = await fetchT(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'demo', messages: question, max_tokens: 2, ...extra }),
    });
    assert.equal(r.status, 400);
    const e = (await r.json()).error;
    assert.equal(e.param, param, e.message);
  }
  await assert.rejects(
    client.chat.completions.create({ model: 'demo', messages: question, tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } }),
    (e) => e instanceof OpenAI.BadRequestError && /nope/.test(e.message));
});

test('reasoning_content: a prompt that opens <think> makes the answer reasoning, whole and streamed', async () => {
  const { client } = servers.thinking;
  const req = { model: 'demo', messages: question, max_tokens: 10, temperature: 0 };
  const whole = await client.chat.completions.create(req);
  const m = whole.choices[0].message;
  // The random model never closes </think>: all of its text is reasoning (cut by max_tokens).
  assert.ok(m.reasoning_content.length > 0, JSON.stringify(m));
  assert.equal(m.content, '');
  const stream = await client.chat.completions.create({ ...req, stream: true });
  let reasoning = '';
  let content = '';
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    content += d.content ?? '';
  }
  assert.equal(reasoning, m.reasoning_content);
  assert.equal(content, '');
  // Qwen3 thinks only when its output opens <think>; with enable_thinking false the prompt closes it and there is none.
  const q = await servers.qwen3.client.chat.completions.create({ ...req, chat_template_kwargs: { enable_thinking: false } });
  assert.equal(q.choices[0].message.reasoning_content, undefined);
  assert.equal(typeof q.choices[0].message.content, 'string');
});

function checkTop(entries, n) {
  assert.ok(entries.length <= n);
  let mass = 0;
  for (let i = 0; i < entries.length; i++) {
    assert.ok(entries[i].logprob <= 0);
    if (i) assert.ok(entries[i].logprob <= entries[i - 1].logprob, 'top_logprobs are sorted');
    mass += Math.exp(entries[i].logprob);
  }
  assert.ok(mass <= 1 + 1e-5, `probabilities sum to ${mass}`);
}

test('logprobs: chat (top_logprobs) and completions (legacy logprobs: N), whole and streamed', async () => {
  const { client } = servers.qwen3;
  const req = { model: 'demo', messages: question, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 5, ignore_eos: true };
  const r = await client.chat.completions.create(req);
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 5);
    checkTop(t.top_logprobs, 5);
    // Greedy: the chosen token is the most likely, with the same logprob.
    assert.equal(t.token, t.top_logprobs[0].token);
    assert.equal(t.logprob, t.top_logprobs[0].logprob);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
  }
  const s = await client.chat.completions.create({ ...req, stream: true });
  const streamed = [];
  for await (const chunk of s) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
  assert.deepEqual(streamed.map((t) => [t.token, t.logprob]), content.map((t) => [t.token, t.logprob]));
  // logprobs without top_logprobs: the chosen tokens only.
  const bare = await client.chat.completions.create({ ...req, top_logprobs: undefined });
  assert.ok(bare.choices[0].logprobs.content.every((t) => t.top_logprobs.length === 0));
  assert.equal(r.choices[0].logprobs.content.length, bare.choices[0].logprobs.content.length);

  const c = await client.completions.create({ model: 'demo', prompt: 'The sky is', max_tokens: 6, temperature: 0, logprobs: 3, ignore_eos: true });
  const lp = c.choices[0].logprobs;
  assert.equal(lp.tokens.length, c.usage.completion_tokens);
  assert.equal(lp.token_logprobs.length, lp.tokens.length);
  // Token by token, a character split over tokens shows as U+FFFD; otherwise the tokens spell the text.
  if (!lp.tokens.some((t) => t.includes('\uFFFD'))) assert.equal(lp.tokens.join(''), c.choices[0].text);
  let offset = 0;
  for (let i = 0; i < lp.tokens.length; i++) {
    assert.equal(lp.text_offset[i], offset);
    offset += [...lp.tokens[i]].length;
    const top = Object.entries(lp.top_logprobs[i]).map(([token, logprob]) => ({ token, logprob })).sort((a, b) => b.logprob - a.logprob);
    checkTop(top, 3);
    assert.equal(lp.token_logprobs[i], top[0].logprob);
  }
  // Out of range is 400.
  await assert.rejects(client.chat.completions.create({ ...req, top_logprobs: 21 }), (e) => e instanceof OpenAI.BadRequestError);
});
