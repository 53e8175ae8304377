/**
 * Edge protections: security headers, Set-Cookie hardening, CSRF, rate-limit keys and adapter, bans.
 * Pure decision functions plus small classes; only `ratelimit.ts` knows about Fastify.
 */
export type { BanRules, CookieRules, CspDirectives, CsrfRules, HeadersRules, ProtectRules, RateLimitKeySpec, RateLimitRules } from './types.js';
export { applySecurityHeaders, computeSecurityHeaders, STRIPPED_RESPONSE_HEADERS } from './headers.js';
export type { ApplyContext, HeaderMap, ResponseHeaders, SecurityHeaderSet } from './headers.js';
export { hardenSetCookie, hardenSetCookies } from './cookies.js';
export type { CookieContext } from './cookies.js';
export { checkCsrf, normalizeOrigin } from './csrf.js';
export type { CsrfDecision, CsrfRefusal, CsrfRequest } from './csrf.js';
export { IPV6_PREFIX, ipKey, MAX_KEY_PART, rateLimitKey } from './client-key.js';
export type { ClientIdentity } from './client-key.js';
export { ACTIVE_BAN_KEY_PREFIX, BanList } from './bans.js';
export type { AuthFailureResult, BanListOptions, BanStatus, VerifiedBanStatus } from './bans.js';
export { gatewayRateLimitOptions, rateLimitStoreFor, routeLimiterOptions, routeRateLimitKey } from './ratelimit.js';
export type { GatewayRateLimitDeps, RouteRateLimit } from './ratelimit.js';
