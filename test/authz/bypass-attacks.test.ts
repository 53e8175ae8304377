// Third round of attack tests, aimed at policy bypass: the upstream must never see a request the
// policy forbids — wrong role, wrong method, a protected path reached through an encoding, a site
// reached through another site's name, a route tightened by a reload. Every case checks what the
// UPSTREAM received, not only the status the client got.
import t from 'tap';
import http2 from 'node:http2';
import https from 'node:https';
import { writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import { loadConfigFile } from '../../src/config/index.js';
import { canonicalizePath } from '../../src/policy/index.js';
import { LOOPBACK_LISTEN, rawTls, startGateway, startUpstream, statusOf, until, type RunningGateway, type SeenRequest } from '../helpers/gateway.js';
import { ADMIN_CLAIMS, JWT_AUD, USER_CLAIMS, bearer, idpToken, lastAccess, startIdp } from './_support.js';

type Tap = { teardown(fn: () => unknown): void };

const idp = await startIdp();
t.teardown(() => idp.close());
const adminToken = await idpToken(idp, { claims: ADMIN_CLAIMS });
const userToken = await idpToken(idp, { claims: USER_CLAIMS });

/**
 * app.test: a public prefix, a role-checked prefix, an API whose DELETE needs admin, default deny.
 * open.test: another site, everything public, its own upstream.
 */
function policy(appUpstream: string, openUpstream: string, appRoutes?: string): string {
  return `${LOOPBACK_LISTEN}auth:
  issuers:
    - issuer: ${idp.issuer}
      audiences: [${JWT_AUD}]
      algorithms: [ES256, RS256]
      roles_claim: realm_access.roles
      clock_skew: 5s
sites:
  - hosts: [app.test]
    upstream: ${appUpstream}
    routes:
${
  appRoutes ??
  `      - { id: public, path: /public, access: public }
      - { id: admin, path: /admin, roles: [admin] }
      - { id: api-read, path: /api, methods: [GET, POST], access: authenticated }
      - { id: api-delete, path: /api, methods: [DELETE], roles: [admin] }
      - { id: rest, path: /, access: deny }
`
}  - hosts: [open.test]
    upstream: ${openUpstream}
    routes:
      - { id: open, path: /, access: public }
`;
}

// ---------------------------------------------------------------------------------------------
// How upstreams may read a forwarded path. The gateway's matching view claims to be "at least as
// broad as any upstream's reading": percent-decoded (UTF-8, NFKC), case-folded, `;` parameters cut
// (Tomcat/Jetty). These readings apply exactly those rules, then resolve dot-segments as every
// upstream does (RFC 3986 §5.2.4) — after the rule, which is where a dot-segment can appear.

function pctDecode(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const h = s[i] === '%' ? s.slice(i + 1, i + 3) : '';
    if (/^[0-9A-Fa-f]{2}$/.test(h)) {
      bytes.push(parseInt(h, 16));
      i += 2;
    } else {
      for (const b of Buffer.from(s[i]!, 'utf8')) bytes.push(b);
    }
  }
  return Buffer.from(bytes).toString('utf8'); // invalid UTF-8 (overlong) becomes U+FFFD
}

function resolveDots(segments: readonly string[]): string[] {
  const out: string[] = [];
  for (const seg of segments) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') out.pop();
    else out.push(seg.toLowerCase());
  }
  return out;
}

const READINGS: Record<string, (path: string) => string[]> = {
  // Tomcat: `;…` cut from each raw segment, then decoded, then dot-segments resolved.
  'tomcat (params cut, then dots)': (p) => resolveDots(p.split('/').map((s) => pctDecode(s.split(';')[0]!))),
  // Decode first, then cut parameters (the matching view's own order).
  'decode, params cut, dots': (p) => resolveDots(pctDecode(p).split('/').map((s) => s.split(';')[0]!)),
  // Unicode-aware: decoded, NFKC-normalized (the matching view's own rule), then split and resolved.
  'utf-8 + NFKC, dots': (p) => resolveDots(pctDecode(p).normalize('NFKC').split('/')),
};

