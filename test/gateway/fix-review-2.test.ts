// Regression tests from a review of 7dc4bfc (bans over workers, Store.setIfAbsent) and 2d45b13
// (pipelining, parser errors, maxHeadersCount, Expect / 100 Continue, raw query bytes).
import t from 'tap';
import { LOOPBACK_LISTEN, startGateway, startUpstream, until, type RunningGateway, type Tap, type Upstream } from '../helpers/gateway.js';
import { appSite, h2Request, h2Session, parseResponses, tlsClient, type RawResponse } from '../helpers/clients.js';
import { fakeClock, securityEvents, startGatewayOnClock, startIssuer } from '../protect-e2e/_helpers.js';

/** `ok METHOD URL BODYLENGTH`, after `delay(url)` ms. */
function namingUpstream(t: Tap, delay: (url: string) => number = () => 0): Promise<Upstream> {
  return startUpstream(t, (req, res, body) => {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`ok ${req.method} ${req.url} ${body.length}`);
    }, delay(req.url ?? ''));
  });
}

async function exchange(t: Tap, gw: RunningGateway, bytes: string, methods: string[], ms: number): Promise<{ responses: RawResponse[]; closed: boolean; text: string }> {
  const c = await tlsClient(t, gw);
  c.socket.write(Buffer.from(bytes, 'latin1'));
  const closed = await c.closedWithin(ms);
  return { responses: parseResponses(c.text(), methods), closed, text: c.text() };
}

// ---------------------------------------------------------------------------------------------
// Pipelining

t.test('a complete pipelined POST behind a slow answer is answered (its body arrived at once; request_timeout must not cut it)', async (t) => {
  const up = await namingUpstream(t, (url) => (url === '/slow' ? 1800 : 0));
  const gw = await startGateway(t, appSite(up.origin, '[{ path: /, access: public }]', 'limits: { request_timeout: 1s }\n'));
  const bytes =
    'GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n' +
    'POST /after HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello';
  const { responses, text } = await exchange(t, gw, bytes, ['GET', 'POST'], 4000);
  t.same(
    responses.map((r) => `${r.status} ${r.body}`),
    ['200 ok GET /slow 0', '200 ok POST /after 5'],
    `both pipelined requests answered, in order (got ${JSON.stringify(text.slice(0, 200))})`,
  );
});

t.test('a pipelined request whose chunked body the parser refuses, behind a pending answer: never forwarded, 400 after the answer', async (t) => {
  const up = await namingUpstream(t, (url) => (url === '/slow' ? 300 : 0));
  const heads: string[] = [];
  up.server.on('request', (req) => heads.push(`${req.method} ${req.url}`));
  const gw = await startGateway(t, appSite(up.origin, '[{ path: /, access: public }]', 'limits: { request_timeout: 3s }\n'));
  const bytes =
    'GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n' +
    'POST /broken HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n';
  const started = Date.now();
  const c = await tlsClient(t, gw);
  c.socket.write(bytes);
  const closed = await c.closedWithin(6000);
  const took = Date.now() - started;
  const responses = parseResponses(c.text(), ['GET', 'POST']);
  t.same(responses.map((r) => r.status), [200, 400], `the GET's 200 then the 400 (got ${JSON.stringify(c.text().replace(/\r\n/g, ' | ').slice(0, 400))})`);
  t.ok(closed && took < 2000, `answered and closed promptly (closed: ${closed}, ${took} ms)`);
  t.same(heads.filter((s) => s.includes('broken')), [], `the broken request never reaches the upstream (upstream saw heads ${JSON.stringify(heads)})`);
  const access = gw.logs.filter((l) => l.type === 'access').map((l) => `${l.status} ${l.path ?? ''} ${l.reason ?? ''}`);
  t.comment(`access lines: ${JSON.stringify(access)}`);
});

// ---------------------------------------------------------------------------------------------
// Expect / 100 Continue over HTTP/2

