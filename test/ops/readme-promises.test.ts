// README promises that no other test checked, run against the real gateway (and the real command
// line, from source): the demo walk-through, reload of what the README says is reloaded, the
// second-signal exit, the defaults of `rate_limit: {}` / `bans: {}`, and the event, access-log and
// timeout details the README states. Written by a review that found six of these untrue; each was
// fixed in the code (a warning for a literal secret, for a reload of a restart-only setting, the
// log level reloaded) or in the README, and its test now checks what the README says.
import t from 'tap';
import tls from 'node:tls';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigFile } from '../../src/config/index.js';
import { prepareCertificates } from '../../src/server/certificates.js';
import { createEchoServer, listen } from '../../src/demo/echo-upstream.js';
import { startDemoIdp } from '../../src/demo/idp.js';
import { freePort } from '../helpers/ports.mjs';
import { main } from '../../src/cli.js';
import { CLI_SKIP, spawnCli, type CliProcess } from '../ops-e2e/_support.js';
import {
  LOOPBACK_LISTEN,
  closedPort,
  httpRequest,
  httpsRequest,
  memoryLogger,
  rawTls,
  sleep,
  startGateway,
  startUpstream,
  until,
  type RunningGateway,
  type Tap,
} from '../helpers/gateway.js';

const ROOT = join(import.meta.dirname, '..', '..');

function tmp(t: Tap): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-readme-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const publicSite = (origin: string, extra = ''): string => `${LOOPBACK_LISTEN}${extra}
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes: [{ path: /, access: public }, { path: /denied, access: deny }]
`;

/** The protocol a TLS client limited to `maxVersion` gets, or `refused`. */
function handshake(port: number, ca: string, maxVersion: tls.SecureVersion): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca, servername: 'app.test', maxVersion, ALPNProtocols: ['http/1.1'] }, () => {
      resolve(String(s.getProtocol()));
      s.destroy();
    });
    s.on('error', () => resolve('refused'));
  });
}

/** `portcullis start` (the built CLI, as the image runs it), its stdout parsed as JSON log lines. */
function startCli(t: Tap, file: string): CliProcess {
  if (CLI_SKIP) throw new Error(CLI_SKIP);
  return spawnCli(t, ['start', '--config', file], {});
}

const startedPort = (line: Record<string, unknown>, which: 'https' | 'admin'): number => (line[which] as { port: number }).port;

// ---------------------------------------------------------------------------------------------
// Quick start: "What the demo shows" — config/demo.yml, the echo app and the demo OpenID provider
// ---------------------------------------------------------------------------------------------

