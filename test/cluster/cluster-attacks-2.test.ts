// Attacks on `workers: 2` (node:cluster) with the features that were first tested on one process:
// reload of restart-only settings and what a replaced worker then runs, tls.min_version and
// log.level reloads on every worker, WebSocket sessions relayed by workers (a worker crash, a
// drain), request buffering and global limits with connections spread over the workers.
// The gateway runs as a real child process (`node dist/cli.js start`), as the image runs it.
// Six defects when written, all fixed: a replacement worker ran the last reloaded text, so a
// restart-only change (max_header_size, listen addresses) reached one worker of two, or crash-looped
// the gateway on a port in use; it read secret files and certificates from disk again, so a secret
// file removed or a refused certificate took the gateway down at the next crash; restart-only
// warnings came once per worker; a SIGTERM while a replacement started waited grace + 5 s and
// exited 1.
import t from 'tap';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';
import { ensureLocalCertificate } from '../../src/tls/index.js';
import { httpsRequest, sleep, startUpstream, until, type ClientResponse, type Tap } from '../helpers/gateway.js';
import { alive, childrenOf } from '../helpers/processes.js';
import { CLI_SKIP, spawnCli, type CliProcess } from '../ops-e2e/_support.js';

if (CLI_SKIP) throw new Error(CLI_SKIP);

type Log = Record<string, unknown>;

interface Cluster {
  readonly cli: CliProcess;
  readonly dir: string;
  readonly file: string;
  readonly port: number;
  readonly ca: string;
  logs(): Log[];
  count(test: (l: Log) => boolean): number;
  /** Waits until `n` lines satisfy `test`. */
  nth(test: (l: Log) => boolean, n: number, timeoutMs?: number): Promise<void>;
  /** The pids of the workers that said they listen, by worker id. */
  workerPids(): Map<number, number>;
  /** Writes `text` to the config file and sends SIGHUP; resolves once the primary said reloaded/rejected. */
  reload(text: string): Promise<'reloaded' | 'rejected'>;
  get(path: string, headers?: Record<string, string>): Promise<ClientResponse>;
}

const isReloaded = (l: Log): boolean => l.msg === 'configuration reloaded';
const isRejected = (l: Log): boolean => l.msg === 'configuration rejected; the previous configuration keeps serving';
const isListening = (l: Log): boolean => l.msg === 'worker listening';

async function startCluster(
  t: Tap,
  conf: (dir: string) => string,
  extraEnv: (dir: string) => Record<string, string> = () => ({}),
  caPem?: () => string,
): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-cluster-attacks-2-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'gw.yml');
  writeFileSync(file, conf(dir));
  const cli = spawnCli(t, ['start', '--config', file], extraEnv(dir), { gracefulStop: true });
  const started = await cli.waitForLog((l) => l.msg === 'portcullis started', 60_000);
  await cli.waitForLog(() => cli.logs().filter(isListening).length >= 2, 30_000);
  const ca = caPem?.() ?? readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  const port = (started.https as { port: number }).port;
  const count = (test: (l: Log) => boolean): number => cli.logs().filter(test).length;
  const c: Cluster = {
    cli,
    dir,
    file,
    port,
    ca,
    logs: () => cli.logs(),
    count,
    nth: async (test, n, timeoutMs = 20_000) => {
      await cli.waitForLog(() => count(test) >= n, timeoutMs);
    },
    workerPids: () => new Map(cli.logs().filter(isListening).map((l) => [l.worker as number, l.pid as number])),
    async reload(text) {
      const ok = count(isReloaded);
      const bad = count(isRejected);
      writeFileSync(file, text);
      cli.child.kill('SIGHUP');
      await cli.waitForLog(() => count(isReloaded) > ok || count(isRejected) > bad, 30_000);
      return count(isReloaded) > ok ? 'reloaded' : 'rejected';
    },
    get: (path, headers = {}) => httpsRequest(port, ca, { path, headers: { accept: 'application/json', ...headers } }),
  };
  return c;
}

/** Access lines of requests whose path starts with `prefix`, since log index `from`. */
const access = (c: Cluster, prefix: string, from = 0): Log[] =>
  c.logs().slice(from).filter((l) => l.type === 'access' && typeof l.path === 'string' && l.path.startsWith(prefix));
