// Token validation through the real gateway, against a real OpenID provider: what passes, what is
// refused, with which status and WWW-Authenticate, and that the upstream never sees a refused request.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { rawTls, startGateway, startUpstream, statusOf } from '../helpers/gateway.js';
import {
  ADMIN_CLAIMS, JWT_AUD, USER_CLAIMS, bearer, count, goodClaims, hs256WithPublicKey, idpToken, lastAccess, policyYaml,
  privateKey, publicJwk, sign, signingKeys, startIdp, tamper, unsignedToken,
} from './_support.js';

const GENERIC_INVALID = 'Bearer realm="portcullis", error="invalid_token", error_description="The access token is invalid"';

const idp = await startIdp();
t.teardown(() => idp.close());
// A second, independent issuer (same kid names: both IdPs call their keys test-es256/test-rs256).
const idpB = await startIdp();
t.teardown(() => idpB.close());

t.test('a valid token passes with identity headers; forward_token: true keeps Authorization', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin, { authExtra: '  forward_token: true\n' }));
  const token = await idpToken(idp, { claims: ADMIN_CLAIMS });
  const res = await gw.request({ path: '/admin/users?x=1', headers: bearer(token) });
  t.equal(res.status, 200);
  t.equal(up.seen.length, 1);
  const h = up.seen[0]!.headers;
  t.equal(h['x-auth-user'], 'svc', 'sub of a client_credentials token is the client id');
  t.equal(h['x-auth-email'], 'svc@app.test');
  t.equal(h['x-auth-roles'], 'admin,ops');
  t.equal(h.authorization, `Bearer ${token}`);
  t.equal(lastAccess(gw)?.user, 'svc', 'the access log names the caller');

  // Same token again: served (from the verified-token cache) without asking the IdP anything.
  const before = idp.requests.length;
  t.equal((await gw.request({ path: '/', headers: bearer(token) })).status, 200);
  t.equal(idp.requests.length, before, 'no IdP round trip for an already verified token');
});

t.test('renamed identity headers; forward_token: false strips Authorization', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(
    t,
    policyYaml(idp.issuer, up.origin, { authExtra: '  forward_token: false\n  identity_headers: { user: X-Remote-User, email: X-Remote-Email, roles: X-Remote-Groups }\n' }),
  );
  const token = await idpToken(idp, { claims: ADMIN_CLAIMS });
  const res = await gw.request({
    path: '/admin',
    headers: { ...bearer(token), 'x-remote-user': 'root', 'X-Auth-User': 'not-ours-any-more' },
  });
  t.equal(res.status, 200);
  const h = up.seen[0]!.headers;
  t.equal(h['x-remote-user'], 'svc', 'the client-sent value is replaced');
  t.equal(h['x-remote-email'], 'svc@app.test');
  t.equal(h['x-remote-groups'], 'admin,ops');
  t.notOk(h['x-auth-roles'], 'the default names are not set any more');
  t.equal(h['x-auth-user'], 'not-ours-any-more', 'a header the gateway no longer owns passes untouched');
  t.notOk(h.authorization, 'token stripped');
});

