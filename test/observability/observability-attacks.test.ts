// Adversarial round: logging and monitoring as an attack surface. Secrets that reach a log line
// (query names outside the fixed list, names PHP reads as `access_token`, IdP failures), log-line
// injection through raw bytes and token claims, security events and metrics under refusals
// (HTTP/1.1 and HTTP/2: once per refused request, the right request id, consistent counters),
// the security log's independence from `log.level`, the admin listener and the live exposition.
//
// Lines are captured as the BYTES the production logger writes (not parsed on the way), so a line
// break or a raw control character inside a value is seen as it would reach a file.
import t from 'tap';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfigFile } from '../../src/config/index.js';
import { createLogger } from '../../src/observability/logging.js';
import { buildGateway, type Gateway } from '../../src/gateway.js';
import { prepareCertificates } from '../../src/server/certificates.js';
import { LOOPBACK_LISTEN, closedPort, httpRequest, httpsRequest, rawTls, sleep, startUpstream, until, type ClientRequest, type ClientResponse, type Tap } from '../helpers/gateway.js';
import { h2Request, statuses } from '../helpers/clients.js';
import { authYaml, parseExposition, startIssuer, total, type Sample } from '../ops-e2e/_support.js';

type Line = Record<string, unknown>;

interface RawGateway {
  gw: Gateway;
  port: number;
  httpPort: number | null;
  adminPort: number | null;
  ca: string;
  /** Everything the main logger wrote, as bytes. */
  bytes(): Buffer;
  /** The main log split on '\n' only (what a line-oriented shipper sees), each line parsed. */
  lines(): Line[];
  request(opts: ClientRequest): Promise<ClientResponse>;
  session(t: Tap): http2.ClientHttp2Session;
}

/** The gateway as `portcullis start` builds it, its main log captured byte for byte. */
async function startRaw(t: Tap, yaml: string, level: 'debug' | 'info' | 'warn' | 'error' = 'debug'): Promise<RawGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-obs-attacks-'));
  const configPath = join(dir, 'gateway.yml');
  writeFileSync(configPath, yaml);
  const { config } = await loadConfigFile(configPath, process.env);
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(c: Buffer | string, _e, cb) {
      chunks.push(Buffer.isBuffer(c) ? Buffer.from(c) : Buffer.from(c, 'utf8'));
      cb();
    },
  });
  const logger = createLogger({ level, file: null }, stream);
  const certificates = await prepareCertificates(config, logger);
  const gw = await buildGateway({ config, logger, certificates });
  const addrs = await gw.listen();
  t.teardown(async () => {
    await gw.close(1000);
    rmSync(dir, { recursive: true, force: true });
  });
  const ca = readFileSync(join(config.tls.storage, 'local-ca', 'root.crt'), 'utf8');
  const bytes = (): Buffer => Buffer.concat(chunks);
  const lines = (): Line[] =>
    bytes()
      .toString('utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Line);
  return {
    gw,
    port: addrs.https.port,
    httpPort: addrs.http?.port ?? null,
    adminPort: addrs.admin?.port ?? null,
    ca,
    bytes,
    lines,
    request: async (opts) => {
      const res = await httpsRequest(addrs.https.port, ca, opts);
      const id = res.headers['x-request-id'];
      await until(() => bytes().includes(`"request_id":"${String(id)}"`), 1000);
      return res;
    },
    session: (tt) => {
      const s = http2.connect(`https://127.0.0.1:${addrs.https.port}`, { ca, servername: 'app.test' });
      s.on('error', () => undefined);
      tt.teardown(() => s.destroy());
      return s;
    },
  };
}

const publicSite = (origin: string, extra = ''): string => `${LOOPBACK_LISTEN}${extra}sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes: [{ path: /, access: public }]
`;

const accessLines = (g: RawGateway): Line[] => g.lines().filter((l) => l.type === 'access');
const eventsOf = (g: RawGateway, name?: string): Line[] => g.lines().filter((l) => l.security === true && (name === undefined || l.event === name));

