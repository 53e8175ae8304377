// Request hygiene, attack-first: raw bytes over real TLS. The upstream must never see any of these.
import t from 'tap';
import tls from 'node:tls';
import http2 from 'node:http2';
import net from 'node:net';
import { LOOPBACK_LISTEN, rawTls, startGateway, startUpstream, statusOf } from '../helpers/gateway.js';

const yaml = (origin: string) => `${LOOPBACK_LISTEN}
limits: { max_body_size: 1kb, headers_timeout: 1s, request_timeout: 2s }
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes:
      - { path: /, access: public }
      - { path: /admin, access: deny }
      - { path: /upload, access: public, max_body_size: 4kb }
`;

t.test('smuggling-shaped requests are refused before the upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const cases: Array<[string, string]> = [
    ['CL + TE', 'POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['duplicate CL (different)', 'POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde'],
    ['duplicate CL (same)', 'POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc'],
    ['TE obfuscated: xchunked', 'POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n'],
    ['TE obfuscated: chunked, identity', 'POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n'],
    ['TE with space before colon', 'POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n'],
    ['TE folded (obs-fold)', 'POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n'],
    ['TE + CL, TE second', 'POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n'],
    ['bad chunk size', 'POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n'],
    ['bare LF line endings', 'GET / HTTP/1.1\nHost: app.test\n\n'],
    ['negative CL', 'POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: -1\r\n\r\n'],
  ];
  for (const [name, bytes] of cases) {
    const res = await rawTls(gw.port, gw.ca, bytes);
    // An answer, not a silent close: the client (or a proxy in front) learns why.
    t.equal(statusOf(res), 400, `${name}: refused with 400`);
  }
  t.equal(up.seen.length, 0, 'the upstream saw none of them');
});

t.test('request-target must be origin-form; TRACE and CONNECT are refused', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const abs = await rawTls(gw.port, gw.ca, 'GET http://evil.example/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.equal(statusOf(abs), 400, 'absolute-form refused');
  const star = await rawTls(gw.port, gw.ca, 'OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.equal(statusOf(star), 400, 'asterisk-form refused');
  const trace = await rawTls(gw.port, gw.ca, 'TRACE / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.equal(statusOf(trace), 405, 'TRACE refused');
  t.match(headerOf(trace, 'allow'), /^GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS$/, 'the 405 says which methods are served (RFC 9110 §15.5.6)');
  const webdav = await rawTls(gw.port, gw.ca, 'PROPFIND / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.equal(statusOf(webdav), 405, 'a method outside the proxied set is refused');
  t.ok(headerOf(webdav, 'allow'), 'with Allow');
  t.equal(up.seen.length, 0);
});

/** The status of a GET on an HTTP/2 session (the body is read and dropped). */
function h2Status(session: http2.ClientHttp2Session, authority: string, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':path': path, ':authority': authority });
    stream.on('response', (h) => resolve(Number(h[':status'])));
    stream.on('error', reject);
    stream.resume();
  });
}

/** The value of one header of a raw HTTP/1.1 answer ('' when absent). */
function headerOf(raw: string, name: string): string {
  for (const line of raw.split('\r\n\r\n')[0]!.split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    if (line.slice(0, colon).toLowerCase() === name) return line.slice(colon + 1).trim();
  }
  return '';
}

