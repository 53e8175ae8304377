// The command line, run as users and the Docker image run it: `node dist/cli.js …` (built by `npm run build`).
import t from 'tap';
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { httpsRequest, startUpstream } from './helpers/gateway.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'cli.js');
const pkg = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string };

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

function tmp(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const config = (origin: string, routes = '[{ path: /, access: public }]') => `listen:
  https: 127.0.0.1:0
  http: null
  admin: 127.0.0.1:0
shutdown_grace: 5s
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes: ${routes}
`;

t.test('--version and --help', async (t) => {
  const v = await run(['--version']);
  t.equal(v.code, 0);
  t.equal(v.stdout.trim(), pkg.version);
  const h = await run(['--help']);
  t.equal(h.code, 0);
  t.match(h.stdout, /portcullis start/);
  t.match(h.stdout, /portcullis validate/);
  const bad = await run(['frobnicate']);
  t.equal(bad.code, 2);
});

t.test('validate: exit 0 for a good file, 1 with FILE:LINE:COL: path: message lines', async (t) => {
  const dir = tmp(t);
  const good = join(dir, 'good.yml');
  writeFileSync(good, config('http://127.0.0.1:9'));
  const ok = await run(['validate', '--config', good]);
  t.equal(ok.code, 0, ok.stderr);
  const bad = join(dir, 'bad.yml');
  writeFileSync(bad, `listen:\n  https: 127.0.0.1:0\nsites:\n  - hosts: [app.test]\n    upsteam: http://127.0.0.1:9\n    routes:\n      - { path: /x, access: maybe }\n`);
  const res = await run(['validate', '-c', bad]);
  t.equal(res.code, 1);
  const lines = res.stderr.trim().split('\n');
  t.ok(lines.length >= 2, 'every problem listed');
  for (const line of lines) t.match(line, new RegExp(`^${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:\\d+:\\d+: [\\w.]+: .+`), line);
  t.match(res.stderr, /:5:5: sites\.0\.upsteam: /, 'the typo is pointed at');
  t.match(res.stderr, /sites\.0\.routes\.0\.access: /);
});

t.test('a missing secret is a startup error that names it', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  writeFileSync(file, `${config('http://127.0.0.1:9')}admin:\n  metrics_token: \${PORTCULLIS_TEST_METRICS_TOKEN}\n`);
  const res = await run(['start', '-c', file]);
  t.equal(res.code, 1);
  t.match(res.stderr, /PORTCULLIS_TEST_METRICS_TOKEN/);
});

