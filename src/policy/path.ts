/**
 * One canonical form per request path.
 *
 * The gateway enforces a route on a path and then forwards that very path, so the form it decides
 * on must be the form the upstream receives. Everything an upstream might read differently is
 * either normalized here (dot-segments, `//`, escapes of unreserved characters, escape case) or
 * refused (encoded slash, backslash, control characters, broken escapes). What is left ambiguous
 * on purpose (case, `;` parameters, other escapes) is handled by the route table's matching view.
 */

/** Why a raw path was refused; each maps to a 400 `GW_ERR_BAD_PATH`. */
export type PathRejection = 'not_origin_form' | 'encoded_slash' | 'backslash' | 'control_char' | 'bad_encoding' | 'double_encoding' | 'ambiguous_segment';

/** Reason codes of {@link canonicalizePath} rejections (logged, never sent to the client). */
export const PathRejections = {
  /** The request-target does not start with `/` (absolute-form, authority-form, `*`): RFC 9112 §3.2. */
  NOT_ORIGIN_FORM: 'not_origin_form',
  /** `%2F`: upstreams disagree on whether it splits segments (Tomcat, nginx, Apache `AllowEncodedSlashes`). */
  ENCODED_SLASH: 'encoded_slash',
  /** Raw `\` or `%5C`: WHATWG URL and IIS treat it as `/`. */
  BACKSLASH: 'backslash',
  /** Raw or encoded C0 control or DEL (`%00` truncates paths in C-based upstreams). */
  CONTROL_CHAR: 'control_char',
  /** `%` not followed by two hex digits, or a lone UTF-16 surrogate. */
  BAD_ENCODING: 'bad_encoding',
  /**
   * `%25` followed by two hex digits (`%2561` = an encoded `%61`): an upstream that decodes twice
   * would see a different path (`/%2561dmin` → `/admin`) than the one the policy was applied to.
   */
  DOUBLE_ENCODING: 'double_encoding',
  /**
   * A segment that some upstream reads as a dot-segment or as more than one segment, though it is
   * neither here: `..;x` (Tomcat and Jetty drop `;` parameters, then resolve `..`), `%EF%BC%8E%EF%BC%8E`
   * (full-width dots: `..` to an upstream that applies Unicode NFKC), `x%EF%BC%8Fy` (a full-width
   * slash), `...` or `.%20` (Windows and IIS drop trailing dots and spaces). Behind a public prefix
   * such a segment would climb into a protected one after the policy was decided.
   */
  AMBIGUOUS_SEGMENT: 'ambiguous_segment',
} as const satisfies Record<string, PathRejection>;

const DOUBLE_ENCODED = /%25[0-9A-Fa-f]{2}/;

export type CanonicalPathResult = { ok: true; path: string } | { ok: false; reason: PathRejection };

// Character classes for ASCII (RFC 3986 §3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@").
const KEEP = 0; // literal pchar or `/`
const ENCODE = 1; // legal in an HTTP request line but not a pchar: percent-encode
const REJECT_CTL = 2;
const REJECT_BACKSLASH = 3;
const PERCENT = 4;

const CLASS = new Uint8Array(128).fill(ENCODE);
for (let c = 0; c < 0x20; c++) CLASS[c] = REJECT_CTL;
CLASS[0x7f] = REJECT_CTL;
for (const ch of "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/") {
  CLASS[ch.charCodeAt(0)] = KEEP;
}
CLASS[0x5c] = REJECT_BACKSLASH;
CLASS[0x25] = PERCENT;

