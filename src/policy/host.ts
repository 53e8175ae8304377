/**
 * Host header normalization (RFC 9110 §7.2, RFC 3986 §3.2.2): the one form sites are looked up by.
 */
import { isIPv6 } from 'node:net';

const MAX_NAME = 253; // RFC 1035 §2.3.4, without the trailing dot
const MAX_LABEL = 63;

function isPort(s: string): boolean {
  // RFC 3986 §3.2.3 allows an empty port (`host:`); more than 5 digits cannot be a TCP port.
  if (s.length > 5) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return s.length === 0 || Number(s) <= 65535;
}

/** LDH labels (RFC 1123 §2.1) separated by single dots; expects lower-case input. */
function isDnsName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME) return false;
  let labelStart = 0;
  for (let i = 0; i <= name.length; i++) {
    const c = i < name.length ? name.charCodeAt(i) : 0x2e;
    if (c === 0x2e) {
      const len = i - labelStart;
      if (len === 0 || len > MAX_LABEL) return false;
      if (name.charCodeAt(labelStart) === 0x2d || name.charCodeAt(i - 1) === 0x2d) return false;
      labelStart = i + 1;
    } else if (!((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d)) {
      return false;
    }
  }
  return true;
}

/**
 * Normalize a `Host` header (or `:authority`) for site lookup.
 *
 * Lower-cases, drops the port and one trailing dot (`example.com.` names the same site). IPv6
 * literals keep their brackets (`[::1]`). Returns null for anything that is not a plain DNS name or
 * IP literal: empty, userinfo (`user@host`, RFC 9110 §4.2.4 forbids it), spaces, `_`, zone ids,
 * bad ports. A null result should be answered with 400, never matched against a default site.
 */
export function normalizeHost(hostHeader: string | undefined): string | null {
  if (hostHeader === undefined || hostHeader.length === 0) return null;
  // Refuse non-ASCII before lower-casing: String#toLowerCase maps U+212A KELVIN SIGN to `k`.
  for (let i = 0; i < hostHeader.length; i++) {
    const c = hostHeader.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return null;
  }
  const h = hostHeader.toLowerCase();
  if (h.charCodeAt(0) === 0x5b) {
    const close = h.indexOf(']');
    if (close < 0) return null;
    const literal = h.slice(1, close);
    const rest = h.slice(close + 1);
    if (rest.length > 0 && (rest.charCodeAt(0) !== 0x3a || !isPort(rest.slice(1)))) return null;
    // net.isIPv6 also accepts a zone id (`fe80::1%eth0`); a zone is meaningless to a remote peer.
    if (literal.includes('%') || !isIPv6(literal)) return null;
    return '[' + literal + ']';
  }
  let name = h;
  const colon = h.indexOf(':');
  if (colon >= 0) {
    if (!isPort(h.slice(colon + 1))) return null; // also refuses a second `:` (bare IPv6)
    name = h.slice(0, colon);
  }
  if (name.endsWith('.')) name = name.slice(0, -1);
  return isDnsName(name) ? name : null;
}
