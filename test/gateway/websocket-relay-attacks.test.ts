// Attacks on the WebSocket proxy that dials the app before it answers the client
// (src/proxy/websocket.ts, src/proxy/websocket-dial.ts; in src/gateway.ts proxyWebSocket,
// refuseWebSocket, relayRefusal, logWebSocketAtClose), against real `ws` apps, raw TCP apps that
// misbehave on purpose and raw TLS clients through a real gateway:
// - the app's refusal relayed to the client: odd statuses, interim answers, hop-by-hop headers,
//   bodies cut, stalled or never read, a client that already sent frames;
// - what the app's handshake carries: forged forwarding headers, the client's Sec-WebSocket-*,
//   a Content-Length for a body the gateway never sends;
// - subprotocols: repeated lines, case, long offers;
// - close frames the app or the client may not send; the app's own close reasons;
// - backpressure against floods of empty frames;
// - the access line and portcullis_upstream_errors_total for each way a handshake fails.
// Six of these found defects when written (each fixed in the commit that added this file).
import t from 'tap';
import net from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import { randomBytes } from 'node:crypto';
import { WebSocket, WebSocketServer } from 'ws';
import { rawApp, sleep, startGateway, until, type LogRecord, type RunningGateway, type Tap } from '../helpers/gateway.js';
import { gc } from '../helpers/memory.js';
import { appSite as site, parseResponses, tlsClient, wsAccept, wsClientFrame as clientFrame, type TlsClient } from '../helpers/clients.js';

const keyOf = (head: string): string => /\r\nsec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? '';
const switching = (head: string, extra = ''): string =>
  `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${wsAccept(keyOf(head))}\r\n${extra}\r\n`;

/** A client handshake for app.test (`extra`: more header lines, each ending in CRLF). */
function handshake(path: string, extra = '', key = randomBytes(16).toString('base64')): string {
  return `GET ${path} HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;
}

/** A frame as a server sends it (unmasked, payload < 126 bytes). */
const serverFrame = (opcode: number, payload: Buffer = Buffer.alloc(0)): Buffer => Buffer.concat([Buffer.from([0x80 | opcode, payload.length]), payload]);
const closePayload = (code: number, reason: Buffer | string = ''): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(code);
  return Buffer.concat([b, Buffer.isBuffer(reason) ? reason : Buffer.from(reason)]);
};

/** The frames a server sent (unmasked), from the bytes after the 101's head. */
function serverFrames(bytes: Buffer): Array<{ opcode: number; payload: Buffer }> {
  const out: Array<{ opcode: number; payload: Buffer }> = [];
  let i = 0;
  while (i + 2 <= bytes.length) {
    let len = bytes[i + 1]! & 0x7f;
    let at = i + 2;
    if (len === 126) {
      len = bytes.readUInt16BE(at);
      at += 2;
    } else if (len === 127) {
      len = Number(bytes.readBigUInt64BE(at));
      at += 8;
    }
    if (at + len > bytes.length) break;
    out.push({ opcode: bytes[i]! & 0x0f, payload: bytes.subarray(at, at + len) });
    i = at + len;
  }
  return out;
}

/** What the gateway sent after its 101's head, on a raw client. */
function afterHead(c: TlsClient): Buffer {
  const text = c.text();
  const end = text.indexOf('\r\n\r\n');
  return end === -1 ? Buffer.alloc(0) : Buffer.from(text.slice(end + 4), 'latin1');
}

async function accessLines(gw: RunningGateway, path: string, n = 1, ms = 5000): Promise<LogRecord[]> {
  const find = (): LogRecord[] => gw.logs.filter((l) => l.type === 'access' && l.path === path);
  await until(() => find().length >= n, ms);
  return find();
}

/** portcullis_upstream_errors_total for `origin`, by reason. */
async function upstreamErrors(gw: RunningGateway, origin: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const l of (await gw.gw.metrics.exposition()).body.split('\n')) {
    if (!l.startsWith('portcullis_upstream_errors_total{') || !l.includes(`"${origin}"`)) continue;
    out[/reason="([^"]+)"/.exec(l)?.[1] ?? '?'] = Number(l.trim().split(' ').at(-1));
  }
  return out;
}

/** A real `ws` app; `onConnection` for each session, the handshakes' headers recorded. */
async function wsApp(t: Tap, options: ConstructorParameters<typeof WebSocketServer>[0] = {}, onConnection?: (ws: WebSocket) => void): Promise<{ origin: string; sessions: WebSocket[]; headers: IncomingHttpHeaders[] }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...options });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const app = { origin: `http://127.0.0.1:${(wss.address() as net.AddressInfo).port}`, sessions: [] as WebSocket[], headers: [] as IncomingHttpHeaders[] };
  wss.on('connection', (ws, req) => {
    app.sessions.push(ws);
    app.headers.push(req.headers);
    ws.on('error', () => undefined);
    if (onConnection) onConnection(ws);
    else ws.on('message', (data, binary) => ws.send(data as Buffer, { binary }));
  });
  t.teardown(() => new Promise<void>((r) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => r());
  }));
  return app;
}

