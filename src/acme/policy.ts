/**
 * Pure decisions of the ACME module: when to renew, how long to back off, how to read ACME
 * Renewal Information (RFC 9773). No I/O, no clock, no randomness of its own — callers pass
 * `now` and `random` so every branch is testable with fixed values.
 */
import { createHash } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { GatewayError } from '../errors.js';

export const DEFAULT_CHECK_INTERVAL = 12 * 60 * 60 * 1000;
export const DEFAULT_BACKOFF_MIN = 60 * 1000;
export const DEFAULT_BACKOFF_MAX = 60 * 60 * 1000;
/** A CA's Retry-After is honoured up to this long; a bigger value is treated as a misconfiguration. */
export const MAX_RETRY_AFTER = 24 * 60 * 60 * 1000;
/** setTimeout silently fires at once above 2^31-1 ms (~24.8 days), so longer waits are chained. */
export const MAX_TIMER = 2 ** 31 - 1;

/**
 * Epoch ms at which a certificate should be renewed from its own validity alone.
 *
 * `renewBefore` null means a third of the lifetime (what Let's Encrypt recommends for 90-day
 * certificates). A configured value is clamped to half the lifetime: with short-lived
 * certificates (e.g. 6-day ones) a fixed 30-day margin would otherwise renew at every check.
 */
export function renewAt(notBefore: number, notAfter: number, renewBefore: number | null): number {
  const lifetime = Math.max(0, notAfter - notBefore);
  const margin = renewBefore === null ? lifetime / 3 : Math.min(renewBefore, lifetime / 2);
  return notAfter - margin;
}

/** A suggested renewal window from the CA (RFC 9773 §4.2), epoch ms. */
export interface RenewalWindow {
  readonly start: number;
  readonly end: number;
}

/**
 * Validates a RenewalInfo response body (RFC 9773 §4.2). Throws `GW_ERR_ACME` when the body is
 * not an object with a `suggestedWindow` whose `start` and `end` are timestamps with end > start
 * (§4.2: a window whose end is not after its start must be treated as invalid).
 */
export function parseRenewalInfo(body: unknown): RenewalWindow {
  const win = typeof body === 'object' && body !== null ? (body as { suggestedWindow?: unknown }).suggestedWindow : undefined;
  if (typeof win !== 'object' || win === null) throw new GatewayError('GW_ERR_ACME', 'renewalInfo: no suggestedWindow');
  const { start, end } = win as { start?: unknown; end?: unknown };
  if (typeof start !== 'string' || typeof end !== 'string') throw new GatewayError('GW_ERR_ACME', 'renewalInfo: start/end missing');
  const s = Date.parse(start);
  const e = Date.parse(end);
  if (!Number.isFinite(s) || !Number.isFinite(e)) throw new GatewayError('GW_ERR_ACME', 'renewalInfo: start/end not a timestamp');
  if (e <= s) throw new GatewayError('GW_ERR_ACME', 'renewalInfo: end is not after start');
  return { start: s, end: e };
}

/** RFC 9773 §4.2: pick a uniformly random point inside the window so clients do not stampede. */
export function pickInWindow(win: RenewalWindow, random: number): number {
  return Math.floor(win.start + random * (win.end - win.start));
}

const b64url = (hex: string): string => Buffer.from(hex, 'hex').toString('base64url');

/**
 * The RFC 9773 §4.1 certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial),
 * where the serial is the DER INTEGER's content octets (a leading 0x00 stays).
 */
export function ariCertId(certPem: string): string {
  const cert = new x509.X509Certificate(certPem);
  const aki = cert.getExtension(x509.AuthorityKeyIdentifierExtension);
  if (!aki?.keyId) throw new GatewayError('GW_ERR_ACME', 'certificate has no authority key identifier');
  return `${b64url(aki.keyId)}.${b64url(derIntegerContent(cert.serialNumber))}`;
}

