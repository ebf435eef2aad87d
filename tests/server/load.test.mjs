// The short load test of the suite: 16 concurrent streaming clients, 2 requests each, 16 tokens per request, on
// loopback. Every request must be answered in full (none lost, none cut short); the figures are printed.
// The longer version is `node tests/server/loadtest.mjs` (docs/SERVER.md).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { makeModel, startServer, metrics } from './helpers.mjs';
import { loadTest, report } from './loadtest.mjs';

let model, server;

before(async () => {
  model = await makeModel();
  server = await startServer({
    model: model.model,
    args: ['--threads', '1', '--parallel', '8', '--ctx', '512', '--quiet'],
  });
});

after(async () => {
  try {
    if (server) assert.equal(await server.stop('SIGTERM'), 0, `moep serve did not exit 0:\n${server.log()}`);
  } finally {
    model?.cleanup();
  }
});

test('16 concurrent streaming clients: all answered, none lost', async () => {
  const r = await loadTest({ baseURL: server.baseURL, clients: 16, requests: 2, maxTokens: 16, singleRequests: 2,
    timeoutMs: 240_000 });
  console.log(report(r));
  assert.deepEqual(r.concurrent.failures, []);
  assert.equal(r.concurrent.answered, 32);
  assert.equal(r.concurrent.complete, 32);
  assert.equal(r.single.complete, 2);
  assert.ok(r.concurrent.ttft_p50_ms > 0 && r.concurrent.tbt_p50_ms > 0);
  const m = await metrics(server);
  assert.equal(m.moep_active_sequences, 0);
  assert.equal(m.moep_queue_length, 0);
  assert.equal(m['moep_generations_total{finish_reason="length"}'], 1 + 2 + 32);  // warm-up, single, concurrent
});
