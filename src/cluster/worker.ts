/**
 * A cluster worker (`workers: N`): a whole gateway (TLS, pipeline, proxy) on the listeners it
 * shares with its siblings, minus what must exist once per host, which the primary owns:
 *
 * - rate-limit counters and bans: a {@link RemoteStore} served by the primary's store;
 * - certificates from ACME and the challenge answers: applied from the primary's reports;
 * - the admin listener (health, readiness, aggregated metrics);
 * - signals and the configuration file: the worker runs the exact text the primary validated.
 *
 * A worker ignores SIGINT/SIGTERM/SIGHUP (a terminal's Ctrl-C reaches the whole process group;
 * draining twice would turn into "second signal: exit now"), and drains and exits when the
 * primary says so or disappears.
 */
import cluster from 'node:cluster';
import { parseConfigWith, readFrom, type LoadResult } from '../config/index.js';
import { createLogger, type Logger } from '../observability/logging.js';
import { buildGateway, withRestartOnly, type Gateway } from '../gateway.js';
import { installLocalCertificate, LOCAL_CA_ID, prepareCertificates, stageCertificates, type LocalPemPair } from '../server/certificates.js';
import { followerAutomation } from '../server/acme.js';
import { RemoteStore } from '../state/index.js';
import { ACTIVE_BAN_KEY_PREFIX } from '../protect/index.js';
import { RpcPeer } from './rpc.js';
import { problemsOf, type ReloadResult, type Snapshot, type ValidatedConfig, type WorkerHello } from './protocol.js';

/** Opens the log files anew; one that cannot be written is said, and the open ones stay in use. */
function reopenLogs(gateway: Gateway | null, logger: Logger | null): void {
  try {
    gateway?.reopenLogs();
  } catch (err) {
    logger?.error({ problems: [(err as Error).message] }, 'log files cannot be reopened; the open ones stay in use');
  }
}

export async function runWorker(configPath: string, version: string): Promise<number> {
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => undefined);

  let gateway: Gateway | null = null;
  let logger: Logger | null = null;
  let stopping: Promise<number> | null = null;
  let done: (code: number) => void = () => undefined;
  const exited = new Promise<number>((resolve) => (done = resolve));
  const automation = followerAutomation();
  // Active bans are read on every request: cached here, kept exact by the primary's invalidations.
  const store: RemoteStore = new RemoteStore((method: string, params: unknown): Promise<unknown> => peer.call(method, params), { cachePrefixes: [ACTIVE_BAN_KEY_PREFIX] });

  const stop = (why: string): Promise<number> => {
    stopping ??= (async () => {
      if (!gateway) {
        peer.close();
        return 0;
      }
      logger?.info({ reason: why }, 'worker shutting down');
      try {
        // The channel stays open while draining: requests still in flight need the shared store.
        await gateway.close();
        return 0;
      } catch (err) {
        logger?.error({ err }, 'worker shutdown failed');
        return 1;
      } finally {
        peer.close();
      }
    })().then((code) => {
      done(code);
      return code;
    });
    return stopping;
  };

  const peer: RpcPeer = new RpcPeer(process as never, (method, params) => {
    const p = params as Record<string, string>;
    switch (method) {
      case 'tls.install':
        return void gateway!.certificates.loadFromPem(p.id!, p.certPem!, p.keyPem!, 'acme');
      case 'tls.alpnSet':
        return gateway!.certificates.setAlpnChallenge(p.host!, { certPem: p.certPem!, keyPem: p.keyPem! });
      case 'tls.alpnClear':
        return gateway!.certificates.clearAlpnChallenge(p.host!);
      case 'tls.local':
        return adoptLocalCertificate(gateway!, { certPem: p.certPem!, keyPem: p.keyPem! });
      case 'tls.ticketKeys':
        return gateway!.setTicketKeys(Buffer.from(p.keys!, 'base64'));
      case 'logs.reopen':
        // A reload the primary refused still reopens the log files (rotation).
        return reopenLogs(gateway, logger);
      case 'state.invalidate':
        return store.invalidate(p.key!);
      case 'acme.http01Set':
        return automation.http01.set(p.token!, p.keyAuthorization!);
      case 'acme.http01Delete':
        return automation.http01.delete(p.token!);
      case 'metrics':
        return gateway!.metrics.registry.getMetricsAsJSON();
      case 'ready':
        return gateway!.ready();
      case 'reload':
        return reload(params as ValidatedConfig);
      case 'shutdown':
        return void stop('primary asked');
      default:
        throw new Error(`unknown method ${method}`);
    }
  });
  // The primary is gone (killed, crashed): nobody will route to us or stop us; drain and leave.
  process.once('disconnect', () => void stop('primary disconnected'));

  const hello = await peer.call<WorkerHello>('hello');
  let loaded: LoadResult = parseConfigWith(hello.text, configPath, hello.inputs);
  // The restart-only settings the siblings run: a reload may have changed them in the file.
  const config = withRestartOnly(loaded.config, hello.running);
  const id = cluster.worker?.id ?? 0;
  // stdout is a pipe shared with the siblings: one write per line keeps lines whole.
  logger = createLogger({ ...config.log, linePerWrite: true }).child({ worker: id });
  const log = logger;

  // Certificate files as the primary read them: the disk may hold something it refused since.
  const certificates = await prepareCertificates(config, log, undefined, { read: readFrom(hello.inputs.files), local: hello.local });
  gateway = await buildGateway({
    config,
    logger: log,
    certificates,
    version,
    store,
    certificateAutomation: automation,
    adminListener: false,
  });
  const gw = gateway;

  async function reload(validated: ValidatedConfig): Promise<ReloadResult> {
    try {
      const next = parseConfigWith(validated.text, configPath, validated.inputs);
      const installCertificates = await stageCertificates(next.config, log, gw.certificates, { read: readFrom(validated.inputs.files), local: validated.local });
      // The primary says what needs a restart, once for the host.
      await gw.reload(next.config, { quiet: true, beforeApply: installCertificates });
      loaded = next;
      return { ok: true };
    } catch (err) {
      return { ok: false, problems: problemsOf(err) };
    }
  }

  // Certificates and challenges the primary's ACME manager already has, then live updates.
  const snapshot = await peer.call<Snapshot>('snapshot');
  for (const c of snapshot.certificates) gw.certificates.loadFromPem(c.id, c.certPem, c.keyPem, 'acme');
  for (const a of snapshot.alpn) gw.certificates.setAlpnChallenge(a.host, { certPem: a.certPem, keyPem: a.keyPem });
  for (const [token, keyAuthorization] of snapshot.http01) automation.http01.set(token, keyAuthorization);
  gw.setTicketKeys(Buffer.from(snapshot.ticketKeys, 'base64'));
  if (snapshot.local !== null) adoptLocalCertificate(gw, snapshot.local);

  const addrs = await gw.listen();
  await peer.call('listening', { https: addrs.https, http: addrs.http, pid: process.pid });
  log.info({ pid: process.pid, config_workers: loaded.config.workers }, 'worker listening');
  return exited;
}

/** The development CA's certificate the primary renewed; served only where the configuration in force uses that CA. */
function adoptLocalCertificate(gw: Gateway, pair: LocalPemPair): void {
  if (gw.certificates.get(LOCAL_CA_ID) !== undefined) installLocalCertificate(gw.certificates, pair);
}
