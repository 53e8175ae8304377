/**
 * Cross-site request forgery protection without tokens, in the manner of Go's
 * `net/http.CrossOriginProtection` (go/src/net/http/csrf.go) and OWASP's Fetch Metadata guidance
 * (CSRF Prevention Cheat Sheet, "Fetch Metadata headers"):
 *
 * 1. Safe methods (GET, HEAD, OPTIONS; RFC 9110 §9.2.1) are never refused. TRACE is refused
 *    elsewhere in the pipeline. Exception: a protocol upgrade (the WebSocket handshake is a GET)
 *    opens a two-way channel authenticated by the cookie, so it is checked like an unsafe method
 *    (cross-site WebSocket hijacking; browsers send Origin, and Sec-Fetch-Site, on the handshake).
 * 2. A request without a `Cookie` header is not subject to the check: CSRF abuses ambient
 *    credentials, and a bearer-token API has none (the browser never attaches a bearer token).
 * 3. `Sec-Fetch-Site: same-origin` or `none` (user typed the URL / bookmark) → allowed.
 * 4. An `Origin` listed in `trusted_origins` → allowed.
 * 5. Any other `Sec-Fetch-Site` (`same-site`, `cross-site`, unknown) → refused, even when the
 *    `Origin` looks like our own: the browser computes Sec-Fetch-Site over the whole redirect chain
 *    (Fetch Metadata §2.1), so it is the stronger signal (this is Go's order too).
 * 6. No `Sec-Fetch-Site` (pre-2023 browsers): `Origin: null` (sandboxed frames, privacy redirects,
 *    file:) → refused; `Origin` equal to the own origin → allowed; another origin → refused.
 * 7. Neither header → allowed. Every browser in use sends at least one of them on an unsafe
 *    cross-origin request, so such a request comes from a non-browser tool (curl, a server) that
 *    cannot be tricked into riding a victim's cookies. Refusing it would break API clients and buy
 *    nothing against CSRF; this is the choice Go made.
 *
 * Origins are compared after normalization ({@link normalizeOrigin}): lower-case scheme and host,
 * default port elided, IDNA to punycode, all via the WHATWG URL parser (not by hand).
 */

import type { CsrfRules } from './types.js';

export interface CsrfRequest {
  readonly method: string;
  /** The request asks for a protocol upgrade (WebSocket): checked whatever its method. */
  readonly upgrade?: boolean;
  /** The request carries a `Cookie` header. */
  readonly hasCookie: boolean;
  readonly secFetchSite?: string | undefined;
  readonly origin?: string | undefined;
  /** `scheme://host[:port]` as the client addressed the gateway (after trusted-proxy handling). */
  readonly ownOrigin: string;
}

export type CsrfRefusal = 'cross_site' | 'origin_mismatch' | 'null_origin';

export type CsrfDecision = { readonly allow: true } | { readonly allow: false; readonly reason: CsrfRefusal };

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const ALLOW: CsrfDecision = Object.freeze({ allow: true });

/**
 * The serialized origin of `value` (`https://example.com`, `http://example.com:8080`), or null
 * when it is not an http(s) origin: `null`, a URL with a path, query, fragment or credentials,
 * or garbage. Use it to validate `trusted_origins` at config load.
 */
export function normalizeOrigin(value: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return null;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return null;
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') return null;
  // An Origin header never carries a path (RFC 6454 §6.1); "https://a.example" parses to "/".
  if (url.pathname !== '/') return null;
  return url.origin;
}

function isTrusted(origin: string | null, rules: CsrfRules): boolean {
  if (origin === null) return false;
  return rules.trustedOrigins.some((trusted) => normalizeOrigin(trusted) === origin);
}

/** Decides whether a request may proceed; see the module comment for the rules and their order. */
export function checkCsrf(req: CsrfRequest, rules: CsrfRules): CsrfDecision {
  if (!rules.enabled || (SAFE_METHODS.has(req.method) && req.upgrade !== true) || !req.hasCookie) return ALLOW;

  const site = req.secFetchSite?.trim().toLowerCase();
  if (site === 'same-origin' || site === 'none') return ALLOW;

  const rawOrigin = req.origin?.trim();
  const origin = rawOrigin === undefined || rawOrigin === '' ? null : normalizeOrigin(rawOrigin);
  if (isTrusted(origin, rules)) return ALLOW;

  if (site !== undefined && site !== '') return { allow: false, reason: 'cross_site' };

  if (rawOrigin === undefined || rawOrigin === '') return ALLOW;
  if (rawOrigin.toLowerCase() === 'null') return { allow: false, reason: 'null_origin' };
  if (origin !== null && origin === normalizeOrigin(req.ownOrigin)) return ALLOW;
  return { allow: false, reason: 'origin_mismatch' };
}
