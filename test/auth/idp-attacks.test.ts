// Attacks from the identity provider's side of token validation, through the real gateway: RFC 7662
// introspection answers that must not authenticate, OIDC discovery documents that must not be
// trusted, JWKS members and JWS headers that must not verify a token, and what a refresh token or
// an empty key set does. Malformed answers come from scripted IdPs (plain node:http / node:https
// servers this file controls); the refresh token comes from the real oidc-provider helper.
import t from 'tap';
import http from 'node:http';
import https from 'node:https';
import dns from 'node:dns';
import net from 'node:net';
import crypto, { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair, type JWK } from 'jose';
import { LOOPBACK_LISTEN, startGateway, startUpstream, type LogRecord, type RunningGateway, type Tap } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.mjs';
import { makeCert } from '../config/certs.js';
// @ts-expect-error -- plain .mjs helper without types
import { startIdp as startOidcIdp, OPAQUE_RESOURCE } from '../helpers/idp.mjs';

const OPAQUE_AUD = OPAQUE_RESOURCE as string;

// ---------------------------------------------------------------------------------------------
// Scripted IdPs

interface Hit {
  method: string;
  path: string;
  host: string;
  body: string;
  authorization: string | undefined;
}

interface Scripted {
  origin: string;
  port: number;
  hits: Hit[];
  count(path: string): number;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, body: string) => void;