const workersOf = (lines: Log[]): number[] => [...new Set(lines.map((l) => l.worker as number))].sort();

/** `n` requests, each on its own TLS connection (the cluster hands connections round robin). */
async function fresh(c: Cluster, path: string, n: number, headers: Record<string, string> = {}): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await c.get(`${path}${path.includes('?') ? '&' : '?'}i=${i}`, headers)).status);
  return out;
}


function site(dir: string, upstream: string, extra = '', listen = '{ https: 127.0.0.1:0, http: null, admin: null }', routes = '[{ path: /, access: public }]'): string {
  return `listen: ${listen}
workers: 2
shutdown_grace: 3s
tls: { storage: ${join(dir, 'certs')} }
${extra}sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes: ${routes}
`;
}

// ---------------------------------------------------------------------------------------------
// Restart-only settings changed by a reload, then a worker replaced
// ---------------------------------------------------------------------------------------------

t.test('a reload that changes limits.max_header_size (restart-only), then a worker crash: the replacement keeps the limit its siblings enforce', async (t) => {
  const up = await startUpstream(t);
  let dir = '';
  const c = await startCluster(t, (d) => {
    dir = d;
    return site(d, up.origin, 'limits: { max_header_size: 4kb }\n');
  });
  const big = { 'x-padding': 'p'.repeat(8 * 1024) };
  t.same(await fresh(c, '/big', 4, big), [431, 431, 431, 431], 'an 8 KiB header is refused under max_header_size 4kb');

  t.equal(await c.reload(site(dir, up.origin, 'limits: { max_header_size: 64kb }\n')), 'reloaded');
  t.ok(c.logs().some((l) => l.level === 'warn' && /max_header_size.*next restart/.test(String(l.msg))), 'the change is said to need a restart');
  t.same(await fresh(c, '/big', 4, big), [431, 431, 431, 431], 'no worker applied it: 431 everywhere');

  // A worker dies (a bug, the OOM killer): the primary forks a replacement.
  const victim = c.workerPids().get(1)!;
  process.kill(victim, 'SIGKILL');
  await c.nth((l) => isListening(l) && l.worker === 3, 1, 30_000);
  const mark = c.logs().length;
  const after = await fresh(c, '/big', 8, big);
  await until(() => access(c, '/big', mark).length >= 8, 5_000);
  t.same(
    after,
    Array(8).fill(431),
    `the gateway runs one max_header_size on every worker until it restarts (got ${after.join(',')} from workers ${workersOf(access(c, '/big', mark)).join(',')})`,
  );
});

t.test('a reload that moves listen.https (restart-only) to a port in use, then one worker crash: the gateway keeps serving, no crash loop', async (t) => {
  const up = await startUpstream(t);
  let dir = '';
  const c = await startCluster(t, (d) => {
    dir = d;
    return site(d, up.origin);
  });
  // The operator edits the address (to a port another program holds): the reload warns it needs a restart.
  t.equal(await c.reload(site(dir, up.origin, '', `{ https: 127.0.0.1:${up.port}, http: null, admin: null }`)), 'reloaded');
  t.ok(c.logs().some((l) => l.level === 'warn' && /^listener addresses changed/.test(String(l.msg))), 'the listener change is said to need a restart');
  t.same(await fresh(c, '/still', 4), [200, 200, 200, 200], 'still serving on the address it started with');

  const victim = c.workerPids().get(1)!;
  process.kill(victim, 'SIGKILL');
  // A replacement must come up on the listeners the gateway has; up to 15 s for it (or for the exit).
  const outcome = await Promise.race([
    c.cli.waitForLog((l) => isListening(l) && (l.worker as number) >= 3, 15_000).then(() => 'replacement listening' as const, () => 'no replacement' as const),
    c.cli.exited.then((e) => `gateway exited ${String(e.code ?? e.signal)}` as const),
  ]);
  const exits = c.count((l) => l.msg === 'worker exited unexpectedly');
  t.equal(outcome, 'replacement listening', `one crashed worker is replaced (outcome: ${outcome}; worker exits: ${exits}; stderr: ${c.cli.stderr().split('\n').find((x) => /EADDR/.test(x)) ?? ''})`);
  t.equal(exits, 1, 'the replacement does not crash in turn');
  t.equal(c.cli.child.exitCode, null, 'the gateway is still running');
  if (c.cli.child.exitCode === null) t.same(await fresh(c, '/after', 4), [200, 200, 200, 200], 'and serving on its address');
});