/** The readings under which a forwarded request lands in /admin (empty: none). */
function adminReadings(s: SeenRequest): string[] {
  const path = s.url.split('?')[0] ?? '';
  return Object.entries(READINGS)
    .filter(([, read]) => read(path)[0] === 'admin')
    .map(([name]) => name);
}

const rawGet = (path: string, extra = '', method = 'GET', host = 'app.test'): string =>
  `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`;

// ---------------------------------------------------------------------------------------------
// 1. Path encodings

t.test('`..;` (a dot-segment carrying a `;` parameter) under a public prefix never reaches /admin', async (t) => {
  // Tomcat (and Jetty, Spring on them) cut `;…` from a segment before resolving dot-segments:
  // /public/..;/admin is /admin there (Orange Tsai, "Breaking Parser Logic", 2018). The gateway's
  // matching view cuts `;` too, so the segment reads `..` — and matching must not stay in /public.
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  for (const path of [
    '/public/..;/admin',
    '/public/..;/admin/users',
    '/public/..;x=1/admin',
    '/public/%2e%2e;/admin',
    '/public/a/..;/..;/admin/users',
    '/public/..;/ADMIN',
    '/public/..%3B/admin', // decode-then-cut readers
  ]) {
    const before = up.seen.length;
    const raw = await rawTls(gw.port, gw.ca, rawGet(path));
    const got = up.seen.slice(before);
    t.same(
      got.map((s) => ({ url: s.url, readsAsAdminUnder: adminReadings(s) })).filter((s) => s.readsAsAdminUnder.length > 0),
      [],
      `${path} (anonymous): status ${statusOf(raw)}; the upstream got ${JSON.stringify(got.map((s) => s.url))}`,
    );
  }
  // A `;` parameter on an ordinary segment of the public area stays public.
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/public/page;v=1'))), 200, 'control: /public/page;v=1 is public');
});

t.test('Unicode look-alikes of "." and "/" (NFKC) under a public prefix never reach /admin', async (t) => {
  // The matching view NFKC-normalizes (full-width ａ is a) because Unicode-aware upstreams do; the
  // same upstreams read FULLWIDTH FULL STOP twice as "..", TWO DOT LEADER as "..", FULLWIDTH
  // SOLIDUS as "/".
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  // Control: the gateway does apply NFKC to letters (FULLWIDTH a).
  // Control: /ａdmin (FULLWIDTH a) is refused to a user (the strictest of /admin and the default deny).
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/%EF%BD%81dmin/x', `Authorization: Bearer ${userToken}\r\n`))), 403, 'control: /ａdmin is refused to a user');
  t.equal(up.seen.length, 0);
  for (const path of [
    '/public/%EF%BC%8E%EF%BC%8E/admin', // U+FF0E FULLWIDTH FULL STOP ×2
    '/public/%E2%80%A5/admin', // U+2025 TWO DOT LEADER
    '/public/%EF%B9%92%EF%B9%92/admin', // U+FE52 SMALL FULL STOP ×2
    '/public/%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin', // ．．／admin in one segment
    '/public/x%EF%BC%8F..%EF%BC%8F..%EF%BC%8Fadmin', // x／..／..／admin
  ]) {
    const before = up.seen.length;
    const raw = await rawTls(gw.port, gw.ca, rawGet(path));
    const got = up.seen.slice(before);
    t.same(
      got.map((s) => ({ url: s.url, readsAsAdminUnder: adminReadings(s) })).filter((s) => s.readsAsAdminUnder.length > 0),
      [],
      `${path} (anonymous): status ${statusOf(raw)}; the upstream got ${JSON.stringify(got.map((s) => s.url))}`,
    );
  }
});

