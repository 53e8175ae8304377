// `workers: N` through the built CLI (`node dist/cli.js start`), as the image runs it: connections
// are spread over the worker processes, and what must be global stays global. The attacks: a client
// spreading its requests (one connection each) over the workers to get N × the rate limit or N × the
// failed-login budget before a ban; a reload or a crashed worker leaving one process on old rules.
import t from 'tap';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import tls from 'node:tls';
import net from 'node:net';
import { join } from 'node:path';
import { httpsRequest, startUpstream, type ClientResponse } from '../helpers/gateway.js';
import { alive } from '../helpers/processes.js';
import { CLI_SKIP, parseExposition, pick, scrape, spawnCli, startIssuer, total, type CliProcess, type TestIssuer } from '../ops-e2e/_support.js';
import { PROMTOOL_SKIP, promtool } from '../ops/tools.js';

// npm test builds dist/ first: a missing build is a failure here, not a reason to skip.
if (CLI_SKIP) throw new Error(CLI_SKIP);

const work = mkdtempSync(join(tmpdir(), 'portcullis-workers-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

function yaml(upstream: string, iss: TestIssuer, rootAccess = 'public'): string {
  return `listen: { https: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0 }
workers: 2
shutdown_grace: 5s
tls: { storage: ${join(work, 'certs')} }
auth:
  issuers:
    - issuer: ${iss.issuer}
      audiences: ["${iss.audience}"]
      algorithms: [ES256]
      jwks_uri: ${iss.jwksUri}
sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes:
      - { path: /limited, access: public, rate_limit: { max: 6, window: 1m } }
      - { path: /private, access: authenticated, bans: { auth_failures: 3, window: 1m, duration: 1m } }
      - { path: /, access: ${rootAccess} }
`;
}

const port = (cli: CliProcess, key: 'https' | 'admin'): number => {
  const started = cli.logs().find((l) => l.msg === 'portcullis started')!;
  return (started[key] as { port: number }).port;
};

/** One request on its own TLS connection (agent: false): the cluster hands each connection to the next worker. */
async function get(cli: CliProcess, path: string, headers: Record<string, string> = {}): Promise<ClientResponse> {
  const ca = readFileSync(join(work, 'certs', 'local-ca', 'root.crt'), 'utf8');
  return httpsRequest(port(cli, 'https'), ca, { path, headers: { accept: 'application/json', ...headers } });
}

const workersOf = (cli: CliProcess, since: number, path: string): Set<unknown> =>
  new Set(cli.logs().slice(since).filter((l) => l.type === 'access' && l.path === path).map((l) => l.worker));

const codes = (rs: ClientResponse[]): number[] => rs.map((r) => r.status);

t.test('two workers: shared listeners, global limits and bans, aggregated metrics, reload, crash, drain', async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const file = join(work, 'gw.yml');
  writeFileSync(file, yaml(up.origin, iss));
  const cli = spawnCli(t, ['start', '--config', file], {});
  const started = await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
  t.equal(started.workers, 2);
  await cli.waitForLog(() => cli.logs().filter((l) => l.msg === 'worker listening').length === 2);
  const workerPids = cli.logs().filter((l) => l.msg === 'worker listening').map((l) => l.pid as number);
  t.equal(new Set([...workerPids, cli.child.pid]).size, 3, 'each worker is its own process');

  await t.test('connections are served by both workers', async (t) => {
    const mark = cli.logs().length;
    const rs = [];
    for (let i = 0; i < 8; i++) rs.push(await get(cli, '/spread'));
    t.same(codes(rs), Array(8).fill(200));
    await cli.waitForLog((l) => l.type === 'access' && l.path === '/spread' && cli.logs().filter((x) => x.path === '/spread').length >= 8);
    t.same([...workersOf(cli, mark, '/spread')].sort(), [1, 2]);
  });

  await t.test('TLS sessions resume on any worker (the workers share the session-ticket keys)', async (t) => {
    const ca = readFileSync(join(work, 'certs', 'local-ca', 'root.crt'), 'utf8');
    let session: Buffer | undefined;
    const reused: boolean[] = [];
    for (let i = 0; i < 5; i++) {
      await new Promise<void>((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port: port(cli, 'https'), servername: 'app.test', ca, session, ALPNProtocols: ['http/1.1'] }, () => {
          reused.push(s.isSessionReused());
          s.write('GET /resume HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
        });
        s.on('session', (next: Buffer) => (session ??= next));
        s.on('data', () => undefined);
        s.on('close', () => resolve());
        s.on('error', reject);
      });
    }
    t.same(reused, [false, true, true, true, true], 'the first handshake is full, every later one resumes');
    await cli.waitForLog(() => cli.logs().filter((l) => l.path === '/resume').length >= 5);
    t.same([...workersOf(cli, 0, '/resume')].sort(), [1, 2], 'and those connections reached both workers');
  });

  await t.test('rate limit is counted once across workers (max 6, 10 requests on 10 connections)', async (t) => {
    const mark = cli.logs().length;
    const rs = [];
    for (let i = 0; i < 10; i++) rs.push(await get(cli, '/limited'));
    // Counted per worker, 10 requests alternating over 2 workers would be 5 + 5, all under 6.
    t.same(codes(rs), [...Array(6).fill(200), ...Array(4).fill(429)]);
    t.equal(up.seen.filter((r) => r.url === '/limited').length, 6, 'the upstream saw exactly the allowed 6');
    t.match(JSON.parse(rs[9]!.body), { error: { code: 'GW_ERR_RATE_LIMITED' } });
    t.equal(rs[9]!.headers['ratelimit-limit'], '6');
    await cli.waitForLog(() => cli.logs().slice(mark).filter((l) => l.path === '/limited').length >= 10);
    const refusedBy = new Set(cli.logs().slice(mark).filter((l) => l.path === '/limited' && l.status === 429).map((l) => l.worker));
    t.same([...refusedBy].sort(), [1, 2], 'both workers refuse: they share one counter');
  });

  await t.test('failed logins are counted across workers and the ban holds on every worker', async (t) => {
    const bad = { authorization: 'Bearer not.a.jwt' };
    const first = [];
    for (let i = 0; i < 3; i++) first.push(await get(cli, '/private', bad));
    t.same(codes(first), [401, 401, 401], 'three failures, spread over both workers');
    // Now banned on every worker, even with a valid token, on the route with bans.
    const good = { authorization: `Bearer ${await iss.token('alice')}` };
    const after = [];
    for (let i = 0; i < 4; i++) after.push(await get(cli, '/private', good));
    t.same(codes(after), [429, 429, 429, 429]);
    t.match(JSON.parse(after[0]!.body), { error: { code: 'GW_ERR_BANNED' } });
    t.equal(up.seen.filter((r) => r.url === '/private').length, 0, 'the upstream never saw /private');
  });

  await t.test('/metrics aggregates every worker (and passes promtool), /readyz asks every worker', { skip: PROMTOOL_SKIP }, async (t) => {
    const m = await scrape(port(cli, 'admin'));
    t.equal(m.status, 200);
    const samples = parseExposition(m.body);
    const accessLines = cli.logs().filter((l) => l.type === 'access').length;
    t.equal(total(samples, 'portcullis_http_requests_total'), accessLines, 'one count per request, whichever worker served it');
    t.equal(total(samples, 'portcullis_http_requests_total', { route: 'app.test:0', status: '429' }), 4);
    t.equal(total(samples, 'portcullis_rate_limited_total'), 4 + 4, 'rate-limited + banned refusals');
    t.equal(total(samples, 'portcullis_auth_failures_total'), 3);
    t.equal(total(samples, 'portcullis_workers'), 2);
    t.same(pick(samples, 'portcullis_build_info').map((s) => s.value), [1], 'one build_info series, not one per process');
    const expiry = pick(samples, 'portcullis_tls_certificate_expiry_timestamp_seconds', { host: 'app.test' });
    t.equal(expiry.length, 1);
    t.ok(expiry[0]!.value > Date.now() / 1000, 'expiry is a timestamp, not a sum over processes');
    t.ok(total(samples, 'portcullis_bans_active') >= 1, 'the ban is visible');
    const lint = await promtool(['check', 'metrics'], m.body);
    t.equal(lint.code, 0, lint.stdout + lint.stderr);
    const ready = await fetch(`http://127.0.0.1:${port(cli, 'admin')}/readyz`);
    t.equal(ready.status, 200);
    t.match(await ready.json(), { status: 'ready', checks: { workers: true, listeners: true, certificates: true } });
  });

  await t.test('SIGHUP: every worker switches; an invalid file changes nothing anywhere', async (t) => {
    const seenBefore = up.seen.length;
    writeFileSync(file, yaml(up.origin, iss, 'deny'));
    cli.child.kill('SIGHUP');
    await cli.waitForLog((l) => l.msg === 'configuration reloaded');
    const rs = [];
    for (let i = 0; i < 6; i++) rs.push(await get(cli, '/anything'));
    t.same(codes(rs), Array(6).fill(403), 'no worker kept the old rule');
    t.equal(up.seen.length, seenBefore, 'the upstream saw none of them');

    writeFileSync(file, 'sites: [\n');
    cli.child.kill('SIGHUP');
    await cli.waitForLog((l) => l.msg === 'configuration rejected; the previous configuration keeps serving');
    const still = [];
    for (let i = 0; i < 4; i++) still.push(await get(cli, '/anything'));
    t.same(codes(still), Array(4).fill(403));
    const samples = parseExposition((await scrape(port(cli, 'admin'))).body);
    t.equal(total(samples, 'portcullis_config_reloads_total', { result: 'success' }), 1, 'counted once, not once per process');
    t.equal(total(samples, 'portcullis_config_reloads_total', { result: 'failure' }), 1);
    writeFileSync(file, yaml(up.origin, iss));
    cli.child.kill('SIGHUP');
    await cli.waitForLog(() => cli.logs().filter((l) => l.msg === 'configuration reloaded').length >= 2);
  });

  await t.test('a worker that dies is replaced, with the current configuration and state', async (t) => {
    const victim = cli.logs().find((l) => l.msg === 'worker listening' && l.worker === 1)!;
    process.kill(victim.pid as number, 'SIGKILL');
    await cli.waitForLog((l) => l.msg === 'worker exited unexpectedly');
    const replacement = await cli.waitForLog((l) => l.msg === 'worker listening' && l.worker === 3, 20_000);
    t.ok(replacement.pid !== victim.pid);
    const rs = [];
    for (let i = 0; i < 4; i++) rs.push(await get(cli, '/limited'));
    t.same(codes(rs), Array(4).fill(429), 'the new worker sees the counters the old one built');
    const fresh = [];
    for (let i = 0; i < 4; i++) fresh.push(await get(cli, '/after-restart'));
    t.same(codes(fresh), Array(4).fill(200), 'the reloaded configuration (root public again) applies to the replacement');
    const samples = parseExposition((await scrape(port(cli, 'admin'))).body);
    t.equal(total(samples, 'portcullis_worker_restarts_total'), 1);
    t.equal(total(samples, 'portcullis_workers'), 2);
  });

  await t.test('SIGTERM drains every worker and exits 0', async (t) => {
    const pids = cli.logs().filter((l) => l.msg === 'worker listening').map((l) => l.pid as number);
    cli.child.kill('SIGTERM');
    const exit = await cli.exited;
    t.same(exit, { code: 0, signal: null }, cli.stderr());
    t.ok(cli.logs().some((l) => l.msg === 'shut down cleanly'));
    for (const pid of pids) t.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `worker ${pid} is gone`);
  });
});

