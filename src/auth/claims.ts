/**
 * Pure mapping from verified claims (JWT payload or RFC 7662 answer) to a `Principal`.
 */
import type { AuthFailureReason, Principal } from './types.js';

type Claims = Readonly<Record<string, unknown>>;

const isRecord = (v: unknown): v is Claims => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads a dot path (`realm_access.roles`). Own properties only, so `__proto__`/`constructor`
 * segments can never reach Object.prototype. A claim whose name itself contains a dot
 * (`https://example.com/roles`, Auth0 style) is tried as a whole first.
 */
export function readClaimPath(claims: Claims, path: string): unknown {
  if (Object.hasOwn(claims, path)) return claims[path];
  let cur: unknown = claims;
  for (const segment of path.split('.')) {
    if (!isRecord(cur) || !Object.hasOwn(cur, segment)) return undefined;
    cur = cur[segment];
  }
  return cur;
}

const EMPTY: readonly string[] = Object.freeze([]);

/** An array of strings (non-strings dropped), or a space/comma separated string. */
export function toStringList(value: unknown): readonly string[] {
  if (typeof value === 'string') {
    const parts = value.split(/[\s,]+/).filter((s) => s.length > 0);
    return parts.length === 0 ? EMPTY : Object.freeze(parts);
  }
  if (Array.isArray(value)) {
    const parts = value.filter((s): s is string => typeof s === 'string' && s.length > 0);
    return parts.length === 0 ? EMPTY : Object.freeze(parts);
  }
  return EMPTY;
}

// RFC 6749 §3.3: scope tokens are separated by spaces only (a comma is a legal scope character).
function splitScope(scope: string): readonly string[] {
  const parts = scope.split(' ').filter((s) => s.length > 0);
  return parts.length === 0 ? EMPTY : Object.freeze(parts);
}

/**
 * Whether claims (a JWT's payload, an introspection answer), where they say what kind of token
 * this is, say a bearer access token:
 * - `token_type` (RFC 7662 §2.2, the RFC 6749 §7.1 type): `Bearer`, not `DPoP`, `N_A` or
 *   `refresh_token`;
 * - `token_use` (Ory Hydra: `access_token`; Amazon Cognito: `access`, not `id`);
 * - `typ` (Keycloak: `Bearer`, not `Refresh`, `Offline` or `ID`);
 * - no `cnf` (RFC 7800): a token bound to a key (DPoP's `jkt`, RFC 9449; mTLS's `x5t#S256`,
 *   RFC 8705) is worthless without the proof of that key, which the gateway does not check.
 * A refresh token is for the token endpoint only (RFC 6749 §10.4) and outlives the access
 * token; an ID token is for the client, not for an API.
 */
export function isAccessToken(claims: Readonly<Record<string, unknown>>): boolean {
  const type = claims['token_type'];
  if (type !== undefined && (typeof type !== 'string' || type.toLowerCase() !== 'bearer')) return false;
  const use = claims['token_use'];
  if (use !== undefined && use !== 'access_token' && use !== 'access') return false;
  const typ = claims['typ'];
  if (typ !== undefined && (typeof typ !== 'string' || typ.toLowerCase() !== 'bearer')) return false;
  return claims['cnf'] === undefined;
}

/** RFC 7519 §4.1.3 / RFC 7662 §2.2: `aud` is a string or an array; any configured one matches. */
export function audienceMatches(aud: unknown, audiences: readonly string[]): boolean {
  if (typeof aud === 'string') return audiences.includes(aud);
  if (Array.isArray(aud)) return aud.some((a) => typeof a === 'string' && audiences.includes(a));
  return false;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const wellFormed = (s: string): boolean => !LONE_SURROGATE.test(s);

export function buildPrincipal(
  claims: Claims,
  ctx: { issuer: string; rolesClaim: string; tokenType: 'jwt' | 'opaque'; expiresAt: number },
): Principal | AuthFailureReason {
  const clientId = claims['client_id'] ?? claims['azp'];
  // RFC 9068 §2.2 makes `sub` mandatory in JWT access tokens; RFC 7662 §2.2 leaves it optional in
  // introspection answers, where a client_credentials token is identified by its `client_id`.
  const sub = claims['sub'] ?? (ctx.tokenType === 'opaque' ? clientId : undefined);
  if (typeof sub !== 'string' || sub.length === 0) return 'missing_sub';
  const email = claims['email'];
  const roles = toStringList(readClaimPath(claims, ctx.rolesClaim));
  // A lone UTF-16 surrogate (legal in JSON, not Unicode) has no UTF-8 form: the identity headers
  // could not carry it, and replacing it would let two different names arrive as one.
  if (!wellFormed(sub) || (typeof email === 'string' && !wellFormed(email)) || !roles.every(wellFormed)) return 'bad_claims';
  // RFC 8693 §4.2 `scope` (space separated); some IdPs (Azure, Okta) send `scp` as an array.
  const scope = claims['scope'] ?? claims['scp'];
  return Object.freeze({
    subject: sub,
    email: typeof email === 'string' ? email : null,
    roles,
    issuer: ctx.issuer,
    clientId: typeof clientId === 'string' ? clientId : null,
    tokenType: ctx.tokenType,
    expiresAt: ctx.expiresAt,
    scopes: typeof scope === 'string' ? splitScope(scope) : toStringList(scope),
  });
}
