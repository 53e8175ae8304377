// Attacks on client keying and the edge protections (rate limits, bans, CSRF) through the real
// gateway, mostly over HTTP/2 and behind trusted proxies: bursts of concurrent streams, key
// rotation through address spellings and ports, eviction of state by a flood of distinct keys,
// duplicated header fields. Time moves on a fake clock where windows matter (no sleeping).
import t from 'tap';
import { LOOPBACK_LISTEN, startGateway, startUpstream, type ClientResponse, type RunningGateway } from '../helpers/gateway.js';
import { h2Request, h2Session, type H2Response } from '../helpers/clients.js';
import { MemoryStore } from '../../src/state/index.js';
import { fakeClock, securityEvents, startGatewayOnClock, startIssuer } from './_helpers.js';

const errorCode = (body: string): unknown => (JSON.parse(body) as { error?: { code?: unknown } }).error?.code;
const count = (xs: readonly number[], v: number): number => xs.filter((x) => x === v).length;

t.test('HTTP/2: 100 streams at once against max 10 — exactly 10 reach the upstream, Remaining counts 9..0 and never goes negative, HTTP/1.1 shares the counter, Retry-After is right at the window edge', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: api, path: /, access: public, rate_limit: { max: 10, window: 1m, key: ip } }]
`, clock);
  const session = h2Session(t, gw);
  const burst = await Promise.all(Array.from({ length: 100 }, (_, i) => h2Request(session, { ':path': `/b${i}`, accept: 'application/json' })));
  const statuses = burst.map((r) => r.status);
  t.equal(count(statuses, 200), 10, 'exactly max streams allowed');
  t.equal(count(statuses, 429), 90, 'every other stream refused');
  t.equal(up.seen.length, 10, 'the upstream saw at most max requests in the window');
  const remaining = burst.filter((r) => r.status === 200).map((r) => Number(r.headers['ratelimit-remaining'])).sort((a, b) => a - b);
  t.same(remaining, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'each allowed stream got its own, distinct Remaining value');
  const refused = burst.filter((x) => x.status === 429);
  const shapes = new Set(refused.map((r) => [r.headers['ratelimit-limit'], r.headers['ratelimit-remaining'], r.headers['ratelimit-reset'], r.headers['retry-after']].join(' ')));
  t.same([...shapes], ['10 0 60 60'], 'every 429: Limit 10, Remaining 0 (never negative), Reset = Retry-After = 60');
  t.ok(refused.every((r) => Object.keys(JSON.parse(r.body) as object).join() === 'error' && errorCode(r.body) === 'GW_ERR_RATE_LIMITED'), 'every 429 body is the safe error only');
  t.notOk(refused.some((r) => /127\.0\.0\.1|ip:|rl:|"api"/.test(r.body)), 'no 429 body names a key, an address or the route');
  t.equal(securityEvents(gw.logs, 'rate_limited').length, 90, 'one rate_limited event per refused stream');

  // The same client over HTTP/1.1 does not get a second budget.
  const h1 = await gw.request({ path: '/h1', headers: { accept: 'application/json' } });
  t.equal(h1.status, 429, 'switching protocol does not reset the key');

  clock.advance(59_999);
  const edge = await h2Request(session, { ':path': '/edge', accept: 'application/json' });
  t.equal(edge.status, 429, '1 ms before the window ends: still limited');
  t.equal(edge.headers['retry-after'], '1', 'Retry-After rounds the last millisecond up to 1 s, never 0');
  t.equal(edge.headers['ratelimit-reset'], '1');
  clock.advance(1);
  const fresh = await h2Request(session, { ':path': '/fresh', accept: 'application/json' });
  t.equal(fresh.status, 200, 'the window is over at exactly its end');
  t.equal(fresh.headers['ratelimit-remaining'], '9');
  t.equal(fresh.headers['ratelimit-reset'], '60');
  t.equal(up.seen.length, 11);
});

t.test('HTTP/2: 40 bad tokens on concurrent streams — at most bans.auth_failures (3) answered 401, the rest 429, one banned event', async (t) => {
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${idp.yaml}
bans: { auth_failures: 3, window: 5m, duration: 15m }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: api, path: / }]
`);
  const session = h2Session(t, gw);
  // The JWKS is fetched once, by a legitimate request, as it would be on a running gateway.
  t.equal((await h2Request(session, { ':path': '/warm', authorization: `Bearer ${await idp.token('alice')}` })).status, 200);

  // 40 different guesses on 40 streams of one connection (one TCP write; 128 streams are allowed).
  const guesses = await Promise.all(Array.from({ length: 40 }, (_, i) => idp.forged(`guess-${i}`)));
  const burst: H2Response[] = await Promise.all(guesses.map((token, i) => h2Request(session, { ':path': `/g${i}`, accept: 'application/json', authorization: `Bearer ${token}` })));
  const statuses = burst.map((r) => r.status);
  t.equal(count(statuses, 401) + count(statuses, 429), 40, `every guess answered 401 or 429 (${statuses.join(',')})`);
  t.ok(securityEvents(gw.logs, 'banned').some((e) => e.reason === 'auth_failures'), 'the client was banned');
  // A ban after auth_failures failures bounds the guesses a client gets answered per ban to
  // auth_failures; a guess whose verification finished after the ban was issued must not be answered.
  t.ok(count(statuses, 401) <= 3, `at most auth_failures (3) guesses answered with 401, got ${count(statuses, 401)}`);
  t.ok(securityEvents(gw.logs, 'auth_failed').length <= 3, `at most 3 failures verified and logged, got ${securityEvents(gw.logs, 'auth_failed').length}`);
  for (const r of burst.filter((x) => x.status === 429)) t.equal(errorCode(r.body), 'GW_ERR_BANNED');
  t.equal(securityEvents(gw.logs, 'banned').filter((e) => e.reason === 'auth_failures').length, 1, 'one client, one ban: one banned event');

  const after = await h2Request(session, { ':path': '/after', accept: 'application/json', authorization: `Bearer ${await idp.token('alice')}` });
  t.equal(after.status, 429, 'a stream opened after the burst on the same connection is banned');
  t.same(up.seen.map((r) => r.url), ['/warm'], 'nothing of the burst reached the upstream');
});

