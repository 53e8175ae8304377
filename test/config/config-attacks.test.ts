// Attacks on the configuration as an input and on the command line: every bad input must get a
// clear error naming its path (never a stack trace, never a silent different meaning), secrets
// must never be echoed, and a bad reload must leave the running configuration serving.
//
// `validate` and `explain` are run through the CLI's own entry point (`main` of src/cli.ts,
// exactly what `portcullis` runs); whatever depends on the process itself (start, signals,
// exit codes, stack traces, the working directory, a read that blocks) runs as a real child
// process: `node --import=tsx src/cli.ts …`.
import t from 'tap';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync, unlinkSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createInterface } from 'node:readline';
import { main } from '../../src/cli.js';
import { ConfigError } from '../../src/config/index.js';
import { startGateway, startUpstream, httpsRequest, rawTls, statusOf, type RunningGateway, type Tap } from '../helpers/gateway.js';
import { appSite, tlsClient } from '../helpers/clients.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'src', 'cli.ts');
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const STACK = /^\s+at .+\(?.*:\d+:\d+\)?$/m;
/** Just over 2^31-1 ms: Node's timers fire after 1 ms for anything longer. */
const D25 = '25d';

function tmp(t: Tap): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-cfgatk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A site on loopback ephemeral ports, public unless `routes` says otherwise. */
const base = (extra = '', routes = '[{ path: /, access: public }]', upstream = 'http://127.0.0.1:9'): string => `listen:
  https: 127.0.0.1:0
  http: null
  admin: 127.0.0.1:0
shutdown_grace: 2s
${extra}sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes: ${routes}
`;

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** `portcullis …` through the CLI's entry point, in this process (env: set for the call only). */
async function cliMain(args: string[], env: Record<string, string> = {}): Promise<Run> {
  let out = '';
  let err = '';
  const saved = new Map<string, string | undefined>();
  for (const [k, v] of Object.entries(env)) {
    saved.set(k, process.env[k]);
    process.env[k] = v;
  }
  try {
    const code = await main(args, { out: (s) => (out += s), err: (s) => (err += s) });
    return { code, out, err };
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

async function validateText(t: Tap, text: string | Buffer, env: Record<string, string> = {}): Promise<Run & { file: string }> {
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  writeFileSync(file, text);
  return { ...(await cliMain(['validate', '--config', file], env)), file };
}

/** `node src/cli.ts …` as a child process; killed after `timeoutMs` (then code is null). */
function runChild(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<Run & { timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [`--import=${TSX}`, CLI, ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let timedOut = false;
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      // stdout/stderr may trail the exit event by a moment.
      setTimeout(() => resolve({ code: timedOut ? null : code, out, err, timedOut }), 30);
    });
  });
}

type Log = Record<string, unknown>;

interface Proc {
  logs: Log[];
  waitFor(pred: (l: Log) => boolean, ms?: number): Promise<Log>;
  kill(sig: NodeJS.Signals): void;
  exited: Promise<number | null>;
  stderr(): string;
}

