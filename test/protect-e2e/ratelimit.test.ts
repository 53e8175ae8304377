// Rate limits through the real gateway: 429 + draft RateLimit headers, counted per key and per
// route; X-Forwarded-For only counts from trusted proxies; `key: user` uses the token subject;
// IPv6 clients are grouped by /64. Windows elapse on a fake clock (no sleeping).
import t from 'tap';
import https from 'node:https';
import net from 'node:net';
import { LOOPBACK_LISTEN, startUpstream, type ClientResponse, type RunningGateway } from '../helpers/gateway.js';
import { fakeClock, securityEvents, startGatewayOnClock, startIssuer } from './_helpers.js';

const get = (gw: RunningGateway, path: string, headers: Record<string, string> = {}): Promise<ClientResponse> =>
  gw.request({ path, headers: { accept: 'application/json', ...headers } });

t.test('429 with Retry-After and RateLimit-* headers; the window resets; the upstream sees only allowed requests', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /, access: public, rate_limit: { max: 3, window: 1m, key: ip } }
`, clock);
  for (let i = 1; i <= 3; i++) {
    const res = await get(gw, `/r${i}`);
    t.equal(res.status, 200, `request ${i} allowed`);
    t.equal(res.headers['ratelimit-limit'], '3');
    t.equal(res.headers['ratelimit-remaining'], String(3 - i));
    t.equal(res.headers['ratelimit-reset'], '60', 'seconds until the window resets (clock not moved)');
  }
  clock.advance(20_000);
  const refused = await get(gw, '/r4');
  t.equal(refused.status, 429);
  t.equal(JSON.parse(refused.body).error.code, 'GW_ERR_RATE_LIMITED');
  t.equal(refused.headers['retry-after'], '40', 'Retry-After: the rest of the window, in seconds');
  t.equal(refused.headers['ratelimit-limit'], '3');
  t.equal(refused.headers['ratelimit-remaining'], '0');
  t.equal(refused.headers['ratelimit-reset'], '40');
  t.equal(refused.headers['x-content-type-options'], 'nosniff', 'security headers on the 429');
  t.same(up.seen.map((r) => r.url), ['/r1', '/r2', '/r3'], 'the refused request never reached the upstream');

  const events = securityEvents(gw.logs, 'rate_limited');
  t.equal(events.length, 1);
  t.match(events[0], { ip: '127.0.0.1', site: 'app.test', route: 'api', reason: 'limit_exceeded', limit: 3, window_ms: 60_000, request_id: refused.headers['x-request-id'] });
  t.match(events[0]?.key, /127\.0\.0\.1/, 'the event names the key');

  clock.advance(40_001);
  const again = await get(gw, '/r5');
  t.equal(again.status, 200, 'a new window starts once the old one is over');
  t.equal(again.headers['ratelimit-remaining'], '2');
});

t.test('an untrusted client cannot rotate its key with X-Forwarded-For / Forwarded', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: api, path: /, access: public, rate_limit: { max: 2, window: 1m, key: ip } }]
`, clock);
  const statuses: number[] = [];
  for (let i = 0; i < 6; i++) {
    const forged = `203.0.113.${i + 1}`;
    const res = await get(gw, `/f${i}`, { 'x-forwarded-for': forged, forwarded: `for=${forged}`, 'x-real-ip': forged });
    statuses.push(res.status);
  }
  t.same(statuses, [200, 200, 429, 429, 429, 429], 'six different forged addresses share one key: the socket address');
  t.equal(up.seen.length, 2);
  for (const e of securityEvents(gw.logs, 'rate_limited')) t.equal(e.ip, '127.0.0.1', 'events log the real address, not the forged one');
});