/** A plain HTTP (or, with `tlsOptions`, HTTPS) server on 127.0.0.1 that records every request and answers with `handler`. */
async function scripted(t: Tap, handler: Handler, tlsOptions?: { cert: string; key: string }): Promise<Scripted> {
  const hits: Hit[] = [];
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      hits.push({ method: req.method ?? '', path: (req.url ?? '').split('?')[0] ?? '', host: req.headers.host ?? '', body, authorization: req.headers.authorization });
      res.on('error', () => undefined);
      handler(req, res, body);
    });
  };
  const server = tlsOptions === undefined ? http.createServer(onRequest) : https.createServer(tlsOptions, onRequest);
  server.on('clientError', (_err, socket) => socket.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));
  const port = (server.address() as net.AddressInfo).port;
  return {
    origin: `${tlsOptions === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    port,
    hits,
    count: (path) => hits.filter((h) => h.path === path).length,
  };
}

const sendJson = (res: http.ServerResponse, status: number, value: unknown, type = 'application/json'): void => {
  res.writeHead(status, { 'content-type': type }).end(typeof value === 'string' ? value : JSON.stringify(value));
};

// The signing key of every scripted issuer (kid k1), and a stranger's key.
const { privateKey: KEY, publicKey: KEY_PUB } = await generateKeyPair('ES256', { extractable: true });
const K1: JWK = { ...(await exportJWK(KEY_PUB)), kid: 'k1', alg: 'ES256', use: 'sig' };
const { privateKey: STRANGER, publicKey: STRANGER_PUB } = await generateKeyPair('ES256', { extractable: true });
const STRANGER_JWK: JWK = { ...(await exportJWK(STRANGER_PUB)), kid: 'k1', alg: 'ES256', use: 'sig' };

const nowSec = (): number => Math.floor(Date.now() / 1000);

async function jwt(issuer: string, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}, key: crypto.webcrypto.CryptoKey | crypto.KeyObject = KEY): Promise<string> {
  const now = nowSec();
  return new SignJWT({ iss: issuer, aud: 'api', sub: 'alice', iat: now, exp: now + 600, ...claims })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'at+jwt', ...header })
    .sign(key);
}

const b64json = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');

/** A compact JWS built by hand (for keys and header/algorithm combinations jose refuses to produce). */
function handJws(header: Record<string, unknown>, payload: Record<string, unknown>, sign: (input: Buffer) => Buffer): string {
  const input = `${b64json(header)}.${b64json(payload)}`;
  return `${input}.${sign(Buffer.from(input)).toString('base64url')}`;
}

const site = (issuers: string, upstream: string): string => `${LOOPBACK_LISTEN}auth:
  issuers:
${issuers}sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes:
      - { path: /public, access: public }
      - { path: /, access: authenticated }
`;

/** One issuer entry (indented for `site`); `extra` lines are indented by six spaces by the caller. */
const issuerYaml = (issuer: string, extra: string, audiences = '[api]'): string => `    - issuer: ${issuer}
      audiences: ${audiences}
      algorithms: [ES256, RS256]
      roles_claim: roles
      clock_skew: 0s
${extra}`;

const bearer = (token: string): { authorization: string } => ({ authorization: `Bearer ${token}` });

const accessOf = (gw: RunningGateway, path: string): LogRecord | undefined => gw.logs.filter((l) => l.type === 'access' && l.path === path).at(-1);

// =============================================================================================
// 1. Refresh tokens and audience-less answers at an introspection issuer

/** Authorization code + PKCE at the real IdP (auto login/consent), scope offline_access: an access and a refresh token. */
async function codeFlow(issuer: string, redirectUri: string, resource: string): Promise<{ access_token: string; refresh_token: string }> {
  const jar = new Map<string, string>();
  const get = async (url: string): Promise<Response> => {
    const res = await fetch(url, { redirect: 'manual', headers: { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') } });
    for (const c of res.headers.getSetCookie()) {
      const kv = c.split(';')[0] ?? '';
      const i = kv.indexOf('=');
      jar.set(kv.slice(0, i), kv.slice(i + 1));
    }
    return res;
  };
  const verifier = randomBytes(32).toString('base64url');
  let url = `${issuer}/auth?${new URLSearchParams({
    client_id: 'web', response_type: 'code', redirect_uri: redirectUri, scope: 'openid offline_access', prompt: 'consent',
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256', resource,
  }).toString()}`;
  let code: string | null = null;
  for (let i = 0; i < 10 && code === null; i++) {
    const location = (await get(url)).headers.get('location');
    if (location === null) throw new Error('authorization flow stopped without a redirect');
    const next = new URL(location, issuer);
    if (next.href.startsWith(redirectUri)) code = next.searchParams.get('code');
    url = next.href;
  }
  if (code === null) throw new Error('no authorization code');
  const res = await fetch(`${issuer}/token`, {
    method: 'POST',
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, client_id: 'web', code_verifier: verifier, resource }),
  });
  const body = (await res.json()) as { access_token?: string; refresh_token?: string };
  if (typeof body.access_token !== 'string' || typeof body.refresh_token !== 'string') throw new Error(`no tokens: ${JSON.stringify(body)}`);
  return { access_token: body.access_token, refresh_token: body.refresh_token };
}

t.test('a refresh token of a real OpenID provider is not a bearer access token for an introspection issuer', async (t) => {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const redirectUri = `${issuer}/cb`;
  const idp = (await startOidcIdp({ port, issuer, redirectUris: [redirectUri] })) as { requests: string[]; close(): Promise<void> };
  t.teardown(() => idp.close());
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(issuerYaml(issuer, `      introspection: { client_id: gateway, client_secret: gateway-secret }\n`, `[${OPAQUE_AUD}]`), up.origin));
  const tokens = await codeFlow(issuer, redirectUri, OPAQUE_AUD);
  t.equal(tokens.refresh_token.split('.').length, 1, 'the refresh token is opaque');

  const access = await gw.request({ path: '/with-access-token', headers: bearer(tokens.access_token) });
  t.equal(access.status, 200, 'control: the access token (aud = the configured audience) is accepted');
  t.equal(up.seen.at(-1)?.headers['x-auth-user'], 'alice');

  // A refresh token is a credential for the token endpoint only (RFC 6749 §1.5, §10.4); the IdP's
  // introspection answer for it has active: true, sub, exp (a day away), but no aud and no
  // token_type. It must not open a protected route.
  const before = up.seen.length;
  const refresh = await gw.request({ path: '/with-refresh-token', headers: bearer(tokens.refresh_token) });
  t.equal(refresh.status, 401, `the refresh token is refused (got ${refresh.status}, access log reason ${String(accessOf(gw, '/with-refresh-token')?.reason)})`);
  t.equal(up.seen.length, before, `the upstream never sees it (it saw x-auth-user ${String(up.seen.at(-1)?.headers['x-auth-user'])})`);
});

interface IntrospectionIdp {
  idp: Scripted;
  issuer: string;
  /** Opaque token → how the introspection endpoint answers. */
  answers: Map<string, Handler>;
  /** Token values the introspection endpoint was asked about, in order. */
  asked: string[];
}

async function introspectionIdp(t: Tap, name: string): Promise<IntrospectionIdp> {
  const answers = new Map<string, Handler>();
  const asked: string[] = [];
  const idp = await scripted(t, (req, res, body) => {
    if (req.url === '/jwks') return sendJson(res, 200, { keys: [K1] });
    if (req.url === '/introspect') {
      const token = new URLSearchParams(body).get('token') ?? '';
      asked.push(token);
      const answer = answers.get(token);
      if (answer === undefined) return sendJson(res, 200, { active: false });
      return answer(req, res, body);
    }
    res.writeHead(404).end();
  });
  return { idp, issuer: `https://${name}.idp-attacks.test`, answers, asked };
}

const introspectionIssuer = (x: IntrospectionIdp, cache = '60s'): string => issuerYaml(x.issuer, `      jwks_uri: ${x.idp.origin}/jwks
      introspection: { endpoint: ${x.idp.origin}/introspect, client_id: gateway, client_secret: s3cret, cache: ${cache} }
`);

const active = (x: IntrospectionIdp, over: Record<string, unknown> = {}): Handler => (_req, res) =>
  sendJson(res, 200, { active: true, sub: 'bob', iss: x.issuer, aud: 'api', exp: nowSec() + 600, ...over });

