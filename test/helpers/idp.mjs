// Dev/test OpenID Provider built on oidc-provider v9 (Node >= 20.19).
// - discovery + JWKS, RS256/ES256 keys generated at start
// - client_credentials -> JWT access token for resource RESOURCE (RFC 8707 + RFC 9068)
// - authorization_code + PKCE (S256): /interaction/:uid auto-logs-in TEST_USER and
//   auto-consents (no UI); http://localhost:PORT/cb echoes the callback params as JSON
// - token introspection (RFC 7662) at /token/introspection
//
//   import { startIdp } from './oidc-idp.mjs';
//   const idp = await startIdp();  // free port; idp.issuer, idp.port, idp.close()
// CLI: node oidc-idp.mjs [port=3000]
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import Provider, { errors } from 'oidc-provider';
import { freePort } from './ports.mjs';
import { generateKeyPair, exportJWK } from 'jose';

export const RESOURCE = 'https://api.app.test';          // JWT (RFC 9068) access tokens
export const OPAQUE_RESOURCE = 'https://opaque.app.test'; // opaque tokens -> use introspection
export const TEST_USER = 'alice';

export async function signingKeys(prefix = 'test') {
  const out = [];
  for (const alg of ['RS256', 'ES256']) {
    const { privateKey } = await generateKeyPair(alg, { extractable: true });
    out.push({ ...(await exportJWK(privateKey)), alg, use: 'sig', kid: `${prefix}-${alg.toLowerCase()}` });
  }
  return out;
}


// port 0 = pick a free port (the issuer URL must be known before the Provider is built)
// Extensions for test/auth (Portcullis):
// - `keys`: signing JWKs (private) to use instead of fresh ones: restart on the same port with new
//   keys to simulate rotation; `signingKeys()` is exported to make them
// - `extraTokenClaims(ctx, token)`: passed to oidc-provider (roles/email claims, sub for opaque tokens)
// - `requests`: every request the IdP received, as `METHOD /path` (to count JWKS fetches)
export async function startIdp({ port = 0, host = '127.0.0.1', issuer, redirectUris, accessTokenTTL = 300, keys, extraTokenClaims } = {}) {
  port ||= await freePort();
  keys ??= await signingKeys();
  const requests = [];
  issuer ??= `http://localhost:${port}`;
  redirectUris ??= [`http://localhost:${port}/cb`];
  const provider = new Provider(issuer, {
    jwks: { keys },
    ...(extraTokenClaims ? { extraTokenClaims } : {}),
    clients: [
      { // machine-to-machine
        client_id: 'svc', client_secret: 'svc-secret',
        grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      { // browser app, public client, PKCE
        client_id: 'web', token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
        redirect_uris: redirectUris,
      },
      { // the gateway itself, for introspection
        client_id: 'gateway', client_secret: 'gateway-secret',
        grant_types: [], response_types: [], redirect_uris: [],
      },
    ],
    scopes: ['openid', 'profile', 'email', 'offline_access', 'api:read', 'api:write'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, email: `${sub}@app.test`, email_verified: true, name: sub }),
    }),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },          // replaced by the auto-login below
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,      // token is for RESOURCE unless ?resource= says otherwise
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (resourceIndicator === RESOURCE) {
            return {
              scope: 'api:read api:write', audience: RESOURCE, accessTokenTTL,
              accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } },
            };
          }
          if (resourceIndicator === OPAQUE_RESOURCE) {
            // NB: oidc-provider refuses to introspect JWT access tokens
            // ("Structured JWT Tokens cannot be introspected"), so introspection tests need these
            return { scope: 'api:read api:write', audience: OPAQUE_RESOURCE, accessTokenTTL, accessTokenFormat: 'opaque' };
          }
          throw new errors.InvalidTarget();
        },
      },
    },
    pkce: { required: () => true },
    ttl: {
      AccessToken: accessTokenTTL, ClientCredentials: accessTokenTTL, IdToken: 3600, RefreshToken: 86400,
      Grant: 86400, Session: 86400, Interaction: 600, AuthorizationCode: 60,
    },
  });
  provider.on('server_error', (ctx, err) => console.error('[idp] server_error', err));

  const callback = provider.callback();
  const server = http.createServer(async (req, res) => {
    requests.push(`${req.method} ${req.url.split('?')[0]}`);
    try {
      if (req.url.startsWith('/interaction/')) {
        // dev interaction: log in TEST_USER and grant whatever is asked, no UI
        const details = await provider.interactionDetails(req, res);
        const { prompt, params, session } = details;
        if (prompt.name === 'login') {
          await provider.interactionFinished(req, res, { login: { accountId: TEST_USER } }, { mergeWithLastSubmission: false });
          return;
        }
        if (prompt.name === 'consent') {
          const grant = details.grantId
            ? await provider.Grant.find(details.grantId)
            : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
          const d = prompt.details;
          if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
          if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
          for (const [rs, scopes] of Object.entries(d.missingResourceScopes ?? {})) grant.addResourceScope(rs, scopes.join(' '));
          const grantId = await grant.save();
          await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
          return;
        }
        throw new Error(`unexpected prompt ${prompt.name}`);
      }
      if (req.url.startsWith('/cb')) { // stand-in for the app's redirect_uri
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(Object.fromEntries(new URL(req.url, issuer).searchParams)));
        return;
      }
      callback(req, res);
    } catch (err) {
      res.writeHead(500).end(String(err));
    }
  });
  await new Promise((r) => server.listen(port, host, r));
  return {
    issuer, provider, port: server.address().port, requests, keys,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const idp = await startIdp({ port: Number(process.argv[2] ?? 3000) });
  console.log(`idp listening, issuer ${idp.issuer}`);
}
