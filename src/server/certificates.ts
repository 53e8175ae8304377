/**
 * Which certificates the HTTPS listener starts with: the files you bring, else (without ACME) a
 * local development CA's certificate for every site host — like Caddy's `tls internal`, and said
 * loudly, because browsers will not trust it.
 */
import type { GatewayConfig } from '../config/types.js';
import { buildCertificateEntry, CertificateStore, ensureLocalCertificate, type PemReader } from '../tls/index.js';
import type { Logger } from '../observability/logging.js';
import { acmeOrders } from './acme.js';

export const LOCAL_CA_ID = 'local-ca';

/**
 * @param read how certificate files are read: from disk by default; a cluster worker reads what
 *   the primary validated (LoadResult.inputs), never the disk, where a file may have changed since.
 */
export async function prepareCertificates(config: GatewayConfig, logger: Logger, store?: CertificateStore, read?: PemReader): Promise<CertificateStore> {
  const certs = store ?? new CertificateStore({ minVersion: config.tls.minVersion });
  // Everything that can fail comes first (files read and checked, the local CA written): on a
  // reload the store is the one serving, and a refused configuration must leave it as it was.
  const files = await certs.readFiles(config.tls.certificates, read);
  const localHosts = config.tls.certificates.length === 0 && config.tls.acme === null ? [...new Set(config.sites.flatMap((s) => s.hosts))] : null;
  const local = localHosts === null ? null : await ensureLocalCertificate(config.tls.storage, localHosts);
  const localEntry = local === null ? null : buildCertificateEntry(LOCAL_CA_ID, local.certPem, local.keyPem, 'local-ca', certs.minVersion);

  for (const entry of files) certs.set(entry);
  // On reload: a certificate file no longer configured stops being served.
  const wanted = new Set(config.tls.certificates.map((c) => c.cert));
  for (const entry of certs.list()) if (entry.source === 'file' && !wanted.has(entry.id)) certs.remove(entry.id);
  // And an ACME certificate of a site no longer ordered (ACME switched off, or every host now
  // covered by a certificate you bring) stops too: it would otherwise win by its later expiry,
  // and stay the default for clients without SNI, until a restart — even after a key leak.
  const ordered = new Set(config.tls.acme === null ? [] : acmeOrders(config, certs).map((o) => `acme:${o.siteId}`));
  for (const entry of certs.list()) if (entry.source === 'acme' && !ordered.has(entry.id)) certs.remove(entry.id);
  if (localEntry === null) certs.remove(LOCAL_CA_ID);
  if (local !== null && localEntry !== null) {
    certs.set(localEntry);
    for (const warning of local.warnings) logger.warn({ root_ca: local.rootPath }, warning);
    logger.warn(
      { root_ca: local.rootPath, hosts: localHosts },
      'NO CERTIFICATES CONFIGURED: serving certificates from a LOCAL DEVELOPMENT CA. Clients will not trust them unless they trust ' +
        `${local.rootPath}. Do not use this in production: configure tls.certificates or tls.acme.`,
    );
  }
  return certs;
}
