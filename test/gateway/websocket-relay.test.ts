// Proxied WebSockets, the upstream's handshake first (src/proxy/websocket.ts), against real `ws`
// upstreams and clients through the TLS gateway:
// - the app chooses the subprotocol among all the client offered;
// - an upstream that is down, silent or broken is answered over HTTP (502/504) before any 101, and
//   an app's own refusal is relayed with its status and body (through the response rules);
// - early messages are neither read nor lost while the upstream is dialled;
// - backpressure both ways: a side that does not read does not make the gateway buffer the other;
// - pings, pongs and close codes are relayed end to end; shutdown says 1001 to both sides.
import t from 'tap';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { WebSocket, WebSocketServer } from 'ws';
import { wsAccept, wsClientFrame } from '../helpers/clients.js';
import { closedPort, LOOPBACK_LISTEN, sleep, startGateway, until, type LogRecord, type RunningGateway, type Tap } from '../helpers/gateway.js';

const site = (origin: string, extra = ''): string => `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes: [{ path: /, access: public${extra} }]
`;

interface WsUpstream {
  origin: string;
  wss: WebSocketServer;
  /** Each handshake's `Sec-WebSocket-Protocol` and request-target, in order. */
  offers: Array<string | undefined>;
  urls: string[];
  /** The request-targets of plain HTTP requests (answered 200). */
  httpUrls: string[];
  sockets: WebSocket[];
}

/** A real `ws` upstream. `protocols`: the ones it speaks (it picks the first offered it knows). */
async function wsUpstream(t: Tap, options: { protocols?: string[]; delayMs?: number; echo?: boolean } = {}): Promise<WsUpstream> {
  const up: WsUpstream = { origin: '', wss: null as never, offers: [], urls: [], httpUrls: [], sockets: [] };
  const server = http.createServer((req, res) => {
    up.httpUrls.push(req.url ?? '');
    res.end('ok');
  });
  const wss = new WebSocketServer({
    noServer: true,
    autoPong: false,
    handleProtocols: (offered) => {
      for (const p of offered) if (options.protocols?.includes(p)) return p;
      return false;
    },
  });
  server.on('upgrade', (req, socket, head) => {
    up.offers.push(req.headers['sec-websocket-protocol']);
    up.urls.push(req.url ?? '');
    const go = (): void => wss.handleUpgrade(req, socket, head, (ws) => {
      up.sockets.push(ws);
      if (options.echo !== false) ws.on('message', (data, binary) => ws.send(data as Buffer, { binary }));
    });
    if (options.delayMs) setTimeout(go, options.delayMs);
    else go();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const ws of up.sockets) ws.terminate();
    server.closeAllConnections();
    server.close(() => r());
  }));
  up.origin = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  up.wss = wss;
  return up;
}

function client(gw: RunningGateway, path = '/chat', protocols?: string | string[], extra: object = {}): WebSocket {
  const headers = { host: 'app.test', accept: 'application/json' };
  return new WebSocket(`wss://127.0.0.1:${gw.port}${path}`, protocols, { ca: gw.ca, servername: 'app.test', headers, ...extra } as object);
}

/** Resolves when the client opens, or with the HTTP answer it got instead of a 101. */
function opened(ws: WebSocket): Promise<{ open: true } | { open: false; status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ open: true }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString('utf8')));
      res.on('end', () => resolve({ open: false, status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    ws.once('error', reject);
  });
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
}

async function accessLines(gw: RunningGateway, path: string, n: number): Promise<LogRecord[]> {
  const find = (): LogRecord[] => gw.logs.filter((l) => l.type === 'access' && l.path === path);
  await until(() => find().length >= n, 5000);
  return find();
}

