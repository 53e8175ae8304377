/**
 * Which certificates the HTTPS listener starts with: the files you bring, else (without ACME) a
 * local development CA's certificate for every site host — like Caddy's `tls internal`, and said
 * loudly, because browsers will not trust it.
 */
import type { GatewayConfig } from '../config/types.js';
import { buildCertificateEntry, CertificateStore, ensureLocalCertificate, localRenewalAt, type PemReader } from '../tls/index.js';
import type { Logger } from '../observability/logging.js';
import { acmeOrders } from './acme.js';

export const LOCAL_CA_ID = 'local-ca';

export interface LocalPemPair {
  readonly certPem: string;
  readonly keyPem: string;
}

/** Where a cluster worker's certificates come from instead of the disk. */
export interface CertificateSources {
  /**
   * How certificate files are read: from disk by default; a cluster worker reads what the
   * primary validated (LoadResult.inputs), never the disk, where a file may have changed since.
   */
  readonly read?: PemReader;
  /**
   * The local development CA's certificate the primary serves: a worker serves the same, never
   * one it issues (or finds on disk) itself, e.g. after a reload the primary refused.
   */
  readonly local?: LocalPemPair | null;
}

/**
 * Reads and checks what `config` serves (certificate files, the local CA), changing nothing, and
 * returns the step that installs it in `store`: a reload stages its certificates with everything
 * else that can fail, and applies them only once the whole configuration is accepted. A local CA
 * certificate issued for it (the site hosts changed) is written to `tls.storage` by that step too,
 * so a refused reload leaves the disk as the running gateway uses it; a write that fails then is
 * logged (the certificate is served from memory, and issued again at the next start).
 */
export function stageCertificates(config: GatewayConfig, logger: Logger, certs: CertificateStore, sources: CertificateSources = {}): Promise<() => void> {
  return stage(config, logger, certs, sources, false);
}

async function stage(config: GatewayConfig, logger: Logger, certs: CertificateStore, sources: CertificateSources, writeNow: boolean): Promise<() => void> {
  const files = await certs.readFiles(config.tls.certificates, sources.read);
  const localHosts = config.tls.certificates.length === 0 && config.tls.acme === null ? [...new Set(config.sites.flatMap((s) => s.hosts))] : null;
  // A cluster worker serves the primary's local certificate (the primary said the warning).
  const shared = localHosts === null ? null : (sources.local ?? null);
  const local = localHosts === null || shared !== null ? null : await ensureLocalCertificate(config.tls.storage, localHosts, undefined, { write: writeNow });
  const pair = shared ?? local;
  const localEntry = pair === null ? null : buildCertificateEntry(LOCAL_CA_ID, pair.certPem, pair.keyPem, 'local-ca', certs.minVersion);
  return () => {
    for (const entry of files) certs.set(entry);
    // On reload: a certificate file no longer configured stops being served.
    const wanted = new Set(config.tls.certificates.map((c) => c.cert));
    for (const entry of certs.list()) if (entry.source === 'file' && !wanted.has(entry.id)) certs.remove(entry.id);
    // And an ACME certificate of a site no longer ordered (ACME switched off, or every host now
    // covered by a certificate you bring) stops too: it would otherwise win by its later expiry,
    // and stay the default for clients without SNI, until a restart — even after a key leak.
    const ordered = new Set(config.tls.acme === null ? [] : acmeOrders(config, certs).map((o) => `acme:${o.siteId}`));
    for (const entry of certs.list()) if (entry.source === 'acme' && !ordered.has(entry.id)) certs.remove(entry.id);
    // Said when the development CA starts serving a set of hosts (the start, a reload that
    // switched it on or changed the sites), not again at each renewal of the same certificate.
    const before = certs.get(LOCAL_CA_ID);
    const announce = localEntry !== null && (before === undefined || !sameNames(before.hosts, localEntry.hosts));
    if (localEntry === null) certs.remove(LOCAL_CA_ID);
    else certs.set(localEntry);
    if (local !== null) {
      if (!writeNow) {
        local.save().catch((err: unknown) => {
          logger.error({ err, storage: config.tls.storage }, 'local CA: the new certificate could not be saved; it is served, and issued again at the next start');
        });
      }
      for (const warning of local.warnings) logger.warn({ root_ca: local.rootPath }, warning);
      if (!announce) return;
      logger.warn(
        { root_ca: local.rootPath, hosts: localHosts },
        'NO CERTIFICATES CONFIGURED: serving certificates from a LOCAL DEVELOPMENT CA. Clients will not trust them unless they trust ' +
          `${local.rootPath}. Do not use this in production: configure tls.certificates or tls.acme.`,
      );
    }
  };
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join('\n') === [...b].sort().join('\n');
}