t.test('refusals: status, WWW-Authenticate, generic body, precise reason only in the log', async (t) => {
  const up = await startUpstream(t);
  const issuerB = `    - issuer: ${idpB.issuer}\n      audiences: [${JWT_AUD}]\n      algorithms: [ES256, RS256]\n      roles_claim: realm_access.roles\n`;
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin, { issuerExtra: issuerB }));
  const es = privateKey(idp, 'ES256');
  const rs = privateKey(idp, 'RS256');
  const real = await idpToken(idp, { claims: USER_CLAIMS });
  const now = Math.floor(Date.now() / 1000);
  const [stranger] = await signingKeys('test'); // another key under the IdP's own kid
  const zeroSig = (() => {
    const [h, p] = real.split('.') as [string, string];
    return `${h}.${p}.${Buffer.alloc(64).toString('base64url')}`;
  })();

  const cases: Array<{ name: string; auth: string; reason: string }> = [
    { name: 'expired', auth: `Bearer ${await sign(es, goodClaims(idp, { iat: now - 600, exp: now - 60 }))}`, reason: 'token_expired' },
    { name: 'nbf in the future', auth: `Bearer ${await sign(es, goodClaims(idp, { nbf: now + 600 }))}`, reason: 'token_not_yet_valid' },
    { name: 'missing exp', auth: `Bearer ${await sign(es, goodClaims(idp, { exp: undefined }))}`, reason: 'token_missing_exp' },
    { name: 'wrong aud', auth: `Bearer ${await sign(es, goodClaims(idp, { aud: 'https://other.app.test' }))}`, reason: 'token_bad_audience' },
    { name: 'unknown iss', auth: `Bearer ${await sign(es, goodClaims(idp, { iss: 'https://evil.example' }))}`, reason: 'token_unknown_issuer' },
    { name: 'tampered payload (roles → admin)', auth: `Bearer ${tamper(real, (c) => ({ ...c, realm_access: { roles: ['admin'] } }))}`, reason: 'token_bad_signature' },
    { name: 'another key under the same kid', auth: `Bearer ${await sign(stranger!, goodClaims(idp))}`, reason: 'token_bad_signature' },
    { name: 'ES256 signature of all zeros', auth: `Bearer ${zeroSig}`, reason: 'token_bad_signature' },
    { name: "issuer A's key for a token claiming issuer B", auth: `Bearer ${await sign(es, goodClaims(idp, { iss: idpB.issuer }))}`, reason: 'token_bad_signature' },
    { name: 'RS256 with the right key but aud of another resource', auth: `Bearer ${await sign(rs, goodClaims(idp, { aud: ['x', 'y'] }))}`, reason: 'token_bad_audience' },
    { name: 'unknown kid', auth: `Bearer ${await sign({ ...(stranger!), kid: 'nobody-knows' }, goodClaims(idp))}`, reason: 'token_unknown_kid' },
    { name: 'alg none', auth: `Bearer ${unsignedToken(goodClaims(idp), 'none')}`, reason: 'token_alg_not_allowed' },
    { name: 'alg None', auth: `Bearer ${unsignedToken(goodClaims(idp), 'None', es.kid)}`, reason: 'token_alg_not_allowed' },
    { name: 'alg nOnE', auth: `Bearer ${unsignedToken(goodClaims(idp), 'nOnE', es.kid)}`, reason: 'token_alg_not_allowed' },
    { name: 'HS256 keyed with the public key', auth: `Bearer ${hs256WithPublicKey(publicJwk(rs), goodClaims(idp), rs.kid)}`, reason: 'token_alg_not_allowed' },
    { name: 'oversized token', auth: `Bearer ${'A'.repeat(9000)}`, reason: 'token_token_too_large' },
    { name: 'not a JWT, no introspection configured', auth: 'Bearer abc.def', reason: 'token_malformed_token' },
    { name: 'Basic credentials', auth: 'Basic ' + Buffer.from('admin:admin').toString('base64'), reason: 'token_not_bearer' },
    { name: 'Bearer without a token', auth: 'Bearer', reason: 'token_malformed_header' },
  ];
  for (const c of cases) {
    const before = up.seen.length;
    const res = await gw.request({ path: '/admin', headers: { authorization: c.auth } });
    t.equal(res.status, 401, `${c.name}: 401`);
    t.equal(res.headers['www-authenticate'], GENERIC_INVALID, `${c.name}: generic WWW-Authenticate`);
    t.equal(up.seen.length, before, `${c.name}: upstream saw nothing`);
    t.equal(lastAccess(gw)?.reason, c.reason, `${c.name}: precise reason in the access log`);
    const word = c.reason.replace(/^token_/, '');
    t.notOk(res.body.includes(word) || JSON.stringify(res.headers).includes(word), `${c.name}: reason not disclosed`);
  }
  // A real token of the other issuer still passes, so B is configured and working.
  t.equal((await gw.request({ path: '/', headers: bearer(await idpToken(idpB)) })).status, 200, 'issuer B itself is fine');
});