interface Proc {
  logs: Array<Record<string, unknown>>;
  waitFor(pred: (l: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>;
  kill(sig: NodeJS.Signals): void;
  exited: Promise<number | null>;
}

function startCli(t: { teardown(fn: () => void): void }, file: string, extra: string[] = []): Proc {
  const child = spawn(process.execPath, [CLI, 'start', '--config', file, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Array<Record<string, unknown>> = [];
  const waiters: Array<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    logs.push(rec);
    for (const w of [...waiters]) if (w.pred(rec)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(rec); }
  });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  return {
    logs,
    exited,
    kill: (sig) => child.kill(sig),
    waitFor(pred, ms = 15000) {
      const found = logs.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for a log line; stderr: ${stderr}; logs: ${JSON.stringify(logs.slice(-5))}`)), ms);
        waiters.push({ pred, resolve: (l) => { clearTimeout(timer); resolve(l); } });
      });
    },
  };
}

t.test('start, reload on SIGHUP (bad file refused, good file applied), drain on SIGTERM', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  let release: (() => void) | undefined;
  const up = await startUpstream(t, (req, res) => {
    if (req.url === '/slow') {
      release = () => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('slow done'); };
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`ok ${req.url}`);
  });
  writeFileSync(file, config(up.origin, '[{ path: /, access: public }, { path: /private, access: deny }]'));
  const proc = startCli(t, file);
  const started = await proc.waitFor((l) => l.msg === 'portcullis started');
  const port = (started.https as { port: number }).port;
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  t.ok(proc.logs.some((l) => /LOCAL DEVELOPMENT CA/.test(String(l.msg))), 'the development CA is announced loudly');

  t.equal((await httpsRequest(port, ca, { path: '/private' })).status, 403);

  // An invalid file is refused and the old configuration keeps serving.
  writeFileSync(file, 'sites: [ { hosts: [app.test], upstream: not-a-url } ]\n');
  proc.kill('SIGHUP');
  const rejected = await proc.waitFor((l) => l.event === 'config_rejected');
  t.match(JSON.stringify(rejected.problems), /upstream/);
  t.equal((await httpsRequest(port, ca, { path: '/private' })).status, 403, 'old rules still apply');

  // A request in flight during a reload completes.
  const inflight = httpsRequest(port, ca, { path: '/slow' });
  while (!release) await new Promise((r) => setTimeout(r, 20));
  writeFileSync(file, config(up.origin, '[{ path: /, access: public }]'));
  proc.kill('SIGHUP');
  await proc.waitFor((l) => l.event === 'config_reloaded');
  t.equal((await httpsRequest(port, ca, { path: '/private' })).status, 200, 'new rules apply');
  const releaseFirst = release as () => void;
  releaseFirst();
  const slow = await inflight;
  t.equal(slow.status, 200);
  t.equal(slow.body, 'slow done');

  // SIGTERM: a request in flight finishes, then the process exits 0.
  release = undefined;
  const draining = httpsRequest(port, ca, { path: '/slow' });
  while (!release) await new Promise((r) => setTimeout(r, 20));
  proc.kill('SIGTERM');
  await proc.waitFor((l) => l.msg === 'shutting down');
  setTimeout(() => release?.(), 300);
  const drained = await draining;
  t.equal(drained.status, 200, 'in-flight request completed during shutdown');
  t.equal(await proc.exited, 0, 'exit 0');
});

t.test('log.buffer: access lines arrive in batches within the flush interval, and the last ones at shutdown', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  const up = await startUpstream(t);
  writeFileSync(file, `log: { buffer: 64kb }\n${config(up.origin)}`);
  const proc = startCli(t, file);
  const started = await proc.waitFor((l) => l.msg === 'portcullis started', 15000);
  const port = (started.https as { port: number }).port;
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  for (const path of ['/a', '/b', '/c']) t.equal((await httpsRequest(port, ca, { path })).status, 200);
  // Far below 64 KB: only the periodic flush (250 ms) can bring them.
  const access = await proc.waitFor((l) => l.type === 'access' && l.path === '/c', 3000);
  t.equal(access.status, 200);
  t.same(proc.logs.filter((l) => l.type === 'access').map((l) => l.path), ['/a', '/b', '/c'], 'every line, in order');
  // The last request's line is still in the buffer when SIGTERM comes: pino writes what waits
  // when the process exits.
  t.equal((await httpsRequest(port, ca, { path: '/last' })).status, 200);
  proc.kill('SIGTERM');
  t.equal(await proc.exited, 0);
  await new Promise((r) => setTimeout(r, 100)); // the last stdout chunk may trail the exit event
  t.ok(proc.logs.some((l) => l.type === 'access' && l.path === '/last'), 'the buffered access line was flushed at shutdown');
  t.ok(proc.logs.some((l) => l.msg === 'shut down cleanly'), 'and the shutdown line after it');
});

t.test('--watch: a changed file is validated and applied without a signal', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  const up = await startUpstream(t);
  writeFileSync(file, config(up.origin, '[{ path: /, access: deny }]'));
  const proc = startCli(t, file, ['--watch']);
  const started = await proc.waitFor((l) => l.msg === 'portcullis started');
  const port = (started.https as { port: number }).port;
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  t.equal((await httpsRequest(port, ca, { path: '/x' })).status, 403);
  writeFileSync(file, 'sites: [ broken\n');
  await proc.waitFor((l) => l.event === 'config_rejected');
  t.equal((await httpsRequest(port, ca, { path: '/x' })).status, 403, 'a broken file changes nothing');
  writeFileSync(file, config(up.origin, '[{ path: /, access: public }]'));
  await proc.waitFor((l) => l.event === 'config_reloaded');
  t.equal((await httpsRequest(port, ca, { path: '/x' })).status, 200, 'the edited rules apply');
  proc.kill('SIGTERM');
  t.equal(await proc.exited, 0);
});

t.test('SIGHUP reloads certificate files: a replaced file is served, a removed one is not', async (t) => {
  const { ensureLocalCertificate } = await import('../src/tls/index.js');
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  const up = await startUpstream(t);
  // Two certificates from a CA of the test's own (a separate storage dir).
  const a = await ensureLocalCertificate(join(dir, 'ca-a'), ['app.test']);
  writeFileSync(join(dir, 'a.pem'), a.certPem);
  writeFileSync(join(dir, 'a.key'), a.keyPem);
  const b = await ensureLocalCertificate(join(dir, 'ca-b'), ['app.test']);
  writeFileSync(join(dir, 'b.pem'), b.certPem);
  writeFileSync(join(dir, 'b.key'), b.keyPem);
  const withCert = (name: string) => `${config(up.origin)}tls:\n  certificates: [{ cert: ${name}.pem, key: ${name}.key }]\n`;
  writeFileSync(file, withCert('a'));
  const proc = startCli(t, file);
  const started = await proc.waitFor((l) => l.msg === 'portcullis started');
  const port = (started.https as { port: number }).port;
  t.equal((await httpsRequest(port, a.rootPem, { path: '/' })).status, 200, 'certificate A served');
  writeFileSync(file, withCert('b'));
  proc.kill('SIGHUP');
  await proc.waitFor((l) => l.event === 'config_reloaded');
  t.equal((await httpsRequest(port, b.rootPem, { path: '/' })).status, 200, 'certificate B served after reload');
  await t.rejects(httpsRequest(port, a.rootPem, { path: '/' }), 'certificate A no longer served');
  proc.kill('SIGTERM');
  t.equal(await proc.exited, 0);
});