t.test('an introspection answer without aud is refused, as a JWT without aud is: audiences says at least one must match', async (t) => {
  const x = await introspectionIdp(t, 'noaud');
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(introspectionIssuer(x), up.origin));
  x.answers.set('opaque-with-aud', active(x));
  x.answers.set('opaque-without-aud', active(x, { aud: undefined, sub: 'carol' }));
  t.equal((await gw.request({ path: '/with-aud', headers: bearer('opaque-with-aud') })).status, 200, 'control: aud = api');
  const jwtNoAud = await gw.request({ path: '/jwt-without-aud', headers: bearer(await jwt(x.issuer, { aud: undefined })) });
  t.equal(jwtNoAud.status, 401, 'a JWT of the same issuer without aud: 401');
  const res = await gw.request({ path: '/without-aud', headers: bearer('opaque-without-aud') });
  t.equal(res.status, 401, `an active answer naming no audience is refused like the JWT (got ${res.status})`);
  t.same(up.seen.map((s) => s.url), ['/with-aud'], 'only the token for this audience reached the upstream');
});

t.test('an introspection answer saying the token is a refresh token (token_type / token_use) is refused', async (t) => {
  const x = await introspectionIdp(t, 'refresh');
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(introspectionIssuer(x), up.origin));
  x.answers.set('opaque-access', active(x, { token_type: 'Bearer' }));
  x.answers.set('opaque-refresh-type', active(x, { token_type: 'refresh_token' })); // RFC 7662 §2.2 token_type
  x.answers.set('opaque-refresh-use', active(x, { token_use: 'refresh_token' })); // Ory Hydra's form
  t.equal((await gw.request({ path: '/access', headers: bearer('opaque-access') })).status, 200, 'control: token_type Bearer');
  for (const token of ['opaque-refresh-type', 'opaque-refresh-use']) {
    const res = await gw.request({ path: `/${token}`, headers: bearer(token) });
    t.equal(res.status, 401, `${token}: refused (got ${res.status})`);
  }
  t.same(up.seen.map((s) => s.url), ['/access'], 'only the access token reached the upstream');
});

// =============================================================================================
// 2. Introspection answers that are no verdict, and verdicts that are refusals

t.test('introspection: malformed answers and IdP failures are 503 (never cached), stale or foreign answers 401; nothing reaches the upstream', async (t) => {
  const x = await introspectionIdp(t, 'shapes');
  const elsewhere = await scripted(t, (_req, res) => sendJson(res, 200, { active: true, sub: 'mallory', aud: 'api' }));
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(introspectionIssuer(x), up.origin));
  const unavailable: Array<[string, Handler]> = [
    ['active-string', active(x, { active: 'true' })],
    ['active-one', active(x, { active: 1 })],
    ['active-null', active(x, { active: null })],
    ['active-missing', active(x, { active: undefined })],
    ['html-200', (_q, res) => sendJson(res, 200, '<html><body>{"active":true,"sub":"x"}</body></html>', 'text/html')],
    ['json-array', (_q, res) => sendJson(res, 200, [{ active: true, sub: 'x', aud: 'api' }])],
    ['jwt-response', (_q, res) => sendJson(res, 200, 'eyJhbGciOiJFUzI1NiJ9.eyJhY3RpdmUiOnRydWV9.c2ln', 'application/token-introspection+jwt')],
    ['status-500', (_q, res) => sendJson(res, 500, { active: true, sub: 'x', aud: 'api' })],
    ['status-401', (_q, res) => sendJson(res, 401, { active: true, sub: 'x', aud: 'api' })],
    ['redirect-elsewhere', (_q, res) => res.writeHead(307, { location: `${elsewhere.origin}/introspect` }).end()],
    ['body-2mib', (_q, res) => sendJson(res, 200, { active: true, sub: 'big', aud: 'api', pad: 'A'.repeat(2 << 20) })],
    ['cut-mid-body', (_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '500' });
      res.write('{"active":true,"sub":"cut","aud":"api"');
      setTimeout(() => res.destroy(), 50);
    }],
  ];
  const refused: Array<[string, Handler, string]> = [
    ['exp-past', active(x, { exp: nowSec() - 60 }), 'token_expired'],
    ['nbf-future', active(x, { nbf: nowSec() + 600 }), 'token_not_yet_valid'],
    ['other-iss', active(x, { iss: 'https://evil.idp-attacks.test' }), 'token_bad_issuer'],
    ['other-aud', active(x, { aud: ['https://other.api'] }), 'token_bad_audience'],
    ['exp-string', active(x, { exp: String(nowSec() + 600) }), 'token_bad_claims'],
    ['sub-empty', active(x, { sub: '', client_id: undefined }), 'token_missing_sub'],
    ['inactive', (_q, res) => sendJson(res, 200, { active: false, sub: 'x', aud: 'api' }), 'token_inactive_token'],
  ];
  for (const [token, answer] of [...unavailable, ...refused]) x.answers.set(`opaque-${token}`, answer);
  x.answers.set('opaque-good', active(x));

  const expected = { status: 503, retryAfter: '5', wwwAuthenticate: null, reason: 'auth_unavailable: introspection_failed' };
  for (const [token] of unavailable) {
    const got: Array<typeof expected> = [];
    for (const attempt of [1, 2]) {
      const path = `/${token}/${attempt}`;
      const res = await gw.request({ path, headers: bearer(`opaque-${token}`) });
      got.push({ status: res.status, retryAfter: String(res.headers['retry-after']), wwwAuthenticate: (res.headers['www-authenticate'] as null | undefined) ?? null, reason: String(accessOf(gw, path)?.reason) });
    }
    t.same(got, [expected, expected], `${token}: 503 with Retry-After, no WWW-Authenticate, both times`);
    t.equal(x.asked.filter((a) => a === `opaque-${token}`).length, 2, `${token}: not cached, asked again`);
  }
  t.equal(elsewhere.hits.length, 0, 'a redirect of the introspection endpoint is not followed');
  for (const [token, , reason] of refused) {
    const res = await gw.request({ path: `/${token}`, headers: bearer(`opaque-${token}`) });
    t.equal(res.status, 401, `${token}: 401`);
    t.equal(accessOf(gw, `/${token}`)?.reason, reason, `${token}: ${reason}`);
  }
  t.equal((await gw.request({ path: '/good', headers: bearer('opaque-good') })).status, 200, 'control: a good answer');
  t.same(up.seen.map((s) => s.url), ['/good'], 'only the good token reached the upstream');
  t.same(new Set(x.idp.hits.filter((hit) => hit.path === '/introspect').map((h) => h.authorization)), new Set([`Basic ${Buffer.from('gateway:s3cret').toString('base64')}`]), 'every introspection carried the gateway\'s client credentials');
});

