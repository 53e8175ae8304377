// Fourth round of attack tests, on the edges the first three rounds left alone: the plain-HTTP
// redirect listener (open redirects, ACME HTTP-01 paths), HTTP/1.1 framing shapes as the UPSTREAM
// sees them, request bodies the gateway reads itself, CSRF origin spellings, security headers on
// every kind of gateway answer, and the admin listener's metrics (label cardinality).
//
// Every test runs a real gateway (real TLS, ephemeral loopback ports) in front of a real upstream.
import t from 'tap';
import http2 from 'node:http2';
import { gzipSync } from 'node:zlib';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigFile } from '../../src/config/index.js';
import { buildGateway } from '../../src/gateway.js';
import { prepareCertificates } from '../../src/server/certificates.js';
import { followerAutomation } from '../../src/server/acme.js';
import { LOOPBACK_LISTEN, httpRequest, memoryLogger, rawTls, startGateway, startUpstream, statusOf, type LogRecord, type RunningGateway, type Tap, sleep, until } from '../helpers/gateway.js';
import { appSite as site, rawTcp, statuses } from '../helpers/clients.js';

// ---------------------------------------------------------------------------------------------
// Helpers

/** Header `name` (lower-case) of the first response in raw bytes, or undefined. */
function headerOf(raw: string, name: string): string | undefined {
  const head = raw.slice(0, raw.indexOf('\r\n\r\n'));
  for (const line of head.split('\r\n').slice(1)) {
    const i = line.indexOf(':');
    if (line.slice(0, i).toLowerCase() === name) return line.slice(i + 1).trim();
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// 1. The plain-HTTP redirect listener

t.test('redirect listener: no Host spelling, path or query makes Location point anywhere but the configured host', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin).replace(LOOPBACK_LISTEN, `${LOOPBACK_LISTEN}  public_https_port: 8443\n`));
  const p = gw.httpPort!;
  const ours = 'https://app.test:8443/';

  // Hosts that are not a configured site, dressed up as one: never a redirect.
  const hosts = [
    'evil.example',
    'app.test@evil.example',
    'evil.example@app.test',
    'app.test:80@evil.example',
    'app.test\\@evil.example',
    'evil.example\\app.test',
    'app.test%40evil.example',
    'app.test:8443:evil.example',
    'app.test/evil.example',
    'app.test#@evil.example',
    'app.test?@evil.example',
    'app.test.evil.example',
    'evil.example/.app.test',
    '[::1]',
    'app.test:99999',
    'app.test:-1',
    'app.test:0x50',
  ];
  for (const host of hosts) {
    const raw = await rawTcp(p, `GET /x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    const status = statusOf(raw);
    t.ok(status === 400 || status === 421, `Host ${JSON.stringify(host)}: refused (${status})`);
    t.equal(headerOf(raw, 'location'), undefined, `Host ${JSON.stringify(host)}: no Location`);
  }

  // Host spellings of the configured site: redirected to the canonical host.
  for (const host of ['app.test', 'APP.TEST', 'app.test.', 'app.test:', 'app.test:80', 'app.test:1']) {
    const raw = await rawTcp(p, `GET /x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    t.equal(statusOf(raw), 301, `Host ${JSON.stringify(host)}: 301`);
    t.equal(headerOf(raw, 'location'), `${ours}x`, `Host ${JSON.stringify(host)}: to the canonical host`);
  }

  // Two Host headers: whichever comes first, the Location names a configured host only.
  for (const pair of [['evil.example', 'app.test'], ['app.test', 'evil.example']]) {
    const raw = await rawTcp(p, `GET /x HTTP/1.1\r\nHost: ${pair[0]}\r\nHost: ${pair[1]}\r\nConnection: close\r\n\r\n`);
    const loc = headerOf(raw, 'location');
    t.ok(loc === undefined || loc.startsWith(ours), `two Hosts ${pair.join(' + ')}: ${statusOf(raw)} ${String(loc)}`);
  }

  // No Host (HTTP/1.0, and HTTP/1.1 which requires one): 400, no Location.
  for (const req of ['GET /x HTTP/1.0\r\n\r\n', 'GET /x HTTP/1.1\r\nConnection: close\r\n\r\n', 'GET /x HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n']) {
    const raw = await rawTcp(p, req);
    t.equal(statusOf(raw), 400, `${JSON.stringify(req.split('\r\n')[0])} without a usable Host: 400`);
    t.equal(headerOf(raw, 'location'), undefined);
  }

  // Paths and queries: every Location that is sent parses to the configured host, and carries no
  // raw CR, LF, space or backslash.
  const targets = [
    '//evil.example',
    '///evil.example/x',
    '/.//evil.example',
    '/x/..//evil.example',
    '/%2fevil.example',
    '/%2F%2Fevil.example',
    '/%5cevil.example',
    '/%5C%5Cevil.example',
    '/%09/evil.example',
    '/%0a/evil.example',
    '/%0d%0aLocation:%20https://evil.example',
    '/%E2%80%A8evil',
    '/%c0%ae%c0%ae/evil',
    '/..%2f..%2fevil.example',
    '/?//evil.example',
    '/?next=https://evil.example',
    '/?x=%0d%0aSet-Cookie:%20a=1',
    '/?\\evil.example',
    '/x?a#@evil.example',
    '/#//evil.example',
    '/@evil.example',
    '/:@evil.example',
    '/x;@evil.example',
  ];
  for (const target of targets) {
    const raw = await rawTcp(p, `GET ${target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
    const status = statusOf(raw);
    const loc = headerOf(raw, 'location');
    t.ok(status === 301 || status === 400, `${target}: ${status}`);
    t.notMatch(raw, /\r\n(set-cookie|location: https:\/\/evil)/i, `${target}: no injected header line`);
    if (loc !== undefined) {
      const url = new URL(loc);
      t.equal(url.host, 'app.test:8443', `${target}: Location host is ours (${loc})`);
      t.equal(url.protocol, 'https:', `${target}: https`);
      t.notMatch(loc, /[\r\n ]/, `${target}: no raw CR, LF or space in Location`);
      t.notMatch(new URL(loc).pathname, /\\/, `${target}: no backslash in the Location path`);
      t.ok(loc.startsWith(ours), `${target}: starts with ${ours}`);
    }
  }
  t.equal(up.seen.length, 0, 'the redirect listener never proxies');
});

t.test('redirect listener: raw bytes in the request-target (tab, DEL, high bytes) never reach Location raw', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const p = gw.httpPort!;
  const cases: Array<[string, Buffer]> = [
    ['tab in path', Buffer.from('GET /a\tb HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 'latin1')],
    ['tab in query', Buffer.from('GET /a?b\tc HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 'latin1')],
    ['DEL in query', Buffer.from('GET /a?b\x7fc HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 'latin1')],
    ['bare CR in query', Buffer.from('GET /a?b\rSet-Cookie:x=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 'latin1')],
    ['high bytes in query', Buffer.from('GET /a?\xff\xfe\xc3\xa9 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 'latin1')],
    ['high bytes in path', Buffer.from('GET /\xc3\xa9t\xe9 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 'latin1')],
  ];
  for (const [name, bytes] of cases) {
    const raw = await rawTcp(p, bytes);
    const status = statusOf(raw);
    const loc = headerOf(raw, 'location');
    t.ok(status === 301 || status === 400, `${name}: ${status}`);
    t.notMatch(raw, /\r\nset-cookie/i, `${name}: no injected header`);
    if (loc !== undefined) {
      // RFC 9110 §10.2.2: Location is a URI-reference: visible ASCII only.
      t.notMatch(loc, /[^\x21-\x7e]/, `${name}: Location is visible ASCII (${JSON.stringify(loc)})`);
      t.equal(new URL(loc).hostname, 'app.test', `${name}: our host`);
    }
  }
});

t.test('redirect listener: a huge path, every method, and odd request forms', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const p = gw.httpPort!;
  const huge = await rawTcp(p, `GET /${'a'.repeat(60_000)} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
  t.ok([301, 400, 414, 431].includes(statusOf(huge)), `60 KB path: answered (${statusOf(huge)})`);
  const after = await httpRequest(p, { path: '/still' });
  t.equal(after.status, 301, 'the listener still serves');

  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'PROPFIND', 'MKCOL', 'PURGE']) {
    const raw = await rawTcp(p, `${method} /m HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc`);
    const status = statusOf(raw);
    t.ok(status === 308 || status === 405 || status === 400, `${method}: ${status}`);
    if (status === 308) t.equal(headerOf(raw, 'location'), `https://app.test:${gw.port}/m`, `${method}: 308 keeps the method (RFC 9110 §15.4.9)`);
  }
  for (const [name, req] of [
    ['CONNECT', 'CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n'],
    ['TRACE', 'TRACE / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n'],
    ['asterisk-form', 'OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n'],
    ['absolute-form', 'GET https://evil.example/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n'],
    ['lower-case method', 'get / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n'],
  ] as const) {
    const raw = await rawTcp(p, req);
    const status = statusOf(raw);
    t.ok(status === 400 || status === 405 || raw === '', `${name}: refused (${status || 'closed'})`);
    t.equal(headerOf(raw, 'location'), undefined, `${name}: no Location`);
  }
  // A POST's body pipelined with a second request: the body is never taken for a request.
  const pipelined = await rawTcp(
    p,
    'POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: evil.example\r\n\r\n' +
      'GET /b HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n',
  );
  t.same(statuses(pipelined), [308, 301], 'two answers: the POST and the GET after its body');
  t.notMatch(pipelined, /smuggled|421/, 'the body was not parsed as a request');
  t.equal(up.seen.length, 0);
});

