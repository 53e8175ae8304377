// Adversarial round on configuration RELOAD (SIGHUP and `--watch`), against the built CLI
// (`node dist/cli.js start`), one process and `workers: 2`. The README promise under attack:
// "`start` reloads the configuration on SIGHUP (and on file changes with --watch): the new file is
// validated and swapped in atomically; an invalid file is refused (event config_rejected) and the
// old configuration keeps serving. Requests in flight finish under the rules they started with."
// plus the restart-only list ("a reload that changes one of them logs a warning naming it").
// Eight defects when written, all fixed: --watch missed a Kubernetes ConfigMap's symlink swap and
// reloaded for another file ending like the config's name; a FIFO at the path hung reloads and exit;
// a reload refused while preparing certificates had already removed the one being served; a
// public_https_port change was said to need a restart; a SIGHUP while starting killed the process
// (one process and workers); the primary kept its log level.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { httpRequest, httpsRequest, sleep, startUpstream, until as waitFor, type ClientResponse, type Upstream } from '../helpers/gateway.js';
import { CLI_SKIP, parseExposition, scrape, spawnCli, startIssuer, total, type CliProcess, type TestIssuer } from '../ops-e2e/_support.js';
import { ensureLocalCertificate } from '../../src/tls/index.js';

if (CLI_SKIP) throw new Error(CLI_SKIP);

type Log = Record<string, unknown>;

function tmp(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-reload-attacks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A site `app.test` on `upstream` with `routes` (a YAML flow list), the dev CA in `dir/certs`. */
function site(dir: string, upstream: string, routes: string, extra = '', listen = '{ https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }'): string {
  return `listen: ${listen}
shutdown_grace: 2s
tls: { storage: ${join(dir, 'certs')} }
${extra}sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes: ${routes}
`;
}

interface Running {
  readonly cli: CliProcess;
  readonly port: number;
  readonly admin: number;
  readonly ca: string;
  get(path: string, headers?: Record<string, string>): Promise<ClientResponse>;
  /** How many lines so far satisfy `test`. */
  count(test: (l: Log) => boolean): number;
  /** Waits for the `n`-th line (1-based) that satisfies `test`. */
  nth(test: (l: Log) => boolean, n: number, timeoutMs?: number): Promise<Log>;
}

const isReloaded = (l: Log): boolean => l.event === 'config_reloaded';
const isRejected = (l: Log): boolean => l.event === 'config_rejected';

async function start(t: Parameters<typeof tmp>[0], dir: string, file: string, args: string[] = [], env: Record<string, string> = {}, caPem?: string): Promise<Running> {
  const cli = spawnCli(t, ['start', '--config', file, ...args], env);
  const started = await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
  const port = (started.https as { port: number }).port;
  const admin = (started.admin as { port: number } | null)?.port ?? 0;
  const ca = caPem ?? readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  const count = (test: (l: Log) => boolean): number => cli.logs().filter(test).length;
  return {
    cli,
    port,
    admin,
    ca,
    get: (path, headers = {}) => httpsRequest(port, ca, { path, headers }),
    count,
    nth: (test, n, timeoutMs = 10_000) => cli.waitForLog(() => count(test) >= n, timeoutMs).then(() => cli.logs().filter(test)[n - 1]!),
  };
}

/** SIGTERM; the exit code, or a sentence when the process is still there after `ms` (the teardown SIGKILLs it). */
async function stop(run: Running, ms = 8_000): Promise<unknown> {
  run.cli.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    run.cli.exited.then((e) => e.code ?? e.signal),
    new Promise<string>((r) => (timer = setTimeout(() => r(`still running ${ms} ms after SIGTERM`), ms))),
  ]);
  clearTimeout(timer);
  return code;
}

// ---------------------------------------------------------------------------------------------
// --watch and the ways files really change
// ---------------------------------------------------------------------------------------------