t.test('subprotocols: the app chooses among all the client offered, and the client gets its choice', async (t) => {
  const up = await wsUpstream(t, { protocols: ['graphql-transport-ws', 'v2.chat'] });
  const gw = await startGateway(t, site(up.origin));

  // The app speaks only the second and third of the client's offers: it picks the second.
  const a = client(gw, '/chat', ['legacy.chat', 'v2.chat', 'graphql-transport-ws']);
  t.same(await opened(a), { open: true });
  t.equal(a.protocol, 'v2.chat', "the client got the app's choice, not its own first offer");
  t.same(up.offers[0]?.split(/, */), ['legacy.chat', 'v2.chat', 'graphql-transport-ws'], 'the app was offered all of them, in order');
  a.send('hi');
  const [echo] = await new Promise<[Buffer]>((r) => a.once('message', (...m) => r(m as never)));
  t.equal(String(echo), 'hi', 'and the session works');
  a.close(1000);

  // The app speaks none of them: its 101 names none, and neither does the client's (RFC 6455 lets
  // the server choose none; the client decides whether to go on: a browser would not).
  const head = await handshakeHead(gw, 'mqtt');
  t.match(head, /^HTTP\/1\.1 101 /, 'the client gets its 101');
  t.notMatch(head, /sec-websocket-protocol/i, 'without a subprotocol');
  t.equal(up.offers[1], 'mqtt');

  // None offered: none sent.
  const c = client(gw);
  t.same(await opened(c), { open: true });
  t.equal(up.offers[2], undefined, 'no Sec-WebSocket-Protocol to the app');
  c.close(1000);
});

t.test('a malformed Sec-WebSocket-Protocol is refused with 400 by the gateway; nothing is dialled', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  for (const bad of ['a,,b', 'a, a', 'a b', ',a', 'a,', 'ch@t', '']) {
    const key = randomBytes(16).toString('base64');
    const res = await rawExchange(gw, `GET /chat HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ${bad}\r\n\r\n`);
    t.match(res, /^HTTP\/1\.1 400 /, `${JSON.stringify(bad)}: 400`);
    t.match(res, /GW_ERR_BAD_REQUEST/, `${JSON.stringify(bad)}: the gateway's own answer`);
  }
  t.same(up.offers, [], 'the upstream was never asked');
});

/** The head of the gateway's answer to a raw WebSocket handshake offering `protocols`. */
function handshakeHead(gw: RunningGateway, protocols: string): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ port: gw.port, host: '127.0.0.1', servername: 'app.test', ca: gw.ca, ALPNProtocols: ['http/1.1'] }, () => {
      const key = randomBytes(16).toString('base64');
      s.write(`GET /chat HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ${protocols}\r\n\r\n`);
    });
    let out = '';
    s.on('data', (c: Buffer) => {
      out += c.toString('latin1');
      const end = out.indexOf('\r\n\r\n');
      if (end !== -1) {
        s.destroy();
        resolve(out.slice(0, end));
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve(out));
  });
}

/** Writes `bytes` on a TLS connection to the gateway and resolves with what came back until it closed (or 3 s). */
function rawExchange(gw: RunningGateway, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ port: gw.port, host: '127.0.0.1', servername: 'app.test', ca: gw.ca, ALPNProtocols: ['http/1.1'] }, () => s.write(bytes));
    let out = '';
    const timer = setTimeout(() => s.destroy(), 3000);
    s.on('data', (c: Buffer) => (out += c.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

t.test('an upstream that cannot be reached: 502 over HTTP, before any 101, without the connection error', async (t) => {
  const port = await closedPort();
  const gw = await startGateway(t, site(`http://127.0.0.1:${port}`));
  const res = await opened(client(gw));
  t.match(res, { open: false, status: 502 }, 'an HTTP 502, not a 101 then a close');
  if (res.open) return;
  t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_UNAVAILABLE');
  t.notMatch(res.body, /ECONNREFUSED|127\.0\.0\.1/, 'no internals');
  t.equal(res.headers['x-frame-options'], 'DENY', "the gateway's security headers");
  const [line] = await accessLines(gw, '/chat', 1);
  t.match(line, { status: 502, reason: 'upstream_connect_refused' });
});

t.test('an upstream that takes the connection and never answers the handshake: 504 at timeouts.response', async (t) => {
  // Takes connections, reads them, never answers; counts the ones still open.
  const open = new Set<net.Socket>();
  const silent = net.createServer((s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
    s.on('error', () => undefined);
    s.resume();
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const s of open) s.destroy();
    silent.close(() => r());
  }));
  const gw = await startGateway(t, site(`http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`, ', timeouts: { response: 400ms }'));
  const started = Date.now();
  const res = await opened(client(gw));
  const elapsed = Date.now() - started;
  t.match(res, { open: false, status: 504 });
  if (!res.open) t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_TIMEOUT');
  t.ok(elapsed >= 350 && elapsed < 3000, `answered at the deadline (${elapsed} ms)`);
  const [line] = await accessLines(gw, '/chat', 1);
  t.match(line, { status: 504, reason: 'upstream_response_timeout' });
  t.ok(await until(() => open.size === 0), 'the upstream socket was closed');
});

