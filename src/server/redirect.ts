/**
 * The plain-HTTP listener: ACME HTTP-01 answers first, then a redirect to HTTPS for the
 * configured hosts only. Never a redirect to a host we do not serve (no open redirect through
 * the Host header), never anything from the request copied into Location unchecked.
 */
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { canonicalizePath, normalizeHost } from '../policy/index.js';
import { renderError } from '../http/errors.js';
import { ALLOW_HEADER } from '../pipeline/resolve.js';
import type { GatewayErrorCode } from '../errors.js';
import type { RuntimeState } from '../runtime.js';
import type { Logger } from '../observability/logging.js';
import { redactUrl } from '../observability/logging.js';

export interface RedirectServerOptions {
  readonly current: () => RuntimeState;
  readonly httpsPort: () => number;
  readonly logger: Logger;
  /** ACME HTTP-01 key authorizations by token. */
  readonly challenges?: { get(token: string): string | undefined };
  readonly headersTimeout?: number;
}

const CHALLENGE_PREFIX = '/.well-known/acme-challenge/';
const TOKEN = /^[A-Za-z0-9_-]{1,256}$/;

export interface RedirectDecision {
  readonly status: number;
  readonly location?: string;
  readonly code?: GatewayErrorCode;
  readonly reason: string;
}

/** Pure: where a plain-HTTP request goes. */
export function redirectFor(state: RuntimeState, method: string, url: string, hostHeader: string | undefined, httpsPort: number): RedirectDecision {
  if (url.charCodeAt(0) !== 47) return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'not_origin_form' };
  if (method === 'TRACE' || method === 'CONNECT') return { status: 405, code: 'GW_ERR_METHOD_NOT_ALLOWED', reason: 'method_not_allowed' };
  const host = normalizeHost(hostHeader);
  if (host === null) return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'bad_host' };
  if (state.routes.matchSite(host) === undefined) return { status: 421, code: 'GW_ERR_MISDIRECTED', reason: 'unknown_host' };
  const q = url.indexOf('?');
  const canonical = canonicalizePath(q === -1 ? url : url.slice(0, q));
  if (!canonical.ok) return { status: 400, code: 'GW_ERR_BAD_PATH', reason: `path_${canonical.reason}` };
  const query = q === -1 ? '' : url.slice(q);
  // normalizeHost gives IPv6 literals with brackets and DNS names in lower case, and the
  // canonical path starts with a single `/`, so the Location can only point at our host.
  const authority = httpsPort === 443 ? host : `${host}:${httpsPort}`;
  return {
    // 301 for GET/HEAD; 308 keeps method and body for the rest (RFC 9110 §15.4.9).
    status: method === 'GET' || method === 'HEAD' ? 301 : 308,
    location: `https://${authority}${canonical.path}${query}`,
    reason: 'https_redirect',
  };
}

export function createRedirectServer(opts: RedirectServerOptions): http.Server {
  const server = http.createServer({ requireHostHeader: false }, (req, res) => {
    const url = req.url ?? '';
    const method = req.method ?? 'GET';
    const requestId = randomUUID();
    let status: number;
    let reason: string;
    if (url.startsWith(CHALLENGE_PREFIX) && opts.challenges && (method === 'GET' || method === 'HEAD')) {
      const token = url.slice(CHALLENGE_PREFIX.length);
      const answer = TOKEN.test(token) ? opts.challenges.get(token) : undefined;
      if (answer !== undefined) {
        res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
        res.end(method === 'HEAD' ? undefined : answer);
        status = 200;
        reason = 'acme_http01';
        log(status, reason);
        return;
      }
    }
    const d = redirectFor(opts.current(), method, url, req.headers.host, opts.httpsPort());
    status = d.status;
    reason = d.reason;
    if (d.location) {
      res.writeHead(d.status, { location: d.location, 'content-length': '0', 'x-content-type-options': 'nosniff' });
      res.end();
    } else {
      const body = renderError(d.status, d.code ?? 'GW_ERR_BAD_REQUEST', requestId, req.headers.accept);
      const headers: Record<string, string> = { 'content-type': body.contentType, 'cache-control': 'no-store', 'x-request-id': requestId, 'x-content-type-options': 'nosniff' };
      // RFC 9110 §15.5.6: a 405 lists what this listener serves (the redirect, or HTTP-01's GET).
      if (d.status === 405) Object.assign(headers, ALLOW_HEADER);
      res.writeHead(d.status, headers);
      res.end(method === 'HEAD' ? undefined : body.body);
    }
    log(status, reason);

    function log(s: number, r: string): void {
      opts.logger.info({ type: 'access', listener: 'http', request_id: requestId, ip: req.socket.remoteAddress, method, host: req.headers.host, path: redactUrl(url), status: s, reason: r }, 'request');
    }
  });
  server.headersTimeout = opts.headersTimeout ?? 10_000;
  server.requestTimeout = 30_000;
  server.keepAliveTimeout = 5_000;
  return server;
}
