// Attacks on the log files across rotation and reloads, against the built CLI (`node dist/cli.js
// start`), one process and `workers: 2`: lines lost, duplicated or cut around a rotation under
// load (with and without log.buffer), file descriptors leaked by many SIGHUPs, a reload that moves
// the main log and the security events back and forth between stdout and files while changing the
// level, odd paths (relative, a symlink, a deleted file), a stop right after a rotation, and a
// write failure after start (a file-size limit: EFBIG).
// Four defects when written, all fixed: a file that failed a write was never closed when rotated;
// a request refused while draining (Fastify's 503) had no access line; a worker still starting
// missed the reopen of a refused reload; security events in log.security_file had another format
// (numeric level, epoch time) than in the main log.
import t, { type Test } from 'tap';
import https from 'node:https';
import tls from 'node:tls';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startUpstream, until } from '../helpers/gateway.js';
import { childrenOf, holdWhenOpened, openFilesUnder } from '../helpers/processes.js';
import { parseLogText, readLogFile } from '../helpers/log-file.js';
import { APP_DIR, CLI_SKIP, spawnCli, type CliProcess } from '../ops-e2e/_support.js';
import { rotationConfig } from './_rotation-config.js';

if (CLI_SKIP) throw new Error(CLI_SKIP);

type Log = Record<string, unknown>;
type Tap = Test;

function tmp(t: Tap): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-rot-attack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function yaml(dir: string, upstream: string, log: string, workers = 1, extra = ''): string {
  return rotationConfig(dir, upstream, log, { workers, grace: '5s', extra });
}

const lines = (file: string): Log[] => readLogFile(file).lines;

async function lineIn(file: string, test: (l: Log) => boolean, ms = 15_000): Promise<Log> {
  let hit: Log | undefined;
  const ok = await until(() => (hit = lines(file).find(test)) !== undefined, ms);
  if (!ok) throw new Error(`no such line in ${file} after ${ms} ms:\n${existsSync(file) ? readFileSync(file, 'utf8').slice(-4000) : '(no file)'}`);
  return hit!;
}

const accessTo = (path: string) => (l: Log): boolean => l.type === 'access' && l.path === path;
const reloadedCount = (file: string): number => lines(file).filter((l) => l.msg === 'configuration reloaded').length;

interface Running {
  readonly cli: CliProcess;
  readonly port: number;
  readonly ca: string;
  get(path: string, headers?: Record<string, string>): Promise<number>;
}

/** `portcullis start`; `mainLog`: the file its first line goes to (null: stdout). */
async function start(t: Tap, dir: string, config: string, mainLog: string | null, workers = 1, bare = false): Promise<Running> {
  const cli = bare ? spawnBare(t, ['start', '--config', config]) : spawnCli(t, ['start', '--config', config], {}, { gracefulStop: true });
  const isStarted = (l: Log): boolean => l.msg === 'portcullis started' || (workers > 1 && l.msg === 'worker listening');
  let port: number;
  if (mainLog === null) {
    if (workers > 1) throw new Error('stdout start with workers: not used here');
    const started = await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
    port = (started.https as { port: number }).port;
  } else if (workers > 1) {
    await until(() => lines(mainLog).filter((l) => l.msg === 'worker listening').length === workers || cli.child.exitCode !== null, 30_000);
    const started = await lineIn(mainLog, (l) => l.msg === 'portcullis started', 30_000);
    port = (started.https as { port: number }).port;
  } else {
    const started = await lineIn(mainLog, isStarted, 30_000);
    port = (started.https as { port: number }).port;
  }
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  const agent = new https.Agent({ keepAlive: false });
  t.teardown(() => agent.destroy());
  return { cli, port, ca, get: (path, headers = {}) => request(port, ca, path, headers) };
}

/**
 * The CLI with nothing of the test runner in it: under tap, NODE_OPTIONS loads a coverage hook
 * whose signal-exit handlers take over SIGXFSZ, which Node itself ignores (a write past the file
 * size limit is then EFBIG, as in production). Only stderr and the exit are kept.
 */
function spawnBare(t: Tap, args: readonly string[]): CliProcess {
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, 'dist/cli.js', ...args], {
    cwd: APP_DIR,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NODE_ENV: 'production' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 8_000);
    await exited;
    clearTimeout(timer);
  });
  const none = (): never => {
    throw new Error('stdout is not kept by spawnBare');
  };
  return { child, stdout: () => '', stderr: () => err, logs: () => [], exited, waitForLog: none };
}

function request(port: number, ca: string, path: string, headers: Record<string, string> = {}, agent?: https.Agent): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, path, servername: 'app.test', ca, agent: agent ?? false, headers: { host: 'app.test', ...headers } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

