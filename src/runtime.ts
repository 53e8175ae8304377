/**
 * RuntimeState: everything derived from one validated configuration that the request path needs,
 * built aside and swapped in with one reference assignment (pomerium's pattern). A request keeps
 * the state it started with, so a reload never changes the rules in the middle of a request.
 */
import type { GatewayConfig, RouteConfig, SiteConfig, UpstreamTarget } from './config/types.js';
import { compileRouteTable, routeAtLeastAsStrict, type RouteTable } from './policy/index.js';
import { compileTrust, type TrustFn } from './proxy/forwarded.js';
import { OVERRIDE_HEADERS } from './proxy/headers.js';
import { UpstreamPool } from './proxy/upstreams.js';
import type { Authenticator } from './auth/index.js';
import { compileProtections, type RouteProtection } from './pipeline/protect.js';

export interface RuntimeState {
  readonly config: GatewayConfig;
  readonly routes: RouteTable<SiteConfig>;
  readonly trust: TrustFn;
  /** One pool per distinct target list, shared by the routes that use it. */
  readonly pools: ReadonlyMap<RouteConfig, UpstreamPool>;
  readonly authenticator: Authenticator | null;
  /** Lower-case header names only the gateway may set towards the upstream. */
  readonly gatewayOwnedHeaders: ReadonlySet<string>;
  /** Lower-case identity header names, in the order user, email, roles. */
  readonly identityHeaders: readonly [user: string, email: string, roles: string, issuer: string];
  /** `Strict-Transport-Security` value, or null when disabled. */
  readonly hsts: string | null;
  /** Compiled protections per route. */
  readonly protections: ReadonlyMap<RouteConfig, RouteProtection>;
  /** Per site, for its requests that matched no route. */
  readonly siteProtections: ReadonlyMap<SiteConfig, RouteProtection>;
  /** For requests that matched no site (unknown host, bad request line, …). */
  readonly fallbackProtection: RouteProtection;
}

export function hstsValue(hsts: GatewayConfig['tls']['hsts']): string | null {
  if (hsts.maxAge <= 0) return null;
  let v = `max-age=${hsts.maxAge}`;
  if (hsts.includeSubdomains) v += '; includeSubDomains';
  if (hsts.preload) v += '; preload';
  return v;
}

function poolKey(targets: readonly UpstreamTarget[]): string {
  return targets.map((t) => t.origin).join(' ');
}

export function buildRuntimeState(
  config: GatewayConfig,
  authenticator: Authenticator | null,
  previous?: RuntimeState,
): RuntimeState {
  // An ambiguous path gets the route that is strictest in access and in every protection.
  const routes = compileRouteTable(config.sites, routeAtLeastAsStrict);
  // Keep pools (and their passive-health marks) across reloads when the target list is unchanged.
  const oldPools = new Map<string, UpstreamPool>();
  if (previous) for (const p of previous.pools.values()) oldPools.set(poolKey(p.targets), p);
  const byKey = new Map<string, UpstreamPool>();
  const pools = new Map<RouteConfig, UpstreamPool>();
  for (const site of config.sites) {
    for (const route of site.routes) {
      const key = poolKey(route.upstream);
      let pool = byKey.get(key) ?? oldPools.get(key);
      if (!pool) pool = new UpstreamPool(route.upstream);
      byKey.set(key, pool);
      pools.set(route, pool);
    }
  }
  const protections = compileProtections(config);
  const ih = config.auth.identityHeaders;
  const identityHeaders = [ih.user.toLowerCase(), ih.email.toLowerCase(), ih.roles.toLowerCase(), ih.issuer.toLowerCase()] as const;
  return {
    config,
    routes,
    trust: compileTrust(config.trustedProxies),
    pools,
    authenticator,
    identityHeaders: [identityHeaders[0], identityHeaders[1], identityHeaders[2], identityHeaders[3]],
    gatewayOwnedHeaders: new Set([
      ...identityHeaders,
      'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'forwarded',
      'x-real-ip', 'x-request-id',
      ...OVERRIDE_HEADERS,
    ]),
    hsts: hstsValue(config.tls.hsts),
    protections: protections.routes,
    siteProtections: protections.sites,
    fallbackProtection: protections.fallback,
  };
}