t.test('CONNECT gets the gateway own 405 (security headers, request id, Allow, access line) over HTTP/1.1 and HTTP/2', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));

  // HTTP/1.1: Node's parser would drop the connection without a word; the gateway answers.
  const h1 = await rawTls(gw.port, gw.ca, 'CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n');
  t.equal(statusOf(h1), 405, 'HTTP/1.1 CONNECT refused with 405');
  t.equal(headerOf(h1, 'allow'), 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
  t.equal(headerOf(h1, 'connection'), 'close', 'and the connection closed: the bytes after it are never a request');
  for (const h of ['strict-transport-security', 'x-content-type-options', 'x-frame-options', 'cross-origin-resource-policy', 'x-request-id']) {
    t.ok(headerOf(h1, h), `HTTP/1.1 405 has ${h}`);
  }
  t.equal(h1.split('HTTP/1.1 ').length - 1, 1, 'exactly one answer on the connection');

  // HTTP/2: Node's compat layer would answer a bare 405 (no security headers, nothing logged).
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  const h2 = await new Promise<{ headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'app.test:443' });
    let body = '';
    let headers: http2.IncomingHttpHeaders = {};
    stream.on('response', (h) => (headers = h));
    stream.setEncoding('utf8');
    stream.on('data', (c: string) => (body += c));
    stream.on('end', () => resolve({ headers, body }));
    stream.on('error', reject);
  });
  t.equal(h2.headers[':status'], 405, 'HTTP/2 CONNECT refused with 405');
  t.equal(h2.headers.allow, 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
  for (const h of ['strict-transport-security', 'x-content-type-options', 'x-frame-options', 'cross-origin-resource-policy', 'x-request-id', 'cache-control']) {
    t.ok(h2.headers[h], `HTTP/2 405 has ${h}`);
  }
  t.match(h2.body, /Method Not Allowed/, 'the gateway error body');
  t.match(h2.body, new RegExp(String(h2.headers['x-request-id'])), 'naming its request id');
  // The session survives: the next request on it is served.
  const next = await h2Status(session, 'app.test', '/');
  t.equal(next, 200, 'the HTTP/2 session goes on');

  for (let i = 0; i < 100 && gw.logs.filter((l) => l.method === 'CONNECT').length < 2; i++) await new Promise((r) => setTimeout(r, 10));
  const lines = gw.logs.filter((l) => l.type === 'access' && l.method === 'CONNECT');
  t.equal(lines.length, 2, 'one access line per CONNECT');
  t.same(lines.map((l) => [l.status, l.reason, l.http]).sort(), [[405, 'method_not_allowed', '1.1'], [405, 'method_not_allowed', '2.0']]);
  t.ok(lines.some((l) => l.request_id === h2.headers['x-request-id']), 'the HTTP/2 line has the answer request id');
  t.equal(up.seen.length, 1, 'the upstream saw only the ordinary request');
});

t.test('a CONNECT pipelined behind a request still being answered: the connection is cut, no 405 lands inside that answer', async (t) => {
  const up = await startUpstream(t, (_req, res) => setTimeout(() => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('slow answer');
  }, 300));
  const gw = await startGateway(t, yaml(up.origin));
  const raw = await rawTls(gw.port, gw.ca, 'GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\nCONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n', { waitMs: 1500 })
    .catch(() => ''); // a reset with nothing received is a fine outcome
  t.notMatch(raw, /HTTP\/1\.1 405/, 'no raw 405 written into the pending answer');
  t.notMatch(raw, /405|Method Not Allowed/, 'nothing of it at all');
  t.equal((await gw.request({ path: '/after' })).status, 200, 'the gateway goes on serving');
  const line = gw.logs.find((l) => l.type === 'access' && l.method === 'CONNECT');
  t.match(line, { status: 444, reason: 'pipelined_connect' }, 'logged as a connection cut without an answer');
  await new Promise((r) => setTimeout(r, 100));
  t.same(gw.logs.filter((l) => Number(l.level) >= 50).map((l) => l.msg), [], 'and logged no error');
});

t.test('a client that resets its connection right after CONNECT does not take the gateway down', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  for (let i = 0; i < 5; i++) {
    await new Promise<void>((resolve) => {
      // A TCP reset (RST), not a close: the gateway's socket gets ECONNRESET with no HTTP server
      // listening on it any more.
      const raw = net.connect(gw.port, '127.0.0.1');
      const s = tls.connect({ socket: raw, servername: 'app.test', ca: gw.ca }, () => {
        s.write('CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n', () => setTimeout(() => raw.resetAndDestroy(), i));
      });
      s.on('error', () => {});
      raw.on('error', () => {});
      raw.on('close', () => resolve());
    });
  }
  await new Promise((r) => setTimeout(r, 100));
  t.equal((await gw.request({ path: '/' })).status, 200, 'still serving');
});

t.test('Host is required and must be a configured site', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const none = await rawTls(gw.port, gw.ca, 'GET / HTTP/1.1\r\nConnection: close\r\n\r\n');
  t.equal(statusOf(none), 400, 'no Host');
  const other = await gw.request({ host: 'evil.example', servername: 'app.test' });
  t.equal(other.status, 421, 'unknown Host');
  const two = await rawTls(gw.port, gw.ca, 'GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.example\r\nConnection: close\r\n\r\n');
  t.equal(statusOf(two), 400, 'two Host headers');
  const junk = await gw.request({ host: 'app.test@evil.example', servername: 'app.test' });
  t.equal(junk.status, 400, 'userinfo-shaped Host');
  t.equal(up.seen.length, 0);
});

