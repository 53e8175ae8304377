// Sixth adversarial round: operations. The security-event log (documented fields for the real
// cause, no credentials, client-controlled values cannot forge fields), the CLI against weak
// configurations, reloads (removed site, rotated `${NAME_FILE}` secret, rejected file), and
// `workers: 2` state surviving a replaced worker.
import t from 'tap';
import { SECURITY_EVENTS } from '../../src/observability/events.js';
import https from 'node:https';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LOOPBACK_LISTEN, closedPort, httpsRequest, startGateway, startUpstream, type ClientResponse, type LogRecord } from '../helpers/gateway.js';
import { CLI_SKIP, authYaml, parseExposition, scrape, spawnCli, startIssuer, total, type CliProcess, type TestIssuer } from '../ops-e2e/_support.js';

if (CLI_SKIP) throw new Error(CLI_SKIP);

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');

function tmp(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-ops-attacks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const events = (logs: LogRecord[], name?: string): LogRecord[] =>
  logs.filter((l) => l.security === true && (name === undefined || l.event === name));

// ---------------------------------------------------------------------------------------------
// Security events, in process (the production logger and event writer, captured in memory).
// ---------------------------------------------------------------------------------------------

t.test('security events carry the documented fields for the real cause, and no credential', async (t) => {
  const up = await startUpstream(t);
  const iss = await startIssuer(t);
  const down = await closedPort();
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${authYaml(iss)}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /api, access: authenticated }
      - { path: /login, access: authenticated, bans: { auth_failures: 2, window: 1m, duration: 1m } }
      - { path: /keyed, access: public, rate_limit: { max: 1, window: 1m, key: "header:x-api-key" } }
      - { path: /down, access: public, upstream: "http://127.0.0.1:${down}" }
      - { path: /form, access: public }
      - { path: /, access: public }
`);
  const secrets: string[] = [];

  await t.test('auth_failed names the (trusted) issuer of a token not yet valid', async (t) => {
    // Signed by the trusted issuer, but not valid before an hour from now: the issuer is known.
    const token = await iss.token('mallory', { nbf: Math.floor(Date.now() / 1000) + 3600 });
    secrets.push(token);
    const r = await gw.request({ path: '/api', headers: { authorization: `Bearer ${token}` } });
    t.equal(r.status, 401);
    const ev = events(gw.logs, 'auth_failed').at(-1);
    t.ok(ev, 'an auth_failed event');
    t.match(ev, { ip: '127.0.0.1', site: String, route: String, request_id: r.headers['x-request-id'], reason: String });
    t.equal(ev?.issuer, iss.issuer, 'README: auth_failed carries `issuer`');
  });

  await t.test('banned (after repeated failures) carries key, duration_ms and failures', async (t) => {
    const bad = 'Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldC1tYXRlcmlhbA';
    secrets.push(bad.slice(7));
    const rs: ClientResponse[] = [];
    for (let i = 0; i < 3; i++) rs.push(await gw.request({ path: '/login', headers: { authorization: bad } }));
    t.same(rs.map((r) => r.status), [401, 401, 429]);
    const ban = events(gw.logs, 'banned').find((e) => e.reason === 'auth_failures');
    t.ok(ban, 'a banned event for the failures');
    t.equal(ban?.failures, 2);
    t.equal(ban?.duration_ms, 60_000);
    t.equal(ban?.key, 'ip:127.0.0.1', 'README: banned carries the banned `key`');
  });

  await t.test('rate_limited with key header:x-api-key: the API key value does not reach the event log', async (t) => {
    const apiKey = 'sk_live_51HxQ9demoSECRETvalue';
    secrets.push(apiKey);
    const a = await gw.request({ path: '/keyed', headers: { 'x-api-key': apiKey } });
    const b = await gw.request({ path: '/keyed', headers: { 'x-api-key': apiKey } });
    t.same([a.status, b.status], [200, 429]);
    const ev = events(gw.logs, 'rate_limited').at(-1);
    t.ok(ev, 'a rate_limited event');
    t.equal(ev?.limit, 1);
    t.equal(ev?.window_ms, 60_000);
    t.notMatch(JSON.stringify(ev), apiKey, 'the credential in x-api-key is not written to the security log');
  });

  await t.test('upstream_down carries upstream and error', async (t) => {
    const r = await gw.request({ path: '/down' });
    t.equal(r.status, 502);
    const ev = events(gw.logs, 'upstream_down').at(-1);
    t.ok(ev, 'an upstream_down event');
    t.equal(ev?.upstream, `http://127.0.0.1:${down}`);
    t.type(ev?.error, 'string', 'README: upstream_down carries `error`');
  });

  await t.test('csrf_rejected: a hostile Origin is recorded as one string field; it cannot add fields', async (t) => {
    const origin = 'https://evil.test","event":"config_reloaded","security":false,"x":"\\u0000';
    const cookie = 'session=s3cr3t-cookie-value-abc';
    secrets.push('s3cr3t-cookie-value-abc');
    const r = await gw.request({ method: 'POST', path: '/form', body: 'a=1', headers: { origin, cookie, 'sec-fetch-site': 'cross-site', 'content-type': 'application/x-www-form-urlencoded' } });
    t.equal(r.status, 403);
    const ev = events(gw.logs, 'csrf_rejected').at(-1);
    t.ok(ev);
    t.equal(ev?.event, 'csrf_rejected');
    t.equal(ev?.security, true);
    t.equal(ev?.origin, origin, 'the Origin is one JSON string, byte for byte');
    t.equal(ev?.method, 'POST');
    t.notOk('x' in (ev ?? {}), 'no forged field');
  });

  await t.test('no event holds a token, a cookie or an Authorization value', async (t) => {
    const all = JSON.stringify(events(gw.logs));
    for (const s of secrets) t.notOk(all.includes(s), `not in the security log: ${s.slice(0, 12)}…`);
    t.notMatch(all, /Bearer /);
  });
});