t.test('a reload changing a restart-only setting is warned about once, not once per worker', async (t) => {
  const up = await startUpstream(t);
  let dir = '';
  const c = await startCluster(t, (d) => {
    dir = d;
    return site(d, up.origin);
  });
  t.equal(await c.reload(site(dir, up.origin, 'limits: { headers_timeout: 20s }\ntimeouts: { idle: 30s }\n')), 'reloaded');
  await sleep(300);
  const limits = c.logs().filter((l) => l.level === 'warn' && /^limits\.max_header_size, limits\.headers_timeout or limits\.request_timeout changed/.test(String(l.msg)));
  const timeouts = c.logs().filter((l) => l.level === 'warn' && /^timeouts\.connect or timeouts\.idle changed/.test(String(l.msg)));
  t.equal(limits.length, 1, `limits.* named once (got ${limits.length}: ${limits.map((l) => `role=${String(l.role)} worker=${String(l.worker)}`).join('; ')})`);
  t.equal(timeouts.length, 1, `timeouts.* named once (got ${timeouts.length})`);
});

t.test('a ${NAME_FILE} secret file gone after start (nothing reloaded), then one worker crash: the replacement runs the validated configuration, the gateway keeps serving', async (t) => {
  const up = await startUpstream(t);
  let tokenFile = '';
  const c = await startCluster(
    t,
    (d) => {
      tokenFile = join(d, 'metrics-token');
      writeFileSync(tokenFile, 'a-long-metrics-token-0123456789abcdef');
      return site(d, up.origin, 'admin: { metrics_token: "${PCX_C2_METRICS_TOKEN}" }\n');
    },
    (d) => ({ PCX_C2_METRICS_TOKEN_FILE: join(d, 'metrics-token') }),
  );
  t.same(await fresh(c, '/before', 2), [200, 200]);
  // The secret was read when the configuration was validated; the mount then goes away (a
  // rotated Docker/Kubernetes secret, a cleaned-up tmpfs). Nothing asks the gateway to reload.
  rmSync(tokenFile);
  process.kill(c.workerPids().get(1)!, 'SIGKILL');
  const outcome = await Promise.race([
    c.cli.waitForLog((l) => isListening(l) && (l.worker as number) >= 3, 15_000).then(() => 'replacement listening', () => 'no replacement'),
    c.cli.exited.then((e) => `gateway exited ${String(e.code ?? e.signal)}`),
  ]);
  const exits = c.count((l) => l.msg === 'worker exited unexpectedly');
  t.equal(outcome, 'replacement listening', `the crashed worker is replaced (outcome: ${outcome}; worker exits: ${exits}; stderr: ${c.cli.stderr().split('\n').find((x) => /PCX_C2/.test(x)) ?? ''})`);
  t.equal(exits, 1, 'the replacement does not crash in turn');
  t.equal(c.cli.child.exitCode, null, 'the gateway is still running');
});

