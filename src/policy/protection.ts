/**
 * Which of two routes protects at least as much, for the route table's ambiguous paths.
 *
 * A path the upstream may read under either of two routes (`/account/HOOK`: a case-sensitive app
 * serves it under `/account`, a case-insensitive one under `/account/hook`) must get the
 * treatment of the stricter reading in everything the gateway enforces, not only in who may pass:
 * a nested route that turns CSRF off, allows larger bodies, has no rate limit or lets pages be
 * framed would otherwise lend those to a resource of its parent. Pure; no I/O.
 */
import { isDeepStrictEqual } from 'node:util';
import type { CookiesConfig, ProtectConfig, RateLimitConfig, RouteConfig, SecurityHeadersConfig } from '../config/types.js';
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

/** Not a total order: two sets where each is stronger somewhere are incomparable (both false). */
export function protectsAtLeastAs(a: ProtectConfig, b: ProtectConfig): boolean {
  return csrfAtLeast(a, b) && rateLimitAtLeast(a.rateLimit, b.rateLimit) && bansAtLeast(a, b) && cookiesAtLeast(a.cookies, b.cookies) && headersAtLeast(a.headers, b.headers);
}

const FRAME_RANK = { DENY: 2, SAMEORIGIN: 1 } as const;

function headersAtLeast(a: SecurityHeadersConfig, b: SecurityHeadersConfig): boolean {
  if ((a.frameOptions === null ? 0 : FRAME_RANK[a.frameOptions]) < (b.frameOptions === null ? 0 : FRAME_RANK[b.frameOptions])) return false;
  if (b.upstream === 'override' && a.upstream !== 'override') return false;
  // One policy is not "stricter" than another in general: the same one, enforced if b enforces it.
  if (b.contentSecurityPolicy !== null && (a.contentSecurityPolicy !== b.contentSecurityPolicy || (a.cspReportOnly && !b.cspReportOnly))) return false;
  return b.referrerPolicy === null || a.referrerPolicy === b.referrerPolicy;
}

function csrfAtLeast(a: ProtectConfig, b: ProtectConfig): boolean {
  if (!b.csrf.enabled) return true;
  return a.csrf.enabled && a.csrf.trustedOrigins.every((o) => b.csrf.trustedOrigins.includes(o));
}

function rateLimitAtLeast(a: RateLimitConfig | null, b: RateLimitConfig | null): boolean {
  if (b === null) return true;
  // Fewer requests in a window at least as long, counted per the same key.
  return a !== null && isDeepStrictEqual(a.key, b.key) && a.max <= b.max && a.window >= b.window;
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
