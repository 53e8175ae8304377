// Pure parts: header parsing, WWW-Authenticate, claims mapping, LRU, introspection verdicts.
import t from 'tap';
import fc from 'fast-check';
import { parseAuthorization } from '../../src/auth/header.js';
import { wwwAuthenticate } from '../../src/auth/index.js';
import { buildPrincipal, readClaimPath, toStringList } from '../../src/auth/claims.js';
import { ExpiringLru } from '../../src/auth/lru.js';
import { judgeIntrospection } from '../../src/auth/introspection.js';
import { checkEndpoint } from '../../src/auth/discovery.js';
import type { IssuerConfig } from '../../src/config/types.js';

t.test('parseAuthorization', async (t) => {
  t.equal(parseAuthorization(undefined), null);
  t.equal(parseAuthorization([]), null);
  t.same(parseAuthorization('Bearer abc.DEF-_~+/=='), { token: 'abc.DEF-_~+/==' });
  t.same(parseAuthorization('bEaReR   abc'), { token: 'abc' }, '1*SP');
  const reason = (h: string | string[]): string | undefined => {
    const r = parseAuthorization(h);
    return r !== null && 'kind' in r ? r.reason : undefined;
  };
  t.equal(reason(''), 'malformed_header');
  t.equal(reason('Bearer'), 'malformed_header');
  t.equal(reason('Bearer '), 'malformed_header');
  t.equal(reason('Bearer a=b'), 'malformed_header', '= only at the end');
  t.equal(reason('Bearer a\tb'), 'malformed_header');
  t.equal(reason('Bearer a b'), 'malformed_header');
  t.equal(reason('Bearer "abc"'), 'malformed_header');
  t.equal(reason('Basic'), 'not_bearer');
  t.equal(reason('Basic dXNlcjpwYXNz'), 'not_bearer');
  t.equal(reason('Bearerx abc'), 'not_bearer');
  t.equal(reason('Bearer a, Bearer b'), 'multiple_headers');
  t.equal(reason(['Bearer a', 'Bearer b']), 'multiple_headers');
  t.equal(reason(`Bearer ${'a'.repeat(8192)}`), undefined, 'exactly 8 KiB is allowed');
  t.equal(reason(`Bearer ${'a'.repeat(8193)}`), 'token_too_large');
  t.equal(reason(`Bearer ${'a'.repeat(1 << 20)}`), 'token_too_large');
  // never throws, whatever the input; a token, when returned, only has b64token characters
  fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => {
    const r = parseAuthorization(`Bearer ${s}`);
    return r === null || 'kind' in r || /^[A-Za-z0-9\-._~+/]+=*$/.test(r.token);
  }));
});

t.test('wwwAuthenticate', async (t) => {
  t.equal(wwwAuthenticate('api', null), 'Bearer realm="api"');
  t.equal(wwwAuthenticate('api', { kind: 'anonymous' }), 'Bearer realm="api"');
  t.equal(
    wwwAuthenticate('api', { kind: 'invalid', status: 401, error: 'invalid_token', reason: 'expired' }),
    'Bearer realm="api", error="invalid_token", error_description="The access token is invalid"',
  );
  t.match(wwwAuthenticate('api', { kind: 'invalid', status: 400, error: 'invalid_request', reason: 'multiple_headers' }), /error="invalid_request"/);
  t.match(wwwAuthenticate('api', 'insufficient_scope'), /^Bearer realm="api", error="insufficient_scope", error_description="[^"]+"$/);
  t.equal(wwwAuthenticate('a"b\\c\r\nSet-Cookie: x=1\u00e9', null), 'Bearer realm="a\\"b\\\\c??Set-Cookie: x=1?"');
  t.notMatch(wwwAuthenticate('x', { kind: 'invalid', status: 401, error: 'invalid_token', reason: 'unknown_issuer' }), /issuer/, 'reason not leaked');
});

