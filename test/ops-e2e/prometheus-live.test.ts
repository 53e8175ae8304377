/**
 * A real Prometheus server (Debian's /usr/bin/prometheus) scraping the admin listener of a running
 * gateway with the metrics bearer token, the way docker/prometheus/prometheus.yml does: the target
 * is up, and a gateway counter moves after real traffic through the gateway.
 */
import t from 'tap';
import { join } from 'node:path';
import { LOOPBACK_LISTEN, startGateway, startUpstream } from '../helpers/gateway.js';
import { startPrometheus } from '../ops/prometheus.js';
import { PROMETHEUS_SKIP, ROOT } from '../ops/tools.js';

const TOKEN = 'ops-e2e-scrape-token-0123456789';

t.test('Prometheus scrapes the running gateway: up == 1, requests_total increases with traffic', { skip: PROMETHEUS_SKIP }, async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(
    t,
    `${LOOPBACK_LISTEN}admin:
  metrics_token: \${METRICS_TOKEN}
sites:
  - id: app
    hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: public, path: /, access: public }
`,
    { METRICS_TOKEN: TOKEN },
  );
  const target = `127.0.0.1:${gw.adminPort}`;
  const prom = await startPrometheus({
    targets: [target],
    bearerToken: TOKEN,
    ruleFiles: [join(ROOT, 'docker/prometheus/alerts.yml')],
    extraScrapeConfigs: [
      { job_name: 'no-token', scrape_interval: '1s', scrape_timeout: '1s', static_configs: [{ targets: [target] }] },
    ],
  });
  t.teardown(() => prom.stop());

  const upNow = await prom.waitFor('up{job="portcullis"} == 1');
  t.equal(upNow[0]?.metric.instance, target, 'the gateway admin listener is the scraped target');
  const refused = await prom.waitFor('up{job="no-token"}');
  t.equal(refused[0]?.value, 0, 'without the bearer token the scrape is refused');

  const info = await prom.waitFor('portcullis_build_info{job="portcullis"}');
  t.equal(info[0]?.metric.node, process.version);

  for (let i = 0; i < 3; i++) t.equal((await gw.request({ path: `/a/${i}` })).status, 200);
  const first = await prom.waitFor('portcullis_http_requests_total{job="portcullis",site="app",route="public",status="200"}', (s) => s[0]?.value === 3);
  t.equal(first[0]?.metric.method, 'GET');
  for (let i = 0; i < 4; i++) await gw.request({ path: `/b/${i}` });
  const moved = await prom.waitFor('portcullis_http_requests_total{job="portcullis",site="app",route="public",status="200"}', (s) => s[0]?.value === 7);
  t.equal(moved[0]?.value, 7, 'the counter increased between scrapes');
  const rate = await prom.waitFor('increase(portcullis_http_requests_total{job="portcullis",route="public"}[1m]) > 0');
  t.ok(rate.length === 1, 'PromQL increase() sees it');

  const days = await prom.waitFor('(portcullis_tls_certificate_expiry_timestamp_seconds{job="portcullis",host="app.test"} - time()) / 86400');
  t.ok(days[0]!.value > 1, 'the served certificate expiry is scraped (not about to expire)');
  t.equal(up.seen.length, 7);
});
