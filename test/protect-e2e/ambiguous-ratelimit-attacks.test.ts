// Attacks on how an ambiguous path (one two routes may claim: a case variant, a `;` parameter, a
// trailing dot) is rate-limited. The route table returns the strictest reading and hands back the
// others (src/policy/routes.ts matchRoute's `readings`); the gateway counts the request under
// every reading's limit, the returned route's last (src/gateway.ts rateLimitStage, ctx.limiting).
// README "Routes": "Rate limits, counted per route, are not weighed: such a request is counted
// under the limit of every route it may be read as." Every case runs against a real gateway and a
// real upstream on loopback and checks what the upstream saw, the answer's headers and the logs.
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { loadConfigFile } from '../../src/config/index.js';
import { accessRoute, LOOPBACK_LISTEN, startGateway, startUpstream, type ClientResponse, type RunningGateway } from '../helpers/gateway.js';
import { h2Request, h2Session } from '../helpers/clients.js';
import { MemoryStore, RemoteStore, serveStoreCall, type Store } from '../../src/state/index.js';
import { fakeClock, securityEvents, startGatewayOnClock, startIssuer } from './_helpers.js';

const get = (gw: RunningGateway, path: string, headers: Record<string, string> = {}): Promise<ClientResponse> =>
  gw.request({ path, headers: { accept: 'application/json', ...headers } });

t.test('the rate_limited event of a 429 caused by another reading\'s limit names that limit\'s numbers, not the returned route\'s', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  // /api/IMPORT is /api/import to a case-insensitive app and a resource of /api to a
  // case-sensitive one: the table returns /api/import (deepest, as strict), and /api's limit
  // counts it too.
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api, access: public, rate_limit: { max: 1, window: 1m } }
      - { id: import, path: /api/import, access: public, rate_limit: { max: 50, window: 1h } }
      - { id: shop, path: /shop, access: public, rate_limit: { max: 1, window: 2m } }
      - { id: cart, path: /shop/cart, access: public }
`, clock);
  t.equal((await get(gw, '/api/IMPORT')).status, 200, 'first: within both limits');
  const refused = await get(gw, '/api/IMPORT');
  t.equal(refused.status, 429, '/api\'s budget (1 a minute) is used up');
  t.equal(refused.headers['ratelimit-limit'], '1', 'the 429 carries the numbers of the limit that refused it');
  t.equal(refused.headers['retry-after'], '60');
  t.equal(accessRoute(gw, refused.headers['x-request-id']), 'import', 'logged under the route the table returned');
  const evt = securityEvents(gw.logs, 'rate_limited').find((e) => e.request_id === refused.headers['x-request-id']);
  t.ok(evt, 'one rate_limited event');
  t.match(evt?.key, /^rl:api:/, 'the event\'s key is /api\'s counter');
  t.match(evt, { limit: 1, window_ms: 60_000 }, `the event's limit and window are the ones of the key it names (got limit ${String(evt?.limit)}, window_ms ${String(evt?.window_ms)}: /api/import's)`);

  // The returned route has no limit at all: the event says nothing of the limit that refused.
  t.equal((await get(gw, '/shop/CART')).status, 200);
  const refused2 = await get(gw, '/shop/CART');
  t.equal(refused2.status, 429);
  const evt2 = securityEvents(gw.logs, 'rate_limited').find((e) => e.request_id === refused2.headers['x-request-id']);
  t.match(evt2?.key, /^rl:shop:/);
  t.match(evt2, { limit: 1, window_ms: 120_000 }, `limit and window_ms are given (got ${String(evt2?.limit)}, ${String(evt2?.window_ms)})`);
  t.equal(up.seen.length, 2, 'only the two allowed requests reached the app');
});

t.test('an ambiguous request counted under another reading\'s limit gets that limit\'s RateLimit-* headers, not the app\'s own', async (t) => {
  // The app sends RateLimit-* headers of its own: the gateway's replace them on a limited route
  // ("the gateway enforces that limit", responseHeadersFromUpstream).
  const up = await startUpstream(t, (req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'ratelimit-limit': '1000', 'ratelimit-remaining': '999', 'ratelimit-reset': '3600' });
    res.end(req.url);
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api, access: public, rate_limit: { max: 2, window: 1m } }
      - { id: import, path: /api/import, access: public }
`);
  // Control: on /api itself the gateway's numbers win.
  const plain = await get(gw, '/api/orders');
  t.equal(plain.status, 200);
  t.equal(plain.headers['ratelimit-limit'], '2', 'control: /api\'s own resource shows the gateway\'s limit');
  t.equal(plain.headers['ratelimit-remaining'], '1');

  // /api/IMPORT/x is counted under /api's limit (the last request it has left)...
  const amb = await get(gw, '/api/IMPORT/x');
  t.equal(amb.status, 200);
  t.equal(accessRoute(gw, amb.headers['x-request-id']), 'import');
  const next = await get(gw, '/api/IMPORT/y');
  t.equal(next.status, 429, 'the gateway enforces /api\'s limit on it: the next one is refused');
  t.equal(next.headers['ratelimit-limit'], '2');
  // ...but the client was told it had 999 requests left.
  t.equal(amb.headers['ratelimit-limit'], '2', `the answer shows the limit the gateway counted it under (got RateLimit-Limit ${String(amb.headers['ratelimit-limit'])})`);
  t.equal(amb.headers['ratelimit-remaining'], '0', `and what is left of it (got RateLimit-Remaining ${String(amb.headers['ratelimit-remaining'])})`);
});

