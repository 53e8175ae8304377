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

// RFC 6265bis §5.7: CTLs other than HTAB make the browser ignore the whole line.
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\x00-\x08\x0a-\x1f\x7f]/;
// RFC 6265 §5.2: leading/trailing whitespace around names and values is removed (SP and HTAB).
const trimWsp = (s: string): string => s.replace(/^[ \t]+|[ \t]+$/g, '');

interface ParsedCookie {
  readonly name: string;
  readonly secure: boolean;
  readonly httpOnly: boolean;
  /** Last valid SameSite value, lower-case (6265bis: the last attribute of a name wins), or null. */
  readonly sameSite: 'lax' | 'strict' | 'none' | null;
}

function parseSetCookie(line: string): ParsedCookie | null {
  if (CONTROL_CHARS.test(line)) return null;
  const [pair = '', ...attributes] = line.split(';');
  const eq = pair.indexOf('=');
  const name = eq === -1 ? '' : trimWsp(pair.slice(0, eq));
  const value = eq === -1 ? trimWsp(pair) : trimWsp(pair.slice(eq + 1));
  if (name === '' && value === '') return null;
  let secure = false;
  let httpOnly = false;
  let sameSite: ParsedCookie['sameSite'] = null;
  for (const attribute of attributes) {
    const aeq = attribute.indexOf('=');
    const attrName = trimWsp(aeq === -1 ? attribute : attribute.slice(0, aeq)).toLowerCase();
    const attrValue = aeq === -1 ? '' : trimWsp(attribute.slice(aeq + 1)).toLowerCase();
    if (attrName === 'secure') secure = true;
    else if (attrName === 'httponly') httpOnly = true;
    else if (attrName === 'samesite' && (attrValue === 'lax' || attrValue === 'strict' || attrValue === 'none')) {
      // An unrecognised SameSite value counts as "not set": browsers then apply their own
      // default, so the configured value (appended, hence last) is the better choice.
      sameSite = attrValue;
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

  const added: string[] = [];
  if (addSecure) added.push('Secure');
  if (addHttpOnly) added.push('HttpOnly');
  if (addSameSite) added.push(`SameSite=${String(rules.sameSite)}`);
  if (added.length === 0) return line;
  // Only trailing separators are dropped before appending, so "a=b; " does not become "a=b; ; Secure".
  return `${line.replace(/[ \t;]+$/, '')}; ${added.join('; ')}`;
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
