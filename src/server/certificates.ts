/**
 * Which certificates the HTTPS listener starts with: the files you bring, else (without ACME) a
 * local development CA's certificate for every site host — like Caddy's `tls internal`, and said
 * loudly, because browsers will not trust it.
 */
import type { GatewayConfig } from '../config/types.js';
import { CertificateStore, ensureLocalCertificate } from '../tls/index.js';
import type { Logger } from '../observability/logging.js';
import { acmeOrders } from './acme.js';

export const LOCAL_CA_ID = 'local-ca';

export async function prepareCertificates(config: GatewayConfig, logger: Logger, store?: CertificateStore): Promise<CertificateStore> {
  const certs = store ?? new CertificateStore({ minVersion: config.tls.minVersion });
  if (config.tls.certificates.length > 0) {
    await certs.loadFiles(config.tls.certificates);
  }
  // On reload: a certificate file no longer configured stops being served.
  const wanted = new Set(config.tls.certificates.map((c) => c.cert));
  for (const entry of certs.list()) if (entry.source === 'file' && !wanted.has(entry.id)) certs.remove(entry.id);
  // And an ACME certificate of a site no longer ordered (ACME switched off, or every host now
  // covered by a certificate you bring) stops too: it would otherwise win by its later expiry,
  // and stay the default for clients without SNI, until a restart — even after a key leak.
  const ordered = new Set(config.tls.acme === null ? [] : acmeOrders(config, certs).map((o) => `acme:${o.siteId}`));
  for (const entry of certs.list()) if (entry.source === 'acme' && !ordered.has(entry.id)) certs.remove(entry.id);
  if (config.tls.certificates.length > 0 || config.tls.acme !== null) certs.remove(LOCAL_CA_ID);
  if (config.tls.certificates.length === 0 && config.tls.acme === null) {
    const hosts = [...new Set(config.sites.flatMap((s) => s.hosts))];
    const local = await ensureLocalCertificate(config.tls.storage, hosts);
    certs.loadFromPem(LOCAL_CA_ID, local.certPem, local.keyPem, 'local-ca');
    for (const warning of local.warnings) logger.warn({ root_ca: local.rootPath }, warning);
    logger.warn(
      { root_ca: local.rootPath, hosts },
      'NO CERTIFICATES CONFIGURED: serving certificates from a LOCAL DEVELOPMENT CA. Clients will not trust them unless they trust ' +
        `${local.rootPath}. Do not use this in production: configure tls.certificates or tls.acme.`,
    );
  }
  return certs;
}
