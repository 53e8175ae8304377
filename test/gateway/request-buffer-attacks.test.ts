// Attack tests on request body buffering (`limits.request_buffer`, src/gateway.ts proxyRequest /
// bufferRequestBody / dispatch, src/proxy/forward.ts, src/server/slowloris.ts): bodies trickled past
// limits.request_timeout while they are being buffered (HTTP/1.1 and HTTP/2), HTTP/2 streams reset
// or mis-framed mid-body, sizes at and around request_buffer and max_body_size (declared and
// chunked), a chunked body that passes max_body_size after it overflowed into streaming, failover
// of buffered and streamed bodies, clients that leave mid-buffer, pipelined uploads, and policy
// refusals of large uploads. The upstream side is checked with upstreams that count connections and
// record what each request carried (and whether it ever completed).
// Two defects when written, both fixed: an HTTP/1.1 body cut by the guard's 408 was logged 499
// client_closed; a body that overflowed request_buffer was no longer counted against the 256 MB
// cap while it waited for an upstream that did not read it.
import t from 'tap';
import http from 'node:http';
import http2 from 'node:http2';
import tls from 'node:tls';
import { createHash, randomBytes } from 'node:crypto';
import { closedPort, rawApp, rawTls, silentServer, sleep, startGateway, startUpstream, statusOf, until, type RunningGateway, type Tap } from '../helpers/gateway.js';
import { held, heldSettled } from '../helpers/memory.js';
import { appSite, h2Frame, h2Request, h2Session, parseResponses, rawH2, statuses, tlsClient } from '../helpers/clients.js';

// ---------------------------------------------------------------------------------------------
// Helpers

interface Fate {
  url: string;
  method: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The request body ended (the request is complete). */
  complete: boolean;
  /** The connection went away before the body ended or the answer was sent. */
  aborted: boolean;
}

/**
 * An upstream that counts connections and records each request as it happens: its headers, the
 * body bytes it got, and whether the body ever ended (startUpstream records complete ones only).
 */
async function recUpstream(t: Tap, respond?: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void): Promise<{ origin: string; fates: Fate[]; connections: () => number }> {
  const fates: Fate[] = [];
  let connections = 0;
  const up = await startUpstream(t);
  up.server.removeAllListeners('request');
  up.server.on('connection', () => connections++);
  up.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const fate: Fate = { url: req.url!, method: req.method!, headers: req.headers, body: Buffer.alloc(0), complete: false, aborted: false };
    fates.push(fate);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      chunks.push(c);
      fate.body = Buffer.concat(chunks);
    });
    req.on('end', () => {
      fate.complete = true;
      if (respond) respond(req, res, fate.body);
      else res.writeHead(200, { 'content-type': 'text/plain' }).end(`${fate.body.length} ${sha(fate.body)}`);
    });
    req.on('error', () => undefined);
    res.on('close', () => {
      if (!res.writableFinished) fate.aborted = true;
    });
  });
  return { origin: up.origin, fates, connections: () => connections };
}

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

const accessLines = (gw: RunningGateway, path: string): Array<Record<string, unknown>> => gw.logs.filter((l) => l.type === 'access' && l.path === path);

const chunk = (s: string | Buffer): string => `${Buffer.byteLength(s).toString(16)}\r\n${s.toString()}\r\n`;

/** request_buffer 1kb; /small allows 4kb, everything else 64kb. */
const BUFFERED = (origin: string | string[], extra = ''): string =>
  appSite(origin, '[{ id: small, path: /small, access: public, max_body_size: 4kb }, { id: all, path: /, access: public, max_body_size: 64kb }]', `limits: { request_buffer: 1kb${extra} }\n`);

// Raw HTTP/2 (for frames node:http2's client will not send: a DATA length that contradicts
// content-length, an END_STREAM where the client's own library would refuse it).
const T = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, GOAWAY: 7 } as const;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;

/** HPACK literal field without indexing, new name, no Huffman (names and values under 127 bytes). */
function lit(name: string, value: string): Buffer {
  const n = Buffer.from(name, 'latin1');
  const v = Buffer.from(value, 'latin1');
  return Buffer.concat([Buffer.from([0x00, n.length]), n, Buffer.from([v.length]), v]);
}

