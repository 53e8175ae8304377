/**
 * Per-route protections, compiled once per configuration: the security-header set (built by
 * helmet at load time, so a request only copies a few strings), cookie rules, CSRF rules, the
 * rate limit and the ban rule — each already merged top level → site → route by the config.
 */
import type { GatewayConfig, ProtectConfig, RouteConfig, SiteConfig } from '../config/types.js';
import { computeSecurityHeaders, type BanRules, type CookieRules, type CsrfRules, type RouteRateLimit, type SecurityHeaderSet } from '../protect/index.js';

export interface RouteProtection {
  readonly headers: SecurityHeaderSet;
  readonly headerMode: 'keep' | 'override';
  readonly cookies: CookieRules;
  readonly csrf: CsrfRules;
  readonly rateLimit: RouteRateLimit | null;
  readonly bans: BanRules | null;
}

export function compileProtection(p: ProtectConfig, routeId: string, config: GatewayConfig): RouteProtection {
  const h = p.headers;
  let headers = computeSecurityHeaders(
      {
        contentSecurityPolicy: h.contentSecurityPolicy,
        cspReportOnly: h.cspReportOnly,
        frameOptions: h.frameOptions,
        referrerPolicy: h.referrerPolicy ?? 'strict-origin-when-cross-origin',
        upstream: h.upstream,
      },
      config.tls.hsts,
  );
  if (h.referrerPolicy === null) {
    // `referrer_policy: null` means "send none" (helmet always sends one).
    const { 'referrer-policy': _dropped, ...common } = headers.common;
    headers = { ...headers, common };
  }
  return {
    headers,
    headerMode: h.upstream,
    cookies: { secure: p.cookies.secure, httpOnly: p.cookies.httpOnly, httpOnlyExcept: p.cookies.httpOnlyExcept, sameSite: p.cookies.sameSite },
    csrf: { enabled: p.csrf.enabled, trustedOrigins: p.csrf.trustedOrigins },
    rateLimit: p.rateLimit
      ? {
          routeId,
          max: p.rateLimit.max,
          windowMs: p.rateLimit.window,
          key: p.rateLimit.key.type === 'header' ? { header: p.rateLimit.key.header } : p.rateLimit.key.type,
        }
      : null,
    bans: p.bans ? { authFailures: p.bans.authFailures, windowMs: p.bans.window, durationMs: p.bans.duration } : null,
  };
}

export interface CompiledProtections {
  readonly routes: Map<RouteConfig, RouteProtection>;
  /** For a site's requests that match none of its routes (404 and the like). */
  readonly sites: Map<SiteConfig, RouteProtection>;
  /** For requests that match no site. */
  readonly fallback: RouteProtection;
}

export function compileProtections(config: GatewayConfig): CompiledProtections {
  const routes = new Map<RouteConfig, RouteProtection>();
  const sites = new Map<SiteConfig, RouteProtection>();
  for (const site of config.sites) {
    sites.set(site, compileProtection(site.protect, `${site.id}:unmatched`, config));
    for (const route of site.routes) routes.set(route, compileProtection(route.protect, route.id, config));
  }
  return { routes, sites, fallback: compileProtection(config.protect, 'unmatched', config) };
}