/** A gateway whose HTTP-01 table the test fills (a cluster worker's: the primary would fill it). */
async function gatewayWithChallenges(t: Tap, yaml: string): Promise<{ httpPort: number; set(token: string, v: string): void; logs: LogRecord[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-edge-'));
  const configPath = join(dir, 'gateway.yml');
  writeFileSync(configPath, yaml);
  const { config } = await loadConfigFile(configPath, { ...process.env });
  const logs: LogRecord[] = [];
  const logger = memoryLogger(logs);
  const certificates = await prepareCertificates(config, logger);
  const automation = followerAutomation();
  const gw = await buildGateway({ config, logger, certificates, certificateAutomation: automation });
  const addrs = await gw.listen();
  t.teardown(async () => {
    await gw.close(1000);
    rmSync(dir, { recursive: true, force: true });
  });
  return { httpPort: addrs.http!.port, set: (token, v) => automation.http01.set(token, v), logs };
}

t.test('ACME HTTP-01 on the redirect listener: only the exact token path is answered, nothing else leaks', async (t) => {
  const up = await startUpstream(t);
  const acme = await gatewayWithChallenges(t, site(up.origin));
  const token = 'tok_ABCDEFGHIJKLMNOP-0123456789';
  const keyAuth = `${token}.thumbprint_XYZ`;
  acme.set(token, keyAuth);
  const p = acme.httpPort;
  const get = (path: string, method = 'GET', host = 'app.test'): Promise<string> =>
    rawTcp(p, `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);

  const ok = await get(`/.well-known/acme-challenge/${token}`);
  t.equal(statusOf(ok), 200, 'the exact path is answered');
  t.ok(ok.includes(keyAuth), 'with the key authorization');
  t.equal(headerOf(ok, 'content-type'), 'text/plain');

  const variants = [
    `/.well-known/acme-challenge/../acme-challenge/${token}`,
    `/.well-known/acme-challenge/./${token}`,
    `/.well-known/acme-challenge/${token}/`,
    `/.well-known/acme-challenge/${token}/..`,
    `/.well-known/acme-challenge/${token}%00`,
    `/.well-known/acme-challenge/${token}.`,
    `/.well-known/acme-challenge//${token}`,
    `/.well-known/acme-challenge/%2e%2e/${token}`,
    `/.well-known/acme-challenge/../x`,
    `/.well-known/acme-challenge/..%2fx`,
    `/.well-known/acme-challenge/${token.slice(0, -1)}`,
    `/.well-known/acme-challenge/${token.toLowerCase()}`,
    '/.well-known/acme-challenge/',
    '/.well-known/acme-challenge',
  ];
  for (const path of variants) {
    const raw = await get(path);
    t.not(statusOf(raw), 200, `${path}: not answered as a challenge (${statusOf(raw)})`);
    t.notMatch(raw, /thumbprint_XYZ/, `${path}: the key authorization does not leak`);
    const loc = headerOf(raw, 'location');
    if (loc !== undefined) t.equal(new URL(loc).hostname, 'app.test', `${path}: a redirect to our host only`);
  }
  const post = await get(`/.well-known/acme-challenge/${token}`, 'POST');
  t.notMatch(post, /thumbprint_XYZ/, 'POST gets no key authorization');
  const head = await get(`/.well-known/acme-challenge/${token}`, 'HEAD');
  t.equal(statusOf(head), 200, 'HEAD is answered');
  t.notMatch(head, /thumbprint_XYZ/, 'HEAD has no body');
  t.equal(up.seen.length, 0);
});

// ---------------------------------------------------------------------------------------------
// 2. HTTP/1.1 framing shapes, as the upstream sees them

t.test('framing shapes the parser must refuse: nothing reaches the upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const cases: Array<[string, string]> = [
    ['CL with a leading +', 'POST /s HTTP/1.1\r\nHost: app.test\r\nContent-Length: +3\r\n\r\nabc'],
    ['CL in hex', 'POST /s HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0x3\r\n\r\nabc'],
    ['CL with an inner space', 'POST /s HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1 3\r\n\r\nabc'],
    ['CL as a list', 'POST /s HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3, 3\r\n\r\nabc'],
    ['CL with a decimal point', 'POST /s HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3.0\r\n\r\nabc'],
    ['CL overflowing 64 bits', 'POST /s HTTP/1.1\r\nHost: app.test\r\nContent-Length: 18446744073709551619\r\n\r\nabc'],
    ['chunk size overflow', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\nabc\r\n0\r\n\r\n'],
    ['chunk size with a leading space', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n'],
    ['chunk size with 0x', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n'],
    ['chunk data longer than its size', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n'],
    ['bare LF after chunk size', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n'],
    ['bare LF after chunk data', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n'],
    ['bare LF in one header line', 'POST /s HTTP/1.1\r\nHost: app.test\nContent-Length: 3\r\n\r\nabc'],
    ['bare CR in a header line', 'POST /s HTTP/1.1\r\nHost: app.test\r\nX-A: 1\rContent-Length: 3\r\n\r\nabc'],
    ['NUL in a header value', 'POST /s HTTP/1.1\r\nHost: app.test\r\nX-A: a\x00b\r\nContent-Length: 3\r\n\r\nabc'],
    ['NUL in a header name', 'POST /s HTTP/1.1\r\nHost: app.test\r\nX-\x00A: b\r\nContent-Length: 3\r\n\r\nabc'],
    ['TE: identity', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: identity\r\n\r\nabc'],
    ['TE: chunked, chunked', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'],
    ['TE with a tab before the value and CL', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 3\r\n\r\nabc'],
    ['TE: CHUNKED with CL', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: CHUNKED\r\nContent-Length: 3\r\n\r\nabc'],
    ['chunk extension with a bare LF', 'POST /s HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\nabc\r\n0\r\n\r\n'],
  ];
  for (const [name, bytes] of cases) {
    const raw = await rawTls(gw.port, gw.ca, bytes, { waitMs: 1500 });
    t.equal(statusOf(raw), 400, `${name}: 400`);
  }
  await sleep(200);
  t.same(up.seen.map((s) => `${s.method} ${s.url} ${s.body.toString('latin1')}`), [], 'the upstream saw none of them');
});

t.test('accepted framing variants: the upstream gets exactly the body the gateway framed, and never a second request hidden in it', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n';
  const cases: Array<[string, string, string]> = [
    ['CL with OWS around it', `POST /cl-ows HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length:   ${smuggled.length}  \r\n\r\n${smuggled}`, smuggled],
    ['CL with leading zeros', `POST /cl-zeros HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 000${smuggled.length}\r\n\r\n${smuggled}`, smuggled],
    ['chunk extensions', 'POST /ext HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3;name=value;q="a;b"\r\nabc\r\n2;x\r\nde\r\n0;last\r\n\r\n', 'abcde'],
    ['chunk size with leading zeros, upper-case hex', `POST /hex HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n00${smuggled.length.toString(16).toUpperCase()}\r\n${smuggled}\r\n0\r\n\r\n`, smuggled],
    ['a request inside a chunk', `POST /in-chunk HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`, smuggled],
  ];
  for (const [name, bytes, body] of cases) {
    const before = up.seen.length;
    const raw = await rawTls(gw.port, gw.ca, bytes, { waitMs: 800 });
    t.equal(statusOf(raw), 200, `${name}: 200`);
    await until(() => up.seen.length > before);
    t.equal(up.seen.length, before + 1, `${name}: one request upstream`);
    t.equal(up.seen.at(-1)?.body.toString('latin1'), body, `${name}: the exact body`);
  }
  t.notOk(up.seen.some((s) => s.url === '/smuggled'), 'no request hidden in a body reached the upstream as a request');
});

t.test('chunked trailers never reach the upstream as headers; framing fields in a trailer are refused', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const raw = await rawTls(
    gw.port,
    gw.ca,
    'POST /trail HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Auth-User\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n' +
      'X-Auth-User: admin\r\nX-Forwarded-For: 10.0.0.1\r\nX-Http-Method-Override: DELETE\r\n\r\n',
    { waitMs: 800 },
  );
  t.equal(statusOf(raw), 200);
  await until(() => up.seen.length === 1);
  const seen = up.seen[0]!;
  t.equal(seen.body.toString(), 'abc', 'the body, whole');
  t.notOk(seen.headers['x-auth-user'], 'no identity header from a trailer');
  t.notOk(seen.headers['x-http-method-override'], 'no override header from a trailer');
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For is the gateway\'s');
  t.notOk(seen.headers.trailer, 'no Trailer header upstream');
  for (const field of ['Content-Length: 99', 'Transfer-Encoding: chunked']) {
    const res = await rawTls(gw.port, gw.ca, `POST /trail-framing HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n${field}\r\n\r\n`, { waitMs: 800 });
    t.equal(statusOf(res), 400, `${field} in a trailer: 400`);
  }
  await sleep(100);
  t.notOk(up.seen.some((s) => s.url === '/trail-framing'), 'no request with a framing trailer completed upstream');
});

t.test('Transfer-Encoding: gzip, chunked (a coding the gateway does not decode): refused, not forwarded as a body of compressed bytes', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const plain = Buffer.from('amount=1&to=alice');
  const gz = gzipSync(plain);
  const bytes = Buffer.concat([
    Buffer.from(`POST /te-gzip HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n${gz.length.toString(16)}\r\n`),
    gz,
    Buffer.from('\r\n0\r\n\r\n'),
  ]);
  const raw = await rawTls(gw.port, gw.ca, bytes, { waitMs: 800 });
  await sleep(200);
  const forwarded = up.seen.find((s) => s.url === '/te-gzip');
  // RFC 9112 §6.1: a transfer coding the server does not understand → 501 (or the request is
  // refused as the README says of obfuscated Transfer-Encoding). What must never happen: the app
  // receiving the still-compressed bytes as the body, with nothing saying they are compressed.
  t.ok(forwarded === undefined || forwarded.body.equals(plain), `the upstream never gets a body other than the message (${statusOf(raw)}; upstream got ${forwarded ? JSON.stringify(forwarded.body.toString('latin1').slice(0, 20)) + ` with TE=${String(forwarded.headers['transfer-encoding'])} CE=${String(forwarded.headers['content-encoding'])}` : 'nothing'})`);
  t.ok([400, 501].includes(statusOf(raw)), `refused (got ${statusOf(raw)})`);
});

// ---------------------------------------------------------------------------------------------
// 2b. Bodies the gateway reads whole (text/plain): forwarded byte for byte?

t.test('text/plain bodies reach the upstream byte for byte (Latin-1, invalid UTF-8, a BOM, gzip Content-Encoding)', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const cases: Array<[string, string, Buffer, Record<string, string>]> = [
    ['UTF-8 text', 'text/plain; charset=utf-8', Buffer.from('héllo wörld', 'utf8'), {}],
    ['Latin-1 text', 'text/plain; charset=iso-8859-1', Buffer.from('caf\xe9 cr\xe8me', 'latin1'), {}],
    ['invalid UTF-8 bytes', 'text/plain', Buffer.from([0x61, 0xff, 0xfe, 0x80, 0x62]), {}],
    ['UTF-16LE text with BOM', 'text/plain; charset=utf-16le', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('hi', 'utf16le')]), {}],
    ['gzip-encoded text', 'text/plain', gzipSync(Buffer.from('compressed payload')), { 'content-encoding': 'gzip' }],
  ];
  for (const [name, type, body, extra] of cases) {
    const path = `/text/${encodeURIComponent(name)}`;
    const res = await gw.request({ method: 'POST', path, headers: { 'content-type': type, 'content-length': String(body.length), ...extra }, body });
    t.equal(res.status, 200, `${name}: 200`);
    const seen = up.seen.find((s) => s.url === path);
    t.ok(seen, `${name}: forwarded`);
    if (seen) {
      t.same([...seen.body], [...body], `${name}: the upstream got the bytes the client sent (${seen.body.length} vs ${body.length} bytes)`);
      t.equal(seen.headers['content-length'], String(body.length), `${name}: its Content-Length is the client's`);
    }
  }
  // The same bytes as application/octet-stream (streamed): byte for byte, as a control.
  const bin = Buffer.from([0x61, 0xff, 0xfe, 0x80, 0x62]);
  const res = await gw.request({ method: 'POST', path: '/bin', headers: { 'content-type': 'application/octet-stream', 'content-length': String(bin.length) }, body: bin });
  t.equal(res.status, 200);
  t.same([...(up.seen.find((s) => s.url === '/bin')?.body ?? [])], [...bin], 'octet-stream: byte for byte');
});

t.test('text/plain over HTTP/2: the upstream gets the bytes the client sent', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  const body = Buffer.from('na\xefve r\xe9sum\xe9', 'latin1');
  const status = await new Promise<number>((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': '/h2text', ':authority': 'app.test', 'content-type': 'text/plain; charset=windows-1252' });
    req.on('response', (h) => resolve(Number(h[':status'])));
    req.on('error', reject);
    req.resume();
    req.end(body);
  });
  t.equal(status, 200);
  const seen = up.seen.find((s) => s.url === '/h2text');
  t.same([...(seen?.body ?? [])], [...body], `byte for byte (${seen?.body.length} vs ${body.length} bytes)`);
});

// ---------------------------------------------------------------------------------------------
// 3. CSRF origins

t.test('CSRF: trusted_origins spellings, public port, and origins that only look like ours', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}  public_https_port: 443
csrf: { trusted_origins: ["HTTPS://Partner.Test:443/", "http://legacy.test:8080"] }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  type Case = [string, Record<string, string>, number];
  const cases: Case[] = [
    ['trusted, written differently in the config', { origin: 'https://partner.test', 'sec-fetch-site': 'cross-site' }, 200],
    ['trusted http origin with its port', { origin: 'http://legacy.test:8080', 'sec-fetch-site': 'cross-site' }, 200],
    ['trusted host over the other scheme', { origin: 'http://partner.test', 'sec-fetch-site': 'cross-site' }, 403],
    ['trusted host on another port', { origin: 'https://partner.test:8443', 'sec-fetch-site': 'cross-site' }, 403],
    ['legacy host, https', { origin: 'https://legacy.test:8080', 'sec-fetch-site': 'cross-site' }, 403],
    ['own origin (public port 443)', { origin: 'https://app.test' }, 200],
    ['own origin with explicit :443', { origin: 'https://app.test:443' }, 200],
    ['own host, the listener port (not the public one)', { origin: `https://app.test:${gw.port}` }, 403],
    ['own host with userinfo', { origin: 'https://user@app.test' }, 403],
    ['own host followed by another', { origin: 'https://app.test.evil.test' }, 403],
    ['own host as a userinfo of another', { origin: 'https://app.test@evil.test' }, 403],
    ['own origin with a path', { origin: 'https://app.test/x' }, 403],
    ['Origin list (own, evil)', { origin: 'https://app.test https://evil.test' }, 403],
    ['scheme-relative', { origin: '//app.test' }, 403],
    ['Origin: NULL upper-case', { origin: 'NULL' }, 403],
    ['Origin: null with whitespace', { origin: ' null ' }, 403],
    ['file: origin', { origin: 'file://' }, 403],
    ['Sec-Fetch-Site unknown value', { 'sec-fetch-site': 'same-party', origin: 'https://app.test' }, 403],
    ['Sec-Fetch-Site empty, foreign Origin', { 'sec-fetch-site': '', origin: 'https://evil.test' }, 403],
  ];
  for (const [name, headers, expected] of cases) {
    const path = `/c/${encodeURIComponent(name)}`;
    const res = await gw.request({ method: 'POST', path, headers: { cookie: 'sid=1', 'content-type': 'application/x-www-form-urlencoded', 'content-length': '3', ...headers }, body: 'a=1' });
    t.equal(res.status, expected, `${name}: ${expected}`);
    t.equal(up.seen.some((s) => s.url === path), expected === 200, `${name}: upstream ${expected === 200 ? 'saw it' : 'saw nothing'}`);
  }
});