function block(method: string, path: string, extra: Array<[string, string]> = []): Buffer {
  return Buffer.concat([lit(':method', method), lit(':scheme', 'https'), lit(':authority', 'app.test'), lit(':path', path), ...extra.map(([n, v]) => lit(n, v))]);
}

// =============================================================================================
// 1. Bodies trickled past limits.request_timeout while being buffered

t.test('HTTP/1.1: a body trickled past limits.request_timeout while it is buffered: 408, nothing dialled, and the access line says 408 (it said 499 client_closed) (Content-Length and chunked)', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, '[{ path: /, access: public }]', 'limits: { request_timeout: 1s }\ntimeouts: { idle: 10s }\n'));
  for (const framing of ['content-length', 'chunked'] as const) {
    const path = `/trickle-${framing}`;
    const c = await tlsClient(t, gw);
    c.socket.write(
      framing === 'content-length'
        ? `POST ${path} HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n`
        : `POST ${path} HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`,
    );
    void (async () => {
      for (let i = 0; i < 30 && !c.isClosed(); i++) {
        c.socket.write(framing === 'content-length' ? 'x' : '1\r\nx\r\n');
        await sleep(150);
      }
    })();
    t.ok(await c.closedWithin(5000), `${framing}: the gateway closed the connection`);
    t.equal(statusOf(c.text()), 408, `${framing}: the client got 408 Request Timeout`);
    t.equal(up.connections(), 0, `${framing}: the upstream was never dialled`);
    await until(() => accessLines(gw, path).length > 0);
    const lines = accessLines(gw, path);
    t.equal(lines.length, 1, `${framing}: one access line`);
    t.match(lines[0], { status: 408, reason: 'GW_ERR_REQUEST_TIMEOUT' }, `${framing}: the line says what the client got (${JSON.stringify({ status: lines[0]?.status, reason: lines[0]?.reason })})`);
  }
});

t.test('HTTP/2: a body trickled past limits.request_timeout while it is buffered: 408, the stream is reset, the upstream is never dialled, one access line 408', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, '[{ path: /, access: public }]', 'limits: { request_timeout: 1s }\ntimeouts: { idle: 10s }\n'));
  const session = h2Session(t, gw);
  const st = session.request({ ':authority': 'app.test', ':path': '/h2-trickle', ':method': 'POST', 'content-type': 'application/octet-stream' }, { endStream: false });
  st.on('error', () => undefined);
  let status = 0;
  let closed = false;
  st.on('response', (h) => (status = Number(h[':status'])));
  st.on('close', () => (closed = true));
  st.resume();
  for (let i = 0; i < 25 && !closed; i++) {
    st.write('z');
    await sleep(150);
  }
  t.equal(status, 408, 'the client got 408');
  t.ok(closed, `the stream was closed (rstCode ${st.rstCode})`);
  t.equal(up.connections(), 0, 'the upstream was never dialled');
  await until(() => accessLines(gw, '/h2-trickle').length > 0);
  t.equal(accessLines(gw, '/h2-trickle').length, 1, 'one access line');
  t.match(accessLines(gw, '/h2-trickle')[0], { status: 408, reason: 'GW_ERR_REQUEST_TIMEOUT' });
  const next = await h2Request(session, { ':path': '/after' });
  t.equal(next.status, 200, 'the session serves on');
});