t.test('a user-keyed limit on a public parent is not reset per account through an authenticated nested route\'s case variant', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  // /api is public: the gateway never looks at a token there, so its `key: user` limit counts
  // every caller by address (README: anonymous callers fall back to their address). /api/import
  // needs a token; /api/IMPORT/n is a resource of /api to a case-sensitive app.
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api, access: public, rate_limit: { max: 2, window: 1m, key: user } }
      - { id: import, path: /api/import }
`, clock);
  const alice = `Bearer ${await idp.token('alice')}`;
  const bob = `Bearer ${await idp.token('bob')}`;
  const control: number[] = [];
  for (let i = 0; i < 3; i++) control.push((await get(gw, `/api/orders/${i}`, { authorization: i === 0 ? alice : bob })).status);
  t.same(control, [200, 200, 429], 'control: /api/* gets 2 requests a minute per address, whatever token comes along');

  const before = up.seen.length;
  const dodged: string[] = [];
  for (const [who, token] of [['alice', alice], ['alice', alice], ['bob', bob], ['bob', bob]] as const) {
    const res = await get(gw, `/api/IMPORT/${who}`, { authorization: token });
    dodged.push(`${who}:${res.status}`);
  }
  t.equal(up.seen.length - before, 0, `/api's budget for this client is used up: no more /api resources reach the app, one account or many (got ${dodged.join(', ')})`);
});

/**
 * The store of `workers: N` (src/state/remote.ts RemoteStore: every call a round trip to the
 * primary), over a transport answering each call after 0–3 ms, in any order: every limiter awaits
 * the store and the limits of concurrent requests interleave.
 */
function remoteLike(inner: MemoryStore): Store {
  return new RemoteStore((method, params) =>
    new Promise((resolve, reject) => setTimeout(() => {
      const answer = serveStoreCall(inner, method, JSON.parse(JSON.stringify(params)) as unknown);
      if (answer === undefined) reject(new Error(`unknown store call ${method}`));
      else answer.then((v) => resolve(v === undefined ? undefined : JSON.parse(JSON.stringify(v)) as unknown), reject);
    }, Math.floor(Math.random() * 4))),
  );
}