t.test('behind a trusted proxy, X-Forwarded-For names the client (rightmost untrusted hop)', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
trusted_proxies: [127.0.0.0/8]
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: api, path: /, access: public, rate_limit: { max: 2, window: 1m, key: ip } }]
`, clock);
  const as = (xff: string, path: string): Promise<number> => get(gw, path, { 'x-forwarded-for': xff }).then((r) => r.status);
  t.equal(await as('198.51.100.7', '/a1'), 200);
  t.equal(await as('198.51.100.7', '/a2'), 200);
  t.equal(await as('198.51.100.7', '/a3'), 429, 'client A is limited');
  t.equal(await as('198.51.100.8', '/b1'), 200, 'client B behind the same proxy has its own budget');
  // Client A prepends a forged hop: the proxy appends the address it saw, which is what counts.
  t.equal(await as('6.6.6.6, 198.51.100.7', '/a4'), 429, 'a forged leftmost hop does not give A a new key');
  t.equal(await as('::ffff:198.51.100.7', '/a5'), 429, 'IPv4-mapped IPv6 is the same client');
  const evt = securityEvents(gw.logs, 'rate_limited')[0];
  t.equal(evt?.ip, '198.51.100.7', 'the event logs the client address from the trusted proxy');

  // IPv6 clients are keyed by their /64: one subscriber cannot mint keys from its 2^64 addresses.
  t.equal(await as('2001:db8:1:2::1', '/v1'), 200);
  t.equal(await as('2001:db8:1:2:ffff:ffff:ffff:fffe', '/v2'), 200);
  t.equal(await as('2001:db8:1:2:abcd::9', '/v3'), 429, 'a third address in the same /64 is limited');
  t.equal(await as('2001:db8:1:3::1', '/v4'), 200, 'the neighbouring /64 is another client');
  t.same(up.seen.map((r) => r.url), ['/a1', '/a2', '/b1', '/v1', '/v2', '/v4']);
});

t.test('limits are per route, and a route without rate_limit is not limited', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}
rate_limit: { max: 3, window: 1m, key: ip }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: login, path: /login, access: public, rate_limit: { max: 1, window: 10s } }
      - { id: static, path: /static/, access: public, rate_limit: null }
      - { id: app, path: /, access: public }
`, clock);
  t.equal((await get(gw, '/login')).status, 200);
  const login2 = await get(gw, '/login');
  t.equal(login2.status, 429, 'the strict route: max 1');
  t.equal(login2.headers['ratelimit-limit'], '1');
  t.equal(login2.headers['retry-after'], '10', 'its own window');
  const app = await get(gw, '/home');
  t.equal(app.status, 200, 'another route has its own counter');
  t.equal(app.headers['ratelimit-limit'], '3', 'and the inherited top-level limit');
  t.equal(app.headers['ratelimit-remaining'], '2');
  for (let i = 0; i < 10; i++) {
    const s = await get(gw, `/static/${i}.css`);
    t.equal(s.status, 200);
    t.notOk(s.headers['ratelimit-limit'], 'no RateLimit headers on an unlimited route');
  }
  clock.advance(10_001);
  t.equal((await get(gw, '/login')).status, 200, 'the login window (10s) is over');
});

t.test('key: user counts per token subject, not per address; header keys', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api/, rate_limit: { max: 2, window: 1m, key: user } }
      - { id: keyed, path: /keyed/, access: public, rate_limit: { max: 1, window: 1m, key: "header:x-api-key" } }