t.test('HTTP/1.1: a body past request_buffer (already streaming) trickled past limits.request_timeout: 408, the upstream request aborted short, and the line says 408 (it said 499 client_closed)', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, '[{ path: /, access: public }]', 'limits: { request_timeout: 1500ms, request_buffer: 1kb }\ntimeouts: { idle: 10s, response: 10s }\n'));
  const c = await tlsClient(t, gw);
  c.socket.write(`POST /stream-trickle HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 5000\r\n\r\n${'a'.repeat(2000)}`);
  t.ok(await until(() => up.fates.some((f) => f.url === '/stream-trickle')), 'streaming started upstream');
  void (async () => {
    for (let i = 0; i < 40 && !c.isClosed(); i++) {
      c.socket.write('b');
      await sleep(100);
    }
  })();
  t.ok(await c.closedWithin(5000), 'the gateway closed the connection');
  t.equal(statusOf(c.text()), 408, 'the client got 408');
  const fate = up.fates.find((f) => f.url === '/stream-trickle');
  t.ok(await until(() => fate?.aborted === true), 'the upstream request was aborted');
  t.notOk(fate?.complete, 'never complete upstream');
  await until(() => accessLines(gw, '/stream-trickle').length > 0);
  t.match(accessLines(gw, '/stream-trickle')[0], { status: 408, reason: 'GW_ERR_REQUEST_TIMEOUT' }, `the line says 408 (${JSON.stringify(accessLines(gw, '/stream-trickle')[0]?.status)} ${JSON.stringify(accessLines(gw, '/stream-trickle')[0]?.reason)})`);
  t.notOk(gw.logs.some((l) => l.msg === 'upstream request failed'), 'no upstream failure is logged for a late client');
});

// =============================================================================================
// 2. HTTP/2 streams that end wrong while their body is buffered

t.test('HTTP/2: RST_STREAM mid-body (no END_STREAM) while buffering or after the overflow into streaming: the upstream never gets a complete request, even with an idle pooled connection; 499 lines; the session serves on', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, BUFFERED(up.origin));
  // An idle keep-alive connection in the pool: a request dispatched by mistake would go out at once.
  t.equal((await gw.request({ path: '/warm' })).status, 200);
  const c = await rawH2(t, gw);
  const cases: Array<[number, string, number, Array<[string, string]>]> = [
    [1, '/rst-buffered', 500, []],
    [3, '/rst-buffered-declared', 500, [['content-length', '900']]],
    [5, '/rst-streaming', 3000, []],
    [7, '/rst-streaming-declared', 3000, [['content-length', '9000']]],
  ];
  for (const [id, path, n, extra] of cases) {
    c.send(h2Frame(T.HEADERS, END_HEADERS, id, block('POST', path, [['content-type', 'application/octet-stream'], ...extra])), h2Frame(T.DATA, 0, id, Buffer.alloc(n, 0x61)));
    await sleep(150);
    const cancel = Buffer.alloc(4);
    cancel.writeUInt32BE(http2.constants.NGHTTP2_CANCEL);
    c.send(h2Frame(T.RST_STREAM, 0, id, cancel));
    await until(() => accessLines(gw, path).length > 0);
    t.match(accessLines(gw, path)[0], { status: 499, reason: 'client_closed' }, `${path}: 499 client_closed`);
  }
  await sleep(300);
  const complete = up.fates.filter((f) => f.url.startsWith('/rst') && f.complete);
  t.same(complete.map((f) => `${f.url}:${f.body.length}`), [], 'no reset upload reached the upstream as a complete request');
  t.notOk(up.fates.some((f) => f.url.startsWith('/rst-buffered')), 'a body reset while buffered was never sent');
  const session = h2Session(t, gw);
  const next = await h2Request(session, { ':path': '/after', ':method': 'POST', 'content-type': 'text/plain' }, 'fine');
  t.equal(next.status, 200, 'the gateway serves on');
  t.equal(up.fates.find((f) => f.url === '/after')?.body.toString(), 'fine');
});