t.test('the demo walk-through: config/demo.yml in front of the echo app and the demo IdP answers as the README says', async (t) => {
  const echo = createEchoServer();
  const echoPort = await listen(echo, 0);
  t.teardown(() => new Promise<void>((r) => { echo.closeAllConnections(); echo.close(() => r()); }));
  const idp = await startDemoIdp(await freePort());
  t.teardown(() => idp.close());
  // config/demo.yml as shipped, but on ephemeral loopback ports, its storage in the test's dir.
  const shipped = readFileSync(join(ROOT, 'config', 'demo.yml'), 'utf8');
  const yaml = shipped
    .replace(/listen:\n {2}https: 127\.0\.0\.1:8443\n {2}http: 127\.0\.0\.1:8080\n {2}admin: 127\.0\.0\.1:9090\n/, LOOPBACK_LISTEN)
    .replace('storage: ../certs', 'storage: ./certs')
    .replace('issuer: http://127.0.0.1:3001', `issuer: ${idp.issuer}`)
    .replace('upstream: http://127.0.0.1:3000', `upstream: http://127.0.0.1:${echoPort}`);
  t.not(yaml, shipped);
  t.match(yaml, LOOPBACK_LISTEN, 'listeners moved to ephemeral ports');
  t.match(yaml, idp.issuer);
  const gw = await startGateway(t, yaml);
  t.ok(gw.logs.some((l) => l.level === 'warn' && /LOCAL DEVELOPMENT CA/.test(String(l.msg))), 'the local development CA is said loudly');
  const get = (path: string, token?: string): ReturnType<RunningGateway['request']> =>
    gw.request({ path, host: 'localhost', headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  const token = async (client: string, secret: string): Promise<string> => {
    const res = await fetch(`${idp.issuer}/token`, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`${client}:${secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=client_credentials',
    });
    t.equal(res.status, 200, `${client} gets a token`);
    return ((await res.json()) as { access_token: string }).access_token;
  };

  // curl https://localhost:8443/hello — public: see the headers the app gets
  const hello = await get('/hello');
  t.equal(hello.status, 200);
  const seen = JSON.parse(hello.body) as { url: string; headers: Record<string, string> };
  t.equal(seen.url, '/hello');
  t.equal(seen.headers['x-forwarded-proto'], 'https');
  t.notOk('server' in hello.headers || 'x-powered-by' in hello.headers, 'the echo app\'s Server / X-Powered-By are removed');

  // curl -i https://localhost:8443/api/orders — 401 + WWW-Authenticate
  const anon = await get('/api/orders');
  t.equal(anon.status, 401);
  t.equal(anon.headers['www-authenticate'], 'Bearer realm="portcullis"');

  // demo-user's token: 200 with X-Auth-User/Email/Roles/Issuer
  const user = await token('demo-user', 'demo-user-secret');
  const orders = await get('/api/orders', user);
  t.equal(orders.status, 200);
  const ids = (JSON.parse(orders.body) as { headers: Record<string, string> }).headers;
  t.same(
    { user: ids['x-auth-user'], email: ids['x-auth-email'], roles: ids['x-auth-roles'], issuer: ids['x-auth-issuer'] },
    { user: 'demo-user', email: 'user@demo.localhost', roles: 'user', issuer: idp.issuer },
  );
  t.equal(orders.headers['ratelimit-limit'], '60', 'the api route\'s key: user limit');

  // /admin with the user's token: 403 insufficient_scope; demo-admin's token has role admin
  const forbidden = await get('/admin', user);
  t.equal(forbidden.status, 403);
  t.match(String(forbidden.headers['www-authenticate']), /error="insufficient_scope"/);
  const admin = await token('demo-admin', 'demo-admin-secret');
  t.equal((await get('/admin', admin)).status, 200);

  // curl -i http://localhost:8080/hello — 301 → https://localhost:8443/hello
  const redirect = await httpRequest(gw.httpPort!, { path: '/hello', host: 'localhost:8080' });
  t.equal(redirect.status, 301);
  t.equal(redirect.headers.location, `https://localhost:${gw.port}/hello`);

  // curl http://127.0.0.1:9090/metrics | grep portcullis_
  const metrics = await httpRequest(gw.adminPort!, { path: '/metrics', host: '127.0.0.1' });
  t.match(metrics.body, /^portcullis_http_requests_total\{site="demo",route="api",method="GET",status="200"\} 1$/m);

  // demo.yml: "10 bad tokens in 5 minutes from one address → 429 for a minute"
  const bad: number[] = [];
  for (let i = 0; i < 11; i++) bad.push((await get('/api/orders', 'not-a-token')).status);
  t.same(bad, [...Array<number>(10).fill(401), 429]);
  const banned = await get('/api/orders', admin);
  t.equal(banned.status, 429, 'banned, even with a good token');
  t.equal(banned.headers['retry-after'], '60');

  // node dist/cli.js explain -c config/demo.yml --url https://localhost/admin/x --roles user (no --method)
  let out = '';
  const code = await main(['explain', '-c', join(ROOT, 'config', 'demo.yml'), '--url', 'https://localhost/admin/x', '--roles', 'user'], {
    out: (s) => (out += s),
    err: (s) => (out += s),
  });
  t.equal(code, 1, 'denied');
  t.match(out, /^request: +GET localhost\/admin\/x$/m, 'GET when --method is left out');
  t.match(out, /^canonical path: \/admin\/x$/m);
  t.match(out, /^route: +admin +path \/admin /m);
  t.match(out, /^requires: +a valid token with any of roles: admin$/m);
  t.match(out, /^decision: +DENY \(403\) reason=insufficient_role$/m);
});

// ---------------------------------------------------------------------------------------------
// Command line: reload ("the new file is validated and swapped in atomically"; only listener
// addresses, three limits and timeouts.connect/idle are named as needing a restart)
// ---------------------------------------------------------------------------------------------

t.test('tls.min_version: TLSv1.3 at start: the gateway refuses a TLS 1.2 client', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, publicSite(up.origin, 'tls: { min_version: TLSv1.3 }\n'));
  t.equal(await handshake(gw.port, gw.ca, 'TLSv1.2'), 'refused');
  t.equal(await handshake(gw.port, gw.ca, 'TLSv1.3'), 'TLSv1.3');
});

t.test('tls.min_version raised by a reload: new handshakes get the new floor at once, as the README says (not on its restart-only list)', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, publicSite(up.origin));
  t.equal(await handshake(gw.port, gw.ca, 'TLSv1.2'), 'TLSv1.2', 'TLS 1.2 accepted by default');
  writeFileSync(gw.configPath, publicSite(up.origin, 'tls: { min_version: TLSv1.3, hsts: { max_age: 1d } }\n'));
  // Exactly what `portcullis start` does on SIGHUP (src/cli.ts reload).
  const { config } = await loadConfigFile(gw.configPath);
  await prepareCertificates(config, memoryLogger([]), gw.gw.certificates);
  await gw.gw.reload(config);
  const res = await gw.request({ path: '/' });
  t.equal(res.headers['strict-transport-security'], 'max-age=86400; includeSubDomains', 'the reload was applied (HSTS changed)');
  t.equal(await handshake(gw.port, gw.ca, 'TLSv1.2'), 'refused', 'a TLS 1.2 client is refused after the reload');
  t.equal(await handshake(gw.port, gw.ca, 'TLSv1.3'), 'TLSv1.3');
  t.notOk(gw.logs.some((l) => /takes effect on the next restart/.test(String(l.msg))), 'nothing is said to need a restart');
});

