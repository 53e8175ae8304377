// Process plumbing: finding tools, CPU pinning, spawning servers and waiting for them, RSS.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { parseStatCpuTicks, parseVmRss } from './stats.mjs';

/** Absolute path of an executable on PATH (or in the usual sbin dirs), or null. */
export function which(name) {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = `${d}/${name}`;
    if (existsSync(p)) return p;
  }
  return null;
}

/**
 * CPU pinning plan: the server under test on one core, the load generator (and the shared
 * upstream) on the others, so that they do not steal each other's cycles. Null when `taskset`
 * is absent or there is only one core.
 */
export function pinningPlan() {
  const taskset = which('taskset');
  const cpus = os.availableParallelism?.() ?? os.cpus().length;
  if (!taskset || cpus < 2) return null;
  return { taskset, server: '0', client: cpus === 2 ? '1' : `1-${cpus - 1}`, clientCores: cpus - 1 };
}

/** [cmd, args] wrapped in `taskset -c CPUS` when a plan exists. */
export function pinned(plan, which_, cmd, args) {
  if (!plan) return [cmd, args];
  return [plan.taskset, ['-c', plan[which_], cmd, ...args]];
}

/** A free loopback TCP port (for servers that cannot report an ephemeral one back). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port (or rejects after timeoutMs). */
export async function waitForPort(port, timeoutMs = 15_000, child = null) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`process exited with code ${child.exitCode} before listening on ${port}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The pid and all its descendants (Linux /proc; the pid alone elsewhere). */
export function processTree(pid) {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const p = out[i];
    let tasks;
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    for (const t of tasks) {
      try {
        const children = readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim();
        if (children) for (const c of children.split(/\s+/)) out.push(Number(c));
      } catch {
        // task ended meanwhile
      }
    }
  }
  return out;
}

/** Sum of `read(pid)` over a process tree; null when nothing could be read (no /proc, all exited). */
function sumOverTree(pid, read) {
  let total = 0;
  let seen = false;
  for (const p of processTree(pid)) {
    try {
      const v = read(p);
      if (v != null) {
        total += v;
        seen = true;
      }
    } catch {
      // exited
    }
  }
  return seen ? total : null;
}

/** Sum of VmRSS over a process tree, in bytes; null when /proc is unavailable. */
export function treeRss(pid) {
  return sumOverTree(pid, (p) => parseVmRss(readFileSync(`/proc/${p}/status`, 'utf8')));
}

/** utime + stime of a process tree, in clock ticks (see `clockTicksPerSecond`); null without /proc. */
export function treeCpuTicks(pid) {
  return sumOverTree(pid, (p) => parseStatCpuTicks(readFileSync(`/proc/${p}/stat`, 'utf8')));
}

/** USER_HZ, the unit of /proc/PID/stat times (`getconf CLK_TCK`; 100 on Linux when unknown). */
export function clockTicksPerSecond() {
  try {
    const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).stdout;
    const hz = Number(String(out).trim());
    return Number.isInteger(hz) && hz > 0 ? hz : 100;
  } catch {
    return 100;
  }
}

/** Samples the tree's RSS every `everyMs` until stop() is called; stop() returns the peak. */
export function sampleRss(pid, everyMs = 250) {
  let peak = treeRss(pid);
  const timer = setInterval(() => {
    const v = treeRss(pid);
    if (v != null && (peak == null || v > peak)) peak = v;
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      const v = treeRss(pid);
      if (v != null && (peak == null || v > peak)) peak = v;
      return peak;
    },
  };
}

/** Runs a command to completion, collecting its output (async: the harness keeps sampling). */
export function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * A long-running server child. Its output goes to `logFile`-like sinks through `onLine`.
 * `stop()` sends SIGTERM, then SIGKILL after `graceMs`.
 */
export function startChild(cmd, args, { env, cwd, onLine } = {}) {
  const child = spawn(cmd, args, { env: env ?? process.env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let buffer = '';
  const feed = (c) => {
    buffer += c;
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 1);
      onLine?.(line);
    }
  };
  child.stdout.on('data', feed);
  child.stderr.on('data', feed);
  child.on('error', () => {});
  return {
    child,
    pid: child.pid,
    stop(graceMs = 5000) {
      if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      return new Promise((resolve) => {
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        child.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        child.kill('SIGTERM');
      });
    },
  };
}

/** Quick synchronous probe: does `cmd args` run and exit 0? */
export function runsOk(cmd, args) {
  try {
    return spawnSync(cmd, args, { stdio: 'ignore', timeout: 10_000 }).status === 0;
  } catch {
    return false;
  }
}
