/**
 * Stage 2 of the pipeline: authentication (auth/) then the route's access rule (policy/).
 *
 * Public routes never look at the token (and the upstream gets no identity headers there);
 * `deny` routes refuse before any crypto. A technical failure of token validation (IdP down,
 * no keys yet) is a 503, never a denial. The precise reason goes to the log only.
 */
import type { GatewayErrorCode } from '../errors.js';
import { decide } from '../policy/index.js';
import { wwwAuthenticate, type AuthOutcome } from '../auth/index.js';
import type { RequestContext } from './context.js';

export interface AuthRefusal {
  readonly status: number;
  readonly code: GatewayErrorCode;
  readonly reason: string;
  readonly headers?: Record<string, string>;
}

/**
 * The refusal for this request, or null to let it through. Synchronous when the token's outcome is
 * known without I/O (no token, or one verified before and cached): the hot path allocates no promise.
 */
export function authorizeRequest(ctx: RequestContext, authorization: string | string[] | undefined): AuthRefusal | null | Promise<AuthRefusal | null> {
  const route = ctx.route!;
  if (route.access === 'public') return null;
  if (route.access === 'deny') return { status: 403, code: 'GW_ERR_FORBIDDEN', reason: 'route_denied' };

  const realm = ctx.state.config.auth.realm;
  const auth = ctx.state.authenticator;
  if (authorization === undefined) {
    return { status: 401, code: 'GW_ERR_UNAUTHENTICATED', reason: 'unauthenticated', headers: { 'www-authenticate': wwwAuthenticate(realm, null) } };
  }
  if (auth === null) {
    // No issuer is configured, so no token can be valid.
    return { status: 401, code: 'GW_ERR_INVALID_TOKEN', reason: 'token_unknown_issuer', headers: { 'www-authenticate': wwwAuthenticate(realm, { kind: 'invalid', status: 401, error: 'invalid_token', reason: 'unknown_issuer' }) } };
  }
  const outcome = auth.check(authorization);
  if (outcome instanceof Promise) return outcome.then((o) => judge(ctx, o));
  return judge(ctx, outcome);
}

function judge(ctx: RequestContext, outcome: AuthOutcome): AuthRefusal | null {
  const route = ctx.route!;
  const realm = ctx.state.config.auth.realm;
  switch (outcome.kind) {
    case 'anonymous':
      return { status: 401, code: 'GW_ERR_UNAUTHENTICATED', reason: 'unauthenticated', headers: { 'www-authenticate': wwwAuthenticate(realm, null) } };
    case 'invalid':
      return {
        status: outcome.status,
        code: outcome.status === 400 ? 'GW_ERR_BAD_REQUEST' : 'GW_ERR_INVALID_TOKEN',
        reason: `token_${outcome.reason}`,
        headers: { 'www-authenticate': wwwAuthenticate(realm, outcome) },
      };
    case 'unavailable':
      return { status: 503, code: 'GW_ERR_AUTH_UNAVAILABLE', reason: `auth_unavailable: ${outcome.reason}`, headers: { 'retry-after': '5' } };
    case 'authenticated':
      break;
  }
  ctx.principal = outcome.principal;
  const decision = decide(route, outcome.principal);
  if (decision.allow) return null;
  if (decision.status === 403) {
    return {
      status: 403,
      code: 'GW_ERR_FORBIDDEN',
      reason: decision.reason,
      headers: decision.reason === 'insufficient_role' ? { 'www-authenticate': wwwAuthenticate(realm, 'insufficient_scope') } : undefined,
    };
  }
  return { status: 401, code: 'GW_ERR_UNAUTHENTICATED', reason: decision.reason, headers: { 'www-authenticate': wwwAuthenticate(realm, null) } };
}