t.test('cookie rules: prefixes, SameSite=None without Secure (secure: false), Domain, 200 Set-Cookie lines', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    const lines = [
      '__Host-sid=1; Path=/',
      '__Secure-pref=2',
      'none=3; SameSite=None',
      'noneLower=4; samesite=none; Domain=app.test',
      'dom=5; Domain=.app.test; Path=/',
      'readable=6; SameSite=Strict',
    ];
    for (let i = 0; i < 194; i++) lines.push(`bulk${i}=${i}; Path=/b`);
    res.setHeader('Set-Cookie', lines);
    res.end('ok');
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', `cookies: { secure: false, http_only_except: [readable] }\n`));
  const res = await gw.request({ path: '/' });
  const cookies = res.headers['set-cookie'] ?? [];
  t.equal(cookies.length, 200, 'all 200 Set-Cookie lines, none lost or merged');
  const get = (name: string): string => cookies.find((c) => c.startsWith(`${name}=`)) ?? '';
  const attrs = (line: string): string[] => line.split(';').slice(1).map((a) => a.trim().toLowerCase());
  t.ok(attrs(get('none')).includes('secure'), `SameSite=None gets Secure even with secure: false (${get('none')})`);
  t.ok(attrs(get('noneLower')).includes('secure'), `samesite=none (lower case) gets Secure (${get('noneLower')})`);
  t.ok(get('__Host-sid').startsWith('__Host-sid=1; Path=/'), '__Host- cookie kept as written');
  t.notOk(attrs(get('__Host-sid')).some((a) => a.startsWith('domain')), '__Host- cookie gets no Domain');
  t.ok(attrs(get('dom')).includes('domain=.app.test'), 'Domain kept as the app wrote it');
  t.notOk(attrs(get('readable')).includes('httponly'), 'http_only_except honoured');
  t.ok(attrs(get('bulk193')).includes('httponly') && attrs(get('bulk193')).includes('samesite=lax'), 'the 200th line hardened too');
});

