// Attack tests on the request side of the edge: HTTP/1.1 pipelining and parser errors, what exactly
// the upstream receives, and HTTP/2 header blocks (src/gateway.ts request listeners and
// clientErrorHandler, src/server/slowloris.ts, src/pipeline/resolve.ts, src/proxy/headers.ts).
//
// The invariant most of these check: every request the upstream executed is answered to the
// client, in order, with its own answer; a request the client cannot get an answer for is never
// sent upstream. Every test runs a real gateway (real TLS, ephemeral loopback ports) in front of a
// real upstream.
import t from 'tap';
import tls from 'node:tls';
import { rawTls, rawUpstream, sleep, startGateway, startUpstream, statusOf, until, type RunningGateway, type Tap, type Upstream } from '../helpers/gateway.js';
import { appSite, h2Frame, h2Request, h2Session, parseResponses, tlsClient, type RawResponse } from '../helpers/clients.js';

// ---------------------------------------------------------------------------------------------
// Helpers

const ROUTES = `
      - { path: /, access: public }
      - { path: /admin, access: deny }
      - { path: /api, access: authenticated }
      - { path: /small, access: public, max_body_size: 16b }`;

/** An upstream whose answer names the request it answers: `ok METHOD URL BODYLENGTH`. */
function namingUpstream(t: Tap, delayMs = 0): Promise<Upstream> {
  return startUpstream(t, (req, res, body) => {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`ok ${req.method} ${req.url} ${body.length}`);
    }, delayMs);
  });
}

/** Writes `bytes` on one HTTP/1.1 connection; the responses once the gateway closed it or `ms` passed. */
async function exchange(t: Tap, gw: RunningGateway, bytes: string, methods: string[], ms = 1500): Promise<{ responses: RawResponse[]; closed: boolean }> {
  const c = await tlsClient(t, gw);
  c.socket.write(Buffer.from(bytes, 'latin1'));
  const closed = await c.closedWithin(ms);
  return { responses: parseResponses(c.text(), methods), closed };
}

/** Upstream requests (`METHOD URL`) seen since index `from` whose answer the client never got. */
function unanswered(up: Upstream, from: number, responses: RawResponse[]): string[] {
  return up.seen
    .slice(from)
    .map((s) => `${s.method} ${s.url}`)
    .filter((r) => !responses.some((res) => res.body.startsWith(`ok ${r} `)));
}

/** HPACK "literal header field without indexing, new name", no Huffman: any bytes, any order, any repeat. */
function hpackLiteral(name: string, value: string): Buffer {
  return Buffer.concat([Buffer.from([0x00, name.length]), Buffer.from(name, 'latin1'), Buffer.from([value.length]), Buffer.from(value, 'latin1')]);
}

/**
 * A raw HTTP/2 connection that sends one HEADERS frame (END_STREAM) with exactly `fields`: the
 * frames the gateway sent back for stream 1 (type, and the error code of a RST_STREAM).
 */
async function rawH2(gw: RunningGateway, fields: Array<[string, string]>): Promise<Array<{ type: number; code?: number }>> {
  const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['h2'] });
  s.on('error', () => undefined);
  await new Promise((resolve) => s.once('secureConnect', resolve));
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const block = Buffer.concat(fields.map(([n, v]) => hpackLiteral(n, v)));
  s.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), h2Frame(0x4, 0, 0, Buffer.alloc(0)), h2Frame(0x1, 0x5, 1, block)]));
  const frames = (): Array<{ type: number; code?: number }> => {
    const buf = Buffer.concat(chunks);
    const out: Array<{ type: number; code?: number }> = [];
    for (let i = 0; i + 9 <= buf.length; ) {
      const len = buf.readUIntBE(i, 3);
      const type = buf[i + 3]!;
      const stream = buf.readUInt32BE(i + 5) & 0x7fffffff;
      if (stream === 1) out.push(type === 0x3 && i + 13 <= buf.length ? { type, code: buf.readUInt32BE(i + 9) } : { type });
      i += 9 + len;
    }
    return out;
  };
  // Done once stream 1 is reset or its last frame (END_STREAM) came.
  await until(() => frames().some((f) => f.type === 0x3) || /* DATA or HEADERS */ frames().length >= 2, 1500);
  s.destroy();
  return frames();
}

