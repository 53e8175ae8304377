// Attack tests for the forwarding path when the UPSTREAM (or the client) misbehaves:
// src/proxy/forward.ts, src/proxy/upstream-errors.ts, src/proxy/headers.ts and the response side of
// src/gateway.ts. Every test runs the real gateway in front of a raw TCP upstream scripted byte by
// byte (test/helpers/gateway.ts `rawUpstream`) and reads what the client really gets.
//
// Promises checked (README "How requests are handled" 5 and 6, docs/pipeline.md):
//  - a response the upstream broke off is never passed off as complete (HTTP/1.1: no last chunk,
//    HTTP/2: RST_STREAM INTERNAL_ERROR), whatever the upstream's framing;
//  - timeouts.response bounds the wait for the upstream's response head;
//  - the upstream never gets a request the client did not make: nothing but a refused connection
//    is retried, and a client that leaves mid-upload never becomes a complete request upstream;
//  - a misbehaving upstream's answer never leaks into another client's response;
//  - nothing of a failed upstream reaches the client: a safe 502/504 with the right error code;
//  - no timer or upstream socket is left behind by failed exchanges.
//
// Not repeated here (covered elsewhere): mid-body resets with Content-Length/chunked and FIN,
// stalls mid-body, 103 then 200, unsolicited 100, status > 599, 204/304 with a body, header values
// with control characters or obs-fold, leaky/hop-by-hop response headers, Set-Cookie hardening,
// framing conflicts, backpressure and client stalls, failover of a streamed body.
import t from 'tap';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { createHook } from 'node:async_hooks';
import { accessLine, rawUpstream, sleep, startGateway, until, type RunningGateway, type Tap } from '../helpers/gateway.js';
import { appSite, h2Request, h2Session, parseResponses, tlsClient } from '../helpers/clients.js';

/** The gateway's own source directory, to tell its timers from undici's and Node's. */
const SRC = new URL('../../src/', import.meta.url).pathname;

const site = (origin: string, extra = ''): string => appSite(origin, undefined, extra);

