// The reverse proxy end to end: real TLS client → gateway → real upstream.
import t from 'tap';
import { closedPort, LOOPBACK_LISTEN, startGateway, startUpstream } from '../helpers/gateway.js';

const site = (origin: string, extra = '') => `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test, www.app.test]
    upstream: ${origin}
    routes:
      - { path: /, access: public }
${extra}`;

t.test('method, path, query, body and headers reach the upstream intact', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const res = await gw.request({
    method: 'POST',
    path: '/api/items?b=2&a=1&flag&q=a+b%20c',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-custom': 'kept', accept: 'application/json' },
    body: 'name=widget&qty=3',
  });
  t.equal(res.status, 200);
  t.equal(up.seen.length, 1);
  const seen = up.seen[0]!;
  t.equal(seen.method, 'POST');
  t.equal(seen.url, '/api/items?b=2&a=1&flag&q=a+b%20c', 'query string byte-for-byte');
  t.equal(seen.body.toString(), 'name=widget&qty=3');
  t.equal(seen.headers['x-custom'], 'kept');
  t.equal(seen.headers['content-type'], 'application/x-www-form-urlencoded');
  t.equal(seen.headers.host, 'app.test', 'client Host is forwarded');
  t.equal(seen.headers['x-forwarded-proto'], 'https');
  t.equal(seen.headers['x-forwarded-host'], 'app.test');
  t.equal(seen.headers['x-forwarded-port'], String(gw.port));
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
  t.match(seen.headers['x-request-id'], /^[0-9a-f-]{36}$/);
  t.equal(res.headers['x-request-id'], seen.headers['x-request-id'], 'request id returned to the client');
  const access = gw.logs.find((l) => l.type === 'access');
  t.equal(access?.request_id, seen.headers['x-request-id'], 'and logged');
});

t.test('hop-by-hop headers are removed, and Connection cannot remove gateway headers', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  await gw.request({
    path: '/x',
    headers: {
      connection: 'keep-alive, x-forwarded-for, x-request-id, x-forwarded-proto, x-secret-hop',
      'keep-alive': 'timeout=5',
      'proxy-authorization': 'Basic Zm9vOmJhcg==',
      te: 'trailers',
      'x-secret-hop': 'must not pass',
      'proxy-connection': 'keep-alive',
    },
  });
  const h = up.seen[0]!.headers;
  t.notOk(h['keep-alive']);
  t.notOk(h['proxy-authorization']);
  t.notOk(h['proxy-connection']);
  t.notOk(h['x-secret-hop'], 'a header named by Connection is dropped');
  t.notOk(h.te);
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For still set by the gateway');
  t.ok(h['x-request-id'], 'X-Request-Id still set by the gateway');
  t.equal(h['x-forwarded-proto'], 'https');
});

t.test('forged X-Forwarded-* and Forwarded from an untrusted client are overwritten', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  await gw.request({
    headers: {
      'x-forwarded-for': '6.6.6.6',
      'x-forwarded-proto': 'http',
      'x-forwarded-host': 'evil.example',
      'x-forwarded-port': '1',
      forwarded: 'for=6.6.6.6;proto=http',
      'x-real-ip': '6.6.6.6',
      'x-request-id': 'attacker-chosen',
    },
  });
  const h = up.seen[0]!.headers;
  t.equal(h['x-forwarded-for'], '127.0.0.1');
  t.equal(h['x-forwarded-proto'], 'https');
  t.equal(h['x-forwarded-host'], 'app.test');
  t.equal(h['x-forwarded-port'], String(gw.port));
  t.notOk(h.forwarded);
  t.notOk(h['x-real-ip']);
  t.not(h['x-request-id'], 'attacker-chosen');
});

t.test('a trusted proxy extends the chain and may pass a request id', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `trusted_proxies: [127.0.0.0/8]\n${site(up.origin)}`);
  const res = await gw.request({ headers: { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', 'x-request-id': 'lb-123' } });
  const h = up.seen[0]!.headers;
  t.equal(h['x-forwarded-for'], '203.0.113.9, 127.0.0.1');
  t.equal(h['x-request-id'], 'lb-123');
  t.equal(res.headers['x-request-id'], 'lb-123');
  const access = gw.logs.find((l) => l.type === 'access');
  t.equal(access?.ip, '203.0.113.9', 'the client address comes through the trusted proxy');

  // The trusted proxy's Connection header names X-Forwarded-For (hop-by-hop for it): the gateway
  // used the chain for the client address, so the app must get the same chain, not just the proxy.
  await gw.request({ headers: { 'x-forwarded-for': '203.0.113.10', connection: 'keep-alive, X-Forwarded-For' } });
  t.equal(up.seen[1]!.headers['x-forwarded-for'], '203.0.113.10, 127.0.0.1', 'the chain survives a Connection that names it');
  t.equal(gw.logs.filter((l) => l.type === 'access')[1]?.ip, '203.0.113.10');
});

t.test('Server and X-Powered-By are removed; HSTS and nosniff are added', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { server: 'Werkzeug/3.0 Python/3.11', 'x-powered-by': 'Express', 'x-aspnet-version': '4.0', 'content-type': 'text/plain' });
    res.end('hi');
  });
  const gw = await startGateway(t, site(up.origin));
  const res = await gw.request({});
  t.equal(res.status, 200);
  t.equal(res.body, 'hi');
  t.notOk(res.headers.server);
  t.notOk(res.headers['x-powered-by']);
  t.notOk(res.headers['x-aspnet-version']);
  t.equal(res.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains');
  t.equal(res.headers['x-content-type-options'], 'nosniff');
});

