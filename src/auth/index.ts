/**
 * Bearer-token authentication: Authorization header → who the caller is.
 *
 * JWT access tokens are verified against their issuer's JWKS (RFC 7519, RFC 9068, RFC 8725);
 * opaque tokens are introspected (RFC 7662). Authorization (roles/scopes per route) is not here.
 */
export { createAuthenticator, DEFAULTS as AUTH_DEFAULTS } from './authenticator.js';
export { wwwAuthenticate } from './www-authenticate.js';
export { MAX_TOKEN_LENGTH } from './header.js';
export { claimedIssuer } from './jwt.js';
export type {
  AuthFailureReason,
  AuthLogger,
  AuthOutcome,
  Authenticator,
  AuthenticatorOptions,
  InvalidOutcome,
  Principal,
  UnavailableReason,
} from './types.js';
