import t from 'tap';
import { createMetrics, normalizeMethod, statusLabel, LATENCY_BUCKETS } from '../../src/observability/metrics.js';
import { PROMTOOL_SKIP, promtool } from './tools.js';

/** Parses exposition text into `name{labels} -> value` (enough for assertions; promtool checks the format). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

function seriesOf(text: string, family: string): string[] {
  return [...samples(text).keys()].filter((k) => k === family || k.startsWith(`${family}{`));
}

const FAMILIES: Record<string, { type: string; labels: string[] }> = {
  portcullis_http_requests_total: { type: 'counter', labels: ['site', 'route', 'method', 'status'] },
  portcullis_http_request_duration_seconds: { type: 'histogram', labels: ['site', 'route'] },
  portcullis_upstream_request_duration_seconds: { type: 'histogram', labels: ['upstream'] },
  portcullis_upstream_errors_total: { type: 'counter', labels: ['upstream', 'reason'] },
  portcullis_auth_failures_total: { type: 'counter', labels: ['reason'] },
  portcullis_access_denied_total: { type: 'counter', labels: ['site', 'route'] },
  portcullis_rate_limited_total: { type: 'counter', labels: ['site', 'route'] },
  portcullis_csrf_rejected_total: { type: 'counter', labels: ['site'] },
  portcullis_bans_active: { type: 'gauge', labels: [] },
  portcullis_tls_certificate_expiry_timestamp_seconds: { type: 'gauge', labels: ['host'] },
  portcullis_acme_orders_total: { type: 'counter', labels: ['result'] },
  portcullis_jwks_refreshes_total: { type: 'counter', labels: ['issuer', 'result'] },
  portcullis_config_reloads_total: { type: 'counter', labels: ['result'] },
  portcullis_build_info: { type: 'gauge', labels: ['version', 'node'] },
  portcullis_workers: { type: 'gauge', labels: [] },
  portcullis_worker_restarts_total: { type: 'counter', labels: [] },
};

t.test('exactly the documented portcullis_ families, with help, types and label names', async (t) => {
  const m = createMetrics({ version: '1.2.3', defaultMetrics: false });
  const json = await m.registry.getMetricsAsJSON();
  const ours = json.filter((f) => f.name.startsWith('portcullis_'));
  t.same(ours.map((f) => f.name).sort(), Object.keys(FAMILIES).sort());
  for (const f of ours) {
    const want = FAMILIES[f.name];
    t.equal(f.type, want?.type, `${f.name} type`);
    t.ok(f.help.length > 10, `${f.name} has a help text`);
    const metric = m.registry.getSingleMetric(f.name) as unknown as { labelNames: string[] };
    t.same(metric.labelNames, want?.labels, `${f.name} labels`);
  }
  t.match(m.contentType, /^text\/plain; version=0\.0\.4/);
  const e = await m.exposition();
  t.equal(e.contentType, m.contentType);
  t.match(e.body, /^# HELP portcullis_build_info /m);
});

t.test('default process metrics keep their standard names (no portcullis_ prefix)', async (t) => {
  const text = await createMetrics({ version: '1' }).metrics();
  t.match(text, /^process_cpu_seconds_total /m);
  t.match(text, /^nodejs_heap_size_total_bytes /m);
  t.notMatch(text, /portcullis_process_|portcullis_nodejs_/);
  const without = await createMetrics({ version: '1', defaultMetrics: false }).metrics();
  t.notMatch(without, /process_cpu_seconds_total/);
});

t.test('requests: counter by normalized method and status, histogram by site/route', async (t) => {
  const m = createMetrics({ version: '1', defaultMetrics: false });
  m.observeRequest('app', 'app:0', 'GET', 200, 0.004);
  m.observeRequest('app', 'app:0', 'GET', 200, 0.02);
  m.observeRequest('app', 'app:0', 'POST', 502, 31);
  m.observeRequest('app', 'app:1', 'PROPFIND', 405, 0.001);
  m.observeRequest('app', 'app:1', 'get', 400, 0.001); // not a method token llhttp would pass as GET
  const s = samples(await m.metrics());
  t.equal(s.get('portcullis_http_requests_total{site="app",route="app:0",method="GET",status="200"}'), 2);
  t.equal(s.get('portcullis_http_requests_total{site="app",route="app:0",method="POST",status="502"}'), 1);
  t.equal(s.get('portcullis_http_requests_total{site="app",route="app:1",method="other",status="405"}'), 1);
  t.equal(s.get('portcullis_http_requests_total{site="app",route="app:1",method="other",status="400"}'), 1);
  t.equal(s.get('portcullis_http_request_duration_seconds_count{site="app",route="app:0"}'), 3);
  t.equal(s.get('portcullis_http_request_duration_seconds_bucket{le="0.005",site="app",route="app:0"}'), 1);
  t.equal(s.get('portcullis_http_request_duration_seconds_bucket{le="30",site="app",route="app:0"}'), 2);
  t.equal(s.get('portcullis_http_request_duration_seconds_bucket{le="+Inf",site="app",route="app:0"}'), 3);
  t.equal(LATENCY_BUCKETS[0], 0.001);
  t.equal(LATENCY_BUCKETS[LATENCY_BUCKETS.length - 1], 30);
});

t.test('method and status normalization', async (t) => {
  for (const m of ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']) t.equal(normalizeMethod(m), m);
  for (const m of ['TRACE', 'CONNECT', 'PROPFIND', 'get', '', 'GET ']) t.equal(normalizeMethod(m), 'other');
  t.equal(statusLabel(204), '204');
  t.equal(statusLabel(99), 'other');
  t.equal(statusLabel(600), 'other');
  t.equal(statusLabel(200.5), 'other');
});

t.test('attack: unbounded label input (unknown hosts, junk reasons) cannot grow the series set', async (t) => {
  const m = createMetrics({ version: '1', defaultMetrics: false, maxLabelValues: 5 });
  for (let i = 0; i < 200; i++) {
    m.observeRequest(`evil-${i}.example`, 'unmatched', 'GET', 421, 0.001);
    m.accessDenied(`evil-${i}.example`, `r${i}`);
    m.upstreamAttempt(`http://u${i}:80`, 0.1, 'reset');
    m.jwksRefresh(`https://iss${i}.example`, 'failure');
  }
  m.authFailure('Bearer eyJhbGciOiJIUzI1NiJ9.e30.x'); // a token where a code belongs
  m.authFailure('expired');
  const text = await m.metrics();
  t.equal(seriesOf(text, 'portcullis_http_requests_total').length, 6, '5 sites + other');
  t.equal(samples(text).get('portcullis_http_requests_total{site="other",route="unmatched",method="GET",status="421"}'), 195);
  t.ok(seriesOf(text, 'portcullis_access_denied_total').length <= 6 * 6);
  t.equal(seriesOf(text, 'portcullis_upstream_errors_total').length, 6);
  t.equal(seriesOf(text, 'portcullis_jwks_refreshes_total').length, 6);
  t.notMatch(text, /eyJ/);
  t.equal(samples(text).get('portcullis_auth_failures_total{reason="other"}'), 1);
  t.equal(samples(text).get('portcullis_auth_failures_total{reason="expired"}'), 1);
});

t.test('upstream attempts: every attempt observed, errors by fixed reason', async (t) => {
  const m = createMetrics({ version: '1', defaultMetrics: false });
  m.upstreamAttempt('http://app:5000', 0.05);
  m.upstreamAttempt('http://app:5000', 5, 'connect_timeout');
  m.upstreamAttempt('http://app:5000', 0.01, 'nonsense' as never);
  const s = samples(await m.metrics());
  t.equal(s.get('portcullis_upstream_request_duration_seconds_count{upstream="http://app:5000"}'), 3);
  t.equal(s.get('portcullis_upstream_errors_total{upstream="http://app:5000",reason="connect_timeout"}'), 1);
  t.equal(s.get('portcullis_upstream_errors_total{upstream="http://app:5000",reason="other"}'), 1);
});

t.test('simple counters, zero-initialized outcomes, build info', async (t) => {
  const m = createMetrics({ version: '9.9.9', defaultMetrics: false });
  let s = samples(await m.metrics());
  t.equal(s.get('portcullis_acme_orders_total{result="failure"}'), 0, 'present before the first failure');
  t.equal(s.get('portcullis_config_reloads_total{result="failure"}'), 0);
  t.equal(s.get(`portcullis_build_info{version="9.9.9",node="${process.version}"}`), 1);
  m.rateLimited('app', 'app:0');
  m.csrfRejected('app');
  m.csrfRejected('app');
  m.acmeOrder('failure');
  m.configReload('success');
  m.jwksRefresh('https://id.example', 'success');
  s = samples(await m.metrics());
  t.equal(s.get('portcullis_rate_limited_total{site="app",route="app:0"}'), 1);
  t.equal(s.get('portcullis_csrf_rejected_total{site="app"}'), 2);
  t.equal(s.get('portcullis_acme_orders_total{result="failure"}'), 1);
  t.equal(s.get('portcullis_config_reloads_total{result="success"}'), 1);
  t.equal(s.get('portcullis_jwks_refreshes_total{issuer="https://id.example",result="success"}'), 1);
});

t.test('collect callbacks: bans and certificate expiry read at scrape time', async (t) => {
  const m = createMetrics({ version: '1', defaultMetrics: false });
  t.equal(samples(await m.metrics()).get('portcullis_bans_active'), 0);
  let bans = 3;
  m.setBansActiveProvider(() => bans);
  let certs = [
    { host: 'a.example.com', notAfter: new Date('2030-01-01T00:00:00Z') },
    { host: 'b.example.com', notAfter: new Date('2030-01-02T00:00:00Z') },
  ];
  m.setCertificateProvider(() => certs);
  let s = samples(await m.metrics());
  t.equal(s.get('portcullis_bans_active'), 3);
  t.equal(s.get('portcullis_tls_certificate_expiry_timestamp_seconds{host="a.example.com"}'), Date.UTC(2030, 0, 1) / 1000);
  bans = 0;
  certs = [{ host: 'b.example.com', notAfter: new Date('2031-01-01T00:00:00Z') }];
  s = samples(await m.metrics());
  t.equal(s.get('portcullis_bans_active'), 0);
  t.equal(s.has('portcullis_tls_certificate_expiry_timestamp_seconds{host="a.example.com"}'), false, 'removed host disappears');
  t.equal(s.get('portcullis_tls_certificate_expiry_timestamp_seconds{host="b.example.com"}'), Date.UTC(2031, 0, 1) / 1000);

  // A throwing provider must not break the scrape.
  m.setCertificateProvider(() => {
    throw new Error('store not ready');
  });
  m.setBansActiveProvider(() => {
    throw new Error('store not ready');
  });
  const text = await m.metrics();
  t.match(text, /portcullis_build_info/);
  t.equal(seriesOf(text, 'portcullis_tls_certificate_expiry_timestamp_seconds').length, 0);
});

t.test('registries are independent (several gateways in one process)', async (t) => {
  const a = createMetrics({ version: '1' });
  const b = createMetrics({ version: '1' });
  a.csrfRejected('x');
  t.equal(samples(await a.metrics()).get('portcullis_csrf_rejected_total{site="x"}'), 1);
  t.equal(samples(await b.metrics()).has('portcullis_csrf_rejected_total{site="x"}'), false);
});

t.test('promtool check metrics', { skip: PROMTOOL_SKIP }, async (t) => {
  const m = createMetrics({ version: '1.0.0' });
  m.observeRequest('app', 'app:0', 'GET', 200, 0.01);
  m.upstreamAttempt('http://app:5000', 0.01, 'reset');
  m.authFailure('expired');
  m.accessDenied('app', 'app:1');
  m.rateLimited('app', 'app:0');
  m.csrfRejected('app');
  m.jwksRefresh('https://id.example', 'success');
  m.setCertificateProvider(() => [{ host: 'a.example.com', notAfter: new Date('2030-01-01T00:00:00Z') }]);

  const ours = await promtool(['check', 'metrics'], (await m.metrics()).split('\n\n').filter((b) => /portcullis_/.test(b)).join('\n\n') + '\n');
  t.equal(ours.code, 0, ours.stdout + ours.stderr);
  t.equal(ours.stdout + ours.stderr, '', 'no lint findings for portcullis_ families');

  // The whole endpoint, default process metrics included, is lint-clean.
  const all = await promtool(['check', 'metrics'], await m.metrics());
  t.equal(all.code, 0, all.stdout + all.stderr);
  t.equal((all.stdout + all.stderr).trim(), '', 'no lint findings at all');
  t.match(await m.metrics(), /nodejs_active_handles\{/, 'the per-type active handle gauges remain');
});