interface Load {
  /** Paths whose response came back, and the status it had. */
  readonly answered: Map<string, number>;
  /** Paths whose request failed (no response). */
  readonly failed: Map<string, string>;
  sent(): number;
  stop(): Promise<void>;
}

/**
 * `concurrency` clients on keep-alive connections, each sending GET /<prefix>/<n> one after another
 * until stopped; every fourth one is GET /private/<prefix>/<n> with a bad token (401 and an
 * auth_failed event).
 */
function load(gw: Running, prefix: string, concurrency = 24): Load {
  const agent = new https.Agent({ keepAlive: true, maxSockets: concurrency, ca: gw.ca, servername: 'app.test' });
  const answered = new Map<string, number>();
  const failed = new Map<string, string>();
  let n = 0;
  let stopping = false;
  const loops = Array.from({ length: concurrency }, async () => {
    while (!stopping) {
      const i = n++;
      const denied = i % 4 === 3;
      const path = denied ? `/private/${prefix}/${i}` : `/${prefix}/${i}`;
      try {
        answered.set(path, await request(gw.port, gw.ca, path, denied ? { authorization: 'Bearer x.y.z' } : {}, agent));
      } catch (err) {
        failed.set(path, (err as Error).message);
        if (stopping) break;
      }
    }
  });
  return {
    answered,
    failed,
    sent: () => n,
    async stop() {
      stopping = true;
      await Promise.all(loops);
      agent.destroy();
    },
  };
}

/** Every complete line of every file named `<base>*` in `dir`, and the broken ones. */
function allOf(dir: string, base: string): { lines: Log[]; broken: string[]; files: string[] } {
  const files = readdirSync(dir).filter((f) => f.startsWith(base)).map((f) => join(dir, f));
  const out = { lines: [] as Log[], broken: [] as string[], files };
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    if (text !== '' && !text.endsWith('\n')) out.broken.push(`${f}: ends without a newline: ${text.slice(-200)}`);
    const p = parseLogText(text);
    out.lines.push(...p.lines);
    out.broken.push(...p.broken.map((b) => `${f}: ${b.slice(0, 300)}`));
  }
  return out;
}

/** How many access lines each /<prefix>/ path has across the files. */
function accessCounts(all: Log[], prefix: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const l of all) {
    if (l.type !== 'access' || typeof l.path !== 'string' || !(l.path.startsWith(`/${prefix}/`) || l.path.startsWith(`/private/${prefix}/`))) continue;
    counts.set(l.path, (counts.get(l.path) ?? 0) + 1);
  }
  return counts;
}

function checkExactlyOnce(t: Tap, counts: Map<string, number>, answered: Map<string, number>, what: string): void {
  const missing = [...answered.keys()].filter((p) => !counts.has(p));
  const twice = [...counts].filter(([, c]) => c > 1).map(([p]) => p);
  t.same(missing.slice(0, 20), [], `${what}: every answered request has its access line (${missing.length} missing of ${answered.size})`);
  t.same(twice.slice(0, 20), [], `${what}: no access line twice (${twice.length} duplicated)`);
}

/** Each 401 of the load has exactly one auth_failed event (by request id) across the security files. */
function checkEventsOnce(t: Tap, access: Log[], events: Log[], prefix: string): void {
  const ids = access.filter((l) => l.type === 'access' && l.status === 401 && String(l.path).startsWith(`/private/${prefix}/`)).map((l) => l.request_id);
  const seen = new Map<unknown, number>();
  for (const e of events) if (e.event === 'auth_failed') seen.set(e.request_id, (seen.get(e.request_id) ?? 0) + 1);
  const missing = ids.filter((id) => !seen.has(id));
  const twice = ids.filter((id) => (seen.get(id) ?? 0) > 1);
  t.ok(ids.length > 20, `${ids.length} refused requests`);
  t.same(missing.slice(0, 10), [], `every auth_failed event is in a security file (${missing.length} missing)`);
  t.same(twice.slice(0, 10), [], 'none twice');
}

const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;

// ---------------------------------------------------------------------------------------------

/**
 * `times` rotations under the load `l`: after `step` more answers each, app.log is moved away and
 * SIGHUP sent, without waiting for the reload; then until the reloads are over and `step` more.
 */
async function rotateUnderLoad(gw: Running, app: string, l: Load, times: number, step: number, settleMs: number): Promise<void> {
  for (let k = 1; k <= times; k++) {
    const before = l.answered.size;
    await until(() => l.answered.size >= before + step, 20_000);
    await until(() => existsSync(app), 10_000);
    renameSync(app, `${app}.${k}`);
    gw.cli.child.kill('SIGHUP');
  }
  // The reloads are over (each says so in the file it reopened).
  await until(() => existsSync(app) && reloadedCount(app) >= 1, settleMs);
  const beforeStop = l.answered.size;
  await until(() => l.answered.size >= beforeStop + step, 20_000);
  await l.stop();
}