t.test('the classic encodings: refused, or forwarded in canonical form that reads as the route the policy allowed', async (t) => {
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  // [raw request-target, statuses acceptable for an anonymous client]
  const cases: Array<[string, number[]]> = [
    ['/public/%2e%2e/admin', [401]],
    ['/public/%2E%2e/admin', [401]],
    ['/public/.%2e/admin', [401]],
    ['/public/..%2fadmin', [400]],
    ['/public/..%2Fadmin', [400]],
    ['/public%2f..%2fadmin', [400]],
    ['/public/%252e%252e/admin', [400]],
    ['/public/..%252fadmin', [400]],
    ['/public/..\\admin', [400]],
    ['/public/..%5cadmin', [400]],
    ['/public/..%5Cadmin', [400]],
    ['/admin;x=1/users', [401, 403]], // /admin, or the default deny (the strictest reading)
    ['/admin;/users', [401, 403]],
    ['//admin', [401]],
    ['/./admin', [401]],
    ['/public/./../admin', [401]],
    ['/admin.', [403]], // not /admin: the default deny
    ['/admin%20', [403]],
    ['/admin%2e', [403]],
    ['/public/..%00/admin', [400]],
    ['/admin%00', [400]],
    ['/public/%c0%ae%c0%ae/admin', [400]], // overlong UTF-8 "." (find-my-way refuses invalid UTF-8)
    ['/public/%c0%af..%c0%afadmin', [400]], // overlong "/"
    ['/public/x#/../../admin', [401]], // a fragment is not a path delimiter for the gateway
    ['/public/x%23/../../admin', [401]],
    ['/public?/../admin', [200]], // the query is never a path
  ];
  for (const [path, statuses] of cases) {
    const before = up.seen.length;
    const raw = await rawTls(gw.port, gw.ca, rawGet(path));
    const status = statusOf(raw);
    t.ok(statuses.includes(status), `${path}: ${status} (expected ${statuses.join('|')})`);
    for (const s of up.seen.slice(before)) {
      const p = s.url.split('?')[0] ?? '';
      const canon = canonicalizePath(p);
      t.ok(canon.ok && canon.path === p, `${path}: the upstream got a canonical path (${s.url})`);
      t.same(adminReadings(s), [], `${path}: the upstream got ${s.url}, which no reading takes for /admin`);
    }
  }
  // What the public ones looked like upstream: exactly the canonical path, escapes upper-cased.
  t.same(
    up.seen.map((s) => s.url),
    ['/public?/../admin'],
    'only the public path reached the upstream',
  );

  // Request-target forms other than origin-form, and a path longer than the header limit.
  for (const [target, host] of [
    ['https://app.test/admin', 'open.test'],
    ['https://open.test/admin', 'app.test'],
    ['http://app.test/public/../admin', 'app.test'],
    ['app.test:443', 'app.test'],
    ['*', 'app.test'],
  ] as const) {
    const raw = await rawTls(gw.port, gw.ca, rawGet(target, '', target === '*' ? 'OPTIONS' : 'GET', host));
    t.equal(statusOf(raw), 400, `request-target ${target} (Host ${host}): 400`);
  }
  const long = await rawTls(gw.port, gw.ca, rawGet('/public/' + 'a/'.repeat(9000) + '../'.repeat(9001) + 'admin'));
  t.equal(statusOf(long), 431, 'a request line longer than limits.max_header_size: 431');
  t.equal(up.seen.length, 1, 'nothing more reached the app upstream');
  t.equal(open.seen.length, 0, 'nor the other site');
});

// ---------------------------------------------------------------------------------------------
// 2. Methods

interface H2Answer {
  status: number;
  error?: string;
}

function h2(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders): Promise<H2Answer> {
  return new Promise((resolve) => {
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request({ ':authority': 'app.test', ...headers });
    } catch (err) {
      resolve({ status: 0, error: (err as Error & { code?: string }).code ?? (err as Error).message });
      return;
    }
    let status = 0;
    req.on('response', (h) => (status = Number(h[':status'])));
    req.on('error', (err: Error & { code?: string }) => resolve({ status, error: err.code ?? err.message }));
    req.on('close', () => resolve({ status, ...(req.rstCode ? { error: `rst ${req.rstCode}` } : {}) }));
    req.resume();
    req.end();
  });
}