t.test('an allowed upload with `Expect: 100-Continue` (the value is case-insensitive, RFC 9110 §10.1.1) is invited: HTTP/1.1 and HTTP/2', async (t) => {
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin));
  // HTTP/1.1 (parity): Node's own test of the value is case-insensitive.
  const c = await tlsClient(t, gw);
  c.socket.write('POST /h1 HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n');
  t.ok(await until(() => c.text().includes('100 Continue'), 1500), 'HTTP/1.1 `Expect: 100-Continue`: 100 sent');
  c.socket.write('hello');
  t.ok(await until(() => /HTTP\/1\.1 200 /.test(c.text()), 3000), 'HTTP/1.1: then 200');
  const session = h2Session(t, gw);
  for (const value of ['100-continue', '100-Continue']) {
    // A client that waits for the 100 before it sends the body (as curl does, for a while).
    const req = session.request({ ':authority': 'app.test', ':method': 'POST', ':path': `/h2-${value}`, expect: value, 'content-type': 'text/plain' });
    req.on('error', () => undefined);
    let invited = false;
    req.on('continue', () => (invited = true));
    const gotIt = await until(() => invited, 1500);
    t.ok(gotIt, `HTTP/2 expect: ${value}: 100 Continue within 1.5 s`);
    req.end('hello');
    const status = await new Promise<number>((r) => req.on('response', (h) => r(Number(h[':status']))));
    t.equal(status, 200, `HTTP/2 expect: ${value}: 200 once the body is sent`);
    req.resume();
  }
});

// ---------------------------------------------------------------------------------------------
// Bans

const ATTACKER = '198.51.100.66';

t.test('bans: the failure that sets a ban yields ONE `banned` event (not also a ban_active one)', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}trusted_proxies: [127.0.0.0/8]
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: lax, path: /lax/, access: authenticated, bans: { auth_failures: 10, window: 60s, duration: 30s } }
      - { id: strict, path: /strict/, access: authenticated, bans: { auth_failures: 3, window: 60s, duration: 30s } }
`, clock);
  const bad = `Bearer ${await idp.forged('alice')}`;
  const send = (path: string) => gw.request({ path, headers: { accept: 'application/json', 'x-forwarded-for': ATTACKER, authorization: bad } });
  const lax = [];
  for (let i = 0; i < 4; i++) lax.push((await send(`/lax/g${i}`)).status);
  t.same(lax, [401, 401, 401, 401], 'four failures on the lax route: 401 each, no ban');
  t.equal(securityEvents(gw.logs, 'banned').length, 0, 'no ban yet');
  const r = await send('/strict/g');
  const id = r.headers['x-request-id'];
  const events = securityEvents(gw.logs, 'banned').filter((e) => e.request_id === id).map((e) => e.reason);
  t.comment(`strict failure answered ${r.status}; banned events of that request: ${JSON.stringify(events)}`);
  t.same(events, ['auth_failures'], 'the request that set the ban logs exactly one banned event');
});

t.test('bans: after a racing burst the ban expires cleanly (counting restarts: a valid token passes, one failure does not re-ban)', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}trusted_proxies: [127.0.0.0/8]
bans: { auth_failures: 3, window: 60s, duration: 1s }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /, access: authenticated }
`, clock);
  const valid = `Bearer ${await idp.token('alice')}`;
  const bad = `Bearer ${await idp.forged('alice')}`;
  // Distinct wrong tokens (a cached refusal is answered at once, in order): verified together.
  const guesses = await Promise.all(Array.from({ length: 10 }, (_, i) => idp.forged(`guess${i}`)));
  const session = h2Session(t, gw);
  const burst = await Promise.all(
    guesses.map((g, i) => h2Request(session, { ':method': 'GET', ':path': `/g${i}`, 'x-forwarded-for': ATTACKER, authorization: `Bearer ${g}` })),
  );
  const statuses = burst.map((r) => r.status);
  t.comment(`burst statuses: ${JSON.stringify(statuses)}; auth_failed events: ${securityEvents(gw.logs, 'auth_failed').length}; banned: ${JSON.stringify(securityEvents(gw.logs, 'banned').map((e) => e.reason))}`);
  t.equal(statuses.filter((s) => s === 401).length, 3, 'at most auth_failures 401s in the burst');
  t.equal(securityEvents(gw.logs, 'banned').filter((e) => e.reason === 'auth_failures').length, 1, 'one ban');

  clock.advance(1500); // the 1 s ban is over
  const ok = await gw.request({ path: '/after-ban', headers: { 'x-forwarded-for': ATTACKER, authorization: valid } });
  t.equal(ok.status, 200, `after the ban, a valid token passes (got ${ok.status}, retry-after ${ok.headers['retry-after']})`);
  const one = await gw.request({ path: '/one-more', headers: { 'x-forwarded-for': ATTACKER, authorization: bad } });
  t.equal(one.status, 401, `after the ban, one bad token is a 401 (got ${one.status})`);
  t.equal(securityEvents(gw.logs, 'banned').filter((e) => e.reason === 'auth_failures').length, 1, 'and no second ban from a single failure');
});