t.test('missing token, token in the query, insufficient role', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const userToken = await idpToken(idp, { claims: USER_CLAIMS });

  const none = await gw.request({ path: '/admin' });
  t.equal(none.status, 401);
  t.equal(none.headers['www-authenticate'], 'Bearer realm="portcullis"', 'RFC 6750 §3.1: no error code without credentials');
  t.equal(lastAccess(gw)?.reason, 'unauthenticated');

  for (const q of [`/?access_token=${userToken}`, `/admin?access_token=${userToken}`, `/?token=${userToken}`]) {
    const res = await gw.request({ path: q });
    t.equal(res.status, 401, `${q.slice(0, 20)}…: a token in the query string is not a credential`);
  }
  const form = await gw.request({
    method: 'POST', path: '/', body: `access_token=${userToken}`, headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  t.equal(form.status, 401, 'nor in a form body (RFC 6750 §2.2 is not supported)');

  const forbidden = await gw.request({ path: '/admin', headers: bearer(userToken) });
  t.equal(forbidden.status, 403);
  t.equal(
    forbidden.headers['www-authenticate'],
    'Bearer realm="portcullis", error="insufficient_scope", error_description="The access token does not grant access to this resource"',
  );
  t.equal(lastAccess(gw)?.reason, 'insufficient_role');
  t.equal(up.seen.length, 0, 'the upstream saw none of these');

  // The same user is fine where no role is needed.
  t.equal((await gw.request({ path: '/orders', headers: bearer(userToken) })).status, 200);
  t.equal(up.seen[0]!.headers['x-auth-roles'], 'user');
});

t.test('two Authorization headers (raw bytes) → 400, whichever comes first', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const admin = await idpToken(idp, { claims: ADMIN_CLAIMS });
  for (const [first, second] of [[`Bearer ${admin}`, 'Bearer x.y.z'], ['Bearer x.y.z', `Bearer ${admin}`], [`Bearer ${admin}`, `Bearer ${admin}`]]) {
    const raw = await rawTls(gw.port, gw.ca, `GET /admin HTTP/1.1\r\nHost: app.test\r\nAuthorization: ${first}\r\nauthorization: ${second}\r\nConnection: close\r\n\r\n`);
    t.equal(statusOf(raw), 400, 'ambiguous credentials are refused');
    t.match(raw, /www-authenticate: Bearer realm="portcullis", error="invalid_request"/i);
  }
  // Folded into one header value with a comma: also more than one credential.
  const joined = await gw.request({ path: '/admin', headers: { authorization: `Bearer ${admin}, Bearer ${admin}` } });
  t.equal(joined.status, 400);
  t.equal(up.seen.length, 0);
  t.equal(lastAccess(gw)?.reason, 'token_multiple_headers');
});

t.test('a flood of unknown kids does not hammer the IdP', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  // Make sure the gateway has fetched its keys (start-up fetch) before counting.
  t.equal((await gw.request({ path: '/', headers: bearer(await idpToken(idp, { claims: ADMIN_CLAIMS })) })).status, 200);
  const jwksBefore = count(idp, 'GET /jwks');
  const [attacker] = await signingKeys('x');
  const results = await Promise.all(
    Array.from({ length: 40 }, async () => {
      const tok = await sign({ ...(attacker!), kid: randomBytes(8).toString('hex') }, goodClaims(idp));
      return (await gw.request({ path: '/', headers: bearer(tok) })).status;
    }),
  );
  t.same(new Set(results), new Set([401]), 'every random kid is refused');
  t.ok(count(idp, 'GET /jwks') - jwksBefore <= 1, `at most one JWKS refresh per cooldown (saw ${count(idp, 'GET /jwks') - jwksBefore})`);
  t.equal(up.seen.length, 1, 'none of them reached the upstream');
});
