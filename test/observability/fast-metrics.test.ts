// fast-metrics.ts against prom-client itself: for the same observations, the registry must give
// the same JSON (what the cluster primary aggregates) and the same exposition text.
import t from 'tap';
import fc from 'fast-check';
import { AggregatorRegistry, Counter, Histogram, Registry } from 'prom-client';
import { FastCounter, FastHistogram } from '../../src/observability/fast-metrics.js';

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const site = fc.constantFrom('app', 'api', 'a"b', 'x\\y', 'unmatched');
const value = fc.oneof(fc.double({ min: 0, max: 100, noNaN: true }), fc.constantFrom(0, 0.001, 0.005, 30, 30.0000001, ...BUCKETS));
const ops = fc.array(fc.tuple(site, fc.constantFrom('r1', 'r2'), value), { maxLength: 60 });

async function both(observations: [string, string, number][]): Promise<[Registry, Registry]> {
  const ours = new Registry();
  const theirs = new Registry();
  const fh = new FastHistogram({ name: 'x_seconds', help: 'x help', labelNames: ['site', 'route'], buckets: BUCKETS, registers: [ours] });
  const fcnt = new FastCounter({ name: 'x_total', help: 'x count', labelNames: ['site', 'route'], registers: [ours] });
  const ph = new Histogram({ name: 'x_seconds', help: 'x help', labelNames: ['site', 'route'], buckets: BUCKETS, registers: [theirs] });
  const pc = new Counter({ name: 'x_total', help: 'x count', labelNames: ['site', 'route'], registers: [theirs] });
  for (const [s, r, v] of observations) {
    fh.labels({ site: s, route: r }).observe(v);
    fcnt.labels({ site: s, route: r }).inc();
    ph.labels({ site: s, route: r }).observe(v);
    pc.labels({ site: s, route: r }).inc();
  }
  return [ours, theirs];
}

/** Order of series within a family is not part of the format: compare sorted. */
const sortedLines = (text: string): string[] => text.split('\n').sort();

t.test('same JSON and the same exposition as prom-client for any observations', async (t) => {
  await fc.assert(
    fc.asyncProperty(ops, async (observations) => {
      const [ours, theirs] = await both(observations);
      const a = await ours.getMetricsAsJSON();
      const b = await theirs.getMetricsAsJSON();
      // What the aggregation and the exposition read: name, help, type, and per value its series
      // name, labels and number (prom-client adds `exemplar: null`; `aggregator` defaults to sum).
      const norm = (json: Awaited<ReturnType<Registry['getMetricsAsJSON']>>) =>
        json.map((f) => ({
          name: f.name,
          help: f.help,
          type: f.type,
          aggregator: (f as { aggregator?: string }).aggregator ?? 'sum',
          values: f.values
            .map((v) => {
              const m = v as { metricName?: string; labels: Record<string, unknown>; value: number };
              return JSON.stringify([m.metricName ?? f.name, Object.entries(m.labels).sort(), m.value]);
            })
            .sort(),
        }));
      t.same(norm(a), norm(b));
      t.same(sortedLines(await ours.metrics()), sortedLines(await theirs.metrics()));
    }),
    { numRuns: 200 },
  );
});

t.test('cluster aggregation: the primary sums workers the same way', async (t) => {
  const [o1, p1] = await both([['app', 'r1', 0.002], ['app', 'r1', 7]]);
  const [o2, p2] = await both([['app', 'r1', 0.02], ['api', 'r2', 40]]);
  const ours = AggregatorRegistry.aggregate([await o1.getMetricsAsJSON(), await o2.getMetricsAsJSON()]);
  const theirs = AggregatorRegistry.aggregate([await p1.getMetricsAsJSON(), await p2.getMetricsAsJSON()]);
  t.same(sortedLines(await ours.metrics()), sortedLines(await theirs.metrics()));
  t.match(await ours.metrics(), /x_seconds_bucket\{le="\+Inf",site="app",route="r1"\} 3/);
});

t.test('a child is made once per label set; wrong labels and values are refused as prom-client does', async (t) => {
  const r = new Registry();
  const h = new FastHistogram({ name: 'y_seconds', help: 'y', labelNames: ['upstream'], buckets: [1, 2], registers: [r] });
  t.equal(h.labels({ upstream: 'a' }), h.labels({ upstream: 'a' }), 'the same child');
  t.not(h.labels({ upstream: 'a' }), h.labels({ upstream: 'b' }));
  t.throws(() => h.labels({ nope: 'x' }), /label "nope"/);
  t.throws(() => h.labels({ upstream: 'a' }).observe(Number.NaN), TypeError);
  t.throws(() => h.labels({ upstream: 'a' }).observe(Number.POSITIVE_INFINITY), TypeError);
  const c = new FastCounter({ name: 'y_total', help: 'y', labelNames: [], registers: [r] });
  t.throws(() => c.labels().inc(-1), TypeError);
  c.labels().inc(2);
  t.match(await r.metrics(), /^y_total 2$/m);
  t.throws(() => new FastHistogram({ name: 'z', help: 'z', labelNames: [], buckets: [1, 1], registers: [] }), /distinct/);
  r.resetMetrics();
  t.notMatch(await r.metrics(), /^y_total 2$/m, 'reset clears the series');
});
