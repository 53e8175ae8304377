/**
 * Request and response header hygiene between client and upstream.
 *
 * Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are never forwarded. The
 * client's `Connection` header and every header it names are removed before the gateway adds its
 * own headers, so `Connection: X-Forwarded-For` or
 * `Connection: X-Auth-User` cannot remove what the gateway sets.
 */
import { plainAddress } from './forwarded.js';

/** Lower-case names never forwarded in either direction. */
export const HOP_BY_HOP = [
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te',
  'trailer', 'transfer-encoding', 'upgrade', 'http2-settings',
] as const;

/**
 * Request headers that ask the app to use another method or path than the request line's —
 * honoured by Express's method-override, Rack::MethodOverride, Symfony, Laravel, ASP.NET Web API,
 * OData (method) and by IIS URL Rewrite, older Symfony and Zend (path). The gateway authorized the
 * method and the canonical path of the request line, so these never reach the app: a `GET` allowed
 * by `methods: [GET]` must not become a `DELETE`, nor `/public/x` become `/admin`, behind it.
 */
export const OVERRIDE_HEADERS = [
  'x-http-method-override', 'x-http-method', 'x-method-override', 'x-original-url', 'x-rewrite-url',
] as const;

/** Response headers that advertise internals. */
export const LEAKY_RESPONSE_HEADERS = ['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version', 'x-runtime', 'x-backend-server'] as const;

export type HeaderBag = Record<string, string | string[] | number | undefined>;

/** Names listed in a Connection header value (comma separated, case-insensitive). */
export function connectionTokens(value: string | string[] | number | undefined): string[] {
  if (value === undefined) return [];
  const joined = Array.isArray(value) ? value.join(',') : String(value);
  const out: string[] = [];
  for (const raw of joined.split(',')) {
    const t = raw.trim().toLowerCase();
    if (t) out.push(t);
  }
  return out;
}

/**
 * Removes, in place, every header that must not reach the upstream as the client sent it:
 * hop-by-hop headers, headers the client's Connection header names, and the gateway-owned
 * names (identity headers, X-Forwarded-*, Forwarded, X-Request-Id, the method/path override
 * headers) — the caller sets some of those after.
 */
export function stripRequestHeaders(headers: HeaderBag, gatewayOwned: readonly string[], keepUpgrade: boolean): void {
  // Per request: `delete` only what is there (deleting turns the object into a slow dictionary;
  // a read of an absent name does not), and no token array unless a Connection header exists.
  if (headers.connection !== undefined) {
    for (const name of connectionTokens(headers.connection)) {
      if (keepUpgrade && name === 'upgrade') continue;
      delete headers[name];
    }
  }
  for (let i = 0; i < HOP_BY_HOP.length; i++) {
    const name = HOP_BY_HOP[i]!;
    if (keepUpgrade && (name === 'connection' || name === 'upgrade')) continue;
    if (Object.hasOwn(headers, name)) delete headers[name];
  }
  for (let i = 0; i < gatewayOwned.length; i++) {
    const name = gatewayOwned[i]!;
    if (Object.hasOwn(headers, name)) delete headers[name];
  }
  const names = Object.keys(headers);
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    // HTTP/2 pseudo-headers never go upstream.
    if (name.charCodeAt(0) === 58 /* ':' */) delete headers[name];
    // CGI, WSGI, Rack and PHP map both `-` and `_` to `_` (X_Auth_User → HTTP_X_AUTH_USER), so an
    // underscore spelling of a gateway-owned header would reach the app under the same name.
    else if (name.includes('_') && gatewayOwned.includes(name.replace(/_/g, '-'))) delete headers[name];
  }
}

const RESPONSE_DROPPED: ReadonlySet<string> = new Set([...HOP_BY_HOP, ...LEAKY_RESPONSE_HEADERS]);

/**
 * An upstream response's headers without hop-by-hop headers, the headers its `Connection` names,
 * and internals-leaking ones, as a NEW object (the input is not touched): no `delete`s, which
 * would turn the header object into a slow dictionary on every response (issue 7). Names are
 * compared as given (undici and Node hand over lower-case names).
 */