t.test('the development CA: no cert_issued security event (documented as ACME only), a loud warning instead', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  t.equal((await gw.request({ path: '/' })).status, 200, 'a development-CA certificate is served');
  t.same(events(gw.logs, 'cert_issued'), [], 'no cert_issued event for the development CA');
  t.ok(gw.logs.some((l) => /LOCAL DEVELOPMENT CA/.test(String(l.msg))), 'the development CA is announced as a warning');
  const described = SECURITY_EVENTS.find((e) => e.name === 'cert_issued')?.description ?? '';
  t.match(described, /ACME/, 'the event table says ACME');
  t.notMatch(described, /ACME or development CA/, 'and no longer promises the development CA');
});

// ---------------------------------------------------------------------------------------------
// The CLI against weak configurations.
// ---------------------------------------------------------------------------------------------

t.test('validate: each risky setting the README lists is named, exit 0; secrets are not printed', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'weak.yml');
  writeFileSync(file, `listen: { https: 127.0.0.1:0, http: null, admin: 0.0.0.0:9090 }
trusted_proxies: [0.0.0.0/0]
tls: { hsts: { max_age: 0s } }
sites:
  - hosts: [app.test]
    upstream: http://127.0.0.1:1
    routes: [{ path: /, access: authenticated }]
`);
  const r = await run(['validate', '--config', file]);
  t.equal(r.code, 0, 'warnings only');
  t.match(r.stderr, /trusts every client/, 'trusting every proxy');
  t.match(r.stderr, /admin listener is not bound to a loopback/, 'exposed admin listener');
  t.match(r.stderr, /disables HSTS/, 'HSTS off');
  t.match(r.stderr, /auth\.issuers is empty/, 'protected route without issuers');

  // A secret-bearing field with an invalid value: the problem names the key, not the value.
  const bad = join(dir, 'bad.yml');
  writeFileSync(bad, `listen: { https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }
admin: { metrics_token: "\${MT}" }
auth:
  issuers:
    - issuer: https://id.test
      audiences: [a]
      algorithms: [ES256]
      jwks_uri: https://id.test/jwks
      introspection: { client_id: gw, client_secret: "\${CS}", cache: "\${CS}" }
sites:
  - hosts: [app.test]
    upstream: http://127.0.0.1:1
    routes: [{ path: /, access: public }]
`);
  const secret = 'hunter2-very-secret-value';
  const v = await run(['validate', '--config', bad], { MT: 'metrics-token-xyz', CS: secret });
  t.equal(v.code, 1, 'the invalid duration is an error');
  t.match(v.stderr, /cache/);
  t.notOk((v.stdout + v.stderr).includes(secret), 'the secret value is not printed');
  t.notMatch(v.stderr, /YAML syntax error/, v.stderr);
  t.notOk((v.stdout + v.stderr).includes('metrics-token-xyz'));

  const missing = await run(['validate', '--config', bad], { MT: 'x' });
  t.equal(missing.code, 1);
  t.match(missing.stderr, /CS/, 'a missing secret names its variable');
});