t.test('a SIGHUP reload applies log.level at once, and a new log.security_file (events move there; nothing is said to need a restart)', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const file = join(dir, 'gw.yml');
  const security = join(dir, 'security.log');
  const yaml = (log: string): string => `listen: { https: 127.0.0.1:0, http: null, admin: null }
tls: { storage: ${join(dir, 'certs')} }
log: ${log}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }, { path: /denied, access: deny }]
`;
  writeFileSync(file, yaml('{ level: info }'));
  const cli = startCli(t, file);
  const port = startedPort(await cli.waitForLog((l) => l.msg === 'portcullis started'), 'https');
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  t.equal((await httpsRequest(port, ca, { path: '/before' })).status, 200);
  await cli.waitForLog((l) => l.type === 'access' && l.path === '/before');

  writeFileSync(file, yaml(`{ level: warn, security_file: ${security} }`));
  cli.child.kill('SIGHUP');
  // An info event, written all the same: security events are an audit trail only `silent` quiets.
  await until(() => existsSync(security) && readFileSync(security, 'utf8').includes('"event":"config_reloaded"'), 10_000);
  t.equal((await httpsRequest(port, ca, { path: '/after' })).status, 200);
  t.equal((await httpsRequest(port, ca, { path: '/denied' })).status, 403);
  await sleep(500);
  t.notOk(cli.logs().some((l) => l.type === 'access' && l.path === '/after'), 'log.level: warn applies: no info access line for a request after the reload');
  t.notOk(cli.logs().some((l) => /takes effect on the next restart/.test(String(l.msg))), 'nothing is said to need a restart');
  await until(() => readFileSync(security, 'utf8').includes('"event":"access_denied"'), 10_000);
  t.match(readFileSync(security, 'utf8'), /"event":"access_denied"/, 'the access_denied event goes to the new security log');
  t.notOk(cli.logs().some((l) => l.event === 'access_denied'), 'and no longer to the main log');
  cli.child.kill('SIGTERM');
  t.equal((await cli.exited).code, 0);
});

