// JWT access tokens against a real oidc-provider: the happy path and every forgery we know of.
import t from 'tap';
import { createPublicKey } from 'node:crypto';
import { exportSPKI, generateKeyPair, importJWK, SignJWT, UnsecuredJWT } from 'jose';
import type { JWK } from 'jose';
import { createAuthenticator } from '../../src/auth/index.js';
import type { AuthOutcome } from '../../src/auth/index.js';
import { authConfig, count, fakeClock, getToken, issuerConfig, RESOURCE_AUD, startIdp } from './_fixtures.js';

const idpA = await startIdp();
t.teardown(() => idpA.close());
const idpB = await startIdp(); // same default kids as A (test-es256, test-rs256), different keys
t.teardown(() => idpB.close());

const clock = fakeClock();
const auth = createAuthenticator(authConfig([issuerConfig(idpA), issuerConfig(idpB)]), { now: clock.now });
t.teardown(() => auth.close());
await auth.start();

const bearer = (token: string): string => `Bearer ${token}`;
const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
const nowS = (): number => Math.floor(clock.now() / 1000);
const claims = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  iss: idpA.issuer, sub: 'mallory', aud: RESOURCE_AUD, iat: nowS(), exp: nowS() + 300, ...over,
});
const keyOf = (idp: typeof idpA, alg: string): Record<string, unknown> & { kid: string } => {
  const k = idp.keys.find((key) => key.alg === alg);
  if (k === undefined) throw new Error(`no ${alg} key`);
  return k;
};
/** Signs with the IdP's real private key: a token the IdP could have issued. */
async function signAs(idp: typeof idpA, payload: Record<string, unknown>, alg = 'ES256', kid?: string): Promise<string> {
  const jwk = keyOf(idp, alg);
  const key = await importJWK(jwk as JWK, alg);
  return new SignJWT(payload).setProtectedHeader({ alg, kid: kid ?? jwk.kid, typ: 'at+jwt' }).sign(key);
}
const reasonOf = (o: AuthOutcome): string => (o.kind === 'invalid' ? o.reason : o.kind === 'unavailable' ? `unavailable:${o.reason}` : o.kind);

t.test('a real IdP token → principal', async (t) => {
  t.ok(auth.ready());
  const token = await getToken(idpA);
  const out = await auth.authenticate(bearer(token));
  t.equal(out.kind, 'authenticated');
  if (out.kind !== 'authenticated') return;
  t.match(out.principal, {
    subject: 'svc', email: 'svc@app.test', roles: ['admin', 'ops'], issuer: idpA.issuer,
    clientId: 'svc', tokenType: 'jwt', scopes: ['api:read'],
  });
  t.ok(Math.abs(out.principal.expiresAt - (clock.now() + 300_000)) < 5_000, 'expiresAt from exp, in ms');
  t.ok(Object.isFrozen(out.principal));
  // scheme is case-insensitive (RFC 9110 §11.1)
  t.equal((await auth.authenticate(`bearer ${await getToken(idpA)}`)).kind, 'authenticated');
  t.equal((await auth.authenticate(`BEARER ${await getToken(idpB)}`)).kind, 'authenticated');
});

t.test('check(): known outcomes synchronously, a promise until a token was verified', async (t) => {
  t.same(auth.check(undefined), { kind: 'anonymous' });
  t.equal((auth.check('Basic dXNlcjpwYXNz') as AuthOutcome).kind, 'invalid', 'a malformed or foreign scheme is judged at once');
  const token = await signAs(idpA, claims({ sub: 'cached-user' }));
  const first = auth.check(bearer(token));
  t.ok(first instanceof Promise, 'never verified: verified now, a promise');
  const verified = await first;
  t.equal(verified.kind, 'authenticated');
  t.equal(auth.check(bearer(token)), verified, 'then the same outcome object, synchronously');
  t.ok(auth.check(bearer(token.slice(0, -2) + 'AA')) instanceof Promise, 'a tampered copy is not a hit');
  t.equal((await auth.check(bearer(token.slice(0, -2) + 'AA'))).kind, 'invalid', 'and is refused');
  clock.advance(301_000);
  const expired = auth.check(bearer(token));
  t.ok(expired instanceof Promise, 'past exp: not served from the cache');
  t.equal((await expired).kind, 'invalid', 'and refused');
  t.equal((await auth.authenticate(bearer(token))).kind, 'invalid', 'authenticate gives the same answer');
  clock.advance(-301_000);
});

