/**
 * TLS for the HTTPS listener: policy (Mozilla intermediate), the certificate store (SNI, hot
 * swap), the local development CA, atomic file writes, and the TCP front that serves TLS-ALPN-01
 * (RFC 8737) on the HTTPS port.
 *
 * Wiring for the listener (see `front.ts` for why a front exists):
 *
 *   const store = new CertificateStore({ minVersion: cfg.tls.minVersion });
 *   await store.loadFiles(cfg.tls.certificates);                // or loadFromPem(... 'local-ca')
 *   const app = Fastify({ http2: true, https: { ...store.serverOptions(), allowHTTP1: true } });
 *   store.bindServer(app.server);                               // default cert for no-SNI clients
 *   await app.ready();                                          // NOT app.listen(): the front listens
 *   const front = createTlsFront({ store, target: app.server });
 *   await front.listen(cfg.listen.https.port, cfg.listen.https.host);
 *   // shutdown: await Promise.all([front.close(), app.close()]);
 */
export { writeFileAtomic } from './atomic.js';
export {
  ECDH_CURVES,
  HTTPS_ALPN_PROTOCOLS,
  TLS12_CIPHERS,
  TLS13_CIPHERSUITES,
  secureContextOptions,
  tlsServerOptions,
  type TlsMinVersion,
} from './policy.js';
export {
  CertificateStore,
  buildCertificateEntry,
  normalizeServername,
  type AlpnChallengeCertificate,
  type CertificateChange,
  type CertificateEntry,
  type CertificateSource,
  type CertificateStoreOptions,
  type CertificateSummary,
  type PemReader,
  type SniCallback,
} from './store.js';
export { LOCAL_LEAF_LIFETIME_MS, LOCAL_ROOT_LIFETIME_MS, ensureLocalCertificate, localRenewalAt, type LocalCertificate } from './local-ca.js';
export { ACME_TLS_ALPN, createTlsFront, type AlpnChallengeSource, type TlsFront, type TlsFrontEvent, type TlsFrontOptions } from './front.js';
export { parseClientHello, type ClientHelloResult } from './client-hello.js';
