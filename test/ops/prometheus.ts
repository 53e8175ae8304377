/**
 * Test helper: a real Prometheus server (Debian's /usr/bin/prometheus) on an ephemeral loopback
 * port, scraping the given targets, with a small client for its HTTP API.
 *
 *   const prom = await startPrometheus({ targets: ['127.0.0.1:9090'], bearerToken: 'x' });
 *   t.teardown(() => prom.stop());
 *   await prom.waitFor('up{job="portcullis"} == 1');
 *
 * Prometheus is started with `--web.listen-address=127.0.0.1:0`; since it does not log the port
 * it got, the helper reads it from /proc (the LISTEN socket owned by the child). Linux only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { PROMETHEUS } from './tools.js';

export interface PrometheusOptions {
  /** `host:port` targets of the single scrape job. */
  readonly targets: readonly string[];
  readonly jobName?: string;
  readonly metricsPath?: string;
  readonly scheme?: 'http' | 'https';
  /** Sent as `Authorization: Bearer …` via `credentials_file`, like docker/prometheus/prometheus.yml. */
  readonly bearerToken?: string;
  /** Only for https targets with a test CA. */
  readonly insecureSkipVerify?: boolean;
  /** Scrape and rule evaluation interval. Default `1s`. */
  readonly interval?: string;
  /** Absolute paths of rule files to evaluate (e.g. docker/prometheus/alerts.yml). */
  readonly ruleFiles?: readonly string[];
  /** Extra scrape jobs, as raw Prometheus `scrape_configs` entries. */
  readonly extraScrapeConfigs?: readonly Record<string, unknown>[];
}

export interface PromSample {
  readonly metric: Record<string, string>;
  readonly value: number;
}

export interface PrometheusHandle {
  /** Base URL, e.g. `http://127.0.0.1:40123`. */
  readonly url: string;
  /** Instant query: the vector's samples (throws on a PromQL or API error). */
  query(expr: string): Promise<PromSample[]>;
  /** Polls `expr` until `accept(samples)` (default: non-empty) or `timeoutMs` (default 30 s). */
  waitFor(expr: string, accept?: (samples: PromSample[]) => boolean, timeoutMs?: number): Promise<PromSample[]>;
  /** Active alerts as reported by /api/v1/alerts. */
  alerts(): Promise<Array<{ labels: Record<string, string>; state: string }>>;
  /** The server's log so far (for failure messages). */
  log(): string;
  /** SIGTERM, wait for exit, remove the data directory. Idempotent. */
  stop(): Promise<void>;
}

function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m !== null) inodes.add(m[1]!);
    } catch {
      // fd closed between readdir and readlink
    }
  }
  const ports: number[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // cols: sl local_address rem_address st ... inode(9)
      if (cols.length > 9 && cols[3] === '0A' && inodes.has(cols[9]!)) ports.push(parseInt(cols[1]!.split(':')[1]!, 16));
    }
  }
  return ports;
}

export async function startPrometheus(opts: PrometheusOptions): Promise<PrometheusHandle> {
  if (PROMETHEUS === null) throw new Error('prometheus is not installed');
  const dir = mkdtempSync(join(tmpdir(), 'pc-prometheus-'));
  const interval = opts.interval ?? '1s';
  const job: Record<string, unknown> = {
    job_name: opts.jobName ?? 'portcullis',
    scheme: opts.scheme ?? 'http',
    metrics_path: opts.metricsPath ?? '/metrics',
    scrape_interval: interval,
    scrape_timeout: interval,
    static_configs: [{ targets: [...opts.targets] }],
  };
  if (opts.bearerToken !== undefined) {
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, opts.bearerToken, { mode: 0o600 });
    job.authorization = { type: 'Bearer', credentials_file: tokenFile };
  }
  if (opts.insecureSkipVerify === true) job.tls_config = { insecure_skip_verify: true };
  const config = {
    global: { scrape_interval: interval, evaluation_interval: interval },
    rule_files: [...(opts.ruleFiles ?? [])],
    scrape_configs: [job, ...(opts.extraScrapeConfigs ?? [])],
  };
  writeFileSync(join(dir, 'prometheus.yml'), stringify(config));

  const child: ChildProcess = spawn(
    PROMETHEUS,
    [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      '--web.listen-address=127.0.0.1:0',
      '--log.level=warn',
    ],
    { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  child.stdout?.on('data', (d: Buffer) => (log += d.toString('utf8')));
  child.stderr?.on('data', (d: Buffer) => (log += d.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopped: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopped;
  };

  try {
    const deadline = Date.now() + 30_000;
    let port: number | undefined;
    while (port === undefined) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`prometheus exited early:\n${log}`);
      if (Date.now() > deadline) throw new Error(`prometheus did not listen:\n${log}`);
      if (child.pid !== undefined) port = listeningPorts(child.pid)[0];
      if (port === undefined) await sleep(50);
    }
    const url = `http://127.0.0.1:${port}`;
    for (;;) {
      const ready = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
      if (ready) break;
      if (Date.now() > deadline) throw new Error(`prometheus not ready:\n${log}`);
      await sleep(100);
    }

    const api = async (path: string): Promise<unknown> => {
      const res = await fetch(`${url}${path}`);
      const body = (await res.json()) as { status: string; data?: unknown; error?: string };
      if (body.status !== 'success') throw new Error(`prometheus API ${path}: ${body.error ?? res.status}`);
      return body.data;
    };
    const query = async (expr: string): Promise<PromSample[]> => {
      const data = (await api(`/api/v1/query?query=${encodeURIComponent(expr)}`)) as {
        resultType: string;
        result: Array<{ metric: Record<string, string>; value: [number, string] }>;
      };
      if (data.resultType !== 'vector') throw new Error(`expected a vector from ${expr}, got ${data.resultType}`);
      return data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
    };
    return {
      url,
      query,
      async waitFor(expr, accept = (s) => s.length > 0, timeoutMs = 30_000) {
        const until = Date.now() + timeoutMs;
        for (;;) {
          const last = await query(expr);
          if (accept(last)) return last;
          if (Date.now() > until) throw new Error(`timed out waiting for ${expr}; last result ${JSON.stringify(last)}\n${log}`);
          await sleep(200);
        }
      },
      async alerts() {
        const data = (await api('/api/v1/alerts')) as { alerts: Array<{ labels: Record<string, string>; state: string }> };
        return data.alerts;
      },
      log: () => log,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