t.test('a flood of distinct header-keyed limit keys never evicts the client\'s own ban or its ip rate-limit counter from the memory store', async (t) => {
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  // The default MemoryStore holds 100 000 keys (src/state/memory.ts); the same flood scaled to
  // 100 000 requests (seconds for an HTTP/2 client) does the same. 200 keeps the test short.
  const store = new MemoryStore({ maxEntries: 200 });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: keyed, path: /keyed/, access: public, rate_limit: { max: 100, window: 1m, key: "header:x-api-key" } }
      - { id: login, path: /login, access: public, rate_limit: { max: 2, window: 1h, key: ip } }
      - { id: api, path: /api/, bans: { auth_failures: 3, window: 5m, duration: 15m } }
`, {}, { store });
  const session = h2Session(t, gw);
  const valid = `Bearer ${await idp.token('alice')}`;
  // One attacker address (127.0.0.1): three bad tokens ban it on /api/; two logins spend its budget.
  for (let i = 0; i < 3; i++) t.equal((await h2Request(session, { ':path': '/api/x', authorization: `Bearer ${await idp.forged(`g${i}`)}` })).status, 401);
  t.equal((await h2Request(session, { ':path': '/api/x', authorization: valid })).status, 429, 'banned');
  t.equal((await h2Request(session, { ':path': '/login' })).status, 200);
  t.equal((await h2Request(session, { ':path': '/login' })).status, 200);
  t.equal((await h2Request(session, { ':path': '/login' })).status, 429, 'login budget spent');

  // The same address now mints 240 fresh store keys: one per made-up API key.
  for (let round = 0; round < 4; round++) {
    await Promise.all(Array.from({ length: 60 }, (_, i) => h2Request(session, { ':path': '/keyed/z', 'x-api-key': `made-up-${round}-${i}` })));
  }
  t.ok(store.size <= 200, `the store stays bounded (${store.size} keys)`);

  const banned = await h2Request(session, { ':path': '/api/after-flood', accept: 'application/json', authorization: valid });
  t.equal(banned.status, 429, `the ban (15m) still holds after the flood (got ${banned.status})`);
  const login = await h2Request(session, { ':path': '/login', accept: 'application/json' });
  t.equal(login.status, 429, `the login limit (1h) still holds after the flood (got ${login.status})`);
  t.notOk(up.seen.some((r) => r.url === '/api/after-flood'), 'the banned client did not reach the upstream');
});

t.test('behind a trusted proxy that writes the client port into X-Forwarded-For, the client is its address: no rate limit or ban dodged by new source ports', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  // Azure Application Gateway, for one, writes `X-Forwarded-For: <ip>:<port>`; RFC 7239 style
  // brackets appear for IPv6. The port is the client's source port: new on every connection.
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}trusted_proxies: [127.0.0.0/8]
bans: { auth_failures: 2, window: 5m, duration: 15m }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: login, path: /login, access: public, rate_limit: { max: 2, window: 1m, key: ip } }
      - { id: api, path: / }
`, clock);
  const from = (xff: string, path: string, authorization?: string): Promise<ClientResponse> =>
    gw.request({ path, headers: { accept: 'application/json', 'x-forwarded-for': xff, ...(authorization ? { authorization } : {}) } });

  const v4 = [];
  for (let port = 40000; port < 40006; port++) v4.push((await from(`198.51.100.7:${port}`, `/login?v4=${port}`)).status);
  t.same(v4, [200, 200, 429, 429, 429, 429], `one IPv4 client on six source ports is one client (${v4.join(',')})`);

  const v6 = [];
  for (let i = 1; i <= 4; i++) v6.push((await from(`[2001:db8:5:5::${i}]:${50000 + i}`, `/login?v6=${i}`)).status);
  t.same(v6, [200, 200, 429, 429], `one IPv6 /64 on four ports is one client (${v6.join(',')})`);

  const bad = `Bearer ${await idp.forged('x')}`;
  const guesses = [];
  for (let port = 41000; port < 41005; port++) guesses.push((await from(`203.0.113.9:${port}`, '/api/guess', bad)).status);
  t.same(guesses, [401, 401, 429, 429, 429], `two failures ban the address whatever its port (${guesses.join(',')})`);

  const keys = securityEvents(gw.logs, 'rate_limited').map((e) => String(e.key));
  for (const k of keys) t.notMatch(k, /:\d+$|\]/, `the key is the address, not address:port (${k})`);
});

