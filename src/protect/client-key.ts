/**
 * Rate-limit / ban keys for a client.
 *
 * - `ip`: IPv4 as is; IPv6 by its /64 — one subscriber usually gets a whole /64 (RFC 6177 §2,
 *   RFC 7934), so keying single IPv6 addresses would let one client mint 2^64 keys. IPv4-mapped
 *   IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports) is keyed as the IPv4 address.
 *   Parsing and masking is ipaddr.js's.
 * - `user`: `user:<sub>@<issuer>` of the authenticated principal (the issuer URI-encoded, so the
 *   last `@` ends the subject): two issuers may use the same `sub` for different people, and one
 *   must not spend the other's budget. Anonymous requests fall back to the ip key.
 * - `header:NAME`: the header's value (e.g. an API key set by a trusted client or upstream); absent
 *   or empty → the ip key. NOTE: a header is client-controlled; a client that can choose its own
 *   value can rotate it to dodge the limit. Use it only for values that are themselves checked.
 *
 * Keys never contain client-chosen bytes beyond {@link MAX_KEY_PART} characters: longer parts
 * are replaced by their SHA-256 (node:crypto), so a hostile header cannot bloat the store.
 *
 * The `ip` given here must already be the trusted client address (computed from the socket and
 * `trusted_proxies` by the pipeline); this module never reads `X-Forwarded-For`.
 */

import { hash } from 'node:crypto';
import { isIPv4 } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { RateLimitKeySpec } from './types.js';

export interface ClientIdentity {
  /** The trusted client IP (never a raw `X-Forwarded-For`). */
  readonly ip: string;
  /** The authenticated subject (`sub`), if any. */
  readonly subject?: string | null | undefined;
  /** The issuer that vouched for `subject` (from the configuration, not client-chosen). */
  readonly issuer?: string | null | undefined;
  /** Request headers with lower-case names, as Node gives them. */
  readonly headers: Readonly<Record<string, string | readonly string[] | undefined>>;
}

/** Longest client-controlled text kept verbatim in a key. */
export const MAX_KEY_PART = 128;

/** IPv6 prefix length a client is grouped by. */
export const IPV6_PREFIX = 64;

const sha256 = (text: string): string => `sha256:${hash('sha256', text, 'base64url')}`;

function bounded(part: string): string {
  return part.length <= MAX_KEY_PART ? part : sha256(part);
}

/** What a dual-stack socket reports for an IPv4 client (RFC 4291 §2.5.5.2), as Node spells it. */
const V4_MAPPED_PREFIX = '::ffff:';

/** Keys of addresses that took the slow path; bounded, see {@link ipKey}. */
const slowKeys = new Map<string, string>();
/** Entries kept in {@link slowKeys} before it is emptied. */
export const SLOW_KEY_CACHE_SIZE = 4096;

/** The ipaddr.js path: any address form, IPv6 masked to its /64. */
function ipKeySlow(ip: string): string {
  let address: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    // process() turns IPv4-mapped IPv6 into IPv4.
    address = ipaddr.process(ip);
  } catch {
    // Not an address (should not happen for a socket address): keep it, bounded, so that such
    // requests are still counted rather than bypassing the limit.
    return `ip:${bounded(ip)}`;
  }
  if (address.kind() === 'ipv4') return `ip:${address.toString()}`;
  // Zone ids (fe80::1%eth0) are dropped by masking: the network address carries none.
  const network = ipaddr.IPv6.networkAddressFromCIDR(`${address.toNormalizedString()}/${IPV6_PREFIX}`);
  return `ip:${network.toString()}/${IPV6_PREFIX}`;
}

/**
 * `ip:<address>` (IPv4) or `ip:<network>/64` (IPv6).
 *
 * This runs for every request (rate limit and ban lookups), so the common shapes skip ipaddr.js:
 * `net.isIPv4` accepts only canonical dotted decimal (no leading zeros, no short forms), which is
 * exactly the text ipaddr.js would print back, so the key is the address itself; Node's
 * `::ffff:a.b.c.d` spelling of an IPv4-mapped address is keyed like its IPv4 address, as
 * ipaddr.js' process() does. Everything else (IPv6, odd spellings, non-addresses) goes through
 * ipaddr.js; its results are memoized in a map that is emptied when it reaches
 * {@link SLOW_KEY_CACHE_SIZE} entries, so a client rotating addresses inside its /64 costs at most
 * what it cost before and cannot grow memory. The memo holds a pure function's results: a hit
 * returns exactly what ipaddr.js computed for the same input.
 */
export function ipKey(ip: string): string {
  if (isIPv4(ip)) return `ip:${ip}`;
  if (ip.startsWith(V4_MAPPED_PREFIX)) {
    const v4 = ip.slice(V4_MAPPED_PREFIX.length);
    if (isIPv4(v4)) return `ip:${v4}`;
  }
  let key = slowKeys.get(ip);
  if (key === undefined) {
    key = ipKeySlow(ip);
    if (slowKeys.size >= SLOW_KEY_CACHE_SIZE) slowKeys.clear();
    // Only short inputs are memoized: a socket address is at most ~45 characters plus a zone id.
    if (ip.length <= MAX_KEY_PART) slowKeys.set(ip, key);
  }
  return key;
}

/** ipaddr.js only, no fast path or memo: the reference {@link ipKey} must agree with (tests). */
export const ipKeyReference = ipKeySlow;

function headerValue(headers: ClientIdentity['headers'], name: string): string | undefined {
  const raw = headers[name.toLowerCase()];
  const value = Array.isArray(raw) ? raw.join(', ') : (raw as string | undefined);
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

/**
 * The client part of a rate-limit key (the caller adds the route id).
 *
 * @example rateLimitKey('ip', { ip: '2001:db8:1:2:3:4:5:6', headers: {} }) // 'ip:2001:db8:1:2::/64'
 * @example rateLimitKey('user', { ip: '192.0.2.1', subject: 'alice', issuer: 'https://idp.test', headers: {} }) // 'user:alice@https%3A%2F%2Fidp.test'
 */
export function rateLimitKey(spec: RateLimitKeySpec, client: ClientIdentity): string {
  if (spec === 'user') {
    const subject = client.subject;
    if (subject === undefined || subject === null || subject === '') return ipKey(client.ip);
    const issuer = client.issuer;
    return issuer ? `user:${bounded(subject)}@${encodeURIComponent(issuer)}` : `user:${bounded(subject)}`;
  }
  if (spec === 'ip') return ipKey(client.ip);
  const name = spec.header.toLowerCase();
  const value = headerValue(client.headers, name);
  // Always hashed: the header is typically a credential (an API key), and the key is what the
  // store holds (shared with Redis) and what the security log's rate_limited and banned events say.
  return value === undefined ? ipKey(client.ip) : `header:${name}:${sha256(value)}`;
}