/**
 * Over every app.log* and sec.log* under `logs`: no line cut, each answered request of `tag` with
 * exactly one access line, each auth failure with one event. Returns the main log's lines.
 */
async function checkEveryLine(t: Tap, logs: string, l: Load, tag: string, what: string): Promise<Log[]> {
  // log.buffer: written at least every 250 ms; wait for the lines, not for a fixed time.
  await until(() => accessCounts(allOf(logs, 'app.log').lines, tag).size >= l.answered.size, 15_000);
  const all = allOf(logs, 'app.log');
  t.same(all.broken.slice(0, 5), [], `no line cut or interleaved in any file${what}`);
  checkExactlyOnce(t, accessCounts(all.lines, tag), l.answered, `${l.answered.size} requests over ${all.files.length} files`);
  await until(() => allOf(logs, 'sec.log').lines.filter((e) => e.event === 'auth_failed').length >= [...l.answered.keys()].filter((p) => p.startsWith('/private/')).length, 10_000);
  const secAll = allOf(logs, 'sec.log');
  t.same(secAll.broken.slice(0, 5), [], `no security line cut or interleaved${what}`);
  checkEventsOnce(t, all.lines, secAll.lines, tag);
  return all.lines;
}

for (const buffer of ['0b', '64kb'] as const) {
  t.test(`under load, files moved and SIGHUP five times in quick succession (log.buffer ${buffer}): every request has exactly one whole access line in exactly one file`, async (t) => {
    const dir = tmp(t);
    const logs = join(dir, 'logs');
    const up = await startUpstream(t);
    const app = join(logs, 'app.log');
    const sec = join(logs, 'sec.log');
    const config = join(dir, 'gw.yml');
    writeFileSync(config, yaml(dir, up.origin, `{ file: ${app}, security_file: ${sec}, buffer: ${buffer} }`));
    const gw = await start(t, dir, config, app);

    const l = load(gw, 'load');
    await rotateUnderLoad(gw, app, l, 5, 50, 15_000);
    t.same([...l.failed].slice(0, 5), [], 'no request failed during the rotations');
    t.ok([...l.answered].every(([p, s]) => s === (p.startsWith('/private/') ? 401 : 200)), 'every request answered 200 (401 with the bad token)');
    const lines = await checkEveryLine(t, logs, l, 'load', '');
    const reloaded = lines.filter((x) => x.msg === 'configuration reloaded').length;
    t.equal(reloaded, 5, 'five reloads, each said once');
    // Each rotated file is closed: nothing of this directory is held open but the two current files.
    await until(() => openFilesUnder(gw.cli.child.pid!, logs).length === 2, 10_000);
    t.same(openFilesUnder(gw.cli.child.pid!, logs), [app, sec], 'only the current files stay open');
  });
}

t.test('workers: 2, under load, files moved and SIGHUP three times with log.buffer 64kb: exactly one whole access line per request', async (t) => {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const sec = join(logs, 'sec.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app}, security_file: ${sec}, buffer: 64kb }`, 2));
  const gw = await start(t, dir, config, app, 2);

  const l = load(gw, 'cl', 32);
  await rotateUnderLoad(gw, app, l, 3, 100, 20_000);
  t.same([...l.failed].slice(0, 5), [], 'no request failed');
  const lines = await checkEveryLine(t, logs, l, 'cl', ' (three processes append to the same files)');
  t.equal(new Set(lines.filter((x) => x.type === 'access').map((x) => x.worker)).size, 2, 'both workers served');
});

t.test('SIGTERM right after a rotation (log.buffer 64kb, requests in flight): no access line of a served request lost, exit 0', async (t) => {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app}, buffer: 64kb }`));
  const gw = await start(t, dir, config, app);

  const l = load(gw, 'term', 16);
  await until(() => l.answered.size >= 300, 20_000);
  renameSync(app, `${app}.1`);
  gw.cli.child.kill('SIGHUP');
  await until(() => existsSync(app), 10_000);
  gw.cli.child.kill('SIGTERM');
  const exit = await gw.cli.exited;
  await l.stop();
  t.equal(exit.code, 0, `exit 0 (stderr: ${gw.cli.stderr().slice(0, 500)})`);

  const all = allOf(logs, 'app.log');
  t.same(all.broken.slice(0, 5), [], 'no line cut');
  // The 200s: requests refused with 503 while draining are another test's (below).
  const served = new Map([...l.answered].filter(([, s]) => s !== 503));
  checkExactlyOnce(t, accessCounts(all.lines, 'term'), served, `${served.size} requests served`);
  t.ok(all.lines.some((x) => x.msg === 'shut down cleanly'), 'the last line of the process is in a file');
});

t.test('workers: 2, SIGTERM right after a rotation (log.buffer 64kb): every served request has its access line, exit 0', async (t) => {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app}, buffer: 64kb }`, 2));
  const gw = await start(t, dir, config, app, 2);

  const l = load(gw, 'cterm', 16);
  await until(() => l.answered.size >= 300, 20_000);
  renameSync(app, `${app}.1`);
  gw.cli.child.kill('SIGHUP');
  await until(() => existsSync(app), 10_000);
  gw.cli.child.kill('SIGTERM');
  const exit = await gw.cli.exited;
  await l.stop();
  t.equal(exit.code, 0, `exit 0 (stderr: ${gw.cli.stderr().slice(0, 500)})`);
  const all = allOf(logs, 'app.log');
  t.same(all.broken.slice(0, 5), [], 'no line cut');
  const served = new Map([...l.answered].filter(([, s]) => s !== 503));
  checkExactlyOnce(t, accessCounts(all.lines, 'cterm'), served, `${served.size} requests served`);
});

