// Shared by the server tests: make a tiny synthetic model, start `moep serve` on a free loopback port (on 1 rank,
// or on N ranks under mpirun), stop it with SIGTERM and check that it exits 0. Every wait is bounded in time.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
export const MOEP = process.env.MOEP_BINARY || path.join(repoRoot, 'build', 'moep');
// Ranks the tests' servers run on (ctest runs the suite once with 1 and once with 2).
export const RANKS = Number(process.env.MOEP_SERVE_RANKS || '1');

// The flags the project uses for mpirun on one machine (tests/test_util.cpp, mpirun_prefix).
export function mpirunArgs(n) {
  return ['--allow-run-as-root', '--oversubscribe', '--bind-to', 'none', '--mca', 'mpi_yield_when_idle', '1',
    '--mca', 'btl', 'self,vader', '--mca', 'btl_vader_single_copy_mechanism', 'none', '-np', String(n)];
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function run(cmd, args, timeoutMs) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

// A temporary directory holding `moep synth DIR/m --preset demo` (random weights, GPT-2 tokenizer, ChatML).
// Returns { dir, model, cleanup }.
export async function makeModel(extraArgs = []) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'moep-serve-test-'));
  const model = path.join(dir, 'demo');
  await run(MOEP, ['synth', model, '--preset', 'demo', ...extraArgs], 300_000);
  return { dir, model, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

// Starts `moep serve MODEL --port 0 ...` (under mpirun when ranks > 1) and waits until it listens.
// Returns { url, baseURL, port, pid, stop(signal), log() }; stop() resolves to the exit code and throws if the
// process does not end within its time.
export async function startServer({ model, ranks = RANKS, args = [], env = {}, startTimeoutMs = 180_000 }) {
  const serveArgs = ['serve', model, '--port', '0', ...args];
  const [cmd, argv] = ranks > 1 ? ['mpirun', [...mpirunArgs(ranks), MOEP, ...serveArgs]] : [MOEP, serveArgs];
  const proc = spawn(cmd, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1', ...env },
  });
  let log = '';
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  proc.stdout.on('data', (d) => { log += d.toString(); });
  proc.stderr.on('data', (d) => { log += d.toString(); });

  const started = Date.now();
  let m = null;
  while (!(m = /listening on http:\/\/([0-9.]+):(\d+) \(pid (\d+)\)/.exec(log))) {
    if (exitInfo) throw new Error(`moep serve exited (${JSON.stringify(exitInfo)}) before listening:\n${log}`);
    if (Date.now() - started > startTimeoutMs) {
      proc.kill('SIGKILL');
      throw new Error(`moep serve did not listen within ${startTimeoutMs} ms:\n${log}`);
    }
    await sleep(50);
  }
  const [, host, port, pid] = m;
  const url = `http://${host}:${port}`;
  return {
    url,
    baseURL: `${url}/v1`,
    port: Number(port),
    pid: Number(pid),
    log: () => log,
    // Sends `signal` to rank 0 (which stops the scheduler and releases the other ranks) and waits for the exit.
    async stop(signal = 'SIGTERM', timeoutMs = 60_000) {
      if (!exitInfo) process.kill(Number(pid), signal);
      let timer;
      const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), timeoutMs); });
      const info = await Promise.race([exited, timeout]);
      clearTimeout(timer);
      if (!info) {
        proc.kill('SIGKILL');
        throw new Error(`moep serve did not exit within ${timeoutMs} ms of ${signal}:\n${log}`);
      }
      return info.code;
    },
  };
}

// fetch with a time limit (ms).
export async function fetchT(url, init = {}, timeoutMs = 120_000) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
}

// Reads /metrics into { name{labels}: value }.
export async function metrics(server, headers = {}) {
  const r = await fetchT(`${server.url}/metrics`, { headers });
  const text = await r.text();
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

// Polls `cond` (async) every 100 ms until it holds or `timeoutMs` passes; returns whether it held.
export async function waitFor(cond, timeoutMs = 20_000) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (await cond()) return true;
    await sleep(100);
  }
  return false;
}

export function haveMpirun() {
  return (process.env.PATH || '').split(':').some((d) => d && existsSync(path.join(d, 'mpirun')));
}
