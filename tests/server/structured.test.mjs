// Structured output through the official openai client: response_format json_schema and json_object on chat and
// completions, streamed or not, with a random-weight model (so the grammar alone makes the JSON). Checks the JSON
// with its own small validator, not moep's grammar. Runs on MOEP_SERVE_RANKS ranks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { makeModel, startServer, fetchT } from './helpers.mjs';

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

const schema = {
  type: 'object',
  properties: {
    city: { type: 'string', maxLength: 8 },
    unit: { enum: ['C', 'F'] },
    days: { type: 'array', items: { type: 'integer' }, minItems: 1, maxItems: 3 },
    windy: { type: ['boolean', 'null'] },
  },
  required: ['city', 'unit', 'days', 'windy'],
  additionalProperties: false,
};

function check(v) {
  assert.deepEqual(Object.keys(v), ['city', 'unit', 'days', 'windy']);
  assert.equal(typeof v.city, 'string');
  assert.ok([...v.city].length <= 8, v.city);
  assert.ok(['C', 'F'].includes(v.unit));
  assert.ok(Array.isArray(v.days) && v.days.length >= 1 && v.days.length <= 3);
  for (const d of v.days) assert.ok(Number.isInteger(d), String(d));
  assert.ok(v.windy === null || typeof v.windy === 'boolean');
}

const responseFormat = { type: 'json_schema', json_schema: { name: 'weather', strict: true, schema } };
const messages = [{ role: 'user', content: 'The weather, as JSON.' }];

test('chat with a json_schema gives JSON that validates, seed after seed', async () => {
  for (let seed = 1; seed <= 6; seed++) {
    const r = await client.chat.completions.create({
      model: 'demo', messages, max_tokens: 300, temperature: 1, top_k: 0, top_p: 1, min_p: 0, seed,
      response_format: responseFormat,
    });
    assert.equal(r.choices[0].finish_reason, 'stop', r.choices[0].message.content);
    check(JSON.parse(r.choices[0].message.content));
  }
});

test('streamed chat with a json_schema: the pieces join into valid JSON', async () => {
  const stream = await client.chat.completions.create({
    model: 'demo', messages, max_tokens: 300, seed: 3, stream: true, response_format: responseFormat,
  });
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (c?.delta?.content) text += c.delta.content;
    if (c?.finish_reason) finish = c.finish_reason;
  }
  assert.equal(finish, 'stop');
  check(JSON.parse(text));
});

test('completions with json_object give an object, or are cut by max_tokens as a prefix', async () => {
  for (let seed = 1; seed <= 4; seed++) {
    const r = await client.completions.create({
      model: 'demo', prompt: 'JSON:', max_tokens: 60, seed, response_format: { type: 'json_object' },
    });
    const { text, finish_reason: finish } = r.choices[0];
    assert.ok(text.startsWith('{'), text);
    if (finish === 'stop') {
      const v = JSON.parse(text);
      assert.equal(typeof v, 'object');
      assert.ok(!Array.isArray(v) && v !== null);
    } else {
      assert.equal(finish, 'length');
      assert.throws(() => JSON.parse(text));  // cut short: documented, the JSON may be incomplete
    }
  }
});

test('a malformed schema is a 400 naming the field', async () => {
  const bad = { ...responseFormat, json_schema: { name: 'w', schema: { type: 'object', properties: { a: { type: 'integer', minimum: 0 } } } } };
  await assert.rejects(
    client.chat.completions.create({ model: 'demo', messages, response_format: bad }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format.json_schema.schema.properties.a.minimum',
  );
  const h = await fetchT(`${server.url}/health`);
  assert.equal(h.status, 200);
});
