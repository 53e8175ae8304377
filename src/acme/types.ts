/**
 * Seams of the ACME module. The TLS store, the plain-HTTP listener and the shared TLS listener
 * are built by other modules; we only depend on these small interfaces so they plug in later.
 */
import type { AcmeConfig } from '../config/types.js';

/** Receives every usable certificate (stored at start, or freshly issued). Must not throw. */
export interface CertificateSink {
  install(siteId: string, hosts: readonly string[], certPem: string, keyPem: string): void;
}

/** HTTP-01 (RFC 8555 §8.3): `GET /.well-known/acme-challenge/<token>` must answer `keyAuthorization`. */
export interface Http01Responder {
  set(token: string, keyAuthorization: string): void;
  delete(token: string): void;
}

/** TLS-ALPN-01 (RFC 8737): a handshake with SNI `host` and ALPN `acme-tls/1` must get this cert. */
export interface TlsAlpn01Responder {
  set(host: string, certPem: string, keyPem: string): void;
  delete(host: string): void;
}

/** Pino-compatible subset. */
export interface AcmeLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** One certificate per site; `hosts` become the SANs (first one is also the CN). */
export interface AcmeOrderSpec {
  readonly siteId: string;
  readonly hosts: readonly string[];
}

/** Why a new order was placed. */
export type OrderReason = 'missing' | 'invalid' | 'hosts_changed' | 'expiring' | 'ari';

export type AcmeEvent =
  | { event: 'cert_loaded'; site: string; hosts: readonly string[]; notAfter: number }
  | { event: 'cert_storage_invalid'; site: string; file: string; reason: string }
  | { event: 'order_started'; site: string; hosts: readonly string[]; reason: OrderReason }
  | { event: 'cert_issued'; site: string; hosts: readonly string[]; notAfter: number; renewal: boolean }
  | {
      event: 'cert_renewal_failed';
      site: string;
      hosts: readonly string[];
      reason: string;
      /** Consecutive failures for this site, 1-based. */
      attempt: number;
      /** Milliseconds until the next attempt. */
      retryInMs: number;
      /** ACME problem type (RFC 8555 §6.7) when the CA sent one. */
      problem: string | null;
    }
  | { event: 'account_registered'; directory: string; accountUrl: string }
  | { event: 'ari_failed'; site: string; reason: string };

export interface AcmeManagerOptions {
  readonly config: AcmeConfig;
  /** Absolute path: the gateway's `tls.storage`. Files go under `<storageDir>/acme/`. */
  readonly storageDir: string;
  readonly orders: readonly AcmeOrderSpec[];
  readonly sink: CertificateSink;
  /** Required when `config.challenge` is `http-01`. */
  readonly http01?: Http01Responder | null;
  /** Required when `config.challenge` is `tls-alpn-01`. */
  readonly tlsAlpn01?: TlsAlpn01Responder | null;
  readonly logger: AcmeLogger;
  readonly events?: (ev: AcmeEvent) => void;
  /** Epoch milliseconds; default `Date.now`. Drives every renewal decision. */
  readonly now?: () => number;
  /** Uniform [0, 1); default `Math.random`. Drives every jitter. */
  readonly random?: () => number;
  /** Milliseconds between routine checks (±10 % jitter). Default 12 h. */
  readonly checkInterval?: number;
  /** First retry delay after a failure, milliseconds. Default 60 000. */
  readonly backoffMin?: number;
  /** Retry delay cap, milliseconds. Default 3 600 000. */
  readonly backoffMax?: number;
  /** acme-client's poll interval while the CA validates, milliseconds. Default 1000 / 10 000. */
  readonly pollMin?: number;
  readonly pollMax?: number;
}

export interface SiteStatus {
  readonly siteId: string;
  readonly hosts: readonly string[];
  /** Epoch ms of the installed certificate's notAfter, or null when none is installed. */
  readonly notAfter: number | null;
  readonly lastError: string | null;
  /** Epoch ms (per the injected clock). */
  readonly lastErrorAt: number | null;
  readonly consecutiveFailures: number;
  /** Epoch ms when the next check/attempt is due, or null when stopped. */
  readonly nextCheckAt: number | null;
}

export interface AcmeStatus {
  /** True when every site has an installed, unexpired certificate. */
  readonly ready: boolean;
  readonly sites: readonly SiteStatus[];
  /** host → notAfter (epoch ms) and last error of the site serving it. */
  readonly hosts: Readonly<Record<string, { readonly siteId: string; readonly notAfter: number | null; readonly lastError: string | null }>>;
}

export interface AcmeManager {
  /** Loads and installs stored certificates, then checks the CA in the background. Never waits for the CA. */
  start(): Promise<void>;
  /** Runs (or joins) one check of every site now; resolves when it has finished. Never rejects. */
  checkNow(): Promise<void>;
  /** Cancels timers and waits for an order in progress to finish. */
  stop(): Promise<void>;
  status(): AcmeStatus;
}