t.test('self-signed valid-looking tokens from the IdP key are accepted (control for the forgeries)', async (t) => {
  t.equal((await auth.authenticate(bearer(await signAs(idpA, claims())))).kind, 'authenticated');
  t.equal((await auth.authenticate(bearer(await signAs(idpA, claims(), 'RS256')))).kind, 'authenticated');
});

t.test('alg none in any casing is refused', async (t) => {
  const unsecured = new UnsecuredJWT(claims()).encode();
  t.equal(reasonOf(await auth.authenticate(bearer(unsecured))), 'alg_not_allowed');
  for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
    const kid = keyOf(idpA, 'ES256').kid;
    for (const sig of ['', 'AAAA']) {
      const token = `${b64({ alg, kid })}.${b64(claims())}.${sig}`;
      t.equal(reasonOf(await auth.authenticate(bearer(token))), 'alg_not_allowed', `${alg} sig=${JSON.stringify(sig)}`);
    }
  }
});

t.test('HS256 signed with the issuer public key (algorithm confusion) is refused', async (t) => {
  const pub = { ...keyOf(idpA, 'RS256') };
  for (const p of ['d', 'p', 'q', 'dp', 'dq', 'qi']) delete pub[p];
  const pem = await exportSPKI(createPublicKey({ key: pub as JWK & { kty: string }, format: 'jwk' }));
  for (const [form, secret] of [['PEM', pem], ['JWK', JSON.stringify(pub)]] as const) {
    const token = await new SignJWT(claims()).setProtectedHeader({ alg: 'HS256', kid: pub['kid'] as string })
      .sign(new TextEncoder().encode(secret));
    t.equal(reasonOf(await auth.authenticate(bearer(token))), 'alg_not_allowed', form);
  }
  // …and such a config cannot even be built
  for (const algorithms of [['HS256'], ['RS256', 'none'], []]) {
    t.throws(() => createAuthenticator(authConfig([issuerConfig(idpA, { algorithms })])), { code: 'GW_ERR_CONFIG_INVALID' });
  }
});

t.test('another key with the same kid', async (t) => {
  const { privateKey } = await generateKeyPair('ES256');
  const token = await new SignJWT(claims()).setProtectedHeader({ alg: 'ES256', kid: keyOf(idpA, 'ES256').kid }).sign(privateKey);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'bad_signature');
});

t.test('tampered payload of a real token', async (t) => {
  const [h, p, s] = (await getToken(idpA)).split('.') as [string, string, string];
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
  payload['sub'] = 'admin';
  payload['realm_access'] = { roles: ['superuser'] };
  t.equal(reasonOf(await auth.authenticate(bearer(`${h}.${b64(payload)}.${s}`))), 'bad_signature');
});

t.test('ES256 all-zero signature (CVE-2022-21449 style)', async (t) => {
  const [h, p] = (await signAs(idpA, claims())).split('.') as [string, string];
  const zero = Buffer.alloc(64).toString('base64url');
  t.equal(reasonOf(await auth.authenticate(bearer(`${h}.${p}.${zero}`))), 'bad_signature');
  // DER-encoded zero (r=0, s=0) is also just a bad signature
  t.equal(reasonOf(await auth.authenticate(bearer(`${h}.${p}.${Buffer.from('3006020100020100', 'hex').toString('base64url')}`))), 'bad_signature');
});

t.test('claims: expired, nbf in the future, wrong aud, missing exp, missing sub', async (t) => {
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ exp: nowS() - 10 }))))), 'expired');
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ nbf: nowS() + 600 }))))), 'not_yet_valid');
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ aud: 'https://other.app.test' }))))), 'bad_audience');
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ aud: ['x', RESOURCE_AUD] }))))), 'authenticated', 'any aud of an array');
  const noExp = claims();
  delete noExp['exp'];
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, noExp)))), 'missing_exp');
  const noSub = claims();
  delete noSub['sub'];
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, noSub)))), 'missing_sub');
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ exp: 'tomorrow' }))))), 'bad_claims');
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ nbf: 'now' }))))), 'bad_claims');
});

t.test('wrong or unknown iss: refused without any network I/O', async (t) => {
  const before = idpA.requests.length + idpB.requests.length;
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ iss: 'https://evil.test' }))))), 'unknown_issuer');
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ iss: `${idpA.issuer}/` }))))), 'unknown_issuer', 'exact match only');
  const noIss = claims();
  delete noIss['iss'];
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, noIss)))), 'unknown_issuer');
  t.equal(idpA.requests.length + idpB.requests.length, before);
});

