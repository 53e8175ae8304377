// Attacks on `workers: 2` (node:cluster): state that must be global (rate-limit counters, bans) is
// held by the primary and reached over IPC. The gateway runs as a real child process
// (`node dist/cli.js start`, the primary forking two workers); clients open many
// connections at once so that the cluster spreads them over both workers.
import t from 'tap';
import http2 from 'node:http2';
import tls from 'node:tls';
import net from 'node:net';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startUpstream, type Tap, type Upstream } from '../helpers/gateway.js';
import { h2Request, type H2Response } from '../helpers/clients.js';
import { startIssuer } from '../protect-e2e/_helpers.js';
import { CLI_SKIP, spawnCli } from '../ops-e2e/_support.js';


type Log = Record<string, unknown>;

interface Cluster {
  readonly child: ChildProcess;
  readonly port: number;
  readonly ca: string;
  readonly file: string;
  logs(): Log[];
  waitForLog(test: (l: Log) => boolean, timeoutMs?: number): Promise<Log>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `node dist/cli.js start --config FILE` with `yaml` (workers: 2 expected in it). */
async function startCluster(t: Tap, yaml: (dir: string) => string): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-cluster-attacks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'gw.yml');
  writeFileSync(file, yaml(dir));
  const { child, logs, waitForLog, exited } = spawnCli(t, ['start', '--config', file], {}, { gracefulStop: true });
  const started = await waitForLog((l) => l.msg === 'portcullis started', 60_000);
  await waitForLog(() => logs().filter((l) => l.msg === 'worker listening').length >= 2, 30_000);
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  return { child, port: (started.https as { port: number }).port, ca, file, logs, waitForLog, exited };
}

/** `n` HTTP/2 connections from `localAddress` (each a new TCP connection: the cluster alternates workers). */
async function sessions(t: Tap, c: Cluster, n: number, localAddress = '127.0.0.1'): Promise<http2.ClientHttp2Session[]> {
  const out: http2.ClientHttp2Session[] = [];
  for (let i = 0; i < n; i++) {
    // Each client address (127.0.0.x) is its own client key: the tests do not share counters.
    const s = http2.connect(`https://127.0.0.1:${c.port}`, {
      createConnection: () => tls.connect({ socket: net.connect({ host: '127.0.0.1', port: c.port, localAddress }), ca: c.ca, servername: 'app.test', ALPNProtocols: ['h2'] }),
    });
    s.on('error', () => undefined);
    t.teardown(() => s.destroy());
    await new Promise<void>((resolve, reject) => {
      s.once('connect', () => resolve());
      s.once('error', reject);
    });
    out.push(s);
  }
  return out;
}

