/**
 * Which of two routes protects at least as much, for the route table's ambiguous paths.
 *
 * A path the upstream may read under either of two routes (`/account/HOOK`: a case-sensitive app
 * serves it under `/account`, a case-insensitive one under `/account/hook`) must get the
 * treatment of the stricter reading in everything the gateway enforces, not only in who may pass:
 * a nested route that turns CSRF off, allows larger bodies or lets pages be framed would
 * otherwise lend those to a resource of its parent. Pure; no I/O.
 */
import type { CookiesConfig, ProtectConfig, RouteConfig, SecurityHeadersConfig } from '../config/types.js';
import { isAtLeastAsStrict } from './decision.js';

/** What the comparison reads of a route. */
export type ProtectedRoute = Pick<RouteConfig, 'access' | 'roles' | 'maxBodySize' | 'protect'>;

/**
 * True when `a` lets through no request `b` refuses, by access (`isAtLeastAsStrict`) and by every
 * protection: `undefined` (no route, 404) and `deny` refuse everything.
 */
export function routeAtLeastAsStrict(a: ProtectedRoute | undefined, b: ProtectedRoute | undefined): boolean {
  if (!isAtLeastAsStrict(a, b)) return false;
  if (a === undefined || a.access === 'deny' || b === undefined || b.access === 'deny') return true;
  return a.maxBodySize <= b.maxBodySize && protectsAtLeastAs(a.protect, b.protect);
}

/**
 * Not a total order: two sets where each is stronger somewhere are incomparable (both false).
 * Rate limits are not compared: they are counted per route, so no route's limit can stand in for
 * another's, and the gateway counts an ambiguous request under every route it may be read as
 * (`matchRoute`'s readings), whichever the table returns.
 */
export function protectsAtLeastAs(a: ProtectConfig, b: ProtectConfig): boolean {
  return csrfAtLeast(a, b) && bansAtLeast(a, b) && cookiesAtLeast(a.cookies, b.cookies) && headersAtLeast(a.headers, b.headers);
}

const FRAME_OPTIONS_RANK = { DENY: 2, SAMEORIGIN: 1 } as const;

function headersAtLeast(a: SecurityHeadersConfig, b: SecurityHeadersConfig): boolean {
  const xfo = (h: SecurityHeadersConfig): number => (h.frameOptions === null ? 0 : FRAME_OPTIONS_RANK[h.frameOptions]);
  if (xfo(a) < xfo(b) || !framingAtLeast(framing(a), framing(b))) return false;
  // `override` puts the gateway's values in place of the app's own, which may be stricter, and
  // `keep` lets the app's win over the gateway's: neither mode is the stricter one.
  if (a.upstream !== b.upstream) return false;
  // One policy is not "stricter" than another in general: the same one, enforced if b enforces
  // it. A policy where b has none only restricts more, except framing (weighed above).
  if (b.contentSecurityPolicy !== null && (a.contentSecurityPolicy !== b.contentSecurityPolicy || (a.cspReportOnly && !b.cspReportOnly))) return false;
  return b.referrerPolicy === null || a.referrerPolicy === b.referrerPolicy;
}

/**
 * Who may frame the route's pages, as a browser decides: an enforced CSP's `frame-ancestors`
 * wins over X-Frame-Options (CSP3), else X-Frame-Options. null: anyone.
 */
function framing(h: SecurityHeadersConfig): string | null {
  if (h.contentSecurityPolicy !== null && !h.cspReportOnly) {
    for (const directive of h.contentSecurityPolicy.split(';')) {
      const [name, ...sources] = directive.trim().toLowerCase().split(/\s+/);
      if (name === 'frame-ancestors') return sources.join(' ');
    }
  }
  if (h.frameOptions === null) return null;
  return h.frameOptions === 'DENY' ? "'none'" : "'self'";
}

function framingAtLeast(a: string | null, b: string | null): boolean {
  const rank = (f: string | null): number => (f === "'none'" ? 3 : f === "'self'" ? 2 : f === null ? 0 : 1);
  // Two different source lists (`https://a.test` and `'self' https://b.test`) are incomparable.
  return a === b || rank(a) > rank(b);
}

function csrfAtLeast(a: ProtectConfig, b: ProtectConfig): boolean {
  if (!b.csrf.enabled) return true;
  return a.csrf.enabled && a.csrf.trustedOrigins.every((o) => b.csrf.trustedOrigins.includes(o));
}

function bansAtLeast(a: ProtectConfig, b: ProtectConfig): boolean {
  if (b.bans === null) return true;
  const x = a.bans;
  return x !== null && x.authFailures <= b.bans.authFailures && x.window >= b.bans.window && x.duration >= b.bans.duration;
}

const SAME_SITE_RANK = { Strict: 3, Lax: 2, None: 1 } as const;

function cookiesAtLeast(a: CookiesConfig, b: CookiesConfig): boolean {
  if (b.secure && !a.secure) return false;
  if (b.httpOnly && !(a.httpOnly && a.httpOnlyExcept.every((n) => b.httpOnlyExcept.includes(n)))) return false;
  if (b.sameSite === null) return true;
  return a.sameSite !== null && SAME_SITE_RANK[a.sameSite] >= SAME_SITE_RANK[b.sameSite];
}