t.test("issuer A's key, claiming issuer B (same kid names): verified only with B's keys", async (t) => {
  t.equal(keyOf(idpA, 'ES256').kid, keyOf(idpB, 'ES256').kid);
  t.equal(reasonOf(await auth.authenticate(bearer(await signAs(idpA, claims({ iss: idpB.issuer }))))), 'bad_signature');
  // A real token of A with iss rewritten to B
  const [h, p, s] = (await getToken(idpA)).split('.') as [string, string, string];
  const payload = { ...(JSON.parse(Buffer.from(p, 'base64url').toString()) as object), iss: idpB.issuer };
  t.equal(reasonOf(await auth.authenticate(bearer(`${h}.${b64(payload)}.${s}`))), 'bad_signature');
});

t.test('malformed JWTs', async (t) => {
  for (const token of ['a.b.c', `${b64({ alg: 'ES256' })}.notjson.sig`, `${b64({ alg: 'ES256' })}.${b64([1, 2])}.sig`, 'e30.e30.']) {
    t.equal(reasonOf(await auth.authenticate(bearer(token))), token === 'e30.e30.' ? 'unknown_issuer' : 'malformed_token', token);
  }
  // header garbage with a known iss goes through jose: still malformed, never a crash
  t.equal(reasonOf(await auth.authenticate(bearer(`bm90anNvbg.${b64(claims())}.c2ln`))), 'malformed_token');
  // no Authorization at all: anonymous, no token needed for public routes
  t.equal((await auth.authenticate(undefined)).kind, 'anonymous');
});

t.test('header rules: size, multiple, scheme', async (t) => {
  const valid = await getToken(idpA);
  const before = idpA.requests.length;
  t.match(await auth.authenticate(bearer('a'.repeat(8193))), { kind: 'invalid', status: 401, error: 'invalid_token', reason: 'token_too_large' });
  t.match(await auth.authenticate(bearer(`${valid}.${'A'.repeat(9000)}`)), { reason: 'token_too_large' });
  t.match(await auth.authenticate([bearer(valid), bearer(valid)]), { kind: 'invalid', status: 400, error: 'invalid_request', reason: 'multiple_headers' });
  t.match(await auth.authenticate(`${bearer(valid)}, ${bearer(valid)}`), { status: 400, reason: 'multiple_headers' });
  t.match(await auth.authenticate(`Basic ${Buffer.from('svc:svc-secret').toString('base64')}`), { status: 401, reason: 'not_bearer' });
  t.match(await auth.authenticate('Bearer'), { status: 401, reason: 'malformed_header' });
  t.match(await auth.authenticate(`Bearer ${valid} extra`), { status: 401, reason: 'malformed_header' });
  t.match(await auth.authenticate('Bearer tok\u00e9n'), { status: 401, reason: 'malformed_header' });
  t.equal(idpA.requests.length, before, 'no IdP traffic for any of these');
  t.equal((await auth.authenticate([bearer(valid)])).kind, 'authenticated', 'a one-element array is one header');
});

t.test('unknown kid: one JWKS refresh per cooldown, even under a flood', async (t) => {
  const { privateKey } = await generateKeyPair('ES256');
  const forge = (i: number): Promise<string> =>
    new SignJWT(claims({ jti: String(i) })).setProtectedHeader({ alg: 'ES256', kid: `forged-${i}` }).sign(privateKey);
  clock.advance(31_000); // out of the cooldown started by start()
  const before = count(idpA, 'GET /jwks');
  const tokens = await Promise.all(Array.from({ length: 60 }, (_, i) => forge(i)));
  const concurrent = await Promise.all(tokens.slice(0, 30).map((tok) => auth.authenticate(bearer(tok))));
  for (const tok of tokens.slice(30)) t.equal(reasonOf(await auth.authenticate(bearer(tok))), 'unknown_kid');
  t.ok(concurrent.every((o) => reasonOf(o) === 'unknown_kid'));
  t.equal(count(idpA, 'GET /jwks') - before, 1, 'exactly one JWKS fetch for 60 unknown kids');
  // known kids keep working during the cooldown
  t.equal((await auth.authenticate(bearer(await getToken(idpA)))).kind, 'authenticated');
  clock.advance(30_000);
  t.equal(reasonOf(await auth.authenticate(bearer(await forge(99)))), 'unknown_kid');
  t.equal(count(idpA, 'GET /jwks') - before, 2, 'one more after the cooldown');
});
