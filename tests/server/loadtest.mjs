// A bounded load test of `moep serve` on loopback with the openai client: first one stream alone (the baseline),
// then C concurrent streaming clients with R requests each. Every request asks for exactly T tokens
// (ignore_eos), so "all answered, none lost" is checkable: each must end with finish_reason "length" and
// usage.completion_tokens == T. Reports time to first token and time between tokens (p50, p95) and aggregate
// tokens/s of both phases, so the gain from batching shows.
//
//   node tests/server/loadtest.mjs [--url http://127.0.0.1:PORT] [--clients 16] [--requests 4] [--max-tokens 64]
//        [--single-requests 4] [--model DIR | --synth "MOEP SYNTH FLAGS"] [--parallel 16] [--threads 1] [--ranks 1]
//        [--json FILE]
// Without --url it starts its own server on a free port, on --model or on a synthetic model (moep synth --preset
// demo, plus the --synth flags, e.g. "--d-model 1024 --ffn 2048 --layers 8").
// A time to first token counts from sending the request to the first chunk with text (queueing included); a
// time between tokens is the gap between successive text chunks (one token each, except where a multi-byte
// character spans tokens; chunks the client reads together show as near-zero gaps); a time per output token
// (TPOT) is one request's decode time over its tokens after the first, which such bunching does not distort.
import OpenAI from 'openai';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { makeModel, startServer, MOEP, repoRoot } from './helpers.mjs';

export function percentile(values, p) {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const k = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[k];
}

// One streamed request; returns { ttft_ms, gaps_ms[], tokens, finish, text }.
async function oneStream(client, req, timeoutMs) {
  const t0 = performance.now();
  const stream = await client.chat.completions.create(
    { ...req, stream: true, stream_options: { include_usage: true } },
    { timeout: timeoutMs },
  );
  let first = null;
  let last = null;
  const gaps = [];
  let finish = null;
  let tokens = null;
  for await (const chunk of stream) {
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    for (const c of chunk.choices) {
      if (c.delta?.content) {
        const now = performance.now();
        if (first === null) first = now;
        else gaps.push(now - last);
        last = now;
      }
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  // Time per output token of this request: its decode time over the tokens after the first.
  const tpot = tokens > 1 && last !== null ? (last - first) / (tokens - 1) : NaN;
  return { ttft_ms: first === null ? NaN : first - t0, gaps_ms: gaps, tpot_ms: tpot, tokens, finish };
}

// Runs `clients` concurrent clients, each sending `requests` streamed requests one after another.
async function phase(client, { modelId, clients, requests, maxTokens, timeoutMs, seedBase }) {
  const results = [];
  const failures = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async (_, ci) => {
    for (let ri = 0; ri < requests; ri++) {
      const req = {
        model: modelId,
        messages: [{ role: 'user', content: `Client ${ci}, request ${ri}: tell me a story about the sea.` }],
        max_tokens: maxTokens, temperature: 0.8, seed: seedBase + ci * 1000 + ri, ignore_eos: true,
      };
      try {
        results.push(await oneStream(client, req, timeoutMs));
      } catch (e) {
        failures.push(String(e));
      }
    }
  }));
  const wall_s = (performance.now() - t0) / 1000;
  const tokens = results.reduce((a, r) => a + (r.tokens ?? 0), 0);
  const ttft = results.map((r) => r.ttft_ms);
  const gaps = results.flatMap((r) => r.gaps_ms);
  const tpot = results.map((r) => r.tpot_ms).filter(Number.isFinite);
  return {
    clients, requests_per_client: requests, sent: clients * requests, answered: results.length,
    complete: results.filter((r) => r.finish === 'length' && r.tokens === maxTokens).length,
    failures, wall_s, tokens, tokens_per_s: tokens / wall_s,
    ttft_p50_ms: percentile(ttft, 50), ttft_p95_ms: percentile(ttft, 95),
    tbt_p50_ms: percentile(gaps, 50), tbt_p95_ms: percentile(gaps, 95),
    tpot_p50_ms: percentile(tpot, 50), tpot_p95_ms: percentile(tpot, 95),
  };
}

