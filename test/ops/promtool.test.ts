import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { PROMTOOL_SKIP, ROOT, promtool } from './tools.js';

const PROM_DIR = join(ROOT, 'docker', 'prometheus');

t.test('promtool check config (syntax)', { skip: PROMTOOL_SKIP }, async (t) => {
  // --syntax-only: the credentials file only exists inside the container (/run/secrets).
  const r = await promtool(['check', 'config', '--syntax-only', 'docker/prometheus/prometheus.yml']);
  t.equal(r.code, 0, r.stdout + r.stderr);
});

t.test('promtool check config (full, with the secret path pointed at a temp file)', { skip: PROMTOOL_SKIP }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pc-prom-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cfg = parse(readFileSync(join(PROM_DIR, 'prometheus.yml'), 'utf8')) as {
    rule_files: string[];
    scrape_configs: Array<{ authorization?: { credentials_file?: string } }>;
  };
  const token = join(dir, 'metrics_token');
  writeFileSync(token, 'test-token\n');
  let rewritten = 0;
  for (const sc of cfg.scrape_configs) {
    if (sc.authorization?.credentials_file === '/run/secrets/metrics_token') {
      sc.authorization.credentials_file = token;
      rewritten++;
    }
  }
  t.equal(rewritten, 1, 'exactly one job uses the metrics token secret');
  cfg.rule_files = cfg.rule_files.map((f) => join(PROM_DIR, f));
  const copy = join(dir, 'prometheus.yml');
  writeFileSync(copy, stringify(cfg));
  const r = await promtool(['check', 'config', copy]);
  t.equal(r.code, 0, r.stdout + r.stderr);
  t.match(r.stdout, /SUCCESS: 8 rules found/);
});

t.test('promtool check rules', { skip: PROMTOOL_SKIP }, async (t) => {
  const r = await promtool(['check', 'rules', 'docker/prometheus/alerts.yml']);
  t.equal(r.code, 0, r.stdout + r.stderr);
  t.match(r.stdout, /SUCCESS: 8 rules found/);
});

t.test('promtool test rules: every alert has a firing and a silent case', { skip: PROMTOOL_SKIP }, async (t) => {
  const alerts = parse(readFileSync(join(PROM_DIR, 'alerts.yml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert: string }> }> };
  const names = alerts.groups.flatMap((g) => g.rules.map((r) => r.alert));
  t.same(names.sort(), [
    'PortcullisAcmeOrderFailures',
    'PortcullisAuthFailureSpike',
    'PortcullisCertificateExpiringSoon',
    'PortcullisConfigReloadRejected',
    'PortcullisDown',
    'PortcullisHigh5xxRatio',
    'PortcullisUpstreamDown',
    'PortcullisWorkerRestarts',
  ]);
  const tests = parse(readFileSync(join(PROM_DIR, 'alerts.test.yml'), 'utf8')) as {
    tests: Array<{ alert_rule_test: Array<{ alertname: string; exp_alerts: unknown[] }> }>;
  };
  const cases = tests.tests.flatMap((c) => c.alert_rule_test);
  for (const n of names) {
    t.ok(cases.some((c) => c.alertname === n && c.exp_alerts.length > 0), `${n} has a firing case`);
    t.ok(cases.some((c) => c.alertname === n && c.exp_alerts.length === 0), `${n} has a silent case`);
  }
  const r = await promtool(['test', 'rules', 'docker/prometheus/alerts.test.yml']);
  t.equal(r.code, 0, r.stdout + r.stderr);
  t.match(r.stdout, /SUCCESS/);
});

t.test('the Grafana dashboard: valid JSON, valid PromQL, only metrics we export', { skip: PROMTOOL_SKIP }, async (t) => {
  const dash = JSON.parse(readFileSync(join(ROOT, 'docker/grafana/dashboards/portcullis.json'), 'utf8')) as {
    uid: string;
    panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
  };
  t.equal(dash.uid, 'portcullis');
  const exprs = dash.panels.flatMap((p) => p.targets.map((x) => x.expr));
  t.ok(exprs.length >= 12);
  // Grafana variables replaced by plausible values so promtool can parse the PromQL.
  const concrete = exprs.map((e) => e.replaceAll('$__rate_interval', '5m').replaceAll('$instance', '.*').replaceAll('$site', '.*'));
  const dir = mkdtempSync(join(tmpdir(), 'pc-dash-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'dash-rules.yml');
  writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules: concrete.map((expr, i) => ({ record: `dashboard:expr${i}`, expr })) }] }));
  const r = await promtool(['check', 'rules', file]);
  t.equal(r.code, 0, r.stdout + r.stderr);

  const { createMetrics } = await import('../../src/observability/metrics.js');
  const known = new Set((await createMetrics({ version: 't', defaultMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name));
  for (const e of exprs) {
    for (const name of e.match(/portcullis_[a-z_]+/g) ?? []) {
      const family = name.replace(/_(bucket|count|sum)$/, '');
      t.ok(known.has(family), `${name} is exported`);
    }
  }
  const ds = readFileSync(join(ROOT, 'docker/grafana/provisioning/datasources/prometheus.yml'), 'utf8');
  t.match(ds, /uid: prometheus/);
  t.match(ds, /url: http:\/\/prometheus:9090/);
});

t.test('alert rules only reference metrics we export (or up)', async (t) => {
  const { createMetrics } = await import('../../src/observability/metrics.js');
  const known = new Set((await createMetrics({ version: 't', defaultMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name));
  const text = readFileSync(join(PROM_DIR, 'alerts.yml'), 'utf8');
  const names = new Set(text.match(/portcullis_[a-z_]+/g) ?? []);
  t.ok(names.size >= 6);
  for (const n of names) t.ok(known.has(n.replace(/_(bucket|count|sum)$/, '')), `${n} is exported`);
});
