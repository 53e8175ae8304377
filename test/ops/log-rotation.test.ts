// Log files across rotation and reloads, against the built CLI (`node dist/cli.js start`), one
// process and `workers: 2`. logrotate's `create` mode moves the file away and signals the process:
// every SIGHUP opens log.file and log.security_file anew (whether the new configuration is
// accepted or not), a reload may move them, and a path that cannot be written is refused (at
// start: exit 1 with one line naming the setting; on reload: config_rejected, the open files stay).
// Before this, the gateway wrote into the moved file forever, a reload's new path was ignored
// with a warning, and an unwritable log.file at start ran the gateway with no log at all (a FIFO
// hung it).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { httpsRequest, sleep, startUpstream, until, type ClientResponse } from '../helpers/gateway.js';
import { CLI_SKIP, spawnCli, type CliProcess } from '../ops-e2e/_support.js';
import { rotationConfig } from './_rotation-config.js';
import { logFileLines } from '../helpers/log-file.js';

if (CLI_SKIP) throw new Error(CLI_SKIP);

type Log = Record<string, unknown>;

function tmp(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-log-rotation-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function yaml(dir: string, upstream: string, log: string, workers = 1): string {
  return rotationConfig(dir, upstream, log, { workers });
}

/** The complete JSON lines of a log file (none when it does not exist). */
const lines = logFileLines;

async function lineIn(file: string, test: (l: Log) => boolean, ms = 15_000): Promise<Log> {
  let hit: Log | undefined;
  const ok = await until(() => (hit = lines(file).find(test)) !== undefined, ms);
  if (!ok) throw new Error(`no such line in ${file} after ${ms} ms:\n${existsSync(file) ? readFileSync(file, 'utf8') : '(no file)'}`);
  return hit!;
}

const accessTo = (path: string) => (l: Log) => l.type === 'access' && l.path === path;

interface Running {
  readonly cli: CliProcess;
  get(path: string, headers?: Record<string, string>): Promise<ClientResponse>;
}

async function start(t: Parameters<typeof tmp>[0], dir: string, config: string, mainLog: string): Promise<Running> {
  const cli = spawnCli(t, ['start', '--config', config], {}, { gracefulStop: true });
  const started = await lineIn(mainLog, (l) => l.msg === 'portcullis started', 30_000);
  const port = (started.https as { port: number }).port;
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  return { cli, get: (path, headers = {}) => httpsRequest(port, ca, { path, headers }) };
}

const reloadedIn = (file: string) => lineIn(file, (l) => l.msg === 'configuration reloaded');

t.test('logrotate create: after the files are moved and SIGHUP, new lines go to new files at the configured paths', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const app = join(dir, 'logs', 'app.log');
  const sec = join(dir, 'logs', 'security.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app}, security_file: ${sec} }`));
  const gw = await start(t, dir, config, app);

  t.equal((await gw.get('/before')).status, 200);
  t.equal((await gw.get('/private', { authorization: 'Bearer x.y.z' })).status, 401);
  await lineIn(app, accessTo('/before'));
  await lineIn(sec, (l) => l.event === 'auth_failed');

  renameSync(app, `${app}.1`);
  renameSync(sec, `${sec}.1`);
  gw.cli.child.kill('SIGHUP');
  await reloadedIn(app);
  await lineIn(sec, (l) => l.event === 'config_reloaded');
  t.equal((await gw.get('/after')).status, 200);
  t.equal((await gw.get('/private', { authorization: 'Bearer x.y.z' })).status, 401);
  await lineIn(app, accessTo('/after'));
  await lineIn(sec, (l) => l.event === 'auth_failed');

  const old = lines(`${app}.1`);
  t.ok(old.some(accessTo('/before')), 'the moved file keeps what was written before');
  t.notOk(old.some(accessTo('/after')), 'and gets nothing after the SIGHUP');
  t.notOk(lines(`${sec}.1`).some((l) => l.event === 'config_reloaded'), 'the moved security log gets nothing after it either');
  t.notOk(lines(app).some(accessTo('/before')), 'the new file starts empty');
  t.equal(statSync(sec).mode & 0o777, 0o640, 'the new security log is created 0640, as the first one');
});

t.test('a reload moves the logs: log.file to another path, log.security_file to none (events join the main log), log.buffer applied', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const first = join(dir, 'first.log');
  const second = join(dir, 'second', 'gateway.log');
  const sec = join(dir, 'security.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${first}, security_file: ${sec} }`));
  const gw = await start(t, dir, config, first);
  t.equal((await gw.get('/one')).status, 200);
  await lineIn(first, accessTo('/one'));

  writeFileSync(config, yaml(dir, up.origin, `{ file: ${second}, buffer: 64kb }`));
  gw.cli.child.kill('SIGHUP');
  const reloaded = await reloadedIn(second);
  t.ok(reloaded, 'the reload is said in the new file (its directory created)');
  t.notOk(lines(first).some((l) => /restart/.test(String(l.msg))), 'no "takes effect on the next restart" warning for the log settings');
  t.equal((await gw.get('/two')).status, 200);
  t.equal((await gw.get('/private', { authorization: 'Bearer x.y.z' })).status, 401);
  // log.buffer: 64kb writes at least every 250 ms.
  await lineIn(second, accessTo('/two'));
  const event = await lineIn(second, (l) => l.event === 'auth_failed');
  t.equal(event.log, 'security', 'without security_file, events are main-log lines tagged log: security');
  t.notOk(lines(first).some(accessTo('/two')), 'the old file gets nothing after the reload');
  t.notOk(lines(sec).some((l) => l.event === 'auth_failed'), 'nor the old security log');
});

t.test('a reload naming a log file that cannot be written is refused, naming it; the open files stay in use', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const app = join(dir, 'app.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app} }`));
  const gw = await start(t, dir, config, app);

  const fifo = join(dir, 'fifo.log');
  execFileSync('mkfifo', [fifo]);
  const blocker = join(dir, 'blocker');
  writeFileSync(blocker, 'a file where a directory should be');
  for (const [n, bad] of [
    [1, fifo],
    [2, join(blocker, 'app.log')],
    [3, dir],
  ] as const) {
    writeFileSync(config, yaml(dir, up.origin, `{ file: ${app}, security_file: ${bad} }`));
    gw.cli.child.kill('SIGHUP');
    await until(() => lines(app).filter((l) => l.event === 'config_rejected').length >= n, 15_000);
    const rejected = lines(app).filter((l) => l.event === 'config_rejected')[n - 1]!;
    t.match(String((rejected.problems as string[]).join(' ')), new RegExp(`log\\.security_file ${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} (cannot be opened for writing|is not a regular file)`), `refused: ${bad}`);
  }
  t.equal((await gw.get('/still')).status, 200, 'the gateway still serves (a FIFO did not block it)');
  await lineIn(app, accessTo('/still'));

  // A refused reload still reopens the current files: rotation works even while the file is bad.
  renameSync(app, `${app}.1`);
  gw.cli.child.kill('SIGHUP');
  // Said in the file in use when it happened; the files are reopened right after.
  await until(() => lines(`${app}.1`).filter((l) => l.event === 'config_rejected').length === 4, 15_000);
  t.equal((await gw.get('/rotated')).status, 200);
  await lineIn(app, accessTo('/rotated'));
  t.notOk(lines(`${app}.1`).some(accessTo('/rotated')));
});

t.test('at start, a log file that cannot be written: exit 1 with one line naming the setting (a FIFO never hangs the start)', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const fifo = join(dir, 'fifo.log');
  execFileSync('mkfifo', [fifo]);
  const blocker = join(dir, 'blocker');
  writeFileSync(blocker, 'x');
  mkdirSync(join(dir, 'adir'));
  for (const [setting, path] of [
    ['log.file', fifo],
    ['log.file', join(blocker, 'sub', 'app.log')],
    ['log.file', join(dir, 'adir')],
    ['log.security_file', fifo],
  ] as const) {
    for (const workers of [1, 2]) {
      const config = join(dir, `gw-${workers}.yml`);
      const log = setting === 'log.file' ? `{ file: ${path} }` : `{ file: ${join(dir, 'ok.log')}, security_file: ${path} }`;
      writeFileSync(config, yaml(dir, up.origin, log, workers));
      const cli = spawnCli(t, ['start', '--config', config], {});
      const timer = setTimeout(() => cli.child.kill('SIGKILL'), 20_000);
      const exit = await cli.exited;
      clearTimeout(timer);
      t.equal(exit.code, 1, `${setting} ${path}, workers ${workers}: exit 1`);
      t.match(cli.stderr(), new RegExp(`^portcullis: cannot start: ${setting.replace('.', '\\.')} .* (cannot be opened for writing|is not a regular file)`), 'one line naming the setting');
      t.notMatch(cli.stderr(), /\n\s+at /, 'no stack trace');
    }
  }
});

