// The identity provider's life as the gateway sees it: key rotation without a gateway restart,
// outages with and without cached keys, and introspection of opaque tokens with its cache.
//
// The gateway builds its authenticator with the default clock (`Date.now`, captured when the
// gateway is built) and offers no way to inject one, so this file shifts `Date.now` itself, before
// any gateway exists, instead of sleeping through the 30 s JWKS cooldown. The IdP reads the same
// clock, so the tokens it stamps stay consistent with what the gateway believes "now" is.
import t from 'tap';
import { startGateway, startUpstream } from '../helpers/gateway.js';
import {
  ADMIN_CLAIMS, OPAQUE_AUD, JWT_AUD, bearer, count, goodClaims, idpToken, lastAccess, policyYaml, privateKey, sign, signingKeys, startIdp,
} from './_support.js';

const realNow = Date.now.bind(Date);
let offset = 0;
Date.now = () => realNow() + offset;
t.teardown(() => {
  Date.now = realNow;
});
const advance = (ms: number): void => {
  offset += ms;
};
// The local development CA stamps certificates with Date.now too: every test builds its gateway
// at real time, then moves the clock forward.
t.beforeEach(() => {
  offset = 0;
});

t.test('key rotation at the IdP is picked up without restarting the gateway', async (t) => {
  let idp = await startIdp({ keys: await signingKeys('old') });
  t.teardown(() => idp.close());
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  t.equal((await gw.request({ path: '/admin', headers: bearer(await idpToken(idp, { claims: ADMIN_CLAIMS })) })).status, 200, 'old key works');

  // The IdP restarts on the same issuer URL, signing with new keys (new kids) only.
  const port = idp.port;
  await idp.close();
  idp = await startIdp({ port, keys: await signingKeys('new') });
  const rotated = await idpToken(idp, { claims: ADMIN_CLAIMS });
  t.match(JSON.parse(Buffer.from(rotated.split('.')[0]!, 'base64url').toString()), { kid: 'new-es256' });

  advance(31_000); // past the unknown-kid refresh cooldown
  const res = await gw.request({ path: '/admin', headers: bearer(rotated) });
  t.equal(res.status, 200, 'the new kid triggers one JWKS refresh and verifies');
  t.equal(count(idp, 'GET /jwks'), 1, 'exactly one JWKS fetch at the restarted IdP');
  t.equal(up.seen.at(-1)?.headers['x-auth-roles'], 'admin,ops');

  // A token signed with a retired key (no longer published) is refused.
  const [retired] = await signingKeys('old'); // same kid, different key material: stands for any old-kid token
  t.equal((await gw.request({ path: '/', headers: bearer(await sign(retired!, goodClaims(idp))) })).status, 401);
});

t.test('IdP down with cached keys: the gateway keeps serving', async (t) => {
  const idp = await startIdp();
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  // Tokens signed with the IdP's key that outlive the test's clock jumps.
  const es = privateKey(idp, 'ES256');
  const long = (sub: string): Promise<string> => sign(es, goodClaims(idp, { sub, exp: Math.floor(Date.now() / 1000) + 7200 }));
  t.equal((await gw.request({ path: '/', headers: bearer(await long('a')) })).status, 200, 'keys fetched while the IdP is up');
  await idp.close();

  t.equal((await gw.request({ path: '/admin', headers: bearer(await long('b')) })).status, 200, 'a new token verifies with cached keys');
  advance(11 * 60_000); // keys older than their max age (10 min): a background refresh is tried and fails
  t.equal((await gw.request({ path: '/admin', headers: bearer(await long('c')) })).status, 200, 'stale keys still verify while the IdP is down');
  t.equal((await gw.request({ path: '/admin', headers: bearer(await long('d')) })).status, 200, 'and after the failed refresh');
  t.equal(up.seen.at(-1)?.headers['x-auth-user'], 'd');
  t.equal((await gw.request({ path: '/admin', headers: bearer(await sign({ ...es, kid: 'other' }, goodClaims(idp))) })).status, 503,
    'an unknown kid while the IdP is unreachable is 503: a rotated key cannot be told from a forged one');
});

