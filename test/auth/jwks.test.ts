// JWKS lifecycle against a real IdP: rotation, outages, start with the IdP down, token cache.
import t from 'tap';
import { createAuthenticator } from '../../src/auth/index.js';
import type { AuthOutcome } from '../../src/auth/index.js';
import { authConfig, count, fakeClock, getToken, issuerConfig, signingKeys, startIdp } from './_fixtures.js';

const reasonOf = (o: AuthOutcome): string => (o.kind === 'invalid' ? o.reason : o.kind === 'unavailable' ? `unavailable:${o.reason}` : o.kind);
const bearer = (token: string): string => `Bearer ${token}`;

t.test('key rotation at the IdP is picked up without restart', async (t) => {
  let idp = await startIdp({ keys: await signingKeys('old') });
  t.teardown(() => idp.close());
  const clock = fakeClock();
  const refreshes: string[] = [];
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), { now: clock.now, onJwksRefresh: (_i, r) => refreshes.push(r) });
  t.teardown(() => auth.close());
  await auth.start();
  t.equal(reasonOf(await auth.authenticate(bearer(await getToken(idp)))), 'authenticated');

  // the IdP restarts with new keys (new kids) on the same issuer URL
  const port = idp.port;
  await idp.close();
  idp = await startIdp({ port, keys: await signingKeys('new') });
  const rotated = await getToken(idp);
  t.match(JSON.parse(Buffer.from(rotated.split('.')[0] as string, 'base64url').toString()), { kid: 'new-es256' });
  clock.advance(31_000);
  t.equal(reasonOf(await auth.authenticate(bearer(rotated))), 'authenticated', 'new kid → refresh → verified');
  t.equal(count(idp, 'GET /jwks'), 1);
  t.same(refreshes, ['ok', 'ok']);
});

t.test('IdP down: cached keys keep verifying, stale keys are kept', async (t) => {
  const idp = await startIdp();
  const clock = fakeClock();
  const refreshes: string[] = [];
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), {
    now: clock.now, jwksMaxAge: 60_000, onJwksRefresh: (_i, r) => refreshes.push(r),
  });
  t.teardown(() => auth.close());
  await auth.start();
  const tokens = await Promise.all([getToken(idp), getToken(idp), getToken(idp)]);
  await idp.close();
  t.equal(reasonOf(await auth.authenticate(bearer(tokens[0] as string))), 'authenticated');
  clock.advance(120_000); // keys now older than jwksMaxAge: a background refresh is tried and fails
  t.equal(reasonOf(await auth.authenticate(bearer(tokens[1] as string))), 'authenticated');
  // let the background refresh fail, then verify again with the old keys
  for (let i = 0; i < 50 && refreshes.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  t.same(refreshes, ['ok', 'error']);
  t.equal(reasonOf(await auth.authenticate(bearer(tokens[2] as string))), 'authenticated');
  t.ok(auth.ready(), 'still ready: it has keys');
});

t.test('IdP down at start: start() resolves, not ready, 503 not 401, recovers', async (t) => {
  const keys = await signingKeys('boot');
  let idp = await startIdp({ keys });
  const token = await getToken(idp);
  const port = idp.port;
  await idp.close();
  const clock = fakeClock();
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), { now: clock.now, httpTimeout: 2_000 });
  t.teardown(() => auth.close());
  await auth.start();
  t.equal(auth.ready(), false);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'unavailable:jwks_unavailable');
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'unavailable:jwks_unavailable', 'within the cooldown: no new fetch');

  idp = await startIdp({ port, keys });
  t.teardown(() => idp.close());
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'unavailable:jwks_unavailable', 'still cooling down');
  t.equal(count(idp, 'GET /jwks'), 0, 'a flood while cooling down does not reach the IdP');
  clock.advance(31_000);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'authenticated');
  t.ok(auth.ready());
});

t.test('discovery must name the configured issuer', async (t) => {
  const idp = await startIdp();
  t.teardown(() => idp.close());
  const clock = fakeClock();
  // Same server, but configured under another spelling of its issuer: discovery says otherwise.
  const other = issuerConfig(idp, { issuer: idp.issuer.replace('127.0.0.1', 'localhost') });
  const auth = createAuthenticator(authConfig([other]), { now: clock.now });
  t.teardown(() => auth.close());
  await auth.start();
  t.equal(auth.ready(), false);
  t.equal(count(idp, 'GET /jwks'), 0, 'no keys fetched from an untrusted document');
});

t.test('verified-token cache: hit returns the same outcome; never served past exp', async (t) => {
  const idp = await startIdp({ accessTokenTTL: 60 });
  t.teardown(() => idp.close());
  const clock = fakeClock();
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), { now: clock.now });
  t.teardown(() => auth.close());
  await auth.start();
  const token = await getToken(idp);
  const first = await auth.authenticate(bearer(token));
  t.equal(first.kind, 'authenticated');
  t.equal(await auth.authenticate(bearer(token)), first, 'cache hit: the identical frozen object, no re-verification');
  if (first.kind !== 'authenticated') return;
  clock.advance(first.principal.expiresAt - clock.now() - 1);
  t.equal(await auth.authenticate(bearer(token)), first, '1 ms before exp: still served');
  clock.advance(1);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'expired', 'at exp: re-verified and refused');
  clock.advance(-10_000);
  const again = await auth.authenticate(bearer(token));
  t.equal(again.kind, 'authenticated');
  t.not(again, first, 'the expired entry was dropped, not resurrected');
});