t.test('SIGTERM then a second SIGTERM: the gateway exits at once, without waiting for shutdown_grace', async (t) => {
  const dir = tmp(t);
  let held = false;
  const up = await startUpstream(t, (req, res) => {
    if (req.url === '/slow') {
      held = true; // never answered: only the grace period could end it
      return;
    }
    res.end('ok');
  });
  const file = join(dir, 'gw.yml');
  writeFileSync(file, `listen: { https: 127.0.0.1:0, http: null, admin: null }
shutdown_grace: 30s
tls: { storage: ${join(dir, 'certs')} }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  const cli = startCli(t, file);
  const port = startedPort(await cli.waitForLog((l) => l.msg === 'portcullis started'), 'https');
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  const inflight = httpsRequest(port, ca, { path: '/slow' }).then(() => 'answered', () => 'cut');
  t.ok(await until(() => held, 5000), 'a request is in flight');
  const t0 = Date.now();
  cli.child.kill('SIGTERM');
  await cli.waitForLog((l) => l.msg === 'shutting down');
  cli.child.kill('SIGTERM');
  const { code } = await cli.exited;
  t.ok(Date.now() - t0 < 5000, `exited ${Date.now() - t0} ms after the first signal (grace: 30 s)`);
  t.not(code, null, 'exited by itself, not killed by the signal');
  t.equal(await inflight, 'cut');
});

// ---------------------------------------------------------------------------------------------
// Configuration reference: the defaults of an empty `rate_limit: {}` / `bans: {}`, auth.realm
// ---------------------------------------------------------------------------------------------

const bansSite = async (t: Tap): Promise<RunningGateway> => {
  const up = await startUpstream(t);
  const dead = await closedPort();
  return startGateway(t, `${LOOPBACK_LISTEN}
auth:
  realm: shop
  issuers:
    - { issuer: "https://id.test", audiences: [a], algorithms: [ES256], jwks_uri: "https://127.0.0.1:${dead}/jwks" }
rate_limit: {}
bans: {}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /pub, access: public }, { path: /, rate_limit: null }]
`);
};

t.test('rate_limit: {} is 100 per 1m by ip; bans: {} bans after 10 failures for 15m; auth.realm names the realm', async (t) => {
  const gw = await bansSite(t);
  const pub = await gw.request({ path: '/pub' });
  t.same(
    [pub.headers['ratelimit-limit'], pub.headers['ratelimit-remaining'], pub.headers['ratelimit-reset']],
    ['100', '99', '60'],
  );
  const statuses: number[] = [];
  let last = pub;
  for (let i = 0; i < 11; i++) {
    last = await gw.request({ path: '/orders', headers: { authorization: 'Bearer not-a-jwt' } });
    statuses.push(last.status);
    if (i === 0) t.equal(last.headers['www-authenticate'], 'Bearer realm="shop", error="invalid_token", error_description="The access token is invalid"');
  }
  t.same(statuses, [...Array<number>(10).fill(401), 429]);
  t.equal(last.headers['retry-after'], '900', '15 minutes');
});

t.test('the `banned` event (README events table): the ban, with duration_ms and failures, then one per request refused during it', async (t) => {
  const gw = await bansSite(t);
  for (let i = 0; i < 13; i++) await gw.request({ path: '/orders', headers: { authorization: 'Bearer not-a-jwt' } });
  const banned = gw.logs.filter((l) => l.security === true && l.event === 'banned');
  t.same(banned.map((e) => e.reason), ['auth_failures', 'ban_active', 'ban_active', 'ban_active'], 'the 10th failure bans; requests 11-13 are refused');
  const [ban] = banned;
  t.equal(ban?.duration_ms, 900_000, 'duration_ms');
  t.equal(ban?.failures, 10, 'failures');
  t.ok(banned.every((e) => typeof e.key === 'string' && e.key === ban?.key), 'every event names the same key');
});

t.test('a literal secret in the file is not accepted silently ("secrets only from the environment or Docker secret files"): validate names it', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'gw.yml');
  writeFileSync(file, `listen: { https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }
admin: { metrics_token: literal-metrics-token }
auth:
  issuers:
    - issuer: https://id.test
      audiences: [a]
      algorithms: [ES256]
      introspection: { endpoint: "https://id.test/introspect", client_id: gw, client_secret: literal-client-secret }
sites:
  - hosts: [app.test]
    upstream: http://127.0.0.1:9
`);
  let out = '';
  const code = await main(['validate', '--config', file], { out: (s) => (out += s), err: (s) => (out += s) });
  t.notOk(out.includes('literal-client-secret') || out.includes('literal-metrics-token'), 'the values are never echoed');
  // Refused (exit 1) or at least warned about: either way the key is named.
  t.comment(`validate exit ${code}`);
  t.match(out, /admin\.metrics_token/, 'the literal metrics token is named');
  t.match(out, /introspection\.client_secret/, 'the literal client secret is named');
});

// ---------------------------------------------------------------------------------------------
// Access log and upstream timeouts
// ---------------------------------------------------------------------------------------------

t.test('the access line\'s `http` is the version the client spoke (README Access log): 1.0 for an HTTP/1.0 client', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, publicSite(up.origin));
  const raw = await rawTls(gw.port, gw.ca, 'GET /ten HTTP/1.0\r\nHost: app.test\r\n\r\n', { waitMs: 1500 });
  t.match(raw, /^HTTP\/1\.1 200 /);
  t.ok(await until(() => gw.logs.some((l) => l.type === 'access' && l.path === '/ten')));
  const line = gw.logs.find((l) => l.type === 'access' && l.path === '/ten');
  t.equal(line?.http, '1.0');
});

t.test('upstream keep-alive connections idle at most 4 s (README, timeouts.idle), whatever the app would allow', async (t) => {
  const up = await startUpstream(t, (req, res) => res.end(String(req.socket.remotePort)));
  up.server.keepAliveTimeout = 30_000; // the app would keep the connection for 30 s
  const gw = await startGateway(t, publicSite(up.origin));
  const first = (await gw.request({ path: '/a' })).body;
  t.equal((await gw.request({ path: '/b' })).body, first, 'back-to-back requests share one upstream connection');
  await sleep(5_500);
  t.not((await gw.request({ path: '/c' })).body, first, 'after 5.5 s idle the gateway had closed it: a new connection');
});
