/**
 * Certificate automation for the running gateway: an ACME manager whose certificates go straight
 * into the live certificate store (no restart, no dropped connection), whose HTTP-01 answers are
 * served by the HTTP listener and whose TLS-ALPN-01 answers by the HTTPS listener's TLS front.
 */
import type { GatewayConfig } from '../config/types.js';
// The manager (and acme-client with it: ~7 MB of JavaScript heap, ~16 MB of memory on Node 24) is
// loaded when a configuration first asks for ACME: a gateway serving only certificates it was
// given never carries it, nor marks it on every full garbage collection.
import { Http01Challenges } from '../acme/http01.js';
import type { AcmeEvent, AcmeManager, AcmeManagerOptions } from '../acme/index.js';
import type { CertificateStore } from '../tls/index.js';
import type { Logger } from '../observability/logging.js';
import type { GatewayMetrics } from '../observability/metrics.js';
import type { SecurityEvents } from '../observability/events.js';

/** Does a certificate with these SANs cover `host` (exact, or a wildcard for exactly one label)? */
export function sanCovers(sans: readonly string[], host: string): boolean {
  if (sans.includes(host)) return true;
  const dot = host.indexOf('.');
  return dot > 0 && sans.includes(`*${host.slice(dot)}`);
}

/** Per site, the hosts no certificate you bring covers: those are ordered. */
export function acmeOrders(config: GatewayConfig, certificates: CertificateStore): Array<{ siteId: string; hosts: string[] }> {
  const brought = certificates.list().filter((c) => c.source === 'file');
  const orders: Array<{ siteId: string; hosts: string[] }> = [];
  for (const site of config.sites) {
    const hosts = site.hosts.filter((h) => !brought.some((c) => sanCovers(c.hosts, h)));
    if (hosts.length > 0) orders.push({ siteId: site.id, hosts });
  }
  return orders;
}

/**
 * Everything the ACME manager changes in this process, reported so that other processes serving
 * the same listeners (cluster workers) can apply the same change: with `workers: N` one manager
 * runs in the primary and every worker must present the new certificate and answer the challenges
 * (the CA's validation request reaches whichever worker the connection lands on).
 */
export interface CertificateMirror {
  installed(id: string, certPem: string, keyPem: string): void;
  alpnSet(host: string, certPem: string, keyPem: string): void;
  alpnCleared(host: string): void;
  http01Set(token: string, keyAuthorization: string): void;
  http01Deleted(token: string): void;
}

class MirroredHttp01Challenges extends Http01Challenges {
  constructor(private readonly mirror: CertificateMirror) {
    super();
  }
  override set(token: string, keyAuthorization: string): void {
    super.set(token, keyAuthorization);
    this.mirror.http01Set(token, keyAuthorization);
  }
  override delete(token: string): void {
    super.delete(token);
    this.mirror.http01Deleted(token);
  }
}

export interface CertificateAutomation {
  readonly http01: Http01Challenges;
  start(config: GatewayConfig): Promise<void>;
  stop(): Promise<void>;
  /** Apply a reloaded configuration: a changed `tls.acme` block or host set restarts the manager. */
  reload(config: GatewayConfig): Promise<void>;
}

/** Scheduling knobs of the ACME manager (clock, check interval, backoff): tests drive time with them. */
export type AcmeTuning = Partial<Pick<AcmeManagerOptions, 'now' | 'random' | 'checkInterval' | 'backoffMin' | 'backoffMax' | 'pollMin' | 'pollMax'>>;

