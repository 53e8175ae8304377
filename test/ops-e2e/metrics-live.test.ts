/**
 * /metrics on the admin listener of a RUNNING gateway (the real pipeline, real TLS, a real
 * upstream) after real traffic: every family of issue 6 with the right labels and moving values,
 * bounded label sets under attacker-chosen paths/hosts/methods, promtool on the real scrape, the
 * metrics bearer token, the certificate expiry gauge against the served certificate, and the
 * security-event log file.
 */
import t from 'tap';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOOPBACK_LISTEN, startGateway, startUpstream, type RunningGateway } from '../helpers/gateway.js';
import { PROMTOOL_SKIP, promtool } from '../ops/tools.js';
import { METHOD_LABELS } from '../../src/observability/metrics.js';
import { authYaml, parseExposition, pick, scrape, startIssuer, total, type Sample, type TestIssuer } from './_support.js';
import { logFileLines } from '../helpers/log-file.js';

/** Every portcullis_ family issue 6 names, with its label names. */
const FAMILIES: Record<string, readonly string[]> = {
  portcullis_http_requests_total: ['site', 'route', 'method', 'status'],
  portcullis_http_request_duration_seconds: ['site', 'route'],
  portcullis_upstream_request_duration_seconds: ['upstream'],
  portcullis_upstream_errors_total: ['upstream', 'reason'],
  portcullis_auth_failures_total: ['reason'],
  portcullis_access_denied_total: ['site', 'route'],
  portcullis_rate_limited_total: ['site', 'route'],
  portcullis_csrf_rejected_total: ['site'],
  portcullis_bans_active: [],
  portcullis_tls_certificate_expiry_timestamp_seconds: ['host'],
  portcullis_acme_orders_total: ['result'],
  portcullis_jwks_refreshes_total: ['issuer', 'result'],
  portcullis_config_reloads_total: ['result'],
  portcullis_build_info: ['version', 'node'],
};

/** A port nothing listens on: bound once, then closed. */
/**
 * An origin nothing listens on. Not a just-closed ephemeral port: under parallel suites another
 * test's server can be given that port again. Port 1 (tcpmux) is privileged and unused here.
 */
async function deadOrigin(): Promise<string> {
  return 'http://127.0.0.1:1';
}

