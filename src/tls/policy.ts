/**
 * The TLS server policy: Mozilla's "intermediate" configuration.
 *
 * Source: Mozilla Server Side TLS guidelines v5.7, "intermediate" profile
 * (https://wiki.mozilla.org/Security/Server_Side_TLS and the machine-readable
 * https://ssl-config.mozilla.org/guidelines/5.7.json). Intermediate supports every client of the
 * last ~5 years while allowing only forward-secret AEAD suites.
 *
 * Deliberate deviations from the published profile:
 * - the three DHE-RSA-* suites are left out: they need our own DH parameters (RFC 7919 groups),
 *   and every client that supports TLS 1.2 AEAD suites also supports ECDHE;
 * - so the TLS 1.2 list is ECDHE only, AES-GCM and CHACHA20-POLY1305 only: no CBC (Lucky13,
 *   POODLE-style padding oracles), no static-RSA key exchange (no forward secrecy, ROBOT).
 */
import type { SecureContextOptions, TlsOptions } from 'node:tls';
import { constants as cryptoConstants } from 'node:crypto';

export type TlsMinVersion = 'TLSv1.2' | 'TLSv1.3';

/** TLS 1.3 suites (RFC 8446 §B.4), all three AEADs, in Mozilla's order. */
export const TLS13_CIPHERSUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'] as const;

/** TLS 1.2 suites (OpenSSL names), Mozilla intermediate minus DHE. */
export const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
] as const;

/** Key-exchange groups, Mozilla intermediate order (OpenSSL names). */
export const ECDH_CURVES = 'X25519:prime256v1:secp384r1';

/** ALPN for the HTTPS listener: HTTP/2 preferred, HTTP/1.1 allowed (RFC 7301, RFC 9113 §3.2). */
export const HTTPS_ALPN_PROTOCOLS = ['h2', 'http/1.1'] as const;

/**
 * Options for `tls.createSecureContext()`: used for EVERY context (the listener's base context and
 * each per-certificate SNI context). OpenSSL negotiates the version and the cipher from the base
 * context (`SSL_set_SSL_CTX` after SNI swaps only the certificate), so the listener must get these
 * too: see {@link tlsServerOptions}.
 */
export function secureContextOptions(minVersion: TlsMinVersion): SecureContextOptions {
  return {
    minVersion,
    maxVersion: 'TLSv1.3',
    // Node splits one string: `TLS_*` names configure TLS 1.3, the rest TLS 1.2.
    ciphers: [...TLS13_CIPHERSUITES, ...TLS12_CIPHERS].join(':'),
    ecdhCurve: ECDH_CURVES,
    // Mozilla intermediate: every offered suite is strong, so let the client pick (a phone without
    // AES hardware prefers CHACHA20).
    honorCipherOrder: false,
    // TLS 1.2 renegotiation started by the client: a CPU cost it can impose on the server at will
    // (and the ground of old attacks). TLS 1.3 has none; nginx and Caddy refuse it too.
    secureOptions: cryptoConstants.SSL_OP_NO_RENEGOTIATION,
  };
}

/** Listener options (without certificates or SNICallback): the policy plus ALPN. */
export function tlsServerOptions(minVersion: TlsMinVersion): TlsOptions {
  return { ...secureContextOptions(minVersion), ALPNProtocols: [...HTTPS_ALPN_PROTOCOLS] };
}