// ---------------------------------------------------------------------------------------------

/** The main log's line for a reload, accepted or refused. */
const reloadSaid = (l: Log): boolean => l.msg === 'configuration reloaded' || String(l.msg).startsWith('configuration rejected');

/** Sends SIGHUP and waits until the process said it reloaded or refused (`said` counts both). */
async function hup(gw: Running, said: () => number): Promise<boolean> {
  const before = said();
  gw.cli.child.kill('SIGHUP');
  return until(() => said() > before, 20_000);
}

t.test('200 SIGHUPs (accepted and refused reloads alternating) leak no file descriptor; only the current log files stay open', async (t) => {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const sec = join(logs, 'sec.log');
  const config = join(dir, 'gw.yml');
  const good = yaml(dir, up.origin, `{ file: ${app}, security_file: ${sec}, buffer: 16kb }`);
  writeFileSync(config, good);
  const gw = await start(t, dir, config, app);
  const pid = gw.cli.child.pid!;
  for (let i = 0; i < 5; i++) t.equal(await gw.get(`/warm/${i}`), 200);
  const baseline = fdCount(pid);
  const said = (): number => lines(app).filter(reloadSaid).length;
  for (let i = 0; i < 200; i++) {
    writeFileSync(config, i % 2 === 0 ? good : 'log: [not, valid');
    if (!(await hup(gw, said))) {
      t.fail(`reload ${i} never said`);
      break;
    }
  }
  writeFileSync(config, good);
  t.equal(await gw.get('/after'), 200);
  await lineIn(app, accessTo('/after'));
  await until(() => openFilesUnder(pid, logs).length === 2 && fdCount(pid) <= baseline + 4, 10_000);
  t.same(openFilesUnder(pid, logs), [app, sec], 'only the current files are open');
  t.ok(fdCount(pid) <= baseline + 4, `descriptors: ${fdCount(pid)} now, ${baseline} before the SIGHUPs`);
});

t.test('workers: 2, 60 SIGHUPs (accepted and refused alternating): no process keeps a descriptor of a rotated or older log file', async (t) => {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const sec = join(logs, 'sec.log');
  const config = join(dir, 'gw.yml');
  const good = yaml(dir, up.origin, `{ file: ${app}, security_file: ${sec} }`, 2);
  writeFileSync(config, good);
  const gw = await start(t, dir, config, app, 2);
  const pids = [gw.cli.child.pid!, ...lines(app).filter((l) => l.msg === 'worker listening').map((l) => l.pid as number)];
  t.equal(pids.length, 3, 'the primary and two workers');
  const baseline = pids.map(fdCount);
  const said = (): number => lines(app).filter(reloadSaid).length;
  for (let i = 0; i < 60; i++) {
    writeFileSync(config, i % 2 === 0 ? good : 'log: [not, valid');
    if (!(await hup(gw, said))) {
      t.fail(`reload ${i} never said`);
      break;
    }
    // A rotation every tenth time: the moved file must be let go by every process.
    if (i % 10 === 5) renameSync(app, `${app}.${i}`);
  }
  writeFileSync(config, good);
  await hup(gw, said);
  const settled = (): boolean => pids.every((p, i) => openFilesUnder(p, logs).length === 2 && fdCount(p) <= baseline[i]! + 4);
  await until(settled, 15_000);
  for (const [i, p] of pids.entries()) {
    t.same(openFilesUnder(p, logs), [app, sec], `${i === 0 ? 'primary' : `worker ${i}`}: only the current files are open`);
    t.ok(fdCount(p) <= baseline[i]! + 4, `${i === 0 ? 'primary' : `worker ${i}`}: ${fdCount(p)} descriptors now, ${baseline[i]} before`);
  }
});