t.test('methods: lower/mixed case, unknown methods, TRACE, HEAD and OPTIONS never get past the route rules', async (t) => {
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));

  // HTTP/1.1: the parser knows methods in upper case only.
  for (const m of ['get', 'Get', 'delete', 'dElEtE', 'FOO', 'TRACE', 'TRACK', 'DEBUG']) {
    const raw = await rawTls(gw.port, gw.ca, rawGet('/admin/x', `Authorization: Bearer ${userToken}\r\n`, m));
    t.ok([400, 405].includes(statusOf(raw)), `HTTP/1.1 ${m} /admin/x: ${statusOf(raw)}`);
  }
  // HTTP/2 carries any token as :method.
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  for (const m of ['get', 'Get', 'delete', 'Delete', 'head', 'FOO', 'TRACE']) {
    const a = await h2(session, { ':method': m, ':path': '/admin/x', ...bearer(userToken) });
    // (404, not the README's 405, for methods Node does not know: see the dedicated test below)
    t.ok([400, 404, 405].includes(a.status) || a.error !== undefined, `HTTP/2 :method ${m}: ${a.status || a.error}`);
    const d = await h2(session, { ':method': m, ':path': '/api/items', ...bearer(userToken) });
    t.ok([400, 404, 405].includes(d.status) || d.error !== undefined, `HTTP/2 :method ${m} on /api: ${d.status || d.error}`);
  }
  t.equal(up.seen.length, 0, 'no odd method reached the upstream');

  // HEAD and OPTIONS are judged like any method: HEAD follows GET, OPTIONS has no route of its own.
  t.equal((await gw.request({ method: 'HEAD', path: '/admin' })).status, 401, 'HEAD /admin anonymous: 401');
  t.equal((await gw.request({ method: 'HEAD', path: '/admin', headers: bearer(userToken) })).status, 403, 'HEAD /admin as user: 403');
  t.equal((await gw.request({ method: 'OPTIONS', path: '/admin' })).status, 401, 'OPTIONS /admin anonymous: 401');
  t.equal((await gw.request({ method: 'HEAD', path: '/api/items' })).status, 401, 'HEAD /api (GET route): token needed');
  t.equal((await gw.request({ method: 'OPTIONS', path: '/api/items', headers: bearer(userToken) })).status, 403, 'OPTIONS /api: no route lists it, the default deny');
  t.equal((await gw.request({ method: 'DELETE', path: '/api/items/1', headers: bearer(userToken) })).status, 403, 'DELETE /api as user: 403');
  t.equal((await gw.request({ method: 'DELETE', path: '/API/items/1', headers: bearer(userToken) })).status, 403, 'DELETE /API as user: 403');
  t.equal(up.seen.length, 0, 'none of these reached the upstream');
  t.equal((await gw.request({ method: 'HEAD', path: '/api/items', headers: bearer(userToken) })).status, 200, 'control: HEAD /api as user passes');
  t.same(up.seen.map((s) => `${s.method} ${s.url}`), ['HEAD /api/items']);
});

t.test('HTTP/2 methods Node does not know (`FOO`, lower-case `get`) get the gateway own 405, as the README says, not Fastify 404', async (t) => {
  // README, "How requests are handled", 2.: anything outside GET HEAD POST PUT PATCH DELETE OPTIONS,
  // over HTTP/1.1 or HTTP/2, gets the gateway's own 405 with Allow and the security headers.
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  for (const method of ['FOO', 'get', 'Delete']) {
    const res = await new Promise<{ headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const req = session.request({ ':method': method, ':path': '/admin/x', ':authority': 'app.test' });
      let headers: http2.IncomingHttpHeaders = {};
      let body = '';
      req.on('response', (h) => (headers = h));
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => resolve({ headers, body }));
      req.on('error', reject);
      req.end();
    });
    t.equal(res.headers[':status'], 405, `${method}: 405`);
    t.equal(res.headers.allow, 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS', `${method}: Allow`);
    t.ok(res.headers['strict-transport-security'], `${method}: security headers`);
    t.ok(res.headers['x-request-id'], `${method}: a request id`);
    t.match(res.body, /GW_ERR_METHOD_NOT_ALLOWED/, `${method}: the gateway 405 body (got ${JSON.stringify(res.body)})`);
  }
  await new Promise((r) => setTimeout(r, 50));
  t.equal(gw.logs.filter((l) => l.type === 'access' && l.status === 405).length, 3, 'one access line each');
  t.same(gw.logs.filter((l) => /likely a fastify bug/.test(String(l.msg))).map((l) => l.msg), [], 'no "fastify bug" warnings (each comes with a dump of the router)');
  t.equal(up.seen.length, 0, 'nothing reached the upstream');
});