/** One HTTP/1.1 request on a fresh raw TLS connection (`Connection: close`); the raw bytes back. */
async function rawGet(t: Tap, gw: RunningGateway, path: string, method = 'GET'): Promise<string> {
  const c = await tlsClient(t, gw);
  c.socket.write(`${method} ${path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
  await c.closedWithin(5000);
  return c.text();
}

/**
 * A raw TLS client whose underlying TCP socket is reachable, so that the test can reset it
 * (TLSSocket has no resetAndDestroy of its own).
 */
async function resettableTlsClient(t: Tap, gw: RunningGateway): Promise<{ tcp: net.Socket; socket: tls.TLSSocket; text(): string }> {
  const tcp = net.connect(gw.port, '127.0.0.1');
  tcp.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    tcp.once('connect', () => resolve());
    tcp.once('error', reject);
  });
  const socket = tls.connect({ socket: tcp, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  socket.on('error', () => undefined);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  t.teardown(() => tcp.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  return { tcp, socket, text: () => Buffer.concat(chunks).toString('latin1') };
}

// =============================================================================================
// 1. Responses the upstream broke off must never look complete.

t.test('a close-delimited upstream body ended by a TCP reset is cut, not relayed as complete (no HTTP/1.1 last chunk, HTTP/2 INTERNAL_ERROR)', async (t) => {
  // A response with neither Content-Length nor chunked framing ends when the upstream closes. A
  // FIN is that end; a RST is not: the upstream aborted (SO_LINGER 0, a crash with unread data, a
  // middlebox reset). undici (7.30, client-h1.js onHttpSocketError) turns an ECONNRESET on a
  // non-keep-alive response into parser.finish(), i.e. a normal end of message. nginx treats a
  // recv() error as an upstream error (the client's response is cut), and so does the gateway
  // (src/proxy/forward.ts, upstreamResetting): the same cut as for any mid-body failure.
  for (const [name, head] of [
    ['HTTP/1.1 Connection: close', 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n'],
    ['HTTP/1.0', 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n'],
  ] as const) {
    const up = await rawUpstream(t, (socket) => {
      socket.write(`${head}partial body, the rest never came`);
      setTimeout(() => socket.resetAndDestroy(), 100);
    });
    const gw = await startGateway(t, site(up.origin));

    const raw = await rawGet(t, gw, '/close-delimited');
    const [res] = parseResponses(raw, ['GET']);
    t.equal(res?.status, 200, `${name}: the response had started`);
    t.equal(res?.body, 'partial body, the rest never came', `${name}: what arrived was relayed`);
    t.notOk(res?.complete, `${name}: HTTP/1.1 client: no last chunk after a reset (got ${JSON.stringify(raw.slice(-12))})`);
    const line = await accessLine(gw, '/close-delimited');
    t.match(String(line?.reason), /^upstream_/, `${name}: the access line says the upstream broke off (reason ${String(line?.reason)})`);

    const h2 = await h2Request(h2Session(t, gw), { ':path': '/close-delimited-h2' });
    t.equal(h2.status, 200, `${name}: HTTP/2 response started`);
    t.equal(h2.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR, `${name}: HTTP/2 stream reset with INTERNAL_ERROR, not ended cleanly (rstCode ${String(h2.rstCode)})`);
  }
});

t.test('framing that does hold: a FIN-ended close-delimited body is complete; a complete Content-Length body followed by a reset is delivered whole', async (t) => {
  // The counterparts of the test above, so that the cut does not over-correct: a FIN is the end of
  // a close-delimited body, and a reset after a body whose length was announced and reached (an
  // upstream closing with the request partly unread) loses nothing.
  const fin = await rawUpstream(t, (socket) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nwhole body');
    setTimeout(() => socket.end(), 50);
  });
  const gwFin = await startGateway(t, site(fin.origin));
  const [a] = parseResponses(await rawGet(t, gwFin, '/fin'), ['GET']);
  t.equal(a?.status, 200);
  t.equal(a?.body, 'whole body');
  t.ok(a?.complete, 'FIN: complete, with its last chunk');
  t.equal((await accessLine(gwFin, '/fin'))?.reason, undefined, 'FIN: no failure reason');

  const rst = await rawUpstream(t, (socket) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 10\r\n\r\nwhole body');
    socket.resetAndDestroy();
  });
  const gwRst = await startGateway(t, site(rst.origin));
  const [b] = parseResponses(await rawGet(t, gwRst, '/cl-rst'), ['GET']);
  t.ok(b?.status === 200 || b?.status === 502, `complete CL body then RST: the response or a clean 502 (${String(b?.status)})`);
  if (b?.status === 200) {
    t.equal(b.body, 'whole body');
    t.ok(b.complete, 'complete');
  }
});

t.test('a chunked upstream body with an invalid chunk size after the first chunk: the client never gets a last chunk', async (t) => {
  for (const [name, bad] of [
    ['non-hex size', 'zz\r\nXX\r\n0\r\n\r\n'],
    ['size overflowing 64 bits', 'fffffffffffffffffff\r\nXX\r\n0\r\n\r\n'],
    ['chunk longer than its size', '2\r\nokXX\r\n0\r\n\r\n'],
  ] as const) {
    const up = await rawUpstream(t, (socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
      setTimeout(() => socket.write(bad), 80);
    });
    const gw = await startGateway(t, site(up.origin));
    const raw = await rawGet(t, gw, '/bad-chunk');
    const [res] = parseResponses(raw, ['GET']);
    t.equal(res?.status, 200, `${name}: started`);
    t.notOk(res?.complete, `${name}: no last chunk`);
    t.notOk(raw.includes('XX'), `${name}: nothing after the framing error is relayed`);
    t.equal((await accessLine(gw, '/bad-chunk'))?.reason, 'upstream_bad_response', `${name}: logged as a bad response`);
  }
});

// =============================================================================================
// 2. timeouts.response against interim responses.

t.test('an upstream that drips 103 Early Hints cannot hold the request past timeouts.response', async (t) => {
  // timeouts.response is "time from sending the request to receiving the upstream's response
  // headers". When forward.ts's onResponseStart re-armed the timer on every 1xx ("a sign of life"),
  // an upstream sending a 103 every 200 ms kept a 500 ms deadline from ever firing: the client (and
  // a gateway connection) was held as long as the upstream liked. Expected: 504 about 500 ms after
  // the request was sent.
  const timers = new Set<NodeJS.Timeout>();
  const up = await rawUpstream(t, (socket) => {
    const timer = setInterval(() => {
      if (socket.destroyed) clearInterval(timer);
      else socket.write('HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n');
    }, 200);
    timers.add(timer);
    socket.on('close', () => clearInterval(timer));
  });
  t.teardown(() => {
    for (const timer of timers) clearInterval(timer);
  });
  const gw = await startGateway(t, site(up.origin, 'timeouts: { response: 500ms }\n'));
  const started = Date.now();
  const res = await Promise.race([gw.request({ path: '/drip', headers: { accept: 'application/json' } }), sleep(3000).then(() => null)]);
  const waited = Date.now() - started;
  t.ok(res !== null, `answered within 3 s (waited ${waited} ms; timeouts.response is 500 ms)`);
  t.equal(res?.status, 504, 'the gateway 504');
  if (res !== null) {
    t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_TIMEOUT');
    t.equal(res.headers.link, undefined, 'no interim header on it');
  }
});

t.test('1000 interim responses in one burst, then the final one: one response at the client, no 1xx and none of their headers', async (t) => {
  const up = await rawUpstream(t, (socket) => {
    socket.write(
      'HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\nX-Interim: leak\r\n\r\n'.repeat(1000) +
        'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfinal',
    );
  });
  const gw = await startGateway(t, site(up.origin));
  const raw = await rawGet(t, gw, '/hint-flood');
  t.equal((raw.match(/HTTP\/1\.1 \d{3} /g) ?? []).length, 1, 'one status line');
  const [res] = parseResponses(raw, ['GET']);
  t.ok(res?.status === 200 || res?.status === 502, `the final response or the gateway's 502 (${String(res?.status)})`);
  t.notMatch(raw, /x-interim|link:/i, 'no header of an interim response');
  if (res?.status === 200) t.equal(res.body, 'final');
  const h2 = await h2Request(h2Session(t, gw), { ':path': '/hint-flood-h2' });
  t.same(h2.informational, [], 'HTTP/2: no 1xx relayed');
  t.ok(h2.status === 200 || h2.status === 502, `HTTP/2: final status (${h2.status})`);
});

