// Opaque tokens: RFC 7662 introspection against a real oidc-provider.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { createAuthenticator } from '../../src/auth/index.js';
import type { AuthOutcome } from '../../src/auth/index.js';
import type { IntrospectionConfig } from '../../src/config/types.js';
import { authConfig, count, fakeClock, getToken, issuerConfig, OPAQUE_AUD, RESOURCE_AUD, startIdp } from './_fixtures.js';

const reasonOf = (o: AuthOutcome): string => (o.kind === 'invalid' ? o.reason : o.kind === 'unavailable' ? `unavailable:${o.reason}` : o.kind);
const bearer = (token: string): string => `Bearer ${token}`;
const INTROSPECT = 'POST /token/introspection';
const intro = (over: Partial<IntrospectionConfig> = {}): IntrospectionConfig =>
  ({ endpoint: null, clientId: 'gateway', clientSecret: 'gateway-secret', cache: 60_000, ...over });

// oidc-provider gives client_credentials tokens no sub; the extra claims add one (a user token would have it).
const idp = await startIdp({ claims: { sub: 'svc-user', email: 'svc@app.test', realm_access: { roles: 'reader, writer' } } });
t.teardown(() => idp.close());

async function make(over: { cache?: number; audiences?: string[]; secret?: string } = {}) {
  const clock = fakeClock();
  const auth = createAuthenticator(authConfig([issuerConfig(idp, {
    audiences: over.audiences ?? [OPAQUE_AUD, RESOURCE_AUD],
    introspection: intro({ cache: over.cache ?? 60_000, ...(over.secret === undefined ? {} : { clientSecret: over.secret }) }),
  })]), { now: clock.now });
  t.teardown(() => auth.close());
  await auth.start();
  return { auth, clock };
}

t.test('active token → principal; positive answer cached', async (t) => {
  const { auth } = await make();
  t.ok(auth.ready(), 'introspection endpoint found by discovery');
  const token = await getToken(idp, OPAQUE_AUD);
  const before = count(idp, INTROSPECT);
  const out = await auth.authenticate(bearer(token));
  t.match(out, { kind: 'authenticated', principal: {
    subject: 'svc-user', email: 'svc@app.test', roles: ['reader', 'writer'], clientId: 'svc',
    tokenType: 'opaque', issuer: idp.issuer, scopes: ['api:read'],
  } });
  t.equal(await auth.authenticate(bearer(token)), out);
  t.equal(count(idp, INTROSPECT) - before, 1, 'second call made no request');
});

t.test('active:false → 401 inactive_token; negative answer cached 10 s', async (t) => {
  const { auth, clock } = await make();
  const bogus = randomBytes(32).toString('base64url');
  const before = count(idp, INTROSPECT);
  t.match(await auth.authenticate(bearer(bogus)), { kind: 'invalid', status: 401, error: 'invalid_token', reason: 'inactive_token' });
  t.equal(reasonOf(await auth.authenticate(bearer(bogus))), 'inactive_token');
  t.equal(count(idp, INTROSPECT) - before, 1, 'negative cache hit');
  clock.advance(10_001);
  t.equal(reasonOf(await auth.authenticate(bearer(bogus))), 'inactive_token');
  t.equal(count(idp, INTROSPECT) - before, 2, 'asked again after 10 s');
});

t.test('concurrent identical lookups are coalesced', async (t) => {
  const { auth } = await make();
  const token = await getToken(idp, OPAQUE_AUD);
  const before = count(idp, INTROSPECT);
  const outs = await Promise.all(Array.from({ length: 20 }, () => auth.authenticate(bearer(token))));
  t.ok(outs.every((o) => o.kind === 'authenticated'));
  t.equal(count(idp, INTROSPECT) - before, 1);
});

t.test('cache bounded by the configured cache time and by exp', async (t) => {
  const { auth, clock } = await make({ cache: 30_000 });
  const token = await getToken(idp, OPAQUE_AUD);
  const before = count(idp, INTROSPECT);
  const first = await auth.authenticate(bearer(token));
  clock.advance(29_000);
  t.equal(await auth.authenticate(bearer(token)), first);
  clock.advance(2_000);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'authenticated');
  t.equal(count(idp, INTROSPECT) - before, 2, 'asked again once the cache time passed');
  // the IdP (real clock) still says active, but exp (300 s TTL) has passed on our clock
  clock.advance(300_000);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'expired');
  t.equal(count(idp, INTROSPECT) - before, 3);
});

t.test('a positive answer is never cached past exp', async (t) => {
  const short = await startIdp({ accessTokenTTL: 5, claims: { sub: 'x' } });
  t.teardown(() => short.close());
  const clock = fakeClock();
  const auth = createAuthenticator(authConfig([issuerConfig(short, { audiences: [OPAQUE_AUD], introspection: intro({ cache: 600_000 }) })]), { now: clock.now });
  t.teardown(() => auth.close());
  await auth.start();
  const token = await getToken(short, OPAQUE_AUD);
  const out = await auth.authenticate(bearer(token));
  t.equal(out.kind, 'authenticated');
  clock.advance(6_000);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'expired');
  t.equal(count(short, INTROSPECT), 2);
});

t.test('aud checked like JWTs; without sub the client_id is the subject (RFC 7662 §2.2)', async (t) => {
  const { auth } = await make({ audiences: [RESOURCE_AUD] });
  t.equal(reasonOf(await auth.authenticate(bearer(await getToken(idp, OPAQUE_AUD)))), 'bad_audience');
  const nosub = await startIdp({ claims: {} });
  t.teardown(() => nosub.close());
  const a2 = createAuthenticator(authConfig([issuerConfig(nosub, { audiences: [OPAQUE_AUD], introspection: intro() })]));
  t.teardown(() => a2.close());
  await a2.start();
  const out = await a2.authenticate(bearer(await getToken(nosub, OPAQUE_AUD)));
  t.equal(out.kind, 'authenticated');
  if (out.kind === 'authenticated') t.equal(out.principal.subject, out.principal.clientId, 'client_credentials token: subject = client_id');
});

t.test('introspection failures are 503, not 401', async (t) => {
  const { auth } = await make({ secret: 'wrong' });
  t.equal(reasonOf(await auth.authenticate(bearer(await getToken(idp, OPAQUE_AUD)))), 'unavailable:introspection_failed', 'IdP refuses our credentials');

  const down = await startIdp({ claims: { sub: 'x' } });
  const clock = fakeClock();
  const a2 = createAuthenticator(authConfig([issuerConfig(down, { audiences: [OPAQUE_AUD], introspection: intro() })]), { now: clock.now });
  t.teardown(() => a2.close());
  await a2.start();
  const token = await getToken(down, OPAQUE_AUD);
  await down.close();
  t.equal(reasonOf(await a2.authenticate(bearer(token))), 'unavailable:introspection_failed');
  t.equal(reasonOf(await a2.authenticate(bearer(randomBytes(16).toString('hex')))), 'unavailable:introspection_failed', 'not cached as negative');
});

t.test('opaque token without introspection configured → 401 malformed_token, no I/O', async (t) => {
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]));
  t.teardown(() => auth.close());
  await auth.start();
  const before = idp.requests.length;
  t.equal(reasonOf(await auth.authenticate(bearer(await getToken(idp, OPAQUE_AUD)))), 'malformed_token');
  t.equal(idp.requests.length - before, 1, 'only the token request of this test');
});