t.test('--watch on a Kubernetes ConfigMap mount (gw.yml -> ..data/gw.yml, ..data swapped atomically) reloads the new file', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const mount = join(dir, 'config');
  mkdirSync(join(mount, '..2024_01_v1'), { recursive: true });
  writeFileSync(join(mount, '..2024_01_v1', 'gw.yml'), site(dir, up.origin, '[{ path: /private, access: deny }, { path: /, access: public }]'));
  // Exactly the layout the kubelet (AtomicWriter) makes: the file is a symlink through `..data`.
  symlinkSync('..2024_01_v1', join(mount, '..data'));
  symlinkSync(join('..data', 'gw.yml'), join(mount, 'gw.yml'));
  const file = join(mount, 'gw.yml');
  const gw = await start(t, dir, file, ['--watch']);
  t.equal((await gw.get('/private')).status, 403);

  // An update: a new timestamped directory, a `..data_tmp` symlink to it renamed over `..data`.
  mkdirSync(join(mount, '..2024_01_v2'));
  writeFileSync(join(mount, '..2024_01_v2', 'gw.yml'), site(dir, up.origin, '[{ path: /, access: public }]'));
  symlinkSync('..2024_01_v2', join(mount, '..data_tmp'));
  renameSync(join(mount, '..data_tmp'), join(mount, '..data'));
  rmSync(join(mount, '..2024_01_v1'), { recursive: true });
  t.equal(readFileSync(file, 'utf8').includes('/private'), false, 'the path now reads the new content');

  const seen = await gw.nth(isReloaded, 1, 4_000).then(
    () => true,
    () => false,
  );
  t.ok(seen, 'config_reloaded within 4 s of the ConfigMap update');
  t.equal((await gw.get('/private')).status, 200, 'the updated rules serve');
  // Control: the file itself is fine, only the watcher missed it. A SIGHUP reads it.
  const before = gw.count(isReloaded);
  gw.cli.child.kill('SIGHUP');
  await gw.nth(isReloaded, before + 1);
  t.equal((await gw.get('/private')).status, 200, 'control: SIGHUP applies the same file');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

t.test('--watch: a temp file renamed over the config, then a truncate-then-write in two steps: the partial file is refused, the complete one wins', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'gw.yml');
  const deny = site(dir, up.origin, '[{ path: /private, access: deny }, { path: /, access: public }]');
  const open = site(dir, up.origin, '[{ path: /, access: public }]');
  writeFileSync(file, deny);
  const gw = await start(t, dir, file, ['--watch']);
  t.equal((await gw.get('/private')).status, 403);

  // An editor's "safe write": a temp file in the same directory, renamed over the original.
  writeFileSync(join(dir, '.gw.yml.swp'), open);
  renameSync(join(dir, '.gw.yml.swp'), file);
  await gw.nth(isReloaded, 1);
  t.equal((await gw.get('/private')).status, 200, 'the renamed file applies');

  // Truncate, then (well after the debounce) the new text: the empty file is refused, not applied.
  writeFileSync(file, '');
  const rejected = await gw.nth(isRejected, 1);
  t.match(JSON.stringify(rejected.problems), /the configuration is empty/);
  t.equal((await gw.get('/private')).status, 200, 'while the file is empty, the previous rules serve');
  writeFileSync(file, deny.slice(0, 40));
  await sleep(400);
  writeFileSync(file, deny);
  await gw.nth(isReloaded, 2);
  t.equal(gw.count(isRejected), 2, 'the empty and the half-written file were both refused');
  t.equal((await gw.get('/private')).status, 403, 'the complete file is the one that serves');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

t.test('--watch reloads on changes of the configuration file only, not of another file whose name ends like it', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'prod-gw.yml');
  writeFileSync(file, site(dir, up.origin, '[{ path: /, access: public }]'));
  const gw = await start(t, dir, file, ['--watch']);
  // Another gateway's file (or a backup) in the same directory: `gw.yml`, a suffix of `prod-gw.yml`.
  writeFileSync(join(dir, 'gw.yml'), 'sites: []\n');
  writeFileSync(join(dir, 'unrelated.yml'), 'x: 1\n');
  await sleep(1_000);
  t.same(gw.cli.logs().filter((l) => l.event === 'config_reloaded' || l.event === 'config_rejected').map((l) => l.event), [], 'no reload: the configuration file did not change');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

t.test('SIGHUP when the configuration path has become a FIFO is refused at once, and later reloads still happen', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'gw.yml');
  const conf = (access: string): string => site(dir, up.origin, `[{ path: /, access: ${access} }]`);
  writeFileSync(file, conf('public'));
  const gw = await start(t, dir, file);
  unlinkSync(file);
  execFileSync('mkfifo', [file]);
  gw.cli.child.kill('SIGHUP');
  const refused = await gw.nth(isRejected, 1, 2_000).then(
    (l) => JSON.stringify(l.problems),
    () => 'no config_rejected within 2 s',
  );
  t.match(refused, /gw\.yml/, 'refused, naming the file');
  t.equal((await gw.get('/')).status, 200, 'the old configuration keeps serving');
  // The operator puts a real file back: the next SIGHUP must apply it.
  unlinkSync(file);
  writeFileSync(file, conf('deny'));
  gw.cli.child.kill('SIGHUP');
  const applied = await gw.nth(isReloaded, 1, 3_000).then(
    () => true,
    () => false,
  );
  t.ok(applied, 'the next reload is not stuck behind the FIFO');
  t.equal((await gw.get('/')).status, 403, 'the restored file applies');
  t.equal(await stop(gw, 4_000), 0, 'SIGTERM: exit 0 (not hung on the FIFO)');
});