// ---------------------------------------------------------------------------------------------

t.test('reloads move the main log and the events between stdout and files while the level and buffer change: each line lands once, in the one right place', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const a = join(dir, 'a.log');
  const a2 = join(dir, 'two', 'a2.log');
  const s = join(dir, 'sec', 's.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${a}, level: info }`));
  const gw = await start(t, dir, config, a);
  const denied = { authorization: 'Bearer x.y.z' };
  const authFailed = (ls: Log[]): Log[] => ls.filter((l) => l.event === 'auth_failed');
  const stdout = (): Log[] => gw.cli.logs();
  const step = async (log: string, reloadedWhere: () => Log[]): Promise<void> => {
    const before = reloadedWhere().filter((l) => l.event === 'config_reloaded').length;
    writeFileSync(config, yaml(dir, up.origin, log));
    gw.cli.child.kill('SIGHUP');
    t.ok(await until(() => reloadedWhere().filter((l) => l.event === 'config_reloaded').length > before, 15_000), `reloaded: ${log}`);
  };

  // 1. file a, events in it.
  t.equal(await gw.get('/s1'), 200);
  t.equal(await gw.get('/private', denied), 401);
  await lineIn(a, accessTo('/s1'));
  await until(() => authFailed(lines(a)).length === 1);
  t.equal(authFailed(lines(a))[0]!.log, 'security');

  // 2. stdout at warn (access lines quieted), events to their own file.
  await step(`{ file: null, level: warn, security_file: ${s}, buffer: 64kb }`, () => lines(s));
  t.equal(await gw.get('/s2'), 200);
  t.equal(await gw.get('/private', denied), 401);
  await until(() => authFailed(lines(s)).length === 1);

  // 3. another file with a buffer, at info; events back to the main log.
  await step(`{ file: ${a2}, level: info, buffer: 64kb }`, () => lines(a2));
  t.equal(await gw.get('/s3'), 200);
  t.equal(await gw.get('/private', denied), 401);
  await lineIn(a2, accessTo('/s3'));
  await until(() => authFailed(lines(a2)).length === 1);

  // 4. stdout at error: events still there (only silent quiets them), access lines not.
  await step(`{ file: null, level: error }`, stdout);
  t.equal(await gw.get('/s4'), 200);
  t.equal(await gw.get('/private', denied), 401);
  await until(() => authFailed(stdout()).length === 1);

  // 5. back to the first file and the security file, at info.
  await step(`{ file: ${a}, level: info, security_file: ${s} }`, () => lines(s));
  t.equal(await gw.get('/s5'), 200);
  t.equal(await gw.get('/private', denied), 401);
  await lineIn(a, accessTo('/s5'));
  await until(() => authFailed(lines(s)).length === 2);

  // Everything is written by now (the buffered files were ended by the moves); a last request
  // through the current file makes sure nothing trails.
  t.equal(await gw.get('/last'), 200);
  await lineIn(a, accessTo('/last'));
  const where = (path: string): string[] =>
    ([['a', lines(a)], ['a2', lines(a2)], ['s', lines(s)], ['stdout', stdout()]] as const).flatMap(([name, ls]) => ls.filter(accessTo(path)).map(() => name));
  t.same(where('/s1'), ['a']);
  t.same(where('/s2'), [], 'level warn: no access line anywhere');
  t.same(where('/s3'), ['a2']);
  t.same(where('/s4'), [], 'level error: no access line anywhere');
  t.same(where('/s5'), ['a']);
  t.same(
    { a: authFailed(lines(a)).length, a2: authFailed(lines(a2)).length, s: authFailed(lines(s)).length, stdout: authFailed(stdout()).length },
    { a: 1, a2: 1, s: 2, stdout: 1 },
    'each auth_failed event exactly once, where the configuration of its moment said',
  );
  for (const l of [...authFailed(lines(a)), ...authFailed(lines(a2)), ...authFailed(stdout())]) t.equal(l.log, 'security', 'events in the main log are tagged log: security');
  t.notOk(stdout().some((l) => l.type === 'access'), 'no access line ever reached stdout (warn, then error)');
  t.same(lines(a).filter((l) => l.type === 'access' && l.path !== '/private').map((l) => l.path), ['/s1', '/s5', '/last'], 'a holds only its own access lines');
});

