/**
 * Helpers shared by the ops tests: locating and running `promtool` (Debian package `prometheus`).
 */
import { execFile, spawnSync } from 'node:child_process';
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