// =============================================================================================
// 3. The upstream never gets a request the client did not make.

t.test('keep-alive race: an upstream that drops a reused connection as a request arrives gets it once (no silent retry), the client a safe 502', async (t) => {
  // README: a target that refused the connection never saw the request and the next one gets it;
  // "Nothing else is retried" — a request written on a connection that then closed may have been
  // acted on (a POST, a PUT), so it must not be sent again. GET is not retried either (documented).
  for (const [method, close] of [
    ['POST', 'fin'],
    ['PUT', 'fin'],
    ['PATCH', 'rst'],
    ['POST', 'rst'],
    ['GET', 'fin'],
  ] as const) {
    const up = await rawUpstream(t, (socket, head) => {
      if (head.startsWith('GET /warm ')) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=60\r\n\r\nok');
      else if (close === 'fin') socket.destroy();
      else socket.resetAndDestroy();
    });
    const gw = await startGateway(t, site(up.origin));
    t.equal((await gw.request({ path: '/warm' })).status, 200, `${method}/${close}: a pooled connection exists`);
    const res = await gw.request({
      method,
      path: '/act',
      headers: { accept: 'application/json', 'content-type': 'text/plain', ...(method === 'GET' ? {} : { 'content-length': '6' }) },
      body: method === 'GET' ? undefined : 'charge',
    });
    await sleep(150);
    const acts = up.heads.filter((h) => h.startsWith(`${method} /act `));
    t.equal(acts.length, 1, `${method}/${close}: the upstream saw the request exactly once (${acts.length})`);
    t.equal(up.received.length, 1, `${method}/${close}: no second connection was opened for it`);
    t.equal(res.status, 502, `${method}/${close}: 502`);
    t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_UNAVAILABLE', `${method}/${close}: upstream unavailable`);
    t.notMatch(res.body + JSON.stringify(res.headers), /ECONNRESET|other side closed|socket|127\.0\.0\.1|undici/i, `${method}/${close}: no internals`);
  }
});