t.test('upstream list: round robin, and a target that refuses connections is skipped', async (t) => {
  const a = await startUpstream(t);
  const b = await startUpstream(t);
  const dead = { origin: `http://127.0.0.1:${await closedPort()}` };
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: [${dead.origin}, ${a.origin}, ${b.origin}]
    routes: [{ path: /, access: public }]
`);
  const statuses: number[] = [];
  for (let i = 0; i < 6; i++) statuses.push((await gw.request({ path: `/r${i}` })).status);
  t.same(statuses, [200, 200, 200, 200, 200, 200], 'no request fails because one target is down');
  t.ok(a.seen.length > 0 && b.seen.length > 0, 'both live targets served');
  t.equal(a.seen.length + b.seen.length, 6);
  const post = await gw.request({ method: 'POST', path: '/p', body: 'x'.repeat(100), headers: { 'content-type': 'text/plain' } });
  t.equal(post.status, 200, 'a POST fails over too (the dead target never saw it)');
  const got = [...a.seen, ...b.seen].find((r) => r.url === '/p');
  t.equal(got?.body.length, 100, 'with its whole body');
});

t.test('all targets down: 502 with a safe body', async (t) => {
  const gw = await startGateway(t, site(`http://127.0.0.1:${await closedPort()}`));
  const res = await gw.request({ headers: { accept: 'application/json' } });
  t.equal(res.status, 502);
  const body = JSON.parse(res.body);
  t.equal(body.error.code, 'GW_ERR_UPSTREAM_UNAVAILABLE');
  t.equal(body.error.request_id, res.headers['x-request-id']);
  t.notMatch(res.body, /127\.0\.0\.1|ECONNREFUSED|Error|at /, 'no upstream address, no exception text');
  const text = await gw.request({});
  t.match(text.headers['content-type'], /^text\/plain/);
  t.match(text.body, /^502 Bad Gateway/);
});

t.test('upstream too slow: 504', async (t) => {
  const up = await startUpstream(t, () => {
    /* never answers */
  });
  const gw = await startGateway(t, `${site(up.origin)}timeouts: { response: 300ms }\n`);
  const res = await gw.request({});
  t.equal(res.status, 504);
  t.match(res.body, /GW_ERR_UPSTREAM_TIMEOUT/);
});

t.test('logs: one access line per request; credentials never reach a log line', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'set-cookie': 'sid=SECRET-SESSION-VALUE; Path=/', 'content-type': 'text/plain' });
    res.end('ok');
  });
  const gw = await startGateway(t, site(up.origin));
  const res = await gw.request({
    path: '/cb?code=SECRET-OAUTH-CODE&state=xyz&access_token=SECRET-AT&Password=SECRET-PW',
    headers: { authorization: 'Bearer SECRET-BEARER', cookie: 'sid=SECRET-COOKIE', 'proxy-authorization': 'Basic SECRET-PROXY' },
  });
  t.equal(res.status, 200);
  const all = JSON.stringify(gw.logs);
  for (const secret of ['SECRET-OAUTH-CODE', 'SECRET-AT', 'SECRET-PW', 'SECRET-BEARER', 'SECRET-COOKIE', 'SECRET-PROXY', 'SECRET-SESSION-VALUE']) {
    t.notOk(all.includes(secret), `${secret} is not logged`);
  }
  const access = gw.logs.filter((l) => l.type === 'access');
  t.equal(access.length, 1, 'exactly one access line');
  t.match(access[0], {
    request_id: res.headers['x-request-id'],
    ip: '127.0.0.1',
    method: 'GET',
    host: 'app.test',
    path: '/cb?code=[REDACTED]&state=xyz&access_token=[REDACTED]&Password=[REDACTED]',
    status: 200,
    bytes: 2,
    route: 'app.test:0',
    site: 'app.test',
    upstream: up.origin,
  });
  t.type(access[0]!.duration_ms, 'number');
  t.ok(access[0]!.time, 'timestamped');
});

t.test("a site's protection blocks also shape its own 404s; unknown hosts get the top level", async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
headers: { frame_options: DENY }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    headers: { frame_options: SAMEORIGIN }
    routes: [{ path: /api, access: public }]
`);
  const notFound = await gw.request({ path: '/nothing-here' });
  t.equal(notFound.status, 404);
  t.equal(notFound.headers['x-frame-options'], 'SAMEORIGIN', 'site level');
  const unknown = await gw.request({ host: 'other.test', servername: 'app.test' });
  t.equal(unknown.status, 421);
  t.equal(unknown.headers['x-frame-options'], 'DENY', 'top level');
  t.equal(up.seen.length, 0);
});