/** `portcullis start` as a child process, its JSON log lines collected. */
function startCli(t: Tap, file: string, env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, [`--import=${TSX}`, CLI, 'start', '--config', file], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Log[] = [];
  const waiters: Array<{ pred: (l: Log) => boolean; resolve: (l: Log) => void }> = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    let rec: Log;
    try {
      rec = JSON.parse(line) as Log;
    } catch {
      return;
    }
    logs.push(rec);
    for (const w of [...waiters]) {
      if (w.pred(rec)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(rec);
      }
    }
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return {
    logs,
    exited,
    stderr: () => stderr,
    kill: (sig) => child.kill(sig),
    waitFor(pred, ms = 20_000) {
      const found = logs.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for a log line; stderr: ${stderr}; last logs: ${JSON.stringify(logs.slice(-4))}`)), ms);
        waiters.push({ pred, resolve: (l) => { clearTimeout(timer); resolve(l); } });
      });
    },
  };
}

/** GET over HTTPS that gives up after `ms` (status 0: no answer in time). */
function getWithin(port: number, ca: string, path: string, ms: number): Promise<number> {
  return new Promise((resolve) => {
    const req = https.request({ host: '127.0.0.1', port, path, servername: 'app.test', ca, agent: false, headers: { host: 'app.test' }, signal: AbortSignal.timeout(ms) }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.end();
  });
}

async function started(proc: Proc, dir: string): Promise<{ port: number; ca: string }> {
  const line = await proc.waitFor((l) => l.msg === 'portcullis started');
  return { port: (line.https as { port: number }).port, ca: readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8') };
}

/**
 * A real gateway, or null when the configuration is refused at load (a valid fix for a value
 * that cannot work). Any other failure is rethrown.
 */
async function gatewayOrRefused(t: Tap, yaml: string): Promise<RunningGateway | null> {
  try {
    return await startGateway(t, yaml);
  } catch (err) {
    if (err instanceof ConfigError) return null;
    throw err;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Durations that overflow Node's timers
// ---------------------------------------------------------------------------------------------

t.test('timer durations over 2^31-1 ms (~24.8 days), which Node runs as 1 ms timers, are refused naming their path', async (t) => {
  const text = base(
    `limits: { headers_timeout: ${D25}, request_timeout: ${D25} }\ntimeouts: { connect: ${D25}, response: ${D25}, idle: ${D25} }\n`,
    '[{ path: /, access: public, timeouts: { response: 1y } }]',
  ).replace('shutdown_grace: 2s', `shutdown_grace: ${D25}`);
  const r = await validateText(t, text);
  t.equal(r.code, 1, `refused (exit ${r.code}; ${r.out.trim()})`);
  for (const p of ['limits.headers_timeout', 'limits.request_timeout', 'timeouts.response', 'timeouts.idle', 'shutdown_grace', 'sites.0.routes.0.timeouts.response']) {
    t.match(r.err, new RegExp(`gw\\.yml:\\d+:\\d+: ${p.replace(/\./g, '\\.')}: `), `${p} is named`);
  }
});

t.test('a duration over ~24.8 days never reaches a timer as 1 ms at runtime (504s, 408s, cut keep-alive, no shutdown grace)', async (t) => {
  await t.test(`timeouts.response: ${D25} — a fast upstream answer must reach the client, not a 504`, async (t) => {
    const up = await startUpstream(t);
    const gw = await gatewayOrRefused(t, appSite(up.origin, undefined, `timeouts: { response: ${D25} }\n`));
    if (gw === null) return t.pass('refused at load');
    const res = await gw.request({ path: '/fast' });
    t.equal(res.status, 200, `status ${res.status}`);
  });

  await t.test(`timeouts.idle: ${D25} — a keep-alive connection must carry a second request 150 ms later`, async (t) => {
    const up = await startUpstream(t);
    const gw = await gatewayOrRefused(t, appSite(up.origin, undefined, `timeouts: { idle: ${D25} }\n`));
    if (gw === null) return t.pass('refused at load');
    const c = await tlsClient(t, gw);
    c.socket.write('GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n');
    await sleep(150);
    c.socket.write('GET /two HTTP/1.1\r\nHost: app.test\r\n\r\n');
    await sleep(300);
    t.same(up.seen.map((s) => s.url), ['/one', '/two'], `both requests served (closed: ${c.isClosed()})`);
  });

  await t.test(`limits.headers_timeout: ${D25} — a request sent 50 ms after the handshake must not get 408`, async (t) => {
    const up = await startUpstream(t);
    const gw = await gatewayOrRefused(t, appSite(up.origin, undefined, `limits: { headers_timeout: ${D25} }\n`));
    if (gw === null) return t.pass('refused at load');
    const c = await tlsClient(t, gw);
    await sleep(50);
    c.socket.write('GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n');
    await sleep(300);
    t.equal(statusOf(c.text()), 200, c.text().split('\r\n')[0] ?? '');
  });

  await t.test(`limits.request_timeout: ${D25} — a body sent in two parts 100 ms apart must reach the upstream`, async (t) => {
    const up = await startUpstream(t);
    const gw = await gatewayOrRefused(t, appSite(up.origin, undefined, `limits: { request_timeout: ${D25} }\n`));
    if (gw === null) return t.pass('refused at load');
    const c = await tlsClient(t, gw);
    c.socket.write('POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nhello');
    await sleep(100);
    c.socket.write('world');
    await sleep(300);
    t.equal(statusOf(c.text()), 200, c.text().split('\r\n')[0] ?? '');
    t.same(up.seen.map((s) => s.body.toString()), ['helloworld']);
  });

  await t.test(`shutdown_grace: ${D25} — a request in flight at shutdown must finish`, async (t) => {
    const up = await startUpstream(t, (_req, res) => setTimeout(() => { res.writeHead(200); res.end('slow-ok'); }, 400));
    const gw = await gatewayOrRefused(t, appSite(up.origin, undefined, `shutdown_grace: ${D25}\n`));
    if (gw === null) return t.pass('refused at load');
    const inflight = httpsRequest(gw.port, gw.ca, { path: '/slow' }).then((r) => `${r.status} ${r.body}`, (e: Error) => `error: ${e.message}`);
    await sleep(100);
    await gw.gw.close();
    t.equal(await inflight, '200 slow-ok');
  });
});

// ---------------------------------------------------------------------------------------------
// Zero values that cannot mean what they say
// ---------------------------------------------------------------------------------------------

t.test('zero limits are refused: headers_timeout/request_timeout 0s (every request 408), max_header_size 0b (Node default 16kb), acme renew_before 0s (renew only once expired)', async (t) => {
  const text = base('limits: { headers_timeout: 0s, request_timeout: 0s, max_header_size: 0b }\ntls:\n  acme: { email: ops@example.com, challenge: tls-alpn-01, renew_before: 0s }\n').replace('hosts: [app.test]', 'hosts: [app.example.com]');
  const r = await validateText(t, text);
  t.equal(r.code, 1, `refused (exit ${r.code}; ${r.out.trim()})`);
  for (const p of ['limits.headers_timeout', 'limits.request_timeout', 'limits.max_header_size', 'tls.acme.renew_before']) {
    t.match(r.err, new RegExp(`: ${p.replace(/\./g, '\\.')}: `), `${p} is named`);
  }
  // Had the value been accepted: every HTTP/1.1 connection answered 408 at once (the gateway now refuses to start).
  const up = await startUpstream(t);
  const gw = await gatewayOrRefused(t, appSite(up.origin, undefined, 'limits: { headers_timeout: 0s }\n'));
  if (gw === null) return;
  const c = await tlsClient(t, gw);
  await sleep(50); // a client one network round trip away
  c.socket.write('GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n');
  await sleep(300);
  t.equal(statusOf(c.text()), 200, `headers_timeout: 0s at runtime: ${c.text().split('\r\n')[0]}`);
});

// ---------------------------------------------------------------------------------------------
// Secrets in messages
// ---------------------------------------------------------------------------------------------

const MARK = 'zq9SecretMarker';
const PEM_KEY = `-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg${MARK}AAAA\n-----END PRIVATE KEY-----\n`;
const PEM_CERT = `-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU${MARK}BBBB\n-----END CERTIFICATE-----\n`;

t.test('values from ${ENV} are never echoed in error messages (host and listen labels lower-cased; a PEM passed as a path, private key included), nor in the config_rejected event', async (t) => {
  const env = { PCX_HOST: `${MARK}_h.example`, PCX_ADMIN: `${MARK}_a:9090`, PCX_CERT: PEM_CERT, PCX_KEY: PEM_KEY };
  const text = base('tls:\n  certificates: [{ cert: "${PCX_CERT}", key: "${PCX_KEY}" }]\n')
    .replace('admin: 127.0.0.1:0', 'admin: "${PCX_ADMIN}"')
    .replace('hosts: [app.test]', 'hosts: [app.test, "${PCX_HOST}"]');
  const r = await validateText(t, text, env);
  t.equal(r.code, 1);
  for (const p of ['listen.admin', 'sites.0.hosts.1', 'tls.certificates.0.cert', 'tls.certificates.0.key']) t.match(r.err, `: ${p}: `, `${p} is named`);
  t.notOk(r.err.toLowerCase().includes(MARK.toLowerCase()), `no environment value in the messages:\n${r.err}`);
  t.notMatch(r.err, /BEGIN (PRIVATE KEY|CERTIFICATE)/, 'no PEM in the messages');

  // A reload with the same mistake: the problems go to the log as a security event.
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  const up = await startUpstream(t);
  writeFileSync(file, base('', undefined, up.origin));
  const proc = startCli(t, file, { PCX_KEY: PEM_KEY, PCX_CERT: PEM_CERT });
  const { port, ca } = await started(proc, dir);
  writeFileSync(file, base('tls:\n  certificates: [{ cert: "${PCX_CERT}", key: "${PCX_KEY}" }]\n', undefined, up.origin));
  proc.kill('SIGHUP');
  const rejected = await proc.waitFor((l) => l.event === 'config_rejected');
  t.equal(await getWithin(port, ca, '/', 3000), 200, 'the old configuration keeps serving');
  const logged = JSON.stringify(proc.logs);
  t.notOk(logged.toLowerCase().includes(MARK.toLowerCase()), `the private key is not in the log: ${JSON.stringify(rejected.problems)}`);
  proc.kill('SIGTERM');
  await proc.exited;
});

// ---------------------------------------------------------------------------------------------
// Listeners and start-up failures
// ---------------------------------------------------------------------------------------------

t.test('two listeners on the same address are refused by validate (start would die on EADDRINUSE)', async (t) => {
  const both = await validateText(t, base().replace('https: 127.0.0.1:0\n  http: null', 'https: 127.0.0.1:18443\n  http: 127.0.0.1:18443'));
  t.equal(both.code, 1, `https = http refused (exit ${both.code}; ${both.out.trim()})`);
  t.match(both.err, /: listen\.http: /, 'listen.http is named');
  const admin = await validateText(t, base().replace('https: 127.0.0.1:0', 'https: 127.0.0.1:19090').replace('admin: 127.0.0.1:0', 'admin: 127.0.0.1:19090'));
  t.equal(admin.code, 1, `https = admin refused (exit ${admin.code})`);
  t.match(admin.err, /: listen\.admin: /, 'listen.admin is named');
});

t.test('start failures after validation (address in use, unwritable log.security_file) print one clear line, no stack trace', async (t) => {
  const dir = tmp(t);
  const holder = net.createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => holder.close(() => r())));
  const busy = (holder.address() as net.AddressInfo).port;
  const inUse = join(dir, 'in-use.yml');
  writeFileSync(inUse, base().replace('https: 127.0.0.1:0', `https: 127.0.0.1:${busy}`));
  mkdirSync(join(dir, 'a-directory'));
  const secLog = join(dir, 'seclog.yml');
  writeFileSync(secLog, base('log: { security_file: a-directory }\n'));
  const [a, b] = await Promise.all([runChild(['start', '-c', inUse], { timeoutMs: 20_000 }), runChild(['start', '-c', secLog], { timeoutMs: 20_000 })]);
  t.equal(a.code, 1, 'address in use: exit 1');
  t.match(a.err, new RegExp(`listen\\.https|127\\.0\\.0\\.1:${busy}`), 'names the listener');
  t.notMatch(a.err, STACK, `no stack trace:\n${a.err}`);
  t.equal(b.code, 1, 'unwritable security log: exit 1');
  t.match(b.err, /log\.security_file/, 'names the key');
  t.notMatch(b.err, STACK, `no stack trace:\n${b.err}`);
});

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

t.test('`portcullis validate bad.yml` (file given without --config) is a usage error, never ./gateway.yml reported "valid"', async (t) => {
  const dir = tmp(t);
  writeFileSync(join(dir, 'gateway.yml'), base());
  writeFileSync(join(dir, 'bad.yml'), 'sites: [ { hosts: [app.test], upstream: not-a-url } ]\n');
  const r = await runChild(['validate', 'bad.yml'], { cwd: dir });
  t.not(r.code, 0, `must not succeed: exit ${r.code}; stdout: ${r.out.trim()}`);
  t.notMatch(r.out, /configuration is valid/, 'never reports another file as valid');
});

// ---------------------------------------------------------------------------------------------
// Route paths
// ---------------------------------------------------------------------------------------------

t.test('a glob-looking route path (`/admin/*`, `/api*`) is refused: read as a literal, the deny written for /admin/* would leave /admin/panel public', async (t) => {
  const routes = '[{ path: "/admin/*", access: deny }, { path: "/api*", access: deny }, { path: /, access: public }]';
  const r = await validateText(t, base('', routes));
  t.equal(r.code, 1, `refused (exit ${r.code}; ${r.out.trim()})`);
  t.match(r.err, /: sites\.0\.routes\.0\.path: /, 'sites.0.routes.0.path is named');
  t.match(r.err, /: sites\.0\.routes\.1\.path: /, 'sites.0.routes.1.path is named');
  const up = await startUpstream(t);
  const gw = await gatewayOrRefused(t, appSite(up.origin, routes));
  if (gw === null) return;
  const res = await gw.request({ path: '/admin/panel' });
  t.equal(res.status, 403, `/admin/panel: ${res.status}`);
  t.same(up.seen.map((s) => s.url), [], 'the upstream saw nothing');
});

t.test('two routes whose paths differ only in case (or a trailing /) are refused: matching ignores both, so one of them could never decide', async (t) => {
  const routes = '[{ path: /Admin, access: deny }, { path: /admin, access: public }, { path: /, access: public }]';
  const r = await validateText(t, base('', routes));
  t.equal(r.code, 1, `refused (exit ${r.code}; ${r.out.trim()})`);
  t.match(r.err, /: sites\.0\.routes\.1\.path: .*same path/, 'the second route is named as a duplicate');
  const slash = await validateText(t, base('', '[{ path: /admin/, access: deny }, { path: /admin, access: public }]'));
  t.equal(slash.code, 1, 'a trailing / is the same route too');
});

// ---------------------------------------------------------------------------------------------
// Secret files that are not regular files
// ---------------------------------------------------------------------------------------------

t.test('NAME_FILE naming a FIFO is refused at once: validate does not hang, and a SIGHUP reload does not freeze the running gateway', async (t) => {
  const dir = tmp(t);
  const fifo = join(dir, 'token.fifo');
  execFileSync('mkfifo', [fifo]);
  const withVar = base('admin:\n  metrics_token: "${PCX_FIFO}"\n');
  const withVarUp = (origin: string) => base('admin:\n  metrics_token: "${PCX_FIFO}"\n', undefined, origin);
  const file = join(dir, 'gw.yml');
  writeFileSync(file, withVar);
  // A blocked open of the FIFO waits forever; 30 s only tells it from a slow start (the CLI runs
  // through tsx, whose cold compile took over 6 s on a loaded machine).
  const v = await runChild(['validate', '-c', file], { env: { PCX_FIFO_FILE: fifo }, timeoutMs: 30_000 });
  t.notOk(v.timedOut, 'validate answers (it hung for 30 s)');
  t.equal(v.code, 1, 'refused');
  t.match(v.err, /PCX_FIFO_FILE/, 'names the variable');

  const up = await startUpstream(t);
  writeFileSync(file, base('', undefined, up.origin));
  const proc = startCli(t, file, { PCX_FIFO_FILE: fifo });
  const { port, ca } = await started(proc, dir);
  t.equal(await getWithin(port, ca, '/', 5000), 200, 'serving');
  writeFileSync(file, withVarUp(up.origin));
  proc.kill('SIGHUP');
  await sleep(300);
  t.equal(await getWithin(port, ca, '/', 3000), 200, 'still serving after the reload (0: no answer within 3 s)');
});

// ---------------------------------------------------------------------------------------------
// What holds
// ---------------------------------------------------------------------------------------------

t.test('the file itself: empty, JSON, BOM, non-UTF-8, a directory, a missing file, 50 MB of comments — a clear answer each, start never prints a stack', async (t) => {
  const dir = tmp(t);
  const json = JSON.stringify({ listen: { https: '127.0.0.1:0', http: null, admin: null }, sites: [{ hosts: ['app.test'], upstream: 'http://127.0.0.1:9', routes: [{ path: '/', access: 'public' }] }] });
  const files: Record<string, string | Buffer> = {
    'empty.yml': '',
    'json.yml': json,
    'bom.yml': `\uFEFF${base()}`,
    // A Latin-1 host name: the byte 0xE9 is not UTF-8.
    'latin1.yml': Buffer.from(base().replace('hosts: [app.test]', 'hosts: [app.test, "caf\u00e9.test"]'), 'latin1'),
    'huge.yml': base() + `# ${'x'.repeat(98)}\n`.repeat(500_000),
  };
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  mkdirSync(join(dir, 'adir.yml'));
  const expect: Record<string, [number, RegExp]> = {
    'empty.yml': [1, /empty\.yml:1:1: the configuration is empty/],
    'json.yml': [0, /configuration is valid/],
    'bom.yml': [0, /configuration is valid/],
    'latin1.yml': [1, /latin1\.yml:\d+:\d+: sites\.0\.hosts\.1: /],
    // Over the 16 MB a configuration file (or a secret file) may be: refused before it is read.
    'huge.yml': [1, /huge\.yml:0:0: cannot read the file \(larger than 16mb\)/],
    'adir.yml': [1, /adir\.yml:0:0: cannot read the file \(EISDIR\)/],
    'missing.yml': [1, /missing\.yml:0:0: cannot read the file \(ENOENT\)/],
  };
  for (const [name, [code, re]] of Object.entries(expect)) {
    const r = await cliMain(['validate', '-c', join(dir, name)]);
    t.equal(r.code, code, `${name}: exit ${code}`);
    t.match(r.out + r.err, re, name);
  }
  const [s1, s2] = await Promise.all([runChild(['start', '-c', join(dir, 'empty.yml')]), runChild(['start', '-c', join(dir, 'adir.yml')])]);
  for (const s of [s1, s2]) {
    t.equal(s.code, 1, 'start refuses: exit 1');
    t.notMatch(s.err, STACK, 'no stack trace');
    t.notMatch(s.err, /undefined/, 'no "undefined"');
  }
});

t.test('values: YAML 1.1 booleans, numbers for sizes, odd units, bad CIDRs, IDN and dotted hosts, file:/unix: upstreams, method lists — each refused at its path by validate and by start', async (t) => {
  const shape = await validateText(t, base('csrf: { enabled: no }\ncookies: { secure: off, http_only: yes }\nlimits: { max_body_size: 1e9, max_header_size: 10KB, headers_timeout: -1s, request_timeout: 1.5.3s }\ntimeouts: { idle: 1m30s }\nworkers: "2"\n'));
  t.equal(shape.code, 1);
  for (const p of ['csrf.enabled', 'cookies.secure', 'cookies.http_only', 'limits.max_body_size', 'limits.max_header_size', 'limits.headers_timeout', 'limits.request_timeout', 'timeouts.idle', 'workers']) {
    t.match(shape.err, new RegExp(`gw\\.yml:\\d+:\\d+: ${p.replace(/\./g, '\\.')}: `), `${p} refused`);
  }
  const valuesText = `listen:
  https: 127.0.0.1:0
  http: null
  admin: 127.0.0.1:0
trusted_proxies: ["::/129", "1.2.3.4/ 8", "10.0.0.0/", "fe80::1%eth0"]
sites:
  - hosts: [app.test, "bücher.test", "app2.test.", "a.*.test", "app3.test:8443"]
    upstream: [http://127.0.0.1:9, "file:///etc/passwd", "unix:/run/app.sock", "http://user:pw@127.0.0.1:8"]
    routes:
      - { path: /a, methods: ["GET,POST"] }
      - { path: /b, methods: ["G ET"] }
      - { path: "/c/%2e%2e/d" }
      - { path: /, access: public }
`;
  const dir = tmp(t);
  const file = join(dir, 'values.yml');
  writeFileSync(file, valuesText);
  const [v, s] = await Promise.all([cliMain(['validate', '-c', file]), runChild(['start', '-c', file])]);
  t.equal(v.code, 1);
  const paths = ['trusted_proxies.0', 'trusted_proxies.1', 'trusted_proxies.2', 'trusted_proxies.3', 'sites.0.hosts.1', 'sites.0.hosts.2', 'sites.0.hosts.3', 'sites.0.hosts.4', 'sites.0.upstream.1', 'sites.0.upstream.2', 'sites.0.upstream.3', 'sites.0.routes.0.methods.0', 'sites.0.routes.1.methods.0', 'sites.0.routes.2.path'];
  for (const p of paths) t.match(v.err, new RegExp(`values\\.yml:\\d+:\\d+: ${p.replace(/\./g, '\\.')}: `), `${p} refused`);
  t.notMatch(v.err, /undefined/);
  t.equal(s.code, 1, 'start refuses the same file');
  for (const p of paths) t.match(s.err, `: ${p}: `, `start names ${p}`);
  t.notMatch(s.err, STACK, 'no stack trace');
  // Punycode is the way to write an IDN host, and it is accepted.
  const puny = await validateText(t, base().replace('hosts: [app.test]', 'hosts: [xn--bcher-kva.test]'));
  t.equal(puny.code, 0, puny.err);
});

t.test('${VAR}: a missing variable inside a list names it and the item; a YAML-looking value stays one string; NAME_FILE naming a directory is an error naming NAME_FILE', async (t) => {
  const dir = tmp(t);
  const missing = await validateText(t, base('trusted_proxies: ["10.0.0.0/8", "${PCX_NOPE_NET}"]\n'));
  t.equal(missing.code, 1);
  t.match(missing.err, /: trusted_proxies\.1: environment variable PCX_NOPE_NET is not set \(nor PCX_NOPE_NET_FILE\)/);
  // A value holding YAML is not parsed: it cannot add a route or another key.
  const injected = await validateText(t, base('', '[{ path: /, access: deny }]', '"${PCX_UP}"'), { PCX_UP: 'http://127.0.0.1:9\n    routes: [{ path: /, access: public }]' });
  t.equal(injected.code, 1, 'the value is refused as one (invalid) URL');
  t.match(injected.err, /: sites\.0\.upstream: /);
  t.notMatch(injected.err, /routes: \[/, 'the value is not echoed');
  const d = await validateText(t, base('admin:\n  metrics_token: "${PCX_DIRTOK}"\n'), { PCX_DIRTOK_FILE: dir });
  t.equal(d.code, 1);
  t.match(d.err, /: admin\.metrics_token: cannot read PCX_DIRTOK_FILE \(.*\): EISDIR/);
});

t.test('reload (SIGHUP) of a broken file — empty, non-UTF-8, alias bomb, deleted, a directory — is refused with config_rejected and the old rules keep serving; a good one then applies', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  const rules = '[{ path: /private, access: deny }, { path: /, access: public }]';
  const up = await startUpstream(t);
  writeFileSync(file, base('', rules, up.origin));
  const proc = startCli(t, file);
  const { port, ca } = await started(proc, dir);
  t.equal(await getWithin(port, ca, '/private', 3000), 403);
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]', 'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]', 'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]', 'd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]', ''].join('\n');
  const broken: Array<[string, () => void, RegExp]> = [
    ['empty', () => writeFileSync(file, ''), /the configuration is empty/],
    ['non-UTF-8', () => writeFileSync(file, Buffer.from([0xff, 0xfe, 0x00, 0x73, 0x3a, 0x0a])), /gw\.yml:\d+:\d+: /],
    ['alias bomb', () => writeFileSync(file, bomb), /YAML cannot be loaded/],
    ['deleted', () => unlinkSync(file), /cannot read the file \(ENOENT\)/],
    ['a directory', () => mkdirSync(file), /cannot read the file \(EISDIR\)/],
  ];
  let seen = 0;
  for (const [name, breakIt, re] of broken) {
    breakIt();
    proc.kill('SIGHUP');
    const ev = await proc.waitFor((l) => l.event === 'config_rejected' && proc.logs.filter((x) => x.event === 'config_rejected').indexOf(l) === seen);
    seen++;
    t.match(JSON.stringify(ev.problems), re, `${name}: config_rejected says why`);
    t.equal(await getWithin(port, ca, '/private', 3000), 403, `${name}: the old rules still apply`);
    t.equal(await getWithin(port, ca, '/', 3000), 200, `${name}: still serving`);
  }
  rmSync(file, { recursive: true, force: true });
  writeFileSync(file, base('', '[{ path: /, access: public }]', up.origin));
  proc.kill('SIGHUP');
  await proc.waitFor((l) => l.event === 'config_reloaded');
  t.equal(await getWithin(port, ca, '/private', 3000), 200, 'the good file applies');
  proc.kill('SIGTERM');
  t.equal(await proc.exited, 0);
});

t.test('explain gives the decision the running gateway gives, for encoded, dotted, cased, parameterised and odd-host URLs', async (t) => {
  const up = await startUpstream(t);
  const routes = `
      - { path: /admin, access: deny }
      - { path: /api, methods: [POST], access: deny }
      - { path: /, access: public }`;
  const gw = await startGateway(t, appSite(up.origin, routes));
  const cases: Array<[string, string, string]> = [
    ['GET', 'app.test', '/admin'],
    ['GET', 'APP.TEST', '/ADMIN/x'],
    ['GET', 'app.test.', '/admin'],
    ['GET', 'app.test:443', '/admin;jsessionid=1'],
    ['GET', 'app.test', '/%61dmin'],
    ['GET', 'app.test', '//admin'],
    ['GET', 'app.test', '/x/../admin'],
    ['GET', 'app.test', '/%2e%2e/admin'],
    ['GET', 'app.test', '/admin%2fx'],
    ['GET', 'app.test', '/admin..;/x'],
    ['GET', 'app.test', '/%EF%BC%A1dmin'],
    ['GET', 'app.test', ''],
    ['GET', 'other.test', '/'],
    ['GET', 'app.test', '/api'],
    ['POST', 'app.test', '/api/'],
    ['POST', 'app.test', '/x?_method=DELETE'],
  ];
  for (const [method, host, target] of cases) {
    const raw = await rawTls(gw.port, gw.ca, `${method} ${target || '/'} HTTP/1.1\r\nHost: ${host}\r\n${method === 'POST' ? 'Content-Length: 0\r\n' : ''}Connection: close\r\n\r\n`, { waitMs: 2000 });
    const e = await cliMain(['explain', '-c', gw.configPath, '--method', method, '--url', `https://${host}${target}`]);
    const decided = /decision: +\w+ \((\d+)\)/.exec(e.out)?.[1];
    t.equal(decided, String(statusOf(raw)), `${method} ${host}${target}: explain ${decided}, gateway ${statusOf(raw)}`);
    t.equal(e.code, statusOf(raw) === 200 ? 0 : 1, 'exit code follows the decision');
  }
  const bad = await cliMain(['explain', '-c', gw.configPath, '--url', 'not a url']);
  t.equal(bad.code, 1, 'an unparsable URL: exit 1');
  t.notMatch(bad.err, STACK);
});