/** A `ws` client through the gateway; resolves once open, or with the HTTP answer it got instead. */
function wsClient(t: Tap, gw: RunningGateway, path: string, protocols: string[] = [], headers: Record<string, string> = {}): Promise<{ ws: WebSocket; status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${gw.port}${path}`, protocols, { ca: gw.ca, servername: 'app.test', headers: { host: 'app.test', ...headers } } as object);
    t.teardown(() => ws.terminate());
    ws.once('upgrade', (res) => ws.once('open', () => resolve({ ws, status: 101, headers: res.headers, body: '' })));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString('latin1')));
      res.on('end', () => resolve({ ws, status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', () => resolve({ ws, status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    ws.once('error', reject);
  });
}

const closed = (ws: WebSocket): Promise<{ code: number; reason: string }> =>
  new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));

// ---------------------------------------------------------------------------------------------
// 1. The app's refusal

t.test("an app answering the handshake with a status over 599 gets the client the gateway's 502, none of its headers, as on the HTTP path", async (t) => {
  const app = await rawApp(t, (s) => s.end('HTTP/1.1 999 Weird\r\nSet-Cookie: sid=upstream\r\nX-Internal-Trace: db-primary-7\r\nContent-Length: 2\r\n\r\nok'));
  const gw = await startGateway(t, site(app.origin));
  // Control: the same answer to a plain request is the gateway's 502 (README, "Respond").
  t.equal((await gw.request({ path: '/http' })).status, 502, 'control: HTTP path');
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/w999'));
  await c.closedWithin(3000);
  const [res] = parseResponses(c.text(), ['GET']);
  t.equal(res?.status, 502, `the handshake gets 502 (got ${res?.status})`);
  t.match(res?.body, /GW_ERR_UPSTREAM_BAD_RESPONSE/);
  t.notOk(res?.headers['set-cookie'], 'no upstream Set-Cookie');
  t.notOk(res?.headers['x-internal-trace'], 'no upstream internals');
  const [line] = await accessLines(gw, '/w999');
  t.match(line, { status: 502, reason: 'upstream_bad_response' });
  t.same(await upstreamErrors(gw, app.origin), { bad_response: 2 }, 'counted as a bad upstream answer, as the HTTP one');
});

t.test('interim answers: 100 then 403 is relayed as the 403; 103 then 101 opens; 1xx trickled every 300 ms do not extend timeouts.response (504)', async (t) => {
  const app = await rawApp(t, (s, head) => {
    const path = head.split(' ')[1];
    if (path === '/refuse') s.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope');
    else if (path === '/hints') s.write(`HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n${switching(head)}`);
    else {
      const timer = setInterval(() => (s.destroyed ? clearInterval(timer) : s.write('HTTP/1.1 102 Processing\r\n\r\n')), 300);
    }
  });
  const gw = await startGateway(t, site(app.origin, '[{ path: /, access: public, timeouts: { response: 1s } }]'));
  const refused = await wsClient(t, gw, '/refuse');
  t.match(refused, { status: 403, body: 'nope' }, "the app's final answer, not its 100");
  const hinted = await wsClient(t, gw, '/hints');
  t.equal(hinted.status, 101, 'a 103 before the 101 does not break the handshake');
  hinted.ws.terminate();
  const started = Date.now();
  const trickled = await wsClient(t, gw, '/trickle');
  const elapsed = Date.now() - started;
  t.equal(trickled.status, 504, 'interim answers are not an answer');
  t.ok(elapsed < 2500, `at the deadline (${elapsed} ms)`);
  const [line] = await accessLines(gw, '/trickle');
  t.match(line, { status: 504, reason: 'upstream_response_timeout' });
});

t.test("a refusal's hop-by-hop headers never reach the client: no Upgrade, no 'Connection: upgrade', nothing its Connection names; a chunked body arrives whole and the connection closes", async (t) => {
  const app = await rawApp(t, (s) => {
    s.write(
      'HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop-Secret\r\nX-Hop-Secret: internal\r\nKeep-Alive: timeout=5\r\n' +
        'Sec-WebSocket-Version: 13\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
    );
  });
  const gw = await startGateway(t, site(app.origin));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/hop'));
  t.ok(await c.closedWithin(3000), 'the gateway closes the connection after the refusal');
  const [res] = parseResponses(c.text(), ['GET']);
  t.equal(res?.status, 426);
  t.equal(res?.body, 'hello world', 'the body, whole');
  t.ok(res?.complete, 'and complete');
  t.notOk(res?.headers.upgrade, 'no Upgrade header: the client is not told to switch');
  t.equal(res?.headers.connection, 'close');
  t.notOk(res?.headers['x-hop-secret'], 'a header the app named in Connection is not relayed');
  t.notOk(res?.headers['keep-alive']);
  t.equal(parseResponses(c.text(), ['GET', 'GET']).length, 1, 'one answer on the connection');
});

t.test("a refusal whose body breaks off reaches the client cut, never as complete: chunked then reset, Content-Length then FIN", async (t) => {
  const app = await rawApp(t, (s, head) => {
    if (head.startsWith('GET /chunked')) {
      s.write('HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n', () => setTimeout(() => s.resetAndDestroy(), 100));
    } else {
      s.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nonly ten b', () => setTimeout(() => s.end(), 100));
    }
  });
  const gw = await startGateway(t, site(app.origin));
  for (const path of ['/chunked', '/short']) {
    const c = await tlsClient(t, gw);
    c.socket.write(handshake(path));
    t.ok(await c.closedWithin(3000), `${path}: the connection is cut`);
    const [res] = parseResponses(c.text(), ['GET']);
    t.equal(res?.status, 403, `${path}: the app's status was sent`);
    t.equal(res?.complete, false, `${path}: the body is visibly incomplete (got ${JSON.stringify(res?.body)})`);
    const [line] = await accessLines(gw, path);
    t.match(line, { status: 403, reason: 'upstream_reset' }, `${path}: logged as the app's failure`);
  }
});