t.test('a reload refused for a broken certificate pair (the old configuration keeps serving), then one worker crash: the gateway keeps serving its certificate', async (t) => {
  const up = await startUpstream(t);
  const pem = mkdtempSync(join(tmpdir(), 'portcullis-cluster-attacks-2-pem-'));
  t.teardown(() => rmSync(pem, { recursive: true, force: true }));
  const own = await ensureLocalCertificate(join(pem, 'own-ca'), ['app.test']);
  const other = await ensureLocalCertificate(join(pem, 'other-ca'), ['app.test']);
  const certFile = join(pem, 'app.pem');
  writeFileSync(certFile, own.certPem);
  writeFileSync(join(pem, 'app.key'), own.keyPem);
  const conf = (d: string): string =>
    site(d, up.origin).replace(`tls: { storage: ${join(d, 'certs')} }`, `tls: { certificates: [{ cert: ${certFile}, key: ${join(pem, 'app.key')} }] }`);
  const c = await startCluster(t, conf, () => ({}), () => own.rootPem);
  t.same(await fresh(c, '/before', 2), [200, 200], 'the certificate you brought is served');
  // A rotation gone wrong: the new certificate is written, its key is not (the old key stays).
  writeFileSync(certFile, other.certPem);
  t.equal(await c.reload(conf(c.dir)), 'rejected', 'the reload is refused (certificate and key do not match)');
  t.same(await fresh(c, '/still', 4), [200, 200, 200, 200], 'the old configuration keeps serving');

  process.kill(c.workerPids().get(1)!, 'SIGKILL');
  const outcome = await Promise.race([
    c.cli.waitForLog((l) => isListening(l) && (l.worker as number) >= 3, 15_000).then(() => 'replacement listening', () => 'no replacement'),
    c.cli.exited.then((e) => `gateway exited ${String(e.code ?? e.signal)}`),
  ]);
  const exits = c.count((l) => l.msg === 'worker exited unexpectedly');
  t.equal(outcome, 'replacement listening', `the crashed worker is replaced (outcome: ${outcome}; worker exits: ${exits}; stderr: ${c.cli.stderr().split('\n').find((x) => /portcullis:/.test(x)) ?? ''})`);
  t.equal(exits, 1, 'the replacement does not crash in turn');
  t.equal(c.cli.child.exitCode, null, 'the gateway is still running');
  if (c.cli.child.exitCode === null) t.same(await fresh(c, '/after', 4), [200, 200, 200, 200], 'every worker serves the certificate in force');
});

// ---------------------------------------------------------------------------------------------
// SIGTERM while a crashed worker is being replaced
// ---------------------------------------------------------------------------------------------


t.test('SIGTERM while the replacement of a crashed worker is starting: the gateway drains and exits 0 within shutdown_grace', async (t) => {
  const up = await startUpstream(t);
  const c = await startCluster(t, (d) => site(d, up.origin));
  const primary = c.cli.child.pid!;
  const known = new Set(childrenOf(primary));
  t.equal(known.size, 2, 'two workers');
  process.kill(c.workerPids().get(1)!, 'SIGKILL');
  await c.nth((l) => l.msg === 'worker exited unexpectedly', 1);
  // The primary forks the replacement a second later: SIGTERM as soon as the new process exists
  // (a rolling deploy stopping the gateway while it heals itself).
  let replacement: number | undefined;
  await until(() => (replacement = childrenOf(primary).find((p) => !known.has(p))) !== undefined, 10_000);
  t.ok(replacement, 'a replacement process was forked');
  const sent = Date.now();
  c.cli.child.kill('SIGTERM');
  const exit = await Promise.race([c.cli.exited, sleep(20_000).then(() => null)]);
  const took = Date.now() - sent;
  t.comment(c.logs().filter((l) => l.level !== 'info' || l.type !== 'access').map((l) => `${String(l.worker ?? l.role ?? '')} ${String(l.msg)}`).slice(-8).join(' | '));
  t.same(exit, { code: 0, signal: null }, `exit 0 (took ${took} ms; stderr: ${c.cli.stderr().split('\n')[0] ?? ''})`);
  t.ok(took < 3_000 + 1_000, `within shutdown_grace (3s) and a little: nothing is in flight (took ${took} ms)`);
  t.notOk(/Error|at /.test(c.cli.stderr()), `no stack trace on stderr: ${c.cli.stderr().slice(0, 300)}`);
  if (replacement !== undefined) {
    await until(() => !alive(replacement!), 10_000);
    t.notOk(alive(replacement), 'the replacement is gone too');
  }
});

// ---------------------------------------------------------------------------------------------
// tls.min_version reloaded: every worker
// ---------------------------------------------------------------------------------------------