/** {@link stageCertificates} and its step at once (a start, where nothing serves yet). */
export async function prepareCertificates(config: GatewayConfig, logger: Logger, store?: CertificateStore, sources?: CertificateSources): Promise<CertificateStore> {
  const certs = store ?? new CertificateStore({ minVersion: config.tls.minVersion });
  // Nothing serves yet: what the local CA creates is written now, and a storage that cannot be
  // written stops the start.
  (await stage(config, logger, certs, sources ?? {}, true))();
  return certs;
}

/** Serves `pair` as the development CA's certificate (a worker, from its primary's renewal). */
export function installLocalCertificate(certs: CertificateStore, pair: LocalPemPair): void {
  certs.set(buildCertificateEntry(LOCAL_CA_ID, pair.certPem, pair.keyPem, 'local-ca', certs.minVersion));
}

/** The local development CA's certificate a store serves, as PEM (a primary hands it to its workers). */
export function localCertificateOf(certs: CertificateStore): LocalPemPair | null {
  const entry = certs.get(LOCAL_CA_ID);
  return entry === undefined ? null : { certPem: entry.certPem, keyPem: entry.keyPem };
}

/** Whether the development certificate `certs` serves is due for renewal (as at start). */
export function localRenewalDue(certs: CertificateStore, now = Date.now()): boolean {
  const entry = certs.get(LOCAL_CA_ID);
  return entry !== undefined && now > localRenewalAt(entry.notBefore, entry.notAfter);
}

/** The longest a running gateway goes without checking; a reload may switch the local CA on. */
const RENEWAL_CHECK_MAX_MS = 60 * 60_000;
/** The shortest: a renewal that failed (storage unreadable) is tried again after this. */
const RENEWAL_CHECK_MIN_MS = 60_000;

/**
 * Keeps the development CA's certificate renewed while the gateway runs: its leaves live 7 days,
 * and a gateway that ran longer served an expired one until a reload or a restart (Caddy renews
 * its internal certificates the same way). `renew` stages and installs the current configuration's
 * certificates (the caller serializes it with its reloads). Returns the function that stops it.
 */
export function keepLocalCertificateRenewed(certs: CertificateStore, logger: Logger, renew: () => Promise<void>): () => void {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const plan = (): void => {
    if (stopped) return;
    const entry = certs.get(LOCAL_CA_ID);
    const dueIn = entry === undefined ? Infinity : localRenewalAt(entry.notBefore, entry.notAfter) - Date.now();
    timer = setTimeout(() => void check(), Math.min(RENEWAL_CHECK_MAX_MS, Math.max(dueIn, 0)));
    timer.unref();
  };
  const check = async (): Promise<void> => {
    let failed = false;
    if (localRenewalDue(certs)) {
      try {
        await renew();
        // Still due (nothing was installed): tried again later, never in a tight loop.
        if (localRenewalDue(certs)) throw new Error('the certificate in use is still due for renewal');
        logger.info({ not_after: certs.get(LOCAL_CA_ID)?.notAfter }, 'local CA: certificate renewed');
      } catch (err) {
        failed = true;
        logger.error({ err }, 'local CA: renewing the certificate failed; trying again in a minute');
      }
    }
    if (stopped) return;
    if (failed) {
      timer = setTimeout(() => void check(), RENEWAL_CHECK_MIN_MS);
      timer.unref();
    } else {
      plan();
    }
  };
  plan();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