t.test('workers: 2: after rotation and SIGHUP, the primary and every worker write to the new file; a refused reload reopens too', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const app = join(dir, 'app.log');
  const sec = join(dir, 'security.log');
  const config = join(dir, 'gw.yml');
  writeFileSync(config, yaml(dir, up.origin, `{ file: ${app}, security_file: ${sec} }`, 2));
  const gw = await start(t, dir, config, app);
  await until(() => lines(app).filter((l) => l.msg === 'worker listening').length === 2, 15_000);

  // Until both workers have served (each new connection goes to one of them).
  const workersIn = (file: string, path: string): Set<unknown> => new Set(lines(file).filter(accessTo(path)).map((l) => l.worker));
  const serveBoth = async (file: string, path: string): Promise<boolean> => {
    for (let i = 0; i < 40 && workersIn(file, path).size < 2; i++) {
      await gw.get(path);
      await until(() => lines(file).filter(accessTo(path)).length > i, 3_000);
    }
    return workersIn(file, path).size === 2;
  };
  t.ok(await serveBoth(app, '/before'), 'both workers wrote to the first file');

  renameSync(app, `${app}.1`);
  renameSync(sec, `${sec}.1`);
  gw.cli.child.kill('SIGHUP');
  const reloaded = await reloadedIn(app);
  t.equal(reloaded.role, 'primary', "the primary's own lines go to the new file");
  t.ok(await serveBoth(app, '/after'), 'both workers write to the new file');
  await lineIn(sec, (l) => l.event === 'config_reloaded');
  t.notOk(lines(`${app}.1`).some(accessTo('/after')), 'the moved file gets nothing after the reload');

  // Rotated again, and this time the new configuration is refused: the files are reopened anyway.
  renameSync(app, `${app}.2`);
  writeFileSync(config, 'not: [valid');
  gw.cli.child.kill('SIGHUP');
  await until(() => lines(`${app}.2`).some((l) => l.event === 'config_rejected'), 15_000);
  // The workers reopen on the primary's word, a moment later.
  await sleep(300);
  t.ok(await serveBoth(app, '/refused'), 'both workers write to the new file after a refused reload');
  t.notOk(lines(`${app}.2`).some(accessTo('/refused')));
});