t.test('introspection: a stalled or dripping endpoint is a 503 after the timeout (not 401), coalesced, not cached; other tokens are not held up', async (t) => {
  const x = await introspectionIdp(t, 'slow');
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(introspectionIssuer(x), up.origin));
  let stalled = true;
  x.answers.set('opaque-stalled', (req, res, body) => {
    if (!stalled) return active(x, { sub: 'late' })(req, res, body);
    // never answers
  });
  x.answers.set('opaque-drip', (_q, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{"active":true,"sub":"drip","aud":"api"');
    const timer = setInterval(() => (res.destroyed ? clearInterval(timer) : res.write(' ')), 200);
    res.on('close', () => clearInterval(timer));
  });
  x.answers.set('opaque-fast', active(x, { sub: 'fast' }));
  const began = Date.now();
  const slow = Promise.all([1, 2, 3].map((i) => gw.request({ path: `/stalled/${i}`, headers: bearer('opaque-stalled') })));
  const drip = gw.request({ path: '/drip', headers: bearer('opaque-drip') });
  await new Promise((r) => setTimeout(r, 200));
  const fastStart = Date.now();
  t.equal((await gw.request({ path: '/fast', headers: bearer('opaque-fast') })).status, 200, 'another token meanwhile: 200');
  t.ok(Date.now() - fastStart < 2000, `and at once (${Date.now() - fastStart} ms)`);
  const stalledResults = await slow;
  t.same(stalledResults.map((r) => r.status), [503, 503, 503], 'a stalled endpoint: 503 for each waiting request');
  t.ok(Date.now() - began >= 4000 && Date.now() - began < 9000, `after about the 5 s IdP timeout (${Date.now() - began} ms)`);
  t.equal(x.asked.filter((a) => a === 'opaque-stalled').length, 1, 'the three identical lookups shared one introspection');
  t.equal((await drip).status, 503, 'a body that drips forever: 503');
  stalled = false;
  t.equal((await gw.request({ path: '/stalled/again', headers: bearer('opaque-stalled') })).status, 200, 'the failure was not cached: asked again, now answered');
  t.same(up.seen.map((s) => s.url).sort(), ['/fast', '/stalled/again']);
});