t.test('an app whose handshake fails after it connected (reset, a malformed answer, a refusal cut mid-body) is counted in portcullis_upstream_errors_total, as for HTTP', async (t) => {
  const app = await rawApp(t, (s, head) => {
    const path = head.split(' ')[1];
    if (path === '/reset') s.resetAndDestroy();
    else if (path === '/garbage') s.end('HTTP/1.1 abc\r\n\r\n');
    else if (path === '/cut') s.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\npartial', () => setTimeout(() => s.resetAndDestroy(), 100));
    else if (path === '/bad101') s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n');
    // '/mute': never answers
  });
  const gw = await startGateway(t, site(app.origin, '[{ path: /, access: public, timeouts: { response: 500ms } }]'));
  // Controls, which hold: a timeout and a broken 101 are counted.
  const expected: Array<[string, number, string, string]> = [
    ['/mute', 504, 'upstream_response_timeout', 'response_timeout'],
    ['/bad101', 502, 'upstream_bad_response', 'bad_response'],
    ['/reset', 502, 'upstream_reset', 'reset'],
    ['/garbage', 502, 'upstream_bad_response', 'bad_response'],
    ['/cut', 403, 'upstream_reset', 'reset'],
  ];
  const counted: Record<string, number> = {};
  for (const [path, status, reason, kind] of expected) {
    const c = await tlsClient(t, gw);
    c.socket.write(handshake(path));
    await c.closedWithin(3000);
    t.equal(parseResponses(c.text(), ['GET'])[0]?.status, status, `${path}: ${status}`);
    const [line] = await accessLines(gw, path);
    t.match(line, { status, reason }, `${path}: the line says ${reason}`);
    counted[kind] = (counted[kind] ?? 0) + 1;
    t.same(await upstreamErrors(gw, app.origin), counted, `${path}: counted as ${kind}`);
  }
});