t.test('HTTP/2: DATA that falls short of content-length (END_STREAM early) or goes past it: the upstream never gets a request', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, BUFFERED(up.origin));
  const CT: Array<[string, string]> = [['content-type', 'application/octet-stream']];
  // Short: content-length 100, 40 bytes then END_STREAM.
  const a = await rawH2(t, gw);
  a.send(h2Frame(T.HEADERS, END_HEADERS, 1, block('POST', '/cl-short', [...CT, ['content-length', '100']])), h2Frame(T.DATA, END_STREAM, 1, Buffer.alloc(40, 0x61)));
  // Long: content-length 10, 40 bytes then END_STREAM.
  const b = await rawH2(t, gw);
  b.send(h2Frame(T.HEADERS, END_HEADERS, 1, block('POST', '/cl-long', [...CT, ['content-length', '10']])), h2Frame(T.DATA, END_STREAM, 1, Buffer.alloc(40, 0x62)));
  // Long in two frames: the first exactly fills the declared length.
  const c = await rawH2(t, gw);
  c.send(h2Frame(T.HEADERS, END_HEADERS, 1, block('POST', '/cl-long2', [...CT, ['content-length', '10']])), h2Frame(T.DATA, 0, 1, Buffer.alloc(10, 0x63)), h2Frame(T.DATA, END_STREAM, 1, Buffer.alloc(10, 0x64)));
  const ended = (x: Awaited<ReturnType<typeof rawH2>>): boolean => x.closed() || x.on(1).some((f) => f.type === T.RST_STREAM) || x.frames().some((f) => f.type === T.GOAWAY);
  t.ok(await until(() => ended(a) && ended(b) && ended(c), 3000), 'each stream was refused (RST_STREAM or GOAWAY)');
  await sleep(300);
  t.equal(up.connections(), 0, `the upstream was never dialled (${up.fates.map((f) => `${f.url}:${f.body.length}`).join(' ')})`);
  // The same past request_buffer (1kb): the upstream may have the start, never a complete request.
  const d = await rawH2(t, gw);
  d.send(h2Frame(T.HEADERS, END_HEADERS, 1, block('POST', '/cl-short-streamed', [...CT, ['content-length', '5000']])), h2Frame(T.DATA, 0, 1, Buffer.alloc(2000, 0x65)));
  t.ok(await until(() => up.fates.some((f) => f.url === '/cl-short-streamed')), 'streaming started');
  d.send(h2Frame(T.DATA, END_STREAM, 1, Buffer.alloc(1000, 0x66)));
  const e = await rawH2(t, gw);
  e.send(h2Frame(T.HEADERS, END_HEADERS, 1, block('POST', '/cl-long-streamed', [...CT, ['content-length', '2000']])), h2Frame(T.DATA, 0, 1, Buffer.alloc(1500, 0x67)));
  t.ok(await until(() => up.fates.some((f) => f.url === '/cl-long-streamed')), 'streaming started');
  e.send(h2Frame(T.DATA, END_STREAM, 1, Buffer.alloc(1500, 0x68)));
  t.ok(await until(() => ended(d) && ended(e), 3000), 'both refused');
  await sleep(300);
  t.same(up.fates.filter((f) => f.complete).map((f) => `${f.url}:${f.body.length}`), [], 'no mis-framed upload is complete upstream');
});

// =============================================================================================
// 3. Sizes at and around request_buffer and max_body_size

t.test('sizes at request_buffer, request_buffer + 1, max_body_size and max_body_size + 1, declared and chunked: exact bodies; 413 past the limit, the upstream never gets a complete request', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, BUFFERED(up.origin));
  const sizes = [0, 1, 1023, 1024, 1025, 4095, 4096, 4097];
  for (const framing of ['content-length', 'chunked'] as const) {
    for (const n of sizes) {
      const path = `/small/${framing}-${n}`;
      const body = randomBytes(n).toString('hex').slice(0, n);
      let req = `POST ${path} HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n`;
      if (framing === 'content-length') req += `Content-Length: ${n}\r\n\r\n${body}`;
      else {
        req += 'Transfer-Encoding: chunked\r\n\r\n';
        // Chunks of 700 bytes, so that the buffer limit falls inside a chunk.
        for (let i = 0; i < n; i += 700) req += chunk(body.slice(i, i + 700));
        req += '0\r\n\r\n';
      }
      const raw = await rawTls(gw.port, gw.ca, req, { waitMs: 3000 });
      const fate = up.fates.find((f) => f.url === path);
      if (n <= 4096) {
        t.equal(statusOf(raw), 200, `${framing} ${n}: 200`);
        t.equal(fate?.body.toString(), body, `${framing} ${n}: the upstream got the body exactly`);
        t.ok(fate?.complete, `${framing} ${n}: complete`);
        if (n <= 1024 && n > 0) t.equal(fate?.headers['content-length'], String(n), `${framing} ${n}: buffered whole, sent with its length`);
        t.equal(fate?.headers['transfer-encoding'] !== undefined && fate.headers['content-length'] !== undefined, false, `${framing} ${n}: never both framings`);
      } else {
        t.equal(statusOf(raw), 413, `${framing} ${n}: 413`);
        t.notOk(fate?.complete, `${framing} ${n}: the upstream never got a complete request (${fate ? `${fate.body.length} bytes, aborted ${fate.aborted}` : 'nothing'})`);
        if (framing === 'content-length') t.equal(fate, undefined, `${framing} ${n}: declared too large, never forwarded`);
      }
    }
  }
});

