/**
 * The gateway's Prometheus metrics: every family name, help text and label lives here.
 *
 * Each call to `createMetrics` owns a private prom-client `Registry` (never the global one), so
 * several gateways can run in one process (tests, reload) without "metric already registered"
 * errors or mixed-up counts.
 *
 * Label values must stay bounded: an unbounded label (a raw path, a user name, an error message)
 * turns into unbounded memory in the gateway and in Prometheus. So methods and upstream error
 * reasons are normalized to fixed sets here, and every other label is capped per family by
 * `BoundedLabel`: once a family has seen `maxLabelValues` distinct values, new ones are counted
 * as `other` instead.
 *
 * Hot-path helpers (`observeRequest`, `upstreamAttempt`) cache `labels()` children in
 * nested maps, so a steady-state request allocates no label objects and no key strings; the three
 * families they feed are fast-metrics.ts's (prom-client's own cost ~7 % of a proxied request).
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { FastCounter, FastHistogram, type FastCounterChild, type FastHistogramChild } from './fast-metrics.js';

/** Methods kept as their own label value; anything else becomes `other` (RFC 9110 §9 methods + PATCH). */
export const METHOD_LABELS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'other'] as const;
export type MethodLabel = (typeof METHOD_LABELS)[number];

/** Why an upstream attempt failed. `other` collects whatever the proxy cannot classify. */
export const UPSTREAM_ERROR_REASONS = [
  'connect_refused',
  'connect_timeout',
  'response_timeout',
  'reset',
  'bad_response',
  'other',
] as const;
export type UpstreamErrorReason = (typeof UPSTREAM_ERROR_REASONS)[number];

export type Outcome = 'success' | 'failure';

/** Label value to use when a request matched no site or no route (unknown host, 404 by router). */
export const UNMATCHED = 'unmatched';

/** Request and upstream latency buckets, seconds: 1 ms … 30 s (the default upstream response timeout scale). */
export const LATENCY_BUCKETS: readonly number[] = Object.freeze([
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
]);

export interface CertificateExpiry {
  readonly host: string;
  readonly notAfter: Date;
}

export interface MetricsOptions {
  /** Gateway version for `portcullis_build_info`. */
  readonly version: string;
  /** Register prom-client's default process/nodejs metrics (standard names, no prefix). Default true. */
  readonly defaultMetrics?: boolean;
  /** Distinct values kept per bounded label before new ones collapse into `other`. Default 1000. */
  readonly maxLabelValues?: number;
}

export interface GatewayMetrics {
  /** The private registry (for tests and for merging; the gateway should use `metrics()`). */
  readonly registry: Registry;
  /** Content-Type of `metrics()` (Prometheus text format 0.0.4). */
  readonly contentType: string;
  /** The exposition text of every family. */
  metrics(): Promise<string>;
  /** Text and Content-Type together: the shape `server/admin.ts`'s `metrics` option expects. */
  exposition(): Promise<{ contentType: string; body: string }>;

  /**
   * One finished client request. `status` is the HTTP status sent; `seconds` its total duration,
   * or null for a request that is counted but not timed (a WebSocket: its duration is the
   * session's, which would swamp the route's response times).
   */
  observeRequest(site: string, route: string, method: string, status: number, seconds: number | null): void;
  /**
   * One attempt to reach an upstream, successful or not: `seconds` until the response headers or
   * the failure; `error` set when it failed. Every attempt is observed, so the histogram's
   * `_count` is the attempt count and `errors / _count` is the upstream error ratio the alert uses.
   */
  upstreamAttempt(upstream: string, seconds: number, error?: UpstreamErrorReason): void;
  /**
   * An attempt already observed as answered (its headers arrived) whose body then broke off: it
   * failed after all, so it counts as an upstream error, but not as a second attempt.
   */
  upstreamBrokeOff(upstream: string, error: UpstreamErrorReason): void;
  /** A rejected credential; `reason` is a short snake_case code from the auth module. */
  authFailure(reason: string): void;
  accessDenied(site: string, route: string): void;
  rateLimited(site: string, route: string): void;
  csrfRejected(site: string): void;
  acmeOrder(result: Outcome): void;
  jwksRefresh(issuer: string, result: Outcome): void;
  configReload(result: Outcome): void;
  /** Where `portcullis_bans_active` reads its value at scrape time (default: 0). */
  setBansActiveProvider(provider: () => number): void;
  /** Where `portcullis_tls_certificate_expiry_timestamp_seconds` reads certificates at scrape time. */
  setCertificateProvider(provider: () => readonly CertificateExpiry[]): void;
  /** Where `portcullis_workers` reads the number of serving processes (default: 1, this process). */
  setWorkersProvider(provider: () => number): void;
  /** A cluster worker died and is being replaced. */
  workerRestart(): void;
}

