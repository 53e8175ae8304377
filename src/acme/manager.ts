/**
 * Automatic certificates (RFC 8555) for the gateway's sites, on top of acme-client 5.
 *
 * Life of a site: stored certificate loaded and installed at `start()` (no CA contact), then a
 * background check decides whether to order (missing / invalid / SANs changed / inside the renewal
 * margin / CA's RFC 9773 window reached). Orders run one at a time. A failed order never touches
 * what is installed; it is retried with capped exponential backoff. The pure decisions live in
 * `policy.ts`, files in `storage.ts`, CA transport quirks in `transport.ts`.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import acme from 'acme-client';
import { GatewayError } from '../errors.js';
import type { AcmeKeyType } from '../config/types.js';
import {
  DEFAULT_BACKOFF_MAX,
  DEFAULT_BACKOFF_MIN,
  DEFAULT_CHECK_INTERVAL,
  MAX_TIMER,
  ariCertId,
  backoffDelay,
  decideRenewal,
  jitter,
  parseRenewalInfo,
  pickInWindow,
  sameHosts,
} from './policy.js';
import { AcmeStorage, certDnsNames, certValidity, type StoredCert } from './storage.js';
import { attachTransport, caGet, type Transport } from './transport.js';
import type { AcmeEvent, AcmeManager, AcmeManagerOptions, AcmeOrderSpec, AcmeStatus, OrderReason, SiteStatus } from './types.js';

const ACCOUNT_GONE = 'urn:ietf:params:acme:error:accountDoesNotExist';
/** Longest `stop()` waits for an order in flight, milliseconds. */
const STOP_GRACE = 3000;

interface SiteState {
  readonly spec: AcmeOrderSpec;
  installed: StoredCert | null;
  /** Why the site needs an order regardless of dates (set at load), or null. */
  pending: OrderReason | null;
  failures: number;
  lastError: string | null;
  lastErrorAt: number | null;
  nextCheckAt: number;
  /** RFC 9773 §4.2: the random pick is kept while the CA's window stays the same. */
  ari: { start: number; end: number; at: number } | null;
}

async function createKey(type: AcmeKeyType): Promise<Buffer> {
  switch (type) {
    case 'ec-p256':
      return acme.crypto.createPrivateEcdsaKey('P-256');
    case 'ec-p384':
      return acme.crypto.createPrivateEcdsaKey('P-384');
    case 'rsa-2048':
      return acme.crypto.createPrivateRsaKey(2048);
    case 'rsa-4096':
      return acme.crypto.createPrivateRsaKey(4096);
  }
}