// ---------------------------------------------------------------------------------------------
// 4. Security headers on every kind of gateway answer

const SECURITY = ['x-content-type-options', 'x-frame-options', 'strict-transport-security', 'cross-origin-resource-policy', 'referrer-policy', 'content-security-policy'];

t.test('security headers (and the route CSP) on the gateway\'s own 400, 405, 413, 431, 502, 504 answers', async (t) => {
  const hang = await startUpstream(t, () => undefined);
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
headers: { content_security_policy: "default-src 'self'" }
limits: { max_body_size: 1kb, max_header_size: 4kb }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /, access: public }
      - { path: /slow/, access: public, upstream: "${hang.origin}", timeouts: { response: 300ms } }
      - { path: /down/, access: public, upstream: "http://127.0.0.1:1" }
`);
  const check = (what: string, h: Record<string, string | string[] | undefined>): void => {
    for (const name of SECURITY) t.ok(h[name] !== undefined, `${what}: ${name}`);
    t.ok(h['x-request-id'], `${what}: x-request-id`);
  };
  const rawHead = (raw: string): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const line of raw.slice(0, raw.indexOf('\r\n\r\n')).split('\r\n').slice(1)) {
      const i = line.indexOf(':');
      out[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
    }
    return out;
  };
  const cases: Array<[string, string, number]> = [
    ['bad path', 'GET /a%2fb HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 400],
    ['_method on POST', 'POST /?_method=DELETE HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n', 400],
    ['PROPFIND', 'PROPFIND / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 405],
    ['declared 413', 'POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 99999\r\nConnection: close\r\n\r\n', 413],
    ['431', `GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: ${'a'.repeat(8000)}\r\nConnection: close\r\n\r\n`, 431],
    ['parser 400', 'POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: +3\r\n\r\nabc', 400],
    ['502', 'GET /down/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 502],
    ['504', 'GET /slow/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n', 504],
  ];
  for (const [name, bytes, status] of cases) {
    const raw = await rawTls(gw.port, gw.ca, bytes, { waitMs: 2000 });
    t.equal(statusOf(raw), status, `${name}: ${status}`);
    check(`${name} ${status}`, rawHead(raw));
  }
  // A chunked body over the limit: the 413 is decided mid-body.
  const chunked = await rawTls(gw.port, gw.ca, `POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n800\r\n${'x'.repeat(2048)}\r\n0\r\n\r\n`, { waitMs: 2000 });
  t.equal(statusOf(chunked), 413, 'chunked 413');
  check('chunked 413', rawHead(chunked));
  const chunkedText = await rawTls(gw.port, gw.ca, `POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n800\r\n${'x'.repeat(2048)}\r\n0\r\n\r\n`, { waitMs: 2000 });
  t.equal(statusOf(chunkedText), 413, 'chunked text/plain 413');
  check('chunked text/plain 413', rawHead(chunkedText));
});

t.test('headers.upstream: keep — odd spellings and duplicates from the app never weaken HSTS; override leaves no app copy', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    // setHeader with arrays: each value is its own header line (duplicates).
    res.setHeader('Strict-Transport-Security', ['max-age=0', 'max-age=0; includeSubDomains']);
    res.setHeader('X-Frame-Options', ['ALLOWALL', 'DENY']);
    res.setHeader('Content-Security-Policy', ["default-src *", "script-src 'unsafe-inline'"]);
    res.setHeader('Content-Type', 'text/html');
    res.end('ok');
    void req;
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
headers: { content_security_policy: "default-src 'self'" }
sites:
  - id: keep
    hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
  - id: override
    hosts: [strict.test]
    upstream: ${up.origin}
    headers: { upstream: override }
    routes: [{ path: /, access: public }]
`);
  const keep = await gw.request({ path: '/' });
  t.equal(keep.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains', 'keep: one HSTS, the gateway\'s');
  const over = await gw.request({ path: '/', host: 'strict.test' });
  t.equal(over.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains', 'override: one HSTS, the gateway\'s');
  t.equal(over.headers['x-frame-options'], 'DENY', 'override: one X-Frame-Options, the gateway\'s');
  t.equal(over.headers['content-security-policy'], "default-src 'self';frame-ancestors 'none'", 'override: one CSP, the gateway\'s');
});