/** One TLS handshake limited to `max`: the negotiated version, or the error code. */
function handshake(c: Cluster, max: tls.SecureVersion): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: c.port, servername: 'app.test', ca: c.ca, maxVersion: max, ALPNProtocols: ['http/1.1'] }, () => {
      const v = s.getProtocol() ?? 'none';
      s.end(`GET /tls-probe HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
      s.on('close', () => resolve(v));
    });
    s.on('data', () => undefined);
    s.on('error', (err: NodeJS.ErrnoException) => resolve(`error:${err.code ?? err.message}`));
  });
}

t.test('tls.min_version raised to TLSv1.3 by a reload: a TLS 1.2 client is refused by every worker, also by a replacement', async (t) => {
  const up = await startUpstream(t);
  let dir = '';
  const c = await startCluster(t, (d) => {
    dir = d;
    return site(d, up.origin);
  });
  const v12 = await Promise.all(Array.from({ length: 6 }, () => handshake(c, 'TLSv1.2')));
  t.same(v12, Array(6).fill('TLSv1.2'), 'TLS 1.2 accepted before');
  t.equal(await c.reload(site(dir, up.origin).replace('tls: {', 'tls: { min_version: TLSv1.3,')), 'reloaded');
  const mark = c.logs().length;
  const refused: string[] = [];
  for (let i = 0; i < 10; i++) refused.push(await handshake(c, 'TLSv1.2'));
  t.ok(refused.every((r) => r.startsWith('error:')), `every TLS 1.2 handshake refused (${refused.join(',')})`);
  const ok13: string[] = [];
  for (let i = 0; i < 6; i++) ok13.push(await handshake(c, 'TLSv1.3'));
  t.same(ok13, Array(6).fill('TLSv1.3'));
  await until(() => access(c, '/tls-probe', mark).length >= 6, 5_000);
  t.same(workersOf(access(c, '/tls-probe', mark)), [1, 2], 'both workers served TLS 1.3 after the reload');

  process.kill(c.workerPids().get(2)!, 'SIGKILL');
  await c.nth((l) => isListening(l) && l.worker === 3, 1, 30_000);
  const again: string[] = [];
  for (let i = 0; i < 8; i++) again.push(await handshake(c, 'TLSv1.2'));
  t.ok(again.every((r) => r.startsWith('error:')), `and after a worker was replaced (${again.join(',')})`);
});

// ---------------------------------------------------------------------------------------------
// WebSockets relayed by workers
// ---------------------------------------------------------------------------------------------

interface WsApp {
  origin: string;
  sockets: WebSocket[];
  closes: Array<{ url: string; code: number }>;
}

async function wsApp(t: Tap): Promise<WsApp> {
  const app: WsApp = { origin: '', sockets: [], closes: [] };
  const server = http.createServer((req, res) => res.end('ok'));
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) =>
    wss.handleUpgrade(req, socket, head, (ws) => {
      app.sockets.push(ws);
      ws.on('message', (data, binary) => ws.send(data as Buffer, { binary }));
      ws.on('close', (code) => app.closes.push({ url: req.url ?? '', code }));
    }),
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(
    () =>
      new Promise<void>((r) => {
        for (const ws of app.sockets) ws.terminate();
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  app.origin = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return app;
}

interface Client {
  ws: WebSocket;
  closed: Promise<{ code: number; reason: string }>;
  echo(text: string): Promise<string>;
}

async function wsOpen(t: Tap, c: Cluster, path: string): Promise<Client> {
  const ws = new WebSocket(`wss://127.0.0.1:${c.port}${path}`, { ca: c.ca, servername: 'app.test', headers: { host: 'app.test' } } as object);
  ws.on('error', () => undefined);
  t.teardown(() => ws.terminate());
  const closed = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => reject(new Error(`no 101: ${res.statusCode}`)));
    ws.once('error', reject);
  });
  return {
    ws,
    closed,
    echo: (text) =>
      new Promise((resolve) => {
        const onMsg = (d: Buffer): void => {
          ws.off('message', onMsg);
          resolve(d.toString());
        };
        ws.on('message', onMsg);
        ws.send(text);
        void closed.then(() => resolve('(closed)'));
      }),
  };
}