t.test('a chunked body that passes max_body_size after it overflowed into streaming: 413 to the client; the upstream connection is closed without a last chunk', async (t) => {
  let upstreamClosed = false;
  const app = await rawApp(t, (s) => s.on('close', () => (upstreamClosed = true)));
  const gw = await startGateway(t, BUFFERED(app.origin));
  const c = await tlsClient(t, gw);
  c.socket.write(`POST /small/grow HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n${chunk('a'.repeat(1500))}`);
  t.ok(await until(() => app.heads.length === 1 && app.after[0]!.length > 0), 'streaming started: the upstream has the head and the first part');
  c.socket.write(chunk('b'.repeat(2000)));
  await sleep(100);
  c.socket.write(`${chunk('c'.repeat(2000))}0\r\n\r\n`);
  t.ok(await until(() => statusOf(c.text()) !== 0, 3000), 'answered');
  t.equal(statusOf(c.text()), 413, '413');
  t.ok(await until(() => upstreamClosed, 3000), 'the upstream connection is closed');
  const sent = app.after[0]!.toString('latin1');
  t.notMatch(sent, /(^|\r\n)0\r\n\r\n$/, 'no last chunk ever reached the upstream');
  t.ok(!sent.includes('c'.repeat(100)), 'nothing past the limit reached the upstream');
  t.equal(app.heads.length, 1, 'one request upstream, never replayed');
});

// =============================================================================================
// 4. Failover

