/**
 * Set-Cookie hardening: adds `Secure`, `HttpOnly` and `SameSite` to the app's cookies without
 * touching anything the app wrote.
 *
 * Parsing follows RFC 6265 §5.2 (and RFC 6265bis, which browsers implement): the name-value pair
 * is everything up to the first `;` — a cookie value cannot contain `;`, even quoted (cookie-octet
 * excludes it) — and each further `;`-separated part is an attribute whose name is compared
 * case-insensitively. Each Set-Cookie header is one array item; they are never split or joined on
 * commas (`Expires=Wed, 21 Oct 2015 07:28:00 GMT` contains one).
 *
 * Attributes are only ever APPENDED, so every existing attribute, the value, quoting and case are
 * kept byte-for-byte, and prefixed cookies (`__Host-`, `__Secure-`, RFC 6265bis §4.1.3) stay valid:
 * they already need `Secure` (and `Path=/`), which is never removed.
 *
 * Malformed lines are passed through unchanged so that the gateway never loses a cookie: a line
 * with control characters (browsers discard it: 6265bis §5.7 step 1) and an empty or name-and-
 * value-less line. A line without `=` is NOT malformed for browsers (6265bis: empty name, the
 * whole pair is the value), so it is hardened like any other cookie.
 */

import type { CookieRules } from './types.js';

export interface CookieContext {
  /** The response goes to the client over HTTPS. */
  readonly https: boolean;
}

// This runs for every Set-Cookie of every proxied response, so parsing is index arithmetic on
// the line (no split, no regular expression, no substring unless it can matter).

/** RFC 6265bis §5.7: CTLs other than HTAB make the browser ignore the whole line. */
function hasControlChar(line: string): boolean {
  for (let i = 0; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c <= 0x08 || (c >= 0x0a && c <= 0x1f) || c === 0x7f) return true;
  }
  return false;
}

const isWsp = (c: number): boolean => c === 0x20 || c === 0x09;

/** `line[from, to)` without leading/trailing SP and HTAB (RFC 6265 §5.2). */
function trimmed(line: string, from: number, to: number): string {
  while (from < to && isWsp(line.charCodeAt(from))) from++;
  while (to > from && isWsp(line.charCodeAt(to - 1))) to--;
  return line.slice(from, to);
}

export interface ParsedCookie {
  readonly name: string;
  readonly secure: boolean;
  readonly httpOnly: boolean;
  /**
   * The value of the LAST SameSite attribute, lower-case, or null when it is missing, empty or not
   * lax/strict/none (6265bis §5.6.7 appends those as "Default", and the last one wins).
   */
  readonly sameSite: 'lax' | 'strict' | 'none' | null;
}

/**
 * The name and the three flags of a Set-Cookie line as a browser reads them (RFC 6265bis §5.6),
 * or null for a line the browser ignores. The gateway hardens with it; `portcullis audit` judges
 * other servers' cookies with it.
 */
export function parseSetCookie(line: string): ParsedCookie | null {
  if (hasControlChar(line)) return null;
  const semi = line.indexOf(';');
  const pairEnd = semi === -1 ? line.length : semi;
  let eq = line.indexOf('=');
  if (eq >= pairEnd) eq = -1;
  const name = eq === -1 ? '' : trimmed(line, 0, eq);
  if (name === '' && trimmed(line, eq + 1, pairEnd) === '') return null;
  let secure = false;
  let httpOnly = false;
  let sameSite: ParsedCookie['sameSite'] = null;
  // Each further `;`-separated part is an attribute (a trailing `;` gives an empty one: ignored).
  for (let pos = pairEnd; pos < line.length; ) {
    const from = pos + 1;
    let to = line.indexOf(';', from);
    if (to === -1) to = line.length;
    pos = to;
    let aeq = line.indexOf('=', from);
    if (aeq >= to) aeq = -1;
    const attrName = trimmed(line, from, aeq === -1 ? to : aeq);
    // Only three names matter, all ASCII letters of length 6 or 8; no other name can lower-case to them.
    if (attrName.length !== 6 && attrName.length !== 8) continue;
    const lower = attrName.toLowerCase();
    if (lower === 'secure') secure = true;
    else if (lower === 'httponly') httpOnly = true;
    else if (lower === 'samesite') {
      const attrValue = aeq === -1 ? '' : trimmed(line, aeq + 1, to).toLowerCase();
      // An unrecognised or missing SameSite value counts as "not set", even after a valid one:
      // browsers then apply their own default, so the configured value (appended, hence last)
      // is the better choice.
      sameSite = attrValue === 'lax' || attrValue === 'strict' || attrValue === 'none' ? attrValue : null;
    }
  }
  return { name, secure, httpOnly, sameSite };
}

/**
 * Hardens one Set-Cookie value; see {@link hardenSetCookies}.
 */
export function hardenSetCookie(line: string, rules: CookieRules, context: CookieContext): string {
  const cookie = parseSetCookie(line);
  if (cookie === null) return line;
  // SameSite=None without Secure is rejected by browsers (6265bis §5.7), and Secure cannot be set
  // over plain HTTP, so over HTTP the gateway adds no SameSite=None (the browser default, Lax,
  // applies) rather than making the cookie disappear.
  const addSameSite = cookie.sameSite === null && rules.sameSite !== null && (rules.sameSite !== 'None' || context.https);
  const sameSiteNone = cookie.sameSite === 'none' || (addSameSite && rules.sameSite === 'None');
  // Over plain HTTP a Secure cookie is discarded by the browser (6265bis §5.7), so Secure is only
  // ever added over HTTPS; SameSite=None requires it there even when `secure` is off.
  const addSecure = !cookie.secure && context.https && (rules.secure || sameSiteNone);
  const addHttpOnly = !cookie.httpOnly && rules.httpOnly && !rules.httpOnlyExcept.includes(cookie.name);

  if (!addSecure && !addHttpOnly && !addSameSite) return line;
  // Only trailing separators are dropped before appending, so "a=b; " does not become "a=b; ; Secure".
  let end = line.length;
  for (let c = line.charCodeAt(end - 1); end > 0 && (c === 0x20 || c === 0x09 || c === 0x3b); c = line.charCodeAt(end - 1)) end--;
  let out = end === line.length ? line : line.slice(0, end);
  if (addSecure) out += '; Secure';
  if (addHttpOnly) out += '; HttpOnly';
  if (addSameSite) out += `; SameSite=${String(rules.sameSite)}`;
  return out;
}

/**
 * Hardens every Set-Cookie value of a response (one array item per header line, never split on
 * commas): adds `Secure` when `rules.secure` and over HTTPS, `HttpOnly` unless the cookie's name
 * (case-sensitive) is in `rules.httpOnlyExcept`, and `SameSite=<rules.sameSite>` when the app set
 * no valid SameSite. Returns a new array of the same length and order.
 */
export function hardenSetCookies(values: readonly string[], rules: CookieRules, context: CookieContext): string[] {
  return values.map((line) => hardenSetCookie(line, rules, context));
}