t.test('security events keep their format when log.security_file is set (it was level 40 instead of "warn", epoch time instead of ISO text)', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const a = join(dir, 'a.log');
  const s = join(dir, 's.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${a} }`));
  const gw = await start(t, dir, config, a);
  t.equal(await gw.get('/private', { authorization: 'Bearer x.y.z' }), 401);
  const inMain = await lineIn(a, (l) => l.event === 'auth_failed');

  writeFileSync(config, yaml(dir, up.origin, `{ file: ${a}, security_file: ${s} }`));
  gw.cli.child.kill('SIGHUP');
  await lineIn(s, (l) => l.event === 'config_reloaded');
  t.equal(await gw.get('/private', { authorization: 'Bearer x.y.z' }), 401);
  const inFile = await lineIn(s, (l) => l.event === 'auth_failed');
  t.equal(inMain.level, 'warn');
  t.equal(inFile.level, inMain.level, 'the same level field: a SIEM rule on level "warn" keeps matching after security_file is set');
  t.equal(typeof inFile.time, typeof inMain.time, 'the same time field');
});

// ---------------------------------------------------------------------------------------------

t.test('paths: relative log files are under the configuration file (start and reload), their directory created by the reload', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, '{ file: logs/app.log, security_file: logs/sec.log }'));
  // The CLI runs with its cwd in the repository: a relative path must not land there.
  const gw = await start(t, dir, config, join(dir, 'logs', 'app.log'));
  t.equal(await gw.get('/rel'), 200);
  await lineIn(join(dir, 'logs', 'app.log'), accessTo('/rel'));
  t.equal(statSync(join(dir, 'logs', 'sec.log')).mode & 0o777, 0o640, 'the security log is 0640');

  writeFileSync(config, yaml(dir, up.origin, '{ file: moved/deeper/app.log, security_file: moved/sec.log }'));
  gw.cli.child.kill('SIGHUP');
  await lineIn(join(dir, 'moved', 'deeper', 'app.log'), (l) => l.msg === 'configuration reloaded');
  await lineIn(join(dir, 'moved', 'sec.log'), (l) => l.event === 'config_reloaded');
  t.equal(statSync(join(dir, 'moved', 'sec.log')).mode & 0o777, 0o640, 'the security log a reload creates is 0640 too');
  t.equal(await gw.get('/rel2'), 200);
  await lineIn(join(dir, 'moved', 'deeper', 'app.log'), accessTo('/rel2'));
  t.notOk(lines(join(dir, 'logs', 'app.log')).some(accessTo('/rel2')));
  t.notOk(existsSync(join(process.cwd(), 'moved')) || existsSync(join(process.cwd(), 'logs', 'app.log')), 'nothing written relative to the working directory');
});

t.test('paths: a symlink at the log path is followed across rotation; a deleted (not moved) file is created anew on SIGHUP', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  mkdirSync(join(dir, 'real'));
  const target = join(dir, 'real', 'gateway.log');
  const link = join(dir, 'app.log');
  symlinkSync(target, link);
  const sec = join(dir, 'sec.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${link}, security_file: ${sec} }`));
  const gw = await start(t, dir, config, link);
  t.equal(await gw.get('/via-link'), 200);
  await lineIn(target, accessTo('/via-link'));

  // The file behind the link is rotated: the link dangles until the SIGHUP creates the target.
  renameSync(target, `${target}.1`);
  gw.cli.child.kill('SIGHUP');
  await lineIn(target, (l) => l.msg === 'configuration reloaded');
  t.ok(lstatSync(link).isSymbolicLink(), 'the link stays a link');
  t.equal(await gw.get('/via-link-2'), 200);
  await lineIn(target, accessTo('/via-link-2'));
  t.notOk(lines(`${target}.1`).some(accessTo('/via-link-2')));

  // Deleted, not moved (an operator's rm): the SIGHUP gives a new file, the lines are not lost in
  // an unlinked inode.
  unlinkSync(target);
  unlinkSync(sec);
  gw.cli.child.kill('SIGHUP');
  await lineIn(target, (l) => l.msg === 'configuration reloaded');
  await lineIn(sec, (l) => l.event === 'config_reloaded');
  t.equal(await gw.get('/after-rm'), 200);
  await lineIn(target, accessTo('/after-rm'));
  t.same(openFilesUnder(gw.cli.child.pid!, dir).filter((f) => f.endsWith('(deleted)')), [], 'no deleted file held open');
});

interface FullLog {
  readonly gw: Running;
  readonly app: string;
  readonly logs: string;
  readonly pid: number;
  said(): string[];
}

/**
 * A gateway whose log file cannot grow any more (the process's file size limit, RLIMIT_FSIZE, set
 * just above the file's size: every write past it is EFBIG, as on a full disk), after 40 requests.
 */