t.test('failover of a buffered body: the first target refuses the connection, the second gets the body whole, exactly once (declared and chunked)', async (t) => {
  const dead = `http://127.0.0.1:${await closedPort()}`;
  const up = await recUpstream(t);
  const gw = await startGateway(t, BUFFERED([dead, up.origin]));
  for (let i = 0; i < 4; i++) {
    const body = randomBytes(600);
    const chunked = i % 2 === 1;
    const head = Buffer.from(`POST /fo-${i} HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n${chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${body.length}`}\r\n\r\n`);
    const payload = chunked ? Buffer.concat([Buffer.from('100\r\n'), body.subarray(0, 256), Buffer.from(`\r\n${(body.length - 256).toString(16)}\r\n`), body.subarray(256), Buffer.from('\r\n0\r\n\r\n')]) : body;
    const raw = await rawTls(gw.port, gw.ca, Buffer.concat([head, payload]), { waitMs: 3000 });
    t.equal(statusOf(raw), 200, `${chunked ? 'chunked' : 'declared'} ${i}: 200`);
    const got = up.fates.filter((f) => f.url === `/fo-${i}`);
    t.equal(got.length, 1, `${i}: the live target got it once`);
    t.ok(got[0]?.body.equals(body), `${i}: whole, byte for byte`);
    t.equal(got[0]?.headers['content-length'], '600', `${i}: with its length`);
  }
  const line = gw.logs.filter((l) => l.type === 'access' && String(l.path).startsWith('/fo-'));
  t.ok(line.every((l) => l.status === 200 && l.upstream === up.origin), 'every line: 200 from the live target');
});

t.test('no replay of a body a target has seen: a target that accepts and then resets (after the head, or mid-body) gets the client a 502, and no other target ever sees the request (buffered and streamed)', async (t) => {
  for (const [label, size, resetAfter] of [
    ['buffered, reset after the head', 600, 'head'],
    ['buffered, reset after some body', 600, 'body'],
    ['streamed, reset mid-body', 5000, 'body'],
  ] as const) {
    const resetting = async (): Promise<Awaited<ReturnType<typeof rawApp>>> => {
      const app: Awaited<ReturnType<typeof rawApp>> = await rawApp(t, (s, _head, i) => {
        if (resetAfter === 'head') return void s.resetAndDestroy();
        // Some of the body first (it may have come with the head).
        if (app.after[i]!.length > 0) return void s.resetAndDestroy();
        s.once('data', () => void s.resetAndDestroy());
      });
      return app;
    };
    const a = await resetting();
    const b = await resetting();
    const gw = await startGateway(t, BUFFERED([a.origin, b.origin]));
    const c = await tlsClient(t, gw);
    c.socket.write(`POST /replay HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: ${size}\r\n\r\n`);
    for (let i = 0; i < size; i += 500) {
      c.socket.write('r'.repeat(Math.min(500, size - i)));
      await sleep(30);
    }
    t.ok(await until(() => statusOf(c.text()) !== 0, 4000), `${label}: answered`);
    t.equal(statusOf(c.text()), 502, `${label}: 502`);
    await sleep(200);
    t.equal(a.heads.length + b.heads.length, 1, `${label}: the request went to one target, once (${a.heads.length} + ${b.heads.length})`);
  }
});

// =============================================================================================
// 5. Clients that leave mid-buffer

t.test('200 clients that leave mid-buffer (reset or FIN): nothing dialled, a 499 line each; then a request is served at once and a small chunked body is still buffered whole', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, BUFFERED(up.origin));
  const sockets: tls.TLSSocket[] = [];
  t.teardown(() => sockets.forEach((s) => s.destroy()));
  await Promise.all(
    Array.from({ length: 200 }, (_, i) =>
      new Promise<void>((resolve) => {
        const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] }, () => {
          s.write(`POST /gone-${i} HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n${'g'.repeat(600)}`);
          resolve();
        });
        s.on('error', () => resolve());
        sockets.push(s);
      }),
    ),
  );
  await sleep(300);
  sockets.forEach((s, i) => (i % 2 === 0 ? s.destroy() : s.end()));
  const gone = (): Array<Record<string, unknown>> => gw.logs.filter((l) => l.type === 'access' && String(l.path).startsWith('/gone-'));
  t.ok(await until(() => gone().length >= 200, 5000), `a line for each (${gone().length})`);
  t.ok(gone().every((l) => l.status === 499 && l.reason === 'client_closed'), `every one 499 client_closed (${JSON.stringify([...new Set(gone().map((l) => `${l.status} ${l.reason}`))])})`);
  t.equal(new Set(gone().map((l) => l.path)).size, 200, 'one line per request');
  t.equal(up.connections(), 0, 'nothing was dialled');
  const began = Date.now();
  const ok = await Promise.race([gw.request({ method: 'POST', path: '/after', body: 'x'.repeat(100) }).then((r) => r.status), sleep(2000).then(() => 0)]);
  t.equal(ok, 200, `served at once (${Date.now() - began} ms)`);
  const chunked = await rawTls(gw.port, gw.ca, `POST /after-chunked HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunk('a'.repeat(300))}${chunk('b'.repeat(300))}0\r\n\r\n`);
  t.equal(statusOf(chunked), 200);
  const fate = up.fates.find((f) => f.url === '/after-chunked');
  t.equal(fate?.headers['content-length'], '600', 'buffered whole (sent with its length): the bytes of the gone clients were given back');
  t.notOk(up.fates.some((f) => f.url.startsWith('/gone-')), 'no gone client reached the upstream');
});

// =============================================================================================
// 6. Pipelined uploads

t.test('pipelined uploads in one write (declared, chunked with extensions and a trailer, one past request_buffer, a GET, then a smuggling shape): answers in order, exact bodies upstream in order, the smuggling shape refused and never forwarded', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, BUFFERED(up.origin));
  const big = 'B'.repeat(3000);
  const bytes =
    'POST /p1 HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n0123456789' +
    'POST /p2 HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n5;a="b"\r\ndefgh\r\n0\r\nX-Trailer: t\r\n\r\n' +
    `POST /p3 HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: ${big.length}\r\n\r\n${big}` +
    'GET /p4 HTTP/1.1\r\nHost: app.test\r\n\r\n' +
    'POST /p5 HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n';
  const raw = await rawTls(gw.port, gw.ca, bytes, { waitMs: 4000 });
  t.same(statuses(raw), [200, 200, 200, 200, 400], 'four answers in order, then the 400');
  const responses = parseResponses(raw, ['POST', 'POST', 'POST', 'GET', 'POST']);
  t.same(responses.slice(0, 3).map((r) => r.body), [`10 ${sha('0123456789')}`, `8 ${sha('abcdefgh')}`, `3000 ${sha(big)}`], 'each answer is its own request\'s');
  t.same(up.fates.map((f) => [f.url, f.body.toString()]), [['/p1', '0123456789'], ['/p2', 'abcdefgh'], ['/p3', big], ['/p4', '']], 'the upstream got them in order, bodies exact, nothing else');
  t.equal(up.fates[1]?.headers['x-trailer'], undefined, 'the trailer is not a header upstream');
});

// =============================================================================================
// 7. Policy before the body

t.test('a large upload without a valid token to an authenticated route: 401 before the body is read, nothing dialled (HTTP/1.1 declared and chunked, HTTP/2)', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, '[{ path: /api, access: authenticated, max_body_size: 20mb }, { path: /, access: public }]', `auth:
  issuers:
    - issuer: https://id.invalid/realm
      audiences: [api]
      algorithms: [RS256]
      jwks_uri: https://id.invalid/jwks
limits: { request_buffer: 8mb }
`));
  for (const framing of ['Content-Length: 10485760', 'Transfer-Encoding: chunked'] as const) {
    const c = await tlsClient(t, gw);
    c.socket.write(`POST /api/upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\n${framing}\r\n\r\n`);
    if (framing.startsWith('Transfer')) c.socket.write(chunk('z'.repeat(4000)));
    t.ok(await until(() => statusOf(c.text()) !== 0, 3000), `${framing}: answered before the body`);
    t.equal(statusOf(c.text()), 401, `${framing}: 401`);
    t.match(c.text(), /www-authenticate: Bearer/i);
    if (framing.startsWith('Transfer')) {
      // The rest of the body carries bytes shaped like a request: discarded as body, never parsed as one.
      c.socket.write(`${chunk('GET /public-smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n')}0\r\n\r\nGET /public-next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
      t.ok(await c.closedWithin(3000), 'the connection ends after the next request');
      t.same(statuses(c.text()), [401, 200], 'the 401, then the next real request\'s answer; nothing from inside the body');
      t.same(up.fates.map((f) => f.url), ['/public-next'], 'the upstream saw only the next real request');
    }
  }
  const session = h2Session(t, gw);
  const st = session.request({ ':authority': 'app.test', ':path': '/api/h2', ':method': 'POST', 'content-type': 'application/octet-stream', 'content-length': String(10 * 1024 * 1024) }, { endStream: false });
  st.on('error', () => undefined);
  let status = 0;
  st.on('response', (h) => (status = Number(h[':status'])));
  st.write(Buffer.alloc(32 * 1024));
  t.ok(await until(() => status !== 0, 3000), 'HTTP/2: answered');
  t.equal(status, 401, 'HTTP/2: 401');
  st.close(http2.constants.NGHTTP2_CANCEL);
  await sleep(200);
  t.notOk(up.fates.some((f) => f.url.startsWith('/api')), 'no refused upload was ever forwarded');
});