t.test('an idle pooled connection the upstream closed before the request: the POST goes on a new connection, once', async (t) => {
  const up = await rawUpstream(t, (socket, head) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok');
    if (head.startsWith('GET /warm ')) setTimeout(() => socket.end(), 30);
  });
  const gw = await startGateway(t, site(up.origin));
  await gw.request({ path: '/warm' });
  await sleep(200);
  const res = await gw.request({ method: 'POST', path: '/act', headers: { 'content-type': 'text/plain', 'content-length': '6' }, body: 'charge' });
  t.equal(res.status, 200);
  t.equal(up.heads.filter((h) => h.startsWith('POST /act ')).length, 1, 'the upstream saw the POST once');
  t.equal(up.received.length, 2, 'on a second connection');
});

t.test('a client that leaves mid-upload (reset or FIN; Content-Length or chunked): the upstream never gets a complete request, its connection is closed', async (t) => {
  for (const [leave, framing] of [
    ['reset', 'content-length'],
    ['fin', 'content-length'],
    ['reset', 'chunked'],
    ['fin', 'chunked'],
  ] as const) {
    let upstreamClosed = false;
    const up = await rawUpstream(t, (socket) => socket.on('close', () => (upstreamClosed = true)));
    const gw = await startGateway(t, site(up.origin, 'limits: { request_buffer: 0b }\n'));
    const c = await resettableTlsClient(t, gw);
    const part = 'a'.repeat(40);
    c.socket.write(
      framing === 'content-length'
        ? `POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n${part}`
        : `POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n28\r\n${part}\r\n`,
    );
    t.ok(await until(() => (up.received[0] ?? '').includes(part)), `${leave}/${framing}: the upload had started upstream`);
    if (leave === 'reset') c.tcp.resetAndDestroy();
    else c.socket.end();
    t.ok(await until(() => upstreamClosed), `${leave}/${framing}: the upstream connection is closed`);
    const got = up.received[0] ?? '';
    const head = got.slice(0, got.indexOf('\r\n\r\n') + 4);
    const body = got.slice(head.length);
    if (/content-length: 100/i.test(head)) t.ok(body.length < 100, `${leave}/${framing}: fewer bytes than announced (${body.length})`);
    else t.notMatch(body, /(^|\r\n)0\r\n\r\n$/, `${leave}/${framing}: no last chunk`);
    // undici (7.30) opens a spare connection when a running request is aborted (onHttpSocketClose
    // re-pends the aborted request, then skips it): it must carry nothing.
    t.equal(up.heads.length, 1, `${leave}/${framing}: the request was sent once`);
    t.same(up.received.slice(1), up.received.slice(1).map(() => ''), `${leave}/${framing}: nothing on any other connection`);
    const line = await accessLine(gw, '/upload');
    t.equal(line?.status, 499, `${leave}/${framing}: logged as client closed`);
    t.notMatch(c.text(), /HTTP\/1\.1 200/, `${leave}/${framing}: nothing claims success to the client`);
  }
});

// =============================================================================================
// 4. One client's response is its own, whatever the upstream sent before.