t.test('two introspection issuers: first active answer wins, each lookup asks each endpoint once, JWT-shaped tokens are never shown to an endpoint', async (t) => {
  const a = await introspectionIdp(t, 'first');
  const b = await introspectionIdp(t, 'second');
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(introspectionIssuer(a) + introspectionIssuer(b), up.origin));
  b.answers.set('opaque-only-b', active(b, { sub: 'bob-at-b' }));
  a.answers.set('opaque-both', active(a, { sub: 'alice-at-a' }));
  b.answers.set('opaque-both', active(b, { sub: 'mallory-at-b' }));

  t.equal((await gw.request({ path: '/only-b', headers: bearer('opaque-only-b') })).status, 200);
  t.equal(up.seen.at(-1)?.headers['x-auth-user'], 'bob-at-b');
  t.equal(up.seen.at(-1)?.headers['x-auth-issuer'], b.issuer, 'the issuer that vouched is named');
  t.equal((await gw.request({ path: '/both', headers: bearer('opaque-both') })).status, 200);
  t.equal(up.seen.at(-1)?.headers['x-auth-user'], 'alice-at-a', 'the first issuer in configuration order wins');
  t.equal(up.seen.at(-1)?.headers['x-auth-issuer'], a.issuer);
  t.equal(b.asked.filter((v) => v === 'opaque-both').length, 0, 'the second endpoint was not asked');

  const flood = await Promise.all(Array.from({ length: 12 }, (_v, i) => gw.request({ path: `/unknown/${i}`, headers: bearer('opaque-unknown') })));
  t.same(new Set(flood.map((r) => r.status)), new Set([401]), 'an unknown opaque token: 401 for each');
  t.equal(a.asked.filter((v) => v === 'opaque-unknown').length, 1, 'concurrent lookups: one introspection at the first issuer');
  t.equal(b.asked.filter((v) => v === 'opaque-unknown').length, 1, 'and one at the second');

  const askedBefore = a.asked.length + b.asked.length;
  const jwtShaped = [
    await jwt('https://unconfigured.idp-attacks.test'),
    await jwt(a.issuer, {}, { kid: 'k-unknown' }, STRANGER),
    await jwt(b.issuer, { aud: 'https://other.api' }),
    `${b64json({ alg: 'ES256' })}.${b64json({ active: true })}.AAAA`,
  ];
  for (const [i, token] of jwtShaped.entries()) {
    t.equal((await gw.request({ path: `/jwt/${i}`, headers: bearer(token) })).status, 401, `JWT-shaped #${i}: 401`);
  }
  t.equal(a.asked.length + b.asked.length, askedBefore, 'no JWT-shaped token was sent to an introspection endpoint');
  t.same(up.seen.map((s) => s.url), ['/only-b', '/both']);
});

// =============================================================================================
// 3. OIDC discovery

t.test('discovery documents that must not be trusted: issuer spelled differently, redirected, oversized, not JSON, odd jwks_uri', async (t) => {
  const elsewhere = await scripted(t, (req, res) => {
    // Would serve a perfect document for any issuer whose discovery is redirected here.
    const issuer = `${srv.origin}${(req.url ?? '').replace('/.well-known/openid-configuration', '')}`;
    sendJson(res, 200, { issuer, jwks_uri: `${srv.origin}/good/jwks` });
  });
  const docs = new Map<string, (issuer: string) => Handler>([
    ['good', (iss) => (_q, res) => sendJson(res, 200, { issuer: iss, jwks_uri: `${iss}/jwks` })],
    ['slash', (iss) => (_q, res) => sendJson(res, 200, { issuer: `${iss}/`, jwks_uri: `${iss}/jwks` })],
    ['case', (iss) => (_q, res) => sendJson(res, 200, { issuer: iss.replace('/case', '/CASE'), jwks_uri: `${iss}/jwks` })],
    ['missing', (iss) => (_q, res) => sendJson(res, 200, { jwks_uri: `${iss}/jwks` })],
    ['redirect', () => (req, res) => res.writeHead(302, { location: `${elsewhere.origin}${req.url ?? ''}` }).end()],
    ['huge', (iss) => (_q, res) => sendJson(res, 200, { issuer: iss, jwks_uri: `${iss}/jwks`, pad: 'A'.repeat(2 << 20) })],
    ['html', (iss) => (_q, res) => sendJson(res, 200, `<html>{"issuer":"${iss}","jwks_uri":"${iss}/jwks"}</html>`, 'text/html')],
    ['file-scheme', (iss) => (_q, res) => sendJson(res, 200, { issuer: iss, jwks_uri: 'file:///etc/passwd' })],
    ['relative', (iss) => (_q, res) => sendJson(res, 200, { issuer: iss, jwks_uri: '/relative/jwks' })],
  ]);
  const srv: Scripted = await scripted(t, (req, res, body) => {
    const [, name, ...rest] = (req.url ?? '').split('/');
    const issuer = `${srv.origin}/${name ?? ''}`;
    if (rest.join('/') === 'jwks') return sendJson(res, 200, { keys: [K1] });
    const doc = docs.get(name ?? '');
    if (doc === undefined || rest.join('/') !== '.well-known/openid-configuration') return void res.writeHead(404).end();
    doc(issuer)(req, res, body);
  });
  const up = await startUpstream(t);
  const gw = await startGateway(t, site([...docs.keys()].map((name) => issuerYaml(`${srv.origin}/${name}`, '')).join(''), up.origin));
  for (const name of docs.keys()) {
    const res = await gw.request({ path: `/${name}`, headers: bearer(await jwt(`${srv.origin}/${name}`)) });
    if (name === 'good') {
      t.equal(res.status, 200, 'control: a faithful document');
      continue;
    }
    t.equal(res.status, 503, `${name}: 503 (the keys cannot be known), never a 200 (got ${res.status})`);
    t.match(String(accessOf(gw, `/${name}`)?.reason), /^auth_unavailable: /, `${name}: reason`);
    t.equal(srv.count(`/${name}/jwks`), 0, `${name}: no key set fetched on the word of this document`);
  }
  t.equal(elsewhere.hits.length, 0, 'the discovery redirect was not followed');
  t.same(up.seen.map((s) => s.url), ['/good']);
});

