// Smoke test of the benchmark harness (bench/run.mjs, bench/micro/): it runs for a few seconds
// against the BUILT gateway (dist/, `npm test` builds it first) and must produce sane output.
// Performance is never asserted here: only that every number exists and traffic really flowed.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { existsSync } from 'node:fs';

const ROOT = join(import.meta.dirname, '..', '..');
const RUN = join(ROOT, 'bench', 'run.mjs');

// bench/ is its own package (its dependencies never reach the runtime): `.ci/run` installs it.
if (!existsSync(join(ROOT, 'bench', 'node_modules', 'tinybench'))) {
  t.plan(0, 'bench dependencies are not installed: run `npm ci --prefix bench` (.ci/run does)');
  process.exit(0);
}

interface Row {
  system: string;
  scenario: string;
  rounds: number;
  rps: number | null;
  p50Ms: number | null;
  p99Ms: number | null;
  rssBytes: number | null;
  cpuUsPerReq: number | null;
  non2xx: number;
  errors: number;
}

interface Stats {
  median(values: unknown[]): number | null;
  ratio(a: number | null, b: number | null): number | null;
  parseDurationMs(text: string): number;
  parseWrkOutput(stdout: string): { requests: number; rps: number; p50Ms: number; p99Ms: number; non2xx: number; errors: number } | null;
  parseVmRss(text: string): number | null;
  parseStatCpuTicks(text: string): number | null;
  cpuUsPerRequest(ticks: number | null, hz: number, requests: number): number | null;
  summarize(samples: object[]): Row[];
  ratios(rows: Row[]): { fullOverProxyOnly: number | null; fullOverNginx: number | null; addedLatencyMs: Record<string, number | null> };
  targets(rows: Row[], rs: ReturnType<Stats['ratios']>): { target: string; value: number | null; met: boolean | null }[];
}

/** The part of a tap test this file needs. */
interface Teardown {
  teardown(fn: () => unknown): void;
}