// ---------------------------------------------------------------------------------------------
// 5. The admin listener

async function scrape(gw: RunningGateway): Promise<string> {
  const res = await httpRequest(gw.adminPort!, { path: '/metrics' });
  return res.body;
}

t.test('metrics: requests with client-chosen hosts, paths, methods, tokens and statuses create a bounded number of series', async (t) => {
  let n = 0;
  const up = await startUpstream(t, (_req, res) => {
    // The upstream answers with a different status each time (an app under attack reflecting input).
    res.writeHead(200 + (n++ % 300));
    res.end();
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }, { path: /api/ }]', ''));
  const before = await scrape(gw);
  const series = (text: string): number => text.split('\n').filter((l) => l.startsWith('portcullis_')).length;
  const baseline = series(before);

  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  const h2 = (headers: http2.OutgoingHttpHeaders): Promise<number> =>
    new Promise((resolve) => {
      const req = session.request(headers);
      req.on('response', (h) => resolve(Number(h[':status'])));
      req.on('error', () => resolve(0));
      req.resume();
      req.end();
    });
  const N = 200;
  const jobs: Array<Promise<number>> = [];
  for (let i = 0; i < N; i++) {
    jobs.push(h2({ ':method': `M${i}X`, ':path': `/p${i}`, ':authority': 'app.test' }));
    jobs.push(h2({ ':path': `/p${i}`, ':authority': `h${i}.evil.test` }));
    jobs.push(h2({ ':path': `/rand/${i}/${'z'.repeat(i % 50)}?q=${i}`, ':authority': 'app.test' }));
    jobs.push(h2({ ':path': `/api/${i}`, ':authority': 'app.test', authorization: `Bearer junk${i}.x${i}.y${i}` }));
  }
  await Promise.all(jobs);
  await sleep(300);
  const after = await scrape(gw);
  const grown = series(after) - baseline;
  t.notMatch(after, /M\d+X|evil\.test|\/rand\/|junk\d/, 'no client input in any label value');
  // Statuses are up to 500 values by design (bounded); everything else must not grow with N.
  const nonStatus = after.split('\n').filter((l) => l.startsWith('portcullis_') && !l.startsWith('portcullis_http_requests_total')).length - before.split('\n').filter((l) => l.startsWith('portcullis_') && !l.startsWith('portcullis_http_requests_total')).length;
  t.ok(nonStatus < 100, `series other than requests_total grew by ${nonStatus} (< 100) for ${4 * N} junk requests`);
  t.ok(grown < 500, `total series grew by ${grown}`);
  const methodLabels = new Set([...after.matchAll(/method="([^"]*)"/g)].map((m) => m[1]));
  t.ok([...methodLabels].every((m) => ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'other'].includes(m!)), `method labels: ${[...methodLabels].join(',')}`);
});