// Older than 2d45b13 (before it the same flood was read whole too: 20 001 requests, heap +117 MiB).
// Reading now pauses while 32 pipelined requests wait for their turn.
t.test('pipelining flood behind a slow answer: the gateway stops reading (bounded pending requests and memory)', async (t) => {
  const up = await namingUpstream(t, (url) => (url === '/slow' ? 4000 : 0));
  const gw = await startGateway(t, appSite(up.origin));
  let emitted = 0;
  (gw.gw.app.server as unknown as import('node:events').EventEmitter).on('request', () => emitted++);
  const c = await tlsClient(t, gw);
  c.socket.write('GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n');
  await until(() => up.server.listenerCount('request') > 0 && emitted === 1, 1000);
  const one = 'GET /p HTTP/1.1\r\nHost: app.test\r\n\r\n';
  const chunk = one.repeat(2000); // ~70 KB, 2 000 requests
  const heapBefore = process.memoryUsage().heapUsed;
  // 20 000 pipelined GETs (~700 KB) behind the pending answer, written at once.
  for (let i = 0; i < 10; i++) c.socket.write(chunk);
  const written = 10;
  await new Promise((r) => setTimeout(r, 2000));
  const heapAfter = process.memoryUsage().heapUsed;
  t.comment(`requests emitted while /slow is pending: ${emitted}; chunks accepted: ${written}; heap growth ${((heapAfter - heapBefore) / 1048576).toFixed(1)} MiB`);
  t.ok(emitted < 2000, `requests taken off one connection while its first answer is pending stay bounded (got ${emitted})`);
  c.socket.destroy();
});

t.test('reading paused by deep pipelining resumes: 200 pipelined GETs behind a slow answer are all answered, in order', async (t) => {
  const up = await namingUpstream(t, (url) => (url === '/slow' ? 300 : 0));
  const gw = await startGateway(t, appSite(up.origin));
  const c = await tlsClient(t, gw);
  const paths = Array.from({ length: 200 }, (_, i) => `/p${i}`);
  c.socket.write(['/slow', ...paths].map((p) => `GET ${p} HTTP/1.1\r\nHost: app.test\r\n\r\n`).join(''));
  t.ok(await until(() => (c.text().match(/HTTP\/1\.1 200 /g) ?? []).length === 201, 10_000), `all 201 answered (${(c.text().match(/HTTP\/1\.1 200 /g) ?? []).length})`);
  const order = [...c.text().matchAll(/ok GET (\S+)/g)].map((m) => m[1]);
  t.same(order, ['/slow', ...paths], 'in the order sent');
});

t.test('bans: shared failure count — a fresh valid token on a strict route whose failures are used up writes a real ban (one event, its Retry-After), which then holds for a cached token too', async (t) => {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}trusted_proxies: [127.0.0.0/8]
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: lax, path: /lax/, access: authenticated, bans: { auth_failures: 10, window: 60s, duration: 30s } }
      - { id: strict, path: /strict/, access: authenticated, bans: { auth_failures: 3, window: 60s, duration: 30s } }
`, clock);
  const send = (path: string, authorization: string) => gw.request({ path, headers: { accept: 'application/json', 'x-forwarded-for': ATTACKER, authorization } });
  const known = `Bearer ${await idp.token('alice')}`;
  t.equal((await send('/strict/warm', known)).status, 200, 'a token verified (and cached) before');
  const bad = `Bearer ${await idp.forged('alice')}`;
  for (let i = 0; i < 4; i++) await send(`/lax/g${i}`, bad);
  t.equal(securityEvents(gw.logs, 'banned').length, 0, 'four lax failures: no ban');
  // A token verified before the failures is no guess: it passes while no ban is written (the
  // check after verification runs for tokens verified now, to close a burst's race with its ban).
  t.equal((await send('/strict/cached', known)).status, 200, 'the cached token, before any ban');
  const fresh = `Bearer ${await idp.token('alice')}`;
  const b = await send('/strict/fresh', fresh);
  t.equal(b.status, 429, 'a fresh token once the strict route\'s failures are used up: 429');
  t.equal(b.headers['retry-after'], '30', 'Retry-After is the ban\'s duration: a real ban was written');
  t.same(securityEvents(gw.logs, 'banned').map((e) => e.reason), ['auth_failures'], 'one banned event, the ban\'s own');
  t.equal((await send('/strict/cached-after', known)).status, 429, 'then the cached token is refused as well');
  t.notOk(up.seen.some((r) => r.url === '/strict/fresh' || r.url === '/strict/cached-after'), 'neither reached the upstream');
});