t.test("an upstream 101 that breaks RFC 6455 (wrong accept key, a subprotocol never offered): 502, nothing of it reaches the client", async (t) => {
  for (const [what, extra] of [['a wrong Sec-WebSocket-Accept', 'Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n'], ['an unoffered subprotocol', 'Sec-WebSocket-Protocol: evil\r\n']] as const) {
    const server = net.createServer((s) => {
      s.once('data', (c: Buffer) => {
        const key = /sec-websocket-key: (\S+)/i.exec(c.toString('latin1'))?.[1] ?? '';
        const accept = extra.startsWith('Sec-WebSocket-Accept') ? '' : `Sec-WebSocket-Accept: ${wsAccept(key)}\r\n`;
        s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n${accept}${extra}\r\n` + '\x81\x06secret');
      });
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    const gw = await startGateway(t, site(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`));
    const res = await opened(client(gw, '/chat', ['chat']));
    t.match(res, { open: false, status: 502 }, `${what}: 502`);
    if (!res.open) {
      t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_BAD_RESPONSE', `${what}: a bad upstream answer`);
      t.notMatch(res.body, /secret/);
    }
    const [line] = await accessLines(gw, '/chat', 1);
    t.match(line, { status: 502, reason: 'upstream_bad_response' }, `${what}: logged as such`);
    server.close();
  }
});

t.test("the app's own refusal of the handshake is relayed: its status, body and headers, through the response rules", async (t) => {
  const server = http.createServer();
  server.on('upgrade', (_req, socket) => {
    const body = '{"error":"login first"}';
    socket.end(
      'HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Bearer realm="app"\r\n' +
        `Server: gunicorn/20.1\r\nX-Powered-By: Flask\r\nSet-Cookie: sid=abc; Path=/\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const gw = await startGateway(t, site(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`));
  const res = await opened(client(gw));
  t.match(res, { open: false, status: 401 }, "the app's 401, not a 101 then 1011");
  if (res.open) return;
  t.equal(res.body, '{"error":"login first"}', 'with its body');
  t.equal(res.headers['www-authenticate'], 'Bearer realm="app"');
  t.notOk(res.headers.server, 'no Server');
  t.notOk(res.headers['x-powered-by'], 'no X-Powered-By');
  t.match(res.headers['set-cookie']?.[0], /Secure/, 'its cookie hardened');
  t.equal(res.headers['x-content-type-options'], 'nosniff', 'the security headers');
  t.equal(res.headers.connection, 'close');
  const [line] = await accessLines(gw, '/chat', 1);
  t.match(line, { status: 401, bytes: 23 });
  t.equal(line?.reason, undefined, "the app's answer, not a gateway error");
});

t.test('early messages: not read while the upstream is dialled, none lost once it answers', async (t) => {
  const up = await wsUpstream(t, { delayMs: 1500, echo: false });
  const gw = await startGateway(t, site(up.origin));
  // A raw client: the handshake and 128 frames of 512 KiB (64 MiB) in one go, before any answer.
  const s = tls.connect({ port: gw.port, host: '127.0.0.1', servername: 'app.test', ca: gw.ca, ALPNProtocols: ['http/1.1'] });
  await new Promise<void>((r) => s.once('secureConnect', () => r()));
  s.on('error', () => undefined);
  const key = randomBytes(16).toString('base64');
  s.write(`GET /chat HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  const size = 512 * 1024;
  let queued = 0;
  const frames: Buffer[] = [];
  for (let i = 0; i < 128; i++) frames.push(wsClientFrame(2, Buffer.alloc(size, i % 256)));
  let i = 0;
  const pump = (): void => {
    while (i < frames.length) {
      queued += frames[i]!.length;
      if (!s.write(frames[i++]!)) return void s.once('drain', pump);
    }
  };
  pump();
  await sleep(1000);
  // What left the client's buffers before the upstream answered: what the kernel holds (loopback
  // socket buffers), not 64 MiB read into the gateway.
  // The client writes on only when its socket drains: with the gateway reading nothing, it
  // stops once the loopback buffers are full.
  t.ok(queued < 24 * 1024 * 1024, `the client could write no more than the kernel's buffers before the 101 (${(queued / 1048576).toFixed(1)} MiB of 64)`);
  t.equal(up.sockets.length, 0, 'the upstream had not answered yet');
  // Then the upstream answers: every message arrives, in order.
  await until(() => up.sockets.length === 1, 20_000);
  const got: number[] = [];
  up.sockets[0]!.on('message', (d: Buffer) => got.push(d.length === size && d.every((b) => b === d[0]) ? d[0]! : -1));
  // 64 MiB through TLS and the relay: seconds when the machine is idle, over 20 s on a loaded CI
  // machine (seen there). The wait ends as soon as everything arrived.
  await until(() => got.length === 128, 120_000);
  t.same(got, frames.map((_, n) => n % 256), 'all 128 messages, whole and in order');
  s.destroy();
});

t.test('backpressure: a client that does not read does not make the gateway buffer what the app sends', async (t) => {
  const up = await wsUpstream(t, { echo: false });
  const gw = await startGateway(t, site(up.origin));
  const ws = client(gw);
  t.same(await opened(ws), { open: true });
  await until(() => up.sockets.length === 1);
  // The client stops reading its socket.
  const raw = (ws as unknown as { _socket: net.Socket })._socket;
  raw.pause();
  ws.pause();
  const app = up.sockets[0]!;
  const size = 256 * 1024;
  const total = 256; // 64 MiB
  let flushed = 0;
  for (let n = 0; n < total; n++) app.send(Buffer.alloc(size, n % 256), { binary: true }, (err) => { if (!err) flushed++; });
  await sleep(1500);
  const held = flushed * size;
  t.ok(held < 24 * 1024 * 1024, `the app could hand off no more than the sockets' buffers and the relay's window (${(held / 1048576).toFixed(1)} MiB of 64)`);
  // The client reads again: everything arrives, in order.
  const got: number[] = [];
  ws.on('message', (d: Buffer) => got.push(d.length === size ? d[0]! : -1));
  ws.resume();
  raw.resume();
  await until(() => got.length === total, 120_000);
  t.same(got, Array.from({ length: total }, (_, n) => n % 256), 'then all 256 messages, in order');
  ws.close(1000);
});

t.test('backpressure: an app that does not read does not make the gateway buffer what the client sends', async (t) => {
  const up = await wsUpstream(t, { echo: false });
  const gw = await startGateway(t, site(up.origin));
  const ws = client(gw);
  t.same(await opened(ws), { open: true });
  await until(() => up.sockets.length === 1);
  const app = up.sockets[0]!;
  const appRaw = (app as unknown as { _socket: net.Socket })._socket;
  app.pause();
  appRaw.pause();
  const size = 256 * 1024;
  const total = 256;
  let flushed = 0;
  for (let n = 0; n < total; n++) ws.send(Buffer.alloc(size, n % 256), { binary: true }, (err) => { if (!err) flushed++; });
  await sleep(1500);
  t.ok(flushed * size < 24 * 1024 * 1024, `the client could hand off no more than the buffers and the window (${((flushed * size) / 1048576).toFixed(1)} MiB of 64)`);
  const got: number[] = [];
  app.on('message', (d: Buffer) => got.push(d.length === size ? d[0]! : -1));
  app.resume();
  appRaw.resume();
  await until(() => got.length === total, 120_000);
  t.same(got, Array.from({ length: total }, (_, n) => n % 256), 'then all of it reaches the app, in order');
  ws.close(1000);
});

t.test("pings and pongs are relayed end to end: the client's ping is answered by the app, not by the gateway", async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const ws = client(gw, '/chat', undefined, { autoPong: false });
  t.same(await opened(ws), { open: true });
  await until(() => up.sockets.length === 1);
  const app = up.sockets[0]!;
  const appPings: string[] = [];
  app.on('ping', (d: Buffer) => appPings.push(String(d)));
  const pongs: string[] = [];
  ws.on('pong', (d: Buffer) => pongs.push(String(d)));
  ws.ping('are you there');
  await until(() => appPings.length === 1);
  t.same(appPings, ['are you there'], 'the app got the ping, payload intact');
  await sleep(200);
  t.same(pongs, [], 'and nobody answered for it (the app does not auto-pong here)');
  app.pong('yes');
  await until(() => pongs.length === 1);
  t.same(pongs, ['yes'], "the app's pong reached the client");
  const clientPings: string[] = [];
  ws.on('ping', (d: Buffer) => clientPings.push(String(d)));
  app.ping('still there?');
  await until(() => clientPings.length === 1);
  t.same(clientPings, ['still there?'], "the app's ping reached the client");
  ws.close(1000);
});

t.test('close codes and reasons are relayed both ways; a vanished peer is 1011 to the client, 1001 to the app', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));

  let ws = client(gw);
  await opened(ws);
  await until(() => up.sockets.length === 1);
  let c = closed(ws);
  up.sockets[0]!.close(4001, 'session expired');
  t.same(await c, { code: 4001, reason: 'session expired' }, "the app's code and reason reach the client");

  ws = client(gw);
  await opened(ws);
  await until(() => up.sockets.length === 2);
  c = closed(up.sockets[1]!);
  ws.close(1000, 'bye');
  t.same(await c, { code: 1000, reason: 'bye' }, "the client's code and reason reach the app");

  ws = client(gw);
  await opened(ws);
  await until(() => up.sockets.length === 3);
  c = closed(ws);
  (up.sockets[2] as unknown as { _socket: net.Socket })._socket.destroy();
  t.match(await c, { code: 1011 }, 'an app whose connection dropped: 1011 for the client');

  ws = client(gw);
  await opened(ws);
  await until(() => up.sockets.length === 4);
  c = closed(up.sockets[3]!);
  (ws as unknown as { _socket: net.Socket })._socket.destroy();
  t.match(await c, { code: 1001 }, 'a client whose connection dropped: 1001 (going away) for the app');

  ws = client(gw);
  await opened(ws);
  await until(() => up.sockets.length === 5);
  c = closed(ws);
  up.sockets[4]!.close();
  t.match(await c, { code: 1005 }, 'a close without a status stays one');
});