t.test('admin listener: only GET/HEAD, exact paths, token on /metrics only; nothing served on the public listeners', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
admin: { metrics_token: "s3cret-token" }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  const a = gw.adminPort!;
  t.equal((await httpRequest(a, { path: '/metrics' })).status, 401, 'no token: 401');
  t.equal((await httpRequest(a, { path: '/metrics', headers: { authorization: 'Bearer wrong' } })).status, 401, 'wrong token: 401');
  t.equal((await httpRequest(a, { path: '/metrics', headers: { authorization: 'Bearer s3cret-token x' } })).status, 401, 'token with a suffix: 401');
  t.equal((await httpRequest(a, { path: '/metrics', headers: { authorization: 'Basic czNjcmV0LXRva2Vu' } })).status, 401, 'Basic: 401');
  t.equal((await httpRequest(a, { path: '/metrics?x=1', headers: { authorization: 'Bearer s3cret-token' } })).status, 200, 'right token: 200');
  for (const path of ['/metrics/', '//metrics', '/Metrics', '/metrics%2f', '/./metrics', '/%6detrics']) {
    const res = await httpRequest(a, { path });
    t.notOk(res.status === 200 && /portcullis_/.test(res.body), `${path}: no metrics without the token (${res.status})`);
  }
  const post = await httpRequest(a, { method: 'POST', path: '/metrics', headers: { authorization: 'Bearer s3cret-token' }, body: 'x' });
  t.equal(post.status, 405, 'POST /metrics: 405');
  // The admin endpoints are not reachable through the public listeners.
  for (const path of ['/metrics', '/healthz', '/readyz']) {
    const res = await gw.request({ path });
    t.notMatch(res.body, /portcullis_build_info|"checks"/, `${path} on the HTTPS listener is the app's, not the admin's`);
    const red = await httpRequest(gw.httpPort!, { path });
    t.equal(red.status, 301, `${path} on the HTTP listener is a redirect`);
  }
  // The admin listener is bound where configured (loopback), not on every address.
  t.equal(gw.gw.addresses().admin?.address, '127.0.0.1');
});