t.test('method override: headers are stripped; a `_method` query parameter on a POST is refused, never forwarded', async (t) => {
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  // The user may POST to /api but not DELETE. Frameworks that honour `?_method=` (Laravel and
  // Symfony with method override on, Express method-override('_method')) would run a DELETE.
  const res = await gw.request({
    method: 'POST',
    path: '/api/items/1',
    headers: { ...bearer(userToken), 'content-type': 'application/json', 'x-http-method-override': 'DELETE' },
    body: '{}',
  });
  t.equal(res.status, 200, 'POST is allowed for the user');
  const seen = up.seen.at(-1)!;
  t.equal(seen.method, 'POST', 'the upstream got a POST');
  t.notOk(seen.headers['x-http-method-override'], 'the override header was removed');
  for (const query of ['?_method=DELETE', '?a=1&_METHOD=delete', '?%5Fmethod=DELETE', '?_method%5B%5D=DELETE', '?_method']) {
    const before = up.seen.length;
    const refused = await gw.request({ method: 'POST', path: `/api/items/1${query}`, headers: { ...bearer(userToken), 'content-type': 'application/json' }, body: '{}' });
    t.equal(refused.status, 400, `POST ${query}: 400`);
    t.equal(up.seen.length, before, `POST ${query}: nothing forwarded`);
  }
  const get = await gw.request({ method: 'GET', path: '/api/items/1?_method=DELETE', headers: bearer(userToken) });
  t.equal(get.status, 200, 'a GET is not overridden by these frameworks: forwarded');
  const line = gw.logs.find((l) => l.type === 'access' && l.status === 400);
  t.equal(line?.reason, 'method_override_param', 'the access line says why');
});

// ---------------------------------------------------------------------------------------------
// 3. Host and site selection