async function scrapeAdmin(port: number, token?: string): Promise<Sample[]> {
  const res = await httpRequest(port, { path: '/metrics', headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  if (res.status !== 200) throw new Error(`scrape: ${res.status}`);
  return parseExposition(res.body);
}

// =============================================================================================
// 1. Secrets in the access line.

t.test('token-like query names outside a fixed list (accessToken, access-token, auth_token, oauth_token, private_token, api-key, X-Goog-Signature) are redacted in the access line', async (t) => {
  const up = await startUpstream(t);
  const g = await startRaw(t, publicSite(up.origin));
  // Names real APIs and frameworks use for credentials in a URL: camelCase and dashed spellings
  // of the listed ones (Express/Spring apps), OAuth 1.0 and GitLab tokens, Google Cloud Storage's
  // signed-URL signature (the twin of the listed X-Amz-Signature).
  const cases: Array<[string, string]> = [
    ['accessToken', 'SECRETcamel1'],
    ['access-token', 'SECRETdash2'],
    ['auth_token', 'SECRETauth3'],
    ['oauth_token', 'SECREToauth4'],
    ['private_token', 'SECRETgitlab5'],
    ['api-key', 'SECRETapikey6'],
    ['X-Goog-Signature', 'SECRETgoog7'],
    ['X-Goog-Credential', 'SECRETgoogcred8'],
  ];
  for (const [name, secret] of cases) await g.request({ path: `/q?${name}=${secret}` });
  // The plain-HTTP listener writes its own access line through the same redaction.
  await httpRequest(g.httpPort!, { path: '/login?accessToken=SECREThttp9' });
  await until(() => g.bytes().includes('"listener":"http"'), 1000);
  const text = g.bytes().toString('utf8');
  for (const [name, secret] of cases) t.notOk(text.includes(secret), `?${name}= is redacted in the access line`);
  t.notOk(text.includes('SECREThttp9'), '?accessToken= is redacted in the redirect listener line');
  // The listed names still are (control).
  await g.request({ path: '/q?access_token=SECRETlisted0' });
  t.notOk(g.bytes().toString('utf8').includes('SECRETlisted0'), 'access_token: redacted');
});

t.test('names PHP reads as access_token / password / client_secret (space for underscore, leading space) are redacted in the access line', async (t) => {
  // PHP's php_register_variable_ex drops leading spaces of a query name and turns inner spaces
  // and dots into underscores: `access+token=X` is $_GET['access_token'] to a PHP app. redactUrl
  // already counts `[`, `]` and `.` structured names (PHP, Rails, qs) as the plain one; the
  // space/`+` spelling of the same mangling is not.
  const up = await startUpstream(t);
  const g = await startRaw(t, publicSite(up.origin));
  const cases: Array<[string, string]> = [
    ['/q?access+token=SECRETphp1', 'SECRETphp1'],
    ['/q?access%20token=SECRETphp2', 'SECRETphp2'],
    ['/q?+password=SECRETphp3', 'SECRETphp3'],
    ['/q?client+secret=SECRETphp4', 'SECRETphp4'],
  ];
  for (const [path] of cases) await g.request({ path });
  const text = g.bytes().toString('utf8');
  for (const [path, secret] of cases) t.notOk(text.includes(secret), `${path.split('=')[0]}: the value is redacted`);
});

// =============================================================================================
// 2. Log injection and the shape of a line.

t.test('C1 control characters (NEL U+0085, CSI U+009B) and DEL from a request or a token are escaped in the access line and events, never written raw', async (t) => {
  // README: "a control character, a quote or a lone UTF-16 surrogate in a path or a host is
  // escaped, never written raw". JSON.stringify escapes only U+0000–U+001F: U+0085 (NEXT LINE,
  // a line break to Python's str.splitlines, Java's \R, and many log viewers) and U+009B (the
  // 8-bit CSI) go to the file as raw UTF-8. HTTP/2 carries them in `:path` (query, refused paths,
  // the 405 of an unknown method), a token in `sub`.
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const g = await startRaw(t, `${LOOPBACK_LISTEN}${authYaml(iss)}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /admin, roles: [admin] }
      - { path: /api, access: authenticated }
      - { path: /, access: public }
`);
  const s = g.session(t);
  await h2Request(s, { ':path': '/search?q=a\x85b' });
  await h2Request(s, { ':path': '/bad%2f\x85x' });
  await h2Request(s, { ':method': 'FOO', ':path': '/m?\x9b31m' });
  await h2Request(s, { ':path': '/other\x85', ':authority': 'other.test' });
  const token = await iss.token('mallory\u0085\u009b2J\u007f');
  await h2Request(s, { ':path': '/api/x', authorization: `Bearer ${token}` });
  await h2Request(s, { ':path': '/admin/x', authorization: `Bearer ${token}` });
  await until(() => accessLines(g).length >= 6 && eventsOf(g, 'access_denied').length >= 1, 2000);
  const text = g.bytes().toString('utf8');
  // Every line still parses (JSON allows these raw), and carries the values…
  const lines = g.lines();
  t.equal(lines.filter((l) => l.type === 'access').length, 6, 'six access lines');
  t.ok(lines.some((l) => l.type === 'access' && l.user === 'mallory\u0085\u009b2J\u007f'), 'the sub is logged (decoded) as it is');
  // …but not as raw control characters.
  const raw = [...text].filter((c) => /[\u007f-\u009f]/.test(c));
  t.same(
    raw.map((c) => `U+${c.charCodeAt(0).toString(16).padStart(4, '0')}`),
    [],
    'no raw DEL/C1 control character in any line (each written as \\u0085 and the like)',
  );
  const split = text.split(/\r\n|[\n\r\u0085\u2028\u2029]/).filter((l) => l !== '');
  t.equal(split.length, lines.length, `a Unicode-aware line splitter sees as many lines as were written (${split.length} vs ${lines.length})`);
});

t.test('one request, one parseable JSON access line: quotes, backslashes, JSON look-alikes, long values, forged X-Request-Id, a sub carrying a forged line', async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const g = await startRaw(t, `${LOOPBACK_LISTEN}${authYaml(iss)}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /admin, roles: [admin] }
      - { path: /api, access: authenticated }
      - { path: /, access: public }
`);
  const forged = '{"level":"warn","security":true,"event":"config_reloaded","ip":"10.0.0.1"}';
  const s = g.session(t);
  const results = await Promise.all([
    h2Request(s, { ':path': `/p"${encodeURIComponent(forged)}?a="}{"b":1\\&${forged}`, 'x-request-id': 'forged-id' }),
    h2Request(s, { ':path': `/p\\q"${forged}` }),
    h2Request(s, { ':path': `/long/${'a'.repeat(12_000)}` }),
    h2Request(s, { ':method': `X${'Y'.repeat(3000)}`, ':path': '/m' }),
    h2Request(s, { ':path': '/api/1', authorization: `Bearer ${await iss.token(`alice\n${forged}\r\n`)}` }),
    h2Request(s, { ':path': '/admin/1', authorization: `Bearer ${await iss.token(`bob"},"security":false,"x":{"`)}` }),
  ]);
  t.same(results.map((r) => r.status), [200, 400, 200, 405, 200, 403]);
  await until(() => accessLines(g).length >= 6, 2000);
  const text = g.bytes().toString('utf8');
  const rawLines = text.split('\n').filter((l) => l !== '');
  const parsed = rawLines.map((l) => JSON.parse(l) as Line);
  const access = parsed.filter((l) => l.type === 'access');
  t.equal(access.length, 6, 'exactly one access line per request');
  t.same(access.map((l) => l.request_id).sort(), results.map((r) => r.headers['x-request-id']).sort(), 'each line has its answer\'s request id');
  t.notOk(access.some((l) => l.request_id === 'forged-id'), 'a client X-Request-Id (untrusted peer) is not logged as the id');
  // Only what was really emitted is a security event.
  const events = parsed.filter((l) => l.security === true);
  t.same(events.map((e) => e.event), ['access_denied'], 'the one refusal, nothing forged');
  t.equal(events[0]?.user, `bob"},"security":false,"x":{"`, 'the hostile sub is one string field');
  t.ok(access.some((l) => l.user === `alice\n${forged}\r\n`), 'a sub with CR/LF stays in its line');
  // Bounded: the longest line is the 12 000-character path, nothing grows beyond the request.
  const longest = Math.max(...rawLines.map((l) => Buffer.byteLength(l)));
  t.ok(longest < 16 * 1024, `longest line ${longest} bytes (< max_header_size)`);
});

// =============================================================================================
// 3. Security events and metrics: once per refused request, consistent counters.

t.test('HTTP/2 and HTTP/1.1: one event per refused request with its request id, counters moved by as much, none on the healthy path', async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const g = await startRaw(t, `${LOOPBACK_LISTEN}${authYaml(iss)}sites:
  - id: app
    hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: admin, path: /admin, roles: [admin] }
      - { id: denied, path: /denied, access: deny }
      - { id: api, path: /api, access: authenticated }
      - { id: limited, path: /limited, access: public, rate_limit: { max: 2, window: 1m, key: ip } }
      - { id: login, path: /login, access: authenticated, bans: { auth_failures: 3, window: 1m, duration: 1m } }
      - { id: form, path: /form, access: public }
      - { id: root, path: /, access: public }
`);
  const user = `Bearer ${await iss.token('carol', { roles: ['user'] })}`;
  const bad = 'Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
  const before = await scrapeAdmin(g.adminPort!);

  // Healthy traffic first: authenticated, public, a POST without cookies: no event.
  const s = g.session(t);
  const healthy = await Promise.all([
    h2Request(s, { ':path': '/api/ok', authorization: user }),
    h2Request(s, { ':path': '/public' }),
    h2Request(s, { ':method': 'POST', ':path': '/form', origin: 'https://evil.test' }, 'a=1'),
    h2Request(s, { ':path': '/limited/1' }),
    h2Request(s, { ':path': '/limited/2' }),
  ]);
  t.same(healthy.map((r) => r.status), [200, 200, 200, 200, 200]);
  await sleep(100);
  t.same(eventsOf(g).map((e) => e.event), [], 'no event for the healthy path');

  // Refusals, concurrently on one HTTP/2 connection.
  const refused = {
    auth_failed: await Promise.all(Array.from({ length: 4 }, (_v, i) => h2Request(s, { ':path': `/api/bad${i}`, authorization: bad }))),
    access_denied: await Promise.all([
      ...Array.from({ length: 3 }, (_v, i) => h2Request(s, { ':path': `/admin/${i}`, authorization: user })),
      ...Array.from({ length: 2 }, (_v, i) => h2Request(s, { ':path': `/denied/${i}` })),
    ]),
    csrf_rejected: await Promise.all(
      Array.from({ length: 3 }, (_v, i) => h2Request(s, { ':method': 'POST', ':path': `/form/${i}`, cookie: 'sid=1', origin: 'https://evil.test', 'sec-fetch-site': 'cross-site' }, 'a=1')),
    ),
    rate_limited: await Promise.all(Array.from({ length: 3 }, (_v, i) => h2Request(s, { ':path': `/limited/x${i}` }))),
  };
  t.same(refused.auth_failed.map((r) => r.status), [401, 401, 401, 401]);
  t.same(refused.access_denied.map((r) => r.status), [403, 403, 403, 403, 403]);
  t.same(refused.csrf_rejected.map((r) => r.status), [403, 403, 403]);
  t.same(refused.rate_limited.map((r) => r.status), [429, 429, 429]);

  // Two Authorization fields over HTTP/1.1: 400 and auth_failed (README's events table).
  const raw = await rawTls(g.port, g.ca, `GET /api/dup HTTP/1.1\r\nHost: app.test\r\nAuthorization: ${user}\r\nAuthorization: ${bad}\r\nConnection: close\r\n\r\n`, { waitMs: 1500 });
  t.same(statuses(raw), [400], 'two Authorization fields: 400');
  const dupId = /x-request-id: (\S+)/i.exec(raw)?.[1];

  await sleep(150);
  for (const [name, rs] of Object.entries(refused)) {
    const ids = eventsOf(g, name).map((e) => e.request_id);
    const want = rs.map((r) => r.headers['x-request-id']);
    if (name === 'auth_failed') want.push(dupId);
    t.same([...ids].sort(), [...want].sort(), `${name}: one event per refused request, with its request id`);
  }

  const after = await scrapeAdmin(g.adminPort!);
  const delta = (name: string, match: Record<string, string> = {}): number => total(after, name, match) - total(before, name, match);
  t.equal(delta('portcullis_auth_failures_total'), 5, 'auth failures counted once each (4 bad tokens + the duplicate header)');
  t.equal(delta('portcullis_access_denied_total', { site: 'app' }), 5, 'access denials: 3 missing role + 2 access: deny');
  t.equal(delta('portcullis_access_denied_total', { route: 'denied' }), 2);
  t.equal(delta('portcullis_csrf_rejected_total', { site: 'app' }), 3);
  t.equal(delta('portcullis_rate_limited_total', { route: 'limited' }), 3);
  t.equal(delta('portcullis_http_requests_total', { route: 'limited', status: '429' }), 3);
  t.equal(delta('portcullis_http_requests_total', { route: 'admin', status: '403' }), 3);

  // Bans: the third failure bans; every later request is one `banned` event and one 429 count.
  const login = await Promise.all(Array.from({ length: 3 }, (_v, i) => h2Request(s, { ':path': `/login/${i}`, authorization: bad })));
  t.same(login.map((r) => r.status), [401, 401, 401]);
  const whileBanned = await Promise.all(Array.from({ length: 4 }, (_v, i) => h2Request(s, { ':path': `/login/b${i}`, authorization: user })));
  t.same(whileBanned.map((r) => r.status), [429, 429, 429, 429]);
  await sleep(150);
  const banned = eventsOf(g, 'banned');
  t.equal(banned.filter((e) => e.reason === 'auth_failures').length, 1, 'one ban issued');
  t.same(banned.filter((e) => e.reason === 'ban_active').map((e) => e.request_id).sort(), whileBanned.map((r) => r.headers['x-request-id']).sort(), 'one ban_active event per refused request');
  const end = await scrapeAdmin(g.adminPort!);
  t.equal(total(end, 'portcullis_rate_limited_total', { route: 'login' }), 4, 'the ban refusals are counted as 429s of their route');
  t.equal(total(end, 'portcullis_bans_active'), 1);
  t.same(eventsOf(g).filter((e) => e.ip !== '127.0.0.1').map((e) => e.event), [], 'every event names the client address');
});

