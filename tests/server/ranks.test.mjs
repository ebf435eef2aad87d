// Under mpirun -np 2 the server answers as on 1 rank: for fixed seeds (temperature > 0) the text of chat and
// completion requests, streamed or not, is the same on 1 and on 2 ranks. Skipped without mpirun.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { makeModel, startServer, haveMpirun } from './helpers.mjs';

const skip = haveMpirun() ? false : 'mpirun not found';
let model;
const servers = {};

before(async () => {
  if (skip) return;
  model = await makeModel();
  for (const ranks of [1, 2])
    servers[ranks] = await startServer({ model: model.model, ranks, args: ['--threads', '1', '--parallel', '4', '--ctx', '512', '--quiet'] });
});

after(async () => {
  try {
    for (const s of Object.values(servers)) assert.equal(await s.stop('SIGTERM'), 0, `moep serve did not exit 0:\n${s.log()}`);
  } finally {
    model?.cleanup();
  }
});

async function answers(server) {
  const client = new OpenAI({ baseURL: server.baseURL, apiKey: 'none', maxRetries: 0, timeout: 120_000 });
  const out = [];
  for (const seed of [1, 42, 31337]) {
    const chat = { model: 'demo', messages: [{ role: 'user', content: `Seed ${seed}: say something.` }], max_tokens: 24,
      temperature: 0.9, seed, ignore_eos: true };
    out.push((await client.chat.completions.create(chat)).choices[0].message.content);
    let streamed = '';
    for await (const c of await client.chat.completions.create({ ...chat, stream: true }))
      streamed += c.choices[0]?.delta?.content ?? '';
    out.push(streamed);
    const comp = { model: 'demo', prompt: 'In the beginning', max_tokens: 24, temperature: 1.1, top_k: 0, min_p: 0, seed };
    out.push((await client.completions.create(comp)).choices[0].text);
  }
  // Several at once (batched together in one step): each still gets its own seed's text.
  const together = await Promise.all([5, 6, 7, 8].map((seed) => client.completions.create(
    { model: 'demo', prompt: `Batch ${seed}`, max_tokens: 16, temperature: 0.8, seed, ignore_eos: true })));
  out.push(...together.map((r) => r.choices[0].text));
  return out;
}

test('2 ranks give the 1-rank text for fixed seeds', { skip }, async () => {
  const one = await answers(servers[1]);
  const two = await answers(servers[2]);
  assert.equal(one.length, two.length);
  for (let i = 0; i < one.length; i++) assert.equal(two[i], one[i], `answer ${i} differs`);
  assert.ok(one.some((t) => t.length > 0));
});
