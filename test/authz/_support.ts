// Shared setup for test/authz: a real oidc-provider IdP in front of which the real gateway runs,
// the issue's example policy as YAML, and forgers for attack tokens (signed with jose, never by hand).
import { SignJWT, importJWK, base64url, type JWK } from 'jose';
import { createHmac, createPublicKey } from 'node:crypto';
import { LOOPBACK_LISTEN, type LogRecord, type RunningGateway, type SeenRequest } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.mjs';
// @ts-expect-error -- plain .mjs helper without types
import { startIdp as startIdpUntyped, signingKeys as signingKeysUntyped, RESOURCE, OPAQUE_RESOURCE } from '../helpers/idp.mjs';

export const JWT_AUD = RESOURCE as string;
export const OPAQUE_AUD = OPAQUE_RESOURCE as string;

type PrivateJwk = JWK & { kid: string; alg: string };

export interface Idp {
  issuer: string;
  port: number;
  /** Every request the IdP received, as `METHOD /path`. */
  requests: string[];
  keys: PrivateJwk[];
  /** Claims added to the next tokens the IdP issues (mutable: set before `token()`). */
  claims: Record<string, unknown>;
  close(): Promise<void>;
}

export const ADMIN_CLAIMS = { email: 'svc@app.test', realm_access: { roles: ['admin', 'ops'] } };
export const USER_CLAIMS = { email: 'svc@app.test', realm_access: { roles: ['user'] } };


export const signingKeys = (prefix: string): Promise<PrivateJwk[]> => signingKeysUntyped(prefix) as Promise<PrivateJwk[]>;

/**
 * A real OpenID provider on 127.0.0.1 (issuer `http://127.0.0.1:PORT`, no localhost → ::1
 * surprises). Pass `port` and `keys` to restart "the same" IdP, e.g. with rotated keys.
 */
export async function startIdp(opts: { port?: number; keys?: PrivateJwk[]; claims?: Record<string, unknown> } = {}): Promise<Idp> {
  const port = opts.port ?? (await freePort());
  const state = { claims: opts.claims ?? { ...ADMIN_CLAIMS } };
  const inner = (await startIdpUntyped({
    port,
    issuer: `http://127.0.0.1:${port}`,
    keys: opts.keys,
    accessTokenTTL: 300,
    extraTokenClaims: async () => state.claims,
  })) as Omit<Idp, 'claims'>;
  return {
    issuer: inner.issuer,
    port: inner.port,
    requests: inner.requests,
    keys: inner.keys,
    get claims() {
      return state.claims;
    },
    set claims(c: Record<string, unknown>) {
      state.claims = c;
    },
    close: () => inner.close(),
  };
}

/** A client_credentials access token from the IdP: a JWT for JWT_AUD, opaque for OPAQUE_AUD. */
export async function idpToken(idp: Idp, opts: { claims?: Record<string, unknown>; resource?: string } = {}): Promise<string> {
  if (opts.claims) idp.claims = opts.claims;
  const res = await fetch(`${idp.issuer}/token`, {
    method: 'POST',
    headers: { authorization: 'Basic ' + Buffer.from('svc:svc-secret').toString('base64') },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'api:read', resource: opts.resource ?? JWT_AUD }),
  });
  const body = (await res.json()) as { access_token?: string };
  if (typeof body.access_token !== 'string') throw new Error(`no token: ${JSON.stringify(body)}`);
  return body.access_token;
}

export const count = (idp: Idp, what: string): number => idp.requests.filter((r) => r === what).length;

export interface PolicyOptions {
  /** Extra lines under `auth:` (indented by two spaces). */
  authExtra?: string;
  /** Extra keys on the issuer entry (indented by six spaces). */
  issuerExtra?: string;
  /** Replaces the example routes. */
  routes?: string;
}

/**
 * The issue's example configuration, on app.test: `/health` public, `/admin` GET/POST admin,
 * `/admin` deny otherwise, `/` authenticated.
 */