const errMsg = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export function createAcmeManager(opts: AcmeManagerOptions): AcmeManager {
  const { config, sink, logger } = opts;
  const now = opts.now ?? Date.now;
  const random = opts.random ?? Math.random;
  const checkInterval = opts.checkInterval ?? DEFAULT_CHECK_INTERVAL;
  const backoff = { min: opts.backoffMin ?? DEFAULT_BACKOFF_MIN, max: opts.backoffMax ?? DEFAULT_BACKOFF_MAX };
  const http01 = opts.http01 ?? null;
  const tlsAlpn01 = opts.tlsAlpn01 ?? null;
  if (config.challenge === 'http-01' && http01 === null) throw new TypeError('acme: challenge http-01 needs an http01 responder');
  if (config.challenge === 'tls-alpn-01' && tlsAlpn01 === null) throw new TypeError('acme: challenge tls-alpn-01 needs a tlsAlpn01 responder');
  const ids = new Set<string>();
  for (const o of opts.orders) {
    if (ids.has(o.siteId)) throw new TypeError(`acme: duplicate siteId ${o.siteId}`);
    if (o.hosts.length === 0) throw new TypeError(`acme: site ${o.siteId} has no hosts`);
    ids.add(o.siteId);
  }

  const storage = new AcmeStorage(opts.storageDir, config.directory);
  const sites: SiteState[] = opts.orders.map((spec) => ({
    spec: { siteId: spec.siteId, hosts: [...spec.hosts] },
    installed: null,
    pending: 'missing',
    failures: 0,
    lastError: null,
    lastErrorAt: null,
    nextCheckAt: 0,
    ari: null,
  }));

  let transport: Transport | null = null;
  let client: acme.Client | null = null;
  let started = false;
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;
  let chain: Promise<void> = Promise.resolve();

  const emit = (ev: AcmeEvent): void => {
    try {
      opts.events?.(ev);
    } catch (err) {
      logger.error({ err, event: ev.event }, 'acme event handler threw');
    }
  };

  /**
   * `hosts` defaults to the site's; an outdated certificate is installed only for names it covers.
   * False when the sink refuses it: the site then does not count as holding it (it is ordered).
   */
  const install = (s: SiteState, cert: StoredCert, hosts: readonly string[] = s.spec.hosts): boolean => {
    try {
      sink.install(s.spec.siteId, hosts, cert.certPem, cert.keyPem);
    } catch (err) {
      logger.error({ err, site: s.spec.siteId }, 'certificate sink rejected a certificate');
      return false;
    }
    s.installed = cert;
    return true;
  };

  const onInvalid = (site: string) => (file: string, reason: string): void => {
    logger.warn({ site, file, reason }, 'stored ACME file is invalid; it will be replaced');
    emit({ event: 'cert_storage_invalid', site, file, reason });
  };

  /** Account key once per CA (kept on disk), ToS agreed, account URL stored (RFC 8555 §7.3). */
  async function ensureClient(): Promise<acme.Client> {
    if (client) return client;
    let accountKey = await storage.loadAccountKey(onInvalid('(account)'));
    if (accountKey === null) {
      accountKey = (await acme.crypto.createPrivateEcdsaKey('P-256')).toString();
      await storage.saveAccountKey(accountKey);
    }
    const accountUrl = await storage.loadAccountUrl(config.directory, onInvalid('(account)'));
    const c = new acme.Client({
      directoryUrl: config.directory,
      accountKey,
      ...(accountUrl === null ? {} : { accountUrl }),
      ...(config.eab === null ? {} : { externalAccountBinding: { kid: config.eab.kid, hmacKey: config.eab.hmacKey } }),
      // Poll interval while the CA validates (acme-client default: 5 s minimum per poll).
      backoffMin: opts.pollMin ?? 1000,
      backoffMax: opts.pollMax ?? 10_000,
    });
    if (accountUrl === null) {
      await c.createAccount({ termsOfServiceAgreed: true, contact: [`mailto:${config.email}`] });
      const url = c.getAccountUrl();
      await storage.saveAccountUrl(config.directory, url);
      emit({ event: 'account_registered', directory: config.directory, accountUrl: url });
      logger.info({ directory: config.directory, accountUrl: url }, 'ACME account registered');
    }
    client = c;
    return c;
  }

  async function orderOnce(s: SiteState): Promise<StoredCert> {
    const c = await ensureClient();
    const hosts = [...s.spec.hosts];
    const first = hosts[0] as string;
    const [keyPem, csr] = await acme.crypto.createCsr(
      // The CN is limited to 64 characters (RFC 5280 ub-common-name); SANs carry the names anyway.
      first.length <= 64 ? { commonName: first, altNames: hosts } : { altNames: hosts },
      await createKey(config.keyType),
    );
    const certPem = await c.auto({
      csr,
      email: config.email,
      termsOfServiceAgreed: true,
      challengePriority: [config.challenge],
      // acme-client's self-check resolves names with the system resolver and connects to
      // 80/443 from here; the CA validates anyway, and behind NAT/split DNS the self-check is
      // wrong more often than the CA.
      skipChallengeVerification: true,
      // acme-client's Challenge type omits tls-alpn-01, hence the widening to string.
      challengeCreateFn: async (authz, challenge, keyAuthorization) => {
        const type: string = challenge.type;
        if (challenge.type === 'http-01' && http01) http01.set(challenge.token, keyAuthorization);
        else if (type === 'tls-alpn-01' && tlsAlpn01) {
          const [k, crt] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization);
          tlsAlpn01.set(authz.identifier.value, crt.toString(), k.toString());
        } else throw new GatewayError('GW_ERR_ACME', `no responder for ${type}`);
      },
      challengeRemoveFn: async (authz, challenge) => {
        if (challenge.type === 'http-01') http01?.delete(challenge.token);
        else if ((challenge.type as string) === 'tls-alpn-01') tlsAlpn01?.delete(authz.identifier.value);
      },
    });
    // Never install what we did not ask for: a CA (or a proxy in between) returning a
    // certificate for other names or another key must not replace a working one.
    const names = certDnsNames(certPem);
    if (!sameHosts(names, hosts)) throw new GatewayError('GW_ERR_ACME', `CA returned SANs ${names.join(',')}`);
    if (!new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem))) {
      throw new GatewayError('GW_ERR_ACME', 'CA returned a certificate for another key than the one in the order');
    }
    const { notBefore, notAfter } = certValidity(certPem);
    return { certPem, keyPem: keyPem.toString(), hosts, notBefore, notAfter };
  }

  /** One order with account recovery: a CA that lost our account (RFC 8555 §7.3.1) gets a new one. */
  async function order(s: SiteState): Promise<StoredCert> {
    try {
      return await orderOnce(s);
    } catch (err) {
      if (transport?.lastFailure()?.problem !== ACCOUNT_GONE) throw err;
      logger.warn({ site: s.spec.siteId }, 'CA does not know our account; registering again');
      client = null;
      await storage.clearAccountUrl();
      transport.reset();
      return await orderOnce(s);
    }
  }

  /** RFC 9773: the CA's suggested renewal time for the installed certificate, or null. */
  async function ariTime(s: SiteState, directory: Record<string, unknown> | null): Promise<number | null> {
    const base = directory?.renewalInfo;
    if (typeof base !== 'string' || s.installed === null) return null;
    try {
      const res = await caGet(`${base.replace(/\/$/, '')}/${ariCertId(s.installed.certPem)}`);
      if (res.status !== 200) throw new GatewayError('GW_ERR_ACME', `renewalInfo: HTTP ${res.status}`);
      const win = parseRenewalInfo(res.data);
      if (!s.ari || s.ari.start !== win.start || s.ari.end !== win.end) s.ari = { ...win, at: pickInWindow(win, random()) };
      return s.ari.at;
    } catch (err) {
      // ARI is advisory: without it we fall back to our own margin.
      emit({ event: 'ari_failed', site: s.spec.siteId, reason: errMsg(err) });
      return s.ari?.at ?? null;
    }
  }

  async function fetchDirectory(): Promise<Record<string, unknown> | null> {
    try {
      const res = await caGet(config.directory);
      return res.status === 200 && typeof res.data === 'object' && res.data !== null ? (res.data as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  }

  async function processSite(s: SiteState, directory: () => Promise<Record<string, unknown> | null>): Promise<void> {
    let reason: OrderReason | null = s.pending;
    if (reason === null && s.installed !== null) {
      const t = now();
      const d = decideRenewal({
        now: t,
        notBefore: s.installed.notBefore,
        notAfter: s.installed.notAfter,
        renewBefore: config.renewBefore,
        ariAt: await ariTime(s, await directory()),
      });
      if (!d.due) {
        s.nextCheckAt = Math.min(t + jitter(checkInterval, random()), Math.max(t, d.at));
        return;
      }
      reason = d.reason;
    }
    reason ??= 'missing';
    const { siteId, hosts } = s.spec;
    emit({ event: 'order_started', site: siteId, hosts, reason });
    logger.info({ site: siteId, hosts, reason }, 'ordering certificate');
    transport?.reset();
    const renewal = s.installed !== null;
    let cert: StoredCert;
    try {
      cert = await order(s);
      // Saved and announced only once it serves: a refused certificate must not replace the
      // working files on disk, nor count as issued (no renewal for its whole lifetime).
      if (!install(s, cert)) throw new GatewayError('GW_ERR_ACME', 'the certificate store refused the issued certificate');
    } catch (err) {
      if (stopped) return; // aborted by stop(): not a CA failure
      const failure = transport?.lastFailure() ?? null;
      // acme-client turns socket errors into a TypeError; the transport saw the real cause.
      const why = failure !== null && err instanceof TypeError ? failure.detail : errMsg(err);
      const t = now();
      s.failures += 1;
      s.lastError = why;
      s.lastErrorAt = t;
      const delay = backoffDelay(s.failures, { ...backoff, random: random(), retryAfterMs: failure?.retryAfterMs ?? null });
      s.nextCheckAt = t + delay;
      logger.warn({ site: siteId, hosts, reason: why, problem: failure?.problem ?? null, retryInMs: delay }, 'certificate order failed');
      emit({
        event: 'cert_renewal_failed',
        site: siteId,
        hosts,
        reason: why,
        attempt: s.failures,
        retryInMs: delay,
        problem: failure?.problem ?? null,
      });
      return;
    }
    s.pending = null;
    s.failures = 0;
    s.lastError = null;
    s.lastErrorAt = null;
    s.ari = null;
    s.nextCheckAt = now() + jitter(checkInterval, random());
    try {
      await storage.saveSite(siteId, cert);
    } catch (err) {
      // Serving the new certificate beats failing; after a restart the site is ordered again.
      s.lastError = `storage: ${errMsg(err)}`;
      s.lastErrorAt = now();
      logger.error({ err, site: siteId }, 'issued certificate could not be stored');
    }
    emit({ event: 'cert_issued', site: siteId, hosts, notAfter: cert.notAfter, renewal });
    logger.info({ site: siteId, hosts, notAfter: new Date(cert.notAfter).toISOString(), renewal }, 'certificate issued');
  }

  /**
   * `dueBy`: the check time the timer was set for. Sites due by then run even if the injected
   * clock has not moved (tests freeze it; a real clock can lag a timer by a millisecond).
   */
  async function round(force: boolean, dueBy = 0): Promise<void> {
    if (stopped) return;
    let dir: Promise<Record<string, unknown> | null> | null = null;
    const directory = (): Promise<Record<string, unknown> | null> => (dir ??= fetchDirectory());
    for (const s of sites) {
      if (stopped) break;
      if (!force && s.nextCheckAt > Math.max(now(), dueBy)) continue;
      try {
        await processSite(s, directory);
      } catch (err) {
        // Only programming errors get here; keep the loop alive and try again later.
        logger.error({ err, site: s.spec.siteId }, 'acme check failed unexpectedly');
        s.nextCheckAt = now() + backoff.max;
      }
    }
    schedule();
  }

  function schedule(): void {
    if (timer) clearTimeout(timer);
    timer = null;
    if (stopped || sites.length === 0) return;
    const next = Math.min(...sites.map((s) => s.nextCheckAt));
    const wait = Math.max(0, next - now());
    // A wait longer than MAX_TIMER is chained: only the last leg actually makes sites due.
    const lastLeg = wait <= MAX_TIMER;
    timer = setTimeout(() => {
      timer = null;
      void enqueue(false, lastLeg ? next : 0);
    }, Math.min(MAX_TIMER, wait));
  }

  function enqueue(force: boolean, dueBy = 0): Promise<void> {
    const p = chain.then(() => round(force, dueBy));
    chain = p.catch(() => undefined);
    return p;
  }

  async function loadStored(s: SiteState): Promise<void> {
    const { siteId, hosts } = s.spec;
    let res;
    try {
      res = await storage.loadSite(siteId, hosts);
    } catch (err) {
      onInvalid(siteId)(storage.siteFiles(siteId).crt, errMsg(err));
      s.pending = 'invalid';
      return;
    }
    switch (res.kind) {
      case 'missing':
        s.pending = 'missing';
        return;
      case 'invalid':
        onInvalid(siteId)(res.file, res.reason);
        s.pending = 'invalid';
        return;
      case 'hosts_changed':
        // The old certificate still covers some names: keep serving it until the new one exists.
        if (res.cert.notAfter > now()) {
          const covered = hosts.filter((h) => res.cert.hosts.includes(h));
          if (covered.length > 0) install(s, res.cert, covered);
        }
        s.pending = 'hosts_changed';
        return;
      case 'ok':
        if (res.cert.notAfter > now()) {
          install(s, res.cert);
          emit({ event: 'cert_loaded', site: siteId, hosts, notAfter: res.cert.notAfter });
        }
        s.pending = res.cert.notAfter > now() ? null : 'expiring';
        return;
    }
  }

  return {
    async start() {
      if (started) throw new TypeError('acme: manager already started');
      started = true;
      // The bundle as the configuration was validated with.
      transport = attachTransport({ directoryUrl: config.directory, caPem: config.caBundlePem, now });
      await Promise.all(sites.map(loadStored));
      for (const s of sites) s.nextCheckAt = now();
      // The first check runs in the background: a slow or absent CA must not delay startup.
      void enqueue(false);
    },

    checkNow() {
      if (!started || stopped) return Promise.resolve();
      return enqueue(true);
    },

    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = null;
      // An order in flight fails fast instead of holding shutdown for its request timeouts. Its
      // requests now fail at once, but acme-client may still sleep between status polls, so
      // shutdown waits at most STOP_GRACE for it; the leftover only ends in a swallowed error.
      transport?.abort();
      let graceTimer: NodeJS.Timeout | undefined;
      await Promise.race([chain, new Promise<void>((r) => { graceTimer = setTimeout(r, STOP_GRACE); })]);
      clearTimeout(graceTimer);
      // Detach only once the order has really ended: until then its (aborted) requests must keep
      // going through our transport, not through acme-client's defaults.
      const tr = transport;
      void chain.then(() => tr?.detach());
    },

    status(): AcmeStatus {
      const t = now();
      const list: SiteStatus[] = sites.map((s) => ({
        siteId: s.spec.siteId,
        hosts: s.spec.hosts,
        notAfter: s.installed?.notAfter ?? null,
        lastError: s.lastError,
        lastErrorAt: s.lastErrorAt,
        consecutiveFailures: s.failures,
        nextCheckAt: stopped || !started ? null : s.nextCheckAt,
      }));
      const hosts: Record<string, { siteId: string; notAfter: number | null; lastError: string | null }> = {};
      for (const s of list) for (const h of s.hosts) hosts[h] = { siteId: s.siteId, notAfter: s.notAfter, lastError: s.lastError };
      return { ready: list.every((s) => s.notAfter !== null && s.notAfter > t), sites: list, hosts };
    },
  };
}
