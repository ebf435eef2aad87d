// `moep serve` driven by the official openai client: chat, streaming chat, completions (streaming or not), models,
// usage, stop strings, seeds, and a client that disconnects mid-stream freeing its slot. Runs on MOEP_SERVE_RANKS
// ranks (1 by default; ctest runs it with 2 under mpirun too).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { makeModel, startServer, fetchT, metrics, waitFor, RANKS } from './helpers.mjs';

let model, server, client;

before(async () => {
  model = await makeModel();
  server = await startServer({
    model: model.model,
    args: ['--threads', '1', '--parallel', '4', '--ctx', '512', '--quiet'],
  });
  client = new OpenAI({ baseURL: server.baseURL, apiKey: 'not-needed', maxRetries: 0, timeout: 120_000 });
});

after(async () => {
  try {
    if (server) assert.equal(await server.stop('SIGTERM'), 0, `moep serve did not exit 0:\n${server.log()}`);
  } finally {
    model?.cleanup();
  }
});

const messages = [
  { role: 'system', content: 'You are a terse assistant.' },
  { role: 'user', content: 'Name three colours.' },
];

function usageOk(usage, maxTokens) {
  assert.ok(usage.prompt_tokens > 0, 'prompt_tokens');
  assert.ok(usage.completion_tokens >= 0 && usage.completion_tokens <= maxTokens, 'completion_tokens');
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

test('health and models', async () => {
  const h = await fetchT(`${server.url}/health`);
  assert.equal(h.status, 200);
  assert.deepEqual(await h.json(), { status: 'ok' });
  const list = await client.models.list();
  const ids = [];
  for await (const m of list) ids.push(m.id);
  assert.deepEqual(ids, ['demo']);
  const one = await client.models.retrieve('demo');
  assert.equal(one.id, 'demo');
  assert.equal(one.object, 'model');
});

test('chat completion', async () => {
  const r = await client.chat.completions.create({
    model: 'demo', messages, max_tokens: 12, temperature: 0.9, seed: 7,
  });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, 'demo');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  usageOk(r.usage, 12);
  if (r.choices[0].finish_reason === 'length') assert.equal(r.usage.completion_tokens, 12);
});

test('streaming chat equals the whole answer for the same seed', async () => {
  const req = { model: 'demo', messages, max_completion_tokens: 16, temperature: 1.0, seed: 1234 };
  const whole = await client.chat.completions.create(req);
  const stream = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let role = null;
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks >= 2);
  assert.equal(role, 'assistant');
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.deepEqual(usage, whole.usage);
});

test('completions, whole and streamed', async () => {
  const req = { model: 'demo', prompt: 'The capital of France is', max_tokens: 16, temperature: 0.8, seed: 99 };
  const whole = await client.completions.create(req);
  assert.equal(whole.object, 'text_completion');
  assert.match(whole.id, /^cmpl-/);
  assert.equal(typeof whole.choices[0].text, 'string');
  usageOk(whole.usage, 16);
  const stream = await client.completions.create({ ...req, stream: true });
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, whole.choices[0].finish_reason);
});

test('seeds: same seed same text, another seed other text', async () => {
  const req = { model: 'demo', prompt: 'Once upon a time', max_tokens: 20, temperature: 1.0, ignore_eos: true };
  const a = await client.completions.create({ ...req, seed: 5 });
  const b = await client.completions.create({ ...req, seed: 5 });
  const c = await client.completions.create({ ...req, seed: 6 });
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.notEqual(a.choices[0].text, c.choices[0].text);
  // ignore_eos: exactly max_tokens tokens.
  assert.equal(a.usage.completion_tokens, 20);
  assert.equal(a.choices[0].finish_reason, 'length');
});

test('stop strings cut the text before the first match', async () => {
  const req = { model: 'demo', prompt: 'Hello', max_tokens: 32, temperature: 1.0, seed: 11, ignore_eos: true };
  const full = (await client.completions.create(req)).choices[0].text;
  assert.ok(full.length >= 8, `need some text, got ${JSON.stringify(full)}`);
  // A stop string taken from the middle of the text: the answer ends right before its first occurrence.
  const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
  const cut = await client.completions.create({ ...req, stop: [stop, 'never-occurs-xyzzy'] });
  assert.equal(cut.choices[0].text, full.slice(0, full.indexOf(stop)));
  assert.equal(cut.choices[0].finish_reason, 'stop');
  const cutStream = await client.completions.create({ ...req, stop, stream: true });
  let text = '';
  for await (const chunk of cutStream) for (const c of chunk.choices) text += c.text;
  assert.equal(text, full.slice(0, full.indexOf(stop)));
});

test('extra sampling parameters are accepted', async () => {
  const r = await client.chat.completions.create({
    model: 'demo', messages, max_tokens: 8, temperature: 0.7, top_p: 0.9, seed: 3,
    top_k: 20, min_p: 0.1, repetition_penalty: 1.1, stop: '\n\n', n: 1,
  });
  usageOk(r.usage, 8);
});

test('a client that disconnects mid-stream frees its slot', async () => {
  const before = await metrics(server);
  const controller = new AbortController();
  const stream = await client.chat.completions.create(
    { model: 'demo', messages, max_tokens: 450, temperature: 1.0, seed: 2, ignore_eos: true, stream: true },
    { signal: controller.signal },
  );
  let chunks = 0;
  try {
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) chunks++;
      if (chunks >= 3) controller.abort();
    }
  } catch (e) {
    assert.ok(controller.signal.aborted, `unexpected error ${e}`);
  }
  assert.ok(chunks >= 3);
  const freed = await waitFor(async () => {
    const m = await metrics(server);
    return m.moep_active_sequences === 0 && m.moep_requests_cancelled_total === before.moep_requests_cancelled_total + 1;
  }, 30_000);
  const m = await metrics(server);
  assert.ok(freed, `slot not freed: ${JSON.stringify(m)}`);
  // Far fewer than 450 tokens were generated for it.
  assert.ok(m.moep_completion_tokens_total - before.moep_completion_tokens_total < 450);
});

test('metrics in Prometheus text format', async () => {
  const r = await fetchT(`${server.url}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/plain/);
  const m = await metrics(server);
  for (const name of ['moep_requests_submitted_total', 'moep_completion_tokens_total', 'moep_prompt_tokens_total',
    'moep_tokens_per_second', 'moep_queue_length', 'moep_active_sequences', 'moep_steps_total',
    'moep_step_seconds_total', 'moep_step_compute_seconds_total', 'moep_step_communication_seconds_total',
    'moep_time_to_first_token_seconds_count'])
    assert.ok(name in m, `${name} missing`);
  assert.equal(m.moep_ranks, RANKS);
  assert.ok(m.moep_completion_tokens_total > 0);
  assert.ok(m['moep_http_requests_total{route="/v1/chat/completions",code="200"}'] >= 1);
});