t.test('claims', async (t) => {
  const claims = { realm_access: { roles: ['a', 'b', 3] }, 'https://x.test/roles': 'c d', groups: 'e,f , g' };
  t.same(toStringList(readClaimPath(claims, 'realm_access.roles')), ['a', 'b']);
  t.same(toStringList(readClaimPath(claims, 'https://x.test/roles')), ['c', 'd']);
  t.same(toStringList(readClaimPath(claims, 'groups')), ['e', 'f', 'g']);
  t.equal(readClaimPath(claims, 'realm_access.__proto__'), undefined);
  t.equal(readClaimPath(claims, 'constructor'), undefined);
  t.same(toStringList(readClaimPath(claims, 'missing.path')), []);
  const ctx = { issuer: 'i', rolesClaim: 'roles', tokenType: 'jwt' as const, expiresAt: 1 };
  t.equal(buildPrincipal({ sub: '' }, ctx), 'missing_sub');
  t.equal(buildPrincipal({ sub: 42 }, ctx), 'missing_sub');
  t.match(buildPrincipal({ sub: 's', scp: ['x', 'y'], azp: 'c', email: 5 }, ctx), { scopes: ['x', 'y'], clientId: 'c', email: null, roles: [] });
  t.match(buildPrincipal({ sub: 's', scope: 'a,b c' }, ctx), { scopes: ['a,b', 'c'] }, 'scope splits on spaces only (RFC 6749 §3.3)');
});

t.test('ExpiringLru', async (t) => {
  const lru = new ExpiringLru<string>(2);
  lru.set('a', 'A', 100);
  lru.set('b', 'B', 100);
  t.equal(lru.get('a', 0), 'A');
  lru.set('c', 'C', 100);
  t.equal(lru.get('b', 0), undefined, 'least recently used evicted');
  t.equal(lru.get('a', 99), 'A');
  t.equal(lru.get('a', 100), undefined, 'expired at expiresAt');
  t.equal(lru.get('a', 0), undefined, 'and dropped');
  t.equal(lru.size, 1);
  t.throws(() => new ExpiringLru(0));
});

t.test('ExpiringLru: a hit moves its entry only once it has drifted into the older half', async (t) => {
  const lru = new ExpiringLru<string>(4);
  for (const k of ['a', 'b', 'c', 'd']) lru.set(k, k.toUpperCase(), 100);
  // 'c' has 1 placement after it (< 4/2): read, not moved. 'a' has 3: read and moved.
  t.equal(lru.get('c', 0), 'C');
  t.equal(lru.get('a', 0), 'A');
  lru.set('e', 'E', 100);
  t.equal(lru.get('b', 0), undefined, 'b was the oldest');
  lru.set('f', 'F', 100);
  t.equal(lru.get('c', 0), undefined, 'c was not moved by its read, so it went next');
  t.equal(lru.get('a', 0), 'A', 'a was moved by its read');
});

t.test('ExpiringLru: properties', async () => {
  type Op = { set: string; exp: number } | { get: string; now: number };
  const key = fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f', 'g');
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ set: key, exp: fc.integer({ min: 0, max: 20 }) }),
    fc.record({ get: key, now: fc.integer({ min: 0, max: 20 }) }),
  );
  fc.assert(fc.property(fc.integer({ min: 1, max: 6 }), fc.array(op, { maxLength: 60 }), (max, ops) => {
    const lru = new ExpiringLru<string>(max);
    const last = new Map<string, { value: string; exp: number }>();
    let n = 0;
    for (const o of ops) {
      if ('set' in o) {
        const value = `${o.set}${n++}`;
        lru.set(o.set, value, o.exp);
        last.set(o.set, { value, exp: o.exp });
      } else {
        const got = lru.get(o.get, o.now);
        const model = last.get(o.get);
        // never a value that was not the latest one set, nor one that has expired
        if (got !== undefined && (model === undefined || got !== model.value || model.exp <= o.now)) throw new Error(`stale ${o.get}`);
        if (got === undefined) last.delete(o.get); // expired or evicted: gone for good
      }
      if (lru.size > max) throw new Error('over max');
    }
  }));
  fc.assert(fc.property(fc.integer({ min: 1, max: 40 }), fc.array(fc.nat(39), { maxLength: 200 }), fc.nat(39), (max, reads, pick) => {
    const lru = new ExpiringLru<number>(max);
    let fresh = 0;
    for (let i = 0; i < max; i++) lru.set(`k${fresh++}`, 0, Infinity);
    for (const r of reads) lru.get(`k${r}`, 0); // hits move some entries, misses nothing
    const hit = `k${pick % max}`;
    if (lru.get(hit, 0) === undefined) throw new Error('a full cache of never-expiring entries lost one without an insertion');
    // exact LRU would keep it for max - 1 insertions; this one for at least half of max
    const keep = max === 1 ? 0 : max - (max >>> 1);
    for (let i = 0; i < keep; i++) lru.set(`k${fresh++}`, 0, Infinity);
    if (lru.get(hit, 0) === undefined) throw new Error(`a hit evicted within ${keep} insertions (max ${max})`);
  }));
});

