/**
 * Counter and histogram families for the per-request path, served through prom-client's registry
 * exactly like its own (the same JSON for cluster aggregation, the same exposition text).
 *
 * Why not prom-client's own: its `observe` and `inc`, even on a cached `labels()` child, rebuild
 * and validate the label set, hash it into a string key and look the series up again on every
 * call, and turn the bucket bound into a property key. A proxied request makes one counter
 * increment and two histogram observations, and taking those calls out made the gateway ~7 %
 * faster (BENCHMARKS.md, session 10). Here a child is made once per label set, and an observation
 * is a bucket search and three additions on a typed array. The series are read when scraped.
 *
 * Only what the gateway needs: label sets given as objects, no exemplars, no timers.
 */
import type { Metric, Registry } from 'prom-client';

type Labels = Readonly<Record<string, string>>;

interface ValueOut {
  readonly value: number;
  readonly labels: Record<string, string | number>;
  readonly metricName?: string;
}

interface FamilyOptions {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  readonly registers: readonly Registry[];
}

/** The label set of a child, checked once (prom-client refuses unknown names too), and its key. */
function childKey(labelNames: readonly string[], labels: Labels, family: string): string {
  for (const name of Object.keys(labels)) {
    if (!labelNames.includes(name)) throw new Error(`${family}: label "${name}" is not one of ${labelNames.join(', ')}`);
  }
  return JSON.stringify(labelNames.map((n) => labels[n] ?? ''));
}

abstract class Family<C> {
  readonly aggregator = 'sum';
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  protected readonly children = new Map<string, { readonly labels: Labels; readonly child: C }>();

  constructor(o: FamilyOptions) {
    this.name = o.name;
    this.help = o.help;
    this.labelNames = Object.freeze([...o.labelNames]);
    for (const registry of o.registers) registry.registerMetric(this as unknown as Metric);
  }

  protected abstract make(): C;

  /** The child of one label set: keep it, it is the same object for the family's life (until `reset`). */
  labels(labels: Labels = {}): C {
    const key = childKey(this.labelNames, labels, this.name);
    let entry = this.children.get(key);
    if (entry === undefined) {
      entry = { labels: Object.freeze({ ...labels }), child: this.make() };
      this.children.set(key, entry);
    }
    return entry.child;
  }

  /** prom-client's `Registry.resetMetrics`. */
  reset(): void {
    this.children.clear();
  }
}

export class FastCounterChild {
  value = 0;

  inc(amount = 1): void {
    if (!(amount >= 0) || !Number.isFinite(amount)) throw new TypeError(`counter increment must be a finite number >= 0, got ${amount}`);
    this.value += amount;
  }
}

export class FastCounter extends Family<FastCounterChild> {
  readonly type = 'counter';

  protected make(): FastCounterChild {
    return new FastCounterChild();
  }

  /** The registry's view (prom-client's `Counter#get` shape). */
  async get(): Promise<{ name: string; help: string; type: 'counter'; aggregator: string; values: ValueOut[] }> {
    const values: ValueOut[] = [];
    for (const { labels, child } of this.children.values()) values.push({ value: child.value, labels: { ...labels } });
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

export class FastHistogramChild {
  /** Observations per bucket (not cumulative); the last one is above every bound (+Inf only). */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(private readonly bounds: Float64Array) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`histogram value must be a finite number, got ${value}`);
    const b = this.bounds;
    let i = 0;
    // The first bucket whose upper bound is >= value (`le`), as prom-client's findBound.
    while (i < b.length && value > b[i]!) i++;
    this.counts[i]! += 1;
    this.sum += value;
    this.count += 1;
  }
}

export class FastHistogram extends Family<FastHistogramChild> {
  readonly type = 'histogram';
  private readonly bounds: Float64Array;

  constructor(o: FamilyOptions & { readonly buckets: readonly number[] }) {
    super(o);
    const sorted = [...o.buckets].sort((a, b) => a - b);
    if (sorted.some((b, i) => !Number.isFinite(b) || (i > 0 && b === sorted[i - 1]))) throw new TypeError(`${o.name}: buckets must be distinct finite numbers`);
    this.bounds = Float64Array.from(sorted);
  }

  protected make(): FastHistogramChild {
    return new FastHistogramChild(this.bounds);
  }

  /**
   * prom-client's `Histogram#get` shape: per child, one cumulative `_bucket` value per bound and
   * `+Inf` (with `le` first among the labels, as prom-client writes it), then `_sum` and `_count`.
   */
  async get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: string; values: ValueOut[] }> {
    const values: ValueOut[] = [];
    const bucket = `${this.name}_bucket`;
    for (const { labels, child } of this.children.values()) {
      let acc = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        acc += child.counts[i]!;
        values.push({ value: acc, labels: { le: this.bounds[i]!, ...labels }, metricName: bucket });
      }
      values.push({ value: child.count, labels: { le: '+Inf', ...labels }, metricName: bucket });
      values.push({ value: child.sum, labels: { ...labels }, metricName: `${this.name}_sum` });
      values.push({ value: child.count, labels: { ...labels }, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