// ---------------------------------------------------------------------------------------------
// Reloads through the built CLI.
// ---------------------------------------------------------------------------------------------

function startedPort(cli: CliProcess, key: 'https' | 'admin'): number {
  const started = cli.logs().find((l) => l.msg === 'portcullis started')!;
  return (started[key] as { port: number }).port;
}

t.test('reload: a removed site is 421 at once on an open keep-alive connection; a rotated _FILE secret applies; a bad file is refused with event and metric', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const tokenFile = join(dir, 'metrics_token');
  writeFileSync(tokenFile, 'first-metrics-token\n');
  const file = join(dir, 'gw.yml');
  const yaml = (hosts: string[]): string => `listen: { https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }
shutdown_grace: 2s
tls: { storage: ${join(dir, 'certs')} }
admin: { metrics_token: "\${METRICS_TOKEN}" }
sites:
${hosts.map((h) => `  - hosts: [${h}]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`).join('')}`;
  writeFileSync(file, yaml(['app.test', 'old.test']));
  const cli = spawnCli(t, ['start', '--config', file], { METRICS_TOKEN_FILE: tokenFile });
  await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
  const port = startedPort(cli, 'https');
  const admin = startedPort(cli, 'admin');
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');

  // One keep-alive connection, opened for old.test before the reload.
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca });
  t.teardown(() => agent.destroy());
  const onAgent = (path: string): Promise<{ status: number; reused: boolean }> =>
    new Promise((resolve, reject) => {
      const req = https.request({ host: '127.0.0.1', port, path, servername: 'old.test', agent, headers: { host: 'old.test' } }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode!, reused: req.reusedSocket }));
      });
      req.on('error', reject);
      req.end();
    });
  t.equal((await onAgent('/a')).status, 200);
  t.equal((await scrape(admin, 'first-metrics-token')).status, 200);

  writeFileSync(tokenFile, 'second-metrics-token\n');
  writeFileSync(file, yaml(['app.test']));
  cli.child.kill('SIGHUP');
  await cli.waitForLog((l) => l.event === 'config_reloaded');
  const after = await onAgent('/b');
  t.same(after, { status: 421, reused: true }, 'the removed host is refused on the connection opened before the reload');
  t.equal((await scrape(admin, 'second-metrics-token')).status, 200, 'the rotated secret file is read on reload');
  t.equal((await scrape(admin, 'first-metrics-token')).status, 401, 'the old secret no longer opens /metrics');

  // An invalid file: refused, said so in an event with file and problems, counted, old config kept.
  writeFileSync(file, `${yaml(['app.test'])}bogus_key: 1\n`);
  cli.child.kill('SIGHUP');
  const rejected = await cli.waitForLog((l) => l.event === 'config_rejected');
  t.equal(rejected.file, file);
  t.equal(rejected.security, true);
  t.match(JSON.stringify(rejected.problems), /bogus_key/);
  t.notOk(cli.stdout().includes('second-metrics-token'), 'the secret never reaches the log');
  t.equal((await httpsRequest(port, ca, { path: '/' })).status, 200, 'the previous configuration keeps serving');
  const m = parseExposition((await scrape(admin, 'second-metrics-token')).body);
  t.equal(total(m, 'portcullis_config_reloads_total', { result: 'failure' }), 1);
  t.equal(total(m, 'portcullis_config_reloads_total', { result: 'success' }), 1);
  cli.child.kill('SIGTERM');
  t.equal((await cli.exited).code, 0);
});