`, clock);
  const alice = `Bearer ${await idp.token('alice')}`;
  const alice2 = `Bearer ${await idp.token('alice')}`;
  const bob = `Bearer ${await idp.token('bob')}`;
  const as = (authorization: string, path: string): Promise<number> => get(gw, path, { authorization }).then((r) => r.status);
  t.equal(await as(alice, '/api/1'), 200);
  t.equal(await as(alice, '/api/2'), 200);
  t.equal(await as(alice, '/api/3'), 429, 'alice is limited');
  t.equal(await as(alice2, '/api/4'), 429, 'a fresh token for the same subject does not reset the count');
  t.equal(await as(bob, '/api/5'), 200, 'bob, from the same address, has his own budget');
  const evt = securityEvents(gw.logs, 'rate_limited')[0];
  t.match(evt, { user: 'alice', route: 'api' });
  t.match(evt?.key, /user:alice/);

  t.equal((await get(gw, '/keyed/1', { 'x-api-key': 'k-one' })).status, 200);
  t.equal((await get(gw, '/keyed/2', { 'x-api-key': 'k-one' })).status, 429, 'header key limited');
  t.equal((await get(gw, '/keyed/3', { 'x-api-key': 'k-two' })).status, 200, 'another header value is another key');
  t.equal((await get(gw, '/keyed/4')).status, 200, 'no header: falls back to the ip key (fresh)');
  t.equal((await get(gw, '/keyed/5')).status, 429, 'and the ip key is then limited');
  t.same(up.seen.map((r) => r.url), ['/api/1', '/api/2', '/api/5', '/keyed/1', '/keyed/3', '/keyed/4']);
});

t.test('a token-guessing flood on an ip-limited route is limited too', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: api, path: /, rate_limit: { max: 3, window: 1m, key: ip } }]
`, clock);
  const statuses: number[] = [];
  for (let i = 0; i < 6; i++) statuses.push((await get(gw, `/g${i}`, { authorization: `Bearer ${await idp.forged('x')}` })).status);
  t.same(statuses, [401, 401, 401, 429, 429, 429], 'after max requests the client gets 429 whatever its token');
  t.equal(up.seen.length, 0);
});

const CAN_BIND_V6 = await new Promise<boolean>((resolve) => {
  const s = net.createServer().once('error', () => resolve(false));
  s.listen(0, '::1', () => s.close(() => resolve(true)));
});

t.test('IPv6 client on ::1 is keyed by its /64', { skip: CAN_BIND_V6 ? false : 'cannot bind ::1 on this machine (no IPv6 loopback)' }, async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const gw = await startGatewayOnClock(t, `listen:
  https: "[::1]:0"
  http: null
  admin: null
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: api, path: /, access: public, rate_limit: { max: 1, window: 1m, key: ip } }]
`, clock);
  const req = (path: string): Promise<number> =>
    new Promise((resolve, reject) => {
      const r = https.request({ host: '::1', port: gw.port, path, servername: 'app.test', ca: gw.ca, agent: false, headers: { host: 'app.test' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      r.on('error', reject);
      r.end();
    });
  t.equal(await req('/1'), 200);
  t.equal(await req('/2'), 429);
  const evt = securityEvents(gw.logs, 'rate_limited')[0];
  t.equal(evt?.ip, '::1', 'the event has the client address');
  t.match(evt?.key, /ip:::\/64$/, 'the key is the /64 network, not the address');
});

t.test('key: user is per issuer: the same sub from another issuer is another person', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const staff = await startIssuer(t);
  const partner = await startIssuer(t);
  const issuers = `auth:
  issuers:
${[staff, partner].map((i) => `    - { issuer: "${i.issuer}", audiences: ["${i.audience}"], algorithms: [ES256], jwks_uri: "${i.jwksUri}" }`).join('\n')}
`;
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${issuers}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /api/, rate_limit: { max: 2, window: 1m, key: user } }
`, clock);
  const staffUser = `Bearer ${await staff.token('1234')}`;
  const partnerUser = `Bearer ${await partner.token('1234')}`;
  const as = (authorization: string, path: string): Promise<number> => get(gw, path, { authorization }).then((r) => r.status);
  t.equal(await as(partnerUser, '/api/p1'), 200);
  t.equal(await as(partnerUser, '/api/p2'), 200);
  t.equal(await as(partnerUser, '/api/p3'), 429, "the partner's 1234 is limited");
  t.equal(await as(staffUser, '/api/s1'), 200, "the staff 1234 still has the whole budget: another issuer's user cannot spend it");
  t.equal(await as(staffUser, '/api/s2'), 200);
  t.equal(await as(staffUser, '/api/s3'), 429);
  t.same(up.seen.map((r) => r.url), ['/api/p1', '/api/p2', '/api/s1', '/api/s2']);
  const keys = securityEvents(gw.logs, 'rate_limited').map((e) => String(e.key));
  t.equal(keys.length, 2);
  t.not(keys[0], keys[1], 'two keys');
  t.match(keys[1], `user:1234@${encodeURIComponent(staff.issuer)}`);
});
