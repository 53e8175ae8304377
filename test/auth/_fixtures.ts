// Shared setup for test/auth: a real oidc-provider IdP, config builders, a fake clock.
import type { AuthConfig, IssuerConfig } from '../../src/config/types.js';
// @ts-expect-error -- plain .mjs helper without types
import { startIdp as startIdpUntyped, signingKeys as signingKeysUntyped, RESOURCE, OPAQUE_RESOURCE } from '../helpers/idp.mjs';

export { RESOURCE, OPAQUE_RESOURCE };
export const RESOURCE_AUD = RESOURCE as string;
export const OPAQUE_AUD = OPAQUE_RESOURCE as string;

export interface Idp {
  issuer: string;
  port: number;
  requests: string[];
  keys: Array<Record<string, unknown> & { kid: string; alg: string }>;
  close(): Promise<void>;
}

export interface IdpOptions {
  port?: number;
  keys?: unknown[];
  accessTokenTTL?: number;
  /** Claims added to every access token (and introspection answer). */
  claims?: Record<string, unknown>;
}

export async function startIdp(opts: IdpOptions = {}): Promise<Idp> {
  const claims = opts.claims ?? { email: 'svc@app.test', realm_access: { roles: ['admin', 'ops'] } };
  const port: number = opts.port ?? 0;
  // 127.0.0.1 in the issuer: no localhost → ::1 surprises.
  const first = await startIdpUntyped({
    port,
    ...(port === 0 ? {} : { issuer: `http://127.0.0.1:${port}` }),
    keys: opts.keys,
    accessTokenTTL: opts.accessTokenTTL ?? 300,
    extraTokenClaims: async () => claims,
  });
  if (port !== 0) return first as Idp;
  // port 0: the helper picked a port and named the issuer localhost; restart with 127.0.0.1.
  const picked = (first as Idp).port;
  const keys = (first as Idp).keys;
  await (first as Idp).close();
  return startIdp({ ...opts, port: picked, keys });
}

export const signingKeys = (prefix: string): Promise<unknown[]> => signingKeysUntyped(prefix) as Promise<unknown[]>;

const basic = (id: string, secret: string): string => 'Basic ' + Buffer.from(`${id}:${secret}`).toString('base64');

/** client_credentials access token from the IdP: a JWT for RESOURCE, opaque for OPAQUE_RESOURCE. */
export async function getToken(idp: Idp, resource: string = RESOURCE_AUD): Promise<string> {
  const res = await fetch(`${idp.issuer}/token`, {
    method: 'POST',
    headers: { authorization: basic('svc', 'svc-secret') },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'api:read', resource }),
  });
  const body = (await res.json()) as { access_token?: string };
  if (typeof body.access_token !== 'string') throw new Error(`no token: ${JSON.stringify(body)}`);
  return body.access_token;
}

export function issuerConfig(idp: Idp, over: Partial<IssuerConfig> = {}): IssuerConfig {
  return {
    issuer: idp.issuer,
    audiences: [RESOURCE_AUD],
    algorithms: ['ES256', 'RS256'],
    jwksUri: null,
    rolesClaim: 'realm_access.roles',
    clockSkew: 0,
    introspection: null,
    caBundle: null,
    caBundlePem: null,
    ...over,
  };
}

export function authConfig(issuers: IssuerConfig[]): AuthConfig {
  return {
    issuers,
    identityHeaders: { user: 'X-Auth-User', email: 'X-Auth-Email', roles: 'X-Auth-Roles', issuer: 'X-Auth-Issuer' },
    forwardToken: false,
    realm: 'portcullis',
  };
}

/** A clock the test moves by hand; starts at real time (the IdP stamps tokens with real time). */
export function fakeClock(): { now: () => number; advance(ms: number): void } {
  let t = Date.now();
  return { now: () => t, advance: (ms) => { t += ms; } };
}

export const count = (idp: Idp, what: string): number => idp.requests.filter((r) => r === what).length;
