/**
 * OAuth 2.0 Token Introspection (RFC 7662) for opaque tokens.
 */
import type { IntrospectionConfig, IssuerConfig } from '../config/types.js';
import { audienceMatches, buildPrincipal, isAccessToken } from './claims.js';
import type { IdpHttp } from './http.js';
import { IdpUnreachable } from './http.js';
import type { AuthFailureReason, Principal } from './types.js';

/** RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic's base64. */
function formEncode(value: string): string {
  return new URLSearchParams([['', value]]).toString().slice(1);
}

export function basicCredentials(cfg: IntrospectionConfig): string {
  return 'Basic ' + Buffer.from(`${formEncode(cfg.clientId)}:${formEncode(cfg.clientSecret)}`).toString('base64');
}

/** Asks the endpoint. Throws `IdpUnreachable` on network/timeout/non-200/non-JSON. */
export async function requestIntrospection(http: IdpHttp, endpoint: string, authorization: string, token: string): Promise<unknown> {
  const res = await http.request(endpoint, {
    method: 'POST',
    headers: { authorization, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token, token_type_hint: 'access_token' }).toString(),
  });
  if (res.status !== 200) throw new IdpUnreachable(`introspection answered ${res.status}`);
  return res.json;
}

export type IntrospectionVerdict =
  | { readonly ok: true; readonly principal: Principal; readonly cacheUntil: number }
  | { readonly ok: false; readonly reason: AuthFailureReason }
  /** Not a usable RFC 7662 answer (no boolean `active`): a technical failure, not a refusal. */
  | { readonly ok: false; readonly reason: 'introspection_failed' };

/**
 * Pure judgement of an introspection answer (RFC 7662 §2.2). The endpoint's word on `active` is
 * final, but the claims are still checked like a JWT's: another issuer's answer (`iss`), a token
 * for another resource or none named (`aud`, required), an expired one (`exp`: an endpoint with a
 * stale cache), a token that is not an access token (`token_type`, `token_use`, `typ`).
 */
export function judgeIntrospection(answer: unknown, issuer: IssuerConfig, cfg: IntrospectionConfig, now: number): IntrospectionVerdict {
  if (typeof answer !== 'object' || answer === null || Array.isArray(answer)) return { ok: false, reason: 'introspection_failed' };
  const a = answer as Record<string, unknown>;
  if (typeof a['active'] !== 'boolean') return { ok: false, reason: 'introspection_failed' };
  if (!a['active']) return { ok: false, reason: 'inactive_token' };
  if (a['iss'] !== undefined && a['iss'] !== issuer.issuer) return { ok: false, reason: 'bad_issuer' };
  // `audiences` must match, as for a JWT: an answer without `aud` does not say the token is for
  // this API (a refresh token, or an access token for another resource of the same IdP).
  if (!audienceMatches(a['aud'], issuer.audiences)) return { ok: false, reason: 'bad_audience' };
  if (!isAccessToken(a)) return { ok: false, reason: 'wrong_token_type' };
  const exp = a['exp'];
  const nbf = a['nbf'];
  if (exp !== undefined && (typeof exp !== 'number' || !Number.isFinite(exp))) return { ok: false, reason: 'bad_claims' };
  if (nbf !== undefined && (typeof nbf !== 'number' || !Number.isFinite(nbf))) return { ok: false, reason: 'bad_claims' };
  if (exp !== undefined && exp * 1000 <= now - issuer.clockSkew) return { ok: false, reason: 'expired' };
  if (nbf !== undefined && nbf * 1000 > now + issuer.clockSkew) return { ok: false, reason: 'not_yet_valid' };
  // Cached until min(exp, now + cache): a revoked token stays usable at most `cache` ms.
  const cacheUntil = exp === undefined ? now + cfg.cache : Math.min(exp * 1000, now + cfg.cache);
  const principal = buildPrincipal(a, {
    issuer: issuer.issuer,
    rolesClaim: issuer.rolesClaim,
    tokenType: 'opaque',
    expiresAt: exp === undefined ? cacheUntil : exp * 1000,
  });
  if (typeof principal === 'string') return { ok: false, reason: principal };
  return { ok: true, principal, cacheUntil };
}