t.test('discovery down: a flood of JWTs with fresh kids and of fresh opaque tokens is 503 for each and asks the IdP a bounded number of times', async (t) => {
  const srv: Scripted = await scripted(t, (_q, res) => sendJson(res, 500, { error: 'temporarily_unavailable' }));
  const issuer = `${srv.origin}/down`;
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(issuerYaml(issuer, '      introspection: { client_id: gateway, client_secret: s3cret }\n'), up.origin));
  const jwts = await Promise.all(Array.from({ length: 40 }, (_v, i) => jwt(issuer, { jti: String(i) }, { kid: `k-${i}` }, STRANGER)));
  const opaque = Array.from({ length: 40 }, () => randomBytes(24).toString('base64url'));
  const began = Date.now();
  const results = await Promise.all([...jwts, ...opaque].map((token, i) => gw.request({ path: `/flood/${i}`, headers: bearer(token) })));
  const seconds = Math.ceil((Date.now() - began) / 1000);
  t.same(new Set(results.map((r) => r.status)), new Set([503]), 'every request: 503 (the IdP cannot be asked), none a 401');
  const discovery = srv.count('/down/.well-known/openid-configuration');
  // The start-up's attempt and its background retries (1 s, 2 s, …), and a key refresh at most
  // once per cooldown: bounded by time, never one per request. On a loaded machine the flood
  // itself takes seconds (4 discovery requests seen over a 2 s flood).
  t.ok(discovery <= 3 + seconds, `80 requests in ${seconds} s made ${discovery} discovery requests (start-up, its retries, not one per request)`);
  t.equal(srv.hits.length, discovery, 'and nothing else (no JWKS or introspection URL was guessed)');
  t.same(up.seen, []);
});

/** Resolves `names` to 127.0.0.1 inside this process (the gateway runs in it), so a "remote" host can be observed on loopback. */
function fakeResolve(t: Tap, names: readonly string[]): void {
  type Lookup = (hostname: string, options: unknown, callback?: unknown) => void;
  const mutable = dns as unknown as { lookup: Lookup };
  const original = mutable.lookup;
  mutable.lookup = (hostname, options, callback) => {
    if (!names.includes(hostname)) return original(hostname, options, callback);
    const cb = (typeof options === 'function' ? options : callback) as (err: null, address: unknown, family?: number) => void;
    const all = typeof options === 'object' && options !== null && (options as { all?: boolean }).all === true;
    if (all) cb(null, [{ address: '127.0.0.1', family: 4 }]);
    else cb(null, '127.0.0.1', 4);
  };
  t.teardown(() => {
    mutable.lookup = original;
  });
}

t.test('discovery of a loopback http issuer cannot move the JWKS and introspection endpoints to cleartext http on another host, which the configuration refuses', async (t) => {
  const REMOTE = 'idp-keys.corp.example';
  fakeResolve(t, [REMOTE]);
  const srv: Scripted = await scripted(t, (req, res, body) => {
    const remote = `http://${REMOTE}:${srv.port}`;
    if (req.url === '/leak/.well-known/openid-configuration') {
      return sendJson(res, 200, { issuer: `${srv.origin}/leak`, jwks_uri: `${remote}/leak/jwks`, introspection_endpoint: `${remote}/leak/introspect` });
    }
    if (req.url === '/leak/jwks') return sendJson(res, 200, { keys: [K1] });
    if (req.url === '/leak/introspect') {
      return new URLSearchParams(body).get('token') === 'opaque-leak' ? sendJson(res, 200, { active: true, sub: 'dave', aud: 'api' }) : sendJson(res, 200, { active: false });
    }
    res.writeHead(404).end();
  });
  const issuer = `${srv.origin}/leak`;
  // The same URL written in the configuration is refused: http is accepted for loopback addresses only.
  const direct = startGateway(t, site(issuerYaml(issuer, `      jwks_uri: http://${REMOTE}:${srv.port}/leak/jwks\n`), 'http://127.0.0.1:9'));
  await t.rejects(direct, { message: /https URL \(http is accepted for loopback addresses only\)/ }, 'configured directly, the cleartext remote jwks_uri is an error');

  const up = await startUpstream(t);
  const gw = await startGateway(t, site(issuerYaml(issuer, '      introspection: { client_id: gateway, client_secret: s3cret }\n'), up.origin));
  const viaJwt = await gw.request({ path: '/jwt', headers: bearer(await jwt(issuer)) });
  const viaOpaque = await gw.request({ path: '/opaque', headers: bearer('opaque-leak') });
  const remoteHits = srv.hits.filter((h) => h.host.startsWith(REMOTE));
  t.same(remoteHits.map((h) => `${h.method} ${h.path}${h.authorization === undefined ? '' : ' with client credentials'}`), [],
    'nothing is fetched from, and no client secret or token is sent to, a non-loopback host over cleartext http');
  t.equal(viaJwt.status, 503, `a JWT cannot be verified with keys fetched that way: 503 (got ${viaJwt.status})`);
  t.equal(viaOpaque.status, 503, `an opaque token cannot be introspected that way: 503 (got ${viaOpaque.status})`);
  t.same(up.seen.map((s) => s.url), [], 'nothing reached the upstream');
});