const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: app.test\r\n${extra}\r\n`;

// =============================================================================================
// 1. Pipelining: every request the upstream executed gets its own answer, in order

t.test('pipelined requests with refusals in the middle (403, 401 with a body that looks like a request, 400 for `*`): each gets its own answer in order; the upstream sees only the allowed ones', async (t) => {
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  // The refused POST's body is a complete request: it must be discarded, never parsed as one.
  const smuggled = get('/smuggled');
  const bytes =
    get('/a') +
    get('/admin/x') +
    `POST /api/orders HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}` +
    get('/b') +
    'OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n' +
    get('/c');
  const { responses, closed } = await exchange(t, gw, bytes, ['GET', 'GET', 'POST', 'GET', 'OPTIONS', 'GET'], 1000);
  t.same(responses.map((r) => r.status), [200, 403, 401, 200, 400, 200], 'one answer per request, in request order');
  t.same(responses.filter((r) => r.status === 200).map((r) => r.body), ['ok GET /a 0', 'ok GET /b 0', 'ok GET /c 0'], 'each proxied answer is its own request\'s');
  t.same(up.seen.map((s) => s.url), ['/a', '/b', '/c'], 'the upstream saw only the allowed requests, and never the body posing as a request');
  t.notOk(closed, 'the connection stays usable');
});

t.test('a request pipelined behind a proxied POST that the HTTP/1.1 parser refuses (garbage, the HTTP/2 preface, a smuggling shape): the request before it (a POST the upstream executed, a 403) is answered first, never replaced by the 400', async (t) => {
  // Node (and the gateway, before) wrote the parser's 400 at once, while the POST was still at the
  // upstream (a 150 ms app): the only answer on the connection was the 400, which HTTP/1.1 ordering
  // makes the POST's answer: the client read "refused"; the app ran it. As nginx: the POST's 200,
  // then the 400.
  const up = await namingUpstream(t, 150);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const cases: Array<[string, string]> = [
    ['the HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
    ['binary garbage', '\x00\x01\x02garbage\r\n\r\n'],
    ['two Content-Length', 'GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab'],
  ];
  for (const [name, next] of cases) {
    const from = up.seen.length;
    const { responses } = await exchange(t, gw, `POST /transfer HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc${next}`, ['POST', 'GET']);
    await sleep(300); // the upstream may get the POST after the gateway closed the client's connection
    t.same(unanswered(up, from, responses), [], `${name}: no request executed upstream without its answer reaching the client`);
    if (up.seen.length > from) t.equal(responses[0]?.body, 'ok POST /transfer 3', `${name}: the first answer on the connection is the POST's own`);
  }
  // The gateway's own refusal of the first request was replaced too (its onSend hook is async).
  const { responses } = await exchange(t, gw, get('/admin/x') + 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', ['GET', 'GET']);
  t.equal(responses[0]?.status, 403, 'a denied GET followed by the HTTP/2 preface: its 403 comes first');
});