function siteYaml(iss: TestIssuer, upstream: string, dead: string, extra = ''): string {
  return `${LOOPBACK_LISTEN}${authYaml(iss)}${extra}sites:
  - id: app
    hosts: [app.test]
    upstream: ${upstream}
    routes:
      - { id: public, path: /public, access: public }
      - { id: limited, path: /limited, access: public, rate_limit: { max: 2, window: 1m } }
      - { id: broken, path: /broken, access: public, upstream: ${dead} }
      - { id: admin, path: /admin, roles: [admin] }
      - { id: form, path: /form, access: public }
      - { id: api, path: /api, access: authenticated }
`;
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const rnd = (): string => randomBytes(6).toString('hex');

/** The traffic mix of the brief; returns the statuses seen, keyed by what was sent. */
async function traffic(gw: RunningGateway, iss: TestIssuer): Promise<Record<string, number[]>> {
  const seen: Record<string, number[]> = {};
  const note = (k: string, s: number) => (seen[k] ??= []).push(s);
  const admin = await iss.token('alice', { roles: ['admin'], email: 'alice@app.test' });
  const user = await iss.token('bob', { roles: ['user'] });
  for (let i = 0; i < 3; i++) note('public', (await gw.request({ path: `/public/item-${i}` })).status);
  note('admin-ok', (await gw.request({ path: '/admin', headers: bearer(admin) })).status);
  note('no-route', (await gw.request({ path: '/nowhere' })).status);
  note('bad-token', (await gw.request({ path: '/api', headers: bearer('not-a-jwt') })).status);
  const foreign = await (await startIssuer(t, iss.audience)).token('mallory', { roles: ['admin'] });
  note('foreign-token', (await gw.request({ path: '/api', headers: bearer(foreign) })).status);
  note('forbidden', (await gw.request({ path: '/admin', headers: bearer(user) })).status);
  note('broken', (await gw.request({ path: '/broken' })).status);
  for (let i = 0; i < 3; i++) note('limited', (await gw.request({ path: '/limited' })).status);
  note(
    'csrf',
    (await gw.request({ method: 'POST', path: '/form', headers: { cookie: 'sid=1', origin: 'https://evil.example', 'content-type': 'text/plain' }, body: 'x' })).status,
  );
  return seen;
}

const ODD_METHODS = ['PROPFIND', 'MKCOL', 'PURGE', 'LOCK', 'SEARCH', 'TRACE'];

/** Attacker-chosen input in every place a label could come from: paths, hosts, methods, reasons. */
async function junk(gw: RunningGateway, iss: TestIssuer, n: number): Promise<string[]> {
  const markers: string[] = [];
  for (let i = 0; i < n; i++) {
    const m = rnd();
    markers.push(m);
    await gw.request({ path: `/${m}/public/../x?q=${m}` });
    await gw.request({ path: `/public/${m}` });
    await gw.request({ path: '/public', host: `${m}.evil.test`, servername: 'app.test' });
    // A token llhttp does not know is refused by the parser (400, before any hook); one it knows
    // but the gateway does not proxy reaches the pipeline and must be labelled `other`.
    await gw.request({ method: `X${m.toUpperCase()}`, path: `/${m}` });
    await gw.request({ method: ODD_METHODS[i % ODD_METHODS.length]!, path: `/${m}` });
    await gw.request({ path: '/api', headers: bearer(`${m}.${m}.${m}`) });
    await gw.request({ path: '/api', headers: bearer(await iss.token(m, { aud: m })) });
  }
  return markers;
}

function portcullisSeries(samples: readonly Sample[]): Sample[] {
  return samples.filter((s) => s.name.startsWith('portcullis_'));
}

function seriesKey(s: Sample): string {
  return `${s.name}${JSON.stringify(s.labels)}`;
}

t.test('a running gateway after real traffic: every issue-6 family, right labels, values moving', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const dead = await deadOrigin();
  const gw = await startGateway(t, siteYaml(iss, up.origin, dead));
  t.ok(gw.adminPort, 'admin listener is up');

  const before = parseExposition((await scrape(gw.adminPort!)).body);
  const seen = await traffic(gw, iss);
  t.same(seen, {
    public: [200, 200, 200],
    'admin-ok': [200],
    'no-route': [404],
    'bad-token': [401],
    'foreign-token': [401],
    forbidden: [403],
    broken: [502],
    limited: [200, 200, 429],
    csrf: [403],
  }, 'the gateway answered the traffic as configured');

  const res = await scrape(gw.adminPort!);
  t.equal(res.status, 200);
  t.match(res.contentType, /^text\/plain; version=0\.0\.4/);
  const s = parseExposition(res.body);

  // Every family is exposed with HELP, TYPE and exactly its documented label names.
  for (const [family, labels] of Object.entries(FAMILIES)) {
    t.match(res.body, new RegExp(`^# HELP ${family} \\S`, 'm'), `${family} has HELP`);
    t.match(res.body, new RegExp(`^# TYPE ${family} (counter|gauge|histogram)$`, 'm'), `${family} has TYPE`);
    const series = s.filter((x) => x.name === family || (x.name.startsWith(`${family}_`) && /_(bucket|sum|count)$/.test(x.name)));
    for (const x of series) {
      const names = Object.keys(x.labels).filter((k) => k !== 'le').sort();
      t.same(names, [...labels].sort(), `${x.name} label names`);
    }
  }

  const req = (labels: Record<string, string>) => total(s, 'portcullis_http_requests_total', labels);
  t.equal(req({ site: 'app', route: 'public', method: 'GET', status: '200' }), 3, 'proxied 200s counted on their route');
  t.equal(req({ site: 'app', route: 'admin', method: 'GET', status: '200' }), 1);
  t.equal(req({ site: 'app', route: 'unmatched', method: 'GET', status: '404' }), 1, 'no route: 404 under route="unmatched"');
  t.equal(req({ site: 'app', route: 'api', status: '401' }), 2);
  t.equal(req({ site: 'app', route: 'admin', status: '403' }), 1);
  t.equal(req({ site: 'app', route: 'broken', status: '502' }), 1);
  t.equal(req({ site: 'app', route: 'limited', status: '200' }), 2);
  t.equal(req({ site: 'app', route: 'limited', status: '429' }), 1);
  t.equal(req({ site: 'app', route: 'form', method: 'POST', status: '403' }), 1);
  t.equal(req({}) - total(before, 'portcullis_http_requests_total'), 13, 'every request counted exactly once');
  t.equal(total(s, 'portcullis_http_request_duration_seconds_count', { site: 'app', route: 'public' }), 3, 'duration histogram per route');
  t.equal(total(s, 'portcullis_http_request_duration_seconds_bucket', { site: 'app', route: 'public', le: '+Inf' }), 3);

  t.equal(total(s, 'portcullis_upstream_request_duration_seconds_count', { upstream: up.origin }), 6, 'one upstream attempt per proxied request');
  t.equal(up.seen.length, 6, 'the upstream saw exactly the 6 allowed requests');
  t.equal(total(s, 'portcullis_upstream_errors_total', { upstream: dead, reason: 'connect_refused' }), 1, 'the 502 is an upstream error by configured origin');
  t.equal(total(s, 'portcullis_upstream_errors_total', { upstream: up.origin }), 0);

  const authReasons = pick(s, 'portcullis_auth_failures_total').filter((x) => x.value > 0);
  t.equal(authReasons.reduce((a, x) => a + x.value, 0), 2, 'two rejected credentials');
  for (const x of authReasons) t.match(x.labels.reason, /^[a-z0-9_]{1,64}$/, `auth reason ${x.labels.reason} is a code`);
  t.equal(total(s, 'portcullis_access_denied_total', { site: 'app', route: 'admin' }), 1);
  t.equal(total(s, 'portcullis_rate_limited_total', { site: 'app', route: 'limited' }), 1);
  t.equal(total(s, 'portcullis_csrf_rejected_total', { site: 'app' }), 1);
  t.equal(total(s, 'portcullis_bans_active'), 0, 'bans gauge present (no bans configured)');
  t.ok(total(s, 'portcullis_jwks_refreshes_total', { issuer: iss.issuer, result: 'success' }) >= 1, 'the JWKS fetch was counted for the configured issuer');
  t.ok(iss.jwksFetches() >= 1);
  for (const result of ['success', 'failure']) {
    t.equal(pick(s, 'portcullis_acme_orders_total', { result }).length, 1, `acme_orders{result=${result}} zero-initialized`);
    t.equal(pick(s, 'portcullis_config_reloads_total', { result }).length, 1, `config_reloads{result=${result}} zero-initialized`);
  }
  const info = pick(s, 'portcullis_build_info');
  t.equal(info.length, 1);
  t.equal(info[0]?.labels.node, process.version);
  t.equal(info[0]?.value, 1);
  t.ok(pick(s, 'process_cpu_seconds_total').length === 1, 'default process metrics');
});