export function policyYaml(issuer: string, upstream: string, o: PolicyOptions = {}): string {
  return `${LOOPBACK_LISTEN}auth:
  issuers:
    - issuer: ${issuer}
      audiences: [${JWT_AUD}]
      algorithms: [ES256, RS256]
      roles_claim: realm_access.roles
      clock_skew: 5s
${o.issuerExtra ?? ''}${o.authExtra ?? ''}sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes:
${
  o.routes ??
  `      - { path: /health, access: public }
      - { path: /admin, methods: [GET, POST], roles: [admin] }
      - { path: /admin, access: deny }
      - { path: /, access: authenticated }
`
}`;
}

export const bearer = (token: string): { authorization: string } => ({ authorization: `Bearer ${token}` });

/** The gateway's access-log lines. */
export const accessLines = (gw: RunningGateway): LogRecord[] => gw.logs.filter((l) => l.type === 'access');
export const lastAccess = (gw: RunningGateway): LogRecord | undefined => accessLines(gw).at(-1);

/** Requests the upstream saw whose canonical path (before `?`) satisfies `pred`. */
export const seenWhere = (seen: readonly SeenRequest[], pred: (path: string) => boolean): SeenRequest[] =>
  seen.filter((s) => pred(s.url.split('?')[0] ?? ''));

// ---------------------------------------------------------------------------------------------
// Attack tokens

const nowSec = (): number => Math.floor(Date.now() / 1000);

export function privateKey(idp: Idp, alg: 'ES256' | 'RS256'): PrivateJwk {
  const k = idp.keys.find((key) => key.alg === alg);
  if (!k) throw new Error(`IdP has no ${alg} key`);
  return k;
}

/** Standard claims of a token the gateway should accept, to be spoiled one at a time. */
export function goodClaims(idp: Idp, over: Record<string, unknown> = {}): Record<string, unknown> {
  return { iss: idp.issuer, aud: JWT_AUD, sub: 'mallory', iat: nowSec(), exp: nowSec() + 300, ...ADMIN_CLAIMS, ...over };
}

/** Signs `claims` with a private JWK (the IdP's own key unless another is given). Claims set to undefined are dropped. */
export async function sign(key: PrivateJwk, claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  const payload = Object.fromEntries(Object.entries(claims).filter(([, v]) => v !== undefined));
  const k = await importJWK(key, key.alg);
  return new SignJWT(payload).setProtectedHeader({ alg: key.alg, typ: 'at+jwt', kid: key.kid, ...header }).sign(k);
}

const b64json = (v: unknown): string => base64url.encode(JSON.stringify(v));

/** An unsecured JWT (RFC 7519 §6): `alg` as given (`none`, `None`, `NONE`…), empty signature. */
export function unsignedToken(claims: Record<string, unknown>, alg: string, kid?: string): string {
  return `${b64json({ alg, typ: 'at+jwt', ...(kid ? { kid } : {}) })}.${b64json(claims)}.`;
}

/**
 * The classic algorithm-confusion forgery (RFC 8725 §2.1): HS256 with the issuer's *public* key
 * (as PEM, the form a naive verifier would feed to HMAC) as the secret. jose refuses to build it
 * (rightly), so the MAC is computed with node:crypto's HMAC.
 */
export function hs256WithPublicKey(publicJwk: JWK, claims: Record<string, unknown>, kid: string): string {
  const pem = createPublicKey({ key: publicJwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  const input = `${b64json({ alg: 'HS256', typ: 'at+jwt', kid })}.${b64json(claims)}`;
  return `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`;
}

export function publicJwk(key: PrivateJwk): JWK {
  const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pub } = key;
  return pub;
}

/** Replaces the payload of a signed token, keeping header and signature (a tampered token). */
export function tamper(token: string, change: (claims: Record<string, unknown>) => Record<string, unknown>): string {
  const [h, p, s] = token.split('.') as [string, string, string];
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
  return `${h}.${b64json(change(claims))}.${s}`;
}

export function payloadOf(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}