t.test('body limits: Content-Length and chunked, per route', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const big = await gw.request({ method: 'POST', path: '/', body: 'x'.repeat(2048), headers: { 'content-type': 'text/plain' } });
  t.equal(big.status, 413, 'declared length over the default limit');
  const chunked = await rawTls(
    gw.port,
    gw.ca,
    `POST / HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${'400\r\n' + 'y'.repeat(1024) + '\r\n'}${'400\r\n' + 'y'.repeat(1024) + '\r\n'}0\r\n\r\n`,
  );
  t.equal(statusOf(chunked), 413, 'chunked body over the limit');
  t.notOk(up.seen.some((r) => r.body.length > 1024), 'the upstream never got an oversized body');
  const okUpload = await gw.request({ method: 'POST', path: '/upload', body: 'z'.repeat(3000), headers: { 'content-type': 'text/plain' } });
  t.equal(okUpload.status, 200, 'a route may raise its limit');
  t.equal(up.seen.at(-1)?.body.length, 3000);
});

t.test('oversized headers get 431', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const res = await rawTls(gw.port, gw.ca, `GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: ${'a'.repeat(20000)}\r\nConnection: close\r\n\r\n`);
  t.equal(statusOf(res), 431);
  t.equal(up.seen.length, 0);
  // The parser's answer is written to the socket directly, but carries the same security headers
  // as the gateway's other answers outside a site (here: a 421 for an unknown host).
  const names = (raw: string) => new Set(raw.split('\r\n\r\n')[0]!.split('\r\n').slice(1).map((l) => l.slice(0, l.indexOf(':')).toLowerCase()));
  const misdirected = await rawTls(gw.port, gw.ca, 'GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n');
  t.equal(statusOf(misdirected), 421);
  const security = [...names(misdirected)].filter((n) => /^(strict-transport-security|x-frame-options|x-content-type-options|content-security-policy|referrer-policy|cross-origin-|permissions-policy)/.test(n));
  t.ok(security.includes('strict-transport-security') && security.includes('x-content-type-options'), `the 421 has security headers (${security.join(', ')})`);
  const parser = names(res);
  for (const n of security) t.ok(parser.has(n), `the parser's 431 has ${n} too`);
});

t.test('limits.max_header_size is enforced', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin).replace('limits: {', 'limits: { max_header_size: 2kb,'));
  const small = await rawTls(gw.port, gw.ca, `GET / HTTP/1.1\r\nHost: app.test\r\nX-Ok: ${'a'.repeat(1000)}\r\nConnection: close\r\n\r\n`);
  t.equal(statusOf(small), 200);
  const big = await rawTls(gw.port, gw.ca, `GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: ${'a'.repeat(4000)}\r\nConnection: close\r\n\r\n`);
  t.equal(statusOf(big), 431);
  t.equal(up.seen.length, 1);
});

t.test('slowloris: headers that never finish are cut off', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const res = await rawTls(gw.port, gw.ca, 'GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: ', { waitMs: 5000 });
  t.equal(statusOf(res), 408, 'closed with 408 by the headers timeout');
  t.equal(up.seen.length, 0);
});

t.test('a body that never finishes is cut off by request_timeout', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  // Headers arrive at once, then the body stalls after 5 of its 100 bytes.
  const outcome = await new Promise<{ closedByGateway: boolean; data: string }>((resolve) => {
    let data = '';
    const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] }, () => {
      s.write('POST / HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nhello');
    });
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ closedByGateway: false, data });
    }, 8000);
    s.on('data', (c: Buffer) => (data += c.toString('latin1')));
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ closedByGateway: true, data });
    });
    s.on('error', () => undefined);
  });
  t.ok(outcome.closedByGateway, 'the gateway closed the stalled request (request_timeout: 2s)');
  t.notOk(up.seen.some((r) => r.body.length === 100), 'the upstream never received a complete body');
});