t.test('WebSocket sessions on both workers, one worker SIGKILLed: its sessions end, the others keep echoing; the replacement takes new sessions', async (t) => {
  const app = await wsApp(t);
  const c = await startCluster(t, (d) => site(d, app.origin));
  const clients: Client[] = [];
  for (let i = 0; i < 6; i++) clients.push(await wsOpen(t, c, `/chat/${i}`));
  t.same(await Promise.all(clients.map((x, i) => x.echo(`hi ${i}`))), clients.map((_, i) => `hi ${i}`), 'every session echoes');
  process.kill(c.workerPids().get(1)!, 'SIGKILL');
  await c.nth((l) => l.msg === 'worker exited unexpectedly', 1);
  // Which sessions were on the dead worker: those that close now.
  const ended = await Promise.all(clients.map((x) => Promise.race([x.closed.then(() => true), sleep(3_000).then(() => false)])));
  t.ok(ended.filter(Boolean).length >= 1 && ended.filter((e) => !e).length >= 1, `some sessions ended (the dead worker's), some did not (${ended.join(',')})`);
  const survivors = clients.filter((_, i) => !ended[i]);
  t.same(await Promise.all(survivors.map((x, i) => x.echo(`still ${i}`))), survivors.map((_, i) => `still ${i}`), 'the other worker\'s sessions keep working');
  await until(() => app.closes.length >= ended.filter(Boolean).length, 5_000);
  t.equal(app.closes.length, ended.filter(Boolean).length, 'the app saw exactly the dead worker\'s sessions end');
  await c.nth((l) => isListening(l) && l.worker === 3, 1, 30_000);
  const fresh2: Client[] = [];
  for (let i = 0; i < 4; i++) fresh2.push(await wsOpen(t, c, `/again/${i}`));
  t.same(await Promise.all(fresh2.map((x, i) => x.echo(`new ${i}`))), fresh2.map((_, i) => `new ${i}`), 'new sessions work after the replacement');
});

t.test('SIGTERM with WebSocket sessions and slow requests on both workers: 1001 to both sides, the requests finish, exit 0, every access line written', async (t) => {
  const app = await wsApp(t);
  const held: Array<() => void> = [];
  const slow = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('started ');
    held.push(() => res.end('late'));
  });
  const c = await startCluster(t, (d) =>
    site(d, app.origin, '', '{ https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }', `[{ path: /slow, access: public, upstream: ${slow.origin} }, { path: /, access: public }]`),
  );
  const admin = (c.logs().find((l) => l.msg === 'portcullis started')!.admin as { port: number }).port;
  const clients: Client[] = [];
  for (let i = 0; i < 4; i++) clients.push(await wsOpen(t, c, `/ws/${i}`));
  t.same(await Promise.all(clients.map((x, i) => x.echo(`m${i}`))), ['m0', 'm1', 'm2', 'm3']);
  const pending = Array.from({ length: 4 }, (_, i) => c.get(`/slow/${i}`));
  await until(() => slow.seen.length === 4, 5_000);
  t.equal(slow.seen.length, 4, 'four slow requests in flight');
  await until(() => app.sockets.length === 4);
  const mark = c.logs().length;
  c.cli.child.kill('SIGTERM');
  await c.nth((l) => l.msg === 'worker shutting down', 2);
  const codes = await Promise.all(clients.map((x) => Promise.race([x.closed.then((r) => r.code), sleep(5_000).then(() => -1)])));
  t.same(codes, [1001, 1001, 1001, 1001], 'every client is told 1001 (going away)');
  await until(() => app.closes.length === 4, 5_000);
  t.same(app.closes.map((x) => x.code), [1001, 1001, 1001, 1001], 'the app is told 1001 for every session');
  // Draining: a load balancer's readiness probe must take the gateway out, new connections are not served.
  const ready = await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.status, (e: Error) => e.message);
  t.equal(ready, 503, 'readyz says not ready while the workers drain');
  const late = await c.get('/late').then((r) => `served ${r.status}`, (e: NodeJS.ErrnoException) => `refused ${e.code ?? e.message}`);
  t.match(late, /^refused/, `a connection opened during the drain is not served (${late})`);
  for (const release of held.splice(0)) release();
  const rs = await Promise.all(pending.map((p) => p.then((r) => `${r.status}:${r.body}`, (e: Error) => `error:${e.message}`)));
  t.same(rs, Array(4).fill('200:started late'), 'the requests in flight finished whole');
  const exit = await c.cli.exited;
  t.same(exit, { code: 0, signal: null }, c.cli.stderr());
  const lines = access(c, '/', mark).map((l) => `${String(l.path)} ${String(l.status)}`).sort();
  t.same(lines, ['/slow/0 200', '/slow/1 200', '/slow/2 200', '/slow/3 200', '/ws/0 101', '/ws/1 101', '/ws/2 101', '/ws/3 101'], 'one access line for each request and session');
  t.same(workersOf(access(c, '/', mark)), [1, 2], 'served by both workers');
});