t.test('IdP down before any key was fetched: 503 on protected routes, public routes work, then recovery', async (t) => {
  const keys = await signingKeys('boot');
  let idp = await startIdp({ keys });
  const token = await idpToken(idp, { claims: ADMIN_CLAIMS });
  const port = idp.port;
  await idp.close();

  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const down = await gw.request({ path: '/admin', headers: bearer(token) });
  t.equal(down.status, 503, 'not 401: the token may well be valid');
  t.equal(down.headers['retry-after'], '5');
  t.notOk(down.headers['www-authenticate'], 'no invitation to re-authenticate');
  t.match(lastAccess(gw)?.reason, /^auth_unavailable: (jwks_unavailable|discovery_failed)$/);
  t.equal((await gw.request({ path: '/', headers: bearer(token) })).status, 503);
  t.equal((await gw.request({ path: '/health' })).status, 200, 'public route unaffected');
  t.equal((await gw.request({ path: '/' })).status, 401, 'no token is still a plain 401');
  t.equal(up.seen.length, 1, 'only the public request reached the upstream');

  idp = await startIdp({ port, keys });
  t.teardown(() => idp.close());
  advance(61_000); // past the cooldown and the start-up retry back-off
  const back = await gw.request({ path: '/admin', headers: bearer(token) });
  t.equal(back.status, 200, 'recovers without a restart once the IdP is back');
  t.equal(up.seen.length, 2);
});

t.test('opaque tokens: introspection through the gateway, positive answers cached', async (t) => {
  const idp = await startIdp();
  t.teardown(() => idp.close());
  const up = await startUpstream(t);
  const issuerExtra = `      introspection:
        client_id: gateway
        client_secret: \${AUTHZ_TEST_INTROSPECTION_SECRET}
        cache: 60s
`;
  const yaml = policyYaml(idp.issuer, up.origin).replace(`audiences: [${JWT_AUD}]`, `audiences: [${JWT_AUD}, ${OPAQUE_AUD}]`).replace('      clock_skew: 5s\n', `      clock_skew: 5s\n${issuerExtra}`);
  const gw = await startGateway(t, yaml, { AUTHZ_TEST_INTROSPECTION_SECRET: 'gateway-secret' });

  // oidc-provider's introspection answer for a client_credentials token has no `sub` (RFC 7662
  // makes it optional) and the gateway requires one (token_missing_sub): the IdP adds it here.
  const opaque = await idpToken(idp, { resource: OPAQUE_AUD, claims: { ...ADMIN_CLAIMS, sub: 'svc-opaque' } });
  t.equal(opaque.split('.').length, 1, 'an opaque token, not a JWT');
  const introspections = (): number => count(idp, 'POST /token/introspection');

  const first = await gw.request({ path: '/admin', headers: bearer(opaque) });
  t.equal(first.status, 200);
  t.equal(up.seen.at(-1)?.headers['x-auth-roles'], 'admin,ops', 'roles from the introspection answer');
  t.equal(up.seen.at(-1)?.headers['x-auth-user'], 'svc-opaque');
  t.equal(introspections(), 1);
  for (let i = 0; i < 3; i++) t.equal((await gw.request({ path: '/admin', headers: bearer(opaque) })).status, 200);
  t.equal(introspections(), 1, 'positive answer cached: no new introspection');

  // Revoke at the IdP: within the cache window the gateway does not know yet (as specified).
  const rev = await fetch(`${idp.issuer}/token/revocation`, {
    method: 'POST',
    headers: { authorization: 'Basic ' + Buffer.from('svc:svc-secret').toString('base64') },
    body: new URLSearchParams({ token: opaque }),
  });
  t.equal(rev.status, 200);
  t.equal((await gw.request({ path: '/admin', headers: bearer(opaque) })).status, 200, 'cached for up to `cache`');
  advance(61_000);
  const after = await gw.request({ path: '/admin', headers: bearer(opaque) });
  t.equal(after.status, 401, 'cache expired: asked again, revoked → 401');
  t.equal(lastAccess(gw)?.reason, 'token_inactive_token');
  t.equal(introspections(), 2);

  const unknown = 'A'.repeat(43);
  t.equal((await gw.request({ path: '/', headers: bearer(unknown) })).status, 401, 'an opaque token the IdP never issued');
  t.equal((await gw.request({ path: '/', headers: bearer(unknown) })).status, 401);
  t.equal(introspections(), 3, 'negative answer cached briefly as well');
  t.equal(up.seen.length, 5, 'only the allowed requests reached the upstream');
});