async function fullLog(t: Tap): Promise<FullLog> {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app} }`));
  const gw = await start(t, dir, config, app, 1, true);
  // env execs node: the same process.
  const pid = gw.cli.child.pid!;
  t.equal(await gw.get('/before'), 200);
  await lineIn(app, accessTo('/before'));
  // The soft limit only: it can be raised again (room made on the disk).
  execFileSync('prlimit', ['--pid', String(pid), `--fsize=${statSync(app).size + 2000}:`]);
  for (let i = 0; i < 40; i++) {
    const status = await gw.get(`/full/${i}`).catch(async (err: Error) => {
      await until(() => gw.cli.child.exitCode !== null || gw.cli.child.signalCode !== null, 3_000);
      return `${err.message}; exit ${gw.cli.child.exitCode ?? gw.cli.child.signalCode}; stderr: ${gw.cli.stderr().slice(0, 1500)}`;
    });
    if (status !== 200) {
      t.equal(status, 200, `request ${i} served while the log cannot be written`);
      break;
    }
  }
  const said = (): string[] => gw.cli.stderr().split('\n').filter((l) => l.includes('writing the log to') && l.includes(app));
  return { gw, app, logs, pid, said };
}

t.test('a write failure after start (file size limit: EFBIG) is said once on stderr, the gateway keeps serving, and a rotation gets the log going again', async (t) => {
  const { gw, app, said } = await fullLog(t);
  t.ok(await until(() => said().length > 0, 10_000), `the failure is said on stderr: ${gw.cli.stderr().slice(0, 400)}`);
  for (let i = 40; i < 50; i++) t.equal(await gw.get(`/full/${i}`), 200, 'still serving');
  t.equal(said().length, 1, 'said once, not once per line');
  t.equal(gw.cli.child.exitCode, null, 'still running');

  // logrotate makes room: the file moves away and SIGHUP opens a new, empty one.
  renameSync(app, `${app}.1`);
  gw.cli.child.kill('SIGHUP');
  await lineIn(app, (l) => l.msg === 'configuration reloaded');
  t.equal(await gw.get('/after-rotation'), 200);
  await lineIn(app, accessTo('/after-rotation'));
});

t.test('after a write failure, the rotated log file is closed at the next reopen: its descriptor (and the disk space logrotate frees) is given back (it was held forever)', async (t) => {
  const { gw, app, logs, pid, said } = await fullLog(t);
  t.ok(await until(() => said().length > 0, 10_000), 'the failure happened');
  renameSync(app, `${app}.1`);
  gw.cli.child.kill('SIGHUP');
  await lineIn(app, (l) => l.msg === 'configuration reloaded');
  // Room is back (logrotate compressed and deleted the old files): nothing stops the old file's
  // last writes or its close any more.
  execFileSync('prlimit', ['--pid', String(pid), '--fsize=unlimited:']);
  t.equal(await gw.get('/after-rotation'), 200);
  await lineIn(app, accessTo('/after-rotation'));
  unlinkSync(`${app}.1`);
  await until(() => openFilesUnder(pid, logs).length === 1, 10_000);
  t.same(openFilesUnder(pid, logs), [app], 'only the current file is open; the rotated one (deleted since) is closed, its space freed');
});

t.test('a request refused with 503 while the gateway drains (SIGTERM) gets its access line (Fastify\'s own 503 wrote none)', async (t) => {
  const dir = tmp(t);
  let release: () => void = () => undefined;
  const held = new Promise<void>((r) => (release = r));
  let slowSeen = false;
  const up = await startUpstream(t, (req, res) => {
    if (req.url === '/slow') {
      slowSeen = true;
      void held.then(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('slow'));
      return;
    }
    res.writeHead(200).end('ok');
  });
  const app = join(dir, 'app.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app} }`));
  const gw = await start(t, dir, config, app);

  // Two requests pipelined on one connection: the second waits for the first, held by the app.
  const sock = tls.connect({ host: '127.0.0.1', port: gw.port, servername: 'app.test', ca: gw.ca, ALPNProtocols: ['http/1.1'] });
  t.teardown(() => sock.destroy());
  let raw = '';
  sock.on('data', (d: Buffer) => (raw += d.toString('latin1')));
  const ended = new Promise<void>((r) => {
    sock.on('end', r);
    sock.on('close', r);
  });
  await new Promise<void>((r) => sock.once('secureConnect', () => r()));
  sock.write('GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\nGET /queued HTTP/1.1\r\nHost: app.test\r\n\r\n');
  t.ok(await until(() => slowSeen, 10_000), 'the app has the first request');
  gw.cli.child.kill('SIGTERM');
  await lineIn(app, (l) => l.msg === 'shutting down');
  release();
  await ended;
  const statuses = [...raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
  t.equal(statuses[0], 200, 'the request in flight finishes');
  const exit = await gw.cli.exited;
  t.equal(exit.code, 0);
  await lineIn(app, accessTo('/slow'));
  if (statuses.length > 1) {
    t.equal(statuses[1], 503, 'the queued request is refused: the gateway is closing');
    t.ok(lines(app).some(accessTo('/queued')), `the 503 has an access line like any response (the file has: ${lines(app).filter((l) => l.status === 503 || /closing/.test(String(l.msg))).map((l) => JSON.stringify(l)).join(' ')})`);
  } else {
    t.pass('the queued request was not answered (connection closed after the first response)');
  }
});