/** Caps the number of distinct values of one label; values past the cap are reported as `other`. */
class BoundedLabel {
  readonly #seen = new Set<string>();
  readonly #max: number;

  constructor(max: number) {
    this.#max = max;
  }

  value(v: string): string {
    if (this.#seen.has(v)) return v;
    if (this.#seen.size >= this.#max) return 'other';
    this.#seen.add(v);
    return v;
  }
}

/** Without allocation: llhttp only accepts upper-case method tokens, so no case folding is needed. */
export function normalizeMethod(method: string): MethodLabel {
  switch (method) {
    case 'GET':
    case 'HEAD':
    case 'POST':
    case 'PUT':
    case 'PATCH':
    case 'DELETE':
    case 'OPTIONS':
      return method;
    default:
      return 'other';
  }
}

/** A status code label: the three digits, or `other` for anything that is not a valid HTTP status. */
export function statusLabel(status: number): string {
  return Number.isInteger(status) && status >= 100 && status <= 599 ? String(status) : 'other';
}

/** Auth reasons are codes, not messages: anything else is folded so it cannot smuggle data into labels. */
function reasonLabel(reason: string): string {
  return /^[a-z0-9_]{1,64}$/.test(reason) ? reason : 'other';
}

interface RouteSlot {
  readonly duration: FastHistogramChild;
  /** Indexed by METHOD_LABELS position, then by numeric status. */
  readonly counters: Array<Map<number, FastCounterChild>>;
}

export function createMetrics(options: MetricsOptions): GatewayMetrics {
  const registry = new Registry();
  const registers = [registry];
  const max = options.maxLabelValues ?? 1000;

  if (options.defaultMetrics !== false) {
    collectDefaultMetrics({ register: registry });
    // These three gauges break Prometheus' naming rule (`_total` is for counters: promtool check
    // metrics flags them); `nodejs_active_handles{type}` and friends carry the same numbers.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
  }

  // The three families every proxied request touches: see fast-metrics.ts.
  const requests = new FastCounter({
    name: 'portcullis_http_requests_total',
    help: 'Client requests answered by the gateway, by site, route, method and status code.',
    labelNames: ['site', 'route', 'method', 'status'],
    registers,
  });
  const requestDuration = new FastHistogram({
    name: 'portcullis_http_request_duration_seconds',
    help: 'Time from receiving a client request to finishing its response, by site and route (WebSocket sessions are counted in portcullis_http_requests_total with status 101, not timed here).',
    labelNames: ['site', 'route'] as const,
    buckets: [...LATENCY_BUCKETS],
    registers,
  });
  const upstreamDuration = new FastHistogram({
    name: 'portcullis_upstream_request_duration_seconds',
    help: 'Time from sending a request upstream to its response headers or failure, per attempt.',
    labelNames: ['upstream'] as const,
    buckets: [...LATENCY_BUCKETS],
    registers,
  });
  const upstreamErrors = new Counter({
    name: 'portcullis_upstream_errors_total',
    help: 'Failed upstream attempts (also those whose response broke off mid-body), by upstream and reason.',
    labelNames: ['upstream', 'reason'] as const,
    registers,
  });
  const authFailures = new Counter({
    name: 'portcullis_auth_failures_total',
    help: 'Requests whose token was rejected (invalid, expired, malformed), by reason.',
    labelNames: ['reason'] as const,
    registers,
  });
  const accessDenied = new Counter({
    name: 'portcullis_access_denied_total',
    help: 'Authenticated requests refused by route policy (HTTP 403 or access: deny), by site and route.',
    labelNames: ['site', 'route'] as const,
    registers,
  });
  const rateLimited = new Counter({
    name: 'portcullis_rate_limited_total',
    help: 'Requests refused by a rate limit or an active ban (HTTP 429), by site and route.',
    labelNames: ['site', 'route'] as const,
    registers,
  });
  const csrfRejected = new Counter({
    name: 'portcullis_csrf_rejected_total',
    help: 'Cross-site state-changing requests refused, by site.',
    labelNames: ['site'] as const,
    registers,
  });
  let bansProvider: () => number = () => 0;
  new Gauge({
    name: 'portcullis_bans_active',
    help: 'Client keys currently banned.',
    registers,
    collect() {
      let n: number;
      try {
        n = bansProvider();
      } catch {
        return; // keep the last value rather than failing the whole scrape
      }
      this.set(n);
    },
  });
  let certProvider: () => readonly CertificateExpiry[] = () => [];
  const certHosts = new BoundedLabel(max);
  new Gauge({
    name: 'portcullis_tls_certificate_expiry_timestamp_seconds',
    help: 'notAfter of the certificate served for each host, as a Unix timestamp in seconds.',
    labelNames: ['host'] as const,
    registers,
    // With workers every process serves the same certificates: merged, not summed.
    aggregator: 'max',
    collect() {
      // Rebuilt on every scrape so a host removed by a reload disappears instead of going stale.
      this.reset();
      let certs: readonly CertificateExpiry[];
      try {
        certs = certProvider();
      } catch {
        // A broken provider must not take the whole /metrics endpoint down; the family is then
        // empty, which the expiry alert treats as "nothing to report" and `up` stays 1.
        return;
      }
      for (const c of certs) {
        const t = c.notAfter.getTime();
        if (Number.isFinite(t)) this.set({ host: certHosts.value(c.host) }, t / 1000);
      }
    },
  });
  const acmeOrders = new Counter({
    name: 'portcullis_acme_orders_total',
    help: 'ACME certificate orders (RFC 8555) finished, by result.',
    labelNames: ['result'] as const,
    registers,
  });
  const jwksRefreshes = new Counter({
    name: 'portcullis_jwks_refreshes_total',
    help: 'JWKS fetches, by issuer and result.',
    labelNames: ['issuer', 'result'] as const,
    registers,
  });
  const configReloads = new Counter({
    name: 'portcullis_config_reloads_total',
    help: 'Configuration reloads, by result (failure: the old configuration stays active).',
    labelNames: ['result'] as const,
    registers,
  });
  const buildInfo = new Gauge({
    name: 'portcullis_build_info',
    help: 'Always 1; labels carry the gateway version and the Node.js version.',
    labelNames: ['version', 'node'] as const,
    registers,
    aggregator: 'first',
  });
  let workersProvider: () => number = () => 1;
  new Gauge({
    name: 'portcullis_workers',
    help: 'Gateway processes serving requests (workers: N; 1 for a single process).',
    registers,
    // Every worker reports 1 and the primary the live count: the merge takes the primary's.
    aggregator: 'max',
    collect() {
      this.set(workersProvider());
    },
  });
  const workerRestarts = new Counter({
    name: 'portcullis_worker_restarts_total',
    help: 'Cluster workers that exited unexpectedly and were replaced.',
    registers,
  });
  buildInfo.set({ version: options.version, node: process.version }, 1);

  // Zero-initialize fixed-result series so `increase()` sees the first failure (a series that
  // appears already at 1 has no increase) — see Prometheus "Avoid missing metrics" practice.
  for (const result of ['success', 'failure'] as const) {
    acmeOrders.labels({ result }).inc(0);
    configReloads.labels({ result }).inc(0);
  }

  const sites = new BoundedLabel(max);
  const routes = new BoundedLabel(max);
  const upstreams = new BoundedLabel(max);
  const issuers = new BoundedLabel(max);
  const reasons = new BoundedLabel(Math.min(max, 64));

  const requestSlots = new Map<string, Map<string, RouteSlot>>();
  // Keyed by the BOUNDED values, so a flood of distinct (e.g. unknown-host) inputs cannot grow
  // these caches either.
  function routeSlot(s: string, r: string): RouteSlot {
    let byRoute = requestSlots.get(s);
    if (byRoute === undefined) {
      byRoute = new Map();
      requestSlots.set(s, byRoute);
    }
    let slot = byRoute.get(r);
    if (slot === undefined) {
      slot = { duration: requestDuration.labels({ site: s, route: r }), counters: [] };
      byRoute.set(r, slot);
    }
    return slot;
  }

  interface UpstreamSlot {
    readonly upstream: string;
    readonly duration: FastHistogramChild;
    readonly errors: Map<string, Counter.Internal>;
  }
  const upstreamSlots = new Map<string, UpstreamSlot>();

  function upstreamSlot(upstream: string): UpstreamSlot {
    const u = upstreams.value(upstream);
    let slot = upstreamSlots.get(u);
    if (slot === undefined) {
      slot = { upstream: u, duration: upstreamDuration.labels({ upstream: u }), errors: new Map() };
      upstreamSlots.set(u, slot);
    }
    return slot;
  }

  function countUpstreamError(slot: UpstreamSlot, error: UpstreamErrorReason): void {
    const reason: UpstreamErrorReason = (UPSTREAM_ERROR_REASONS as readonly string[]).includes(error) ? error : 'other';
    let counter = slot.errors.get(reason);
    if (counter === undefined) {
      counter = upstreamErrors.labels({ upstream: slot.upstream, reason });
      slot.errors.set(reason, counter);
    }
    counter.inc();
  }

  return {
    registry,
    contentType: registry.contentType,
    metrics: () => registry.metrics(),
    exposition: async () => ({ contentType: registry.contentType, body: await registry.metrics() }),

    observeRequest(site, route, method, status, seconds) {
      const s = sites.value(site);
      const r = routes.value(route);
      const slot = routeSlot(s, r);
      const m = normalizeMethod(method);
      const mi = METHOD_LABELS.indexOf(m);
      let byStatus = slot.counters[mi];
      if (byStatus === undefined) {
        byStatus = new Map();
        slot.counters[mi] = byStatus;
      }
      const code = Number.isInteger(status) && status >= 100 && status <= 599 ? status : 0;
      let counter = byStatus.get(code);
      if (counter === undefined) {
        counter = requests.labels({ site: s, route: r, method: m, status: statusLabel(code) });
        byStatus.set(code, counter);
      }
      counter.inc();
      if (seconds !== null) slot.duration.observe(seconds);
    },

    upstreamAttempt(upstream, seconds, error) {
      const slot = upstreamSlot(upstream);
      slot.duration.observe(seconds);
      if (error !== undefined) countUpstreamError(slot, error);
    },

    upstreamBrokeOff(upstream, error) {
      countUpstreamError(upstreamSlot(upstream), error);
    },

    authFailure(reason) {
      authFailures.inc({ reason: reasons.value(reasonLabel(reason)) });
    },
    accessDenied(site, route) {
      accessDenied.inc({ site: sites.value(site), route: routes.value(route) });
    },
    rateLimited(site, route) {
      rateLimited.inc({ site: sites.value(site), route: routes.value(route) });
    },
    csrfRejected(site) {
      csrfRejected.inc({ site: sites.value(site) });
    },
    acmeOrder(result) {
      acmeOrders.inc({ result });
    },
    jwksRefresh(issuer, result) {
      jwksRefreshes.inc({ issuer: issuers.value(issuer), result });
    },
    configReload(result) {
      configReloads.inc({ result });
    },
    setBansActiveProvider(provider) {
      bansProvider = provider;
    },
    setCertificateProvider(provider) {
      certProvider = provider;
    },
    setWorkersProvider(provider) {
      workersProvider = provider;
    },
    workerRestart() {
      workerRestarts.inc();
    },
  };
}