t.test('Ctrl-C in a terminal (SIGINT to the whole process group) still drains once and exits 0', async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const file = join(work, 'gw-sigint.yml');
  writeFileSync(file, yaml(up.origin, iss));
  const cli = spawnCli(t, ['start', '--config', file], {}, { detached: true });
  await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
  t.equal((await get(cli, '/')).status, 200);
  process.kill(-cli.child.pid!, 'SIGINT');
  const exit = await cli.exited;
  t.same(exit, { code: 0, signal: null }, cli.stdout() + cli.stderr());
  t.notOk(cli.logs().some((l) => l.msg === 'second signal: exiting now'));
});

t.test('a worker that cannot listen fails the start with exit 1', async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const taken = up.port; // the upstream already listens there
  const file = join(work, 'gw-taken.yml');
  writeFileSync(file, yaml(up.origin, iss).replace('https: 127.0.0.1:0', `https: 127.0.0.1:${taken}`));
  const cli = spawnCli(t, ['start', '--config', file], {});
  const exit = await cli.exited;
  t.equal(exit.code, 1);
  t.ok(cli.logs().some((l) => l.msg === 'a worker failed to start: stopping'), cli.stdout());
  t.match(cli.stderr(), /EADDRINUSE/);
});

t.test('the primary killed outright (SIGKILL): the workers notice, drain and exit; nothing keeps the ports', async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const file = join(work, 'gw-orphans.yml');
  writeFileSync(file, yaml(up.origin, iss));
  const cli = spawnCli(t, ['start', '--config', file], {});
  await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
  await cli.waitForLog(() => cli.logs().filter((l) => l.msg === 'worker listening').length === 2);
  const pids = cli.logs().filter((l) => l.msg === 'worker listening').map((l) => l.pid as number);
  const httpsPort = port(cli, 'https');
  cli.child.kill('SIGKILL');
  await cli.exited;
  for (let i = 0; i < 150 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
  t.same(pids.filter(alive), [], 'no orphaned worker');
  // The port is free again: something else can listen on it.
  const probe = net.createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject);
    probe.listen(httpsPort, '127.0.0.1', () => resolve());
  });
  t.pass('the HTTPS port can be bound again');
  await new Promise((r) => probe.close(r));
});