t.test('workers: 2, a worker still starting (log file open, not yet synced) when a refused reload reopens the logs: it reopens too once it listens, and never writes into the rotated file', async (t) => {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const config = join(dir, 'gw.yml');
  const good = yaml(dir, up.origin, `{ file: ${app} }`, 2);
  writeFileSync(config, good);
  const gw = await start(t, dir, config, app, 2);
  const primary = gw.cli.child.pid!;
  const workers = lines(app).filter((l) => l.msg === 'worker listening').map((l) => l.pid as number);
  t.equal(workers.length, 2);

  // The replacement is stopped (SIGSTOP) as soon as it holds the log file: between its hello and
  // its sync with the primary when the timing allows (when it does not, this checks a synced one).
  process.kill(workers[0]!, 'SIGKILL');
  let fresh: number | undefined;
  t.ok(await until(() => (fresh = childrenOf(primary).find((p) => !workers.includes(p))) !== undefined, 10_000), 'a replacement is forked');
  const cont = await holdWhenOpened(fresh!, app);
  t.teardown(() => cont?.());
  t.ok(cont, 'it opened the log file, and is held');
  const listenedBefore = lines(app).some((l) => l.msg === 'worker listening' && l.pid === fresh);
  t.comment(listenedBefore ? 'the replacement was already listening when held' : 'held before it listened');

  // logrotate now: the file moves, and the reload it signals is refused (a bad edit meanwhile).
  renameSync(app, `${app}.1`);
  writeFileSync(config, 'log: [not, valid');
  gw.cli.child.kill('SIGHUP');
  await lineIn(`${app}.1`, (l) => String(l.msg).startsWith('configuration rejected'));
  await until(() => existsSync(app), 10_000);
  cont?.();

  // Wait for the new worker to be listening, wherever it said so.
  t.ok(await until(() => [...lines(app), ...lines(`${app}.1`)].some((l) => l.msg === 'worker listening' && l.pid === fresh), 15_000), 'the replacement listens');
  const freshId = [...lines(app), ...lines(`${app}.1`)].find((l) => l.msg === 'worker listening' && l.pid === fresh)!.worker;
  // Requests until the replacement has served some (connections are spread over the workers).
  for (let i = 0; i < 60 && !lines(app).some((l) => l.type === 'access' && l.worker === freshId); i++) {
    t.equal(await gw.get(`/r/${i}`), 200);
    await until(() => [...lines(app), ...lines(`${app}.1`)].filter((l) => l.type === 'access' && String(l.path).startsWith('/r/')).length > i, 5_000);
  }
  t.same(lines(`${app}.1`).filter((l) => l.type === 'access' && l.worker === freshId).map((l) => l.path), [], 'no request of the replacement in the rotated file');
  t.same(openFilesUnder(fresh!, logs), [app], 'the replacement holds the current file only');
});

t.test('copytruncate under load, workers: 2: the truncated file goes on from its start (O_APPEND: no hole of NUL bytes, no line cut)', async (t) => {
  const dir = tmp(t);
  const logs = join(dir, 'logs');
  const up = await startUpstream(t);
  const app = join(logs, 'app.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app} }`, 2));
  const gw = await start(t, dir, config, app, 2);
  const l = load(gw, 'ct', 16);
  await until(() => l.answered.size >= 200, 20_000);
  // logrotate's copytruncate: copy, then truncate in place, no signal.
  writeFileSync(`${app}.1`, readFileSync(app));
  execFileSync('truncate', ['-s', '0', app]);
  const at = l.answered.size;
  await until(() => l.answered.size >= at + 200, 20_000);
  await l.stop();
  await until(() => accessCounts(lines(app), 'ct').size > 0 && !readFileSync(app).includes(0), 5_000);
  const text = readFileSync(app);
  t.equal(text.indexOf(0), -1, 'no NUL byte: writes went on at the new end of the file, not at the old offset');
  const p = parseLogText(text.toString('utf8'));
  t.same(p.broken.slice(0, 3), [], 'every line whole');
  t.ok(accessCounts(p.lines, 'ct').size >= 100, 'the lines after the truncation are there');
});