for (const kind of ['in-memory', 'remote-like (async, reordered)'] as const) {
  t.test(`HTTP/2, ${kind} store: ambiguous and plain streams racing on one connection share the parent's counter exactly; each answer carries its own limit's numbers`, async (t) => {
    const clock = fakeClock();
    const memory = new MemoryStore({ now: clock.now });
    const up = await startUpstream(t);
    const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api, access: public, rate_limit: { max: 4, window: 1m } }
      - { id: import, path: /api/import, access: public, rate_limit: { max: 100, window: 1m } }
`, {}, { store: kind === 'in-memory' ? memory : remoteLike(memory) });
    const session = h2Session(t, gw);
    const paths: string[] = [];
    for (let i = 0; i < 12; i++) paths.push(`/api/IMPORT/${i}`, `/api/x${i}`, `/api/import;v=${i}`);
    const answers = await Promise.all(paths.map((p) => h2Request(session, { ':path': p, accept: 'application/json' })));
    const ok = answers.filter((a) => a.status === 200).length;
    t.equal(ok, 4, `exactly /api's 4 reach the app (statuses ${answers.map((a) => a.status).join(',')})`);
    t.equal(answers.filter((a) => a.status === 429).length, paths.length - 4, 'all others are refused');
    t.equal(up.seen.length, 4, 'the app saw 4 requests');
    for (const [i, a] of answers.entries()) {
      const path = paths[i]!;
      const ambiguous = !path.startsWith('/api/x');
      if (a.status === 429) {
        t.equal(a.headers['ratelimit-limit'], '4', `${path}: the 429 names /api's limit`);
        t.equal(a.headers['ratelimit-remaining'], '0');
        t.equal(a.headers['retry-after'], '60');
      } else {
        t.equal(a.headers['ratelimit-limit'], ambiguous ? '100' : '4', `${path}: a 200 names the returned route's limit (its own goes last)`);
      }
    }
    // The returned route's own counter: counted only for the ambiguous requests /api let through.
    const importCount = up.seen.filter((s) => !s.url.startsWith('/api/x')).length;
    const after = await h2Request(session, { ':path': '/api/import' });
    t.equal(after.status, 200);
    t.equal(after.headers['ratelimit-remaining'], String(100 - importCount - 1), '/api/import counted only the requests /api\'s limit let through');
    const keys = securityEvents(gw.logs, 'rate_limited').map((e) => String(e.key));
    t.equal(keys.length, paths.length - 4, 'one rate_limited event per 429');
    t.ok(keys.every((k) => k.startsWith('rl:api:')), 'each names /api\'s counter');
  });
}

t.test('three readings (deep nesting): a middle route\'s used-up limit holds for every spelling an upstream may read as its resource', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: a, path: /a, access: public, rate_limit: { max: 100, window: 1m } }
      - { id: b, path: /a/b, access: public, rate_limit: { max: 1, window: 1m } }
      - { id: c, path: /a/b/c, access: public, rate_limit: { max: 100, window: 1m } }
`, clock);
  t.equal((await get(gw, '/a/b/z')).status, 200, 'control: /a/b/* gets one');
  t.equal((await get(gw, '/a/b/y')).status, 429, 'control: and no second');
  t.equal((await get(gw, '/a/b/c')).status, 200, 'control: /a/b/c itself is its own route');
  const before = up.seen.length;
  // Each is /a/b's resource to some upstream: `C` to a case-sensitive one, `c;x` to one without
  // `;` parameters, `c.` to one that does not drop trailing dots; /a/B/C;x is /a/b/c;x to a
  // case-insensitive one without `;` parameters.
  for (const path of ['/a/b/C', '/a/b/c;x', '/a/b/c.', '/a/B/C;x', '/a/b;p/C']) {
    const res = await get(gw, path);
    t.equal(res.status, 429, `${path}: counted under /a/b's used-up limit (route ${String(accessRoute(gw, res.headers['x-request-id']))})`);
    t.equal(res.headers['ratelimit-limit'], '1', `${path}: the 429 names /a/b's limit`);
  }
  t.equal(up.seen.length, before, 'none of them reached the app');
  const events = securityEvents(gw.logs, 'rate_limited');
  t.ok(events.slice(-5).every((e) => String(e.key).startsWith('rl:b:')), 'each event\'s key is /a/b\'s counter');
});

t.test('a header-keyed limit of a reading counts per header value before any token check, whatever the returned route (rate_limit: null) says', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api, rate_limit: { max: 1, window: 1m, key: "header:x-api-key" } }
      - { id: import, path: /api/import, rate_limit: null }