t.test('judgeIntrospection', async (t) => {
  const issuer: IssuerConfig = {
    issuer: 'https://idp.test', audiences: ['api'], algorithms: ['RS256'], jwksUri: null, rolesClaim: 'roles',
    clockSkew: 0, introspection: null, caBundle: null, caBundlePem: null,
  };
  const cfg = { endpoint: null, clientId: 'c', clientSecret: 's', cache: 60_000 };
  const now = 1_000_000_000_000;
  const ok = { active: true, sub: 'u', iss: 'https://idp.test', aud: 'api', exp: now / 1000 + 30 };
  t.match(judgeIntrospection(ok, issuer, cfg, now), { ok: true, cacheUntil: now + 30_000, principal: { subject: 'u', expiresAt: now + 30_000 } });
  t.match(judgeIntrospection({ ...ok, exp: now / 1000 + 3600 }, issuer, cfg, now), { ok: true, cacheUntil: now + 60_000 });
  t.match(judgeIntrospection({ active: false }, issuer, cfg, now), { ok: false, reason: 'inactive_token' });
  t.match(judgeIntrospection({ active: 'true', sub: 'u' }, issuer, cfg, now), { ok: false, reason: 'introspection_failed' });
  t.match(judgeIntrospection('<html>', issuer, cfg, now), { ok: false, reason: 'introspection_failed' });
  t.match(judgeIntrospection({ ...ok, iss: 'https://evil.test' }, issuer, cfg, now), { reason: 'bad_issuer' });
  t.match(judgeIntrospection({ ...ok, aud: ['x'] }, issuer, cfg, now), { reason: 'bad_audience' });
  t.match(judgeIntrospection({ ...ok, exp: now / 1000 }, issuer, cfg, now), { reason: 'expired' });
  t.match(judgeIntrospection({ ...ok, nbf: now / 1000 + 10 }, issuer, cfg, now), { reason: 'not_yet_valid' });
  t.match(judgeIntrospection({ ...ok, exp: '1' }, issuer, cfg, now), { reason: 'bad_claims' });
  t.match(judgeIntrospection({ active: true, sub: 'u', aud: 'api' }, issuer, cfg, now), { ok: true, cacheUntil: now + 60_000 }, 'no exp: cache time');
  t.match(judgeIntrospection({ active: true, sub: 'u' }, issuer, cfg, now), { ok: false, reason: 'bad_audience' }, 'no aud: not said to be for this API');
  t.match(judgeIntrospection({ ...ok, aud: [] }, issuer, cfg, now), { reason: 'bad_audience' });
  t.match(judgeIntrospection({ ...ok, aud: ['x', 'api'] }, issuer, cfg, now), { ok: true });
  for (const type of ['Bearer', 'bearer', 'BEARER']) t.match(judgeIntrospection({ ...ok, token_type: type }, issuer, cfg, now), { ok: true }, `token_type ${type}`);
  for (const type of ['refresh_token', 'DPoP', 'N_A', 'mac', '', 1, null]) {
    t.match(judgeIntrospection({ ...ok, token_type: type }, issuer, cfg, now), { ok: false, reason: 'wrong_token_type' }, `token_type ${JSON.stringify(type)}`);
  }
  for (const use of ['access_token', 'access']) t.match(judgeIntrospection({ ...ok, token_use: use }, issuer, cfg, now), { ok: true }, `token_use ${use}`);
  for (const use of ['refresh_token', 'id', 'id_token', 'Access_Token']) {
    t.match(judgeIntrospection({ ...ok, token_use: use }, issuer, cfg, now), { ok: false, reason: 'wrong_token_type' }, `token_use ${use}`);
  }
  t.match(judgeIntrospection({ ...ok, typ: 'Bearer' }, issuer, cfg, now), { ok: true }, 'Keycloak access token');
  for (const typ of ['Refresh', 'Offline', 'ID']) t.match(judgeIntrospection({ ...ok, typ }, issuer, cfg, now), { ok: false, reason: 'wrong_token_type' }, `Keycloak typ ${typ}`);
});

