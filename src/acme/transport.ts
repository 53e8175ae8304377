/**
 * How our requests to the CA travel through acme-client's HTTP layer.
 *
 * acme-client 5 sends everything through ONE module-global axios instance (`acme.axios`) and has
 * no per-client agent option. Setting `acme.axios.defaults.httpsAgent` would make every ACME
 * client in the process trust our CA bundle, so instead we add interceptors that touch only
 * requests to our directory's origin:
 *
 *  - `httpsAgent` with `ca_bundle` (when configured) and a request timeout (axios has none by
 *    default, so a CA that accepts the connection and never answers would hang an order forever);
 *  - acme-client's own retry loop (up to 5 retries, sleeping 5 s × attempt, or up to the CA's
 *    Retry-After, inside the request) is skipped: the manager retries whole orders with its own
 *    capped, jittered backoff that also honours Retry-After, and `stop()` must not wait minutes
 *    for a sleeping request. This relies on acme-client's `retryAttempt` config field
 *    (src/axios.js); the Pebble "CA down" test fails if that stops working.
 *    badNonce is NOT affected: acme-client retries it in `signedRequest` (RFC 8555 §6.5).
 *  - the last CA problem document (type, Retry-After) and the last network error are recorded,
 *    because acme-client throws plain `Error(detail)` and loses both.
 *
 * Two managers for the same CA origin in one process would see each other's recorded problems;
 * the gateway runs one manager, so this only affects the hint used for backoff.
 */
import http from 'node:http';
import https from 'node:https';
import type { RequestOptions } from 'node:https';
import type { IncomingMessage, ClientRequest } from 'node:http';
import acme from 'acme-client';
import { parseRetryAfter } from './policy.js';

export const REQUEST_TIMEOUT = 30_000;

export interface CaFailure {
  /** ACME problem type (`urn:ietf:params:acme:error:…`), or null for network errors. */
  readonly problem: string | null;
  readonly status: number | null;
  readonly detail: string;
  readonly retryAfterMs: number | null;
}

export interface Transport {
  /** Forget what was recorded (call before each order attempt). */
  reset(): void;
  /** Last failure seen for our origin since `reset()`, ignoring badNonce (acme-client retries it). */
  lastFailure(): CaFailure | null;
  /** Destroys requests in flight and fails every later one at once (used by `stop()`). */
  abort(): void;
  detach(): void;
}

type Cfg = Record<string, unknown> & { url?: string; baseURL?: string };

export function attachTransport(opts: { directoryUrl: string; caPem: string | null; now: () => number }): Transport {
  const origin = new URL(opts.directoryUrl).origin;
  const agent = opts.caPem === null ? null : new https.Agent({ ca: opts.caPem, keepAlive: true });
  let last: CaFailure | null = null;
  let aborted = false;
  const live = new Set<ClientRequest>();

  const ours = (cfg: Cfg): boolean => {
    try {
      return new URL(cfg.url ?? '', cfg.baseURL).origin === origin;
    } catch {
      return false;
    }
  };

  // Records socket/TLS errors before acme-client's response interceptor replaces them with a
  // TypeError (it reads `response.config` of an error that has no response).
  const transport = {
    request(options: RequestOptions, cb: (res: IncomingMessage) => void): ClientRequest {
      const req = (options.protocol === 'http:' ? http : https).request(options, cb);
      live.add(req);
      req.on('close', () => live.delete(req));
      req.on('error', (err: NodeJS.ErrnoException) => {
        last = { problem: null, status: null, detail: err.code ? `${err.code}: ${err.message}` : err.message, retryAfterMs: null };
      });
      if (aborted) req.destroy(new Error('ACME manager stopped'));
      return req;
    },
  };

  const reqId = acme.axios.interceptors.request.use((config) => {
    const cfg = config as unknown as Cfg;
    if (!ours(cfg)) return config;
    if (agent !== null) cfg.httpsAgent = agent;
    if (!cfg.timeout) cfg.timeout = REQUEST_TIMEOUT;
    cfg.transport = transport;
    cfg.maxRedirects = 0;
    cfg.retryAttempt = Number.POSITIVE_INFINITY;
    return config;
  });

  const resId = acme.axios.interceptors.response.use((response) => {
    if (response.status >= 400 && ours(response.config as unknown as Cfg)) {
      const data = response.data as { type?: unknown; detail?: unknown } | undefined;
      const problem = typeof data?.type === 'string' ? data.type : null;
      if (problem !== 'urn:ietf:params:acme:error:badNonce') {
        last = {
          problem,
          status: response.status,
          detail: typeof data?.detail === 'string' ? data.detail : `HTTP ${response.status}`,
          retryAfterMs: parseRetryAfter(response.headers['retry-after'], opts.now()),
        };
      }
    }
    return response;
  });

  return {
    reset: () => {
      last = null;
    },
    lastFailure: () => last,
    abort: () => {
      aborted = true;
      for (const req of live) req.destroy(new Error('ACME manager stopped'));
    },
    detach: () => {
      acme.axios.interceptors.request.eject(reqId);
      acme.axios.interceptors.response.eject(resId);
      agent?.destroy();
    },
  };
}

/**
 * GET a URL on the CA with the same transport (RFC 9773 renewalInfo is unauthenticated GET).
 * Returns status, body and the Retry-After header.
 */
export async function caGet(url: string): Promise<{ status: number; data: unknown; retryAfter: unknown }> {
  const resp = await acme.axios.get(url, { responseType: 'json', validateStatus: null });
  return { status: resp.status, data: resp.data as unknown, retryAfter: resp.headers['retry-after'] };
}