const UNRESERVED = new Uint8Array(128);
for (const ch of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~') UNRESERVED[ch.charCodeAt(0)] = 1;

const HEX = '0123456789ABCDEF';
const UTF8 = new TextEncoder();
const UTF8_DECODER = new TextDecoder('utf-8');
const SLASH = 0x2f;
const DOT = 0x2e;

/** Value of an ASCII hex digit, or -1 (also for NaN past the end of a string). */
function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/**
 * The bytes of a canonical segment with its escapes decoded. Internal (routes.ts reads segments
 * the same way). Canonical segments hold ASCII and valid escapes only, so every other char is one byte.
 */
export function segmentBytes(seg: string): Uint8Array {
  const bytes = new Uint8Array(seg.length);
  let len = 0;
  for (let i = 0; i < seg.length; i++) {
    const c = seg.charCodeAt(i);
    const hi = c === 0x25 ? hexValue(seg.charCodeAt(i + 1)) : -1;
    const lo = hi >= 0 ? hexValue(seg.charCodeAt(i + 2)) : -1;
    if (lo >= 0) {
      bytes[len++] = (hi << 4) | lo;
      i += 2;
    } else {
      bytes[len++] = c & 0xff;
    }
  }
  return bytes.subarray(0, len);
}

function pct(byte: number): string {
  return '%' + HEX[byte >> 4]! + HEX[byte & 15]!;
}

/**
 * The broadest reading any upstream may give a canonical segment: every escape decoded (as
 * UTF-8), Unicode NFKC applied, cut at the first `;`, trailing dots and spaces dropped. Only for
 * segments that can read differently (see `needsBroadReading`).
 */
function broadReading(seg: string): string {
  let s = UTF8_DECODER.decode(segmentBytes(seg)).normalize('NFKC');
  const semi = s.indexOf(';');
  if (semi >= 0) s = s.slice(0, semi);
  let end = s.length;
  while (end > 0 && (s.charCodeAt(end - 1) === DOT || s.charCodeAt(end - 1) === 0x20)) end--;
  return s.slice(0, end);
}

/** A segment whose broad reading may differ from a plain one: it holds an escape or `;`, or starts or ends with a dot. */
function needsBroadReading(seg: string): boolean {
  return seg.charCodeAt(0) === DOT || seg.charCodeAt(seg.length - 1) === DOT || seg.includes('%') || seg.includes(';');
}

/** Read as `.`, `..` or nothing, or as containing a separator, by some upstream. */
function isAmbiguous(seg: string): boolean {
  if (!needsBroadReading(seg)) return false;
  const r = broadReading(seg);
  return r === '' || r.includes('/') || r.includes('\\');
}

/**
 * Canonicalize the path of an origin-form request-target (the part of `req.url` before `?`).
 *
 * Node hands the request line over as latin1, so characters U+0080–U+00FF are raw bytes and are
 * percent-encoded byte-wise; characters above U+00FF (only possible when a caller passes an
 * already-decoded JS string) are encoded as UTF-8, like WHATWG URL does. The result only holds
 * pchars, `/` and upper-case escapes of non-unreserved bytes, has no dot-segments and no empty
 * segment except a trailing one, so `new URL(result, base).pathname === result`, and the function
 * is idempotent. An already-canonical path costs one scan and no allocation besides the result.
 */
export function canonicalizePath(rawPath: string): CanonicalPathResult {
  const n = rawPath.length;
  if (n === 0 || rawPath.charCodeAt(0) !== SLASH) return { ok: false, reason: 'not_origin_form' };
  // Fast path: a single scan proving the input is already canonical.
  for (let i = 1; i < n; i++) {
    const c = rawPath.charCodeAt(i);
    // `;` and segments starting with a dot (`..;`, `...`, `.well-known`) get the slow path's checks.
    if (c >= 0x80 || CLASS[c] !== KEEP || c === 0x3b) return slowPath(rawPath);
    if (rawPath.charCodeAt(i - 1) === SLASH && (c === SLASH || c === DOT)) return slowPath(rawPath); // `//`, `/.`
  }
  return { ok: true, path: rawPath };
}

function slowPath(raw: string): CanonicalPathResult {
  const n = raw.length;
  const out: string[] = [];
  let trailingSlash = false;
  let i = 1; // raw[0] is `/`
  while (i <= n) {
    // One segment: raw[i .. next `/`).
    let seg = '';
    let j = i;
    for (; j < n; j++) {
      const c = raw.charCodeAt(j);
      if (c === SLASH) break;
      if (c < 0x80) {
        switch (CLASS[c]) {
          case KEEP:
            seg += raw[j]!;
            continue;
          case ENCODE:
            seg += pct(c);
            continue;
          case REJECT_CTL:
            return { ok: false, reason: 'control_char' };
          case REJECT_BACKSLASH:
            return { ok: false, reason: 'backslash' };
          default: {
            // PERCENT
            const hi = j + 2 < n ? hexValue(raw.charCodeAt(j + 1)) : -1;
            const lo = hi >= 0 ? hexValue(raw.charCodeAt(j + 2)) : -1;
            if (lo < 0) return { ok: false, reason: 'bad_encoding' };
            const byte = (hi << 4) | lo;
            if (byte === SLASH) return { ok: false, reason: 'encoded_slash' };
            if (byte === 0x5c) return { ok: false, reason: 'backslash' };
            if (byte < 0x20 || byte === 0x7f) return { ok: false, reason: 'control_char' };
            // RFC 3986 §6.2.2.2: escapes of unreserved characters are equivalent to the character.
            seg += byte < 0x80 && UNRESERVED[byte] === 1 ? String.fromCharCode(byte) : pct(byte);
            j += 2;
            continue;
          }
        }
      }
      if (c <= 0xff) {
        seg += pct(c); // a raw latin1 byte from the request line
        continue;
      }
      // Above U+00FF: UTF-8 encode the code point (WHATWG URL path percent-encoding).
      const cp = raw.codePointAt(j)!;
      if (cp >= 0xd800 && cp <= 0xdfff) return { ok: false, reason: 'bad_encoding' }; // lone surrogate
      if (cp > 0xffff) j++;
      for (const b of UTF8.encode(String.fromCodePoint(cp))) seg += pct(b);
    }
    const last = j >= n;
    // RFC 3986 §5.2.4, after the unreserved decoding so `%2e%2E` counts as `..`. A dot-segment or
    // an empty segment in last position leaves the path ending in `/`.
    if (seg === '' || seg === '.') {
      if (last) trailingSlash = true;
    } else if (seg === '..') {
      out.pop(); // above the root stays at the root
      if (last) trailingSlash = true;
    } else {
      if (isAmbiguous(seg)) return { ok: false, reason: 'ambiguous_segment' };
      out.push(seg);
      if (last) trailingSlash = false;
    }
    i = j + 1;
  }
  if (out.length === 0) return { ok: true, path: '/' };
  const path = '/' + out.join('/') + (trailingSlash ? '/' : '');
  // Checked on the result, so `%25%36%31` (whose %36%31 decode to the unreserved `61`) is caught too.
  if (path.includes('%25') && DOUBLE_ENCODED.test(path)) return { ok: false, reason: 'double_encoding' };
  return { ok: true, path };
}