const count = (xs: readonly number[], v: number): number => xs.filter((x) => x === v).length;
const events = (c: Cluster, name: string): Log[] => c.logs().filter((l) => l.security === true && l.event === name);
const accessWorkers = (c: Cluster, pathPrefix: string, status?: number): Set<unknown> =>
  new Set(
    c
      .logs()
      .filter((l) => l.type === 'access' && typeof l.path === 'string' && l.path.startsWith(pathPrefix) && (status === undefined || l.status === status))
      .map((l) => l.worker),
  );
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('workers: 2 under concurrent attack', { skip: CLI_SKIP }, async (t) => {
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  // Two upstreams that say who they are, for the reload test: /mix goes to `a` with max 100000 in
  // one configuration and to `b` with max 90000 in the other.
  const tagged = async (tag: string): Promise<Upstream> =>
    startUpstream(t, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'x-up': tag });
      res.end(tag);
    });
  const upA = await tagged('a');
  const upB = await tagged('b');
  // Requests to /slow are held until the test releases them.
  const held: Array<() => void> = [];
  const slow = await startUpstream(t, (_req, res) => {
    held.push(() => {
      if (!res.destroyed) res.end('late');
    });
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('started ');
  });
  let certDir = '';
  const conf = (mix: 'a' | 'b'): string => `listen: { https: 127.0.0.1:0, http: null, admin: null }
workers: 2
shutdown_grace: 2s
tls: { storage: ${certDir} }
${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: warm, path: /warm, access: authenticated }
      - { id: open, path: /open, access: public }
      - { id: by-ip, path: /ip, access: public, rate_limit: { max: 20, window: 1h, key: ip } }
      - { id: by-header, path: /hdr, access: public, rate_limit: { max: 20, window: 1h, key: "header:x-api-key" } }
      - { id: by-user, path: /user, access: authenticated, rate_limit: { max: 20, window: 1h, key: user } }
      - { id: guarded, path: /api, access: authenticated, bans: { auth_failures: 3, window: 5m, duration: 15m } }
      - { id: mix, path: /mix, access: public, upstream: ${mix === 'a' ? upA.origin : upB.origin}, rate_limit: { max: ${mix === 'a' ? 100000 : 90000}, window: 1h } }
      - { id: slow, path: /slow, access: public, upstream: ${slow.origin} }
`;
  const c = await startCluster(t, (dir) => {
    certDir = join(dir, 'certs');
    return conf('a');
  });

  await t.test('200 requests at once over 20 connections against max 20: the upstream sees exactly 20, for ip, header and user keys', async (t) => {
    const ss = await sessions(t, c, 20, '127.0.0.2');
    const token = await idp.token('alice');
    // Warm each worker's key set, so the user-keyed burst is not slowed by a JWKS fetch.
    await Promise.all(ss.map((s) => h2Request(s, { ':path': '/warm', authorization: `Bearer ${token}` })));
    for (const [path, extra] of [
      ['/ip', {}],
      ['/hdr', { 'x-api-key': 'key-of-mallory' }],
      ['/user', { authorization: `Bearer ${token}` }],
    ] as const) {
      const burst = await Promise.all(ss.flatMap((s, i) => Array.from({ length: 10 }, (_, j) => h2Request(s, { ':path': `${path}/${i}-${j}`, accept: 'application/json', ...extra }))));
      const statuses = burst.map((r) => r.status);
      t.equal(up.seen.filter((r) => r.url.startsWith(`${path}/`)).length, 20, `${path}: the upstream saw exactly max (20) of 200`);
      t.equal(count(statuses, 200), 20, `${path}: 20 answered 200`);
      t.equal(count(statuses, 429), 180, `${path}: 180 answered 429 (${[...new Set(statuses)].join(',')})`);
      const remaining = burst.filter((r) => r.status === 200).map((r) => Number(r.headers['ratelimit-remaining'])).sort((a, b) => a - b);
      t.same(remaining, Array.from({ length: 20 }, (_, i) => i), `${path}: each allowed request got its own Remaining (0..19)`);
    }
    await c.waitForLog(() => c.logs().filter((l) => l.type === 'access' && typeof l.path === 'string' && l.path.startsWith('/user/')).length >= 200);
    for (const path of ['/ip/', '/hdr/', '/user/']) t.same([...accessWorkers(c, path, 429)].sort(), [1, 2], `${path}: both workers refused (one shared counter)`);
  });

  await t.test('a burst of 39 bad tokens and one right one over 20 connections (bans.auth_failures 3): at most 3 answered 401, the right one not forwarded', async (t) => {
    // One process answers such a burst 3 × 401 and 429 for the rest (test/protect-e2e/keying-
    // attacks.test.ts), a right guess sent last included. Here every store operation of
    // recordAuthFailure is an IPC round trip, and the worker's ban check reads its local cache:
    // all the guesses are verified, pass that check and are answered before the ban is written.
    const ss = await sessions(t, c, 20, '127.0.0.3');
    const warm = await idp.token('bob');
    await Promise.all(ss.map((s) => h2Request(s, { ':path': '/warm', authorization: `Bearer ${warm}` })));
    const guesses = await Promise.all(Array.from({ length: 39 }, (_, i) => idp.forged(`guess-${i}`)));
    // The right guess: a token never seen before (not in any worker's verification cache).
    const right = await idp.token('dave');
    const burst: H2Response[] = await Promise.all(
      [...guesses, right].map((g, i) => h2Request(ss[i % ss.length]!, { ':path': `/api/g${i}`, accept: 'application/json', authorization: `Bearer ${g}` })),
    );
    const statuses = burst.map((r) => r.status);
    await c.waitForLog(() => c.logs().filter((l) => l.type === 'access' && typeof l.path === 'string' && l.path.startsWith('/api/g')).length >= 40);
    t.equal(count(statuses, 401) + count(statuses, 429) + count(statuses, 200), 40, `every guess answered (${statuses.join(',')})`);
    const bans = events(c, 'banned').filter((e) => e.reason === 'auth_failures' && e.ip === '127.0.0.3');
    t.equal(bans.length, 1, 'one client, one ban: one banned event');
    t.ok(
      burst.filter((x) => x.status === 429).every((r) => (JSON.parse(r.body) as { error?: { code?: string } }).error?.code === 'GW_ERR_BANNED'),
      'every 429 is GW_ERR_BANNED',
    );
    t.ok(
      count(statuses, 401) <= 3,
      `at most auth_failures (3) guesses answered 401 (README: "a burst of guesses sent at once gets at most auth_failures answers"), got ${count(statuses, 401)} from workers ${[...accessWorkers(c, '/api/g', 401)].join(',')}`,
    );
    t.same(
      up.seen.filter((r) => r.url.startsWith('/api/')).map((r) => r.url),
      [],
      'the right guess, verified after 39 failures had earned a ban, is not forwarded',
    );
    const after = await Promise.all(ss.slice(0, 4).map((s) => h2Request(s, { ':path': '/api/after', accept: 'application/json', authorization: `Bearer ${warm}` })));
    t.same(after.map((r) => r.status), [429, 429, 429, 429], 'a valid token is refused on every worker afterwards');
  });

  await t.test('the primary stopped (SIGSTOP, a wedged store): unlimited routes keep serving, limited and banned-checked ones fail closed', async (t) => {
    const [s] = await sessions(t, c, 1, '127.0.0.6');
    t.equal((await h2Request(s!, { ':path': '/open/before' })).status, 200);
    const seenBefore = up.seen.length;
    process.kill(c.child.pid!, 'SIGSTOP');
    try {
      const started = Date.now();
      const open = await h2Request(s!, { ':path': '/open/during', accept: 'application/json' });
      t.equal(open.status, 200, 'a route without limits or bans needs no primary');
      t.ok(Date.now() - started < 2_000, 'and does not wait for it');
      const [limited, guarded] = await Promise.all([
        h2Request(s!, { ':path': '/ip/during', accept: 'application/json' }),
        h2Request(s!, { ':path': '/api/during', accept: 'application/json', authorization: `Bearer ${await idp.token('erin')}` }),
      ]);
      t.ok(limited.status >= 500, `a rate-limited route is refused when its counter cannot be reached (got ${limited.status})`);
      t.ok(guarded.status >= 500, `a route with bans is refused when the ban cannot be checked (got ${guarded.status})`);
      t.equal(up.seen.length - seenBefore, 1, 'only /open/during reached the upstream');
    } finally {
      process.kill(c.child.pid!, 'SIGCONT');
    }
  });

  await t.test('the failure that reaches bans.auth_failures times out on its way to the primary: the next failure writes the ban', async (t) => {
    // A primary that answers late (stopped here for a little more than the 5 s IPC deadline; in
    // production a long GC pause, a starved CPU, a flood of IPC): the worker gives up on the
    // `incr` of the third failure (500), the primary applies it afterwards (count 3) and its answer
    // is dropped, so the `set` of the ban never happens. Later failures count 4, 5, …: "only the
    // failure that reaches the threshold bans" (src/protect/bans.ts), so none of them does.
    const [s] = await sessions(t, c, 1, '127.0.0.5');
    const guess = async (i: number): Promise<number> => (await h2Request(s!, { ':path': `/api/t${i}`, accept: 'application/json', authorization: `Bearer ${await idp.forged(`t-${i}`)}` })).status;
    t.same([await guess(1), await guess(2)], [401, 401], 'two failures counted');
    const third = await idp.forged('t-3');
    process.kill(c.child.pid!, 'SIGSTOP');
    let status: number;
    try {
      status = (await h2Request(s!, { ':path': '/api/t3', accept: 'application/json', authorization: `Bearer ${third}` })).status;
    } finally {
      process.kill(c.child.pid!, 'SIGCONT');
    }
    t.equal(status, 500, 'the third failure is answered 500 once the store call times out');
    await sleep(300);
    const later: number[] = [];
    for (let i = 4; i <= 9; i++) later.push(await guess(i));
    const token = await idp.token('frank');
    const valid = await h2Request(s!, { ':path': '/api/valid', accept: 'application/json', authorization: `Bearer ${token}` });
    t.comment(`later guesses ${later.join(',')}; valid token ${valid.status}`);
    t.ok(count(later, 401) <= 3, `after 3 + 6 failures in the window, at most 3 more guesses are answered 401 (got ${later.join(',')})`);
    t.equal(valid.status, 429, 'the client is banned: a valid token is refused');
    t.notOk(up.seen.some((r) => r.url === '/api/valid'), 'the upstream never sees the banned client');
  });

  await t.test('SIGHUP during a burst: each request gets one configuration whole (the upstream and the limit of the same file), on both workers', async (t) => {
    const ss = await sessions(t, c, 6, '127.0.0.7');
    const results: H2Response[] = [];
    let reloaded = false;
    let wavesAfter = 0;
    let fired = false;
    const reloadsBefore = c.logs().filter((l) => l.msg === 'configuration reloaded').length;
    while (wavesAfter < 3) {
      if (!fired && results.length >= 60) {
        writeFileSync(c.file, conf('b'));
        c.child.kill('SIGHUP');
        fired = true;
      }
      const wave = await Promise.all(ss.flatMap((s, i) => Array.from({ length: 5 }, (_, j) => h2Request(s, { ':path': `/mix/${results.length}-${i}-${j}` }))));
      results.push(...wave);
      if (reloaded) wavesAfter++;
      reloaded ||= c.logs().filter((l) => l.msg === 'configuration reloaded').length > reloadsBefore;
      if (results.length >= 6000) break;
    }
    t.ok(reloaded, 'the reload finished during the burst');
    t.ok(results.every((r) => r.status === 200), `every request answered 200 (${[...new Set(results.map((r) => r.status))].join(',')})`);
    const pairs = new Set(results.map((r) => `${String(r.headers['x-up'])}:${String(r.headers['ratelimit-limit'])}`));
    t.same([...pairs].sort(), ['a:100000', 'b:90000'], 'only whole configurations were seen: a with 100000, b with 90000');
    t.equal(results.at(-1)!.headers['x-up'], 'b', 'the new configuration serves at the end');
    t.same([...accessWorkers(c, '/mix/')].sort(), [1, 2], 'both workers served the burst');
  });

  await t.test('SIGKILL of one worker with requests in flight: its requests are cut (never answered twice nor replayed), the other worker finishes its own and keeps serving', async (t) => {
    const ss = await sessions(t, c, 6, '127.0.0.8');
    const pending = ss.map((s, i) => h2Request(s, { ':path': `/slow/${i}` }));
    const deadline = Date.now() + 5_000;
    while (slow.seen.length < 6 && Date.now() < deadline) await sleep(20);
    t.equal(slow.seen.length, 6, 'all six requests reached the upstream');
    const victim = c.logs().find((l) => l.msg === 'worker listening' && l.worker === 1)!;
    process.kill(victim.pid as number, 'SIGKILL');
    await c.waitForLog((l) => l.msg === 'worker exited unexpectedly');
    for (const release of held.splice(0)) release();
    const rs = await Promise.all(pending);
    const done = rs.filter((r) => r.status === 200 && r.body === 'started late');
    const cut = rs.filter((r) => r.body !== 'started late');
    t.equal(done.length + cut.length, 6, `each request either finished or was cut (${rs.map((r) => `${r.status}:${r.body}`).join(' ')})`);
    t.ok(cut.length >= 1 && done.length >= 1, `the dead worker's requests were cut (${cut.length}), the other's finished (${done.length})`);
    t.ok(cut.every((r) => r.rstCode !== 0), 'a cut stream ends with an error code, never as a complete answer');
    await sleep(300);
    t.equal(slow.seen.length, 6, 'no request was replayed to the upstream');
    const fresh = await Promise.all((await sessions(t, c, 4, '127.0.0.8')).map((s) => h2Request(s, { ':path': '/open/after-kill' })));
    t.same(fresh.map((r) => r.status), [200, 200, 200, 200], 'new connections are served');
  });
});