// ---------------------------------------------------------------------------------------------
// A refused reload must leave the running gateway as it was
// ---------------------------------------------------------------------------------------------

t.test('a reload refused while preparing certificates (unusable tls.storage) keeps serving the certificate in use', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const own = await ensureLocalCertificate(join(dir, 'own-ca'), ['app.test']);
  writeFileSync(join(dir, 'app.pem'), own.certPem);
  writeFileSync(join(dir, 'app.key'), own.keyPem);
  writeFileSync(join(dir, 'not-a-dir'), 'x');
  const file = join(dir, 'gw.yml');
  const yaml = (tls: string): string => `listen: { https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }
shutdown_grace: 2s
tls: ${tls}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`;
  writeFileSync(file, yaml(`{ certificates: [{ cert: ${join(dir, 'app.pem')}, key: ${join(dir, 'app.key')} }] }`));
  const gw = await start(t, dir, file, [], {}, own.rootPem);
  t.equal((await gw.get('/')).status, 200, 'the certificate you brought is served');

  // The edit drops tls.certificates (a mistake) and points the development CA at a path that
  // cannot be a directory (read-only root file system, a typo): the reload must be refused...
  writeFileSync(file, yaml(`{ storage: ${join(dir, 'not-a-dir', 'certs')} }`));
  gw.cli.child.kill('SIGHUP');
  const rejected = await gw.nth(isRejected, 1);
  t.match(JSON.stringify(rejected.problems), /local CA/, 'refused, saying why');
  t.equal(gw.count(isReloaded), 0);
  // ... and "the old configuration keeps serving": with its certificate.
  const after = await gw.get('/').then(
    (r) => String(r.status),
    (err: Error) => err.message,
  );
  t.equal(after, '200', 'new TLS connections still get the certificate of the configuration in force');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

t.test('the development CA: a reload refused after its certificates were read leaves the leaf on disk as the running gateway uses it; an accepted one saves the new leaf', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'gw.yml');
  const yaml = (hosts: string, log = ''): string => `listen: { https: 127.0.0.1:0, http: null, admin: null }
shutdown_grace: 2s
tls: { storage: ${join(dir, 'certs')} }
${log}sites:
  - hosts: [${hosts}]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`;
  writeFileSync(file, yaml('app.test'));
  const gw = await start(t, dir, file);
  const leafPath = join(dir, 'certs', 'local', 'leaf.crt');
  const keyPath = join(dir, 'certs', 'local', 'leaf.key');
  const served = readFileSync(leafPath, 'utf8');
  const servedKey = readFileSync(keyPath, 'utf8');
  const sans = (pem: string): string | undefined => new X509Certificate(pem).subjectAltName;
  t.equal(sans(served), 'DNS:app.test');

  // A new host (a new leaf is issued while the reload is prepared) and a log file that cannot be
  // opened (checked after the certificates): refused.
  writeFileSync(file, yaml('app.test, new.test', 'log: { file: /proc/portcullis/app.log }\n'));
  gw.cli.child.kill('SIGHUP');
  const rejected = await gw.nth(isRejected, 1);
  t.match(JSON.stringify(rejected.problems), /log\.file/, 'refused for the log file');
  t.equal(readFileSync(leafPath, 'utf8'), served, 'leaf.crt is still the one served');
  t.equal(readFileSync(keyPath, 'utf8'), servedKey, 'and leaf.key');
  t.same(readdirSync(join(dir, 'certs', 'local')).sort(), ['leaf.crt', 'leaf.key'], 'nothing else written');
  t.equal((await gw.get('/')).status, 200, 'still served with it');

  writeFileSync(file, yaml('app.test, new.test'));
  gw.cli.child.kill('SIGHUP');
  await gw.nth(isReloaded, 1);
  t.ok(await waitFor(() => sans(readFileSync(leafPath, 'utf8')) === 'DNS:app.test, DNS:new.test', 10_000), 'the accepted reload saved its leaf');
  t.not(readFileSync(keyPath, 'utf8'), servedKey, 'with its key');
  const saved = readFileSync(leafPath, 'utf8');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
  // The next start finds the saved leaf: nothing issued again.
  const again = await start(t, dir, file);
  t.equal(readFileSync(leafPath, 'utf8'), saved, 'the restart serves the saved leaf');
  t.equal(await stop(again), 0);
});

