// CSRF through the real gateway: forged cross-site requests that carry a cookie are refused with
// 403 and never reach the upstream; same-origin, safe methods, bearer-only and trusted origins pass.
import t from 'tap';
import http2 from 'node:http2';
import { WebSocket, WebSocketServer } from 'ws';
import { LOOPBACK_LISTEN, startGateway, startUpstream } from '../helpers/gateway.js';
import { securityEvents } from './_helpers.js';

const FORM = 'application/x-www-form-urlencoded';

t.test('CSRF decisions, as seen by the upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
csrf: { trusted_origins: ["https://partner.test"] }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: web, path: /, access: public }
      - { id: hook, path: /hook/, access: public, csrf: { enabled: false } }
`);
  const own = `https://app.test:${gw.port}`;
  const evil = 'https://evil.test';

  // [name, method, path, headers, expected status]
  type Case = [string, string, string, Record<string, string | string[]>, number];
  const cases: Case[] = [
    ['cross-site form POST with a cookie', 'POST', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: evil }, 403],
    ['old browser: foreign Origin, no Sec-Fetch-Site', 'POST', '/transfer', { cookie: 'sid=victim', origin: evil }, 403],
    ['Origin: null (sandboxed iframe, data: URL)', 'POST', '/transfer', { cookie: 'sid=victim', origin: 'null' }, 403],
    ['Sec-Fetch-Site: cross-site with Origin: null', 'POST', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: 'null' }, 403],
    ['same-site sibling (other subdomain) is not same-origin', 'POST', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'same-site', origin: 'https://blog.app.test' }, 403],
    ['Sec-Fetch-Site wins over a spoofable-looking own Origin', 'POST', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: own }, 403],
    ['own host on another port is another origin', 'POST', '/transfer', { cookie: 'sid=victim', origin: 'https://app.test' }, 403],
    ['http:// is another origin', 'POST', '/transfer', { cookie: 'sid=victim', origin: `http://app.test:${gw.port}` }, 403],
    ['trusted origin as a suffix trick', 'POST', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: 'https://partner.test.evil.test' }, 403],
    ['two Origin headers (own + evil)', 'POST', '/transfer', { cookie: 'sid=victim', origin: [own, evil] }, 403],
    ['two Sec-Fetch-Site headers (same-origin + cross-site)', 'POST', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': ['same-origin', 'cross-site'], origin: evil }, 403],
    ['cross-site PUT', 'PUT', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: evil }, 403],
    ['cross-site PATCH', 'PATCH', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: evil }, 403],
    ['cross-site DELETE', 'DELETE', '/transfer', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: evil }, 403],
    ['empty Cookie header still counts as a cookie', 'POST', '/transfer', { cookie: '', 'sec-fetch-site': 'cross-site', origin: evil }, 403],
    // allowed
    ['same-origin POST (Fetch Metadata)', 'POST', '/ok/1', { cookie: 'sid=me', 'sec-fetch-site': 'same-origin', origin: own }, 200],
    ['same-origin POST (Origin only, older browser)', 'POST', '/ok/2', { cookie: 'sid=me', origin: own }, 200],
    ['user-initiated navigation (Sec-Fetch-Site: none)', 'POST', '/ok/3', { cookie: 'sid=me', 'sec-fetch-site': 'none' }, 200],
    ['no Origin and no Sec-Fetch-Site: not a browser', 'POST', '/ok/4', { cookie: 'sid=me' }, 200],
    ['bearer-only cross-site POST without cookie', 'POST', '/ok/5', { authorization: 'Bearer abc', 'sec-fetch-site': 'cross-site', origin: evil }, 200],
    ['cross-site GET with cookie', 'GET', '/ok/6', { cookie: 'sid=me', 'sec-fetch-site': 'cross-site', origin: evil }, 200],
    ['cross-site HEAD with cookie', 'HEAD', '/ok/7', { cookie: 'sid=me', 'sec-fetch-site': 'cross-site', origin: evil }, 200],
    ['cross-site OPTIONS with cookie', 'OPTIONS', '/ok/8', { cookie: 'sid=me', 'sec-fetch-site': 'cross-site', origin: evil }, 200],
    ['trusted origin', 'POST', '/ok/9', { cookie: 'sid=me', 'sec-fetch-site': 'cross-site', origin: 'https://partner.test' }, 200],
    ['trusted origin, other case and explicit default port', 'POST', '/ok/10', { cookie: 'sid=me', origin: 'HTTPS://PARTNER.TEST:443' }, 200],
    ['route with csrf disabled', 'POST', '/hook/11', { cookie: 'sid=me', 'sec-fetch-site': 'cross-site', origin: evil }, 200],
  ];

  const refusedIds: string[] = [];
  for (const [name, method, path, headers, expected] of cases) {
    const body = method === 'GET' || method === 'HEAD' ? undefined : 'amount=1000&to=mallory';
    // Explicit Content-Length: Node's client sends DELETE/OPTIONS bodies unframed otherwise.
    const framing: Record<string, string> = body === undefined ? {} : { 'content-type': FORM, 'content-length': String(body.length) };
    const res = await gw.request({ method, path, headers: { ...framing, accept: 'application/json', ...headers }, body });
    t.equal(res.status, expected, name);
    if (expected === 403) {
      t.match(JSON.parse(res.body), { error: { code: 'GW_ERR_CSRF' } }, `${name}: safe error body`);
      t.equal(res.headers['x-content-type-options'], 'nosniff', `${name}: security headers on the 403`);
      refusedIds.push(String(res.headers['x-request-id']));
    }
  }
  t.notOk(up.seen.some((r) => r.url === '/transfer'), 'no forged request reached the upstream');
  t.same(
    up.seen.map((r) => r.url).sort(),
    cases.filter((c) => c[4] === 200).map((c) => c[2]).sort(),
    'every allowed request did',
  );

  const events = securityEvents(gw.logs, 'csrf_rejected');
  t.equal(events.length, refusedIds.length, 'one csrf_rejected event per refusal');
  t.same(events.map((e) => e.request_id), refusedIds, 'events carry the request ids of the refused requests');
  t.match(events[0], { ip: '127.0.0.1', route: 'web', site: 'app.test', reason: 'cross_site', origin: evil, method: 'POST' });
  t.match(events[1], { reason: 'origin_mismatch' });
  t.match(events[2], { reason: 'null_origin' });
  t.notMatch(JSON.stringify(events), /victim/, 'cookie values never reach the security log');
});