t.test('https issuers: a discovered http jwks_uri is refused; a certificate outside ca_bundle or for another name is never trusted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pc-idp-attacks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const good = await makeCert({ ip: ['127.0.0.1'] });
  const wrongName = await makeCert({ dns: ['other.idp-attacks.test'] });
  writeFileSync(join(dir, 'good.pem'), good.cert);
  writeFileSync(join(dir, 'wrong-name.pem'), wrongName.cert);
  const plain = await scripted(t, (_q, res) => sendJson(res, 200, { keys: [K1] }));
  const handler = (origin: () => string): Handler => (req, res) => {
    const [, name, ...rest] = (req.url ?? '').split('/');
    const issuer = `${origin()}/${name ?? ''}`;
    if (rest.join('/') === 'jwks') return sendJson(res, 200, { keys: [K1] });
    const jwksUri = name === 'downgrade' ? `${plain.origin}/jwks` : `${issuer}/jwks`;
    sendJson(res, 200, { issuer, jwks_uri: jwksUri });
  };
  const tlsIdp: Scripted = await scripted(t, handler(() => tlsIdp.origin), good);
  const misnamed: Scripted = await scripted(t, handler(() => misnamed.origin), wrongName);
  const cases: Array<{ name: string; issuer: string; caBundle: string | null; status: number }> = [
    { name: 'trusted https, https jwks_uri (control)', issuer: `${tlsIdp.origin}/ok`, caBundle: 'good.pem', status: 200 },
    { name: 'https issuer, discovery names an http jwks_uri', issuer: `${tlsIdp.origin}/downgrade`, caBundle: 'good.pem', status: 503 },
    { name: 'self-signed certificate, no ca_bundle (system CAs)', issuer: `${tlsIdp.origin}/nobundle`, caBundle: null, status: 503 },
    { name: 'certificate for another name, its CA in ca_bundle', issuer: `${misnamed.origin}/misnamed`, caBundle: 'wrong-name.pem', status: 503 },
  ];
  const up = await startUpstream(t);
  const yaml = site(cases.map((c) => issuerYaml(c.issuer, c.caBundle === null ? '' : `      ca_bundle: ${join(dir, c.caBundle)}\n`)).join(''), up.origin);
  const gw = await startGateway(t, yaml);
  for (const [i, c] of cases.entries()) {
    const res = await gw.request({ path: `/case/${i}`, headers: bearer(await jwt(c.issuer)) });
    t.equal(res.status, c.status, `${c.name}: ${c.status} (got ${res.status})`);
  }
  t.equal(plain.hits.length, 0, 'the cleartext key set was never fetched');
  t.equal(misnamed.hits.length, 0, 'no request completed to the server with the wrong name');
  t.same(up.seen.map((s) => s.url), ['/case/0']);
});

// =============================================================================================
// 4. JWKS members and JWS headers

