// Bad requests get the right 4xx status and an OpenAI-shaped JSON error, and the server keeps serving others:
// wrong or missing API key, malformed JSON, wrong types, out-of-range values, unknown model, over-long prompts,
// too large bodies (with Content-Length and chunked), unsupported options, unknown paths.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { makeModel, startServer, fetchT, metrics, waitFor } from './helpers.mjs';

const KEY = 'sk-test-0123456789';
const AUTH = { Authorization: `Bearer ${KEY}` };
let model, server, client;

before(async () => {
  model = await makeModel();
  server = await startServer({
    model: model.model,
    args: ['--threads', '1', '--parallel', '2', '--ctx', '256', '--max-tokens-cap', '100', '--max-body-bytes', '4096',
      '--quiet'],
    env: { MOEP_API_KEY: KEY },
  });
  client = new OpenAI({ baseURL: server.baseURL, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
});

after(async () => {
  try {
    if (server) assert.equal(await server.stop('SIGINT'), 0, `moep serve did not exit 0:\n${server.log()}`);
  } finally {
    model?.cleanup();
  }
});

// POSTs `body` (an object is sent as JSON, a string as is) and returns { status, body (parsed JSON) }.
async function post(path, body, headers = AUTH) {
  const r = await fetchT(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    assert.fail(`${path}: status ${r.status}, body is not JSON: ${text}`);
  }
  return { status: r.status, body: json, headers: r.headers };
}

// Checks OpenAI's error shape: {"error": {"message": string, "type": string, "param": string|null, "code": ...}}.
function isError(res, status, { param, code } = {}) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  const e = res.body.error;
  assert.ok(e, `no "error" object: ${JSON.stringify(res.body)}`);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  assert.ok('param' in e && 'code' in e);
  if (param !== undefined) assert.equal(e.param, param, e.message);
  if (code !== undefined) assert.equal(e.code, code, e.message);
}

const chat = (extra = {}) => ({ model: 'demo', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, ...extra });

async function stillServes() {
  const r = await post('/v1/chat/completions', chat({ seed: 1 }));
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.object, 'chat.completion');
}