export function createCertificateAutomation(deps: {
  certificates: CertificateStore;
  logger: Logger;
  metrics: GatewayMetrics;
  events: SecurityEvents;
  tuning?: AcmeTuning;
  mirror?: CertificateMirror;
}): CertificateAutomation {
  const mirror = deps.mirror;
  const http01 = mirror ? new MirroredHttp01Challenges(mirror) : new Http01Challenges();
  const log = deps.logger.child({ component: 'acme' });
  let manager: AcmeManager | null = null;
  let signature = '';
  // Bumped by stop(): a start() that was waiting for the manager's module gives up.
  let generation = 0;

  const onEvent = (ev: AcmeEvent): void => {
    switch (ev.event) {
      case 'cert_issued':
        deps.metrics.acmeOrder('success');
        deps.events.emit('cert_issued', { site: ev.site, host: ev.hosts[0], hosts: ev.hosts, not_after: new Date(ev.notAfter).toISOString(), issuer: 'acme' });
        break;
      case 'cert_renewal_failed':
        deps.metrics.acmeOrder('failure');
        deps.events.emit('cert_renewal_failed', {
          site: ev.site,
          host: ev.hosts[0],
          hosts: ev.hosts,
          reason: ev.problem ?? 'order_failed',
          error: ev.reason,
          retry_at: new Date(Date.now() + ev.retryInMs).toISOString(),
        });
        break;
      case 'cert_storage_invalid':
        log.warn({ ...ev }, 'stored certificate unusable: it will be ordered again');
        break;
      default:
        log.info({ ...ev }, ev.event);
    }
  };

  async function start(config: GatewayConfig): Promise<void> {
    const acme = config.tls.acme;
    if (!acme) return;
    const orders = acmeOrders(config, deps.certificates);
    signature = JSON.stringify([acme, orders]);
    if (orders.length === 0) return;
    try {
      await startManager(config, acme, orders);
    } catch (err) {
      // Not started: a reload with the same configuration must try again, not find it current.
      signature = '';
      throw err;
    }
  }

  async function startManager(config: GatewayConfig, acme: NonNullable<GatewayConfig['tls']['acme']>, orders: Array<{ siteId: string; hosts: string[] }>): Promise<void> {
    const mine = generation;
    const { createAcmeManager } = await import('../acme/manager.js');
    if (mine !== generation) return;
    manager = createAcmeManager({
      config: acme,
      storageDir: config.tls.storage,
      orders,
      sink: {
        install: (siteId, _hosts, certPem, keyPem) => {
          deps.certificates.loadFromPem(`acme:${siteId}`, certPem, keyPem, 'acme');
          mirror?.installed(`acme:${siteId}`, certPem, keyPem);
        },
      },
      http01,
      tlsAlpn01: {
        set: (host, certPem, keyPem) => {
          deps.certificates.setAlpnChallenge(host, { certPem, keyPem });
          mirror?.alpnSet(host, certPem, keyPem);
        },
        delete: (host) => {
          deps.certificates.clearAlpnChallenge(host);
          mirror?.alpnCleared(host);
        },
      },
      logger: log,
      events: onEvent,
      ...deps.tuning,
    });
    await manager.start();
  }

  async function stop(): Promise<void> {
    generation++;
    const m = manager;
    manager = null;
    await m?.stop();
  }

  return {
    http01,
    start,
    stop,
    async reload(config) {
      const acme = config.tls.acme;
      const next = acme ? JSON.stringify([acme, acmeOrders(config, deps.certificates)]) : '';
      if (next === signature) return;
      await stop();
      signature = '';
      await start(config);
    },
  };
}

/**
 * A reload's last step, once the new configuration is in force: the ACME manager restarted for
 * its sites. A failure there does not undo the reload (the workers and listeners already serve the
 * new configuration), so it is logged instead of reported as a rejected configuration; the
 * certificates in use keep being served, and the next reload tries again (a manager that did not
 * start is never taken as current).
 */
export async function restartAutomation(automation: CertificateAutomation, config: GatewayConfig, log: Pick<Logger, 'error'>): Promise<void> {
  try {
    await automation.reload(config);
  } catch (err) {
    log.error({ err }, 'certificate automation could not be restarted; certificates in use keep being served, and the next reload tries again');
  }
}

/**
 * The automation of a cluster worker: no manager of its own (the primary runs the only one); the
 * worker applies the primary's {@link CertificateMirror} reports to its certificate store and to
 * this HTTP-01 table, which its HTTP listener serves.
 */
export function followerAutomation(): CertificateAutomation {
  return {
    http01: new Http01Challenges(),
    start: async () => undefined,
    stop: async () => undefined,
    reload: async () => undefined,
  };
}