t.test('bytes after a request that ends the connection (`Connection: close`, HTTP/1.0 without keep-alive) never replace that request\'s answer with a 400', async (t) => {
  // RFC 9112 §9.6: after a request with `close` the server answers it, closes, and processes no
  // further request. llhttp reports the extra bytes as HPE_CLOSED_CONNECTION while the first
  // request is at the upstream; the gateway answered that error instead.
  const up = await namingUpstream(t, 100);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  {
    const from = up.seen.length;
    const { responses } = await exchange(t, gw, get('/a', 'Connection: close\r\n') + get('/b'), ['GET', 'GET']);
    t.equal(responses[0]?.body, 'ok GET /a 0', 'Connection: close: the client gets /a\'s answer');
    t.same(unanswered(up, from, responses), [], 'Connection: close: nothing executed upstream without its answer');
    t.notOk(up.seen.slice(from).some((s) => s.url === '/b'), 'the request after close is never forwarded');
  }
  {
    const from = up.seen.length;
    const http10 = (p: string, extra = ''): string => `GET ${p} HTTP/1.0\r\nHost: app.test\r\n${extra}\r\n`;
    const { responses } = await exchange(t, gw, http10('/x', 'Connection: keep-alive\r\n') + http10('/y') + http10('/z'), ['GET', 'GET', 'GET']);
    // /x's answer has no length (the upstream sends it chunked), which an HTTP/1.0 client can only
    // read to the close: the connection ends with it, and /y is never taken on.
    t.equal(responses[0]?.body, 'ok GET /x 0', 'HTTP/1.0: /x is answered first');
    t.same(unanswered(up, from, responses), [], 'HTTP/1.0: nothing executed upstream without its answer');
    t.notOk(up.seen.slice(from).some((x) => x.url === '/z'), 'HTTP/1.0: nothing after the closing request is forwarded');
  }
});

t.test('a request pipelined behind a refusal that closes the connection (413 declared or chunked, an HTTP/1.0 chunked request) is never forwarded', async (t) => {
  // The 413 (or Node's own close) ends the connection once it is written, but Node's parser has
  // already emitted the next request from the same read, and the gateway forwarded it: a POST the
  // app executed while the client only saw the connection close (and would retry it elsewhere).
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const transfer = 'POST /transfer HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi';
  const cases: Array<[string, string, string[]]> = [
    ['413 (Content-Length over the route limit)', `POST /small HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\n${'x'.repeat(20)}${transfer}`, ['POST', 'POST']],
    ['413 (chunked body over the route limit)', `POST /small HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n${'x'.repeat(20)}\r\n0\r\n\r\n${transfer}`, ['POST', 'POST']],
    ['HTTP/1.0 chunked with keep-alive (RFC 9112 §6.1: close after it)', `POST /te10 HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n${transfer}`, ['POST', 'POST']],
  ];
  for (const [name, bytes, methods] of cases) {
    const from = up.seen.length;
    const { responses } = await exchange(t, gw, bytes, methods);
    t.ok(responses.length >= 1, `${name}: the first request is answered (${responses[0]?.status})`);
    t.same(unanswered(up, from, responses), [], `${name}: no request executed upstream without its answer reaching the client`);
  }
});

// =============================================================================================
// 2. What the gateway decides from the headers must be what Node frames the request by

t.test('more than 1000 header lines cannot hide Transfer-Encoding / Content-Length from the gateway: max_body_size and the transfer-coding 501 hold', async (t) => {
  // Node's HTTP/1.1 parser keeps only the first 1000 header lines in req.headers by default
  // (maxHeadersCount), silently, but frames the body by the ones it dropped. ~10 KB of padding is
  // under the default 16 KB header limit, and the body-size, 501 and body-deadline checks read
  // req.headers (the gateway now keeps every line).
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const pad = 'X-Pad: 1\r\n'.repeat(998); // + Host + Content-Type = 1000 lines; the next one is dropped
  const head = (path: string, framing: string): string => `POST ${path} HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\n${pad}${framing}\r\n\r\n`;
  const body = 'x'.repeat(4096);
  const cases: Array<[string, string, number]> = [
    ['hidden Transfer-Encoding: chunked, 4 KB to a 16 B route', head('/small/te', 'Transfer-Encoding: chunked') + `1000\r\n${body}\r\n0\r\n\r\n`, 413],
    ['hidden Content-Length: 4096 to a 16 B route', head('/small/cl', 'Content-Length: 4096') + body, 413],
    ['hidden Transfer-Encoding: gzip, chunked', head('/gzip', 'Transfer-Encoding: gzip, chunked') + '5\r\nhello\r\n0\r\n\r\n', 501],
  ];
  for (const [name, bytes, want] of cases) {
    const from = up.seen.length;
    const { responses } = await exchange(t, gw, bytes, ['POST'], 800);
    // 431 (too many header lines) would be as good a refusal.
    t.ok(responses[0] !== undefined && [want, 431].includes(responses[0].status), `${name}: refused (${want} or 431), got ${responses[0]?.status}`);
    t.same(up.seen.slice(from).map((s) => `${s.url} ${s.body.length}`), [], `${name}: nothing reaches the upstream`);
  }
  // The same requests with the framing header in view are refused as documented (the checks hold).
  const from = up.seen.length;
  const plain = await exchange(t, gw, `POST /small/te HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n${body}\r\n0\r\n\r\n`, ['POST'], 800);
  t.equal(plain.responses[0]?.status, 413, 'control: the visible chunked body over the limit gets 413');
  t.equal(up.seen.length, from, 'control: and never reaches the upstream whole');
});