function runNode(t: Teardown, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    // The harness cleans up its own servers on SIGTERM; this only fires when the test is cut short.
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    t.teardown(() => {
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    });
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

t.test('pure helpers of the harness', async (t) => {
  const stats = (await import(pathToFileURL(join(ROOT, 'bench', 'lib', 'stats.mjs')).href)) as Stats;
  t.equal(stats.median([3, 1, 2]), 2);
  t.equal(stats.median([4, 1, 3, 2]), 2.5);
  t.equal(stats.median([null, undefined, Number.NaN]), null, 'missing numbers are ignored, not zero');
  t.equal(stats.ratio(10, 0), null, 'no division by zero');
  t.equal(stats.ratio(null, 5), null);
  t.equal(stats.parseDurationMs('2s'), 2000);
  t.equal(stats.parseDurationMs('1500ms'), 1500);
  t.equal(stats.parseDurationMs('1m'), 60_000);
  t.throws(() => stats.parseDurationMs('soon'), /invalid duration/);
  t.equal(stats.parseVmRss('Name:\tnode\nVmRSS:\t  102400 kB\n'), 100 * 2 ** 20);
  t.equal(stats.parseVmRss('Name:\tkthreadd\n'), null, 'kernel threads have no VmRSS');
  // /proc/PID/stat: utime and stime are fields 14 and 15, counted after the command name's LAST ')'.
  const stat = (comm: string) => `4242 (${comm}) S 1 4242 4242 0 -1 4194560 512 0 0 0 1234 56 0 0 20 0 11 0 999 1000000 2000`;
  t.equal(stats.parseStatCpuTicks(stat('node')), 1290);
  t.equal(stats.parseStatCpuTicks(stat('we ird) (name')), 1290, 'a command name with spaces and parentheses');
  t.equal(stats.parseStatCpuTicks('garbage'), null);
  t.equal(stats.cpuUsPerRequest(300, 100, 30_000), 100, '3 s of CPU over 30 000 requests: 100 µs each');
  t.equal(stats.cpuUsPerRequest(null, 100, 30_000), null);
  t.equal(stats.cpuUsPerRequest(300, 100, 0), null, 'no requests: unknown, not infinite');

  const wrk = stats.parseWrkOutput(
    'Running 2s test\n  1 threads and 64 connections\nBENCH_JSON {"requests":20000,"duration_us":2000000,"p50_us":1500,"p99_us":9000,"errors":{"connect":0,"read":2,"write":0,"status":7,"timeout":1}}\n',
  );
  t.same(wrk, { requests: 20000, rps: 10000, p50Ms: 1.5, p99Ms: 9, non2xx: 7, errors: 3 });
  t.equal(stats.parseWrkOutput('unable to connect to localhost:1 Connection refused\n'), null, 'no result line: null, not zeros');

  const sample = (system: string, round: number, rps: number, p50Ms = 1) => ({ system, scenario: 'c64', round, rps, p50Ms, p99Ms: 2, rssBytes: 1, non2xx: 0, errors: 0 });
  const rows = stats.summarize([
    sample('full', 1, 900), sample('full', 2, 100), sample('full', 3, 950),
    sample('proxy-only', 1, 1000), sample('proxy-only', 2, 1000), sample('proxy-only', 3, 5000),
    sample('nginx', 1, 2000),
  ]);
  t.equal(rows.find((r) => r.system === 'full')!.rps, 900, 'median, so one bad round does not drag the result');
  const rs = stats.ratios(rows);
  t.equal(rs.fullOverProxyOnly, 0.9);
  t.equal(rs.fullOverNginx, 0.45);
  const tg = stats.targets(rows, rs);
  t.equal(tg.find((x) => x.target.startsWith('full / proxy-only'))!.met, true, '0.9 meets ">= 0.9"');
  t.equal(tg.find((x) => x.target.startsWith('full / nginx'))!.met, false);
  t.equal(tg.find((x) => x.target.startsWith('full / Caddy'))!.met, null, 'a system that did not run is "not measured", never met');
});

t.test('the harness runs the gateway (proxy-only and full) and the upstream and reports sane numbers', async (t) => {
  const r = await runNode(
    t,
    [RUN, '--quick', '--json', '--duration', '1s', '--warmup', '1s', '--rounds', '1', '--scenarios', 'c64,c1', '--workers', '2', '--only', 'direct,floor,proxy-only,full,full-w2'],
    150_000,
  );
  t.equal(r.code, 0, `harness exit code (stderr: ${r.stderr.slice(-2000)})`);
  const result = JSON.parse(r.stdout) as { rows: Row[]; skipped: { system: string; reason: string }[]; text: string; machine: { node: string } };
  t.same(result.skipped, [], 'every requested system started (a refused gateway config is reported here)');
  t.equal(result.machine.node, process.version);
  for (const system of ['direct', 'floor', 'proxy-only', 'full', 'full-w2']) {
    for (const scenario of ['c64', 'c1']) {
      const row = result.rows.find((x) => x.system === system && x.scenario === scenario);
      t.ok(row, `${system} ${scenario} measured`);
      if (!row) continue;
      t.ok(row.rps !== null && row.rps > 0, `${system} ${scenario}: req/s > 0 (${row.rps})`);
      t.ok(row.p50Ms !== null && row.p50Ms > 0 && row.p99Ms !== null && row.p99Ms >= row.p50Ms, `${system} ${scenario}: p50 and p99 present and ordered`);
      t.ok(row.rssBytes !== null && row.rssBytes > 1024 * 1024, `${system} ${scenario}: server RSS read from /proc`);
      // A server under load spends some CPU on each request, and not a second of it.
      t.ok(row.cpuUsPerReq !== null && row.cpuUsPerReq > 0 && row.cpuUsPerReq < 1e6, `${system} ${scenario}: CPU per request read from /proc (${row.cpuUsPerReq})`);
      // Every response must have been a 2xx: a 401 from a misconfigured token would otherwise be
      // benchmarked as a very fast gateway.
      t.equal(row.non2xx, 0, `${system} ${scenario}: no non-2xx responses`);
      t.equal(row.errors, 0, `${system} ${scenario}: no socket errors`);
    }
  }
  t.match(result.text, /full \/ proxy-only\s+\d+\.\d\d/, 'the table has the ratio');
  t.match(result.text, /full-w2 \/ full\s+\d+\.\d\d/, 'and the gain of two workers');
  t.match(result.text, /proxy-only \/ floor\s+\d+\.\d\d/, 'and what the gateway adds to its stack (floor)');
  t.match(result.text, /issue 7 targets/);
});

t.test('the ws scenario relays WebSocket messages through the gateway (proxy-only and full, with its token) and counts them', async (t) => {
  const r = await runNode(t, [RUN, '--json', '--duration', '1s', '--warmup', '1s', '--rounds', '1', '--scenarios', 'ws', '--only', 'direct,proxy-only,full'], 120_000);
  t.equal(r.code, 0, `harness exit code (stderr: ${r.stderr.slice(-2000)})`);
  const result = JSON.parse(r.stdout) as { rows: Row[]; skipped: unknown[]; text: string };
  t.same(result.skipped, []);
  for (const system of ['direct', 'proxy-only', 'full']) {
    const row = result.rows.find((x) => x.system === system && x.scenario === 'ws');
    t.ok(row, `${system} ws measured`);
    if (!row) continue;
    t.ok(row.rps !== null && row.rps > 0, `${system}: messages/s > 0 (${row.rps})`);
    t.ok(row.p50Ms !== null && row.p50Ms > 0 && row.p99Ms !== null && row.p99Ms >= row.p50Ms, `${system}: p50 and p99 present and ordered`);
    t.ok(row.cpuUsPerReq !== null && row.cpuUsPerReq > 0 && row.cpuUsPerReq < 1e6, `${system}: CPU per message (${row.cpuUsPerReq})`);
    // A refused handshake (full without its token would get 401) is counted, never measured.
    t.equal(row.non2xx, 0, `${system}: every handshake answered 101`);
    t.equal(row.errors, 0, `${system}: no socket errors`);
  }
  t.match(result.text, /WebSocket messages\s+full \/ proxy-only \d+\.\d\d/);
});

t.test('the WebSocket load generator counts a refused handshake as an error, not as a fast server', async (t) => {
  const { createServer } = await import('node:http');
  const server = createServer((_req, res) => res.writeHead(401).end());
  server.on('upgrade', (_req, socket) => socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as { port: number }).port;
  const r = await runNode(t, [join(ROOT, 'bench', 'lib', 'ws-load.mjs'), '--url', `http://127.0.0.1:${port}/`, '--connections', '4', '--duration-ms', '200', '--warmup-ms', '0'], 30_000);
  t.equal(r.code, 1, 'no session opened: a failed run');
  const line = r.stdout.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  t.ok(line, 'the result line is printed anyway');
  const j = JSON.parse(line!.slice('BENCH_JSON '.length)) as { requests: number; errors: { status: number } };
  t.equal(j.requests, 0);
  t.equal(j.errors.status, 4, 'each refused handshake counted');
});

t.test('--paired loads two systems together and reports a ratio per round (both start orders)', async (t) => {
  // full-no-all (--ablate): the full pipeline's configuration with every ablatable part off.
  const r = await runNode(t, [RUN, '--paired', 'proxy-only,full-no-all', '--ablate', '--json', '--duration', '1s', '--warmup', '1s', '--rounds', '2', '--scenarios', 'c64'], 120_000);
  t.equal(r.code, 0, `harness exit code (stderr: ${r.stderr.slice(-2000)})`);
  type Load = { rps: number; non2xx: number; errors: number };
  const result = JSON.parse(r.stdout) as { paired: string[]; rounds: Array<{ round: number; ratio: number } & Record<string, unknown>>; medianRatio: number };
  t.same(result.paired, ['proxy-only', 'full-no-all']);
  t.same(result.rounds.map((x) => x.round), [1, 2], 'two rounds (the second starts the loads in the other order)');
  for (const round of result.rounds) {
    const a = round['proxy-only'] as Load;
    const b = round['full-no-all'] as Load;
    t.ok(a.rps > 0 && b.rps > 0, `round ${round.round}: both served (${a.rps}, ${b.rps})`);
    t.equal(a.non2xx + a.errors + b.non2xx + b.errors, 0, `round ${round.round}: only 2xx, no socket errors`);
  }
  t.ok(result.medianRatio > 0);
});

t.test('an unknown system name is refused, not silently ignored', async (t) => {
  const r = await runNode(t, [RUN, '--quick', '--only', 'proxy-only,ngnix'], 60_000);
  t.equal(r.code, 1);
  t.match(r.stderr, /unknown system\(s\) in --only: ngnix/);
});

t.test('the micro-benchmarks run on the built functions', async (t) => {
  const r = await runNode(t, [join(ROOT, 'bench', 'micro', 'run-all.mjs'), '--quick', '--json'], 120_000);
  t.equal(r.code, 0, `micro exit code (stderr: ${r.stderr.slice(-2000)})`);
  const { rows } = JSON.parse(r.stdout) as { rows: { suite: string; task: string; opsPerSec: number }[] };
  for (const name of ['plain /api/v1/orders/42', 'matchRoute deep', 'decide role granted', 'rateLimitKey ip (IPv4)', 'buildUpstreamHeaders']) {
    const row = rows.find((x) => x.task === name);
    t.ok(row && row.opsPerSec > 0, `${name}: ops/s > 0`);
  }
});