t.test('a reload that changes only listen.public_https_port applies it at once, so it must not warn that it needs a restart', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'gw.yml');
  const yaml = (publicPort: number): string =>
    site(dir, up.origin, '[{ path: /, access: public }]', '', `{ https: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0, public_https_port: ${publicPort} }`);
  writeFileSync(file, yaml(8443));
  const gw = await start(t, dir, file);
  const httpPort = ((gw.cli.logs().find((l) => l.msg === 'portcullis started')!.http) as { port: number }).port;
  t.equal((await httpRequest(httpPort, { path: '/x' })).headers.location, 'https://app.test:8443/x');
  writeFileSync(file, yaml(9443));
  gw.cli.child.kill('SIGHUP');
  await gw.nth(isReloaded, 1);
  t.equal((await httpRequest(httpPort, { path: '/x' })).headers.location, 'https://app.test:9443/x', 'the new port is in redirects at once');
  const warned = gw.cli.logs().filter((l) => l.level === 'warn' && /takes effect on the next restart/.test(String(l.msg)));
  t.same(warned.map((l) => l.msg), [], 'no warning that a restart is needed for a change that already applied');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

// ---------------------------------------------------------------------------------------------
// SIGHUP while starting
// ---------------------------------------------------------------------------------------------

for (const workers of [1, 2]) {
  t.test(`workers: ${workers} — a SIGHUP that arrives while the gateway is starting (after it logged its first line) does not kill it`, async (t) => {
    const dir = tmp(t);
    const up = await startUpstream(t);
    const file = join(dir, 'gw.yml');
    writeFileSync(file, site(dir, up.origin, '[{ path: /, access: public }]', `workers: ${workers}\n`));
    const cli = spawnCli(t, ['start', '--config', file], {});
    // The process is running our code (it wrote a line: the development-CA warning), not yet serving.
    await cli.waitForLog(() => true, 30_000);
    const startedYet = cli.logs().some((l) => l.msg === 'portcullis started');
    cli.child.kill('SIGHUP');
    const outcome = await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000).then(
      () => 'started',
      async () => {
        const e = await cli.exited;
        return `exited (${e.code ?? e.signal})`;
      },
    );
    t.comment(`SIGHUP sent ${startedYet ? 'after' : 'before'} 'portcullis started'`);
    t.equal(outcome, 'started', 'the gateway survives a reload signal during start-up and starts');
    if (outcome === 'started') {
      await sleep(300);
      t.equal(cli.child.exitCode, null, 'still running');
      cli.child.kill('SIGTERM');
      t.equal((await cli.exited).code, 0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Bursts: serialized, the last file wins, nothing refused, nothing kept per reload
// ---------------------------------------------------------------------------------------------

function tagged(t: Parameters<typeof tmp>[0], tag: string): Promise<Upstream> {
  return startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'x-up': tag });
    res.end(tag);
  });
}

