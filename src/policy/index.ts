/**
 * Request policy: path canonicalization, host normalization, the route table and the access
 * decision. Pure functions only; the Fastify adapter lives elsewhere and calls, per request:
 * `normalizeHost` → `table.matchSite` → `canonicalizePath` → `table.matchRoute` → `decide`,
 * and forwards the *canonical* path (never the raw one) upstream.
 */
export { canonicalizePath, PathRejections } from './path.js';
export type { CanonicalPathResult, PathRejection } from './path.js';
export { normalizeHost } from './host.js';
export { compileRouteTable, matchingView } from './routes.js';
export type { RouteLike, RouteOf, RouteTable, SiteLike, StrictnessOrder } from './routes.js';
export { protectsAtLeastAs, routeAtLeastAsStrict } from './protection.js';
export type { ProtectedRoute } from './protection.js';
export {
  decide,
  isAtLeastAsStrict,
  REASON_AUTHENTICATED,
  REASON_INSUFFICIENT_ROLE,
  REASON_PUBLIC,
  REASON_ROLE_GRANTED,
  REASON_ROUTE_DENIED,
  REASON_UNAUTHENTICATED,
} from './decision.js';
export type { AccessRule, AllowReason, Decision, DenyReason, PrincipalRoles } from './decision.js';