t.test('labels stay bounded under random paths, hosts, methods and tokens', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const dead = await deadOrigin();
  const gw = await startGateway(t, siteYaml(iss, up.origin, dead));
  const markers1 = await junk(gw, iss, 8);
  const first = portcullisSeries(parseExposition((await scrape(gw.adminPort!)).body));
  const markers2 = await junk(gw, iss, 8);
  const text = (await scrape(gw.adminPort!)).body;
  const second = portcullisSeries(parseExposition(text));

  t.same(second.map(seriesKey).sort(), first.map(seriesKey).sort(), 'eight more rounds of fresh junk created no new series');
  for (const m of [...markers1, ...markers2]) {
    if (text.toLowerCase().includes(m)) t.fail(`user input ${m} reached a label`);
  }
  const allowed: Record<string, (v: string) => boolean> = {
    site: (v) => ['app', 'unmatched'].includes(v),
    route: (v) => ['public', 'limited', 'broken', 'admin', 'form', 'api', 'unmatched'].includes(v),
    method: (v) => (METHOD_LABELS as readonly string[]).includes(v),
    status: (v) => /^[1-5]\d\d$/.test(v),
    upstream: (v) => v === up.origin || v === dead,
    host: (v) => v === 'app.test',
    issuer: (v) => v === iss.issuer,
    result: (v) => v === 'success' || v === 'failure',
    reason: (v) => /^[a-z0-9_]{1,64}$/.test(v),
    le: () => true,
    version: () => true,
    node: (v) => v === process.version,
  };
  const bad = second.flatMap((x) => Object.entries(x.labels).filter(([k, v]) => !(allowed[k]?.(v) ?? false)).map(([k, v]) => `${x.name} ${k}=${v}`));
  t.same(bad, [], 'every label value is from a configured or fixed set');
  t.ok(total(second, 'portcullis_http_requests_total', { site: 'unmatched', route: 'unmatched' }) >= 16, 'unknown hosts are counted, under site="unmatched"');
  t.ok(total(second, 'portcullis_http_requests_total', { method: 'other' }) >= 16, 'unknown methods are counted as method="other"');
  const reasons = new Set(pick(second, 'portcullis_auth_failures_total').map((x) => x.labels.reason));
  t.ok(reasons.size <= 4, `auth failure reasons stay few: ${[...reasons].join(', ')}`);
});

t.test('promtool check metrics on the real scrape of a running gateway is clean', { skip: PROMTOOL_SKIP }, async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, siteYaml(iss, up.origin, await deadOrigin()));
  await traffic(gw, iss);
  const body = (await scrape(gw.adminPort!)).body;
  const r = await promtool(['check', 'metrics'], body);
  const findings = `${r.stdout}\n${r.stderr}`.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  t.same(findings.filter((l) => l.includes('portcullis_')), [], 'no finding about a portcullis_ family');
  t.same(findings, [], 'no lint finding');
  t.equal(r.code, 0, 'promtool check metrics exits 0');
});