export function withoutHopByHopResponseHeaders(headers: HeaderBag): HeaderBag {
  const named = headers.connection !== undefined ? connectionTokens(headers.connection) : null;
  const out: HeaderBag = {};
  const names = Object.keys(headers);
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    if (RESPONSE_DROPPED.has(name) || (named !== null && named.includes(name))) continue;
    out[name] = headers[name];
  }
  return out;
}

export interface UpstreamHeaderInput {
  readonly peer: string;
  readonly trustedPeer: boolean;
  readonly requestId: string;
  /** The Host (or :authority) value the client sent, forwarded as is: apps build URLs from it. */
  readonly host: string;
  readonly publicPort: number;
  readonly gatewayOwned: readonly string[];
  readonly identityHeaders: readonly [user: string, email: string, roles: string, issuer: string];
  readonly identity: { readonly user: string; readonly email: string | null; readonly roles: readonly string[]; readonly issuer: string } | null;
  readonly forwardToken: boolean;
  readonly websocket: boolean;
  /**
   * The request's headers as received, before anything was dropped. A trusted proxy's forwarding
   * chain is read from here: `headers` loses what the proxy's `Connection` names, and the client
   * address was taken from the chain as received.
   */
  readonly received: Readonly<Record<string, string | string[] | undefined>>;
}

/** The headers the upstream receives, built in place on a copy of the client's headers. */
export function buildUpstreamHeaders(headers: HeaderBag, input: UpstreamHeaderInput): HeaderBag {
  const received = input.received;
  const clientXff = received['x-forwarded-for'];
  const clientProto = received['x-forwarded-proto'];
  const clientFHost = received['x-forwarded-host'];
  const clientFPort = received['x-forwarded-port'];
  const forwarded = received.forwarded;
  stripRequestHeaders(headers, input.gatewayOwned, input.websocket);
  // undici refuses `Expect` and the client-facing server already answered 100-continue.
  delete headers.expect;
  if (!input.forwardToken) delete headers.authorization;
  headers.host = input.host;
  const peer = plainAddress(input.peer);
  if (input.trustedPeer) {
    const xff = Array.isArray(clientXff) ? clientXff.join(', ') : clientXff;
    headers['x-forwarded-for'] = xff ? `${xff}, ${peer}` : peer;
    headers['x-forwarded-proto'] = firstValue(clientProto) ?? 'https';
    headers['x-forwarded-host'] = firstValue(clientFHost) ?? input.host;
    headers['x-forwarded-port'] = firstValue(clientFPort) ?? String(input.publicPort);
    if (forwarded !== undefined) headers.forwarded = forwarded;
  } else {
    headers['x-forwarded-for'] = peer;
    headers['x-forwarded-proto'] = 'https';
    headers['x-forwarded-host'] = input.host;
    headers['x-forwarded-port'] = String(input.publicPort);
  }
  headers['x-request-id'] = input.requestId;
  if (input.identity) {
    const [user, email, roles, issuer] = input.identityHeaders;
    headers[user] = headerSafe(input.identity.user, false);
    headers[issuer] = headerSafe(input.identity.issuer, false);
    if (input.identity.email !== null) headers[email] = headerSafe(input.identity.email, false);
    headers[roles] = input.identity.roles.map((r) => headerSafe(r, true)).join(',');
  }
  return headers;
}

function firstValue(v: string | string[] | number | undefined): string | undefined {
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v[0] : String(v);
}

/**
 * Claim values come from tokens: anything outside visible ASCII (and, in a list, the comma that
 * separates items) is percent-encoded so that a claim can neither break the header nor smuggle
 * an extra role into the list.
 */
export function headerSafe(value: string, listItem: boolean): string {
  let safe = true;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x25 /* % */ || (listItem && c === 0x2c)) {
      safe = false;
      break;
    }
  }
  if (safe) return value;
  return encodeURIComponent(value).replace(/[!'()*]/g, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`);
}
