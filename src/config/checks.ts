/**
 * Pure checks of single values: each returns the normalized value or a human message.
 * IP parsing is ipaddr.js's (strict four-part IPv4, so `0x7f.1` or `010.0.0.1` are never guessed).
 */
import ipaddr from 'ipaddr.js';
import type { ListenAddress, UpstreamTarget } from './types.js';

export type Checked<T> = { ok: true; value: T } | { ok: false; message: string };
const ok = <T>(value: T): Checked<T> => ({ ok: true, value });
const bad = (message: string): Checked<never> => ({ ok: false, message });

function isIPv4(text: string): boolean {
  return ipaddr.IPv4.isValidFourPartDecimal(text);
}
function isIPv6(text: string): boolean {
  // Zone ids (`fe80::1%eth0`) mean nothing in a Host header or a CIDR.
  return !text.includes('%') && ipaddr.IPv6.isValid(text);
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** `host:port` / `[v6]:port`. Port 0 is accepted so tests can ask for an ephemeral port. */
export function checkListen(text: string): Checked<ListenAddress> {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]]+):(\d{1,5})$/.exec(text);
  if (m === null || m[1] === undefined || m[2] === undefined) return bad('must be host:port (an IPv6 address in brackets: [::1]:8443)');
  const port = Number(m[2]);
  if (port > 65535) return bad('port must be between 1 and 65535');
  const host = m[1].toLowerCase();
  if (text.startsWith('[')) {
    if (!isIPv6(host)) return bad('invalid IPv6 address');
    return ok({ host: ipaddr.IPv6.parse(host).toString(), port });
  }
  if (isIPv4(host)) return ok({ host, port });
  const name = checkDnsName(host);
  return name.ok ? ok({ host: name.value, port }) : name;
}

function checkDnsName(name: string): Checked<string> {
  if (name.endsWith('.')) return bad('must not end with a dot');
  if (name.length > 253) return bad('is longer than 253 characters');
  const labels = name.split('.');
  for (const label of labels) {
    if (!LABEL.test(label)) return bad(`is not a valid DNS name (label "${label.slice(0, 63)}": letters, digits and inner hyphens, 1–63 characters)`);
  }
  // An all-numeric last label is an IP address in disguise (`1.2.3`, `127.1`): refuse, never guess.
  if (/^\d+$/.test(labels[labels.length - 1]!)) return bad('is neither a valid IP address nor a DNS name');
  return ok(name);
}

export interface CheckedHost {
  /** Lower-case; IPv6 in brackets, compressed. */
  readonly host: string;
  readonly ip: boolean;
  readonly wildcard: boolean;
}

/** A site host: a DNS name with at most one leading `*.` label, or an IP literal. */
export function checkHost(text: string): Checked<CheckedHost> {
  const lower = text.toLowerCase();
  const v6 = lower.startsWith('[') && lower.endsWith(']') ? lower.slice(1, -1) : lower;
  if (isIPv6(v6) && v6.includes(':')) return ok({ host: `[${ipaddr.IPv6.parse(v6).toString()}]`, ip: true, wildcard: false });
  if (isIPv4(lower)) return ok({ host: lower, ip: true, wildcard: false });
  if (/:\d+$/.test(lower)) return bad('must not include a port');
  const wildcard = lower.startsWith('*.');
  const rest = wildcard ? lower.slice(2) : lower;
  if (rest.includes('*')) return bad('a wildcard is allowed only as the whole first label (*.example.com)');
  const name = checkDnsName(rest);
  if (!name.ok) return name;
  return ok({ host: lower, ip: false, wildcard });
}

export function isLocalhostName(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost');
}

function isLoopbackHostname(hostname: string): boolean {
  if (isLocalhostName(hostname)) return true;
  const bare = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  return ipaddr.isValid(bare) && ipaddr.parse(bare).range() === 'loopback';
}

/** Listener host is loopback-only (admin without a metrics token is acceptable there). */
export function isLoopbackListen(addr: ListenAddress): boolean {
  return isLoopbackHostname(addr.host);
}