t.test('log.level error (or warn) does not silence the security-event log in the main log', async (t) => {
  // README: security events go "to the main log, or to log.security_file", one line per event.
  // With a security_file, openSecurityLog gives the file its own logger at level info whatever
  // log.level says; without one, events went through a child of the main logger and inherited
  // its level: with log.level error, auth_failed/access_denied/rate_limited/csrf_rejected (warn)
  // were dropped — an operator quieting the access log lost the security log with it.
  const up = await startUpstream(t);
  const g = await startRaw(
    t,
    `${LOOPBACK_LISTEN}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /denied, access: deny }
      - { path: /, access: public }
`,
    'error',
  );
  const r = await g.request({ path: '/denied' });
  t.equal(r.status, 403);
  await sleep(100);
  t.equal(eventsOf(g, 'access_denied').length, 1, 'the access_denied event is written');

  // The same gateway with a security_file: the event is there (control: the file ignores log.level).
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-obs-sec-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'security.log');
  const g2 = await startRaw(
    t,
    `${LOOPBACK_LISTEN}log: { security_file: ${file} }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /denied, access: deny }
      - { path: /, access: public }
`,
    'error',
  );
  t.equal((await g2.request({ path: '/denied' })).status, 403);
  t.ok(await until(() => existsSync(file) && readFileSync(file, 'utf8').includes('"event":"access_denied"'), 2000), 'with security_file, the event is written at log.level error');
});