t.test('JWKS members that must not verify, and jku / x5u / jwk / crit headers: 401, and no URL from a token is ever fetched', async (t) => {
  const attacker = await scripted(t, (_q, res) => sendJson(res, 200, { keys: [{ ...STRANGER_JWK, kid: 'attacker' }] }));
  const small = crypto.generateKeyPairSync('rsa', { modulusLength: 1024 });
  const p384 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const hmacSecret = Buffer.from('a-shared-secret-of-32-bytes-long');
  const es256 = (await exportJWK(KEY_PUB)) as Record<string, unknown>;
  const jwksKeys = [
    K1,
    { ...es256, kid: 'enc', use: 'enc' },
    { ...es256, kid: 'ops', key_ops: ['encrypt'] },
    { ...(small.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid: 'rsa1024', alg: 'RS256', use: 'sig' },
    { ...(p384.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid: 'p384', use: 'sig' },
    { ...(rsa.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid: 'rs384-only', alg: 'RS384', use: 'sig' },
    { kty: 'oct', k: hmacSecret.toString('base64url'), kid: 'oct', alg: 'HS256' },
  ];
  const idp = await scripted(t, (_q, res) => sendJson(res, 200, { keys: jwksKeys }));
  const issuer = 'https://keys.idp-attacks.test';
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(issuerYaml(issuer, `      jwks_uri: ${idp.origin}/jwks\n`), up.origin));
  const now = nowSec();
  const claims = { iss: issuer, aud: 'api', sub: 'mallory', iat: now, exp: now + 600 };
  const es256Sign = (input: Buffer): Buffer => crypto.sign('sha256', input, { key: crypto.KeyObject.from(KEY as crypto.webcrypto.CryptoKey), dsaEncoding: 'ieee-p1363' });
  t.equal((await gw.request({ path: '/hand-signed-control', headers: bearer(handJws({ alg: 'ES256', kid: 'k1' }, claims, es256Sign)) })).status, 200, 'control: a hand-signed token with k1 verifies');
  const cases: Array<[string, string]> = [
    ['key marked use: enc', await jwt(issuer, {}, { kid: 'enc' })],
    ['key_ops without verify', await jwt(issuer, {}, { kid: 'ops' })],
    ['RSA key of 1024 bits', handJws({ alg: 'RS256', kid: 'rsa1024' }, claims, (input) => crypto.sign('sha256', input, small.privateKey))],
    ['P-384 key under alg ES256', handJws({ alg: 'ES256', kid: 'p384' }, claims, (input) => crypto.sign('sha256', input, { key: p384.privateKey, dsaEncoding: 'ieee-p1363' }))],
    ['RS256 token, JWK says alg RS384', handJws({ alg: 'RS256', kid: 'rs384-only' }, claims, (input) => crypto.sign('sha256', input, rsa.privateKey))],
    ['HS256 with the oct key the set publishes', handJws({ alg: 'HS256', kid: 'oct' }, claims, (input) => crypto.createHmac('sha256', hmacSecret).update(input).digest())],
    ['jku to the attacker, unknown kid', await jwt(issuer, {}, { kid: 'attacker', jku: `${attacker.origin}/jwks` }, STRANGER)],
    ['x5u to the attacker', await jwt(issuer, {}, { kid: 'attacker', x5u: `${attacker.origin}/cert.pem` }, STRANGER)],
    ['embedded jwk of the attacker, known kid', await jwt(issuer, {}, { jwk: { kty: STRANGER_JWK.kty, crv: STRANGER_JWK.crv, x: STRANGER_JWK.x, y: STRANGER_JWK.y } }, STRANGER)],
    ['crit naming an unknown extension', handJws({ alg: 'ES256', kid: 'k1', crit: ['urn:x-unknown'], 'urn:x-unknown': true }, claims, es256Sign)],
    ['crit naming a registered header (exp)', handJws({ alg: 'ES256', kid: 'k1', crit: ['exp'], exp: now + 600 }, claims, es256Sign)],
    ['b64: false (unencoded payload)', handJws({ alg: 'ES256', kid: 'k1', b64: false, crit: ['b64'] }, claims, es256Sign)],
  ];
  for (const [name, token] of cases) {
    const res = await gw.request({ path: `/${name.replace(/[^a-z0-9]+/gi, '-')}`, headers: bearer(token) });
    t.equal(res.status, 401, `${name}: 401 (got ${res.status}, ${String(accessOf(gw, `/${name.replace(/[^a-z0-9]+/gi, '-')}`)?.reason)})`);
  }
  t.equal(attacker.hits.length, 0, 'no jku / x5u URL was fetched');
  t.equal((await gw.request({ path: '/control', headers: bearer(await jwt(issuer)) })).status, 200, 'control: the real key still verifies');
  t.same(up.seen.map((s) => s.url), ['/hand-signed-control', '/control']);
});

t.test('a JWKS refresh answered with an empty key set is a failed fetch: the working keys stay, valid tokens are not refused', async (t) => {
  // The unknown-kid refresh cooldown (30 s, from the last attempt) is skipped by shifting Date.now,
  // before the gateway (and its authenticator, which captures Date.now) is built.
  const realNow = Date.now.bind(Date);
  let offset = 0;
  Date.now = () => realNow() + offset;
  t.teardown(() => {
    Date.now = realNow;
  });
  let keys: unknown[] = [K1];
  const idp = await scripted(t, (_q, res) => sendJson(res, 200, { keys }));
  const issuer = 'https://empty.idp-attacks.test';
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(issuerYaml(issuer, `      jwks_uri: ${idp.origin}/jwks\n`), up.origin));
  const cached = await jwt(issuer, { sub: 'cached', exp: nowSec() + 3600 });
  t.equal((await gw.request({ path: '/cached/1', headers: bearer(cached) })).status, 200, 'a token verified (and cached) while the set is good');

  keys = []; // the IdP (or a CDN in front of it) answers {"keys": []} for a while
  offset += 31_000;
  const fetches = idp.count('/jwks');
  t.equal((await gw.request({ path: '/unknown-kid', headers: bearer(await jwt(issuer, {}, { kid: 'k-rotated' }, STRANGER)) })).status, 503, 'an unknown kid: refreshed, but an empty set is no answer (a rotated key cannot be told from a forged kid): 503, as with the IdP down');
  t.equal(idp.count('/jwks'), fetches + 1, 'the set was fetched again and answered empty');

  const fresh = await gw.request({ path: '/fresh', headers: bearer(await jwt(issuer, { sub: 'fresh' })) });
  t.ok(fresh.status === 200 || fresh.status === 503, `a valid k1 token is served with the old keys or gets 503, not a denial (got ${fresh.status}, ${String(accessOf(gw, '/fresh')?.reason)})`);
  const again = await gw.request({ path: '/cached/2', headers: bearer(cached) });
  t.ok(again.status === 200 || again.status === 503, `the token verified before is not refused either (got ${again.status}, ${String(accessOf(gw, '/cached/2')?.reason)})`);
});
