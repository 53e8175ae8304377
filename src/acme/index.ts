/**
 * Automatic certificates with ACME (RFC 8555), TLS-ALPN-01 (RFC 8737) and ACME Renewal
 * Information (RFC 9773). Public surface of `src/acme/`.
 */
export { createAcmeManager } from './manager.js';
export { Http01Challenges, matchChallengePath, HTTP01_PREFIX } from './http01.js';
export { ariCertId, parseRenewalInfo, renewAt, backoffDelay } from './policy.js';
export type {
  AcmeEvent,
  AcmeLogger,
  AcmeManager,
  AcmeManagerOptions,
  AcmeOrderSpec,
  AcmeStatus,
  CertificateSink,
  Http01Responder,
  OrderReason,
  SiteStatus,
  TlsAlpn01Responder,
} from './types.js';
