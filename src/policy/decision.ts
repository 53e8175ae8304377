/**
 * The access decision: a pure function of the matched route and the authenticated principal.
 * Reasons are logged and counted, never sent to the client (STYLE §7.3 principle 8).
 */
import type { Access } from '../config/types.js';

/** Allowed: the route is public (no principal needed). */
export const REASON_PUBLIC = 'public';
/** Allowed: the route only needs an authenticated principal, and there is one. */
export const REASON_AUTHENTICATED = 'authenticated';
/** Allowed: the principal holds one of the route's roles. */
export const REASON_ROLE_GRANTED = 'role_granted';
/** Refused (401): the route is protected and the request carried no valid credentials. */
export const REASON_UNAUTHENTICATED = 'unauthenticated';
/** Refused (403): the route is `deny`, whoever asks. */
export const REASON_ROUTE_DENIED = 'route_denied';
/** Refused (403): authenticated, but none of the route's roles. */
export const REASON_INSUFFICIENT_ROLE = 'insufficient_role';

export type AllowReason = typeof REASON_PUBLIC | typeof REASON_AUTHENTICATED | typeof REASON_ROLE_GRANTED;
export type DenyReason = typeof REASON_UNAUTHENTICATED | typeof REASON_ROUTE_DENIED | typeof REASON_INSUFFICIENT_ROLE;

export type Decision =
  | { readonly allow: true; readonly reason: AllowReason }
  | { readonly allow: false; readonly status: 401 | 403; readonly reason: DenyReason };

/** What a decision reads from a route (a `RouteConfig` fits). */
export interface AccessRule {
  readonly access: Access;
  /** Non-empty: authenticated and holding any one of these (exact, case-sensitive match). */
  readonly roles: readonly string[];
}

/** What a decision reads from the authenticated caller; `null` = anonymous. */
export interface PrincipalRoles {
  readonly roles: readonly string[];
}

// Frozen results: the hot path allocates nothing.
const ALLOW_PUBLIC: Decision = Object.freeze({ allow: true, reason: REASON_PUBLIC });
const ALLOW_AUTHENTICATED: Decision = Object.freeze({ allow: true, reason: REASON_AUTHENTICATED });
const ALLOW_ROLE: Decision = Object.freeze({ allow: true, reason: REASON_ROLE_GRANTED });
const DENY_UNAUTHENTICATED: Decision = Object.freeze({ allow: false, status: 401, reason: REASON_UNAUTHENTICATED });
const DENY_ROUTE: Decision = Object.freeze({ allow: false, status: 403, reason: REASON_ROUTE_DENIED });
const DENY_ROLE: Decision = Object.freeze({ allow: false, status: 403, reason: REASON_INSUFFICIENT_ROLE });

/**
 * Decide whether `principal` may use `route`.
 *
 * `deny` wins over everything (403 even for authenticated callers). Non-empty `roles` require an
 * authenticated principal holding one of them, whatever `access` says: a role list is never
 * silently ignored. A protected route without a principal is 401 (RFC 9110 §15.5.2: the client may
 * retry with credentials); with a principal lacking the role it is 403.
 */
export function decide(route: AccessRule, principal: PrincipalRoles | null): Decision {
  if (route.access === 'deny') return DENY_ROUTE;
  if (route.roles.length > 0) {
    if (principal === null) return DENY_UNAUTHENTICATED;
    for (const role of principal.roles) {
      if (route.roles.includes(role)) return ALLOW_ROLE;
    }
    return DENY_ROLE;
  }
  if (route.access === 'public') return ALLOW_PUBLIC;
  return principal === null ? DENY_UNAUTHENTICATED : ALLOW_AUTHENTICATED;
}

/**
 * True when every caller `decide` lets through `a` is also let through `b`, i.e. `a` is at least as
 * strict as `b`. `undefined` stands for "no route" (404), which lets nobody through. Used by the
 * route table to settle a path that upstreams may read as either of two routes.
 */
export function isAtLeastAsStrict(a: AccessRule | undefined, b: AccessRule | undefined): boolean {
  if (a === undefined || a.access === 'deny') return true;
  if (b === undefined || b.access === 'deny') return false;
  const aRoles = a.roles.length > 0;
  const bRoles = b.roles.length > 0;
  if (!bRoles && b.access === 'public') return true;
  if (!aRoles && a.access === 'public') return false;
  // Both need a principal from here on.
  if (!bRoles) return true;
  if (!aRoles) return false;
  return a.roles.every((r) => b.roles.includes(r));
}