t.test('admin.metrics_token: 401 without or with a wrong token, 200 with the right one', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const token = `m-${rnd()}${rnd()}`;
  const gw = await startGateway(t, siteYaml(iss, up.origin, await deadOrigin(), 'admin:\n  metrics_token: ${METRICS_TOKEN}\n'), { METRICS_TOKEN: token });
  const port = gw.adminPort!;
  const none = await scrape(port);
  t.equal(none.status, 401);
  t.notMatch(none.body, /portcullis_/, 'no metrics leak in the refusal');
  const wrong = await scrape(port, `${token}x`);
  t.equal(wrong.status, 401);
  t.equal((await scrape(port, token.slice(0, -1))).status, 401, 'a prefix of the token is refused');
  const basic = await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { authorization: `Basic ${Buffer.from(`x:${token}`).toString('base64')}` } });
  t.equal(basic.status, 401, 'the token only as a bearer credential');
  t.match(basic.headers.get('www-authenticate') ?? '', /^Bearer/);
  const qs = await fetch(`http://127.0.0.1:${port}/metrics?token=${token}`);
  t.equal(qs.status, 401, 'not in the query string');
  const ok = await scrape(port, token);
  t.equal(ok.status, 200);
  t.match(ok.body, /^portcullis_build_info\{/m);
  t.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200, '/healthz stays open for the HEALTHCHECK');
  t.notOk(gw.logs.some((l) => JSON.stringify(l).includes(token)), 'the token never reaches the log');
});

t.test('certificate expiry gauge = notAfter of the certificate actually served for the host', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, siteYaml(iss, up.origin, await deadOrigin()));
  const served = await new Promise<tls.PeerCertificate>((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port: gw.port, servername: 'app.test', ca: gw.ca }, () => {
      const cert = sock.getPeerCertificate();
      sock.end();
      resolve(cert);
    });
    sock.on('error', reject);
  });
  t.match(served.subjectaltname, /DNS:app\.test/);
  const notAfter = new Date(served.valid_to).getTime() / 1000;
  t.ok(Number.isFinite(notAfter) && notAfter > Date.now() / 1000, 'a valid served certificate');
  const s = parseExposition((await scrape(gw.adminPort!)).body);
  const gauge = pick(s, 'portcullis_tls_certificate_expiry_timestamp_seconds');
  t.same(gauge.map((g) => g.labels.host), ['app.test'], 'one series per configured host');
  t.equal(gauge[0]?.value, notAfter, 'equals the served notAfter (seconds)');
});

t.test('log.security_file: events land in that file, not in the main log', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const logDir = mkdtempSync(join(tmpdir(), 'pc-seclog-'));
  t.teardown(() => rmSync(logDir, { recursive: true, force: true }));
  const file = join(logDir, 'sub', 'security.log');
  const gw = await startGateway(t, siteYaml(iss, up.origin, await deadOrigin(), `log:\n  security_file: ${file}\n`));
  t.ok(existsSync(file), 'created (with its directory) at startup');
  const secret = await iss.token('bob', { roles: ['user'] });
  const seen = await traffic(gw, iss);
  t.same(seen.broken, [502], 'the dead upstream was refused (the upstream_down event below needs that)');
  await gw.request({ path: '/api', headers: bearer(`${secret}x`) });

  const want = ['auth_failed', 'access_denied', 'rate_limited', 'csrf_rejected', 'upstream_down'];
  let lines: Array<Record<string, unknown>> = [];
  for (let i = 0; i < 100; i++) {
    lines = logFileLines(file);
    if (want.every((e) => lines.some((l) => l.event === e)) && lines.filter((l) => l.event === 'auth_failed').length >= 3) break;
    await sleep(50); // the file destination is asynchronous; poll, never assert on timing
  }
  for (const e of want) t.ok(lines.some((l) => l.event === e), `${e} is in the security file`);
  for (const l of lines) {
    t.equal(l.security, true);
    t.equal(l.log, 'security');
  }
  const denied = lines.find((l) => l.event === 'access_denied');
  t.equal(denied?.user, 'bob', 'user when known');
  t.equal(denied?.site, 'app');
  t.equal(denied?.route, 'admin');
  t.equal(denied?.ip, '127.0.0.1');
  t.match(denied?.request_id, /^[0-9a-f-]{36}$/);
  const csrf = lines.find((l) => l.event === 'csrf_rejected');
  t.equal(csrf?.origin, 'https://evil.example');
  t.equal(csrf?.method, 'POST');
  t.notOk(readFileSync(file, 'utf8').includes(secret.slice(secret.lastIndexOf('.') + 1)), 'no token signature in the security log');
  t.same(gw.logs.filter((l) => l.security === true || typeof l.event === 'string'), [], 'the main log has no security events');
  t.ok(gw.logs.some((l) => l.type === 'access'), 'the main log still has the access log');
});
