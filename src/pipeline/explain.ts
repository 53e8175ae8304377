/**
 * `portcullis explain`: runs a described request through the same resolve and authorize code the
 * gateway uses for real requests, and says what happens and why.
 */
import type { GatewayConfig } from '../config/types.js';
import { buildRuntimeState } from '../runtime.js';
import { newContext, resolveRequest } from './resolve.js';
import { authorizeRequest } from './authorize.js';
import { createAuthenticatorFor } from './auth-factory.js';
import type { Authenticator, AuthOutcome } from '../auth/index.js';
import pino from 'pino';

export interface ExplainInput {
  readonly method: string;
  /** Absolute URL as a client would use it: https://host[:port]/path?query */
  readonly url: string;
  /** A real bearer token, verified against the configured issuers (network access to the IdP). */
  readonly token?: string | undefined;
  /** Or: pretend an authenticated caller with these roles (no token needed). */
  readonly roles?: readonly string[] | undefined;
}

export interface Explanation {
  readonly method: string;
  readonly host: string;
  readonly rawPath: string;
  readonly canonicalPath: string | null;
  readonly site: string | null;
  readonly route: { id: string; path: string; methods: readonly string[] | null; access: string; roles: readonly string[] } | null;
  readonly upstream: readonly string[] | null;
  readonly principal: { subject: string; roles: readonly string[] } | null;
  readonly decision: { allow: boolean; status: number; reason: string };
}

/** An authenticator that accepts any token as a caller with the given roles. */
function rolesOnly(roles: readonly string[]): Authenticator {
  const outcome: AuthOutcome = {
    kind: 'authenticated',
    principal: { subject: 'explain', email: null, roles, issuer: 'explain', clientId: null, tokenType: 'opaque', expiresAt: Number.MAX_SAFE_INTEGER, scopes: [] },
  };
  return { start: async () => {}, ready: () => true, authenticate: async () => outcome, check: () => outcome, close: async () => {} };
}

export async function explain(config: GatewayConfig, input: ExplainInput): Promise<Explanation> {
  const url = new URL(input.url);
  const authenticator = input.roles ? rolesOnly(input.roles) : createAuthenticatorFor(config, pino({ level: 'silent' }));
  if (authenticator && input.token) await authenticator.start();
  try {
    const state = buildRuntimeState(config, authenticator);
    // `new URL` already resolved dot-segments; explain the raw path the user typed instead.
    const rawPath = rawPathOf(input.url);
    const req = { method: input.method, url: rawPath + url.search, headers: { host: url.host }, peer: '127.0.0.1', httpVersionMajor: 1 };
    const ctx = newContext(state, req, 0n);
    const refusal = resolveRequest(state, req, ctx);
    const base = {
      method: input.method,
      host: ctx.host || url.hostname,
      rawPath,
      canonicalPath: ctx.path || null,
      site: ctx.site?.id ?? null,
      route: ctx.route ? { id: ctx.route.id, path: ctx.route.path, methods: ctx.route.methods, access: ctx.route.access, roles: ctx.route.roles } : null,
      upstream: ctx.route ? ctx.route.upstream.map((u) => u.origin) : null,
    };
    if (refusal) return { ...base, principal: null, decision: { allow: false, status: refusal.status, reason: refusal.reason } };
    const authorization = input.token ? `Bearer ${input.token}` : input.roles ? 'Bearer explain' : undefined;
    const denied = await authorizeRequest(ctx, authorization);
    const principal = ctx.principal ? { subject: ctx.principal.subject, roles: ctx.principal.roles } : null;
    if (denied) return { ...base, principal, decision: { allow: false, status: denied.status, reason: denied.reason } };
    return { ...base, principal, decision: { allow: true, status: 200, reason: ctx.route!.access === 'public' ? 'public' : ctx.route!.roles.length ? 'role_granted' : 'authenticated' } };
  } finally {
    await authenticator?.close();
  }
}

function rawPathOf(url: string): string {
  const m = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*([^?#]*)/i.exec(url);
  return m && m[1] ? m[1] : '/';
}

export function formatExplanation(e: Explanation): string {
  const lines = [
    `request:        ${e.method} ${e.host}${e.rawPath}`,
    `canonical path: ${e.canonicalPath ?? '(refused before routing)'}`,
    `site:           ${e.site ?? '(none)'}`,
    `route:          ${e.route ? `${e.route.id}  path ${e.route.path}  methods ${e.route.methods ? e.route.methods.join(',') : 'any'}` : '(none)'}`,
    `requires:       ${e.route ? (e.route.access === 'public' ? 'nothing (public)' : e.route.access === 'deny' ? 'nothing can pass (deny)' : e.route.roles.length ? `a valid token with any of roles: ${e.route.roles.join(', ')}` : 'a valid token') : '-'}`,
    `upstream:       ${e.upstream ? e.upstream.join(', ') : '-'}`,
    `caller:         ${e.principal ? `${e.principal.subject} roles=[${e.principal.roles.join(', ')}]` : 'anonymous'}`,
    `decision:       ${e.decision.allow ? 'ALLOW' : 'DENY'} (${e.decision.status}) reason=${e.decision.reason}`,
  ];
  return lines.join('\n') + '\n';
}