// ---------------------------------------------------------------------------------------------
// workers: 2
// ---------------------------------------------------------------------------------------------

t.test('workers: 2 — a tightened limit applies on both workers; a ban survives the worker that saw it being replaced', async (t) => {
  const dir = tmp(t);
  const up = await startUpstream(t);
  const iss: TestIssuer = await startIssuer(t);
  const file = join(dir, 'gw.yml');
  const yaml = (max: number): string => `listen: { https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }
workers: 2
shutdown_grace: 2s
tls: { storage: ${join(dir, 'certs')} }
${authYaml(iss)}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /limited, access: public, rate_limit: { max: ${max}, window: 1m } }
      - { path: /private, access: authenticated, bans: { auth_failures: 2, window: 1m, duration: 1m } }
      - { path: /, access: public }
`;
  writeFileSync(file, yaml(100));
  const cli = spawnCli(t, ['start', '--config', file], {});
  await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
  await cli.waitForLog(() => cli.logs().filter((l) => l.msg === 'worker listening').length === 2);
  const port = startedPort(cli, 'https');
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  const get = (path: string, headers: Record<string, string> = {}): Promise<ClientResponse> =>
    httpsRequest(port, ca, { path, headers: { accept: 'application/json', ...headers } });

  // Tighten the limit by reload: 3 per minute, across both workers.
  writeFileSync(file, yaml(3));
  cli.child.kill('SIGHUP');
  await cli.waitForLog((l) => l.msg === 'configuration reloaded');
  const lim: number[] = [];
  for (let i = 0; i < 6; i++) lim.push((await get('/limited')).status);
  t.same(lim, [200, 200, 200, 429, 429, 429], 'the tightened limit, counted once');
  const by = new Set(cli.logs().filter((l) => l.type === 'access' && l.path === '/limited').map((l) => l.worker));
  t.equal(by.size, 2, 'both workers served');

  // Ban after two failures, then kill BOTH original workers one after the other.
  const bad = { authorization: 'Bearer not.a.jwt' };
  const fails: number[] = [];
  for (let i = 0; i < 2; i++) fails.push((await get('/private', bad)).status);
  t.same(fails, [401, 401]);
  const banned = (await get('/private', { authorization: `Bearer ${await iss.token('alice')}` })).status;
  t.equal(banned, 429, 'banned');
  const originals = cli.logs().filter((l) => l.msg === 'worker listening').map((l) => ({ pid: l.pid as number, worker: l.worker as number }));
  let next = 3;
  for (const w of originals) {
    process.kill(w.pid, 'SIGKILL');
    await cli.waitForLog((l) => l.msg === 'worker listening' && l.worker === next, 20_000);
    next++;
  }
  const token = `Bearer ${await iss.token('alice')}`;
  const after: number[] = [];
  for (let i = 0; i < 4; i++) after.push((await get('/private', { authorization: token })).status);
  t.same(after, [429, 429, 429, 429], 'replacement workers (that never saw the ban message) still refuse the banned client');
  const lim2: number[] = [];
  for (let i = 0; i < 4; i++) lim2.push((await get('/limited')).status);
  t.same(lim2, [429, 429, 429, 429], 'the reloaded, tightened limit and its counters hold on the replacements');
  t.equal(up.seen.filter((r) => r.url === '/private').length, 0);
  cli.child.kill('SIGTERM');
  t.equal((await cli.exited).code, 0);
});
