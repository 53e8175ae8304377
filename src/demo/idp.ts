/**
 * The demo's local OpenID provider (oidc-provider, a certified OP): issues ES256 JWT access tokens
 * with the client_credentials grant for two demo callers, so `npm run demo` can show role checks
 * without any external service. Development only: secrets are fixed and keys live in memory.
 */
import http from 'node:http';
// oidc-provider ships no type declarations; the demo uses a small, stable part of its API.
// @ts-expect-error -- untyped module
import Provider from 'oidc-provider';
import { exportJWK, generateKeyPair } from 'jose';

export const DEMO_AUDIENCE = 'https://demo.localhost';

/** Demo callers: client id → [secret, roles, email]. */
export const DEMO_CLIENTS: Record<string, { secret: string; roles: string[]; email: string }> = {
  'demo-admin': { secret: 'demo-admin-secret', roles: ['admin', 'user'], email: 'admin@demo.localhost' },
  'demo-user': { secret: 'demo-user-secret', roles: ['user'], email: 'user@demo.localhost' },
};

export async function startDemoIdp(port: number, host = '127.0.0.1'): Promise<{ issuer: string; close(): Promise<void> }> {
  const issuer = `http://${host}:${port}`;
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'demo-es256' };
  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },
    clients: Object.entries(DEMO_CLIENTS).map(([id, c]) => ({
      client_id: id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      // Only an ES256 key exists; oidc-provider's RS256 default would reject every client.
      id_token_signed_response_alg: 'ES256',
    })),
    scopes: ['api'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => DEMO_AUDIENCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => ({
          scope: 'api',
          audience: DEMO_AUDIENCE,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    extraTokenClaims: async (_ctx: unknown, token: { clientId?: string }) => {
      const c = token.clientId ? DEMO_CLIENTS[token.clientId] : undefined;
      return c ? { roles: c.roles, email: c.email } : {};
    },
  });
  const callback = provider.callback() as http.RequestListener;
  const server = http.createServer(callback);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    issuer,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