test('API key: missing or wrong is 401; health stays open', async () => {
  isError(await post('/v1/chat/completions', chat(), {}), 401, { code: 'invalid_api_key' });
  isError(await post('/v1/chat/completions', chat(), { Authorization: 'Bearer wrong' }), 401, { code: 'invalid_api_key' });
  isError(await post('/v1/completions', { prompt: 'x' }, { Authorization: KEY }), 401);  // no "Bearer"
  for (const path of ['/v1/models', '/metrics']) {
    const r = await fetchT(`${server.url}${path}`);
    assert.equal(r.status, 401, path);
    assert.equal((await r.json()).error.code, 'invalid_api_key');
    assert.equal((await fetchT(`${server.url}${path}`, { headers: AUTH })).status, 200, path);
  }
  assert.equal((await fetchT(`${server.url}/health`)).status, 200);
  const wrong = new OpenAI({ baseURL: server.baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
  await assert.rejects(wrong.chat.completions.create(chat()), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  await stillServes();
});

test('malformed JSON and non-object bodies are 400', async () => {
  isError(await post('/v1/chat/completions', '{"model": "demo", "messages": ['), 400, { param: null });
  isError(await post('/v1/chat/completions', '[1, 2, 3]'), 400);
  isError(await post('/v1/completions', ''), 400);
  isError(await post('/v1/completions', '{"prompt": "a\\ud800"}'), 400);  // a lone surrogate is not UTF-8
  await stillServes();
});

test('wrong types are 400 naming the field', async () => {
  const cases = [
    ['/v1/chat/completions', chat({ messages: 'hi' }), 'messages'],
    ['/v1/chat/completions', chat({ messages: [] }), 'messages'],
    ['/v1/chat/completions', chat({ messages: [{ role: 'user', content: 5 }] }), 'messages[0].content'],
    ['/v1/chat/completions', chat({ messages: [{ role: 'wizard', content: 'x' }] }), 'messages[0].role'],
    ['/v1/chat/completions', chat({ messages: [{ content: 'x' }] }), 'messages[0].role'],
    ['/v1/chat/completions', chat({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }),
      'messages[0].content[0].type'],
    ['/v1/chat/completions', chat({ max_tokens: '12' }), 'max_tokens'],
    ['/v1/chat/completions', chat({ max_tokens: 1.5 }), 'max_tokens'],
    ['/v1/chat/completions', chat({ temperature: 'hot' }), 'temperature'],
    ['/v1/chat/completions', chat({ top_p: [1] }), 'top_p'],
    ['/v1/chat/completions', chat({ top_k: 2.5 }), 'top_k'],
    ['/v1/chat/completions', chat({ seed: 'x' }), 'seed'],
    ['/v1/chat/completions', chat({ stream: 'yes' }), 'stream'],
    ['/v1/chat/completions', chat({ stop: 5 }), 'stop'],
    ['/v1/chat/completions', chat({ stop: ['ok', 7] }), 'stop[1]'],
    ['/v1/chat/completions', chat({ model: 42 }), 'model'],
    ['/v1/completions', { model: 'demo', prompt: { text: 'x' } }, 'prompt'],
    ['/v1/completions', { model: 'demo', prompt: ['a', 'b'] }, 'prompt'],
    ['/v1/completions', { model: 'demo' }, 'prompt'],
  ];
  for (const [path, body, param] of cases) isError(await post(path, body), 400, { param });
  await stillServes();
});

test('out-of-range and unsupported values are 400', async () => {
  const cases = [
    [chat({ temperature: 3 }), 'temperature'],
    [chat({ temperature: -0.5 }), 'temperature'],
    [chat({ top_p: 0 }), 'top_p'],
    [chat({ min_p: 2 }), 'min_p'],
    [chat({ repetition_penalty: 0 }), 'repetition_penalty'],
    [chat({ max_tokens: 0 }), 'max_tokens'],
    [chat({ max_tokens: 101 }), 'max_tokens'],  // over --max-tokens-cap
    [chat({ max_completion_tokens: 1000 }), 'max_completion_tokens'],
    [chat({ n: 2 }), 'n'],
    [chat({ logprobs: true, top_logprobs: 21 }), 'top_logprobs'],
    [chat({ top_logprobs: 2 }), 'top_logprobs'],  // needs logprobs: true
    [chat({ tools: [{ type: 'code_interpreter' }] }), 'tools[0].type'],
    [chat({ tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: { type: 'function', function: { name: 'g' } } }),
      'tool_choice'],
    [chat({ presence_penalty: 0.5 }), 'presence_penalty'],
    [chat({ response_format: { type: 'xml' } }), 'response_format.type'],
    [chat({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object',
      properties: { a: { type: 'string', pattern: '^a' } } } } } }), 'response_format.json_schema.schema.properties.a.pattern'],
  ];
  for (const [body, param] of cases) isError(await post('/v1/chat/completions', body), 400, { param });
  await assert.rejects(client.chat.completions.create(chat({ n: 3 })), (e) => e instanceof OpenAI.BadRequestError);
  await stillServes();
});

test('unknown model is 404', async () => {
  isError(await post('/v1/chat/completions', chat({ model: 'gpt-4o' })), 404, { param: 'model', code: 'model_not_found' });
  isError(await post('/v1/completions', { model: 'nope', prompt: 'x' }), 404, { code: 'model_not_found' });
  const r = await fetchT(`${server.url}/v1/models/nope`, { headers: AUTH });
  assert.equal(r.status, 404);
  await assert.rejects(client.chat.completions.create(chat({ model: 'other' })), (e) => e instanceof OpenAI.NotFoundError);
  await stillServes();
});

test('over-long prompts are 400 context_length_exceeded', async () => {
  const long = 'word '.repeat(300);  // ~300 tokens > context 256
  isError(await post('/v1/completions', { model: 'demo', prompt: long, max_tokens: 4 }), 400,
    { param: 'prompt', code: 'context_length_exceeded' });
  isError(await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: long }] })), 400,
    { param: 'messages', code: 'context_length_exceeded' });
  // Fits alone, but not with max_tokens.
  isError(await post('/v1/completions', { model: 'demo', prompt: 'word '.repeat(200), max_tokens: 100 }), 400,
    { code: 'context_length_exceeded' });
  await assert.rejects(client.completions.create({ model: 'demo', prompt: long }),
    (e) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded');
  // No max_tokens: the answer is cut to the context left.
  const r = await post('/v1/completions', { model: 'demo', prompt: 'word '.repeat(200), ignore_eos: true });
  assert.equal(r.status, 200);
  assert.equal(r.body.choices[0].finish_reason, 'length');
  assert.ok(r.body.usage.total_tokens <= 256);
  await stillServes();
});