`, clock);
  const alice = `Bearer ${await idp.token('alice')}`;
  const forged = `Bearer ${await idp.forged('alice')}`;
  const k1 = { 'x-api-key': 'key-one', authorization: alice };
  t.equal((await get(gw, '/api/IMPORT', k1)).status, 200, 'key-one: first');
  const second = await get(gw, '/api/IMPORT', k1);
  t.equal(second.status, 429, 'key-one: counted under /api\'s limit');
  t.equal(second.headers['ratelimit-limit'], '1');
  t.equal((await get(gw, '/api/Import', { 'x-api-key': 'key-two', authorization: alice })).status, 200, 'key-two: its own budget');
  // Before the token check: a guessed token spelled into the ambiguous path is limited too.
  const guess = await get(gw, '/api/IMPORT', { 'x-api-key': 'key-two', authorization: forged });
  t.equal(guess.status, 429, 'a token guess on a used-up key is refused before its verification');
  t.equal(securityEvents(gw.logs, 'auth_failed').length, 0, 'no token was verified for it');
  t.equal((await get(gw, '/api/import', k1)).status, 200, 'control: the plain nested route has no limit');
  t.same(up.seen.map((s) => s.url), ['/api/IMPORT', '/api/Import', '/api/import']);
});

t.test('bans on an ambiguous path: the stricter reading\'s threshold holds; each failure counts once', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  // /api bans after 2 failures, /api/import after 5: the table returns /api (the stricter) for
  // /api/IMPORT. The test client sits behind a trusted proxy to play two clients.
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}trusted_proxies: [127.0.0.0/8]
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api, bans: { auth_failures: 2, window: 1m, duration: 1m } }
      - { id: import, path: /api/import, bans: { auth_failures: 5, window: 1m, duration: 1m } }
`, clock);
  const bad = `Bearer ${await idp.forged('mallory')}`;
  const as = async (client: string, path: string): Promise<number> => (await get(gw, path, { authorization: bad, 'x-forwarded-for': client })).status;
  const control: number[] = [];
  for (let i = 0; i < 3; i++) control.push(await as('198.51.100.1', '/api/import'));
  t.same(control, [401, 401, 401], 'control: /api/import itself allows 5 failures');
  const attack: number[] = [];
  for (let i = 0; i < 3; i++) attack.push(await as('198.51.100.2', `/api/IMPORT/${i}`));
  t.same(attack, [401, 401, 429], '/api/IMPORT/*: /api\'s threshold (2) holds');
  const banned = securityEvents(gw.logs, 'banned').filter((e) => e.reason === 'auth_failures');
  t.equal(banned.length, 1, 'one ban');
  t.match(banned[0], { ip: '198.51.100.2', route: 'api', failures: 2 });
  t.equal(up.seen.length, 0, 'nothing reached the app');
});

t.test('a reload that adds a nested unlimited route keeps its parent\'s count: spellings that became ambiguous are still counted under the parent', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const site = (routes: string): string => `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api, access: public, rate_limit: { max: 2, window: 1m } }
${routes}`;
  const gw = await startGatewayOnClock(t, site(''), clock);
  t.same([(await get(gw, '/api/IMPORT/1')).status, (await get(gw, '/api/import/2')).status], [200, 200], 'before: both spellings are /api resources, counted under /api');
  writeFileSync(gw.configPath, site('      - { id: import, path: /api/import, access: public, rate_limit: null }\n'));
  const { config } = await loadConfigFile(gw.configPath, process.env);
  await gw.gw.reload(config);
  const before = up.seen.length;
  const after = await get(gw, '/api/IMPORT/3');
  t.equal(after.status, 429, `after the reload /api/IMPORT/3 is still /api's to a case-sensitive app: its used-up budget holds (route ${String(accessRoute(gw, after.headers['x-request-id']))})`);
  t.equal(after.headers['ratelimit-limit'], '2');
  t.equal(up.seen.length, before, 'not forwarded');
  t.equal((await get(gw, '/api/import/4')).status, 200, 'control: the new unlimited route itself is not limited');
});
