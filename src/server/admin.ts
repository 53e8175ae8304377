/**
 * The admin listener: liveness, readiness and (when wired) metrics. Bound to loopback by default;
 * `/metrics` can additionally require a bearer token (`admin.metrics_token`).
 */
import http from 'node:http';
import { timingSafeEqual, createHash } from 'node:crypto';
import type { Logger } from '../observability/logging.js';

export interface Readiness {
  ready: boolean;
  checks: Record<string, boolean>;
}

export interface AdminServerOptions {
  readonly ready: () => Readiness | Promise<Readiness>;
  readonly logger: Logger;
  readonly metrics?: () => Promise<{ contentType: string; body: string }>;
  readonly metricsToken?: () => string | null;
}

function sameSecret(a: string, b: string): boolean {
  // Hash first so the comparison is constant-time whatever the lengths.
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}

export function createAdminServer(opts: AdminServerOptions): http.Server {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const json = (status: number, body: unknown, extra: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...extra });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: 'method not allowed' });
    if (path === '/healthz') return json(200, { status: 'ok' });
    if (path === '/readyz') {
      Promise.resolve()
        .then(() => opts.ready())
        .then(
          (r) => json(r.ready ? 200 : 503, { status: r.ready ? 'ready' : 'not ready', checks: r.checks }),
          (err: unknown) => {
            opts.logger.error({ err }, 'readiness check failed');
            json(503, { status: 'not ready', checks: {} });
          },
        );
      return;
    }
    if (path === '/metrics' && opts.metrics) {
      const token = opts.metricsToken?.() ?? null;
      if (token !== null) {
        const h = req.headers.authorization ?? '';
        const m = /^Bearer +(\S+)$/i.exec(h);
        if (!m || !sameSecret(m[1]!, token)) return json(401, { error: 'unauthorized' }, { 'www-authenticate': 'Bearer realm="metrics"' });
      }
      opts.metrics().then(
        (m) => {
          res.writeHead(200, { 'content-type': m.contentType, 'cache-control': 'no-store' });
          res.end(m.body);
        },
        (err: unknown) => {
          opts.logger.error({ err }, 'metrics collection failed');
          json(500, { error: 'metrics unavailable' });
        },
      );
      return;
    }
    return json(404, { error: 'not found' });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  return server;
}