// ---------------------------------------------------------------------------------------------
// Global limits with ambiguous paths; request buffering; spread over both workers
// ---------------------------------------------------------------------------------------------

t.test('an ambiguous path is counted under its parent route\'s limit on every worker: spellings spread over both workers share one counter', async (t) => {
  const up = await startUpstream(t);
  const c = await startCluster(t, (d) =>
    site(d, up.origin, '', undefined, '[{ id: api, path: /api, access: public, rate_limit: { max: 4, window: 1h } }, { id: import, path: /api/import, access: public }, { path: /, access: public }]'),
  );
  const spellings = ['/api/IMPORT', '/api/orders', '/api/Import/x', '/api/import;v=1', '/api/IMPORT/y', '/api/x'];
  const mark = c.logs().length;
  const statuses: number[] = [];
  for (let i = 0; i < 12; i++) statuses.push((await c.get(spellings[i % spellings.length]!)).status);
  t.same(statuses, [200, 200, 200, 200, ...Array(8).fill(429)], `four in the hour, whatever the spelling and worker (${statuses.join(',')})`);
  t.equal(up.seen.filter((r) => r.url.toLowerCase().startsWith('/api')).length, 4, 'the app saw exactly four');
  // /api/import itself (not ambiguous: no reading other than the unlimited route) is not limited.
  t.same(await fresh(c, '/api/import', 4), [200, 200, 200, 200], 'the unlimited route\'s own spelling is not counted');
  await until(() => access(c, '/api', mark).length >= 16, 5_000);
  t.same(workersOf(access(c, '/api', mark).filter((l) => l.status === 429)), [1, 2], 'both workers refused from the one counter');
});

t.test('slow uploads spread over both workers (limits.request_buffer): no upstream request until a body is whole, other clients served on both workers', async (t) => {
  let requestsSeen = 0;
  const up = await startUpstream(t);
  up.server.on('request', () => requestsSeen++);
  const c = await startCluster(t, (d) => site(d, up.origin));
  const sockets: tls.TLSSocket[] = [];
  const body = 'x'.repeat(4096);
  for (let i = 0; i < 16; i++) {
    const s = tls.connect({ host: '127.0.0.1', port: c.port, servername: 'app.test', ca: c.ca, ALPNProtocols: ['http/1.1'] });
    s.on('error', () => undefined);
    t.teardown(() => s.destroy());
    await new Promise<void>((r) => s.once('secureConnect', () => r()));
    s.write(`POST /upload/${i} HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`);
    sockets.push(s);
  }
  let sent = 10;
  const trickle = setInterval(() => {
    if (sent < body.length - 1) for (const s of sockets) s.write(body.slice(sent, sent + 1));
    sent++;
  }, 100);
  t.teardown(() => clearInterval(trickle));
  await sleep(600);
  const mark = c.logs().length;
  const others = await fresh(c, '/other', 8);
  t.same(others, Array(8).fill(200), 'other clients are served meanwhile');
  await until(() => access(c, '/other', mark).length >= 8, 5_000);
  t.same(workersOf(access(c, '/other', mark)), [1, 2], 'by both workers');
  t.equal(up.seen.filter((r) => r.url.startsWith('/upload')).length, 0, 'no upload reached the app');
  t.equal(requestsSeen, 8, 'the app was not even sent the head of an upload (no upstream request held open)');
  clearInterval(trickle);
  // The uploads finish: each is forwarded whole, once.
  const answers = sockets.map(
    (s) =>
      new Promise<string>((resolve) => {
        let got = '';
        s.on('data', (d: Buffer) => {
          got += d.toString();
          if (/\r\n\r\n/.test(got)) resolve(got.slice(0, 12));
        });
        s.on('close', () => resolve(got.slice(0, 12)));
      }),
  );
  for (const s of sockets) s.write(body.slice(sent));
  t.same(await Promise.all(answers), Array(16).fill('HTTP/1.1 200'), 'each upload answered 200 once whole');
  await until(() => up.seen.filter((r) => r.url.startsWith('/upload')).length === 16, 5_000);
  t.ok(up.seen.filter((r) => r.url.startsWith('/upload')).every((r) => r.body.length === body.length), 'the app got every body whole');
});