// =============================================================================================
// 4. Secrets when the IdP fails.

t.test('introspection endpoint failing (500 echoing the request, unreachable, timeout): no client_secret, Basic credential or token in any line', async (t) => {
  const clientSecret = 'INTROSPECTsecret-7f3a9c';
  const basic = Buffer.from(`gateway:${clientSecret}`).toString('base64');
  let mode: 'echo' | 'hang' = 'echo';
  const held: http.ServerResponse[] = [];
  const idp = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url === '/jwks') return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"keys":[]}');
      if (mode === 'hang') return void held.push(res);
      // A broken IdP that echoes what it got (headers and body) in its error answer.
      res.writeHead(500, { 'content-type': 'application/json', 'x-echo-auth': String(req.headers.authorization) });
      res.end(JSON.stringify({ error: 'server_error', got: Buffer.concat(chunks).toString(), authorization: req.headers.authorization }));
    });
  });
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const h of held) h.destroy();
    idp.closeAllConnections();
    idp.close(() => r());
  }));
  const base = `http://127.0.0.1:${(idp.address() as net.AddressInfo).port}`;
  const down = await closedPort();
  const up = await startUpstream(t);
  const issuerBlock = (name: string, endpoint: string): string => `    - issuer: https://${name}.idp.test
      audiences: [api]
      algorithms: [ES256]
      jwks_uri: ${base}/jwks
      introspection:
        endpoint: ${endpoint}
        client_id: gateway
        client_secret: \${INTRO_SECRET}
`;
  process.env.INTRO_SECRET = clientSecret;
  t.teardown(() => delete process.env.INTRO_SECRET);
  const g = await startRaw(t, `${LOOPBACK_LISTEN}auth:
  issuers:
${issuerBlock('echo', `${base}/introspect`)}${issuerBlock('down', `http://127.0.0.1:${down}/introspect`)}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: authenticated }]
`);
  const opaque = 'opaqueSECRETtoken-1234567890abcdef';
  const r1 = await g.request({ path: '/x', headers: { authorization: `Bearer ${opaque}` } });
  t.equal(r1.status, 503, 'the IdP failing is a 503, not a denial');
  mode = 'hang';
  const r2 = await g.request({ path: '/y', headers: { authorization: `Bearer ${opaque}2` } });
  t.ok(r2.status === 503, `a hanging IdP: 503 (${r2.status})`);
  await sleep(100);
  const text = g.bytes().toString('utf8');
  t.match(text, /introspection failed/, 'the failure is logged');
  t.notOk(text.includes(clientSecret), 'no client_secret');
  t.notOk(text.includes(basic), 'no Basic credential');
  t.notOk(text.includes(opaque), 'no opaque token');
  t.notOk(text.includes(encodeURIComponent(opaque)), 'no opaque token (form-encoded)');
});

// =============================================================================================
// 5. The admin listener and the live exposition.

t.test('admin /metrics: the token only in an Authorization Bearer header; HEAD; other places for the token; the listener speaks no HTTP/2', async (t) => {
  const up = await startUpstream(t);
  const token = 'm3trics-T0ken';
  const g = await startRaw(t, publicSite(up.origin, `admin: { metrics_token: "${token}" }\n`));
  const a = g.adminPort!;
  const get = (path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<ClientResponse> => httpRequest(a, { path, headers, method });
  for (const [what, res] of [
    ['token in the query (token=)', await get(`/metrics?token=${token}`)],
    ['token in the query (access_token=)', await get(`/metrics?access_token=${token}`)],
    ['token in a cookie', await get('/metrics', { cookie: `token=${token}` })],
    ['token in X-Metrics-Token', await get('/metrics', { 'x-metrics-token': token })],
    ['token in Proxy-Authorization', await get('/metrics', { 'proxy-authorization': `Bearer ${token}` })],
    ['token as Basic user', await get('/metrics', { authorization: `Basic ${Buffer.from(`${token}:`).toString('base64')}` })],
    ['token with a tab', await get('/metrics', { authorization: `Bearer\t${token}` })],
    ['a prefix of the token', await get('/metrics', { authorization: `Bearer ${token.slice(0, -1)}` })],
    ['the token plus a character', await get('/metrics', { authorization: `Bearer ${token}x` })],
    ['the token upper-cased', await get('/metrics', { authorization: `Bearer ${token.toUpperCase()}` })],
  ] as const) {
    t.equal(res.status, 401, `${what}: 401`);
    t.notMatch(res.body, /portcullis_/, `${what}: no metrics`);
    t.equal(res.headers['www-authenticate'], 'Bearer realm="metrics"');
  }
  t.equal((await get('/metrics', { authorization: `bearer ${token}` })).status, 200, 'the scheme is case-insensitive (RFC 9110 §11.1)');
  const head = await get('/metrics', { authorization: `Bearer ${token}` }, 'HEAD');
  t.equal(head.status, 200);
  t.equal(head.body, '', 'HEAD: no body');
  const headNo = await get('/metrics', {}, 'HEAD');
  t.equal(headNo.status, 401, 'HEAD without the token: 401');
  const om = await get('/metrics', { authorization: `Bearer ${token}`, accept: 'application/openmetrics-text; version=1.0.0' });
  t.equal(om.status, 200);
  t.match(om.headers['content-type'], /^text\/plain; version=0\.0\.4/, 'always the text format it documents');
  t.notOk(g.bytes().toString('utf8').includes(token), 'the metrics token never reaches the log');

  // HTTP/2 prior knowledge to the admin port: refused, nothing served.
  const s = http2.connect(`http://127.0.0.1:${a}`);
  s.on('error', () => undefined);
  t.teardown(() => s.destroy());
  const h2 = await new Promise<{ status: number; body: string; error?: string }>((resolve) => {
    const req = s.request({ ':path': '/metrics', authorization: `Bearer ${token}` });
    let body = '';
    let status = 0;
    req.on('response', (h) => (status = Number(h[':status'])));
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('close', () => resolve({ status, body }));
    req.on('error', (e) => resolve({ status, body, error: e.message }));
    req.end();
  });
  t.notMatch(h2.body, /portcullis_/, `HTTP/2 prior knowledge: no metrics (status ${h2.status}${h2.error ? `, ${h2.error}` : ''})`);
  t.equal((await get('/healthz')).status, 200, 'the listener still serves');
});