t.test('trusted proxy chains and address spellings: one client whatever hop or spelling brings it; forged hops on the left never count', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: api, path: /, access: public, rate_limit: { max: 2, window: 1m, key: ip } }]
`, clock);
  const as = async (xff: string | string[], path: string): Promise<number> => (await gw.request({ path, headers: { 'x-forwarded-for': xff } })).status;

  // Two internal hops, the client behind either, and forged entries (even in the trusted ranges) on the left.
  t.equal(await as('198.51.100.9, 10.0.0.2', '/c1'), 200);
  t.equal(await as('10.9.9.9, 198.51.100.9,10.0.0.3', '/c2'), 200, 'another internal hop, a forged trusted-looking hop on the left');
  t.equal(await as(['127.0.0.1, 10.1.1.1', '198.51.100.9', '10.0.0.4'], '/c3'), 429, 'three X-Forwarded-For fields are one list: the rightmost untrusted hop is still the client');
  t.equal(await as('198.51.100.10, 10.0.0.2', '/d1'), 200, 'the next client behind the same hop has its own budget');

  // IPv4-mapped IPv6 in its hex spelling is the IPv4 client.
  t.equal(await as('198.51.100.20', '/m1'), 200);
  t.equal(await as('::ffff:c633:6414, 10.0.0.2', '/m2'), 200);
  t.equal(await as('::FFFF:198.51.100.20', '/m3'), 429, '::ffff:c633:6414 and ::FFFF:198.51.100.20 are 198.51.100.20');

  // IPv6: upper case, leading zeros, no compression and a zone id are one /64.
  t.equal(await as('2001:DB8:0:7::1', '/v1'), 200);
  t.equal(await as('2001:0db8:0000:0007:0000:0000:0000:0002', '/v2'), 200);
  t.equal(await as('2001:db8::7:0:0:0:3%eth0', '/v3'), 429, 'all three spellings are 2001:db8:0:7::/64');
  t.equal(await as('2001:db8:0:8::1', '/v4'), 200, 'the next /64 is another client');

  const keys = new Set(securityEvents(gw.logs, 'rate_limited').map((e) => String(e.key)));
  t.same([...keys].sort(), ['rl:api:ip:198.51.100.20', 'rl:api:ip:198.51.100.9', 'rl:api:ip:2001:db8:0:7::/64'], 'the keys are the canonical address or /64');
  t.same(up.seen.map((r) => r.url), ['/c1', '/c2', '/d1', '/m1', '/m2', '/v1', '/v2', '/v4']);
});

t.test('CSRF over HTTP/2: duplicated Sec-Fetch-Site and Origin fields, bearer plus split cookies; an allowed request reaches the app with one Cookie header', async (t) => {
  const up = await startUpstream(t);
  const gw: RunningGateway = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: web, path: /, access: public }]
`);
  const session = h2Session(t, gw);
  const own = `https://app.test:${gw.port}`;
  const evil = 'https://evil.test';
  const post = (path: string, headers: Record<string, string | string[]>): Promise<H2Response> =>
    h2Request(session, { ':method': 'POST', ':path': path, 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', ...headers }, 'amount=1000');
  type Case = [string, Record<string, string | string[]>];
  const forged: Case[] = [
    ['Sec-Fetch-Site same-origin then cross-site', { cookie: 'sid=victim', 'sec-fetch-site': ['same-origin', 'cross-site'], origin: evil }],
    ['Sec-Fetch-Site cross-site then same-origin', { cookie: 'sid=victim', 'sec-fetch-site': ['cross-site', 'same-origin'], origin: evil }],
    ['Origin own then evil, no Sec-Fetch-Site', { cookie: 'sid=victim', origin: [own, evil] }],
    ['Origin evil then own, no Sec-Fetch-Site', { cookie: 'sid=victim', origin: [evil, own] }],
    ['bearer token plus split cookies, cross-site', { authorization: 'Bearer abc', cookie: ['sid=victim', 'csrf=1'], 'sec-fetch-site': 'cross-site', origin: evil }],
    ['Origin: null, cookie split in three', { cookie: ['a=1', 'b=2', 'sid=victim'], origin: 'null' }],
  ];
  for (const [name, headers] of forged) {
    const res = await post(`/forged/${forged.findIndex((c) => c[0] === name)}`, headers);
    t.equal(res.status, 403, name);
    t.equal(errorCode(res.body), 'GW_ERR_CSRF', `${name}: GW_ERR_CSRF`);
  }
  t.equal(up.seen.length, 0, 'no forged request reached the app');
  t.equal(securityEvents(gw.logs, 'csrf_rejected').length, forged.length);

  const ok = await post('/mine', { cookie: ['sid=me', 'theme=dark'], 'sec-fetch-site': 'same-origin', origin: own });
  t.equal(ok.status, 200);
  t.equal(up.seen.length, 1);
  const seen = up.seen[0]!;
  t.equal(seen.headers.cookie, 'sid=me; theme=dark', 'split cookies reach the app joined with "; " (RFC 9113 §8.2.3)');
  t.equal(seen.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'cookie').length, 1, 'as one Cookie field');
});