// =============================================================================================
// 3. Expect

t.test('an unknown expectation (`Expect: foo`) gets the gateway\'s 417: security headers, request id, access line (HTTP/1.1 and HTTP/2)', async (t) => {
  // Node answers it before any listener runs unless the server listens for 'checkExpectation';
  // the gateway did not, so the request never entered the pipeline (like CONNECT before its fix).
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const { responses } = await exchange(t, gw, get('/expect-h1', 'Expect: foo\r\nConnection: close\r\n'), ['GET'], 800);
  const r1 = responses[0];
  t.ok(r1, 'HTTP/1.1: answered');
  t.ok(r1?.headers['x-request-id'], 'HTTP/1.1: the answer carries a request id');
  t.ok(r1?.headers['strict-transport-security'], 'HTTP/1.1: and HSTS');
  t.equal(r1?.headers['x-content-type-options'], 'nosniff', 'HTTP/1.1: and the security headers');
  const session = h2Session(t, gw);
  const r2 = await h2Request(session, { ':method': 'GET', ':path': '/expect-h2', expect: 'foo' });
  t.ok(r2.headers['x-request-id'], `HTTP/2: the answer (${r2.status}) carries a request id`);
  t.ok(r2.headers['strict-transport-security'], 'HTTP/2: and HSTS');
  const logged = (path: string) => gw.logs.some((l) => l.type === 'access' && l.path === path);
  await until(() => logged('/expect-h1') && logged('/expect-h2'), 500);
  t.ok(logged('/expect-h1'), 'HTTP/1.1: one access line');
  t.ok(logged('/expect-h2'), 'HTTP/2: one access line');
});