/** Upstream origin: http(s), host, port; no path other than `/`, no query, fragment or user info. */
export function checkUpstream(text: string): Checked<UpstreamTarget> {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return bad('must be an absolute URL like http://127.0.0.1:8000');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return bad('scheme must be http or https');
  if (url.username !== '' || url.password !== '') return bad('must not contain user info (credentials do not belong in a URL)');
  if (url.search !== '' || url.hash !== '' || text.includes('?') || text.includes('#')) return bad('must not have a query or fragment');
  if (url.pathname !== '/') return bad('must be an origin only (scheme://host[:port]); paths are not rewritten');
  return ok({ origin: url.origin, protocol: url.protocol });
}

/**
 * URL of an identity provider or ACME endpoint: https, except on loopback (local test IdPs).
 * Tokens and keys fetched over plain HTTP could be replaced by anyone on the path.
 */
export function checkSecureUrl(text: string): Checked<string> {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return bad('must be an absolute https URL');
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && isLoopbackHostname(url.hostname))) {
    return bad('must be an https URL (http is accepted for loopback addresses only)');
  }
  if (url.username !== '' || url.password !== '') return bad('must not contain user info');
  if (url.hash !== '') return bad('must not have a fragment');
  return ok(text);
}

/** Origin as sent in the `Origin` header: scheme://host[:port], lower-case, no path. */
export function checkOrigin(text: string): Checked<string> {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return bad('must be an origin like https://app.example.com');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return bad('scheme must be http or https');
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '' || url.pathname !== '/' || text.includes('?') || text.includes('#')) {
    return bad('must be an origin only: scheme://host[:port], no path');
  }
  return ok(url.origin);
}

/**
 * Route paths are compared with the request's canonical path, so they must be canonical
 * themselves: a `..` or `%2e` here could never match, or worse, match differently than the
 * upstream interprets it (RFC 3986 §5.2.4, §6.2.2).
 */
export function checkRoutePath(text: string): Checked<string> {
  if (!text.startsWith('/')) return bad('must start with "/"');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(text)) return bad('must not contain control characters');
  for (const ch of ['%', '\\', '?', '#']) {
    if (text.includes(ch)) return bad(`must not contain "${ch}" (write the canonical, decoded path)`);
  }
  if (text.includes('//')) return bad('must not contain "//"');
  // `/admin/*` read as a literal path would leave /admin/panel to a laxer route.
  if (text.includes('*')) return bad('must not contain "*": a route path is a prefix (/admin covers /admin/panel), not a pattern');
  const segments = text.split('/');
  if (segments.some((s) => s === '.' || s === '..')) return bad('must not contain "." or ".." segments');
  if (!/^[A-Za-z0-9\-._~!$&'()*+,;=:@/]*$/.test(text)) return bad('may contain only URL path characters (RFC 3986 pchar)');
  return ok(text);
}

/** RFC 9110 §5.6.2 token: header names, methods, cookie names. */
export const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** IPv4/IPv6 address or CIDR → `addr/prefix`. */
export function checkCidr(text: string): Checked<string> {
  const [addr, prefix, extra] = text.split('/');
  if (addr === undefined || extra !== undefined) return bad('must be an IP address or CIDR (10.0.0.0/8, fd00::/8)');
  const v4 = isIPv4(addr);
  if (!v4 && !isIPv6(addr)) return bad('must be an IPv4/IPv6 address or CIDR (10.0.0.0/8, fd00::/8)');
  const max = v4 ? 32 : 128;
  if (prefix !== undefined && !/^\d{1,3}$/.test(prefix)) return bad('prefix length must be a number');
  const bits = prefix === undefined ? max : Number(prefix);
  if (bits > max) return bad(`prefix length must be at most ${max}`);
  const parsed = ipaddr.parseCIDR(`${addr}/${bits}`);
  return ok(`${parsed[0].toString()}/${parsed[1]}`);
}