t.test('the WebSocket goes to the upstream with the request-target an HTTP request gets', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const targets = ['/chat/a%41b?x=%zz&y=1', '/chat/%7Euser/./x/../y?q=%C3%BC', "/chat/it;v=1?a=b|c&d=%7e", '/chat/%2e%2E/z?%2e'];
  for (const target of targets) {
    const ws = client(gw, target);
    t.same(await opened(ws), { open: true }, `${target}: opened`);
    ws.close(1000);
    t.equal((await gw.request({ path: target, host: 'app.test' })).status, 200, `${target}: HTTP 200`);
  }
  t.equal(up.urls.length, targets.length);
  t.same(up.urls, up.httpUrls, 'each WebSocket request-target is the one the HTTP request got');
});

t.test('shutdown: both sides of every session are told 1001 (going away)', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const ws = client(gw);
  await opened(ws);
  await until(() => up.sockets.length === 1);
  const c = closed(ws);
  const a = closed(up.sockets[0]!);
  await gw.gw.close(2000);
  t.match(await c, { code: 1001 }, 'the client: 1001');
  t.match(await a, { code: 1001 }, 'the app: 1001');
});

t.test('a client message over the limit: 1009 for the client, 1001 for the app, and the line says why', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin).replace('sites:', 'limits: { max_body_size: 1mb }\nsites:'));
  const ws = client(gw, '/big');
  t.same(await opened(ws), { open: true });
  await until(() => up.sockets.length === 1);
  const appClosed = closed(up.sockets[0]!);
  const c = closed(ws);
  ws.send(Buffer.alloc(1024 * 1024 + 1));
  t.match(await c, { code: 1009 }, 'the client: 1009 (message too big)');
  t.match(await appClosed, { code: 1001 }, 'the app: 1001 (the client is going away)');
  const [line] = await accessLines(gw, '/big', 1);
  t.match(line, { status: 101, reason: 'websocket_message_too_large', upstream: up.origin });
});

t.test('a session ended normally has a 101 line without a reason', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const ws = client(gw, '/fine');
  t.same(await opened(ws), { open: true });
  const c = closed(ws);
  ws.close(1000);
  await c;
  const [line] = await accessLines(gw, '/fine', 1);
  t.match(line, { status: 101, upstream: up.origin });
  t.equal(line?.reason, undefined);
});

t.test('shutdown: a session whose app answers after the gateway began to close is ended at once (1001), not left to the grace period', async (t) => {
  const up = await wsUpstream(t, { delayMs: 600 });
  const gw = await startGateway(t, site(up.origin));
  const ws = client(gw);
  ws.on('error', () => undefined);
  const c = closed(ws);
  await until(() => up.offers.length === 1);
  const started = Date.now();
  const closing = gw.gw.close(10_000);
  t.match(await c, { code: 1001 }, 'the client is told the gateway is going away');
  await closing;
  t.ok(Date.now() - started < 5000, `the gateway closed without waiting out its grace period (${Date.now() - started} ms)`);
});
