/**
 * The Prometheus helper against a tiny HTTP server exposing a real metrics registry, protected by a
 * bearer token the way the gateway's admin /metrics is.
 */
import t from 'tap';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { createMetrics } from '../../src/observability/metrics.js';
import { startPrometheus } from './prometheus.js';
import { PROMETHEUS_SKIP, ROOT } from './tools.js';

const TOKEN = 'scrape-token-for-tests';

t.test('Prometheus scrapes the registry with the bearer token; counters move; a wrong token is up == 0', { skip: PROMETHEUS_SKIP }, async (t) => {
  const metrics = createMetrics({ version: '0.0.0-test' });
  let unauthorized = 0;
  const server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      unauthorized++;
      res.writeHead(401, { 'www-authenticate': 'Bearer' }).end();
      return;
    }
    metrics.metrics().then(
      (body) => res.writeHead(200, { 'content-type': metrics.contentType }).end(body),
      () => res.writeHead(500).end(),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const target = `127.0.0.1:${(server.address() as { port: number }).port}`;

  const prom = await startPrometheus({
    targets: [target],
    bearerToken: TOKEN,
    ruleFiles: [join(ROOT, 'docker/prometheus/alerts.yml')],
    extraScrapeConfigs: [
      { job_name: 'wrong-token', scrape_interval: '1s', scrape_timeout: '1s', authorization: { type: 'Bearer', credentials: 'not-the-token' }, static_configs: [{ targets: [target] }] },
    ],
  });
  t.teardown(() => prom.stop());
  t.match(prom.url, /^http:\/\/127\.0\.0\.1:\d+$/);

  const up = await prom.waitFor('up{job="portcullis"} == 1');
  t.equal(up[0]?.metric.instance, target);
  const denied = await prom.waitFor('up{job="wrong-token"}');
  t.equal(denied[0]?.value, 0, 'a scrape with the wrong token is refused');
  t.ok(unauthorized > 0);

  const info = await prom.waitFor('portcullis_build_info');
  t.equal(info[0]?.metric.version, '0.0.0-test');
  t.ok((await prom.query('process_cpu_seconds_total{job="portcullis"}')).length === 1, 'default process metrics are scraped');

  for (let i = 0; i < 3; i++) metrics.observeRequest('app', 'app:0', 'GET', 502, 0.01);
  const first = await prom.waitFor('portcullis_http_requests_total{site="app",status="502"}', (s) => s[0]?.value === 3);
  t.equal(first[0]?.metric.method, 'GET');
  for (let i = 0; i < 4; i++) metrics.observeRequest('app', 'app:0', 'GET', 502, 0.01);
  const moved = await prom.waitFor('portcullis_http_requests_total{site="app",status="502"}', (s) => s[0]?.value === 7);
  t.equal(moved[0]?.value, 7, 'the counter moved between scrapes');

  metrics.setCertificateProvider(() => [{ host: 'soon.example.com', notAfter: new Date(Date.now() + 3 * 86_400_000) }]);
  const days = await prom.waitFor('(portcullis_tls_certificate_expiry_timestamp_seconds - time()) / 86400');
  t.ok(days[0]!.value > 2 && days[0]!.value <= 3, 'expiry gauge in days');
  // The alert rules load and evaluate against live data: the expiring certificate is pending (for: 1h).
  const deadline = Date.now() + 30_000;
  let pending = false;
  while (!pending && Date.now() < deadline) {
    pending = (await prom.alerts()).some((a) => a.labels.alertname === 'PortcullisCertificateExpiringSoon' && a.state === 'pending');
    if (!pending) await new Promise((r) => setTimeout(r, 200));
  }
  t.ok(pending, 'PortcullisCertificateExpiringSoon is pending');
});
