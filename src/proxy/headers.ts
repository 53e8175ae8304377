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

const HOP_BY_HOP_SET: ReadonlySet<string> = new Set(HOP_BY_HOP);

/**
 * Whether a client header may reach the upstream as the client sent it. Not: hop-by-hop headers,
 * headers the client's Connection header names, the gateway-owned names (identity headers,
 * X-Forwarded-*, Forwarded, X-Request-Id, the method/path override headers; the gateway sets some
 * of those itself), their underscore spellings, HTTP/2 pseudo-headers, `Expect` (undici refuses it
 * and the client-facing server already answered 100-continue) and, unless it is forwarded, the
 * client's `Authorization`. For a WebSocket handshake, not the client's `Sec-WebSocket-*` either:
 * the gateway's own WebSocket client sends its own (and its own `Connection` and `Upgrade`).
 */
function forwardable(name: string, input: UpstreamHeaderInput, named: readonly string[] | null): boolean {
  if (HOP_BY_HOP_SET.has(name) || (named !== null && named.includes(name))) return false;
  if (input.websocket && name.startsWith('sec-websocket-')) return false;
  if (input.gatewayOwned.has(name)) return false;
  if (name === 'expect' || (name === 'authorization' && !input.forwardToken)) return false;
  // HTTP/2 pseudo-headers never go upstream.
  if (name.charCodeAt(0) === 58 /* ':' */) return false;
  // CGI, WSGI, Rack and PHP map both `-` and `_` to `_` (X_Auth_User → HTTP_X_AUTH_USER), so an
  // underscore spelling of a gateway-owned header would reach the app under the same name.
  if (name.includes('_') && input.gatewayOwned.has(name.replace(/_/g, '-'))) return false;
  return true;
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
  /** Lower-case names only the gateway may set (see `forwardable`). */
  readonly gatewayOwned: ReadonlySet<string>;
  readonly identityHeaders: readonly [user: string, email: string, roles: string, issuer: string];
  /** The authenticated principal (the same object for every request of a cached token), or null. */
  readonly identity: Identity | null;
  readonly forwardToken: boolean;
  /** A WebSocket handshake, forwarded by the gateway's WebSocket client. */
  readonly websocket: boolean;
  /**
   * The client's headers as received (never modified here): what may go is copied from them, and
   * a trusted proxy's forwarding chain is read from them as received, even where the proxy's
   * `Connection` names it (the client address was taken from the chain as received).
   */
  readonly received: Readonly<Record<string, string | string[] | undefined>>;
}

/** What the identity headers are made of: a Principal's fields. */
export interface Identity {
  readonly subject: string;
  readonly email: string | null;
  readonly roles: readonly string[];
  readonly issuer: string;
}

/** Identity header values, encoded once per principal: the verified-token cache hands out the same one. */
const encodedIdentities = new WeakMap<Identity, readonly [user: string, email: string | null, roles: string, issuer: string]>();

function encodedIdentity(identity: Identity): readonly [user: string, email: string | null, roles: string, issuer: string] {
  let encoded = encodedIdentities.get(identity);
  if (encoded === undefined) {
    encoded = [
      headerSafe(identity.subject, false),
      identity.email === null ? null : headerSafe(identity.email, false),
      identity.roles.map((r) => headerSafe(r, true)).join(','),
      headerSafe(identity.issuer, false),
    ];
    encodedIdentities.set(identity, encoded);
  }
  return encoded;
}

/**
 * The headers the upstream receives: a NEW object with the client's headers that may go
 * (`forwardable`), in the client's order, then the gateway's own. Filtering while copying keeps
 * the object out of V8's slow dictionary mode, into which every `delete` would turn it (an
 * authenticated request always had its `Authorization` deleted, a browser's its `Connection`).
 */
export function buildUpstreamHeaders(input: UpstreamHeaderInput): HeaderBag {
  const received = input.received;
  const clientXff = received['x-forwarded-for'];
  const clientProto = received['x-forwarded-proto'];
  const clientFHost = received['x-forwarded-host'];
  const clientFPort = received['x-forwarded-port'];
  const forwarded = received.forwarded;
  // No token array unless a Connection header exists.
  const named = received.connection !== undefined ? connectionTokens(received.connection) : null;
  const headers: HeaderBag = {};
  const names = Object.keys(received);
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    if (forwardable(name, input, named)) headers[name] = received[name];
  }
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
    const [userName, emailName, rolesName, issuerName] = input.identityHeaders;
    const [user, email, roles, issuer] = encodedIdentity(input.identity);
    headers[userName] = user;
    headers[issuerName] = issuer;
    if (email !== null) headers[emailName] = email;
    headers[rolesName] = roles;
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
 * an extra role into the list. So is a value (or list item) that starts or ends with a space: HTTP
 * parsers and comma-list readers trim it, and the role ` admin`, which the policy refused, would
 * reach the app as `admin`.
 */
export function headerSafe(value: string, listItem: boolean): string {
  let safe = true;
  const last = value.length - 1;
  for (let i = 0; i <= last; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x25 /* % */ || (listItem && c === 0x2c) || (c === 0x20 && (i === 0 || i === last))) {
      safe = false;
      break;
    }
  }
  if (safe) return value;
  return encodeURIComponent(value).replace(/[!'()*]/g, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`);
}
