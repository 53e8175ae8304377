// An upstream that fails AFTER its response headers (connection closed before the first body
// byte, or a status line Fastify cannot send): the client gets the gateway's own 502, and none of
// the upstream's headers — cookies, encodings, redirects, internals — ride along on it. And a
// WebSocket whose upstream cannot be reached is closed without the connection error's text.
import t, { type Test } from 'tap';
import http2 from 'node:http2';
import net from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { LOOPBACK_LISTEN, startGateway, type Tap } from '../helpers/gateway.js';

/** A raw HTTP/1.1 upstream: reads one request head, writes `head`, then closes (or ends) the socket. */
async function rawUpstream(t: Tap, head: string, how: 'destroy' | 'end'): Promise<string> {
  const server = net.createServer((socket) => {
    let buf = '';
    socket.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      if (!buf.includes('\r\n\r\n')) return;
      socket.write(head, () => (how === 'destroy' ? socket.destroy() : socket.end()));
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

const UPSTREAM_HEADERS =
  'Content-Type: application/octet-stream\r\n' +
  'Content-Encoding: gzip\r\n' +
  'Set-Cookie: sid=upstream-session; Path=/\r\n' +
  'Location: http://10.0.0.7:8080/internal\r\n' +
  'X-Internal-Trace: db-primary-7\r\n';

const site = (origin: string): string => `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes: [{ path: /, access: public }]
`;

function assertNoUpstreamHeaders(t: Test, h: Record<string, unknown>, what: string): void {
  t.notOk(h['set-cookie'], `${what}: no upstream Set-Cookie on the gateway's error`);
  t.notOk(h['content-encoding'], `${what}: no upstream Content-Encoding (the error body is not gzip)`);
  t.notOk(h.location, `${what}: no upstream Location`);
  t.notOk(h['x-internal-trace'], `${what}: no upstream internals`);
}

t.test('upstream closes after its headers, before any body byte: 502, no upstream header', async (t) => {
  for (const framing of ['Content-Length: 1000\r\n', 'Transfer-Encoding: chunked\r\n']) {
    const origin = await rawUpstream(t, `HTTP/1.1 200 OK\r\n${UPSTREAM_HEADERS}${framing}\r\n`, 'destroy');
    const gw = await startGateway(t, site(origin));
    const res = await gw.request({ path: '/file', headers: { accept: 'application/json' } });
    t.equal(res.status, 502, `${framing.trim()}: 502`);
    t.match(res.headers['content-type'], /^application\/json/);
    t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_UNAVAILABLE', `${framing.trim()}: upstream code, not an internal error`);
    assertNoUpstreamHeaders(t, res.headers, framing.trim());
    t.equal(res.headers['x-frame-options'], 'DENY', 'the gateway security headers are there');
    t.equal(res.headers['cross-origin-resource-policy'], 'same-origin', 'as on every gateway answer');

    // HTTP/2 client: same answer.
    const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
    const h2 = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
      const req = session.request({ ':path': '/file', ':authority': 'app.test' });
      req.on('response', (h) => {
        req.resume();
        req.on('end', () => resolve(h));
      });
      req.on('error', reject);
      req.end();
    });
    session.close();
    t.equal(h2[':status'], 502, `h2 ${framing.trim()}: 502`);
    assertNoUpstreamHeaders(t, h2, `h2 ${framing.trim()}`);
  }
});

t.test('a status code Fastify refuses to send (999): 502 without the upstream headers', async (t) => {
  const origin = await rawUpstream(t, `HTTP/1.1 999 Weird\r\n${UPSTREAM_HEADERS}Content-Length: 2\r\n\r\nok`, 'end');
  const gw = await startGateway(t, site(origin));
  const res = await gw.request({ path: '/x' });
  t.equal(res.status, 502);
  t.match(res.body, /GW_ERR_UPSTREAM_BAD_RESPONSE/);
  assertNoUpstreamHeaders(t, res.headers, '999');
  // Without a guard reply-from hands the upstream body over after the error answer: it is piped
  // into the finished response ("write after end"). Give that a moment to show.
  await new Promise((r) => setTimeout(r, 200));
  const late = gw.logs.filter((l) => l.level === 'error' || /writeHead in stream mode/.test(String(l.msg)));
  t.same(late.map((l) => l.msg), [], 'nothing is sent, or attempted, after the error answer');
});

/** Opens a WebSocket through the gateway and resolves with how it was closed. */
function wsClose(port: number, ca: string): Promise<{ opened: boolean; code: number; reason: string }> {
  return new Promise((resolve, reject) => {
    let opened = false;
    const ws = new WebSocket(`wss://127.0.0.1:${port}/chat`, { ca, servername: 'app.test', headers: { host: 'app.test' } } as object);
    ws.once('open', () => (opened = true));
    ws.once('unexpected-response', (_req, res) => reject(new Error(`refused with ${res.statusCode}`)));
    ws.once('close', (code, reason) => resolve({ opened, code, reason: reason.toString() }));
  });
}

t.test('a WebSocket whose upstream is unreachable: closed with 1011, without the connection error', async (t) => {
  const gw = await startGateway(t, site('http://127.0.0.1:1'));
  const closed = await wsClose(gw.port, gw.ca);
  t.ok(closed.opened, 'the gateway answered 101 before dialling the upstream');
  t.equal(closed.code, 1011, 'internal error');
  t.equal(closed.reason, '', 'no reason text: it was "connect ECONNREFUSED <upstream address>"');
});

t.test('a connection error longer than a close reason may be (123 bytes) does not kill the gateway', async (t) => {
  // "getaddrinfo ENOTFOUND <name>" (or EAI_AGAIN) is 140 bytes here: ws refuses such a reason by
  // throwing, from inside the upstream socket's error listener, i.e. an uncaught exception.
  const name = `${'a'.repeat(60)}.${'b'.repeat(50)}.invalid`;
  const gw = await startGateway(t, site(`http://${name}:8080`));
  const closed = await wsClose(gw.port, gw.ca);
  t.equal(closed.code, 1011);
  t.equal(closed.reason, '');
  await new Promise((r) => setTimeout(r, 100));
  t.equal((await gw.request({ path: '/still-there' })).status, 502, 'the gateway still answers');
});

t.test("the upstream's own close code and reason still reach the client", async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  wss.on('connection', (ws) => ws.close(4001, 'room closed'));
  t.teardown(() => new Promise<void>((r) => wss.close(() => r())));
  const gw = await startGateway(t, site(`http://127.0.0.1:${(wss.address() as net.AddressInfo).port}`));
  const closed = await wsClose(gw.port, gw.ca);
  t.same([closed.code, closed.reason], [4001, 'room closed']);
});