// The whole test against `baseURL`: a single-stream baseline, then the concurrent phase.
export async function loadTest({ baseURL, apiKey = 'none', clients = 16, requests = 4, maxTokens = 64,
  singleRequests = 4, timeoutMs = 300_000 }) {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: timeoutMs });
  const modelId = (await client.models.list()).data[0].id;
  await phase(client, { modelId, clients: 1, requests: 1, maxTokens: 4, timeoutMs, seedBase: 1 });  // warm-up
  const single = await phase(client, { modelId, clients: 1, requests: singleRequests, maxTokens, timeoutMs, seedBase: 100 });
  const concurrent = await phase(client, { modelId, clients, requests, maxTokens, timeoutMs, seedBase: 10_000 });
  return { max_tokens: maxTokens, single, concurrent, gain: concurrent.tokens_per_s / single.tokens_per_s };
}

function fmt(p) {
  const f = (x) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
  return `${String(p.clients).padStart(3)} x ${p.requests_per_client}  answered ${p.answered}/${p.sent} ` +
    `(complete ${p.complete})  ${f(p.tokens_per_s).padStart(7)} tok/s  ` +
    `TTFT p50 ${f(p.ttft_p50_ms)} ms p95 ${f(p.ttft_p95_ms)} ms  TBT p50 ${f(p.tbt_p50_ms)} ms p95 ${f(p.tbt_p95_ms)} ms  ` +
    `TPOT p50 ${f(p.tpot_p50_ms)} ms p95 ${f(p.tpot_p95_ms)} ms`;
}

export function report(r) {
  return `single stream : ${fmt(r.single)}\nconcurrent    : ${fmt(r.concurrent)}\n` +
    `batching gain : ${r.gain.toFixed(2)}x aggregate tokens/s over one stream (${r.max_tokens} tokens per request)`;
}

function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    o[a.slice(2)] = argv[++i];
  }
  return o;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const opts = {
    clients: Number(a.clients ?? 16), requests: Number(a.requests ?? 4), maxTokens: Number(a['max-tokens'] ?? 64),
    singleRequests: Number(a['single-requests'] ?? 4),
  };
  let server = null;
  let model = null;
  let baseURL = a.url ? `${a.url.replace(/\/$/, '')}/v1` : null;
  const threads = a.threads ?? '1';
  const parallel = a.parallel ?? String(opts.clients);
  const ranks = Number(a.ranks ?? 1);
  if (!baseURL) {
    if (!a.model) model = await makeModel(a.synth ? a.synth.split(/\s+/).filter(Boolean) : []);
    server = await startServer({
      model: a.model ?? model.model, ranks,
      args: ['--threads', threads, '--parallel', parallel, '--ctx', '1024', '--quiet', '--max-queued', '1024'],
    });
    baseURL = server.baseURL;
  }
  try {
    const r = await loadTest({ baseURL, apiKey: process.env.MOEP_API_KEY ?? 'none', ...opts });
    let commit = 'unknown';
    try {
      commit = execFileSync('git', ['-C', repoRoot, 'rev-parse', '--short=12', 'HEAD']).toString().trim();
    } catch { /* not a checkout */ }
    const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
    console.log(`moep serve load test: commit ${commit}; ${cpu}, ${os.cpus().length} cores; ` +
      (server ? `server: ${a.model ?? `demo model ${a.synth ?? ''}`}, ${ranks} rank(s), --threads ${threads} ` +
        `--parallel ${parallel}` : `server ${a.url}`));
    console.log(report(r));
    if (a.json) writeFileSync(a.json, JSON.stringify({ commit, cpu, moep: MOEP, ...r }, null, 2));
    const ok = r.single.complete === r.single.sent && r.concurrent.complete === r.concurrent.sent;
    if (!ok) {
      console.error('some requests were not answered in full:', JSON.stringify(r.concurrent.failures.slice(0, 5)));
      process.exitCode = 1;
    }
  } finally {
    if (server) {
      const code = await server.stop('SIGTERM');
      if (code !== 0) {
        console.error(`moep serve exited ${code}`);
        process.exitCode = 1;
      }
    }
    model?.cleanup();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