t.test('paths: one canonical form for policy and upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const forward: Array<[string, string]> = [
    ['/a/./b/../c', '/a/c'],
    ['//a///b', '/a/b'],
    ['/%61%62c', '/abc'],
    ['/a/%2e%2e/b', '/b'],
    ['/x?q=%2e%2e/../y', '/x?q=%2e%2e/../y'],
  ];
  for (const [sent, expected] of forward) {
    const res = await gw.request({ path: sent });
    t.equal(res.status, 200, sent);
    t.equal(up.seen.at(-1)?.url, expected, `${sent} → upstream sees ${expected}`);
  }
  const denied = ['/admin', '/ADMIN', '/Admin/', '/%61dmin', '/public/../admin', '//admin', '/admin;jsessionid=1', '/./admin', '/admin/%2e/x', '/x/..%2fadmin'];
  const before = up.seen.length;
  for (const p of denied) {
    const res = await rawTls(gw.port, gw.ca, `GET ${p} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
    t.ok([400, 403].includes(statusOf(res)), `${p} → ${statusOf(res)}`);
  }
  for (const p of ['/a%2fb', '/a%5cb', '/a\\b', '/a%00b', '/a%zz', '/a%']) {
    const res = await rawTls(gw.port, gw.ca, `GET ${p} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
    t.equal(statusOf(res), 400, `${p} refused`);
  }
  t.equal(up.seen.length, before, 'none of the refused paths reached the upstream');
});

t.test('headers far over the limit (200 KB) still get a readable 431, not a connection reset', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  for (const size of [20_000, 200_000]) {
    const res = await rawTls(gw.port, gw.ca, `GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: ${'a'.repeat(size)}\r\n\r\n`, { waitMs: 4000 });
    t.equal(statusOf(res), 431, `${size} bytes of header`);
    t.match(res, /code: GW_ERR_HEADERS_TOO_LARGE/);
  }
  t.equal(up.seen.length, 0);
});

/** One request on a fresh TLS connection, then silence: when (ms after the response) and with what bytes does the gateway close it? */
function idleClose(port: number, ca: string, watchMs: number): Promise<{ closedAfterMs: number | null; after: string }> {
  return new Promise((resolve) => {
    let answered = 0;
    let after = '';
    const s = tls.connect({ host: '127.0.0.1', port, ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] }, () => {
      s.write('GET / HTTP/1.1\r\nHost: app.test\r\n\r\n');
    });
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ closedAfterMs: null, after });
    }, watchMs);
    s.on('data', (c: Buffer) => {
      if (answered === 0) answered = Date.now();
      else after += c.toString('latin1');
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ closedAfterMs: answered ? Date.now() - answered : null, after });
    });
    s.on('error', () => undefined);
  });
}

t.test('timeouts.idle governs idle keep-alive connections: closed quietly after it, not before', async (t) => {
  const up = await startUpstream(t);
  const short = await startGateway(t, yaml(up.origin).replace('limits: {', 'timeouts: { idle: 1s }\nlimits: {'));
  const a = await idleClose(short.port, short.ca, 6_000);
  t.ok(a.closedAfterMs !== null && a.closedAfterMs >= 900, `closed after the 1 s idle time (${a.closedAfterMs} ms)`);
  t.ok(a.closedAfterMs !== null && a.closedAfterMs < 3_000, 'and not much later');
  t.equal(a.after, '', 'quietly: no 408 to a client that sent nothing');
  // Longer than Node 24's own 5 s default for this server: still open at 6 s.
  const long = await startGateway(t, yaml(up.origin).replace('limits: {', 'timeouts: { idle: 8s }\nlimits: {'));
  const b = await idleClose(long.port, long.ca, 6_000);
  t.equal(b.closedAfterMs, null, 'still open 6 s after the response with timeouts.idle: 8s');
});