t.test('key: header:NAME — the name in any case, padded values, empty values and very long values', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: keyed, path: /, access: public, rate_limit: { max: 1, window: 1m, key: "header:X-API-Key" } }]
`, clock);
  const as = async (headers: Record<string, string>, path: string): Promise<ClientResponse> => gw.request({ path, headers: { accept: 'application/json', ...headers } });
  t.equal((await as({ 'X-Api-KEY': 'k1' }, '/a1')).status, 200, 'the configured name matches in any case');
  t.equal((await as({ 'x-api-key': '  k1\t' }, '/a2')).status, 429, 'surrounding whitespace is not a new key');

  const long = `k-${'x'.repeat(8000)}`;
  t.equal((await as({ 'x-api-key': long }, '/l1')).status, 200, 'an 8 kB value is a key');
  const again = await as({ 'x-api-key': long }, '/l2');
  t.equal(again.status, 429, 'and is counted');
  t.notMatch(again.body, /xxxx/, 'the value is not echoed in the 429');

  t.equal((await as({ 'x-api-key': '' }, '/e1')).status, 200, 'an empty value falls back to the address');
  t.equal((await as({ 'x-api-key': '   ' }, '/e2')).status, 429, 'whitespace only is the same address key');
  t.equal((await as({}, '/e3')).status, 429, 'as is no header at all');

  const keys = securityEvents(gw.logs, 'rate_limited').map((e) => String(e.key));
  t.equal(keys.length, 4);
  t.ok(keys.every((k) => k.length < 200 && !k.includes('xxxx') && !k.includes('k1')), 'the logged keys hold only hashes of the values');
  t.same(up.seen.map((r) => r.url), ['/a1', '/l1', '/e1']);
});