t.test('ExpiringLru.deleteWhere drops exactly the matching entries and keeps serving the rest', async (t) => {
  const lru = new ExpiringLru<{ issuer: string }>(10);
  for (let i = 0; i < 6; i++) lru.set(`k${i}`, { issuer: i % 2 ? 'a' : 'b' }, 1_000);
  t.equal(lru.deleteWhere((v) => v.issuer === 'a'), 3);
  t.equal(lru.size, 3);
  for (let i = 0; i < 6; i++) t.equal(lru.get(`k${i}`, 0)?.issuer, i % 2 ? undefined : 'b', `k${i}`);
  t.equal(lru.deleteWhere(() => false), 0);
  lru.set('k9', { issuer: 'a' }, 1_000);
  t.equal(lru.get('k9', 0)?.issuer, 'a', 'new entries after a sweep are kept');
});

t.test('checkEndpoint: a discovered endpoint is held to the configuration\'s rule (https, or http on loopback), and https for an https issuer', async (t) => {
  const local = 'http://127.0.0.1:4000';
  t.equal(checkEndpoint(local, 'https://idp.example/jwks', 'jwks_uri'), 'https://idp.example/jwks');
  t.equal(checkEndpoint(local, 'http://127.0.0.1:4000/jwks', 'jwks_uri'), 'http://127.0.0.1:4000/jwks');
  t.equal(checkEndpoint(local, 'http://localhost:4001/jwks', 'jwks_uri'), 'http://localhost:4001/jwks');
  t.equal(checkEndpoint(local, 'http://[::1]:4001/jwks', 'jwks_uri'), 'http://[::1]:4001/jwks');
  t.equal(checkEndpoint(local, undefined, 'jwks_uri'), null);
  t.throws(() => checkEndpoint(local, 'http://idp-keys.corp.example/jwks', 'jwks_uri'), /jwks_uri must be an https URL/, 'a loopback http issuer cannot move keys to cleartext elsewhere');
  t.throws(() => checkEndpoint(local, 'http://10.0.0.5/introspect', 'introspection_endpoint'), /introspection_endpoint must be an https URL/);
  t.throws(() => checkEndpoint('https://idp.example', 'http://127.0.0.1/jwks', 'jwks_uri'), /must be https for an https issuer/);
  t.throws(() => checkEndpoint(local, 'https://user:pw@idp.example/jwks', 'jwks_uri'), /user info/);
  t.throws(() => checkEndpoint(local, 'https://idp.example/jwks#x', 'jwks_uri'), /fragment/);
  t.throws(() => checkEndpoint(local, 'file:///etc/passwd', 'jwks_uri'), /must be http\(s\)/);
  t.throws(() => checkEndpoint(local, '/jwks', 'jwks_uri'), /not an absolute URL/);
  t.throws(() => checkEndpoint(local, 42, 'jwks_uri'), /not a string/);
});