t.test('a chunked body over the limit: the upstream request never completes', async (t) => {
  // What the app can see (README "Request hygiene"): at most the start of the body, then an abort.
  const { createServer } = await import('node:http');
  const seen: Array<{ bytes: number; completed: boolean; aborted: boolean }> = [];
  const server = createServer((req, res) => {
    const r = { bytes: 0, completed: false, aborted: false };
    seen.push(r);
    req.on('data', (c: Buffer) => (r.bytes += c.length));
    req.on('end', () => {
      r.completed = true;
      res.end('ok');
    });
    req.on('error', () => (r.aborted = true));
    req.on('close', () => {
      if (!r.completed) r.aborted = true;
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }));
  // Bodies streamed (request_buffer: 0b): with the default the upstream sees none of it.
  const gw = await startGateway(t, yaml(`http://127.0.0.1:${(server.address() as { port: number }).port}`).replace('limits: {', 'limits: { request_buffer: 0b,'));
  const chunk = (n: number) => `${n.toString(16)}\r\n${'y'.repeat(n)}\r\n`;
  // First a chunk under the limit, and wait until the upstream is receiving it: the streamed case.
  const socket = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  t.teardown(() => socket.destroy());
  const answer: Buffer[] = [];
  socket.on('data', (c: Buffer) => answer.push(c));
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  await new Promise<void>((resolve) => socket.once('secureConnect', () => resolve()));
  // (text/plain is read whole by Fastify's own parser before it is forwarded; other types stream.)
  socket.write(`POST / HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunk(600)}`);
  for (let i = 0; i < 200 && !(seen[0] && seen[0].bytes > 0); i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(seen[0]?.bytes, 600, 'the upstream is receiving the body as it comes');
  socket.write(`${chunk(600)}${chunk(600)}0\r\n\r\n`);
  await closed;
  t.equal(statusOf(Buffer.concat(answer).toString('latin1')), 413, 'the client gets 413');
  for (let i = 0; i < 200 && !seen[0]!.completed && !seen[0]!.aborted; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(seen.length, 1);
  t.notOk(seen[0]!.completed, 'the upstream request never completed');
  t.ok(seen[0]!.aborted, 'it was aborted');
  t.ok(seen[0]!.bytes <= 1024, `the upstream got at most the limit (${seen[0]!.bytes} bytes)`);
});

t.test('HTTP/2 coalescing: every stream of one connection is routed and checked by its own :authority, never by the SNI', async (t) => {
  // Browsers reuse one HTTP/2 connection for every host its certificate covers (RFC 9113 §9.1.1).
  // TLS settings are the gateway's, not a site's, so that is safe as long as each request gets
  // the policy of the site it names.
  const a = await startUpstream(t);
  const b = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${a.origin}
    routes: [{ path: /, access: public }]
  - hosts: [other.test]
    upstream: ${b.origin}
    routes:
      - { path: /open, access: public }
      - { path: /, access: deny }
`);
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  const get = (authority: string, path: string) => h2Status(session, authority, path);
  t.equal(await get('app.test', '/secret'), 200, 'the SNI site');
  t.equal(await get('other.test', '/secret'), 403, "another site's deny applies on the same connection");
  t.equal(await get('OTHER.test', '/open'), 200, "another site's public route, to its own upstream");
  t.equal(await get('evil.example', '/'), 421, 'an authority the gateway does not serve: 421 on the same connection');
  t.equal(await get('app.test', '/again'), 200, 'and the connection goes on');
  t.same(a.seen.map((r) => r.url), ['/secret', '/again']);
  t.same(b.seen.map((r) => r.url), ['/open']);
});

t.test('HTTP/2: one connection holds at most 128 streams at once (Node advertises no limit)', async (t) => {
  let inFlight = 0;
  let most = 0;
  const up = await startUpstream(t, (_req, res) => {
    inFlight++;
    most = Math.max(most, inFlight);
    setTimeout(() => {
      inFlight--;
      res.end('ok');
    }, 300);
  });
  const gw = await startGateway(t, yaml(up.origin));
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  await new Promise((r) => session.once('remoteSettings', r));
  t.equal(session.remoteSettings.maxConcurrentStreams, 128, 'advertised in SETTINGS');
  // 200 requests at once on one connection: a client honouring the setting queues the rest.
  const statuses = await Promise.all(Array.from({ length: 200 }, (_, i) => h2Status(session, 'app.test', `/${i}`)));
  t.ok(statuses.every((s) => s === 200), 'all answered');
  t.ok(most <= 128, `at most 128 reached the upstream at once (${most})`);
  t.equal(up.seen.length, 200);
});

t.test('HTTP/2 extended CONNECT (RFC 8441, a WebSocket over HTTP/2) is refused: the setting is off, the stream reset, nothing proxied', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  session.on('error', () => undefined);
  await new Promise((r) => session.once('remoteSettings', r));
  t.equal(session.remoteSettings.enableConnectProtocol, false, 'SETTINGS_ENABLE_CONNECT_PROTOCOL not offered');
  const code = await new Promise<number>((resolve) => {
    const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'https', ':path': '/chat', ':authority': 'app.test' }, { endStream: false });
    stream.on('error', () => undefined);
    stream.on('response', () => resolve(-1));
    stream.on('close', () => resolve(stream.rstCode ?? -2));
  });
  t.equal(code, http2.constants.NGHTTP2_PROTOCOL_ERROR, 'reset with PROTOCOL_ERROR, no answer');
  const next = await h2Status(session, 'app.test', '/');
  t.equal(next, 200, 'the connection goes on');
  t.same(up.seen.map((r) => r.url), ['/'], 'the upstream saw only the ordinary request');
});

/** The error code of the first GOAWAY among whole HTTP/2 frames (9-byte header: length, type, flags, stream), or -1. */
function goawayIn(bytes: Buffer): number {
  for (let at = 0; at + 9 <= bytes.length; at += 9 + bytes.readUIntBE(at, 3)) {
    if (bytes[at + 3] === 7 && at + 17 <= bytes.length) return bytes.readUInt32BE(at + 13);
  }
  return -1;
}

t.test('HTTP/2: a connection broken by a malformed frame is ended with GOAWAY and logged (Node 24); the gateway serves on', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const received = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['h2'] }, () => {
      t.equal(socket.alpnProtocol, 'h2');
      // The client preface, an empty SETTINGS, then a DATA frame on stream 0: a connection error
      // (RFC 9113 §6.1).
      socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]), Buffer.from([0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41])]));
    });
    const timer = setTimeout(() => socket.destroy(), 5000);
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      // Node 20 sends GOAWAY and leaves the socket to the client; stop reading at the GOAWAY.
      if (goawayIn(Buffer.concat(chunks)) !== -1) socket.destroy();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      if (chunks.length === 0) reject(new Error('closed without a frame'));
      else resolve(Buffer.concat(chunks));
    });
  });
  t.equal(goawayIn(received), http2.constants.NGHTTP2_PROTOCOL_ERROR, 'GOAWAY with PROTOCOL_ERROR');
  if (Number(process.versions.node.split('.')[0]) >= 24) {
    for (let i = 0; i < 100 && !gw.logs.some((l) => l.type === 'connection'); i++) await new Promise((r) => setTimeout(r, 10));
    const line = gw.logs.find((l) => l.type === 'connection');
    t.match(line, { ip: '127.0.0.1', http: '2.0', reason: 'http2_protocol_error', msg: 'connection closed' }, 'one line names the client and why');
  } else {
    t.comment('Node < 24 does not report HTTP/2 session errors: no line to check');
  }
  t.equal(up.seen.length, 0, 'nothing reached the upstream');
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  t.equal(await h2Status(session, 'app.test', '/'), 200, 'the next connection is served');
});

t.test('HTTP/2: a client that resets its connection is not logged as a protocol error', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  await new Promise<void>((resolve, reject) => {
    const tcp = net.connect({ host: '127.0.0.1', port: gw.port }, () => {
      const socket = tls.connect({ socket: tcp, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['h2'] }, () => {
        socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
      });
      socket.on('error', () => undefined);
      // The gateway's SETTINGS: the session is up. Then a TCP reset, no GOAWAY, no close_notify.
      socket.once('data', () => {
        tcp.resetAndDestroy();
        resolve();
      });
    });
    tcp.on('error', reject);
  });
  await new Promise((r) => setTimeout(r, 300));
  t.same(gw.logs.filter((l) => l.type === 'connection'), [], 'no connection line: the client left, it broke nothing');
  t.equal((await gw.request({ path: '/' })).status, 200, 'the gateway serves on');
});

t.test('HTTP/2: a client that ends its connection with an error code is logged as http2_session_error', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  session.on('error', () => undefined);
  await new Promise((r) => session.once('remoteSettings', r));
  session.goaway(http2.constants.NGHTTP2_PROTOCOL_ERROR);
  for (let i = 0; i < 100 && !gw.logs.some((l) => l.type === 'connection'); i++) await new Promise((r) => setTimeout(r, 10));
  session.destroy();
  t.match(gw.logs.find((l) => l.type === 'connection'), { ip: '127.0.0.1', http: '2.0', reason: 'http2_session_error', msg: 'connection closed' });
});