t.test("a client that does not read the app's refusal is cut at timeouts.response and logged client_stalled, not as the app's timeout", async (t) => {
  const MB = 1024 * 1024;
  const app = await rawApp(t, (s) => {
    s.write(`HTTP/1.1 403 Forbidden\r\nContent-Type: application/octet-stream\r\nContent-Length: ${32 * MB}\r\n\r\n`);
    const chunk = Buffer.alloc(MB, 0x61);
    let sent = 0;
    const pump = (): void => {
      while (sent < 32 && !s.destroyed) {
        sent++;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
    };
    pump();
  });
  const gw = await startGateway(t, site(app.origin, '[{ path: /, access: public, timeouts: { response: 1s } }]'));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/unread'));
  await until(() => c.text().length > 0);
  c.socket.pause();
  const started = Date.now();
  const [line] = await accessLines(gw, '/unread', 1, 6000);
  t.ok(Date.now() - started < 5000, 'the refusal is cut, the client does not hold it forever');
  t.ok(await until(() => app.closed() === 1, 2000), 'the app connection is closed');
  t.match(line, { status: 403, reason: 'client_stalled' }, `the client stalled, not the app (line says ${String(line?.reason)})`);
  t.same(await upstreamErrors(gw, app.origin), {}, 'and the app is not counted as failing');
});

t.test('a refusal reaches a client that already sent frames (no reset instead of the answer), and the app never sees those frames', async (t) => {
  const app = await rawApp(t, (s) => setTimeout(() => s.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden'), 300));
  const gw = await startGateway(t, site(app.origin));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/early'));
  await sleep(50);
  c.socket.write(clientFrame(2, Buffer.from('GET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n'.repeat(400))));
  t.ok(await c.closedWithin(3000));
  const [res] = parseResponses(c.text(), ['GET']);
  t.match(res, { status: 403, body: 'forbidden', complete: true });
  t.equal(app.after[0]?.length, 0, 'nothing the client sent after its handshake reached the app');
});

t.test('a client that leaves during a trickled refusal: the app connection is closed at once, the line says 499-like client_closed with the status sent', async (t) => {
  const app = await rawApp(t, (s) => {
    s.write('HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n');
    const timer = setInterval(() => (s.destroyed ? clearInterval(timer) : s.write('1\r\nx\r\n')), 100);
  });
  const gw = await startGateway(t, site(app.origin));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/leave'));
  await until(() => c.text().includes('\r\n\r\n'));
  await sleep(300);
  c.socket.destroy();
  t.ok(await until(() => app.closed() === 1, 2000), 'the app connection is closed');
  const [line] = await accessLines(gw, '/leave');
  t.match(line, { status: 403, reason: 'client_closed' });
});

t.test('shutdown while a refusal trickles and while a handshake waits on a mute app: the gateway closes within its grace, every app connection is closed, each line written', async (t) => {
  const app = await rawApp(t, (s, head) => {
    if (!head.startsWith('GET /trickle')) return;
    s.write('HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n');
    const timer = setInterval(() => (s.destroyed ? clearInterval(timer) : s.write('1\r\nx\r\n')), 100);
  });
  const gw = await startGateway(t, site(app.origin));
  const trickle = await tlsClient(t, gw);
  trickle.socket.write(handshake('/trickle'));
  const mute = await tlsClient(t, gw);
  mute.socket.write(handshake('/mute'));
  await until(() => app.heads.length === 2 && trickle.text().includes('\r\n\r\n'));
  const started = Date.now();
  await gw.gw.close(1500);
  const took = Date.now() - started;
  t.ok(took < 4000, `closed within the grace period (${took} ms)`);
  t.ok(await until(() => app.closed() === 2, 2000), `both app connections closed (${app.closed()})`);
  t.ok(await trickle.closedWithin(1000) && await mute.closedWithin(1000), 'both clients disconnected');
  t.equal(parseResponses(trickle.text(), ['GET'])[0]?.complete, false, 'the refusal cut short is not passed off as complete');
  t.match((await accessLines(gw, '/trickle'))[0], { status: 403 });
  const [muteLine] = await accessLines(gw, '/mute');
  t.ok(muteLine !== undefined && muteLine.status !== 101, `the waiting handshake has its line, not a session's (${String(muteLine?.status)})`);
});

// ---------------------------------------------------------------------------------------------
// 2. What the app's handshake carries

t.test("the app's handshake: the gateway's X-Forwarded-*, X-Request-Id and key; none of the client's forged identity, forwarding, override or Sec-WebSocket-* headers", async (t) => {
  const app = await wsApp(t);
  const gw = await startGateway(t, site(app.origin));
  const key = randomBytes(16).toString('base64');
  const c = await tlsClient(t, gw);
  c.socket.write(
    handshake(
      '/fwd',
      'X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: admin.internal\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 1\r\nForwarded: for=10.0.0.1\r\n' +
        'X-Request-Id: forged-id\r\nX-Auth-User: admin\r\nX_Auth_Roles: admin\r\nX-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin\r\n' +
        'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nSec-WebSocket-Accept: forged\r\nSec-WebSocket-Whatever: 1\r\n' +
        'Connection: X-Forwarded-For\r\n',
      key,
    ),
  );
  await until(() => c.text().includes('\r\n\r\n'));
  t.match(c.text(), new RegExp(`^HTTP/1\\.1 101 [^]*\\r\\nSec-WebSocket-Accept: ${wsAccept(key).replace(/[+/=]/g, '\\$&')}\\r\\n`, 'i'), "the client's 101 answers its own key");
  t.notMatch(c.text(), /sec-websocket-extensions/i, 'and negotiates no extension');
  await until(() => app.headers.length === 1);
  const h = app.headers[0]!;
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For: the peer only');
  t.equal(h['x-forwarded-host'], 'app.test');
  t.equal(h['x-forwarded-proto'], 'https');
  t.equal(h['x-forwarded-port'], String(gw.port));
  t.notOk(h.forwarded, 'no client Forwarded');
  t.match(h['x-request-id'], /^[0-9a-f-]{36}$/, "the gateway's request id");
  t.notOk(h['x-auth-user'], 'no client identity header');
  t.notOk(h.x_auth_roles, 'nor its underscore spelling');
  t.notOk(h['x-http-method-override']);
  t.notOk(h['x-original-url']);
  t.notOk(h['sec-websocket-extensions'], "no client extension offer (the gateway's hop negotiates none)");
  t.notOk(h['sec-websocket-accept']);
  t.notOk(h['sec-websocket-whatever']);
  t.not(h['sec-websocket-key'], key, "the gateway's own key, not the client's");
  t.equal(h['sec-websocket-version'], '13');
  t.equal(h.connection, 'Upgrade');
  t.equal(h.upgrade, 'websocket');
});

t.test('a handshake sent with Content-Length does not reach the app announcing a body the gateway never sends (the app waits for it: 504 instead of a session)', async (t) => {
  // An RFC 9112 server reads the announced body before it answers.
  const app = await rawApp(t, (s, head) => {
    const len = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
    const answer = (): void => void s.write(switching(head));
    if (len === 0) return answer();
    const n = app.heads.length - 1;
    const check = (): void => {
      if (app.after[n]!.length >= len) answer();
      else if (!s.destroyed) setTimeout(check, 20);
    };
    check();
  });
  const gw = await startGateway(t, site(app.origin, '[{ path: /, access: public, timeouts: { response: 1s } }]'));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/cl', 'Content-Length: 5\r\n'));
  await until(() => c.text().includes('\r\n\r\n'), 3000);
  t.match(c.text(), /^HTTP\/1\.1 101 /, `the session opens (got ${JSON.stringify(c.text().split('\r\n')[0])})`);
  t.notMatch(app.heads[0] ?? '', /\r\ncontent-length:/i, 'the app is not told of a body (as a GET on the HTTP path is not)');
});

// ---------------------------------------------------------------------------------------------
// 3. Subprotocols

t.test("subprotocols: 30 offered over two header lines all reach the app in order; an answer naming two, or the offer in another case, is a 502", async (t) => {
  const names = Array.from({ length: 30 }, (_, i) => `proto.v${i}`);
  const app = await rawApp(t, (s, head) => {
    const path = head.split(' ')[1];
    if (path === '/last') s.write(switching(head, 'Sec-WebSocket-Protocol: proto.v29\r\n'));
    else if (path === '/two') s.write(switching(head, 'Sec-WebSocket-Protocol: proto.v0\r\nSec-WebSocket-Protocol: proto.v1\r\n'));
    else s.write(switching(head, 'Sec-WebSocket-Protocol: PROTO.V0\r\n'));
  });
  const gw = await startGateway(t, site(app.origin));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/last', `Sec-WebSocket-Protocol: ${names.slice(0, 15).join(', ')}\r\nSec-WebSocket-Protocol: ${names.slice(15).join(',')}\r\n`));
  await until(() => c.text().includes('\r\n\r\n'));
  t.match(c.text(), /^HTTP\/1\.1 101 [^]*\r\nSec-WebSocket-Protocol: proto\.v29\r\n/i, "the client gets the app's choice, the 30th");
  const offered = /\r\nsec-websocket-protocol:\s*([^\r]*)\r\n/i.exec(app.heads[0] ?? '')?.[1];
  t.same(offered?.split(/,\s*/), names, 'the app was offered all 30, in order, on one line');
  for (const [path, what] of [['/two', 'two Sec-WebSocket-Protocol lines'], ['/case', 'the offer in another case']] as const) {
    const r = await wsClient(t, gw, path, ['proto.v0', 'proto.v1']);
    t.equal(r.status, 502, `${what}: 502`);
    const [line] = await accessLines(gw, path);
    t.match(line, { status: 502, reason: 'upstream_bad_response' }, `${what}: logged as a bad answer`);
  }
});

// ---------------------------------------------------------------------------------------------
// 4. Close frames

t.test("close frames the app may not send (999, 1004, 1005, 1006, 1015, 2999, 5000, invalid UTF-8 reason, 1-byte payload) get the client a 1011 and the line upstream_bad_response; valid codes and a 123-byte reason pass as they are", async (t) => {
  const cases: Array<[string, Buffer, number, string | null]> = [];
  for (const code of [999, 1004, 1005, 1006, 1015, 2999, 5000]) cases.push([`code ${code}`, closePayload(code), 1011, null]);
  cases.push(['a reason that is not UTF-8', closePayload(1000, Buffer.from([0xc3, 0x28])), 1011, null]);
  cases.push(['a 1-byte close payload', Buffer.from([0x03]), 1011, null]);
  for (const code of [1000, 1003, 1007, 1008, 1012, 1013, 1014, 3000, 4999]) cases.push([`code ${code}`, closePayload(code, 'r'), code, 'r']);
  cases.push(['a 123-byte reason', closePayload(4000, 'é'.repeat(61) + 'x'), 4000, 'é'.repeat(61) + 'x']);
  const app = await rawApp(t, (s, head) => {
    const i = Number(head.split(' ')[1]!.slice(1));
    s.write(Buffer.concat([Buffer.from(switching(head), 'latin1'), serverFrame(8, cases[i]![1])]));
  });
  const gw = await startGateway(t, site(app.origin));
  for (const [i, [what, , code, reason]] of cases.entries()) {
    const { ws } = await wsClient(t, gw, `/${i}`);
    const got = await closed(ws);
    t.equal(got.code, code, `${what}: the client gets ${code}`);
    if (reason !== null) t.equal(got.reason, reason, `${what}: with the reason`);
    const [line] = await accessLines(gw, `/${i}`);
    if (reason === null) t.match(line, { status: 101, reason: 'upstream_bad_response' }, `${what}: the line says the app broke the protocol`);
    else t.equal(line?.reason, undefined, `${what}: an ordinary end`);
  }
});

t.test("the app's own 1011 reaches the client with its reason (close reasons are relayed)", async (t) => {
  const app = await wsApp(t, {}, (ws) => ws.close(1011, 'database unavailable'));
  const gw = await startGateway(t, site(app.origin));
  const { ws } = await wsClient(t, gw, '/err');
  t.same(await closed(ws), { code: 1011, reason: 'database unavailable' });
});

t.test('frames a client may not send (unmasked, reserved opcode, RSV1 without an extension, close code 1005, a 126-byte ping, a fragmented ping, bad UTF-8): 1002/1007 for the client, 1001 for the app, line client_protocol_error', async (t) => {
  const mask0 = (f: Buffer): Buffer => {
    // The same frame unmasked: drop the mask bit and key.
    const len = f[1]! & 0x7f;
    return Buffer.concat([Buffer.from([f[0]!, len]), Buffer.from('hi')]);
  };
  const cases: Array<[string, Buffer, number]> = [
    ['an unmasked frame', mask0(clientFrame(1, Buffer.from('hi'))), 1002],
    ['reserved opcode 3', clientFrame(3, Buffer.from('x')), 1002],
    ['RSV1 set (no compression negotiated)', clientFrame(1, Buffer.from('x'), 0xc0), 1002],
    ['close code 1005 on the wire', clientFrame(8, closePayload(1005)), 1002],
    ['a 126-byte ping', clientFrame(9, Buffer.alloc(126)), 1002],
    ['a fragmented ping', clientFrame(9, Buffer.from('x'), 0x00), 1002],
    ['text that is not UTF-8', clientFrame(1, Buffer.from([0xff, 0xfe])), 1007],
  ];
  const app = await wsApp(t, {}, () => undefined);
  const gw = await startGateway(t, site(app.origin));
  for (const [i, [what, frame, code]] of cases.entries()) {
    const c = await tlsClient(t, gw);
    c.socket.write(handshake(`/bad/${i}`));
    await until(() => app.sessions.length === i + 1);
    const appClosed = closed(app.sessions[i]!);
    c.socket.write(frame);
    t.ok(await c.closedWithin(3000), `${what}: the connection is closed`);
    const close = serverFrames(afterHead(c)).find((f) => f.opcode === 8);
    t.equal(close?.payload.readUInt16BE(0), code, `${what}: the client gets ${code}`);
    t.match(await appClosed, { code: 1001 }, `${what}: the app gets 1001`);
    const [line] = await accessLines(gw, `/bad/${i}`);
    t.match(line, { status: 101, reason: 'client_protocol_error' }, `${what}: logged`);
  }
});

// ---------------------------------------------------------------------------------------------
// 5. Backpressure

t.test('a flood of empty frames to an app that does not read: what waits to be written to the app stays within the relay window (256 KiB), memory does not grow with the flood', async (t) => {
  // The app reads its handshake, answers 101, then reads only when told to.
  let app: net.Socket | null = null;
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    let buf = '';
    const onData = (c: Buffer): void => {
      buf += c.toString('latin1');
      if (!buf.includes('\r\n\r\n')) return;
      s.removeListener('data', onData);
      s.pause();
      s.write(switching(buf));
      app = s;
    };
    s.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    app?.destroy();
    server.close(() => r());
  }));
  const gw = await startGateway(t, site(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/flood'));
  await until(() => c.text().includes('\r\n\r\n') && app !== null);
  const appSocket = app as unknown as net.Socket;
  // The gateway's end of the app connection (the gateway runs in this process): what waits in it
  // to be written to the app.
  const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
  const toApp = handles.find((h): h is net.Socket => h instanceof net.Socket && h.localPort === appSocket.remotePort && h.remotePort === appSocket.localPort);
  if (!toApp) return void t.fail("the gateway's socket to the app was not found");
  // 1. 16 MiB of 64 KiB messages: the loopback buffers fill, the relay window fills, and the
  //    gateway stops reading the client (as it should).
  const big = clientFrame(2, Buffer.alloc(64 * 1024, 1));
  for (let i = 0; i < 256; i++) c.socket.write(big);
  // 2. Then 500 000 empty binary messages and pings (3 MB on the wire).
  const empties = Buffer.concat(Array.from({ length: 10_000 }, (_, i) => clientFrame(i % 2 === 0 ? 2 : 9)));
  for (let i = 0; i < 50; i++) c.socket.write(empties);
  t.ok(await until(() => toApp.writableLength > 0, 3000), 'the window filled: the gateway holds some bytes for the app');
  // 3. The app reads a little at a time, until the gateway has read every big message and moved
  //    on to the empty ones, then stops reading again.
  let maxWaiting = 0;
  // Live memory, not garbage a collection would free: measured after a full collection each time.
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  for (let step = 0, drained = 0; step < 2000 && drained < 256 * (64 * 1024 + 14); step++) {
    for (let chunk = appSocket.read() as Buffer | null; chunk !== null; chunk = appSocket.read() as Buffer | null) drained += chunk.length;
    await sleep(2);
    maxWaiting = Math.max(maxWaiting, toApp.writableLength);
    if (maxWaiting > 1024 * 1024) break;
  }
  await sleep(1500);
  maxWaiting = Math.max(maxWaiting, toApp.writableLength);
  gc();
  const heapGrowth = process.memoryUsage().heapUsed - heapBefore;
  t.ok(maxWaiting <= 512 * 1024, `at most the window (plus one message) waits for the app: ${(maxWaiting / 1024).toFixed(0)} KiB`);
  t.ok(heapGrowth < 48 * 1024 * 1024, `the gateway's memory did not grow with the flood: ${(heapGrowth / 1048576).toFixed(0)} MiB`);
});

t.test('a client that leaves while its session is paused (the app does not read): once the app reads again it gets what was relayed, then 1001, and the line is written', async (t) => {
  const app = await wsApp(t, {}, (ws) => {
    ws.pause();
    (ws as unknown as { _socket: net.Socket })._socket.pause();
  });
  const gw = await startGateway(t, site(app.origin));
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/paused'));
  await until(() => app.sessions.length === 1);
  const big = clientFrame(2, Buffer.alloc(256 * 1024, 7));
  for (let i = 0; i < 64; i++) c.socket.write(big);
  await sleep(500);
  const appWs = app.sessions[0]!;
  const appClosed = closed(appWs);
  let whole = 0;
  let broken = 0;
  appWs.on('message', (d: Buffer) => (d.length === 256 * 1024 && d.every((b) => b === 7) ? whole++ : broken++));
  c.socket.destroy();
  await sleep(300);
  appWs.resume();
  (appWs as unknown as { _socket: net.Socket })._socket.resume();
  t.match(await Promise.race([appClosed, sleep(8000).then(() => null)]), { code: 1001 }, 'the app is told the client went away');
  t.ok(whole >= 1 && whole < 64, `after the messages the gateway had read before it paused (${whole} of 64)`);
  t.equal(broken, 0, 'each of them whole');
  const [line] = await accessLines(gw, '/paused');
  t.match(line, { status: 101, upstream: app.origin }, 'and the line is written');
});