t.test('Host and SNI: each request is judged by the site its Host names; odd Host spellings never pick a laxer site', async (t) => {
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  // [SNI, Host line(s), path, expected status]
  const cases: Array<[string, string, string, number]> = [
    ['open.test', 'Host: app.test\r\n', '/admin', 401], // domain fronting towards the protected site
    ['open.test', 'Host: APP.TEST.\r\n', '/admin', 401],
    ['open.test', 'Host: app.test:443\r\n', '/admin', 401],
    ['open.test', 'Host: app.test:\r\n', '/admin', 401],
    ['open.test', 'Host: app.test:99999\r\n', '/admin', 400],
    ['open.test', 'Host: open.test\r\nHost: app.test\r\n', '/admin', 400],
    ['open.test', 'Host: app.test\r\nHost: open.test\r\n', '/admin', 400],
    ['open.test', 'Host: open.test, app.test\r\n', '/admin', 400],
    ['open.test', 'Host: open.test@app.test\r\n', '/admin', 400],
    ['open.test', 'Host: app.test@open.test\r\n', '/admin', 400],
    ['open.test', 'Host: open.test/../app.test\r\n', '/admin', 400],
    ['open.test', 'Host: \xd0\xb0pp.test\r\n', '/admin', 400], // Cyrillic а (as UTF-8 bytes)
    ['open.test', 'Host: open.test.\xe2\x80\x8b\r\n', '/admin', 400], // zero-width space
    ['open.test', 'Host: xn--pp-8cd.test\r\n', '/admin', 421], // punycode: another name
    ['open.test', 'Host: [::1]\r\n', '/admin', 421],
    ['app.test', 'Host: open.test\r\nX-Forwarded-Host: app.test\r\nForwarded: host=app.test\r\n', '/admin', 200], // open.test's policy
  ];
  for (const [sni, hostLines, path, status] of cases) {
    const bytes = Buffer.from(`GET ${path} HTTP/1.1\r\n${hostLines}Connection: close\r\n\r\n`, 'latin1');
    const raw = await rawTls(gw.port, gw.ca, bytes, { servername: sni });
    t.equal(statusOf(raw), status, `SNI ${sni}, ${JSON.stringify(hostLines)}: ${status}`);
  }
  // Missing Host: HTTP/1.1 (Node refuses) and HTTP/1.0 (the gateway refuses).
  t.equal(statusOf(await rawTls(gw.port, gw.ca, 'GET /admin HTTP/1.1\r\nConnection: close\r\n\r\n', { servername: 'app.test' })), 400, 'HTTP/1.1 without Host: 400');
  t.equal(statusOf(await rawTls(gw.port, gw.ca, 'GET /public/x HTTP/1.0\r\n\r\n', { servername: 'app.test' })), 400, 'HTTP/1.0 without Host: 400');
  t.equal(up.seen.length, 0, 'the protected site upstream saw nothing');
  t.equal(open.seen.length, 1, 'the open site got only the request that named it');
  t.equal(open.seen[0]?.headers.host, 'open.test');
  t.equal(open.seen[0]?.headers['x-forwarded-host'], 'open.test', 'the client X-Forwarded-Host was replaced');
  t.notOk(open.seen[0]?.headers.forwarded, 'the client Forwarded was removed');

  // HTTP/2: :authority names the site, whatever the SNI; a second name for the request is refused.
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'open.test' });
  t.teardown(() => session.close());
  // 0: the stream was reset before any answer (Node 24's HTTP/2 layer refuses userinfo in
  // :authority itself; Node 20 hands it over and the gateway answers 400).
  const h2cases: Array<[http2.OutgoingHttpHeaders, readonly number[]]> = [
    [{ ':authority': 'app.test' }, [401]],
    [{ ':authority': 'APP.test.:443' }, [401]],
    [{ ':authority': 'open.test', host: 'app.test' }, [400]],
    [{ ':authority': 'app.test', host: 'open.test' }, [400]],
    [{ ':authority': 'user@app.test' }, [400, 0]],
    [{ ':authority': 'open.test', 'x-forwarded-host': 'app.test' }, [200]],
  ];
  for (const [headers, statuses] of h2cases) {
    const a = await h2(session, { ':method': 'GET', ':path': '/admin', ...headers });
    t.ok(statuses.includes(a.status), `HTTP/2 ${JSON.stringify(headers)}: ${statuses.join(' or ')} (got ${a.status})`);
  }
  t.equal(up.seen.length, 0, 'the protected site upstream still saw nothing');
  t.same(open.seen.map((s) => s.headers.host), ['open.test', 'open.test']);
});

// ---------------------------------------------------------------------------------------------
// 4. HTTP/2 pseudo-header tricks

t.test('HTTP/2 pseudo-headers: odd :path, :scheme and CONNECT forms never reach a protected route', async (t) => {
  const up = await startUpstream(t);
  const open = await startUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  const cases: Array<[string, http2.OutgoingHttpHeaders]> = [
    ['no leading slash', { ':method': 'GET', ':path': 'admin' }],
    ['asterisk', { ':method': 'OPTIONS', ':path': '*' }],
    ['absolute URI as :path', { ':method': 'GET', ':path': 'https://app.test/admin' }],
    ['dot-segments', { ':method': 'GET', ':path': '/public/../admin' }],
    ['space inside', { ':method': 'GET', ':path': '/public/.. /admin' }],
    ['space then fake version', { ':method': 'GET', ':path': '/admin HTTP/1.1' }],
    ['tab', { ':method': 'GET', ':path': '/public/..\t/admin' }],
    ['NUL escape', { ':method': 'GET', ':path': '/admin%00' }],
    ['backslash', { ':method': 'GET', ':path': '/public\\..\\admin' }],
    [':scheme http', { ':method': 'GET', ':path': '/admin', ':scheme': 'http' }],
    [':scheme javascript', { ':method': 'GET', ':path': '/admin', ':scheme': 'javascript' }],
    ['lower-case :method', { ':method': 'get', ':path': '/admin' }],
    ['CONNECT', { ':method': 'CONNECT', ':authority': 'app.test:443' }],
  ];
  for (const [name, headers] of cases) {
    const a = await h2(session, headers);
    t.ok(a.error !== undefined || [400, 401, 404, 405].includes(a.status), `${name}: ${a.status || ''} ${a.error ?? ''}`);
  }
  // Extended CONNECT (RFC 8441) is not offered: a client cannot even send :protocol.
  const ext = await h2(session, { ':method': 'CONNECT', ':protocol': 'websocket', ':path': '/admin/ws', ':scheme': 'https' });
  t.ok(ext.error !== undefined || ext.status === 405 || ext.status === 400, `extended CONNECT: ${ext.status || ''} ${ext.error ?? ''}`);
  t.equal(up.seen.length, 0, 'nothing reached the upstream');
});