// =============================================================================================
// 8. Expect: 100-continue over HTTP/2 with a buffered body

t.test('HTTP/2 Expect: 100-continue with a body within request_buffer: the client gets its 100, then sends; the upstream gets the body once, no Expect', async (t) => {
  const up = await recUpstream(t);
  const gw = await startGateway(t, BUFFERED(up.origin));
  const session = h2Session(t, gw);
  const st = session.request({ ':authority': 'app.test', ':path': '/h2-expect', ':method': 'POST', 'content-type': 'text/plain', expect: '100-continue' }, { endStream: false });
  st.on('error', () => undefined);
  let got100 = false;
  let status = 0;
  let body = '';
  st.on('continue', () => {
    got100 = true;
    st.end('the body, sent only after the 100');
  });
  st.on('response', (h) => (status = Number(h[':status'])));
  st.setEncoding('utf8');
  st.on('data', (d: string) => (body += d));
  t.ok(await until(() => got100, 3000), 'the 100 came');
  t.ok(await until(() => status !== 0, 3000), 'answered');
  t.equal(status, 200);
  t.equal(up.fates.length, 1, 'one request upstream');
  t.equal(up.fates[0]?.body.toString(), 'the body, sent only after the 100');
  t.equal(up.fates[0]?.headers.expect, undefined, 'no Expect upstream');
  await until(() => body.length > 0);
});

