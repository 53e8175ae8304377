/**
 * The primary of `workers: N`: forks N gateway workers that share the HTTPS and HTTP listeners
 * (node:cluster distributes connections) and keeps, once for the whole host, what must not be
 * split per worker:
 *
 * - the rate-limit / ban store (workers reach it through {@link RemoteStore}): a client spreading
 *   requests over connections that land on different workers is still counted once;
 * - the one ACME manager: its certificates and HTTP-01 / TLS-ALPN-01 answers are mirrored to every
 *   worker (a CA's validation connection can land on any of them), and to late joiners;
 * - the admin listener: readiness of all workers, and metrics aggregated over all processes with
 *   prom-client's `AggregatorRegistry.aggregate` (counters and histograms summed);
 * - signals and the configuration: SIGHUP / --watch validate once, then every worker applies the
 *   same text; SIGTERM drains every worker and exits 0 when all did.
 *
 * A worker that dies is replaced; a crash loop (5 exits within a minute) stops the gateway with
 * exit code 1 rather than flapping forever.
 */
import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import { AggregatorRegistry } from 'prom-client';
import { loadConfigFile, type LoadResult } from '../config/index.js';
import { createLogger, type PreparedLog } from '../observability/logging.js';
import { createMetrics } from '../observability/metrics.js';
import { createSecurityEvents, openSecurityLog, prepareLogFiles } from '../observability/events.js';
import { keepLocalCertificateRenewed, localCertificateOf, prepareCertificates, stageCertificates } from '../server/certificates.js';
import { createCertificateAutomation, restartAutomation, type CertificateMirror } from '../server/acme.js';
import { createAdminServer } from '../server/admin.js';
import { closeServer, listenOn, onReloadTriggers, type EarlySighup } from '../server/lifecycle.js';
import { createTaskQueue } from '../server/queue.js';
import { MemoryStore, serveStoreCall, writtenKey } from '../state/index.js';
import { ACTIVE_BAN_KEY_PREFIX } from '../protect/index.js';
import { RpcPeer } from './rpc.js';
import { problemsOf, type PemPair, type ReloadResult, type Snapshot, type ValidatedConfig, type WorkerHello } from './protocol.js';
import { restartOnlySettings, restartOnlyWarnings, withRestartOnly } from '../gateway.js';

/** Set in a worker's environment: the CLI's `start` then runs {@link runWorker}. */
export const WORKER_ENV = 'PORTCULLIS_CLUSTER_WORKER';

/**
 * Session-ticket keys are shared by the workers (a resumed session may land on any of them) and
 * replaced this often, so that a stolen key cannot decrypt older sessions forever (forward
 * secrecy of resumed sessions); the cost is one full handshake per client after each rotation.
 */
const TICKET_KEY_ROTATION_MS = 12 * 60 * 60 * 1000;
const CRASH_WINDOW_MS = 60_000;
const CRASH_LIMIT = 5;
const RESTART_DELAY_MS = 1_000;
/** Extra time after `shutdown_grace` before a worker that has not exited is killed. */
const EXIT_MARGIN_MS = 5_000;

interface Member {
  readonly worker: Worker;
  readonly peer: RpcPeer;
  /** Has pulled the snapshot: from then on it gets every certificate/challenge change. */
  synced: boolean;
  listening: boolean;
  /** The configuration it runs (a reload may have happened while it was starting). */
  applied: LoadResult | null;
  /** A SIGHUP reopened the log files while it was starting: it reopens its own once listening. */
  reopenLogs: boolean;
  https: AddressInfo | null;
  http: AddressInfo | null;
}

