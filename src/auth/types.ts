/**
 * Public types of the auth module: what `authenticate()` answers and who the caller is.
 *
 * Authentication only: the caller's identity. Whether that identity may use a route is the policy
 * module's decision (roles, scopes).
 */

/** The only output of authentication: who presented the token. Frozen; shared between requests. */
export interface Principal {
  /** `sub` claim (required). */
  readonly subject: string;
  readonly email: string | null;
  /** From the issuer's `rolesClaim` (dot path); empty when the claim is absent. */
  readonly roles: readonly string[];
  /** The issuer that vouched for the token, exactly as configured. */
  readonly issuer: string;
  /** `client_id` (RFC 9068 / RFC 7662), else `azp`, else null. */
  readonly clientId: string | null;
  readonly tokenType: 'jwt' | 'opaque';
  /** Milliseconds since the epoch after which the token must not be accepted. */
  readonly expiresAt: number;
  /** `scope` (space separated, RFC 8693 §4.2) or `scp` (array), empty when absent. */
  readonly scopes: readonly string[];
}

/**
 * Stable reason codes for logs and metrics. Never sent to the client (it gets a generic
 * description, see `wwwAuthenticate`).
 */
export type AuthFailureReason =
  // header (RFC 6750 §2.1)
  | 'malformed_header'
  | 'multiple_headers'
  | 'not_bearer'
  | 'token_too_large'
  // which issuer
  | 'malformed_token'
  | 'unknown_issuer'
  // signature / JOSE
  | 'alg_not_allowed'
  | 'bad_signature'
  | 'unknown_kid'
  // claims
  | 'expired'
  | 'not_yet_valid'
  | 'bad_issuer'
  | 'bad_audience'
  | 'missing_exp'
  | 'missing_sub'
  | 'bad_claims'
  // introspection (RFC 7662)
  | 'inactive_token'
  /** Not a bearer access token: a refresh or ID token, or one bound to a key (`cnf`). */
  | 'wrong_token_type';

/** Why the gateway could not decide (answered with 503, never as "denied"). */
export type UnavailableReason =
  | 'jwks_unavailable'
  | 'discovery_failed'
  | 'introspection_failed'
  /** A bug: logged, answered 503 rather than letting a request through or crashing. */
  | 'internal_error';

export type InvalidOutcome = {
  readonly kind: 'invalid';
  readonly status: 400 | 401;
  readonly error: 'invalid_request' | 'invalid_token';
  readonly reason: AuthFailureReason;
};

export type AuthOutcome =
  /** No Authorization header at all. */
  | { readonly kind: 'anonymous' }
  | { readonly kind: 'authenticated'; readonly principal: Principal }
  | InvalidOutcome
  /** Technical failure (IdP down, no keys yet): the gateway answers 503. */
  | { readonly kind: 'unavailable'; readonly reason: UnavailableReason };

/** The subset of a pino logger this module uses. */
export interface AuthLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export interface AuthenticatorOptions {
  /** Clock in milliseconds; defaults to `Date.now`. Drives every expiry, cache and cooldown. */
  readonly now?: () => number;
  readonly logger?: AuthLogger;
  /**
   * HTTP client for IdP calls (discovery, JWKS, introspection). Defaults to a node:http(s) client
   * that honours the issuer's `caBundle`; when given, `caBundle` is the caller's business.
   */
  readonly fetch?: typeof fetch;
  /** Called after every JWKS fetch attempt (metrics). */
  readonly onJwksRefresh?: (issuer: string, result: 'ok' | 'error') => void;
  /** Minimum milliseconds between two JWKS fetches of one issuer. Default 30 000. */
  readonly jwksCooldown?: number;
  /** Milliseconds after which cached keys are refreshed in the background. Default 600 000. */
  readonly jwksMaxAge?: number;
  /** Timeout of each IdP HTTP call in milliseconds. Default 5 000. */
  readonly httpTimeout?: number;
  /** Entries of the verified-token cache. Default 10 000. */
  readonly cacheSize?: number;
  /** Milliseconds a negative introspection answer is cached. Default 10 000. */
  readonly negativeCacheTtl?: number;
}

export interface Authenticator {
  /**
   * OIDC discovery and first JWKS fetch for every issuer. Never throws when an IdP is down: it
   * logs and keeps retrying in the background with backoff; `ready()` tells when all are loaded.
   */
  start(): Promise<void>;
  /** True once every issuer has keys (JWT) and endpoints (introspection). */
  ready(): boolean;
  /** `authorization`: the raw header value(s) as Node gives them. Never throws. */
  authenticate(authorization: string | string[] | undefined): Promise<AuthOutcome>;
  /**
   * The outcome `authenticate` gives, synchronously when it is known without any I/O: no header, a
   * malformed one, or a token verified before and still in the cache; otherwise a promise of it.
   * The header is parsed and the token hashed once either way. Lets the hot path skip a promise
   * per request. Never throws.
   */
  check(authorization: string | string[] | undefined): AuthOutcome | Promise<AuthOutcome>;
  /** Stops background retries. */
  close(): Promise<void>;
}