t.test('stray upstream bytes on a pooled connection (a HEAD answered with a body, bytes after a full response, an unsolicited response while idle) never answer the next request', async (t) => {
  const poison = 'HTTP/1.1 200 OK\r\nX-Evil: 1\r\nContent-Length: 6\r\n\r\npoison';
  const cases: Array<[string, (socket: net.Socket, head: string) => void]> = [
    ['HEAD with a body, same write', (socket, head) => {
      if (head.startsWith('HEAD ')) socket.write(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${poison.length}\r\n\r\n${poison}`);
      else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean');
    }],
    ['HEAD with a body, later', (socket, head) => {
      if (head.startsWith('HEAD ')) {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${poison.length}\r\n\r\n`);
        setTimeout(() => socket.write(poison), 40);
      } else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean');
    }],
    ['a second response behind the first', (socket, head) => {
      if (head.startsWith('HEAD ')) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n${poison}`);
      else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean');
    }],
    ['unsolicited response while idle', (socket, head) => {
      socket.write(head.startsWith('HEAD ') ? 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n' : 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean');
      if (head.startsWith('HEAD ')) setTimeout(() => socket.write(poison), 40);
    }],
  ];
  for (const [name, answer] of cases) {
    const up = await rawUpstream(t, answer);
    const gw = await startGateway(t, site(up.origin));
    const first = await gw.request({ method: 'HEAD', path: '/first' });
    t.equal(first.status, 200, `${name}: the HEAD is answered`);
    await sleep(150);
    for (const path of ['/victim', '/victim2']) {
      const res = await gw.request({ path });
      t.equal(res.status, 200, `${name}: ${path} answered`);
      t.equal(res.body, 'clean', `${name}: ${path} gets its own body`);
      t.equal(res.headers['x-evil'], undefined, `${name}: ${path} gets none of the stray headers`);
    }
    t.equal(up.heads.filter((h) => h.startsWith('GET /victim ')).length, 1, `${name}: the victim request reached the upstream once`);
  }
});

// =============================================================================================
// 5. Malformed heads: a safe answer, nothing of the upstream.

t.test('101 Switching Protocols to a plain request (with or without Upgrade): the gateway 502, no tunnel, nothing of the upstream', async (t) => {
  for (const [name, answer] of [
    ['with Upgrade', 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSet-Cookie: sid=up\r\n\r\nTUNNELLED-BYTES'],
    ['without Upgrade', 'HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: sid=up\r\n\r\nHTTP/1.1 200 OK\r\nX-Evil: 1\r\nContent-Length: 6\r\n\r\npoison'],
  ] as const) {
    const upstreamSockets: net.Socket[] = [];
    const up = await rawUpstream(t, (socket, head) => {
      upstreamSockets.push(socket);
      if (head.startsWith('GET /switch ')) socket.write(answer);
      else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean');
    });
    const gw = await startGateway(t, site(up.origin));
    const raw = await rawGet(t, gw, '/switch');
    const [res] = parseResponses(raw, ['GET']);
    t.equal(res?.status, 502, `${name}: 502`);
    t.match(res?.body, /^502 Bad Gateway\ncode: GW_ERR_UPSTREAM_/, `${name}: the gateway's own body`);
    t.notMatch(raw, /TUNNELLED|poison|x-evil|sid=up|upgrade/i, `${name}: nothing of the upstream reaches the client`);
    t.ok(await until(() => upstreamSockets.every((s) => s.destroyed)), `${name}: the upstream connection is closed, not kept as a tunnel`);
    const next = await gw.request({ path: '/after' });
    t.equal(next.status, 200, `${name}: the gateway serves on`);
    t.equal(next.body, 'clean');
  }
});

t.test('an upstream response head over the parser limit (64 KB header) is a bad response, not "upstream unavailable"', async (t) => {
  // The project's rule (forward.test.ts: "an upstream response the HTTP parser refuses is a bad
  // response: GW_ERR_UPSTREAM_BAD_RESPONSE, reason upstream_bad_response"). undici refuses a head
  // over http.maxHeaderSize (16 KB) with HeadersOverflowError, code UND_ERR_HEADERS_OVERFLOW, which
  // classifyUpstreamError (src/proxy/upstream-errors.ts) did not know: `other`, so the client read
  // GW_ERR_UPSTREAM_UNAVAILABLE, the access line upstream_other and the metric reason "other" —
  // an operator was told the app is down when it answered with an oversized head.
  const up = await rawUpstream(t, (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\nSet-Cookie: sid=up\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\nContent-Length: 2\r\n\r\nok`);
  });
  const gw = await startGateway(t, site(up.origin));
  const res = await gw.request({ path: '/big-head', headers: { accept: 'application/json' } });
  t.equal(res.status, 502, '502');
  t.equal(res.headers['set-cookie'], undefined, 'none of the upstream headers');
  t.equal(res.headers['x-big'], undefined);
  t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_BAD_RESPONSE', `error code (got ${String(JSON.parse(res.body).error.code)})`);
  t.equal((await accessLine(gw, '/big-head'))?.reason, 'upstream_bad_response', 'access line reason');
});

t.test('the upstream reason phrase never reaches the client; a head followed by silence is the gateway 504 without the upstream headers', async (t) => {
  const up = await rawUpstream(t, (socket, head) => {
    if (head.startsWith('GET /phrase ')) socket.write('HTTP/1.1 200 DB error at 10.0.0.5 (OrderDao.java:42)\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok');
    else socket.write('HTTP/1.1 200 OK\r\nSet-Cookie: sid=up\r\nX-Internal: leak\r\nContent-Length: 10\r\n\r\n');
  });
  const gw = await startGateway(t, site(up.origin, 'timeouts: { response: 400ms }\n'));
  const raw = await rawGet(t, gw, '/phrase');
  t.match(raw, /^HTTP\/1\.1 200 OK\r\n/, "Node's own reason phrase");
  t.notMatch(raw, /10\.0\.0\.5|OrderDao|DB error/, 'nothing of the upstream status line');

  const started = Date.now();
  const res = await gw.request({ path: '/silent-body', headers: { accept: 'application/json' } });
  const waited = Date.now() - started;
  t.equal(res.status, 504, 'head then no body byte: 504');
  t.ok(waited >= 350 && waited < 2500, `after about timeouts.response (${waited} ms)`);
  t.equal(JSON.parse(res.body).error.code, 'GW_ERR_UPSTREAM_TIMEOUT');
  t.equal(res.headers['set-cookie'], undefined, 'no upstream Set-Cookie on the 504');
  t.equal(res.headers['x-internal'], undefined, 'no upstream header on the 504');
  t.equal(res.headers['x-frame-options'], 'DENY', 'the security headers are there');
  t.equal((await accessLine(gw, '/silent-body'))?.reason, 'upstream_response_timeout');
});

// =============================================================================================
// 6. Nothing left behind.

t.test('after 30 exchanges of five kinds (24 failing), no gateway timer is left armed and only the idle keep-alive upstream socket stays open', async (t) => {
  const upstreamSockets = new Set<net.Socket>();
  const up = await rawUpstream(t, (socket, head) => {
    upstreamSockets.add(socket);
    if (head.includes(' /reset')) socket.resetAndDestroy();
    else if (head.includes(' /cut')) {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc');
      setTimeout(() => socket.destroy(), 20);
    } else if (head.includes(' /silent')) {
      // never answers: 504
    } else if (head.includes(' /stall-body')) {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n');
    } else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  });
  const gw = await startGateway(t, site(up.origin, 'timeouts: { response: 300ms }\n'));
  await gw.request({ path: '/warm' });
  await sleep(100);
  // Timers created from the gateway's own code (src/) while the exchanges run, minus those cleared
  // or fired (async_hooks reports both as destroy).
  const live = new Map<number, string>();
  let created = 0;
  const hook = createHook({
    init(id, type) {
      if (type !== 'Timeout') return;
      const stack = new Error().stack ?? '';
      if (!stack.includes(SRC)) return;
      created++;
      live.set(id, stack.split('\n').filter((l) => l.includes(SRC)).slice(0, 2).join(' | '));
    },
    destroy(id) {
      live.delete(id);
    },
  });
  hook.enable();
  const statuses: number[] = [];
  try {
    for (let i = 0; i < 6; i++) {
      for (const path of ['/reset', '/cut', '/silent', '/stall-body', '/ok']) {
        statuses.push(await gw.request({ path: `${path}-${i}` }).then((r) => r.status, () => 0));
      }
    }
    await sleep(800);
  } finally {
    hook.disable();
  }
  t.ok(statuses.includes(504) && statuses.includes(502) && statuses.includes(200), `the failures happened (statuses: ${[...new Set(statuses)].join(', ')})`);
  t.ok(created >= 12, `the gateway armed its own timers meanwhile (${created})`);
  t.same([...live.values()], [], 'none of them is left armed');
  const open = [...upstreamSockets].filter((s) => !s.destroyed);
  t.ok(open.length <= 1, `at most the one idle keep-alive upstream socket stays open (${open.length} of ${upstreamSockets.size})`);
});