const fds = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
const rssKb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);

t.test('a burst of SIGHUPs and rewrites under load: no request refused or dropped, the last file wins; 200 reloads keep no file descriptor and little memory', async (t) => {
  const dir = tmp(t);
  const a = await tagged(t, 'a');
  const b = await tagged(t, 'b');
  const file = join(dir, 'gw.yml');
  const conf = (up: Upstream, marker: string): string => site(dir, up.origin, `[{ path: /${marker}, access: deny }, { path: /, access: public }]`);
  writeFileSync(file, conf(a, 'm0'));
  const gw = await start(t, dir, file);
  const pid = gw.cli.child.pid!;

  let loading = true;
  const results: string[] = [];
  const loops = Array.from({ length: 4 }, async () => {
    while (loading) {
      results.push(await gw.get('/x').then((r) => `${r.status}:${String(r.headers['x-up'])}`, (err: Error) => `error:${err.message}`));
    }
  });
  // Each version written whole (temp file, rename): a reload reading while we write must never
  // see half a file here — that case is the --watch test's.
  const put = (text: string): void => {
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  };
  for (let i = 1; i <= 40; i++) {
    put(conf(i % 2 === 0 ? a : b, `m${i}`));
    gw.cli.child.kill('SIGHUP');
    await sleep(i % 5 === 0 ? 60 : 5);
  }
  // The last content: upstream b, /m41 denied.
  put(conf(b, 'm41'));
  gw.cli.child.kill('SIGHUP');
  const deadline = Date.now() + 15_000;
  while ((await gw.get('/m41')).status !== 403 && Date.now() < deadline) await sleep(50);
  loading = false;
  await Promise.all(loops);
  t.equal((await gw.get('/m41')).status, 403, 'the last file written is the one in force');
  t.equal((await gw.get('/x')).headers['x-up'], 'b', 'with its upstream');
  // Reloads run one after another: those the burst queued may still run after the last file is in
  // force (each reads it again), slowly on a loaded machine. Once they are done, none may follow.
  let settled = -1;
  for (let n = gw.count(isReloaded), until = Date.now() + 30_000; n !== settled && Date.now() < until; n = gw.count(isReloaded)) {
    settled = n;
    await sleep(1000);
  }
  t.ok(settled <= 41, `at most one reload per SIGHUP (${settled} for 41; signals that arrive together are one)`);
  await sleep(500);
  t.equal(gw.count(isReloaded), settled, 'no reload left running behind');
  t.equal((await gw.get('/m41')).status, 403, 'and it stays in force');
  t.same([...new Set(results.map((r) => r.split(':')[0]))], ['200'], `every request during the burst was answered 200 (${results.length} requests)`);
  t.same(gw.cli.logs().filter(isRejected).map((l) => l.problems), [], 'no reload was refused');
  // Each request is a new TLS connection: how many fit in the burst depends on the machine's load
  // (fewer than 40 seen with another process busy on one core).
  t.ok(results.length > 10, `the load ran during the burst (${results.length} requests)`);

  // 200 reloads one after the other, each waited for: what does each leave behind?
  const reloadOnce = async (): Promise<void> => {
    const n = gw.count(isReloaded);
    gw.cli.child.kill('SIGHUP');
    await gw.nth(isReloaded, n + 1);
  };
  for (let i = 0; i < 20; i++) await reloadOnce();
  t.equal((await gw.get('/x')).status, 200);
  const fd0 = fds(pid);
  const rss0 = rssKb(pid);
  for (let i = 0; i < 200; i++) await reloadOnce();
  t.equal((await gw.get('/x')).status, 200);
  await sleep(200);
  const fd1 = fds(pid);
  const rss1 = rssKb(pid);
  t.comment(`after 200 more reloads: fds ${fd0} -> ${fd1}, rss ${rss0} -> ${rss1} kB`);
  t.ok(fd1 <= fd0 + 2, `file descriptors do not grow per reload (${fd0} -> ${fd1})`);
  t.ok(rss1 - rss0 < 40_000, `memory grows by less than 40 MB over 200 reloads (${rss0} -> ${rss1} kB)`);
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

// ---------------------------------------------------------------------------------------------
// Secrets, issuers and requests in flight
// ---------------------------------------------------------------------------------------------

t.test('a reload whose ${NAME_FILE} secret file is gone, or whose ${NAME} is unset, is refused naming the variable (never the value); the old secret keeps working', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const secret = join(dir, 'metrics-token');
  writeFileSync(secret, 'old-token-5f2a9c\n');
  const file = join(dir, 'gw.yml');
  const conf = (ref: string): string => site(dir, up.origin, '[{ path: /, access: public }]', `admin: { metrics_token: "\${${ref}}" }\n`);
  writeFileSync(file, conf('PCX_METRICS'));
  const gw = await start(t, dir, file, [], { PCX_METRICS_FILE: secret });
  t.equal((await scrape(gw.admin, 'old-token-5f2a9c')).status, 200);

  unlinkSync(secret);
  gw.cli.child.kill('SIGHUP');
  const gone = await gw.nth(isRejected, 1);
  t.match(JSON.stringify(gone.problems), /admin\.metrics_token: cannot read PCX_METRICS_FILE \(.*\): ENOENT/, 'names the variable and why');
  t.equal(gone.file, file);

  writeFileSync(secret, 'new-token-77e1d0\n');
  writeFileSync(file, conf('PCX_UNSET_SECRET'));
  gw.cli.child.kill('SIGHUP');
  const unset = await gw.nth(isRejected, 2);
  t.match(JSON.stringify(unset.problems), /environment variable PCX_UNSET_SECRET is not set \(nor PCX_UNSET_SECRET_FILE\)/);

  t.equal((await scrape(gw.admin, 'old-token-5f2a9c')).status, 200, 'the secret in force still opens /metrics');
  t.equal((await scrape(gw.admin, 'new-token-77e1d0')).status, 401, 'nothing of the refused files applied');
  t.equal((await scrape(gw.admin)).status, 401, 'and /metrics did not become open');
  t.notMatch(gw.cli.stdout(), /old-token-5f2a9c|new-token-77e1d0/, 'no secret value in the log');
  const m = parseExposition((await scrape(gw.admin, 'old-token-5f2a9c')).body);
  t.equal(total(m, 'portcullis_config_reloads_total', { result: 'failure' }), 2);
  t.equal(total(m, 'portcullis_config_reloads_total', { result: 'success' }), 0);
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

function issuersYaml(...issuers: TestIssuer[]): string {
  return `auth:
  issuers:
${issuers.map((iss) => `    - issuer: ${iss.issuer}
      audiences: ["${iss.audience}"]
      algorithms: [ES256]
      jwks_uri: ${iss.jwksUri}
`).join('')}`;
}

t.test('a reload that replaces the issuer: a cached token of the removed issuer is refused on the next request, the new issuer\'s accepted', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const issA = await startIssuer(t);
  const issB = await startIssuer(t);
  const file = join(dir, 'gw.yml');
  const conf = (iss: TestIssuer): string => site(dir, up.origin, '[{ path: /api, access: authenticated }, { path: /, access: public }]', issuersYaml(iss));
  writeFileSync(file, conf(issA));
  const gw = await start(t, dir, file);
  const tokenA = await issA.token('alice');
  const tokenB = await issB.token('bob');
  const api = async (token: string): Promise<number> => (await gw.get('/api', { authorization: `Bearer ${token}`, accept: 'application/json' })).status;
  t.same([await api(tokenA), await api(tokenA)], [200, 200], 'A\'s token is verified and cached');
  t.equal(await api(tokenB), 401);

  writeFileSync(file, conf(issB));
  gw.cli.child.kill('SIGHUP');
  await gw.nth(isReloaded, 1);
  t.equal(await api(tokenA), 401, 'the removed issuer\'s token stops at once, cache or not');
  t.equal(await api(tokenB), 200, 'the new issuer\'s token works');
  const seenA = up.seen.filter((r) => r.headers.authorization === `Bearer ${tokenA}`).length;
  t.equal(seenA, 2, 'the upstream saw A\'s token only before the reload');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

t.test('a request in flight when a reload denies its route finishes whole under the old rules; the next one is refused', async (t) => {
  const dir = tmp(t);
  let release: () => void = () => undefined;
  const held = new Promise<void>((r) => (release = r));
  const up = await startUpstream(t, (req, res) => {
    if (req.url !== '/slow') {
      res.writeHead(200).end('fast');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first half,');
    void held.then(() => res.end('second half'));
  });
  const file = join(dir, 'gw.yml');
  const conf = (access: string): string => site(dir, up.origin, `[{ path: /, access: ${access} }]`);
  writeFileSync(file, conf('public'));
  const gw = await start(t, dir, file);
  const inFlight = gw.get('/slow');
  const deadline = Date.now() + 5_000;
  while (!up.seen.some((r) => r.url === '/slow') && Date.now() < deadline) await sleep(20);
  writeFileSync(file, conf('deny'));
  gw.cli.child.kill('SIGHUP');
  await gw.nth(isReloaded, 1);
  t.equal((await gw.get('/next')).status, 403, 'a new request gets the new rule');
  release();
  const r = await inFlight;
  t.equal(r.status, 200);
  t.equal(r.body, 'first half,second half', 'the in-flight response arrived whole');
  const line = await gw.cli.waitForLog((l) => l.type === 'access' && l.path === '/slow');
  t.equal(line.status, 200, 'logged as the 200 it was');
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

// ---------------------------------------------------------------------------------------------
// workers: 2
// ---------------------------------------------------------------------------------------------

/** `n` requests, one TLS connection each (the cluster hands each connection to the next worker). */
async function fresh(gw: Running, path: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await gw.get(path)).status);
  return out;
}

const accessWorkers = (gw: Running, since: number, path: string): unknown[] =>
  [...new Set(gw.cli.logs().slice(since).filter((l) => l.type === 'access' && l.path === path).map((l) => l.worker))].sort();

t.test('workers: 2 with --watch: a renamed-in file switches both workers (a restart-only change is named); a file with an unset ${NAME} is refused by all, counted once', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'gw.yml');
  const conf = (privateAccess: string, extra = ''): string =>
    site(dir, up.origin, `[{ path: /private, access: ${privateAccess} }, { path: /, access: public }]`, `workers: 2\n${extra}`);
  const put = (text: string): void => {
    writeFileSync(join(dir, 'gw.yml.new'), text);
    renameSync(join(dir, 'gw.yml.new'), file);
  };
  writeFileSync(file, conf('deny'));
  const gw = await start(t, dir, file, ['--watch']);
  await gw.cli.waitForLog(() => gw.count((l) => l.msg === 'worker listening') === 2);
  let mark = gw.cli.logs().length;
  t.same(await fresh(gw, '/private', 4), [403, 403, 403, 403]);
  t.same(accessWorkers(gw, mark, '/private'), [1, 2], 'both workers served');

  put(conf('public', 'limits: { headers_timeout: 20s }\n'));
  await gw.nth(isReloaded, 1);
  mark = gw.cli.logs().length;
  t.same(await fresh(gw, '/private', 6), [200, 200, 200, 200, 200, 200], 'no worker kept the old rule');
  t.same(accessWorkers(gw, mark, '/private'), [1, 2]);
  t.ok(gw.cli.logs().some((l) => l.level === 'warn' && /^limits\.max_header_size, limits\.headers_timeout or limits\.request_timeout changed: the change takes effect on the next restart/.test(String(l.msg))), 'the restart-only change is named');

  put(conf('deny', 'admin: { metrics_token: "${PCX_NOT_SET_ANYWHERE}" }\nlimits: { headers_timeout: 20s }\n'));
  const rejected = await gw.nth(isRejected, 1);
  t.match(JSON.stringify(rejected.problems), /PCX_NOT_SET_ANYWHERE is not set/);
  await sleep(300);
  mark = gw.cli.logs().length;
  t.same(await fresh(gw, '/private', 6), [200, 200, 200, 200, 200, 200], 'no worker took the refused file (no split brain)');
  t.same(accessWorkers(gw, mark, '/private'), [1, 2]);
  t.equal(gw.count(isRejected), 1, 'one config_rejected, not one per process');
  t.equal(gw.count(isReloaded), 1);
  t.notOk(gw.cli.logs().some((l) => l.msg === 'worker could not apply the configuration: replacing it'), 'no worker was replaced');
  const m = parseExposition((await scrape(gw.admin)).body);
  t.equal(total(m, 'portcullis_config_reloads_total', { result: 'success' }), 1);
  t.equal(total(m, 'portcullis_config_reloads_total', { result: 'failure' }), 1);
  t.equal(total(m, 'portcullis_worker_restarts_total'), 0);
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});

t.test('workers: 2 — a reload to log.level: warn applies to the primary too (no more info lines from any process)', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'gw.yml');
  const conf = (level: string): string => site(dir, up.origin, '[{ path: /, access: public }]', `workers: 2\nlog: { level: ${level} }\n`);
  writeFileSync(file, conf('info'));
  const gw = await start(t, dir, file);
  await gw.cli.waitForLog(() => gw.count((l) => l.msg === 'worker listening') === 2);
  const reloads = async (): Promise<number> => total(parseExposition((await scrape(gw.admin)).body), 'portcullis_config_reloads_total', { result: 'success' });

  const mark = gw.cli.logs().length;
  writeFileSync(file, conf('warn'));
  gw.cli.child.kill('SIGHUP');
  for (let i = 0; i < 100 && (await reloads()) < 1; i++) await sleep(50);
  gw.cli.child.kill('SIGHUP');
  for (let i = 0; i < 100 && (await reloads()) < 2; i++) await sleep(50);
  t.equal(await reloads(), 2, 'both reloads done');
  t.same(await fresh(gw, '/after', 4), [200, 200, 200, 200]);
  await sleep(300);
  const info = gw.cli.logs().slice(mark).filter((l) => l.level === 'info' && l.security !== true);
  t.notOk(info.some((l) => l.type === 'access'), 'the workers apply the new level (no access lines)');
  t.same(
    info.map((l) => `${String(l.role ?? `worker ${String(l.worker)}`)}: ${String(l.msg)}`),
    [],
    'no process writes info lines under log.level: warn',
  );
  t.equal(await stop(gw), 0, 'SIGTERM: exit 0');
});