const PROMTOOL = '/usr/bin/promtool';

t.test('promtool check metrics: the live exposition after every kind of refusal and failure is lint-clean and carries no client input', { skip: existsSync(PROMTOOL) ? false : 'promtool missing (apt-get install prometheus)' }, async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const down = await closedPort();
  const g = await startRaw(t, `${LOOPBACK_LISTEN}${authYaml(iss)}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /down, access: public, upstream: "http://127.0.0.1:${down}" }
      - { path: /admin, roles: [admin] }
      - { path: /limited, access: public, rate_limit: { max: 1, window: 1m, key: "header:x-api-key" } }
      - { path: /, access: public }
`);
  const s = g.session(t);
  const user = `Bearer ${await iss.token('dave')}`;
  await Promise.all([
    h2Request(s, { ':path': '/down/x"y' }),
    h2Request(s, { ':path': '/admin', authorization: user }),
    h2Request(s, { ':path': '/admin', authorization: 'Bearer a.b.c' }),
    h2Request(s, { ':path': '/limited', 'x-api-key': 'k"\\\n' }),
    h2Request(s, { ':path': '/limited', 'x-api-key': 'k"\\\n' }),
    h2Request(s, { ':method': 'BREW', ':path': '/pot' }),
    h2Request(s, { ':path': '/x', ':authority': 'evil"label.test' }),
    h2Request(s, { ':method': 'POST', ':path': '/form', cookie: 'a=1', 'sec-fetch-site': 'cross-site' }, 'x'),
  ]);
  await sleep(100);
  const body = (await httpRequest(g.adminPort!, { path: '/metrics' })).body;
  t.notMatch(body, /evil|BREW|x"y|k\\"/, 'no client input in the exposition');
  const out = await new Promise<{ code: number; text: string }>((resolve) => {
    const p = spawn(PROMTOOL, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let text = '';
    p.stdout.on('data', (d: Buffer) => (text += d.toString()));
    p.stderr.on('data', (d: Buffer) => (text += d.toString()));
    p.on('close', (code) => resolve({ code: code ?? -1, text }));
    p.stdin.end(body);
  });
  t.equal(out.code, 0, out.text);
  t.equal(out.text.trim(), '', 'no lint findings');
});
