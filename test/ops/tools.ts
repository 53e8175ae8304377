/**
 * Helpers shared by the ops tests: locating and running `promtool` (Debian package `prometheus`).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function which(cmd: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  const p = r.stdout.trim();
  return r.status === 0 && p !== '' && existsSync(p) ? p : null;
}

export const PROMTOOL = which('promtool');
export const PROMETHEUS = existsSync('/usr/bin/prometheus') ? '/usr/bin/prometheus' : which('prometheus');

/** Passed to `t.test(..., { skip })`: only when the binary is absent, and says CI has it. */
export const PROMTOOL_SKIP = PROMTOOL === null
  ? 'promtool is not installed (apt-get install prometheus); CI installs it, so this check runs there'
  : false;
export const PROMETHEUS_SKIP = PROMETHEUS === null
  ? 'prometheus is not installed (apt-get install prometheus); CI installs it, so this check runs there'
  : false;

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export function run(file: string, args: readonly string[], input?: string, cwd = ROOT): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { cwd, encoding: 'utf8', timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

export function promtool(args: readonly string[], input?: string): Promise<RunResult> {
  if (PROMTOOL === null) throw new Error('promtool is not installed');
  return run(PROMTOOL, args, input);
}

// --- the example Flask app (docker/example-app/app.py), run as shipped ---------------------------

/** Debian's interpreter first: a pyenv/venv python3 earlier on PATH may not have Debian's Flask. */
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const hasFlask = spawnSync(PYTHON, ['-c', 'import flask, werkzeug.middleware.proxy_fix'], { stdio: 'ignore' }).status === 0;
/** `skip` value for tests that need the app: false, or why they cannot run here. */
export const FLASK_SKIP: string | false = hasFlask ? false : `${PYTHON} cannot import flask (apt-get install python3-flask); CI installs it, so this runs there`;

/** Starts app.py on an ephemeral port (Werkzeug prints the port it got); resolves its base URL. */
export async function startExampleApp(t: { teardown(fn: () => unknown): void }, env: Record<string, string> = {}): Promise<string> {
  const child = spawn(PYTHON, [join(ROOT, 'docker/example-app/app.py')], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });
  return new Promise<string>((resolve, reject) => {
    let log = '';
    const onData = (d: Buffer): void => {
      log += d.toString('utf8');
      const m = /Running on (http:\/\/127\.\d+\.\d+\.\d+:\d+)/.exec(log);
      if (m !== null) resolve(m[1]!);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => reject(new Error(`app.py exited (${code}) before listening:\n${log}`)));
  });
}

export interface DockerInstruction {
  readonly op: string;
  readonly args: string;
  readonly stage: number;
}

/** Dockerfile instructions with `\` continuations joined and comments dropped. */
export function parseDockerfile(text: string): DockerInstruction[] {
  const out: DockerInstruction[] = [];
  let stage = -1;
  let buf = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (buf === '' && (line.trim() === '' || line.trimStart().startsWith('#'))) continue;
    if (line.endsWith('\\')) {
      buf += line.slice(0, -1) + ' ';
      continue;
    }
    const full = (buf + line).trim();
    buf = '';
    const m = /^([A-Za-z]+)\s+(.*)$/.exec(full);
    if (m === null) throw new Error(`cannot parse Dockerfile line: ${full}`);
    const op = m[1]!.toUpperCase();
    if (op === 'FROM') stage++;
    out.push({ op, args: m[2]!.trim(), stage });
  }
  return out;
}

/** The variables of an `ENV` instruction's `KEY=VALUE KEY2=VALUE2` form (unquoted values). */
export function envInstruction(args: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const item of args.split(/\s+/).filter(Boolean)) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new Error(`ENV ${args}: not KEY=VALUE: ${item}`);
    env[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return env;
}
