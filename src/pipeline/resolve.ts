/**
 * Stage 1 of the pipeline: turn a raw request into a resolved one, or refuse it.
 *
 * Everything here is decided from the request line and headers alone, before any body byte is
 * read and before any crypto: origin-form target, method, Host → site, canonical path → route,
 * client address, request id, declared body size. Pure: no Fastify, no I/O.
 */
import { randomUUID } from 'node:crypto';
import type { RouteConfig } from '../config/types.js';
import type { GatewayErrorCode } from '../errors.js';
import { canonicalizePath, normalizeHost } from '../policy/index.js';
import type { RuntimeState } from '../runtime.js';
import { clientAddress } from '../proxy/forwarded.js';
import type { RequestContext } from './context.js';

/** Methods the gateway proxies. TRACE and CONNECT are refused (RFC 9110 §9.3.8: TRACE reflects credentials). */
export const PROXIED_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
const PROXIED = new Set<string>(PROXIED_METHODS);
/** Scratch for `matchRoute`'s readings (resolveRequest is synchronous; copied out when filled). */
const READINGS: RouteConfig[] = [];
/** RFC 9110 §15.5.6: a 405 MUST list the methods the server supports. */
export const ALLOW_HEADER: Readonly<Record<string, string>> = Object.freeze({ allow: PROXIED_METHODS.join(', ') });

export interface Refusal {
  readonly status: number;
  readonly code: GatewayErrorCode;
  readonly reason: string;
  /** Headers the answer must carry (Allow on a 405). */
  readonly headers?: Readonly<Record<string, string>>;
}

export interface RawRequestView {
  readonly method: string;
  /** The request-target as received (`req.url`). */
  readonly url: string;
  readonly headers: Record<string, string | string[] | undefined>;
  /** Name/value pairs as received: Node silently keeps only the first Host or Authorization. */
  readonly rawHeaders?: readonly string[];
  readonly peer: string;
  readonly httpVersionMajor: number;
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** Request id: a trusted proxy's X-Request-Id when well-formed, else a fresh UUID. */
export function requestIdFor(trustedPeer: boolean, header: string | string[] | undefined): string {
  if (trustedPeer && typeof header === 'string' && REQUEST_ID.test(header)) return header;
  return randomUUID();
}

/**
 * The first pipeline stage. On success fills `ctx` (host, site, route, path, query) and returns
 * null; on refusal returns the status and code to answer with.
 */
export function resolveRequest(state: RuntimeState, req: RawRequestView, ctx: RequestContext): Refusal | null {
  const url = req.url;
  // Origin form only (RFC 9112 §3.2.1). Absolute form is for forward proxies; `*` is OPTIONS-only
  // server-wide and never means anything to an upstream app.
  if (url.charCodeAt(0) !== 47 /* / */) return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'not_origin_form' };
  if (!PROXIED.has(req.method)) return { status: 405, code: 'GW_ERR_METHOD_NOT_ALLOWED', reason: 'method_not_allowed', headers: ALLOW_HEADER };