// ---------------------------------------------------------------------------------------------
// 5. WebSocket

interface WsUpstream {
  origin: string;
  upgrades: Array<{ url: string; headers: IncomingHttpHeaders }>;
  /** Upgrade requests and plain requests that reached the upstream's HTTP server at all. */
  attempts: string[];
}

async function startWsUpstream(t: Tap): Promise<WsUpstream> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const out: WsUpstream = { origin: '', upgrades: [], attempts: [] };
  const raw = (wss as unknown as { _server: import('node:http').Server })._server;
  raw.removeAllListeners('request'); // ws answers plain requests with 426; this upstream serves them
  raw.on('upgrade', (req: import('node:http').IncomingMessage) => out.attempts.push(req.url ?? ''));
  raw.on('request', (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => {
    out.attempts.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
  });
  wss.on('connection', (ws, req) => {
    out.upgrades.push({ url: req.url ?? '', headers: req.headers });
    ws.on('message', (m) => ws.send(`echo:${m.toString()}`));
  });
  t.teardown(() => new Promise<void>((r) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => r());
  }));
  out.origin = `http://127.0.0.1:${(wss.address() as { port: number }).port}`;
  return out;
}

function openWs(t: Tap, port: number, ca: string, path: string, headers: Record<string, string>, servername = 'app.test'): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}${path}`, { ca, servername, headers: { host: 'app.test', ...headers } } as object);
    t.teardown(() => ws.terminate());
    ws.once('open', () => {
      // A round trip: the gateway answers 101 first and dials the upstream afterwards.
      ws.once('message', () => {
        ws.close();
        resolve(101);
      });
      ws.send('ping');
    });
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      ws.terminate();
      resolve(res.statusCode ?? 0);
    });
    ws.once('error', reject);
  });
}

t.test('WebSocket: upgrades to the admin area through encodings, fronting and cookies are never dialled upstream', async (t) => {
  const up = await startWsUpstream(t);
  const open = await startWsUpstream(t);
  const gw = await startGateway(t, policy(up.origin, open.origin));
  const cases: Array<[string, string, Record<string, string>, string]> = [
    ['no token, SNI of the open site, Host of the protected one', '/admin/ws', {}, 'open.test'],
    ['user token, /admin via //ADMIN;x', '//ADMIN;x/ws', bearer(userToken), 'app.test'],
    ['admin token, cookie, cross-site Origin', '/admin/ws', { ...bearer(adminToken), cookie: 'sid=victim', origin: 'https://evil.test', 'sec-fetch-site': 'cross-site' }, 'app.test'],
    ['admin token, cookie, Origin of the other site', '/admin/ws', { ...bearer(adminToken), cookie: 'sid=victim', origin: 'https://open.test' }, 'app.test'],
    ['no token, `..;` under /public', '/public/..;/admin/ws', {}, 'app.test'],
    ['no token, FULLWIDTH FULL STOPs under /public', '/public/%EF%BC%8E%EF%BC%8E/admin/ws', {}, 'app.test'],
  ];
  for (const [name, path, headers, sni] of cases) {
    const before = up.attempts.length;
    const status = await openWs(t, gw.port, gw.ca, path, headers, sni);
    // Let a dial that follows a 101 land before looking.
    await new Promise((r) => setTimeout(r, 50));
    const dialled = up.attempts.slice(before);
    const adminish = dialled.filter((url) => adminReadings({ url } as SeenRequest).length > 0);
    t.same(adminish, [], `${name}: status ${status}; the upstream was dialled for ${JSON.stringify(dialled)}`);
  }
  t.equal(open.attempts.length, 0, 'the open site upstream was never dialled either');
  // Control: an admin without cookies opens the same socket, and the upstream gets the canonical path.
  t.equal(await openWs(t, gw.port, gw.ca, '/admin/./ws', bearer(adminToken)), 101, 'control: admin opens /admin/./ws');
  t.equal(up.upgrades.at(-1)?.url, '/admin/ws');
});

// ---------------------------------------------------------------------------------------------
// 6. Reload

t.test('a reload that tightens the policy applies to the next request on connections already open (HTTP/1.1 keep-alive, HTTP/2, WebSocket)', async (t) => {
  const up = await startWsUpstream(t);
  const other = await startUpstream(t);
  const routesBefore = `      - { id: public, path: /public, access: public }
      - { id: admin, path: /admin, roles: [admin] }
      - { id: rest, path: /, access: deny }