// =============================================================================================
// 9. The process-wide cap on bodies held in memory (MAX_BUFFERED_BYTES, 256 MB)

t.test('uploads that overflow request_buffer toward an upstream that does not take them (busy app, saturated pool) stay within the 256 MB cap (they held ~396 MB: the overflowed buffers were no longer counted)', async (t) => {
  // README: "A process holds at most 256 MB of bodies being read at once"; gateway.ts: "Clients
  // that upload quickly and never finish cannot make the gateway hold more than this." Each client
  // here sends request_buffer + 32 KB of a larger body quickly, then stops. Its first 8 MB are
  // counted while buffered; at the overflow they are released from the count but written into the
  // stream to the upstream, where they stay as long as the upstream does not read them (an app whose
  // workers are busy, or a request queued behind a pool that streamed uploads already hold).
  const upstream = await silentServer(t);
  const gw = await startGateway(t, appSite(`http://127.0.0.1:${upstream.port}`, '[{ path: /, access: public, max_body_size: 64mb }]', 'limits: { request_buffer: 8mb }\ntimeouts: { response: 60s }\n'));
  // 96 uploads, 770 MB: the kernel's socket buffers towards the upstream take a few MB of each
  // connection, which no ArrayBuffer counts. With 48 uploads they took enough of the defect's
  // excess to hide it (210–251 MB measured with the defect put back, against the bound of 296).
  const N = 96;
  // Allocated before the baseline: the test's own upload buffer (8 MB, shared by every client) is
  // not something the gateway holds (counted in, it left 24 of the 32 MB of margin; CI measured
  // 289 MB against 288).
  const part = Buffer.alloc(8 * 1024 * 1024 + 32 * 1024, 0x61);
  const before = held().buffers;
  const clients: tls.TLSSocket[] = [];
  t.teardown(() => clients.forEach((s) => s.destroy()));
  for (let i = 0; i < N; i++) {
    const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] });
    s.on('error', () => undefined);
    s.write(`POST /hold-${i} HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: ${32 * 1024 * 1024}\r\n\r\n`);
    s.write(part);
    clients.push(s);
  }
  t.ok(await until(() => upstream.held.length >= N, 30_000), `every upload overflowed into a stream to the upstream (${upstream.held.length} connections)`);
  await until(() => clients.every((s) => s.writableLength === 0), 10_000);
  await sleep(1000);
  const grownMb = ((await heldSettled()).buffers - before) / (1024 * 1024);
  // What the whole process holds, not only the bodies the cap counts: the connections' TLS and
  // socket buffers too. Seen with 96 uploads: 176–240 MB here (48 uploads, one sample each: up to
  // 307 MB on a loaded CI machine); with the defect put back (the overflowed bytes released from
  // the count at once): 420 MB.
  t.ok(grownMb < 256 + 40, `the gateway holds at most about 256 MB of request bodies (it holds ${grownMb.toFixed(0)} MB for ${N} uploads of ${(part.length / 1048576).toFixed(2)} MB)`);
});