t.test('over HTTP/2 too: a forged POST is refused, a same-origin one passes', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ id: web, path: /, access: public }]
`);
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  const post = (path: string, headers: Record<string, string | string[]>): Promise<number> =>
    new Promise((resolve, reject) => {
      const req = session.request({ ':method': 'POST', ':path': path, ':authority': 'app.test', 'content-type': FORM, ...headers });
      req.on('response', (h) => resolve(Number(h[':status'])));
      req.on('error', reject);
      req.resume();
      req.end('amount=1');
    });
  // RFC 9113 §8.2.3: HTTP/2 clients may split the Cookie header into several fields.
  t.equal(await post('/forged', { cookie: ['sid=victim', 'theme=dark'], 'sec-fetch-site': 'cross-site', origin: 'https://evil.test' }), 403);
  t.equal(await post('/forged', { cookie: 'sid=victim', origin: 'null' }), 403);
  t.equal(await post('/mine', { cookie: 'sid=me', 'sec-fetch-site': 'same-origin', origin: `https://app.test:${gw.port}` }), 200);
  t.same(up.seen.map((r) => r.url), ['/mine'], 'only the same-origin POST reached the upstream');
  t.equal(securityEvents(gw.logs, 'csrf_rejected').length, 2);
});

t.test('cross-site WebSocket hijacking: a cookie-carrying upgrade from another origin is refused like a forged POST', async (t) => {
  // The handshake is a GET, but it opens a two-way channel authenticated by the victim's cookie
  // (browsers send Origin, and Sec-Fetch-Site, on every WebSocket handshake).
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const upgrades: string[] = [];
  wss.on('connection', (_ws, req) => upgrades.push(req.url ?? ''));
  t.teardown(() => new Promise<void>((r) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => r());
  }));
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
csrf: { trusted_origins: ["https://partner.test"] }
sites:
  - hosts: [app.test]
    upstream: http://127.0.0.1:${(wss.address() as { port: number }).port}
    routes: [{ id: web, path: /, access: public }]
`);
  const own = `https://app.test:${gw.port}`;
  const evil = 'https://evil.test';
  const open = (path: string, headers: Record<string, string>): Promise<number> =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(`wss://127.0.0.1:${gw.port}${path}`, { ca: gw.ca, servername: 'app.test', headers: { host: 'app.test', ...headers } } as object);
      t.teardown(() => ws.terminate());
      ws.once('open', () => {
        ws.close();
        resolve(101);
      });
      ws.once('unexpected-response', (_req, res) => {
        res.resume();
        ws.terminate();
        resolve(res.statusCode ?? 0);
      });
      ws.once('error', reject);
    });

  t.equal(await open('/hijack/1', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: evil }), 403, 'cross-site page, cookie: 403');
  t.equal(await open('/hijack/2', { cookie: 'sid=victim', origin: evil }), 403, 'older browser, foreign Origin, cookie: 403');
  t.equal(await open('/hijack/3', { cookie: 'sid=victim', 'sec-fetch-site': 'same-site', origin: 'https://blog.app.test' }), 403, 'sibling subdomain (Lax cookies are sent): 403');
  t.equal(await open('/ok/1', { cookie: 'sid=me', 'sec-fetch-site': 'same-origin', origin: own }), 101, 'own page: open');
  t.equal(await open('/ok/2', { cookie: 'sid=me', origin: own }), 101, 'own page, older browser: open');
  t.equal(await open('/ok/3', { 'sec-fetch-site': 'cross-site', origin: evil }), 101, 'no cookie: nothing to hijack, open');
  t.equal(await open('/ok/4', { cookie: 'sid=me' }), 101, 'no Origin: not a browser, open');
  t.equal(await open('/ok/5', { cookie: 'sid=me', 'sec-fetch-site': 'cross-site', origin: 'https://partner.test' }), 101, 'trusted origin: open');
  // The gateway answers 101 and then dials the upstream: wait for the last one to arrive.
  for (let i = 0; i < 200 && upgrades.length < 5; i++) await new Promise((r) => setTimeout(r, 10));
  t.same(upgrades.sort(), ['/ok/1', '/ok/2', '/ok/3', '/ok/4', '/ok/5'], 'no hijacking handshake reached the upstream');
  t.match(securityEvents(gw.logs, 'csrf_rejected')[0], { reason: 'cross_site', method: 'GET', origin: evil });
});