`;
  const routesAfter = `      - { id: public, path: /public, access: deny }
      - { id: admin, path: /admin, roles: [superadmin] }
      - { id: rest, path: /, access: deny }
`;
  const gw = await startGateway(t, policy(up.origin, other.origin, routesBefore));
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: gw.ca, servername: 'app.test' } as https.AgentOptions);
  t.teardown(() => agent.destroy());
  const keepAlive = (path: string, headers: Record<string, string> = {}): Promise<{ status: number; reused: boolean }> =>
    new Promise((resolve, reject) => {
      const req = https.request({ host: '127.0.0.1', port: gw.port, path, agent, headers: { host: 'app.test', ...headers } }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode!, reused: req.reusedSocket }));
      });
      req.on('error', reject);
      req.end();
    });
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());

  t.equal((await keepAlive('/public/a')).status, 200, 'before: /public is public (HTTP/1.1)');
  t.equal((await keepAlive('/admin/a', bearer(adminToken))).status, 200, 'before: an admin may use /admin (its token is now cached)');
  t.equal((await h2(session, { ':method': 'GET', ':path': '/public/b' })).status, 200, 'before: /public over HTTP/2');
  t.equal((await h2(session, { ':method': 'GET', ':path': '/admin/b', ...bearer(adminToken) })).status, 200, 'before: /admin over HTTP/2');
  t.equal(await openWs(t, gw.port, gw.ca, '/admin/ws-before', bearer(adminToken)), 101, 'before: an admin opens a socket on /admin');
  const before = [...up.attempts];
  t.same(before, ['/public/a', '/admin/a', '/public/b', '/admin/b', '/admin/ws-before']);
  // The session's line comes when it has closed (the client closed it as it resolved): waited for,
  // so that the lines read below are the requests' own.
  await until(() => (gw as RunningGateway).logs.some((l) => l.type === 'access' && l.path === '/admin/ws-before'));

  writeFileSync(gw.configPath, policy(up.origin, other.origin, routesAfter));
  const { config } = await loadConfigFile(gw.configPath, process.env);
  await gw.gw.reload(config);

  const h1a = await keepAlive('/public/c');
  t.equal(h1a.status, 403, 'after: /public is denied on the same keep-alive connection');
  t.ok(h1a.reused, 'it was the same connection');
  t.equal((await keepAlive('/admin/c', bearer(adminToken))).status, 403, 'after: the cached admin token lacks the new role');
  t.equal(lastAccess(gw as RunningGateway)?.reason, 'insufficient_role', 'decided on the new rule');
  t.equal((await keepAlive('/%61dmin/c', bearer(adminToken))).status, 403, 'after: also through an encoding');
  t.equal((await h2(session, { ':method': 'GET', ':path': '/public/d' })).status, 403, 'after: /public denied on the same HTTP/2 session');
  t.equal((await h2(session, { ':method': 'GET', ':path': '/admin/d', ...bearer(adminToken) })).status, 403, 'after: /admin refused to admin on HTTP/2');
  t.equal(await openWs(t, gw.port, gw.ca, '/admin/ws-after', bearer(adminToken)), 403, 'after: a new socket on /admin is refused');
  t.equal(await openWs(t, gw.port, gw.ca, '/public/ws-after', {}), 403, 'after: a new socket on /public is refused');
  await new Promise((r) => setTimeout(r, 50));
  t.same(up.attempts, before, 'the upstream saw nothing after the reload');
  t.equal(other.seen.length, 0);
});