/**
 * The DER content octets of a positive INTEGER given as hex. Parsers report the serial as a
 * number (leading zero octets dropped), but DER keeps a 0x00 octet when the high bit is set, and
 * RFC 9773's certID is built from those octets (its own example: serial 00:87:65:43:21).
 */
export function derIntegerContent(hex: string): string {
  let h = hex.toLowerCase().replace(/^(00)+/, '');
  if (h.length % 2 === 1) h = `0${h}`;
  if (h === '') return '00';
  return Number.parseInt(h.slice(0, 1), 16) >= 8 ? `00${h}` : h;
}

/**
 * Delay before retry number `failures` (1-based): exponential from `min`, capped at `max`, with
 * ±10 % jitter so many gateways behind one CA do not retry in lock-step. A CA's `Retry-After`
 * (RFC 8555 §6.6, rateLimited) is a floor, itself capped at MAX_RETRY_AFTER.
 */
export function backoffDelay(
  failures: number,
  opts: { min: number; max: number; random: number; retryAfterMs?: number | null },
): number {
  const exp = Math.min(opts.max, opts.min * 2 ** Math.max(0, Math.min(failures - 1, 40)));
  const jittered = Math.min(opts.max, Math.round(exp * (0.9 + 0.2 * opts.random)));
  const floor = Math.min(MAX_RETRY_AFTER, Math.max(0, opts.retryAfterMs ?? 0));
  return Math.max(jittered, floor);
}

/** Routine check interval with ±10 % jitter. */
export function jitter(interval: number, random: number): number {
  return Math.round(interval * (0.9 + 0.2 * random));
}

/** `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date. Returns ms from `now`, or null. */
export function parseRetryAfter(value: unknown, now: number): number | null {
  if (typeof value !== 'string' || value.trim() === '') return null;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  // Only IMF-fixdate (the form RFC 9110 requires senders to use): Date.parse alone would accept
  // "-5" or "2" as years.
  if (!/^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/.test(v)) return null;
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - now) : null;
}

/** Decision for one site given what is installed. */
export type RenewalDecision =
  | { due: false; at: number }
  | { due: true; reason: 'expiring' | 'ari' };

export function decideRenewal(input: {
  now: number;
  notBefore: number;
  notAfter: number;
  renewBefore: number | null;
  /** The CA's pick, already randomised inside its window; null when the CA offers no ARI. */
  ariAt: number | null;
}): RenewalDecision {
  const own = renewAt(input.notBefore, input.notAfter, input.renewBefore);
  if (input.now >= own) return { due: true, reason: 'expiring' };
  // RFC 9773 §4.2 lets the CA move renewal earlier (e.g. ahead of a mass revocation); we never
  // let it push renewal past our own margin.
  if (input.ariAt !== null && input.now >= input.ariAt) return { due: true, reason: 'ari' };
  return { due: false, at: input.ariAt === null ? own : Math.min(own, input.ariAt) };
}

/**
 * A file-system-safe name: keeps `[a-z0-9._-]`, replaces the rest, and appends a short hash when
 * anything had to change so two different ids can never share a file.
 */
export function safeName(raw: string): string {
  const cleaned = raw.toLowerCase().replace(/[^a-z0-9._-]/g, '_').replace(/^\.+/, '_');
  if (cleaned === raw && cleaned.length > 0 && cleaned.length <= 100) return cleaned;
  const hash = createHash('sha256').update(raw).digest('hex').slice(0, 10);
  return `${cleaned.slice(0, 80) || '_'}-${hash}`;
}

/** Storage folder for a directory URL: its host (and port), made safe. */
export function directoryFolder(directoryUrl: string): string {
  return safeName(new URL(directoryUrl).host.replace(':', '_'));
}

/** True when both host lists name the same set (order and case do not matter). */
export function sameHosts(a: readonly string[], b: readonly string[]): boolean {
  const sa = new Set(a.map((h) => h.toLowerCase()));
  const sb = new Set(b.map((h) => h.toLowerCase()));
  return sa.size === sb.size && [...sa].every((h) => sb.has(h));
}