test('too large bodies are 413, with Content-Length or chunked', async () => {
  const big = JSON.stringify(chat({ messages: [{ role: 'user', content: 'x'.repeat(5000) }] }));
  isError(await post('/v1/chat/completions', big), 413);
  const chunked = await fetchT(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...AUTH },
    body: new ReadableStream({
      start(c) {
        for (let i = 0; i < 10; i++) c.enqueue(new TextEncoder().encode(big.slice(i * 600, (i + 1) * 600)));
        c.close();
      },
    }),
    duplex: 'half',
  });
  assert.equal(chunked.status, 413);
  assert.ok((await chunked.json()).error);
  await stillServes();
});

test('unknown paths are 404 and wrong methods 405, as JSON', async () => {
  let r = await fetchT(`${server.url}/v1/nothing`, { headers: AUTH });
  assert.equal(r.status, 404);
  assert.ok((await r.json()).error.message);
  r = await fetchT(`${server.url}/v1/chat/completions`, { headers: AUTH });
  assert.equal(r.status, 405);
  assert.ok((await r.json()).error);
  await stillServes();
});

test('a stream runs on while bad requests come and go; the counters see them', async () => {
  const stream = await client.chat.completions.create({ ...chat({ max_tokens: 60, seed: 4, ignore_eos: true }), stream: true });
  const bad = (async () => {
    for (let i = 0; i < 5; i++) {
      isError(await post('/v1/chat/completions', '{oops'), 400);
      isError(await post('/v1/chat/completions', chat(), {}), 401);
    }
  })();
  let n = 0;
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      if (c.delta.content) n++;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  await bad;
  assert.equal(finish, 'length');
  assert.ok(n > 0);
  const m = await metrics(server, AUTH);
  assert.ok(m['moep_http_requests_total{route="/v1/chat/completions",code="400"}'] >= 5);
  assert.ok(m['moep_http_requests_total{route="/v1/chat/completions",code="401"}'] >= 5);
});

test('a full queue is 503 server_overloaded; a generation past --request-timeout ends with 503 timeout', async () => {
  const s = await startServer({
    model: model.model,
    args: ['--threads', '1', '--parallel', '1', '--max-queued', '1', '--request-timeout', '2', '--quiet'],
  });
  try {
    const c = new OpenAI({ baseURL: s.baseURL, apiKey: 'none', maxRetries: 0, timeout: 60_000 });
    const long = { model: 'demo', prompt: 'Hello', max_tokens: 4000, ignore_eos: true };
    // A takes the only slot (it has streamed a chunk), B waits for it, C finds the queue full.
    const a = await c.completions.create({ ...long, stream: true });
    const it = a[Symbol.asyncIterator]();
    await it.next();
    const b = fetchT(`${s.url}/v1/completions`, { method: 'POST', body: JSON.stringify(long) });
    assert.ok(await waitFor(async () => (await metrics(s)).moep_queue_length === 1, 20_000));
    const cRes = await fetchT(`${s.url}/v1/completions`, { method: 'POST', body: JSON.stringify(long) });
    assert.equal(cRes.status, 503);
    assert.equal((await cRes.json()).error.code, 'server_overloaded');
    // A runs past 2 s: its stream ends with an error event, which the client raises.
    await assert.rejects(async () => {
      for (let r = await it.next(); !r.done; r = await it.next());
    }, (e) => e instanceof OpenAI.APIError && /request-timeout/.test(e.message));
    // B, counted from its own submission, times out too.
    const bRes = await b;
    assert.equal(bRes.status, 503);
    assert.equal((await bRes.json()).error.code, 'timeout');
    const m = await metrics(s);
    assert.equal(m.moep_active_sequences, 0);
    assert.equal(m.moep_queue_length, 0);
  } finally {
    assert.equal(await s.stop('SIGTERM'), 0, s.log());
  }
});
