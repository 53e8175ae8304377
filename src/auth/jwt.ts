/**
 * JWT access tokens (RFC 7519, RFC 9068) verified with jose against ONE issuer's keys.
 */
import { decodeJwt, errors as joseErrors, jwtVerify } from 'jose';
import type { JWTPayload } from 'jose';
import type { IssuerConfig } from '../config/types.js';
import { isAccessToken } from './claims.js';
import { KeysUnavailable } from './jwks.js';
import type { IssuerKeys } from './jwks.js';
import type { AuthFailureReason } from './types.js';
import { parseAuthorization } from './header.js';

/** Exactly three dot-separated parts (JWS compact, RFC 7515 §7.1); JWE (5 parts) is not accepted. */
export function looksLikeJwt(token: string): boolean {
  const first = token.indexOf('.');
  if (first < 0) return false;
  const second = token.indexOf('.', first + 1);
  return second > 0 && token.indexOf('.', second + 1) < 0;
}

/**
 * The `iss` of a JWT, read WITHOUT verifying anything: it only selects which issuer's keys and
 * rules to verify with, so a lie here can only select the wrong keys and fail. `undefined` when
 * the payload does not decode to a JSON object, `null` when it has no string `iss`.
 */
export function unverifiedIssuer(token: string): string | null | undefined {
  let payload: JWTPayload;
  try {
    payload = decodeJwt(token);
  } catch {
    return undefined;
  }
  return typeof payload.iss === 'string' ? payload.iss : null;
}

export type JwtResult =
  | { readonly ok: true; readonly claims: JWTPayload }
  | { readonly ok: false; readonly reason: AuthFailureReason }
  | { readonly ok: false; readonly reason: 'jwks_unavailable' };

/** Maps jose's coded errors to our reason codes; anything unexpected counts as a bad token. */
export function reasonFor(err: unknown): AuthFailureReason | 'jwks_unavailable' {
  if (err instanceof KeysUnavailable) return 'jwks_unavailable';
  if (err instanceof joseErrors.JWTExpired) return 'expired';
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    // reason 'invalid' = present but not a NumericDate/string: a malformed claims set
    if (err.reason === 'invalid') return 'bad_claims';
    if (err.claim === 'exp') return 'missing_exp';
    if (err.claim === 'nbf') return 'not_yet_valid';
    if (err.claim === 'iss') return 'bad_issuer';
    if (err.claim === 'aud') return 'bad_audience';
    return 'bad_claims';
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return 'alg_not_allowed';
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'bad_signature';
  if (err instanceof joseErrors.JWKSNoMatchingKey) return 'unknown_kid';
  // Several keys matched (no kid) and none verified: jose tries each, then says this.
  if (err instanceof joseErrors.JWKSMultipleMatchingKeys) return 'bad_signature';
  // ERR_JOSE_NOT_SUPPORTED (e.g. an allowed alg with no key type in the set), ERR_JWS_INVALID,
  // ERR_JWT_INVALID (payload not a JSON object), bad crit/b64…
  return 'malformed_token';
}

/** Verifier bound to one issuer; the option arrays are built once, not per request. */
export function createJwtVerifier(issuer: IssuerConfig, keys: IssuerKeys): (token: string, now: number) => Promise<JwtResult> {
  const algorithms = [...issuer.algorithms];
  const audience = [...issuer.audiences];
  const clockTolerance = issuer.clockSkew / 1000; // jose takes seconds
  return async (token, now) => {
    try {
      const { payload } = await jwtVerify(token, keys.getKey, {
        algorithms,
        issuer: issuer.issuer,
        audience,
        clockTolerance,
        requiredClaims: ['exp'],
        currentDate: new Date(now),
      });
      // A valid signature on an ID token, a refresh token or a key-bound token is no bearer access token.
      if (!isAccessToken(payload)) return { ok: false, reason: 'wrong_token_type' };
      return { ok: true, claims: payload };
    } catch (err) {
      return { ok: false, reason: reasonFor(err) };
    }
  };
}

/**
 * For the security log: the issuer a Bearer JWT names, when it is one of `configured` (so a log line
 * never carries an issuer string a client made up). Not verified: the token may be forged.
 */
export function claimedIssuer(authorization: string | readonly string[] | undefined, configured: readonly string[]): string | undefined {
  const parsed = parseAuthorization(authorization);
  if (parsed === null || 'kind' in parsed || !looksLikeJwt(parsed.token)) return undefined;
  const iss = unverifiedIssuer(parsed.token);
  return typeof iss === 'string' && configured.includes(iss) ? iss : undefined;
}