export async function runPrimary(configPath: string, watchFile: boolean, loaded: LoadResult, version: string, early?: EarlySighup): Promise<number> {
  let current = loaded;
  const size = loaded.config.workers;
  // What every worker runs of the restart-only settings, whatever a reload said since.
  const running = restartOnlySettings(loaded.config);
  // stdout is a pipe shared with the workers: one write per line keeps lines whole.
  const log = createLogger({ ...loaded.config.log, linePerWrite: true }).child({ role: 'primary' });
  for (const w of loaded.warnings) log.warn({ config: configPath }, w);

  // Once, before any worker: creates the local development CA (if used) so workers only read it.
  const certificates = await prepareCertificates(loaded.config, log);
  const metrics = createMetrics({ version });
  metrics.setCertificateProvider(() => [...certificates.expiries()].map(([host, notAfter]) => ({ host, notAfter })));
  const securityLog = openSecurityLog(loaded.config.log.securityFile, log);
  const events = createSecurityEvents(securityLog);
  const store = new MemoryStore();

  const members = new Map<number, Member>();
  /** Reloads, renewals and late workers' catch-ups, one at a time. */
  const changes = createTaskQueue(log);
  let ticketKeys = randomBytes(48);
  const snapshot = { certificates: new Map<string, PemPair>(), alpn: new Map<string, PemPair>(), http01: new Map<string, string>() };
  const broadcast = (method: string, params: unknown): void => {
    for (const m of members.values()) if (m.synced) m.peer.notify(method, params);
  };
  const rotation = setInterval(() => {
    ticketKeys = randomBytes(48);
    broadcast('tls.ticketKeys', { keys: ticketKeys.toString('base64') });
  }, TICKET_KEY_ROTATION_MS);
  rotation.unref();
  const mirror: CertificateMirror = {
    installed(id, certPem, keyPem) {
      snapshot.certificates.set(id, { certPem, keyPem });
      broadcast('tls.install', { id, certPem, keyPem });
    },
    alpnSet(host, certPem, keyPem) {
      snapshot.alpn.set(host, { certPem, keyPem });
      broadcast('tls.alpnSet', { host, certPem, keyPem });
    },
    alpnCleared(host) {
      snapshot.alpn.delete(host);
      broadcast('tls.alpnClear', { host });
    },
    http01Set(token, keyAuthorization) {
      snapshot.http01.set(token, keyAuthorization);
      broadcast('acme.http01Set', { token, keyAuthorization });
    },
    http01Deleted(token) {
      snapshot.http01.delete(token);
      broadcast('acme.http01Delete', { token });
    },
  };
  const automation = createCertificateAutomation({ certificates, logger: log, metrics, events, mirror });

  let stopping = false;
  let started = false;
  const crashes: number[] = [];
  let onStartupChange: () => void = () => undefined;
  let admin: HttpServer | null = null;
  let resolveExit: (code: number) => void = () => undefined;
  const exit = new Promise<number>((resolve) => (resolveExit = resolve));

  /** Drain every worker, close what the primary holds, exit with `code` (1 if a worker did not exit cleanly). */
  function shutdown(code: number, why: string): void {
    if (stopping) return;
    stopping = true;
    const grace = current.config.shutdownGrace;
    log.info({ reason: why, grace_ms: grace }, 'shutting down');
    void (async () => {
      const clean = await stopWorkers(grace);
      await closeAll(admin);
      log.info({ clean }, clean ? 'shut down cleanly' : 'shut down; some workers did not exit cleanly');
      resolveExit(clean ? code : 1);
    })();
  }

  function handle(member: Member, method: string, params: unknown): unknown {
    switch (method) {
      case 'hello':
        if (stopping) throw new Error('the gateway is shutting down');
        member.applied = current;
        return { text: current.text, inputs: current.inputs, local: localCertificateOf(certificates), running } satisfies WorkerHello;
      case 'snapshot':
        member.synced = true;
        return {
          certificates: [...snapshot.certificates].map(([id, p]) => ({ id, ...p })),
          alpn: [...snapshot.alpn].map(([host, p]) => ({ host, ...p })),
          http01: [...snapshot.http01],
          ticketKeys: ticketKeys.toString('base64'),
          local: localCertificateOf(certificates),
        } satisfies Snapshot;
      case 'listening': {
        const p = params as { https: AddressInfo; http: AddressInfo | null };
        member.listening = true;
        member.https = p.https;
        member.http = p.http;
        onStartupChange();
        // Started from a configuration that a reload replaced meanwhile: bring it up to date, in
        // turn with the reloads and renewals (one of them may be sending it something newer).
        if (member.applied !== current) {
          changes.push('catching up a worker', async () => {
            if (members.get(member.worker.id) === member && member.applied !== current) await applyTo(member, current);
          });
        }
        if (member.reopenLogs) {
          member.reopenLogs = false;
          member.peer.notify('logs.reopen', {});
        }
        return null;
      }
      default: {
        const answer = serveStoreCall(store, method, params);
        if (answer === undefined) throw new Error(`unknown method ${method}`);
        // Workers keep active-ban answers locally (no round trip per request): tell them about
        // every write to such a key once it is applied, so a ban holds everywhere at once.
        const key = writtenKey(method, params);
        if (key !== null && key.startsWith(ACTIVE_BAN_KEY_PREFIX)) {
          answer.then(
            () => broadcast('state.invalidate', { key }),
            () => undefined,
          );
        }
        return answer;
      }
    }
  }

  function fork(): Member {
    const worker = cluster.fork({ [WORKER_ENV]: '1' });
    const member: Member = {
      worker,
      peer: new RpcPeer(worker, (method, params) => handle(member, method, params)),
      synced: false,
      listening: false,
      applied: null,
      reopenLogs: false,
      https: null,
      http: null,
    };
    members.set(worker.id, member);
    worker.on('exit', (code, signal) => {
      member.peer.close();
      members.delete(worker.id);
      if (stopping) return;
      if (!started) {
        onStartupChange();
        return;
      }
      log.error({ worker: worker.id, pid: worker.process.pid, code, signal }, 'worker exited unexpectedly');
      metrics.workerRestart();
      const now = Date.now();
      crashes.push(now);
      while (crashes.length > 0 && crashes[0]! < now - CRASH_WINDOW_MS) crashes.shift();
      if (crashes.length >= CRASH_LIMIT) {
        shutdown(1, `${crashes.length} worker exits within ${CRASH_WINDOW_MS / 1000}s`);
        return;
      }
      setTimeout(() => {
        if (!stopping) fork();
      }, RESTART_DELAY_MS).unref();
    });
    return member;
  }

  const live = (): Member[] => [...members.values()];
  metrics.setWorkersProvider(() => live().filter((m) => m.listening).length);

  // Start: every worker listening, or the first one that dies takes the start down with it.
  for (let i = 0; i < size; i++) fork();
  const startup = await new Promise<'ok' | 'failed'>((resolve) => {
    onStartupChange = () => {
      if (members.size < size) resolve('failed');
      else if (live().every((m) => m.listening)) resolve('ok');
    };
  });
  onStartupChange = () => undefined;
  if (startup === 'failed') {
    log.error('a worker failed to start: stopping');
    await stopWorkers(5_000);
    await closeAll(null);
    return 1;
  }
  started = true;

  let adminAddr: AddressInfo | null = null;
  if (loaded.config.listen.admin) {
    admin = createAdminServer({
      ready: readiness,
      logger: log,
      metrics: aggregatedMetrics,
      metricsToken: () => current.config.admin.metricsToken,
    });
    try {
      await listenOn(admin, loaded.config.listen.admin);
    } catch (err) {
      log.error({ err }, 'admin listener failed');
      await stopWorkers(5_000);
      await closeAll(null);
      return 1;
    }
    adminAddr = admin.address() as AddressInfo;
  }
  // Orders need the HTTP listener (HTTP-01), which exists now in every worker.
  await automation.start(loaded.config);
  const first = live()[0]!;
  log.info({ version, node: process.version, workers: size, https: first.https, http: first.http, admin: adminAddr }, 'portcullis started');

  async function readiness(): Promise<{ ready: boolean; checks: Record<string, boolean> }> {
    const members = live();
    const answers = await Promise.all(
      members.map((m) => m.peer.call<{ ready: boolean; checks: Record<string, boolean> }>('ready', undefined, 2_000).catch(() => null)),
    );
    const checks = {
      config: true,
      workers: members.length === size && members.every((m) => m.listening),
      listeners: answers.every((a) => a?.checks.listeners === true),
      certificates: answers.every((a) => a?.checks.certificates === true),
    };
    return { ready: Object.values(checks).every(Boolean), checks };
  }

  async function aggregatedMetrics(): Promise<{ contentType: string; body: string }> {
    const parts = await Promise.all(live().map((m) => m.peer.call<object[]>('metrics', undefined, 3_000).catch(() => null)));
    const all = [await metrics.registry.getMetricsAsJSON(), ...parts.filter((p): p is object[] => p !== null)];
    const merged = AggregatorRegistry.aggregate(all);
    return { contentType: merged.contentType, body: await merged.metrics() };
  }

  /** Has one worker apply `text`; a worker that cannot is replaced. Resolves true when it applied. */
  async function applyTo(member: Member, next: LoadResult): Promise<boolean> {
    const validated: ValidatedConfig = { text: next.text, inputs: next.inputs, local: localCertificateOf(certificates) };
    const r = await member.peer.call<ReloadResult>('reload', validated, 60_000).catch((err: unknown): ReloadResult => ({ ok: false, problems: problemsOf(err) }));
    if (r.ok) {
      member.applied = next;
      return true;
    }
    // Validated here, refused there (e.g. a certificate file that changed in between): a fresh
    // worker starts from the accepted text, so no worker keeps serving an older configuration.
    log.error({ worker: member.worker.id, problems: r.problems }, 'worker could not apply the configuration: replacing it');
    member.worker.kill('SIGKILL');
    return false;
  }

  /** Every process's log files opened anew at their current paths (rotation after a refused reload). */
  function reopenLogs(): void {
    try {
      prepareLogFiles(log, securityLog, current.config.log).commit();
    } catch (err) {
      log.error({ problems: [(err as Error).message] }, 'log files cannot be reopened; the open ones stay in use');
    }
    for (const m of live()) {
      // One still starting has its log files open already, and gets nothing broadcast yet.
      if (m.synced) m.peer.notify('logs.reopen', {});
      else m.reopenLogs = true;
    }
  }

  const reload = (why: string): void => {
    changes.push('configuration reload', async () => {
      if (stopping) return;
      let next: LoadResult;
      let logs: PreparedLog;
      try {
        next = await loadConfigFile(configPath);
        const installCertificates = await stageCertificates(next.config, log, certificates);
        // The primary's own log files (each worker opens its own in its reload).
        logs = prepareLogFiles(log, securityLog, next.config.log);
        // Accepted: the primary's store (its expiry metric, the ACME manager) now holds what the
        // workers will serve.
        installCertificates();
        // A certificate the reload withdrew (ACME switched off for a site) is not handed to a
        // worker that starts later: the others stopped serving it in their own reload.
        for (const id of snapshot.certificates.keys()) if (certificates.get(id) === undefined) snapshot.certificates.delete(id);
      } catch (err) {
        const problems = problemsOf(err);
        metrics.configReload('failure');
        events.emit('config_rejected', { file: configPath, reason: why, problems });
        log.error({ trigger: why, problems }, 'configuration rejected; the previous configuration keeps serving');
        // A SIGHUP is also how log rotation asks for new files (logrotate's `create`).
        reopenLogs();
        return;
      }
      logs.commit();
      for (const w of next.warnings) log.warn({ config: configPath }, w);
      // Said here once for the host; the workers reload quietly.
      // Against what runs: a change made by an earlier reload is still not in force.
      for (const w of restartOnlyWarnings(withRestartOnly(current.config, running), next.config)) log.warn(w);
      if (next.config.workers !== size) log.warn({ workers: next.config.workers, running: size }, 'workers changed: it takes effect on the next restart');
      // The primary's own lines too (the workers set theirs in their reload).
      if (next.config.log.level !== current.config.log.level) securityLog.setMainLevel(next.config.log.level);
      current = next;
      // Workers still starting catch up when they report listening (see 'listening').
      const results = await Promise.all(live().filter((m) => m.listening).map((m) => applyTo(m, next)));
      await restartAutomation(automation, next.config, log);
      metrics.configReload('success');
      events.emit('config_reloaded', { file: configPath, reason: why });
      log.info({ trigger: why, workers: results.filter(Boolean).length }, 'configuration reloaded');
    });
  };
  onReloadTriggers(configPath, watchFile, reload, early);
  // The development CA's certificate renewed in turn with the reloads, and sent to every worker
  // (one still starting gets it with its snapshot).
  const stopRenewal = keepLocalCertificateRenewed(certificates, log, () =>
    changes.run(async () => {
      (await stageCertificates(current.config, log, certificates))();
      const local = localCertificateOf(certificates);
      if (local !== null) broadcast('tls.local', local);
    }),
  );

  async function stopWorkers(graceMs: number): Promise<boolean> {
    const exits = live().map(
      (m) =>
        new Promise<boolean>((resolve) => {
          if (m.worker.isDead()) return resolve(m.worker.process.exitCode === 0);
          if (!m.listening) {
            // Still starting (a replacement): nothing in flight to drain, and a shutdown sent
            // before its channel is set up would be lost.
            m.worker.once('exit', () => resolve(true));
            m.worker.kill('SIGKILL');
            return;
          }
          m.worker.once('exit', (code) => resolve(code === 0));
          // A worker whose channel is already gone drains on 'disconnect' by itself.
          m.peer.notify('shutdown');
        }),
    );
    const timer = setTimeout(() => {
      for (const m of live()) if (!m.worker.isDead()) m.worker.kill('SIGKILL');
    }, graceMs + EXIT_MARGIN_MS);
    const clean = (await Promise.all(exits)).every(Boolean);
    clearTimeout(timer);
    return clean;
  }

  async function closeAll(server: HttpServer | null): Promise<void> {
    clearInterval(rotation);
    stopRenewal();
    await automation.stop();
    await closeServer(server);
    await store.close();
    await securityLog.close();
  }

  const onSignal = (signal: string): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      for (const m of live()) m.worker.kill('SIGKILL');
      resolveExit(1);
      return;
    }
    shutdown(0, signal);
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  return exit;
}