t.test('`Expect: 100-continue` gets 100 Continue only once the request is let through: uploads the gateway refuses (401, 403, 413) are not invited to send their body', async (t) => {
  // Node answers 100 itself before the 'request' event without a 'checkContinue' listener. The point of
  // the expectation is to learn about a refusal before uploading; nginx sends its 100 only when it
  // starts reading the body, after access checks and client_max_body_size (RFC 9110 §10.1.1).
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const cases: Array<[string, string, number]> = [
    ['no token on an authenticated route', 'POST /api/upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n', 401],
    ['a denied route', 'POST /admin/upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n', 403],
    ['a declared 100 MB upload to a 16 B route', 'POST /small HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 104857600\r\nExpect: 100-continue\r\n\r\n', 413],
  ];
  for (const [name, bytes, want] of cases) {
    const { responses } = await exchange(t, gw, bytes, ['POST', 'POST'], 600);
    t.same(responses.map((r) => r.status), [want], `${name}: the final ${want} is the only answer, no 100 before it`);
  }
  const session = h2Session(t, gw);
  const r = await h2Request(session, { ':method': 'POST', ':path': '/admin/upload', expect: '100-continue' }, 'x');
  t.equal(r.status, 403, 'HTTP/2: 403');
  t.same(r.informational, [], 'HTTP/2: no 100 before it');
  t.equal(up.seen.length, 0, 'nothing was forwarded');

  // An upload the gateway lets through gets its 100 Continue, then the body goes through whole.
  const c = await tlsClient(t, gw);
  c.socket.write('POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  t.ok(await until(() => c.text().includes('100 Continue'), 3000), `the allowed upload is invited (${JSON.stringify(c.text().slice(0, 40))})`);
  t.equal(up.seen.length, 0, 'and nothing is forwarded before the body comes');
  c.socket.write('hello');
  t.ok(await until(() => /HTTP\/1\.1 200 /.test(c.text()), 3000), 'then answered 200');
  t.same(up.seen.map((x) => [x.url, x.body.toString()]), [['/upload', 'hello']], 'the upstream got the body whole');
});

// =============================================================================================
// 4. Request-target bytes: HTTP/1.1 and HTTP/2 must give the upstream the same kind of target

t.test('HTTP/2 `:path` query bytes 0x80-0xFF reach the upstream percent-encoded, never raw (an invalid request line the HTTP/1.1 listener refuses with 400)', async (t) => {
  const up = await rawUpstream(t, (socket) => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'));
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const requestLine = (i: number): string => (up.heads[i] ?? '').split('\r\n')[0]!;
  // Parity: the same bytes over HTTP/1.1 never get past the parser.
  for (const byte of ['\x85', '\xe9', '\xff']) {
    const raw = await rawTls(gw.port, gw.ca, Buffer.from(`GET /q?x=${byte}y HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`, 'latin1'));
    t.equal(statusOf(raw), 400, `HTTP/1.1: query byte 0x${byte.charCodeAt(0).toString(16)} refused with 400`);
  }
  t.equal(up.heads.length, 0, 'HTTP/1.1: nothing forwarded');
  const session = h2Session(t, gw);
  // In the path the same bytes are percent-encoded (canonical path): that holds.
  const p = await h2Request(session, { ':method': 'GET', ':path': '/caf\xe9/\x85' });
  t.equal(p.status, 200, 'HTTP/2 path with raw high bytes: forwarded');
  t.equal(requestLine(0), 'GET /caf%E9/%85 HTTP/1.1', 'HTTP/2 path: percent-encoded byte-wise');
  for (const byte of ['\x85', '\xe9', '\xff']) {
    const hex = byte.charCodeAt(0).toString(16);
    const from = up.heads.length;
    const r = await h2Request(session, { ':method': 'GET', ':path': `/q?x=${byte}y` });
    const line = up.heads.length > from ? requestLine(from) : null;
    // Either refused as HTTP/1.1 refuses it, or forwarded percent-encoded (as the path is).
    t.ok(line === null ? r.status === 400 : !/[\x80-\xff]/.test(line), `HTTP/2 query byte 0x${hex}: refused or encoded, the upstream got ${JSON.stringify(line)} (status ${r.status})`);
  }
});

t.test('HTTP/2 header blocks nghttp2 must refuse (duplicate or late pseudo-headers, connection-specific fields, controls in :path): the stream is reset, nothing forwarded; control characters in field values never reach the upstream', async (t) => {
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const base: Array<[string, string]> = [[':method', 'GET'], [':scheme', 'https'], [':authority', 'app.test']];
  const ok = await rawH2(gw, [...base, [':path', '/control']]);
  t.equal(ok[0]?.type, 0x1, 'control: a well-formed block gets a HEADERS answer');
  const refused: Array<[string, Array<[string, string]>]> = [
    ['two :path (/public, /admin)', [...base, [':path', '/public'], [':path', '/admin/x']]],
    ['two :method (GET, DELETE)', [[':method', 'GET'], [':method', 'DELETE'], [':scheme', 'https'], [':authority', 'app.test'], [':path', '/m']]],
    ['two :authority', [[':method', 'GET'], [':scheme', 'https'], [':authority', 'app.test'], [':authority', 'evil.test'], [':path', '/auth']]],
    ['a pseudo-header after a regular field', [[':method', 'GET'], [':scheme', 'https'], [':authority', 'app.test'], ['x-a', 'b'], [':path', '/late']]],
    ['an empty :path', [...base, [':path', '']]],
    ['no :authority, two Host fields', [[':method', 'GET'], [':scheme', 'https'], [':path', '/hosts'], ['host', 'app.test'], ['host', 'evil.test']]],
    ['an upper-case field name', [...base, [':path', '/upper'], ['X-Upper', 'v']]],
    ['Connection', [...base, [':path', '/conn'], ['connection', 'close']]],
    ['Transfer-Encoding', [...base, [':path', '/te'], ['transfer-encoding', 'chunked']]],
    ['TE other than trailers', [...base, [':path', '/tegzip'], ['te', 'gzip']]],
    ['an unknown pseudo-header', [...base, [':path', '/pseudo'], [':foo', 'bar']]],
    [':protocol on a GET', [...base, [':path', '/proto'], [':protocol', 'websocket']]],
    ['two Content-Length on a POST', [[':method', 'POST'], [':scheme', 'https'], [':authority', 'app.test'], [':path', '/cl'], ['content-length', '0'], ['content-length', '0']]],
    ['Content-Length 5 on a body-less stream', [...base, [':path', '/clmismatch'], ['content-length', '5']]],
    ['a C0 control in the query', [...base, [':path', '/q?x=\x01']]],
    ['DEL in the query', [...base, [':path', '/q?x=\x7f']]],
    ['a space in the query', [...base, [':path', '/q?x= HTTP/1.1\r\nX: y']]],
    ['a tab in the path', [...base, [':path', '/a\tb']]],
  ];
  for (const [name, fields] of refused) {
    const frames = await rawH2(gw, fields);
    t.same(frames.map((f) => f.type), [0x3], `${name}: RST_STREAM, no answer`);
    t.equal(frames[0]?.code, 0x1, `${name}: PROTOCOL_ERROR`);
  }
  // Field values with controls: nghttp2 drops the field; the request goes on without it.
  const hasControl = (v: string): boolean => [...v].some((ch) => (ch.charCodeAt(0) < 0x20 && ch !== '\t') || ch.charCodeAt(0) === 0x7f);
  for (const [name, value] of [['C0 control', 'a\x01b'], ['DEL', 'a\x7fb'], ['leading space', ' admin'], ['NUL', 'a\x00b']] as const) {
    const from = up.seen.length;
    await rawH2(gw, [...base, [':path', '/field'], ['x-v', value]]);
    const got = up.seen[from]?.headers['x-v'];
    t.ok(got === undefined || (got === value.trim() && !hasControl(got)), `field value with ${name}: never reaches the upstream as sent (got ${JSON.stringify(got)})`);
  }
  t.same(up.seen.map((s) => s.url), ['/control', '/field', '/field', '/field', '/field'], 'only the well-formed blocks reached the upstream');
  t.notOk(up.seen.some((s) => s.rawHeaders.some(hasControl)), 'no control character reached the upstream in any field');
});

// =============================================================================================
// 5. The gateway's own refusal texts

t.test('the 501 for an unsupported transfer coding says "Not Implemented" in its body', async (t) => {
  // statusText() (src/http/errors.ts) had no 501 entry and fell back to 500's text.
  const up = await namingUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, `${ROUTES}\n`));
  const bytes = 'POST / HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n' + get('/after');
  const { responses } = await exchange(t, gw, bytes, ['POST', 'GET'], 600);
  t.equal(responses[0]?.status, 501, '501');
  t.match(responses[0]?.lines.join('\n') ?? '', /x-request-id/i, 'the gateway\'s own answer');
  t.match(responses[0]?.body ?? '', /^501 Not Implemented\n/, 'its body names 501 Not Implemented, not a server failure');
  t.equal(responses[1]?.body, 'ok GET /after 0', 'the unread chunked body is discarded; the next request is answered');
  t.same(up.seen.map((s) => s.url), ['/after'], 'the refused request never reached the upstream');
});