t.test('verified-token cache is bounded (LRU)', async (t) => {
  const idp = await startIdp();
  t.teardown(() => idp.close());
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), { cacheSize: 2 });
  t.teardown(() => auth.close());
  await auth.start();
  const [a, b, c] = await Promise.all([getToken(idp), getToken(idp), getToken(idp)]);
  const oa = await auth.authenticate(bearer(a as string));
  const ob = await auth.authenticate(bearer(b as string));
  t.equal(await auth.authenticate(bearer(a as string)), oa, 'a is now most recent');
  await auth.authenticate(bearer(c as string)); // evicts b
  t.equal(await auth.authenticate(bearer(a as string)), oa);
  t.not(await auth.authenticate(bearer(b as string)), ob, 'b was evicted and verified again');
});

t.test('a key withdrawn from the JWKS: a token cached while its key was published is refused once the set no longer has it', async (t) => {
  let idp = await startIdp({ keys: await signingKeys('leaked') });
  t.teardown(() => idp.close());
  const clock = fakeClock();
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), { now: clock.now });
  t.teardown(() => auth.close());
  await auth.start();
  const before = await getToken(idp);
  t.equal(reasonOf(await auth.authenticate(bearer(before))), 'authenticated', 'verified and cached');
  t.equal(reasonOf(auth.check(bearer(before)) as AuthOutcome), 'authenticated', 'served from the cache (synchronously)');

  // The IdP withdraws every key it had (e.g. after a leak) and signs with new ones.
  const port = idp.port;
  await idp.close();
  idp = await startIdp({ port, keys: await signingKeys('fresh') });
  clock.advance(31_000);
  t.equal(reasonOf(await auth.authenticate(bearer(await getToken(idp)))), 'authenticated', 'a token of the new key: the set is fetched again');
  const again = auth.check(bearer(before));
  t.ok(again instanceof Promise, 'the old token is no longer answered from the cache');
  t.not(reasonOf(await again), 'authenticated', 'and is refused, as an uncached token of the withdrawn key is');
});

t.test('a refresh that drops one key re-verifies the cached tokens of the keys kept: they stay valid', async (t) => {
  const keys = (await signingKeys('kept')) as Array<Record<string, unknown>>;
  let idp = await startIdp({ keys });
  t.teardown(() => idp.close());
  const clock = fakeClock();
  const refreshes: string[] = [];
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), { now: clock.now, jwksMaxAge: 60_000, onJwksRefresh: (_i, r) => refreshes.push(r) });
  t.teardown(() => auth.close());
  await auth.start();
  const token = await getToken(idp);
  const kid = (JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString()) as { kid: string }).kid;
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'authenticated');

  // The other key is replaced; the token's own key stays published.
  const port = idp.port;
  await idp.close();
  const replacement = ((await signingKeys('other')) as Array<Record<string, unknown>>).filter((k) => k.alg !== keys.find((x) => x.kid === kid)!.alg);
  idp = await startIdp({ port, keys: [keys.find((k) => k.kid === kid)!, ...replacement] });
  // Older than jwksMaxAge: the next verification (a token not cached yet) refreshes in the background.
  clock.advance(61_000);
  t.equal(reasonOf(await auth.authenticate(bearer(await getToken(idp)))), 'authenticated');
  // Until the refresh has been applied: the IdP seeing the request is not enough (the answer may
  // still be on its way back).
  for (let i = 0; i < 100 && refreshes.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  t.same(refreshes, ['ok', 'ok'], 'the set was fetched again');
  t.equal(count(idp, 'GET /jwks'), 1);
  const after = auth.check(bearer(token));
  t.ok(after instanceof Promise, 'the cache of this issuer was dropped with the removed key');
  t.equal(reasonOf(await after), 'authenticated', 'and the token, whose key is still published, verifies again');
  t.equal(reasonOf(auth.check(bearer(token)) as AuthOutcome), 'authenticated', 'then is cached again');
});

t.test('with every token served from the cache, a withdrawn key is still noticed: the key set is looked at on a timer', async (t) => {
  let idp = await startIdp({ keys: await signingKeys('quiet') });
  t.teardown(() => idp.close());
  const clock = fakeClock();
  // jwksMaxAge 2 s: the set is looked at every second (real time), refreshed once older than 2 s (fake clock).
  const auth = createAuthenticator(authConfig([issuerConfig(idp)]), { now: clock.now, jwksMaxAge: 2_000, jwksCooldown: 1_000 });
  t.teardown(() => auth.close());
  await auth.start();
  const token = await getToken(idp);
  t.equal(reasonOf(await auth.authenticate(bearer(token))), 'authenticated');
  const port = idp.port;
  await idp.close();
  idp = await startIdp({ port, keys: await signingKeys('replaced') });
  clock.advance(3_000);
  t.equal(reasonOf(auth.check(bearer(token)) as AuthOutcome), 'authenticated', 'still cached: nothing has looked at the set yet');
  for (let i = 0; i < 150 && count(idp, 'GET /jwks') < 1; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(count(idp, 'GET /jwks'), 1, 'the timer fetched the set, with no request asking');
  for (let i = 0; i < 50 && !(auth.check(bearer(token)) instanceof Promise); i++) await new Promise((r) => setTimeout(r, 20));
  t.not(reasonOf(await auth.authenticate(bearer(token))), 'authenticated', 'the token of the withdrawn key is refused');
});