  if (req.rawHeaders && hasDuplicate(req.rawHeaders, 'host')) return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'duplicate_host' };
  const rawHost = req.httpVersionMajor === 2 ? (single(req.headers[':authority']) ?? single(req.headers.host)) : req.headers.host;
  if (rawHost === undefined || Array.isArray(rawHost)) return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'missing_host' };
  const host = normalizeHost(rawHost);
  if (host === null) return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'bad_host' };
  // RFC 9113 §8.3.1: a Host naming another entity than :authority makes the request malformed.
  // Two names for one request is how host-confusion attacks start (a cache, a log or the app
  // reading the other one), so it is refused rather than silently resolved to :authority.
  if (req.httpVersionMajor === 2 && req.headers.host !== undefined && req.headers[':authority'] !== undefined) {
    const other = typeof req.headers.host === 'string' ? normalizeHost(req.headers.host) : null;
    if (other !== host) return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'authority_host_mismatch' };
  }
  ctx.host = host;
  const site = state.routes.matchSite(host);
  // RFC 9110 §15.5.20: 421 tells the client this server is not configured for that authority.
  if (site === undefined) return { status: 421, code: 'GW_ERR_MISDIRECTED', reason: 'unknown_host' };
  ctx.site = site;

  const q = url.indexOf('?');
  const rawPath = q === -1 ? url : url.slice(0, q);
  ctx.query = q === -1 ? '' : encodeRawBytes(url.slice(q));
  const canonical = canonicalizePath(rawPath);
  if (!canonical.ok) return { status: 400, code: 'GW_ERR_BAD_PATH', reason: `path_${canonical.reason}` };
  ctx.path = canonical.path;
  if (req.method !== 'GET' && req.method !== 'HEAD' && ctx.query !== '' && hasMethodOverrideParam(ctx.query)) {
    return { status: 400, code: 'GW_ERR_BAD_REQUEST', reason: 'method_override_param' };
  }

  // Filled only for an ambiguous path: a plain one allocates nothing.
  READINGS.length = 0;
  const route = state.routes.matchRoute(site, req.method, canonical.path, READINGS);
  if (route === undefined) return { status: 404, code: 'GW_ERR_NO_ROUTE', reason: 'no_route' };
  ctx.route = route;
  if (READINGS.length > 0) ctx.otherReadings = READINGS.slice();

  // RFC 9112 §6.1: a transfer coding the server does not understand gets 501. Node's parser
  // accepts any list ending in `chunked` (`gzip, chunked`) and removes only the chunking; the body
  // would reach the app still gzip-coded, with nothing left to say so.
  const te = req.headers['transfer-encoding'];
  if (te !== undefined && (typeof te !== 'string' || te.trim().toLowerCase() !== 'chunked')) {
    return { status: 501, code: 'GW_ERR_NOT_IMPLEMENTED', reason: 'transfer_coding' };
  }
  const cl = req.headers['content-length'];
  if (typeof cl === 'string' && Number(cl) > route.maxBodySize) {
    return { status: 413, code: 'GW_ERR_BODY_TOO_LARGE', reason: 'body_too_large' };
  }
  // RFC 9110 §10.1.1: an expectation other than 100-continue cannot be met (Node would answer a
  // bare 417 itself, without the gateway's headers, request id or access line).
  const expect = req.headers.expect;
  if (expect !== undefined && (typeof expect !== 'string' || expect.trim().toLowerCase() !== '100-continue')) {
    return { status: 417, code: 'GW_ERR_EXPECTATION_FAILED', reason: 'expectation_failed' };
  }
  return null;
}

// Bytes over 0x7F in a request target: HTTP/1.1's parser refuses them, HTTP/2 (nghttp2) lets them
// through, and Node reads them as Latin-1 characters.
const RAW_BYTE = /[\x80-\xff]/;
const RAW_BYTES = /[\x80-\xff]/g;

/**
 * The query with raw bytes over 0x7F percent-encoded, as `canonicalizePath` does for the path:
 * what reaches the upstream is a valid request target, and it reads the same bytes.
 */
function encodeRawBytes(query: string): string {
  return RAW_BYTE.test(query) ? query.replace(RAW_BYTES, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`) : query;
}

/**
 * A `_method` query parameter (`?_method=DELETE`): Symfony and Laravel (method override on, as
 * Laravel has it by default) take it for the method of a POST, Express's method-override can be
 * set to, so the app would run a method the policy never allowed. The override headers are removed
 * (proxy/headers.ts), but the query is forwarded as sent, so such a request is refused instead.
 * The name is compared decoded (`%5Fmethod`) and case-insensitively, and with any `[…]` suffix.
 */
export function hasMethodOverrideParam(query: string): boolean {
  if (!/_method|%5f/i.test(query)) return false;
  for (const part of query.slice(1).split('&')) {
    const eq = part.indexOf('=');
    let name = eq === -1 ? part : part.slice(0, eq);
    try {
      name = decodeURIComponent(name.replace(/\+/g, ' '));
    } catch {
      // an undecodable name is compared as sent
    }
    const bracket = name.indexOf('[');
    if ((bracket === -1 ? name : name.slice(0, bracket)).toLowerCase() === '_method') return true;
  }
  return false;
}

/**
 * Node keeps only the first of some repeated headers (Host, Authorization, …); a request that
 * repeats them is ambiguous — another hop may pick the other value — so the gateway refuses it.
 */
export function hasDuplicate(rawHeaders: readonly string[], lowerName: string): boolean {
  let seen = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length === lowerName.length && name.toLowerCase() === lowerName) {
      if (seen) return true;
      seen = true;
    }
  }
  return false;
}

/** A fresh context for a request that arrived while `state` was current. */
export function newContext(state: RuntimeState, req: RawRequestView, startedAt: bigint): RequestContext {
  const trustedPeer = state.trust(req.peer, 0);
  const xff = req.headers['x-forwarded-for'];
  const clientIp = clientAddress({ peer: req.peer, xForwardedFor: Array.isArray(xff) ? xff.join(', ') : xff }, state.trust);
  return {
    state,
    requestId: requestIdFor(trustedPeer, req.headers['x-request-id']),
    clientIp,
    trustedPeer,
    startedAt,
    host: '',
    site: null,
    route: null,
    otherReadings: null,
    limiting: null,
    path: '',
    query: '',
    principal: null,
    upstream: null,
    upstreamIndex: -1,
    proxied: false,
    reason: null,
    logged: false,
  };
}
