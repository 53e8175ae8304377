/**
 * buildGateway: the one place that knows the request pipeline's order (drawn in docs/pipeline.md).
 *
 *   TCP front (TLS-ALPN-01 peek only while a challenge is pending) → TLS (SNI → certificate)
 *   → onRequest, one hook in six stages (synchronous unless a stage needs I/O):
 *       resolve              host → site, canonical path → route, declared body size
 *       ban                  an active ban on the client address
 *       admit                CSRF, then the upstream target
 *       rate limit           keys ip / header:NAME (@fastify/rate-limit), before any crypto
 *       authorize            bearer token → principal, route access rule, ban counting
 *       rate limit           key user (needs the principal)
 *   → preParsing             body limit for streamed bodies
 *   → handler                forward to the upstream (proxy/forward.ts; failover on connect failure)
 *   → onSend                 security headers on the gateway's own answers, request id
 *   → onResponse             access log + metrics (proxied responses: when they are over)
 *   errors → one safe body (http/errors), never an exception text.
 *
 * Three listeners: HTTPS (this Fastify app behind the TLS front), HTTP (redirects + ACME HTTP-01)
 * and admin (health, readiness, metrics). A configuration change swaps one RuntimeState.
 */
import { isIP, type AddressInfo, type Socket } from 'node:net';
import type { Server as HttpServer, IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { constants as http2Constants, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2';
import type { Duplex } from 'node:stream';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import { PassThrough, pipeline, Readable, Transform, type TransformCallback } from 'node:stream';
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import httpProxy from '@fastify/http-proxy';
import rateLimit from '@fastify/rate-limit';
import type { GatewayConfig } from './config/types.js';
import { GatewayError, type GatewayErrorCode } from './errors.js';
import { renderError, statusText } from './http/errors.js';
import { randomUUID } from 'node:crypto';
import { redactUrl, writeAccessLine, type Logger } from './observability/logging.js';
import { createMetrics, UNMATCHED, type GatewayMetrics } from './observability/metrics.js';
import { createSecurityEvents, openSecurityLog, prepareLogFiles, type SecurityEvents, type SecurityLog } from './observability/events.js';
import { buildRuntimeState, type RuntimeState } from './runtime.js';
import { ALLOW_HEADER, hasDuplicate, newContext, resolveRequest, PROXIED_METHODS, type RawRequestView } from './pipeline/resolve.js';
import type { RequestContext } from './pipeline/context.js';
import type { RouteProtection } from './pipeline/protect.js';
import { buildUpstreamHeaders, withoutHopByHopResponseHeaders, type HeaderBag } from './proxy/headers.js';
import { classifyUpstreamError } from './proxy/upstream-errors.js';
import { ClientStalledError, UpstreamClient, type ForwardHooks } from './proxy/forward.js';
import { createUpstreamConnection, finishUpstreamRequest, withDialPlan, type WebSocketDialPlan } from './proxy/websocket-dial.js';
import { bytesAfterUpgrade, offeredSubprotocols, UpstreamHandshakeError, WebSocketRelay } from './proxy/websocket.js';
import { authorizeRequest, type AuthRefusal } from './pipeline/authorize.js';
import { createAuthenticatorFor } from './pipeline/auth-factory.js';
import { CertificateStore, createTlsFront, type CertificateEntry, type TlsFront } from './tls/index.js';
import { applySecurityHeaders, BanList, checkCsrf, gatewayRateLimitOptions, hardenSetCookies, ipKey, routeLimiterOptions, type BanRules, type BanStatus, type RouteRateLimit, type VerifiedBanStatus } from './protect/index.js';
import { MemoryStore, type Store } from './state/index.js';
import { createRedirectServer } from './server/redirect.js';
import { createAdminServer } from './server/admin.js';
import { answeredRequestTimeout, SlowlorisGuard } from './server/slowloris.js';
import { closeServer, listenOn } from './server/lifecycle.js';
import { createCertificateAutomation, restartAutomation, type AcmeTuning, type CertificateAutomation } from './server/acme.js';
import { claimedIssuer, type Authenticator } from './auth/index.js';

export interface GatewayOptions {
  readonly config: GatewayConfig;
  readonly logger: Logger;
  /** Certificates to serve; when omitted the gateway loads `config.tls.certificates`. */
  readonly certificates?: CertificateStore;
  readonly version?: string;
  /** Shared state for rate limits and bans (default: in memory). */
  readonly store?: Store;
  /** ACME scheduling (clock, intervals); the defaults suit production. */
  readonly acme?: AcmeTuning;
  /**
   * Who obtains certificates. Default: this gateway runs its own ACME manager. A cluster worker
   * passes `followerAutomation()` and applies the primary's certificates and challenges itself.
   */
  readonly certificateAutomation?: CertificateAutomation;
  /** Serve the admin listener (default true). Cluster workers leave it to the primary, which aggregates. */
  readonly adminListener?: boolean;
}

export interface ReloadOptions {
  /** Say nothing of restart-only changes (a cluster worker: its primary says them once). */
  readonly quiet?: boolean;
  /**
   * Runs once everything that can fail has succeeded, just before the new configuration is
   * applied: where the caller installs what it staged (stageCertificates' step).
   */
  readonly beforeApply?: () => void;
}

export interface ListenerAddresses {
  https: AddressInfo;
  http: AddressInfo | null;
  admin: AddressInfo | null;
}

export interface Gateway {
  readonly app: FastifyInstance;
  readonly certificates: CertificateStore;
  readonly metrics: GatewayMetrics;
  readonly events: SecurityEvents;
  /** The state new requests get. */
  current(): RuntimeState;
  listen(): Promise<ListenerAddresses>;
  addresses(): ListenerAddresses;
  /**
   * Swap in a new, already validated configuration; throws (keeping the old one) if it cannot be
   * applied. The log files (the main log given in the options too) are opened anew, at their new
   * paths or at the same ones, so a rotated file is left for a new one. What a reload does not
   * change (RESTART_ONLY) keeps its start value, with a warning for each change unless `quiet`.
   */
  reload(config: GatewayConfig, options?: ReloadOptions): Promise<void>;
  /**
   * Opens the current log files anew (log rotation, when a reload was refused). Throws a
   * GatewayError, keeping the files in use, when one cannot be written.
   */
  reopenLogs(): void;
  /** Stop accepting, let in-flight requests finish for up to `graceMs`, then close everything. */
  close(graceMs?: number): Promise<void>;
  ready(): { ready: boolean; checks: Record<string, boolean> };
  /**
   * Replace the TLS session-ticket keys (48 bytes). Processes that share a port must share the
   * keys, or a client resuming its session on another worker always falls back to a full handshake.
   */
  setTicketKeys(keys: Buffer): void;
}

const UNSAFE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
/** HTTP/2 streams one connection may have open at once (see the server settings). */
const MAX_CONCURRENT_STREAMS = 128;
/** How long a connection refused by the HTTP/1.1 parser may stay open to drain the client's input. */
const LINGER_MS = 2_000;

function peerOf(req: FastifyRequest): string {
  return req.raw.socket?.remoteAddress ?? '';
}

function rawView(req: FastifyRequest): RawRequestView {
  return {
    method: req.raw.method ?? 'GET',
    url: req.raw.url ?? '',
    headers: req.raw.headers as Record<string, string | string[] | undefined>,
    rawHeaders: req.raw.rawHeaders,
    peer: peerOf(req),
    httpVersionMajor: req.raw.httpVersionMajor,
  };
}

/** A CONNECT's target is an authority (HTTP/1.1 request line, HTTP/2 `:authority`), never a path. */
/** What the parser-error handler reads of the response being written on a connection. */
interface PendingResponse {
  readonly _headerSent?: boolean;
  readonly req?: { readonly complete?: boolean };
  once(event: 'finish' | 'close', listener: () => void): unknown;
}

/** The flags Node's HTTP server itself reads and sets to stop reading a connection. */
type PausableSocket = Socket & { _paused?: boolean; parser?: { resume(): void } | null };

/** Pipelined HTTP/1.1 requests waiting for their turn, per connection (see gatewayRequest). */
const waitingPipelined = new WeakMap<object, number>();
/** Reading from a connection pauses while this many pipelined requests wait for their turn. */
const MAX_WAITING_PIPELINED = 32;
/** Connections paused because of {@link MAX_WAITING_PIPELINED} (not by Node's own backpressure). */
const pausedForPipelining = new WeakSet<object>();

/** Connections whose parser failed behind pending answers: the 400 is already scheduled. */
const parserFailed = new WeakSet<object>();

/**
 * `then()` once no response is being written or queued on this HTTP/1.1 connection (Node hands
 * the socket to the next queued response when one finishes), or at once when the socket closes.
 */
function afterPendingResponses(socket: Socket, then: () => void): void {
  let done = false;
  const finish = (): void => {
    if (done) return;
    done = true;
    then();
  };
  socket.once('close', finish);
  const check = (): void => {
    if (done) return;
    const pending = (socket as Socket & { _httpMessage?: PendingResponse | null })._httpMessage;
    // None left, or only the one for the request the parser failed on (never taken on).
    if (!pending || pending.req?.complete === false) {
      socket.removeListener('close', finish);
      finish();
      return;
    }
    // After 'finish', Node detaches the socket and assigns it to the next response in this turn.
    pending.once('finish', () => setImmediate(check));
  };
  check();
}

/** The largest request body any route of `config` accepts, and at least 1 MiB. */
function largestBody(config: GatewayConfig): number {
  let max = Math.max(config.limits.maxBodySize, 1024 * 1024);
  for (const site of config.sites) for (const route of site.routes) max = Math.max(max, route.maxBodySize);
  return max;
}

/** What the pipeline reads of a request Fastify never sees (an unknown method, an upgrade). */
function requestView(req: IncomingMessage): RawRequestView {
  return {
    method: req.method ?? '',
    url: req.url ?? '',
    headers: req.headers as Record<string, string | string[] | undefined>,
    peer: req.socket?.remoteAddress ?? '',
    httpVersionMajor: req.httpVersionMajor,
  };
}

function connectView(req: IncomingMessage | Http2ServerRequest): RawRequestView {
  return {
    method: 'CONNECT',
    url: req.url ?? single(req.headers[':authority']) ?? '',
    headers: req.headers as Record<string, string | string[] | undefined>,
    peer: req.socket?.remoteAddress ?? '',
    httpVersionMajor: req.httpVersionMajor,
  };
}

function protectionOf(ctx: RequestContext): RouteProtection {
  if (ctx.route) return ctx.state.protections.get(ctx.route)!;
  if (ctx.site) return ctx.state.siteProtections.get(ctx.site)!;
  return ctx.state.fallbackProtection;
}

/** Sends the gateway's own safe error body. */
export function sendError(reply: FastifyReply, status: number, code: GatewayErrorCode, extraHeaders?: Record<string, string>): FastifyReply {
  const ctx = reply.request.gw as RequestContext | undefined;
  const requestId = ctx?.requestId ?? String(reply.request.id);
  const out = renderError(status, code, requestId, reply.request.headers.accept);
  reply.code(status).header('content-type', out.contentType).header('cache-control', 'no-store');
  // An HTTP/1.1 request body that is not complete and was already being read (an upload cut by the
  // body limit, an upstream that failed mid-upload): Node discards the unread rest of a body only
  // when nobody read any of it, so the connection would hang until a timeout. And a body declared
  // too large is not worth reading to the end. Both close the connection after this answer.
  const raw = reply.request.raw;
  if (raw.httpVersionMajor === 1 && !raw.complete && (raw.readableFlowing !== null || status === 413)) reply.header('connection', 'close');
  if (extraHeaders) for (const [k, v] of Object.entries(extraHeaders)) reply.header(k, v);
  return reply.send(out.body);
}

/**
 * Request bodies held in memory at once (limits.request_buffer) by one process; past it, a body is
 * streamed once read so far. Clients that upload quickly and never finish cannot make the gateway
 * hold more than this.
 */
const MAX_BUFFERED_BYTES = 256 * 1024 * 1024;
const EMPTY_CHUNK = Buffer.alloc(0);

/**
 * Settings a reload does not change (the process set them up at start: sockets, the HTTP
 * parser's limits and timers, connection pools), by what the warning calls them.
 */
const RESTART_ONLY: readonly (readonly [string, (c: GatewayConfig) => unknown])[] = [
  // Not listen.public_https_port: redirects read it from the current state.
  ['listener addresses', (c) => [c.listen.https, c.listen.http, c.listen.admin]],
  ['limits.max_header_size, limits.headers_timeout or limits.request_timeout', (c) => [c.limits.maxHeaderSize, c.limits.headersTimeout, c.limits.requestTimeout]],
  ['timeouts.connect or timeouts.idle', (c) => [c.timeouts.connect, c.timeouts.idle]],
];

/** What {@link RESTART_ONLY} names, as plain data (a cluster primary hands its own to a new worker). */
export interface RestartOnlySettings {
  readonly listen: Pick<GatewayConfig['listen'], 'https' | 'http' | 'admin'>;
  readonly limits: Pick<GatewayConfig['limits'], 'maxHeaderSize' | 'headersTimeout' | 'requestTimeout'>;
  readonly timeouts: Pick<GatewayConfig['timeouts'], 'connect' | 'idle'>;
}

export function restartOnlySettings(c: GatewayConfig): RestartOnlySettings {
  return {
    listen: { https: c.listen.https, http: c.listen.http, admin: c.listen.admin },
    limits: { maxHeaderSize: c.limits.maxHeaderSize, headersTimeout: c.limits.headersTimeout, requestTimeout: c.limits.requestTimeout },
    timeouts: { connect: c.timeouts.connect, idle: c.timeouts.idle },
  };
}

/** `config` with the restart-only settings of the running process: what it really runs. */
export function withRestartOnly(config: GatewayConfig, running: RestartOnlySettings): GatewayConfig {
  return Object.freeze({
    ...config,
    listen: Object.freeze({ ...config.listen, ...running.listen }),
    limits: Object.freeze({ ...config.limits, ...running.limits }),
    timeouts: Object.freeze({ ...config.timeouts, ...running.timeouts }),
  });
}

/** The warnings a reload from `running` to `next` deserves: one per restart-only setting it changes. */
export function restartOnlyWarnings(running: GatewayConfig, next: GatewayConfig): string[] {
  const out: string[] = [];
  for (const [what, read] of RESTART_ONLY) {
    if (JSON.stringify(read(next)) !== JSON.stringify(read(running))) out.push(`${what} changed: the change takes effect on the next restart`);
  }
  return out;
}

/** The bytes that came with a WebSocket handshake after its head (read before the 'upgrade' event). */
const WS_HEAD = Symbol('portcullis.wsHead');
/** The client address of an HTTP/2 session, kept for the line of a session that breaks. */
const PEER_IP = Symbol('portcullis.peerIp');
/** RFC 6455 §4.1: a base64-encoded 16-byte nonce. */
const WS_KEY = /^[+/0-9A-Za-z]{22}==$/;

/**
 * The access-log reason for an HTTP/2 session error: `http2_protocol_error` for nghttp2's own
 * refusal (ERR_HTTP2_ERROR), `http2_<rest>` for Node's other ERR_HTTP2_* codes, null for a socket
 * error (ECONNRESET and the like), which is the client leaving, not breaking the protocol.
 */
function http2ErrorReason(code: string | undefined): string | null {
  if (code === undefined || !code.startsWith('ERR_HTTP2_')) return null;
  return code === 'ERR_HTTP2_ERROR' ? 'http2_protocol_error' : `http2_${code.slice('ERR_HTTP2_'.length).toLowerCase()}`;
}

/** Counts body bytes and fails the upload once it exceeds the route's limit (chunked bodies have no Content-Length to check up front). */
class BodyLimit extends Transform {
  private seen = 0;
  constructor(private readonly limit: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.limit) {
      cb(new GatewayError('GW_ERR_BODY_TOO_LARGE', undefined, { statusCode: 413 }));
      return;
    }
    cb(null, chunk);
  }
}

export async function buildGateway(options: GatewayOptions): Promise<Gateway> {
  const logger = options.logger;
  const cfg0 = options.config;
  /** The settings this process set up at start; reloads keep them (see RESTART_ONLY). */
  const restartOnlyOf0 = restartOnlySettings(cfg0);
  const certificates = options.certificates ?? new CertificateStore({ minVersion: cfg0.tls.minVersion });
  if (!options.certificates) await certificates.loadFiles(cfg0.tls.certificates);

  const metrics = createMetrics({ version: options.version ?? '0.0.0' });
  const securityLog: SecurityLog = openSecurityLog(cfg0.log.securityFile, logger);
  const events = createSecurityEvents(securityLog);
  const store = options.store ?? new MemoryStore();
  const bans = new BanList({ store });
  metrics.setBansActiveProvider(() => bans.activeBans());
  metrics.setCertificateProvider(() => [...certificates.expiries()].map(([host, notAfter]) => ({ host, notAfter })));
  const automation = options.certificateAutomation ?? createCertificateAutomation({ certificates, logger, metrics, events, tuning: options.acme });

  const newAuthenticator = (config: GatewayConfig): Authenticator | null =>
    createAuthenticatorFor(config, logger, (issuer, result) => metrics.jwksRefresh(issuer, result === 'ok' ? 'success' : 'failure'));
  let authenticator = newAuthenticator(cfg0);
  let state = buildRuntimeState(cfg0, authenticator);
  const slowloris = new SlowlorisGuard(cfg0.limits.headersTimeout, cfg0.limits.requestTimeout, cfg0.timeouts.idle);

  const app = Fastify({
    http2: true,
    https: {
      ...certificates.serverOptions(),
      allowHTTP1: true,
      // HTTP/2 header block limit; the HTTP/1.1 one is set on the server below. Streams at once per
      // connection: Node advertises no limit (2^32 - 1), which lets one connection hold as many
      // upstream requests as it likes; 128 is nginx's default (Go's is 250, RFC 9113 §6.5.2
      // recommends no fewer than 100). A client that goes over once it has acknowledged the
      // setting breaks the protocol: nghttp2 ends the whole connection (GOAWAY).
      settings: { maxHeaderListSize: cfg0.limits.maxHeaderSize, maxConcurrentStreams: MAX_CONCURRENT_STREAMS },
    },
    loggerInstance: logger,
    // The gateway writes one access line per request itself (with its request id), and logs
    // through `logger`: no per-request child logger (Fastify's default builds one per request).
    childLoggerFactory: (parent) => parent,
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    // The gateway answers requests that arrive while it drains itself (resolve), so that each
    // gets its access line; Fastify's own 503 wrote none.
    return503OnClosing: false,
    http2SessionTimeout: cfg0.timeouts.idle,
    keepAliveTimeout: cfg0.timeouts.idle,
    // Bodies are streamed to the upstream; the limit is enforced per route by BodyLimit.
    bodyLimit: Number.MAX_SAFE_INTEGER,
    // Requests the HTTP/1.1 parser refuses (smuggling shapes, oversized headers, timeouts) never
    // reach a hook: answer them here with the same safe body, and log them.
    clientErrorHandler: (err: Error & { code?: string }, socket: import('node:net').Socket) => {
      // writableEnded: already answered; the failed parser reports again for every later chunk.
      if (err.code === 'ECONNRESET' || socket.destroyed || socket.writableEnded) return;
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
      const code: GatewayErrorCode = status === 431 ? 'GW_ERR_HEADERS_TOO_LARGE' : status === 408 ? 'GW_ERR_REQUEST_TIMEOUT' : 'GW_ERR_BAD_REQUEST';
      const requestId = randomUUID();
      logger.info({ type: 'access', request_id: requestId, ip: socket.remoteAddress, status, reason: `parser_${(err.code ?? 'error').toLowerCase()}` }, 'request');
      const pending = (socket as Socket & { _httpMessage?: PendingResponse | null })._httpMessage;
      if (pending && pending.req?.complete === true) {
        // A later request on a pipelined connection is broken; earlier ones are being answered.
        // Their answers go out first, in order (a 400 now would read as the answer to the first
        // of them, which the upstream may have acted on); then the 400 — or nothing, after a
        // request that ended the connection (RFC 9112 §9.6: what follows is ignored).
        if (parserFailed.has(socket)) return;
        parserFailed.add(socket);
        socket.pause();
        afterPendingResponses(socket, () => {
          if (err.code === 'HPE_CLOSED_CONNECTION' || socket.destroyed || !socket.writable) socket.destroy();
          else endWithRawAnswer(socket, status, code, requestId, undefined, undefined);
        });
        return;
      }
      // An answer already started on this connection for the request that failed (its body
      // framing broke after its head): bytes of ours would land inside it, so the connection is
      // cut, as Node's own handler does. A response Node made for it that has sent nothing yet
      // gives way to the 400.
      if (pending?._headerSent === true) {
        socket.destroy();
        return;
      }
      if (err.code === 'HPE_CLOSED_CONNECTION') {
        socket.destroy();
        return;
      }
      endWithRawAnswer(socket, status, code, requestId, undefined, undefined);
    },
    // find-my-way refuses malformed percent-encoding with FST_ERR_BAD_URL; answered safely here.
    frameworkErrors: (err, request, reply) => {
      const req = request as unknown as FastifyRequest;
      if (!req.gw) req.gw = newContext(state, rawView(req), process.hrtime.bigint());
      req.gw.reason = err.code === 'FST_ERR_BAD_URL' ? 'path_bad_encoding' : 'framework_error';
      sendError(reply as unknown as FastifyReply, 400, 'GW_ERR_BAD_REQUEST');
    },
  }) as unknown as FastifyInstance;

  /**
   * The gateway's own answer written straight to an HTTP/1.1 connection Node took away from the
   * request pipeline (a request its parser refused, a CONNECT), then the connection closed. It
   * carries the security headers of answers outside any site (the set a 421 gets).
   */
  function endWithRawAnswer(socket: Duplex, status: number, code: GatewayErrorCode, requestId: string, accept: string | undefined, extra: Readonly<Record<string, string>> | undefined): number | undefined {
    if (!socket.writable) {
      socket.destroy();
      return undefined;
    }
    const out = renderError(status, code, requestId, accept);
    const set = state.fallbackProtection.headers;
    const all: Record<string, string> = { 'x-content-type-options': 'nosniff', ...set.common, ...set.httpsOnly, ...set.gatewayOnly, ...extra };
    // Values are fixed by helmet or validated when the configuration loads (a CSP with a control
    // character is refused there), so they are safe to write as raw header lines.
    let lines = '';
    for (const [name, value] of Object.entries(all)) lines += `${name}: ${value}\r\n`;
    // Lingering close: end() sends the answer, TLS close_notify and FIN, and the socket keeps
    // reading (and dropping) what the client is still sending. Destroying it at once, with request
    // bytes not yet read, makes the kernel answer with a TCP reset that can discard the answer at
    // the client. The wait is bounded: the socket is destroyed after LINGER_MS whatever happens.
    socket.resume();
    const bytes = Buffer.byteLength(out.body);
    socket.end(
      `HTTP/1.1 ${status} ${statusText(status)}\r\nContent-Type: ${out.contentType}\r\nContent-Length: ${bytes}\r\n` +
        `X-Request-Id: ${requestId}\r\n${lines}Cache-Control: no-store\r\nConnection: close\r\n\r\n${out.body}`,
    );
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
    return bytes;
  }

  const server = app.server as unknown as HttpServer;
  // Node's HTTP/1.1 parser reads this from the server object for connections the http2 server
  // hands to it (allowHTTP1); beyond it the client gets 431.
  (server as HttpServer & { maxHeaderSize?: number }).maxHeaderSize = cfg0.limits.maxHeaderSize;
  // Node keeps only the first 1 000 header lines in `req.headers` (its default maxHeadersCount)
  // but frames the body by every line it read: a Transfer-Encoding or Content-Length behind 1 000
  // padding lines was invisible to the body limit and the transfer-coding check. Every line is
  // kept; `max_header_size` bounds them.
  (server as HttpServer).maxHeadersCount = 0;
  /** Requests that asked for 100 Continue, not sent yet. */
  const awaitingContinue = new WeakSet<object>();
  // An Expect other than 100-continue: through the pipeline, which answers the gateway's 417.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    // Node's HTTP/2 layer compares `100-continue` exactly; the value is case-insensitive.
    if (typeof req.headers.expect === 'string' && req.headers.expect.trim().toLowerCase() === '100-continue') awaitingContinue.add(req);
    server.emit('request', req, res);
  });
  // `Expect: 100-continue`: Node would send 100 Continue at once, inviting the body of an upload
  // the gateway is about to refuse (401, 403, 413). It is sent once every stage has let the
  // request through (preParsing, below), as nginx sends it when it starts reading the body.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    awaitingContinue.add(req);
    server.emit('request', req, res);
  });
  // Fastify applies keepAliveTimeout only to its http1 servers; the http2 compat server's own
  // default differs by Node version (none on 20, 5 s on 24). `timeouts.idle` is the one setting.
  server.keepAliveTimeout = cfg0.timeouts.idle;
  certificates.bindServer(server as never);
  slowloris.attach(server);
  // An HTTP/2 connection the client broke (a malformed frame, a flood nghttp2 refuses) is ended by
  // Node with GOAWAY; Node 24 reports it as `sessionError` with an ERR_HTTP2_* code (Node 20 does
  // not report a malformed frame). Without this line it left no trace, where an HTTP/1.1 request
  // the parser refuses gets an access line. Socket errors come this way too (a client's reset, on
  // Node 20): not logged, as for HTTP/1.1. The address is read when the session starts: by the
  // error, the socket is gone.
  server.on('session', (session: ServerHttp2Session) => {
    (session as ServerHttp2Session & { [PEER_IP]?: string })[PEER_IP] = session.socket.remoteAddress;
  });
  server.on('sessionError', (err: Error & { code?: string }, session: ServerHttp2Session & { [PEER_IP]?: string }) => {
    const reason = http2ErrorReason(err.code);
    if (reason === null) return;
    logger.info({ type: 'connection', ip: session[PEER_IP], http: '2.0', reason, err: { code: err.code, message: err.message } }, 'connection closed');
  });
  // CONNECT never reaches Fastify. Without a listener, Node's HTTP/2 compat layer answers it with a
  // bare 405 (no security headers, no request id, no log line) and its HTTP/1.1 parser drops the
  // connection. Both get the gateway's own 405 here: a tunnel is not something the gateway offers.
  /**
   * The gateway's 405 for a request no Fastify route can take, written to the response Node made
   * for it (security headers, request id, one access line). The connection stays usable.
   */
  function answerMethodNotAllowed(req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse, ctx: RequestContext): void {
    ctx.reason = 'method_not_allowed';
    const out = renderError(405, 'GW_ERR_METHOD_NOT_ALLOWED', ctx.requestId, single(req.headers.accept));
    const base: IncomingHttpHeaders = { 'content-type': out.contentType, 'cache-control': 'no-store', 'x-request-id': ctx.requestId, ...ALLOW_HEADER };
    res.writeHead(405, applySecurityHeaders(base, state.fallbackProtection.headers, 'override', { https: true, gatewayGenerated: true }) as never);
    res.end(out.body);
    // 'close', not 'finish': a stream the client resets is logged too.
    res.once('close', () => logRequest(ctx, req as FastifyRequest['raw'], 405, res.writableFinished ? Buffer.byteLength(out.body) : undefined));
  }

  // Methods Fastify's router does not know never reach a hook: Fastify answers them itself (a bare
  // 404, its own request id, no access line) and logs a "fastify bug" warning with the whole route
  // table, which any client could use to flood the log. HTTP/2 carries any token as `:method`
  // (`FOO`, `get`); Node's HTTP/1.1 parser refuses unknown methods before this. They get the
  // gateway's 405 instead; every other request goes to Fastify as before.
  const routable: ReadonlySet<string> = new Set((app as unknown as { supportedMethods: string[] }).supportedMethods);
  const [fastifyHandler] = server.listeners('request') as ((req: IncomingMessage, res: ServerResponse) => void)[];
  if (fastifyHandler === undefined) throw new Error('unreachable: Fastify installed no request listener');
  server.removeListener('request', fastifyHandler);
  server.prependListener('request', function gatewayRequest(this: HttpServer, req: IncomingMessage, res: ServerResponse) {
    // HTTP/1.1 pipelining: Node parses and emits every request of a read at once, each with a
    // response queued behind the one being written. One is taken on only when its turn comes (its
    // response gets the socket), as nginx reads the next request only after the answer before it:
    // a request behind an answer that closes the connection (a 413, `Connection: close`, HTTP/1.0)
    // then never reaches the upstream, whose answer could never be sent.
    if (req.httpVersionMajor === 1 && res.socket === null) {
      // Node reads on while requests wait (it pauses on unsent output, and none of theirs is
      // written yet): a flood of pipelined requests behind one slow answer would all be read and
      // held. Reading stops at MAX_WAITING_PIPELINED and goes on as they are taken on.
      const socket = req.socket as PausableSocket;
      const waiting = (waitingPipelined.get(socket) ?? 0) + 1;
      waitingPipelined.set(socket, waiting);
      // Node's own way (its parser consumes a TLS socket's handle directly, so pausing the stream
      // alone would not stop it): flag the socket, and Node pauses the parser after this chunk.
      // (Node may resume it itself once its output drains: then the next request over the limit
      // pauses it again.)
      if (waiting >= MAX_WAITING_PIPELINED && socket._paused !== true) {
        socket._paused = true;
        socket.pause();
        pausedForPipelining.add(socket);
      }
      let counted = true;
      const taken = (): void => {
        if (!counted) return;
        counted = false;
        const left = waitingPipelined.get(socket)! - 1;
        waitingPipelined.set(socket, left);
        // Only a pause of ours is lifted here: Node pauses a connection itself while its client
        // reads too slowly, and that one is Node's to lift.
        if (left < MAX_WAITING_PIPELINED && pausedForPipelining.delete(socket) && socket._paused === true && !parserFailed.has(socket)) {
          socket._paused = false;
          socket.parser?.resume();
          socket.resume();
        }
      };
      // Never taken on: the connection ended first.
      req.once('close', taken);
      res.once('socket', () => {
        taken();
        // The request the parser failed on: its body will never be whole, and the 400 that follows
        // the answers before it (clientErrorHandler) is its answer.
        if (!req.complete && parserFailed.has(req.socket)) return;
        gatewayRequest.call(this, req, res);
      });
      return;
    }
    if (routable.has(req.method ?? '')) {
      fastifyHandler.call(this, req, res);
      return;
    }
    answerMethodNotAllowed(req, res, newContext(state, requestView(req), process.hrtime.bigint()));
  });

  server.on('connect', (req: IncomingMessage | Http2ServerRequest, resOrSocket: Http2ServerResponse | Duplex) => {
    const ctx = newContext(state, connectView(req), process.hrtime.bigint());
    ctx.reason = 'method_not_allowed';
    if (req.httpVersionMajor === 2) {
      answerMethodNotAllowed(req, resOrSocket as Http2ServerResponse, ctx);
      return;
    }
    const socket = resOrSocket as Duplex & { _httpMessage?: unknown };
    slowloris.release(socket);
    // An answer to an earlier request, pipelined, may still be going out (Node never creates a
    // response for a CONNECT itself): bytes of ours would land inside it. Cut the connection, as
    // Node does for a CONNECT nobody handles. Logged as nginx logs a connection it closed without
    // an answer (444), or one the client closed first (499).
    if (socket._httpMessage || !socket.writable) {
      const pipelined = Boolean(socket._httpMessage);
      socket.destroy();
      ctx.reason = pipelined ? 'pipelined_connect' : 'client_closed';
      logRequest(ctx, req as FastifyRequest['raw'], pipelined ? 444 : 499, undefined);
      return;
    }
    // Node's HTTP server has let go of the socket; a reset still meets the TLS socket's own error
    // listener (the reset test in test/gateway/hygiene.test.ts).
    const bytes = endWithRawAnswer(socket, 405, 'GW_ERR_METHOD_NOT_ALLOWED', ctx.requestId, single(req.headers.accept), ALLOW_HEADER);
    logRequest(ctx, req as FastifyRequest['raw'], 405, bytes);
  });

  app.decorateRequest('gw', null as unknown as RequestContext);

  // @fastify/rate-limit, registered without route hooks: the pipeline calls its limiter itself so
  // that ip- and header-keyed limits run BEFORE token verification (a token-guessing flood is
  // limited like any other) and user-keyed limits right after it (they need the token subject).
  await app.register(rateLimit, {
    ...gatewayRateLimitOptions({
      store,
      getRules: (request) => request.gw?.limiting ?? (request.gw?.route ? protectionOf(request.gw).rateLimit : null),
      clientIp: (request) => request.gw.clientIp,
      subject: (request) => request.gw.principal?.subject ?? null,
      issuer: (request) => request.gw.principal?.issuer ?? null,
      onExceeded: (request, key) => {
        const ctx = request.gw;
        ctx.reason = 'rate_limited';
        metrics.rateLimited(ctx.site!.id, ctx.route!.id);
        const rl = ctx.limiting ?? protectionOf(ctx).rateLimit;
        events.emit('rate_limited', { ...who(ctx), reason: 'limit_exceeded', key, limit: rl?.max, window_ms: rl?.windowMs });
      },
    }),
    global: false,
  } as never);
  type Limiter = (req: FastifyRequest, reply: FastifyReply) => Promise<void>;
  const createLimiter = (app as unknown as { rateLimit(options?: object): Limiter }).rateLimit;
  // One limiter per route's rules (built on first use, dropped with its configuration): the
  // plugin awaits `max` and `timeWindow` when they are functions, not when they are numbers.
  const limiters = new WeakMap<RouteRateLimit, Limiter>();
  function limiterFor(rules: RouteRateLimit): Limiter {
    let limiter = limiters.get(rules);
    if (limiter === undefined) {
      limiter = createLimiter(routeLimiterOptions(rules));
      limiters.set(rules, limiter);
    }
    return limiter;
  }

  /**
   * @fastify/rate-limit counts a request once, whatever limiters run on it: its handler marks the
   * request with a symbol of its own (not exported; a request decorator) and returns at once when
   * it sees the mark. A request counted under several routes' limits (rateLimitStage) has the mark
   * cleared before each; cleared, not deleted, so that the request keeps its shape. Should the
   * plugin rename the mark, the request is refused (500) rather than counted under one limit only,
   * and the attack tests of ambiguous paths (test/authz/composition-attacks.test.ts) fail.
   */
  let rateLimitMark: symbol | undefined;
  function allowAnotherLimiter(request: FastifyRequest): void {
    if (rateLimitMark === undefined) {
      rateLimitMark = Object.getOwnPropertySymbols(request).find((sym) => sym.description === 'fastify.request.rateLimitRan');
      if (rateLimitMark === undefined) throw new GatewayError('GW_ERR_INTERNAL', '@fastify/rate-limit no longer marks the requests it counted as this gateway expects');
    }
    (request as unknown as Record<symbol, unknown>)[rateLimitMark] = false;
  }

  /**
   * The onRequest stages, in order. Each answers "did I answer the request?" (true: it was refused
   * and the answer sent, the pipeline ends), synchronously when it can: a stage needing I/O (a
   * token not verified yet, a rate-limit counter, a ban held elsewhere) returns a promise, and only
   * then does the request wait for one. Never the reply itself: a FastifyReply is a thenable, so
   * an async function returning it resolves to `undefined` once the response has FINISHED — the
   * gate would then go on to check the token of a request it already refused.
   */
  type Stage = (request: FastifyRequest, reply: FastifyReply) => boolean | Promise<boolean>;
  const stages: readonly Stage[] = [resolve, checkBan, admit, rateLimitStage(false), authorize, rateLimitStage(true)];

  function runStages(from: number, request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    for (let i = from; i < stages.length; i++) {
      let answered: boolean | Promise<boolean>;
      try {
        answered = stages[i]!(request, reply);
      } catch (err) {
        done(err as Error);
        return;
      }
      if (answered === true) return;
      if (answered !== false) {
        answered.then(
          (a) => {
            if (!a) runStages(i + 1, request, reply, done);
          },
          (err: Error) => done(err),
        );
        return;
      }
    }
    done();
  }

  // All stages run as ONE callback-style onRequest hook: no promise per request unless a stage
  // needs I/O. A refused request is answered by its stage, and `done` is not called.
  app.addHook('onRequest', function gate(request, reply, done) {
    runStages(0, request, reply, done);
  });

  // 1. resolve: request line and headers → site, route, canonical path; cheap refusals first,
  //    before any body byte is read and before any crypto.
  function resolve(request: FastifyRequest, reply: FastifyReply): boolean {
    const view = rawView(request);
    const ctx = newContext(state, view, process.hrtime.bigint());
    request.gw = ctx;
    if (draining) {
      // A request on a connection still open while the gateway shuts down (pipelined, or a
      // keep-alive one): refused, and the connection closed after the answer (Fastify's header).
      ctx.reason = 'shutting_down';
      sendError(reply, 503, 'GW_ERR_SHUTTING_DOWN');
      return true;
    }
    const refusal = resolveRequest(ctx.state, view, ctx);
    if (refusal === null) return false;
    ctx.reason = refusal.reason;
    sendError(reply, refusal.status, refusal.code, refusal.headers);
    return true;
  }

  // 2. an active ban on the client address.
  function checkBan(request: FastifyRequest, reply: FastifyReply): boolean | Promise<boolean> {
    const ctx = request.gw;
    if (!protectionOf(ctx).bans) return false;
    const ban = bans.check(ipKey(ctx.clientIp));
    return ban instanceof Promise ? ban.then((b) => refuseBanned(ctx, reply, b)) : refuseBanned(ctx, reply, ban);
  }

  function refuseBanned(ctx: RequestContext, reply: FastifyReply, ban: BanStatus): boolean {
    if (!ban.banned) return false;
    events.emit('banned', { ...who(ctx), reason: 'ban_active', key: ipKey(ctx.clientIp) });
    answerBanned(ctx, reply, ban.retryAfterMs);
    return true;
  }

  /** The 429 of a banned client (its event is the caller's: `ban_active`, or the ban just set). */
  function answerBanned(ctx: RequestContext, reply: FastifyReply, retryAfterMs: number): void {
    ctx.reason = 'banned';
    metrics.rateLimited(ctx.site!.id, ctx.route!.id);
    sendError(reply, 429, 'GW_ERR_BANNED', { 'retry-after': String(Math.max(1, Math.ceil(retryAfterMs / 1000))) });
  }

  /** A ban this request's check or failure wrote: one `banned` event (`auth_failures`). */
  function emitBanIssued(ctx: RequestContext, rules: BanRules, failures: number | undefined): void {
    events.emit('banned', { ...who(ctx), reason: 'auth_failures', key: ipKey(ctx.clientIp), ...(failures === undefined ? {} : { failures }), duration_ms: rules.durationMs });
  }

  // 3. CSRF (Fetch Metadata / Origin): only unsafe methods and upgrades (WebSocket handshakes)
  //    that carry cookies are at risk. Then the upstream target is chosen.
  function admit(request: FastifyRequest, reply: FastifyReply): boolean {
    const ctx = request.gw;
    const prot = protectionOf(ctx);
    const headers = request.raw.headers;
    const method = request.raw.method ?? 'GET';
    const upgrade = headers.upgrade !== undefined;
    if (prot.csrf.enabled && (UNSAFE_METHODS.has(method) || upgrade) && headers.cookie !== undefined) {
      const port = publicPort(ctx.state);
      const verdict = checkCsrf(
        {
          method,
          upgrade,
          hasCookie: true,
          secFetchSite: single(headers['sec-fetch-site']),
          origin: single(headers.origin),
          ownOrigin: port === 443 ? `https://${ctx.host}` : `https://${ctx.host}:${port}`,
        },
        prot.csrf,
      );
      if (!verdict.allow) {
        ctx.reason = `csrf_${verdict.reason}`;
        metrics.csrfRejected(ctx.site!.id);
        events.emit('csrf_rejected', { ...who(ctx), reason: verdict.reason, origin: single(headers.origin), method });
        sendError(reply, 403, 'GW_ERR_CSRF');
        return true;
      }
    }
    // The canonical path is what the upstream gets (and what WebSocket proxying reads).
    request.raw.url = ctx.path + ctx.query;
    const pool = ctx.state.pools.get(ctx.route!)!;
    ctx.upstreamIndex = pool.pick();
    ctx.upstream = pool.targets[ctx.upstreamIndex]!.origin;
    return false;
  }

  // 4 and 6. rate limits: by client address or header before any crypto (4), by token subject
  //    right after the token check (6; anonymous callers fall back to their address). Over the
  //    limit, the limiter rejects with the 429 the error handler answers.
  //    A path an upstream may read as another route too (policy/routes.ts) is counted under that
  //    route's limit as well: limits are per route, and the one the table returned cannot stand in
  //    for a route the app may serve the request as. In a stage, its own limit goes last (its
  //    RateLimit-* headers are sent); a refusal names the limit that refused (ctx.limiting).
  function rateLimitStage(byUser: boolean): Stage {
    const applies = (rl: RouteRateLimit | null): rl is RouteRateLimit => rl !== null && (rl.key === 'user') === byUser;
    return function limit(request, reply) {
      const ctx = request.gw;
      const rl = protectionOf(ctx).rateLimit;
      const others = ctx.otherReadings;
      if (others === null) return applies(rl) ? limiterFor(rl)(request, reply).then(notAnswered) : false;
      const limits: RouteRateLimit[] = [];
      for (const r of others) {
        const each = ctx.state.protections.get(r)!.rateLimit;
        // A public route's limit keyed by user counts by address, as that route's own requests
        // are (no token is read for them): before the token check, whatever the chosen route needs.
        if (each !== null && (each.key === 'user' && r.access !== 'public') === byUser) limits.push(each);
      }
      if (applies(rl)) limits.push(rl);
      if (limits.length === 0) return false;
      // One limit at a time, each read by the limiter through ctx.limiting (getRules above).
      let chain: Promise<boolean> = Promise.resolve(false);
      for (const each of limits) {
        chain = chain.then((answered) => {
          if (answered) return true;
          ctx.limiting = each;
          allowAnotherLimiter(request);
          return limiterFor(each)(request, reply).then(notAnswered);
        });
      }
      const done = (): void => {
        ctx.limiting = null;
      };
      return chain.finally(done);
    };
  }

  // 5. authorize: bearer token → principal, then the route's access rule.
  function authorize(request: FastifyRequest, reply: FastifyReply): boolean | Promise<boolean> {
    const ctx = request.gw;
    // Two Authorization headers: Node kept the first; hand both over so the authenticator refuses.
    const authorization = hasDuplicate(request.raw.rawHeaders, 'authorization') ? headerValues(request.raw.rawHeaders, 'authorization') : request.headers.authorization;
    const refusal = authorizeRequest(ctx, authorization);
    if (refusal === null) return false;
    if (refusal instanceof Promise) {
      // The ban was checked (stage 2) before the token went to verification. Verifications of
      // one burst (streams of one HTTP/2 connection, many connections at once) all pass that
      // check in the same turn and finish later: without a second look, every guess of the burst
      // is answered, and a right one forwarded, after the failures before it earned a ban.
      return refusal.then((r) => {
        const rules = protectionOf(ctx).bans;
        if (!rules) return r === null ? false : refuseAccess(ctx, reply, r, authorization);
        if (r !== null) return afterBanCheck(ctx, reply, () => refuseAccess(ctx, reply, r, authorization));
        const verified = (b: VerifiedBanStatus): boolean => {
          if (!('issued' in b)) return refuseBanned(ctx, reply, b);
          emitBanIssued(ctx, rules, undefined);
          answerBanned(ctx, reply, b.retryAfterMs);
          return true;
        };
        const ban = bans.checkAfterVerification(ipKey(ctx.clientIp), rules);
        return ban instanceof Promise ? ban.then(verified) : verified(ban);
      });
    }
    // The same holds for an answer known at once (a cached refusal) after a stage that waited.
    if (protectionOf(ctx).bans) return afterBanCheck(ctx, reply, () => refuseAccess(ctx, reply, refusal, authorization));
    return refuseAccess(ctx, reply, refusal, authorization);
  }

  /** `next()` unless the client is banned by now (then the 429, and nothing else). */
  function afterBanCheck(ctx: RequestContext, reply: FastifyReply, next: () => boolean | Promise<boolean>): boolean | Promise<boolean> {
    const ban = bans.check(ipKey(ctx.clientIp));
    if (ban instanceof Promise) return ban.then((b) => refuseBanned(ctx, reply, b) || next());
    return refuseBanned(ctx, reply, ban) || next();
  }

  function refuseAccess(ctx: RequestContext, reply: FastifyReply, refusal: AuthRefusal, authorization: string | string[] | undefined): boolean | Promise<boolean> {
    ctx.reason = refusal.reason;
    if (refusal.status === 403) {
      metrics.accessDenied(ctx.site!.id, ctx.route!.id);
      events.emit('access_denied', { ...who(ctx), reason: refusal.reason, required_roles: ctx.route!.roles });
    } else if (refusal.code === 'GW_ERR_INVALID_TOKEN' || (refusal.status === 400 && refusal.reason.startsWith('token_'))) {
      const reason = refusal.reason.replace(/^token_/, '');
      metrics.authFailure(reason);
      const issuer = claimedIssuer(authorization, ctx.state.config.auth.issuers.map((i) => i.issuer));
      events.emit('auth_failed', { ...who(ctx), reason, ...(issuer === undefined ? {} : { issuer }) });
      const prot = protectionOf(ctx);
      if (prot.bans) {
        const rules = prot.bans;
        return bans.recordAuthFailure(ipKey(ctx.clientIp), rules).then((result) => {
          if (result.banned) emitBanIssued(ctx, rules, result.failures);
          // Past the client's auth_failures answers (a burst that raced the ban): refused as banned,
          // with one event: the ban's own when this failure set it.
          if (result.overLimit) {
            if (result.banned) answerBanned(ctx, reply, rules.durationMs);
            else refuseBanned(ctx, reply, { banned: true, retryAfterMs: rules.durationMs });
            return true;
          }
          sendError(reply, refusal.status, refusal.code, refusal.headers);
          return true;
        });
      }
    }
    sendError(reply, refusal.status, refusal.code, refusal.headers);
    return true;
  }

  // 7. body limit for bodies without (or lying about) Content-Length. Callback style, like the
  //    gate: the counting stream must reach its consumer (undici, through the pass-through body
  //    parser) in the same turn it is created. Piping starts the flow on the next tick; a limit passed before the
  //    consumer listened would be an 'error' with no listener.
  app.addHook('preParsing', function bodyLimit(request, reply, payload, done) {
    const limit = request.gw.route?.maxBodySize;
    const raw = request.raw;
    if (awaitingContinue.delete(raw)) reply.raw.writeContinue();
    // RFC 9112 §6.3: an HTTP/1.x request with neither Content-Length nor Transfer-Encoding has no
    // body (HTTP/2 bodies need no framing header, so they are always counted). A GET or HEAD body
    // is never read nor forwarded (proxyRequest): Node discards it, so it is not counted either.
    const h = raw.headers;
    if (
      limit === undefined ||
      raw.method === 'GET' ||
      raw.method === 'HEAD' ||
      (raw.httpVersionMajor === 1 && h['content-length'] === undefined && h['transfer-encoding'] === undefined)
    ) {
      done(null, payload);
      return;
    }
    const counted = new BodyLimit(limit);
    payload.on('error', (err) => counted.destroy(err));
    // The consumer (undici) answers the error with a 413, or
    // cuts a response already under way; this listener is for the moments when none listens (the
    // upload goes on after a failed or finished exchange), where the error would otherwise be an
    // uncaught exception. The rest of the body is never read: the connection carries no more requests.
    counted.on('error', () => endConnectionAfterResponse(request, reply));
    done(null, payload.pipe(counted));
  });

  /** An HTTP/1.1 connection whose request body will not be read whole: closed once the answer is out. */
  function endConnectionAfterResponse(request: FastifyRequest, reply: FastifyReply): void {
    const raw = request.raw;
    if (raw.httpVersionMajor !== 1) return; // HTTP/2: closing the stream discards the rest
    const res = reply.raw;
    const socket = raw.socket;
    if (res.writableFinished || res.destroyed) socket.destroy();
    else if (!res.headersSent) res.setHeader('connection', 'close');
    else res.once('finish', () => socket.destroy());
  }

  // 8. security headers on the gateway's own answers (proxied responses never pass here: the
  //    forwarding path writes them with the headers of responseHeadersFromUpstream).
  app.addHook('onSend', async function responseHeaders(request, reply, payload) {
    const ctx = request.gw as RequestContext | undefined;
    if (request.raw.httpVersionMajor === 2) ownAnswerDeadline(request, reply);
    if (ctx) {
      reply.header('x-request-id', ctx.requestId);
      const set = protectionOf(ctx).headers;
      for (const [k, v] of Object.entries(set.common)) reply.header(k, v);
      for (const [k, v] of Object.entries(set.httpsOnly)) reply.header(k, v);
      for (const [k, v] of Object.entries(set.gatewayOnly)) reply.header(k, v);
    }
    return payload;
  });

  /**
   * HTTP/2: the gateway's own answer waits in its stream for the client's flow-control window. A
   * client that never opens it (SETTINGS_INITIAL_WINDOW_SIZE 0, no WINDOW_UPDATE) would hold the
   * stream, its buffers and its line forever: it gets `timeouts.response`, as for a proxied
   * answer (proxy/forward.ts), then the stream is reset.
   */
  function ownAnswerDeadline(request: FastifyRequest, reply: FastifyReply): void {
    const ctx = request.gw as RequestContext | undefined;
    const ms = ctx?.route?.timeouts.response ?? state.config.timeouts.response;
    if (ms <= 0) return;
    const stream = (reply.raw as unknown as Http2ServerResponse).stream;
    const timer = setTimeout(() => {
      if (stream.destroyed || stream.writableFinished) return;
      if (ctx) ctx.reason ??= 'client_stalled';
      stream.close(http2Constants.NGHTTP2_CANCEL);
    }, ms).unref();
    const clear = (): void => clearTimeout(timer);
    stream.once('finish', clear);
    stream.once('close', clear);
  }

  // 9. access log and metrics of the gateway's own answers (proxied ones: forwardHooks.ended).
  app.addHook('onResponse', async function accessLog(request, reply) {
    const ctx = request.gw as RequestContext | undefined;
    if (!ctx || ctx.proxied) return;
    if (!reply.raw.headersSent) {
      // Nothing was answered: an HTTP/2 stream the client cancelled (Node's compat layer then
      // emits 'finish'), e.g. while a stage waited for a token check. Logged as the forwarding path
      // logs a client gone before its answer; a stage resuming later logs nothing more.
      ctx.reason ??= 'client_closed';
      logRequest(ctx, request.raw, 499, undefined);
      return;
    }
    const len = reply.getHeader('content-length');
    logRequest(ctx, request.raw, reply.statusCode, len !== undefined ? Number(len) : undefined);
  });

  function logRequest(ctx: RequestContext, raw: FastifyRequest['raw'], status: number, bytes: number | undefined, timed = true): void {
    if (ctx.logged) return;
    ctx.logged = true;
    const seconds = Number(process.hrtime.bigint() - ctx.startedAt) / 1e9;
    const method = raw.method ?? 'GET';
    metrics.observeRequest(ctx.site?.id ?? UNMATCHED, ctx.route?.id ?? UNMATCHED, method, status, timed ? seconds : null);
    // Only the line's object would be built for nothing: pino's info() is a no-op below its level.
    if (!logger.isLevelEnabled('info')) return;
    writeAccessLine(logger, {
      request_id: ctx.requestId,
      ip: ctx.clientIp,
      method,
      host: ctx.host || undefined,
      path: redactUrl(ctx.path ? ctx.path + ctx.query : raw.url ?? ''),
      status,
      bytes,
      duration_ms: Math.round(seconds * 1e6) / 1000,
      site: ctx.site?.id,
      route: ctx.route?.id,
      upstream: ctx.proxied ? (ctx.upstream ?? undefined) : undefined,
      user: ctx.principal?.subject,
      reason: ctx.reason ?? undefined,
      http: raw.httpVersion,
    });
  }

  app.setErrorHandler(function safeErrors(err: Error & { statusCode?: number; code?: string }, request, reply) {
    const ctx = request.gw as RequestContext | undefined;
    const gwErr = findGatewayError(err);
    if (ctx) ctx.proxied = false;
    if (gwErr?.statusCode) {
      if (ctx) ctx.reason ??= gwErr.code;
      return sendError(reply, gwErr.statusCode, gwErr.code, rateLimitHeaders(reply));
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (ctx) ctx.reason ??= err.code ?? 'error';
    if (status >= 500) logger.error({ err, request_id: ctx?.requestId }, 'request failed');
    else logger.info({ err: { code: err.code, message: err.message }, request_id: ctx?.requestId }, 'request refused');
    const code: GatewayErrorCode = status === 413 ? 'GW_ERR_BODY_TOO_LARGE' : status === 431 ? 'GW_ERR_HEADERS_TOO_LARGE' : status >= 500 ? 'GW_ERR_INTERNAL' : 'GW_ERR_BAD_REQUEST';
    return sendError(reply, status, code);
  });

  app.setNotFoundHandler(function notFound(request, reply) {
    // Only reached for requests the wildcard route does not take: methods outside the proxied set.
    const method = request.raw.method ?? '';
    if (!(PROXIED_METHODS as readonly string[]).includes(method)) return sendError(reply, 405, 'GW_ERR_METHOD_NOT_ALLOWED', ALLOW_HEADER);
    return sendError(reply, 404, 'GW_ERR_NO_ROUTE');
  });

  // Every upstream of this gateway, one keep-alive pool per origin (undici). Connection-level
  // settings are read once: like the listeners, they change on restart, not on reload.
  const upstreamClient = new UpstreamClient({
    connections: 256,
    connectTimeoutMs: cfg0.timeouts.connect,
    keepAliveTimeoutMs: Math.min(cfg0.timeouts.idle, 4_000),
  });
  app.addHook('onClose', async () => upstreamClient.close());
  // Proxied WebSocket sessions (proxy/websocket.ts). A message may be as large as the largest body
  // the configuration accepts (read at start), and 1 MiB in any case; a larger one ends the
  // session (1009). Sessions are told the gateway is going away (1001) as it starts to close.
  const wsRelay = new WebSocketRelay({ maxPayload: largestBody(cfg0) });
  app.addHook('preClose', async () => wsRelay.closeAll());

  /**
   * The checks ws's server would make on the client's handshake, made first so that a refusal is
   * the gateway's own answer (security headers, request id, one access line with the status sent)
   * rather than ws's bare one. What remains for ws to refuse: a malformed subprotocol or extension
   * list (400), a server shutting down (503).
   */
  function refuseBadHandshake(request: FastifyRequest, reply: FastifyReply): boolean {
    const h = request.headers;
    if (request.raw.method !== 'GET') {
      request.gw.reason = 'websocket_handshake_method';
      sendError(reply, 405, 'GW_ERR_METHOD_NOT_ALLOWED', { allow: 'GET' });
      return true;
    }
    const version = h['sec-websocket-version'];
    const key = h['sec-websocket-key'];
    if (String(h.upgrade).toLowerCase() !== 'websocket' || typeof key !== 'string' || !WS_KEY.test(key.trim())) {
      request.gw.reason = 'websocket_handshake_invalid';
      sendError(reply, 400, 'GW_ERR_BAD_REQUEST');
      return true;
    }
    if (version !== '13' && version !== '8') {
      request.gw.reason = 'websocket_handshake_version';
      // RFC 6455 §4.4: the versions the server speaks.
      sendError(reply, 400, 'GW_ERR_BAD_REQUEST', { 'sec-websocket-version': '13, 8' });
      return true;
    }
    return false;
  }

  /**
   * A proxied WebSocket gets its access line (and its request count) when the client's connection
   * closes, as nginx logs one: status 101 and the session's duration, its upstream, and why the
   * gateway ended it if it did. The reply is hijacked, so Fastify's onResponse never sees it.
   */
  function logWebSocketAtClose(request: FastifyRequest): void {
    const ctx = request.gw;
    const socket = request.raw.socket;
    const log = (): void => {
      const bytes = bytesAfterUpgrade(socket);
      // Not upgraded after all: ws refused the handshake itself (400), or the client was gone.
      const status = bytes !== undefined ? 101 : socket.writable ? 400 : 499;
      if (status === 400) ctx.reason ??= 'websocket_handshake_refused';
      if (status === 499) ctx.reason ??= 'client_closed';
      // Counted, not timed: the duration is the session's (see observeRequest). `bytes`: what the
      // session sent the client after the 101 (WebSocket frames, as written before TLS).
      logRequest(ctx, request.raw, status, bytes, bytes === undefined);
    };
    if (socket.destroyed) log();
    else socket.once('close', log);
  }

  /**
   * A WebSocket handshake the pipeline let through: the upstream's handshake first, then the
   * client's (proxy/websocket.ts). Until the upstream has accepted, the reply is Fastify's: a
   * failure is answered by `sendError` and logged by onResponse like any refused request.
   */
  function proxyWebSocket(request: FastifyRequest, reply: FastifyReply): void {
    const ctx = request.gw;
    const raw = request.raw;
    const socket = raw.socket;
    const protocols = offeredSubprotocols(request.headers['sec-websocket-protocol']);
    if (protocols === null) {
      ctx.reason = 'websocket_handshake_invalid';
      sendError(reply, 400, 'GW_ERR_BAD_REQUEST');
      return;
    }
    if (socket.destroyed || !socket.writable) {
      // Gone while a stage waited (a token check, a shared rate limit): nothing is dialled.
      ctx.reason ??= 'client_closed';
      logRequest(ctx, raw, 499, undefined);
      return;
    }
    let done = false;
    // The client left before the upstream answered: nothing is sent; the dial stops by itself
    // (the plan watches the client), a handshake under way is aborted here.
    const clientLeft = (): void => {
      if (done) return;
      done = true;
      upstream.terminate();
      ctx.reason ??= 'client_closed';
      logRequest(ctx, raw, 499, undefined);
    };
    socket.once('close', clientLeft);
    const settle = (): boolean => {
      socket.removeListener('close', clientLeft);
      if (done) return false;
      done = true;
      return true;
    };
    const upstream = wsRelay.connect(
      {
        origin: ctx.upstream!,
        path: ctx.path + ctx.query,
        protocols,
        headers: withDialPlan(handshakeHeaders(request), wsDialPlan(request)) as Record<string, string>,
        createConnection: createUpstreamConnection as never,
        finishRequest: finishUpstreamRequest,
      },
      {
        opened(up, subprotocol) {
          if (!settle()) return void up.terminate();
          reply.hijack();
          logWebSocketAtClose(request);
          const head = (raw as { [WS_HEAD]?: Buffer })[WS_HEAD] ?? Buffer.alloc(0);
          wsRelay.accept(raw, socket, head, up, subprotocol, (reason) => {
            ctx.reason ??= reason;
          });
        },
        refused(res) {
          if (!settle()) return void res.destroy();
          const status = res.statusCode ?? 0;
          if (status > 599 || status < 200) {
            // Not an HTTP status (refused as the HTTP path refuses one, proxy/forward.ts), or a 101
            // Node did not take for an upgrade (no `Connection: upgrade`, RFC 6455 §4.1): never
            // relayed, or the client would read a 101 that opens no session.
            res.destroy();
            upstream.terminate();
            refuseWebSocket(reply, new UpstreamHandshakeError(`upstream answered with status ${status}`));
            return;
          }
          relayRefusal(reply, res, () => upstream.terminate());
        },
        failed(error) {
          if (settle()) refuseWebSocket(reply, error);
        },
      },
    );
  }

  /**
   * The headers of the app's handshake. A handshake is a GET: a body it announces is never sent
   * (what follows the head is the session), and an app that waits for it would never answer.
   */
  function handshakeHeaders(request: FastifyRequest): HeaderBag {
    const headers = upstreamHeaders(request, true);
    delete headers['content-length'];
    return headers;
  }

  /**
   * No usable answer from the upstream to a WebSocket handshake: answered as the HTTP path answers
   * an upstream failure (502 or 504), before any 101. The dial plan's callbacks have named the
   * upstream, counted the attempt and set the reason; a 101 that `ws` refused is counted here.
   */
  function refuseWebSocket(reply: FastifyReply, error: Error): void {
    const ctx = reply.request.gw;
    // Set by the plan once a socket is up: what fails from then on is counted as the HTTP path
    // counts an upstream breaking off (the plan has counted a handshake deadline itself).
    const connected = ctx.proxied;
    ctx.proxied = false;
    let kind = classifyUpstreamError(error);
    if (error instanceof UpstreamHandshakeError) {
      kind = 'bad_response';
      ctx.reason = 'upstream_bad_response';
    }
    if (connected && kind !== 'response_timeout') metrics.upstreamBrokeOff(ctx.upstream ?? '', kind);
    ctx.reason ??= `upstream_${kind}`;
    logger.warn({ request_id: ctx.requestId, upstream: ctx.upstream, reason: kind, err: { code: rootCode(error) } }, 'upstream WebSocket handshake failed');
    if (kind === 'connect_timeout' || kind === 'response_timeout') sendError(reply, 504, 'GW_ERR_UPSTREAM_TIMEOUT');
    else sendError(reply, 502, kind === 'bad_response' ? 'GW_ERR_UPSTREAM_BAD_RESPONSE' : 'GW_ERR_UPSTREAM_UNAVAILABLE');
  }

  /**
   * The app's own answer to a WebSocket handshake (401, 403, 404, 426…), relayed as the HTTP path
   * relays a response: its status, its headers through the gateway's response rules, its body.
   * The connection closes after it (it was to be upgraded). As on the HTTP path, the upstream may
   * not stall longer than the route's `timeouts.response` between two chunks, nor the client.
   */
  function relayRefusal(reply: FastifyReply, res: IncomingMessage, release: () => void): void {
    const ctx = reply.request.gw;
    const status = res.statusCode ?? 502;
    reply.hijack();
    const out = reply.raw;
    out.writeHead(status, { ...responseHeadersFromUpstream(res.headers, reply), connection: 'close' });
    let bytes = 0;
    const timeoutMs = ctx.route!.timeouts.response;
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      if (timeoutMs === 0) return;
      clearTimeout(timer);
      timer = setTimeout(() => {
        // The pipe pauses the app while the client does not read: then the client is the slow one.
        if (out.writableNeedDrain) {
          ctx.reason ??= 'client_stalled';
        } else if (ctx.reason === null) {
          ctx.reason = 'upstream_response_timeout';
          metrics.upstreamBrokeOff(ctx.upstream ?? '', 'response_timeout');
        }
        res.destroy();
        out.destroy();
      }, timeoutMs).unref();
    };
    arm();
    res.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      arm();
    });
    // Whichever side broke first: the pipe then destroys the other, so their states at the end
    // cannot tell (a client that left looked like an app that reset, depending on timing).
    let broke: 'client' | 'upstream' | null = null;
    const upstreamBroke = (): void => {
      broke ??= 'upstream';
    };
    res.once('aborted', upstreamBroke);
    res.once('error', upstreamBroke);
    out.once('close', () => {
      if (!out.writableFinished) broke ??= 'client';
    });
    pipeline(res, out, (err) => {
      clearTimeout(timer);
      release();
      if (err && ctx.reason === null) {
        ctx.reason = broke === 'client' ? 'client_closed' : 'upstream_reset';
        if (ctx.reason === 'upstream_reset') metrics.upstreamBrokeOff(ctx.upstream ?? '', 'reset');
      }
      logRequest(ctx, reply.request.raw, status, bytes);
    });
  }

  function wsDialPlan(request: FastifyRequest): WebSocketDialPlan {
    const ctx = request.gw;
    const name = ctx.host.startsWith('[') ? ctx.host.slice(1, -1) : ctx.host;
    return {
      pool: ctx.state.pools.get(ctx.route!)!,
      first: ctx.upstreamIndex,
      connectTimeoutMs: cfg0.timeouts.connect,
      handshakeTimeoutMs: ctx.route!.timeouts.response,
      servername: isIP(name) === 0 ? name : undefined,
      client: request.raw.socket,
      connectFailed(origin, kind, seconds, next, wasDown) {
        metrics.upstreamAttempt(origin, seconds, kind);
        if (!wasDown) events.emit('upstream_down', { ...who(ctx), upstream: origin, reason: kind, error: kind });
        // As for HTTP: a request no target took has no upstream in its line, and says why.
        if (next !== null) ctx.upstream = next;
        else ctx.reason = `upstream_${kind}`;
      },
      connected(origin, seconds) {
        ctx.proxied = true;
        ctx.upstream = origin;
        metrics.upstreamAttempt(origin, seconds);
      },
      attemptFailed(origin, kind, seconds) {
        ctx.reason = `upstream_${kind}`;
        metrics.upstreamAttempt(origin, seconds, kind);
      },
      // Its attempt was counted when it connected: an error now, not a second attempt.
      handshakeTimedOut: (origin) => {
        ctx.reason = 'upstream_response_timeout';
        metrics.upstreamBrokeOff(origin, 'response_timeout');
      },
    };
  }

  // @fastify/http-proxy owns the wildcard routes, the pass-through body parser, and the 'upgrade'
  // listener that routes a WebSocket handshake through Fastify as a raw request with `upgrade` set
  // (so it passes the whole pipeline). Its route handler is never called: HTTP requests go straight
  // to `proxyRequest` (proxy/forward.ts, not reply-from: see there), and handshakes to
  // `proxyWebSocket` (proxy/websocket.ts: the library answers the client before it dials the app).
  const upgradeListenersBefore = new Set(server.listeners('upgrade'));
  await app.register(async function proxyRoutes(scope) {
    // Fastify's own text/plain parser (inherited from the root) reads the body whole and decodes it
    // as UTF-8: a Latin-1, UTF-16 or gzip-coded text/plain body reached the app re-encoded, its
    // bytes replaced. Without it, @fastify/http-proxy's catch-all parser passes every content type
    // through as the client sent it (it replaces the JSON parser itself).
    scope.removeContentTypeParser('text/plain');
    scope.addHook('onRoute', (route) => {
      route.handler = function gatewayRoute(request: FastifyRequest, reply: FastifyReply) {
        if ((request.raw as { upgrade?: boolean }).upgrade === true) {
          if (!refuseBadHandshake(request, reply)) proxyWebSocket(request, reply);
          return;
        }
        proxyRequest(request, reply);
      } as typeof route.handler;
    });
    await scope.register(httpProxy, {
      upstream: '',
      prefix: '/',
      websocket: true,
      // The gateway writes one access line per request itself.
      disableRequestLogging: true,
      httpMethods: [...PROXIED_METHODS],
    } as never);
  });
  // Node emits 'upgrade' as soon as the handshake is parsed, even behind a pipelined request whose
  // answer is still going out; @fastify/http-proxy's listener then assigns the socket to a second
  // response, and Node throws (ERR_HTTP_SOCKET_ASSIGNED) out of the listener: one TLS write took
  // the whole process down. Such a connection is cut, as a pipelined CONNECT is (444).
  for (const listener of server.listeners('upgrade')) {
    if (upgradeListenersBefore.has(listener)) continue;
    const proxyUpgrade = listener as (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
    server.removeListener('upgrade', proxyUpgrade);
    server.on('upgrade', function guardedUpgrade(this: unknown, req: IncomingMessage, socket: Duplex & { _httpMessage?: unknown }, head: Buffer) {
      if (socket._httpMessage || !socket.writable) {
        const pipelined = Boolean(socket._httpMessage);
        socket.destroy();
        const ctx = newContext(state, requestView(req), process.hrtime.bigint());
        ctx.reason = pipelined ? 'pipelined_upgrade' : 'client_closed';
        logRequest(ctx, req as FastifyRequest['raw'], pipelined ? 444 : 499, undefined);
        return;
      }
      (req as { [WS_HEAD]?: Buffer })[WS_HEAD] = head;
      try {
        proxyUpgrade.call(this, req, socket, head);
      } catch (err) {
        // Whatever else throws here would end the process; it ends this connection instead.
        socket.destroy();
        logger.error({ err }, 'WebSocket upgrade failed');
      }
    });
  }

  function who(ctx: RequestContext): { ip: string; user?: string; site?: string; route?: string; request_id: string } {
    return { ip: ctx.clientIp, user: ctx.principal?.subject, site: ctx.site?.id, route: ctx.route?.id, request_id: ctx.requestId };
  }

  function upstreamHeaders(request: FastifyRequest, websocket: boolean): HeaderBag {
    const ctx = request.gw;
    const st = ctx.state;
    const p = ctx.principal;
    const rawHost = request.raw.httpVersionMajor === 2 ? request.headers[':authority'] ?? request.headers.host : request.headers.host;
    return buildUpstreamHeaders({
      peer: peerOf(request),
      trustedPeer: ctx.trustedPeer,
      requestId: ctx.requestId,
      host: String(rawHost ?? ctx.host),
      publicPort: publicPort(st),
      gatewayOwned: st.gatewayOwnedHeaders,
      identityHeaders: st.identityHeaders,
      identity: p ?? null,
      forwardToken: st.config.auth.forwardToken,
      websocket,
      received: request.headers,
    });
  }

  /**
   * The upstream's response headers as the client gets them: hygiene, security headers, cookie
   * rules, request id, and what the gate put on the Fastify reply (the RateLimit-* headers), which
   * wins over an upstream header of the same name: the gateway enforces that limit.
   */
  function responseHeadersFromUpstream(headers: IncomingHttpHeaders, reply: FastifyReply): IncomingHttpHeaders {
    const ctx = reply.request.gw;
    const prot = protectionOf(ctx);
    const out = applySecurityHeaders(withoutHopByHopResponseHeaders(headers as HeaderBag) as IncomingHttpHeaders, prot.headers, prot.headerMode, { https: true });
    const cookies = out['set-cookie'];
    if (cookies !== undefined) out['set-cookie'] = hardenSetCookies(Array.isArray(cookies) ? cookies : [cookies], prot.cookies, { https: true });
    if (prot.rateLimit || ctx.otherReadings !== null) {
      for (let i = 0; i < RATE_LIMIT_HEADERS.length; i++) {
        const name = RATE_LIMIT_HEADERS[i]!;
        const v = reply.getHeader(name);
        if (v !== undefined) (out as Record<string, unknown>)[name] = v;
      }
    }
    (out as Record<string, string>)['x-request-id'] = ctx.requestId;
    return out;
  }

  /**
   * What the forwarding path asks the gateway. The per-request context is the Fastify reply: the
   * reply is handed over (hijacked) once the upstream's answer starts going to the client, and
   * stays Fastify's until then, so every earlier failure is answered by `sendError`.
   */
  const forwardHooks: ForwardHooks<FastifyReply> = {
    responseHeaders: (reply, _status, headers) => responseHeadersFromUpstream(headers, reply),
    committed(reply, origin, _status, seconds) {
      reply.hijack();
      reply.request.gw.upstream = origin;
      metrics.upstreamAttempt(origin, seconds);
    },
    connectFailed(reply, origin, kind, seconds, next, wasDown) {
      const ctx = reply.request.gw;
      metrics.upstreamAttempt(origin, seconds, kind);
      if (!wasDown) events.emit('upstream_down', { ...who(ctx), upstream: origin, reason: kind, error: kind });
      if (next !== null) ctx.upstream = next;
    },
    failed(reply, origin, error) {
      reply.request.gw.upstream = origin;
      onUpstreamError(reply, error);
    },
    ended(reply, outcome, bytes, error) {
      const ctx = reply.request.gw;
      let status = reply.raw.statusCode;
      if (outcome === 'client_closed') {
        status = clientGoneStatus(ctx, reply.raw);
      } else if (outcome === 'cut') {
        const gwErr = error ? findGatewayError(error) : null;
        if (error === null) {
          ctx.reason ??= 'client_closed';
        } else if (gwErr !== null) {
          // The request's own body passed the limit after the upstream had started answering.
          ctx.reason ??= gwErr.code;
        } else if (error instanceof ClientStalledError) {
          ctx.reason ??= 'client_stalled';
        } else {
          const kind = classifyUpstreamError(error);
          ctx.reason ??= `upstream_${kind}`;
          metrics.upstreamBrokeOff(ctx.upstream ?? '', kind);
          logger.warn({ request_id: ctx.requestId, upstream: ctx.upstream, reason: kind, err: { code: rootCode(error) } }, 'upstream response cut');
        }
      }
      logRequest(ctx, reply.request.raw, status, bytes);
    },
  };

  function proxyRequest(request: FastifyRequest, reply: FastifyReply): void {
    const ctx = request.gw;
    ctx.proxied = true;
    const method = request.raw.method ?? 'GET';
    const headers = upstreamHeaders(request, false);
    let body: Readable | null = null;
    if (method === 'GET' || method === 'HEAD') {
      // Fastify never reads a GET or HEAD body; Node discards it after the response. It is not
      // announced to the upstream either (a body it does not expect is a desync waiting to happen).
      delete headers['content-length'];
    } else {
      // Every content type is passed through as a stream (see proxyRoutes): the upstream gets the
      // client's bytes.
      const parsed = request.body as unknown;
      if (parsed instanceof Readable) body = parsed;
    }
    const buffer = ctx.state.config.limits.requestBuffer;
    if (body !== null && buffer > 0) {
      bufferRequestBody(request, reply, body, buffer, (ready) => dispatch(request, reply, headers, ready));
      return;
    }
    dispatch(request, reply, headers, body);
  }

  function dispatch(request: FastifyRequest, reply: FastifyReply, headers: HeaderBag, body: Readable | Buffer | null): void {
    const ctx = request.gw;
    const route = ctx.route!;
    const raw = request.raw;
    upstreamClient.forward(
      {
        pool: ctx.state.pools.get(route)!,
        target: ctx.upstreamIndex,
        method: raw.method ?? 'GET',
        path: ctx.path + ctx.query,
        headers: headers as Record<string, string | string[]>,
        body,
        timeoutMs: route.timeouts.response,
        res: reply.raw,
        http1Request: raw.httpVersionMajor === 1 ? raw : null,
      },
      forwardHooks,
      reply,
    );
  }

  /** Bytes of request bodies held by bufferRequestBody across requests, at most MAX_BUFFERED_BYTES. */
  let bufferedBytes = 0;

  /**
   * `limits.request_buffer`: the body is read (up to that size) before the upstream is contacted,
   * so a client that uploads slowly holds no upstream connection: with bodies streamed, a few
   * hundred connections trickling a byte now and then held every connection of an upstream's pool
   * and nobody else was served (nginx buffers bodies for the same reason). A body that ends within
   * the size goes upstream whole (and may be sent again to another target on a connect failure); a
   * larger one goes on as a stream, its first part from memory. What fails first is answered here:
   * a body over the route's limit (413, nothing dialled), a client gone (499).
   */
  function bufferRequestBody(request: FastifyRequest, reply: FastifyReply, body: Readable, limit: number, then: (ready: Buffer | Readable) => void): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const settle = (): void => {
      settled = true;
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('error', onError);
      body.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      size += chunk.length;
      bufferedBytes += chunk.length;
      if (size <= limit && bufferedBytes <= MAX_BUFFERED_BYTES) return;
      // Too large to hold (or the uploads under way hold too much already): streamed from here,
      // what was read first.
      body.pause();
      settle();
      then(streamOn(body, chunks, size));
    };
    const onEnd = (): void => {
      settle();
      bufferedBytes -= size;
      then(Buffer.concat(chunks, size));
    };
    const onError = (err: Error): void => {
      if (settled) return;
      settle();
      bufferedBytes -= size;
      // The body stays unread: an HTTP/1.1 connection is closed after the answer.
      endConnectionAfterResponse(request, reply);
      const ctx = request.gw;
      ctx.proxied = false;
      const gwErr = findGatewayError(err);
      if (gwErr?.statusCode) {
        ctx.reason = gwErr.code;
        sendError(reply, gwErr.statusCode, gwErr.code);
        return;
      }
      logRequest(ctx, request.raw, clientGoneStatus(ctx, reply.raw), undefined);
    };
    // A stream that closes without its end: the client went away (or was cut for being late).
    const onClose = (): void => onError(new Error('the request body ended early'));
    // Gone already, while a stage waited (a token check, a shared rate limit): its 'close' was.
    if (body.destroyed || request.raw.destroyed) {
      onClose();
      return;
    }
    body.on('data', onData);
    body.once('end', onEnd);
    body.on('error', onError);
    body.once('close', onClose);
  }

  /**
   * A body that outgrew the buffer, as a stream: what was read first, then the rest as it comes.
   * The bytes read first stay counted in {@link bufferedBytes} until they are handed on at the
   * pace the upstream takes them (a 'drain' at a time): an app that does not read its uploads
   * would otherwise hold every overflowed buffer beyond the cap.
   */
  function streamOn(body: Readable, read: Buffer[], size: number): Readable {
    const rest = new PassThrough();
    let held = size;
    let next = 0;
    const release = (n: number): void => {
      held -= n;
      bufferedBytes -= n;
    };
    const feed = (): void => {
      while (next < read.length) {
        const chunk = read[next]!;
        read[next++] = EMPTY_CHUNK;
        release(chunk.length);
        if (!rest.write(chunk)) {
          rest.once('drain', feed);
          return;
        }
      }
      body.pipe(rest);
    };
    rest.once('close', () => {
      if (held > 0) release(held);
      read.length = 0;
    });
    body.on('error', (err) => rest.destroy(err));
    feed();
    return rest;
  }

  /**
   * The status a request's line gets when its client went away before the upstream's answer
   * started (or was cut off for being late): what the client got, the slowloris guard's own 408
   * (an HTTP/2 body past request_timeout, its stream then reset), else nothing: 499, "client
   * closed request", as nginx logs it.
   */
  function clientGoneStatus(ctx: RequestContext, res: FastifyReply['raw']): number {
    const status = res.headersSent ? res.statusCode : answeredRequestTimeout(res) ? 408 : 499;
    ctx.reason ??= status === 408 ? 'GW_ERR_REQUEST_TIMEOUT' : 'client_closed';
    return status;
  }

  function onUpstreamError(reply: FastifyReply, error: Error): void {
    const ctx = reply.request.gw;
    ctx.proxied = false;
    if (reply.raw.destroyed === true) {
      // The client left as the upstream failed (both in one turn): an answer written now would
      // never finish, and Fastify's onResponse, which logs the gateway's own answers, never run.
      logRequest(ctx, reply.request.raw, clientGoneStatus(ctx, reply.raw), undefined);
      return;
    }
    const gwErr = findGatewayError(error);
    if (gwErr?.statusCode) {
      ctx.reason = gwErr.code;
      sendError(reply, gwErr.statusCode, gwErr.code);
      return;
    }
    const kind = classifyUpstreamError(error);
    ctx.reason = `upstream_${kind}`;
    if (kind !== 'connect_refused' && kind !== 'connect_timeout') metrics.upstreamAttempt(ctx.upstream ?? '', 0, kind);
    logger.warn({ request_id: ctx.requestId, upstream: ctx.upstream, reason: kind, err: { code: rootCode(error) } }, 'upstream request failed');
    if (kind === 'connect_timeout' || kind === 'response_timeout') sendError(reply, 504, 'GW_ERR_UPSTREAM_TIMEOUT');
    else sendError(reply, 502, kind === 'bad_response' ? 'GW_ERR_UPSTREAM_BAD_RESPONSE' : 'GW_ERR_UPSTREAM_UNAVAILABLE');
  }

  async function applyConfig(config: GatewayConfig, old: RuntimeState, beforeApply: (() => void) | undefined): Promise<void> {
    // What can fail first; nothing is changed until all of it succeeded.
    // (The CA bundles' content is in config.auth: a renewed bundle is a change too.)
    const sameAuth = JSON.stringify(config.auth) === JSON.stringify(old.config.auth);
    let nextAuth = authenticator;
    if (!sameAuth) nextAuth = newAuthenticator(config);
    let files: CertificateEntry[] | null = null;
    try {
      if (nextAuth !== authenticator && nextAuth && listening) await nextAuth.start();
      if (!options.certificates) files = await certificates.readFiles(config.tls.certificates);
    } catch (err) {
      if (nextAuth !== authenticator) void nextAuth?.close();
      throw err;
    }
    beforeApply?.();
    if (files) for (const entry of files) certificates.set(entry);
    // New handshakes get the new floor at once (the store rebuilds its contexts, the ones just
    // installed too, and the server's base context, where OpenSSL reads the version bounds).
    certificates.setMinVersion(config.tls.minVersion);
    state = buildRuntimeState(config, nextAuth, old);
    if (nextAuth !== authenticator) {
      const previous = authenticator;
      authenticator = nextAuth;
      // In-flight requests may still hold the old authenticator; close it once they had time to finish.
      if (previous) setTimeout(() => void previous.close(), 30_000).unref();
    }
    if (listening) await restartAutomation(automation, config, logger);
  }

  let front: TlsFront | null = null;
  let redirect: HttpServer | null = null;
  let admin: HttpServer | null = null;
  let addrs: ListenerAddresses | null = null;
  let listening = false;
  /** Set by close(): requests still arriving are refused (503) while in-flight ones finish. */
  let draining = false;
  const tlsSockets = new Set<Socket>();
  // One shared listener (`this` is the socket) rather than a closure per connection.
  const forgetTlsSocket = function (this: Socket): void {
    tlsSockets.delete(this);
  };
  server.on('secureConnection', (s: TLSSocket) => {
    tlsSockets.add(s);
    s.on('close', forgetTlsSocket);
  });

  /** The port clients use for HTTPS: configured, or (port 0 in tests) the one actually bound. */
  function publicPort(st: RuntimeState): number {
    const p = st.config.listen.publicHttpsPort;
    return p === 0 && addrs ? addrs.https.port : p;
  }

  const gateway: Gateway = {
    app,
    certificates,
    metrics,
    events,
    current: () => state,
    async listen() {
      const cfg = state.config;
      await app.ready();
      // The TLS front owns the HTTPS port and hands connections to the HTTP/2 server.
      front = createTlsFront({
        store: certificates,
        target: server as never,
        // The slowloris limit starts at accept: the ClientHello and the handshake count too.
        helloTimeoutMs: cfg.limits.headersTimeout,
        handshakeDeadlineMs: () => state.config.limits.headersTimeout,
        onEvent: (ev) => logger.info({ ...ev }, 'tls front'),
      });
      const tlsFront = front;
      server.on('secureConnection', (socket: TLSSocket) => tlsFront.handshakeDone(socket));
      const https = await front.listen(cfg.listen.https.port, cfg.listen.https.host);
      addrs = { https, http: null, admin: null };
      if (cfg.listen.http) {
        redirect = createRedirectServer({ current: () => state, logger, httpsPort: () => publicPort(state), challenges: automation.http01, headersTimeout: cfg.limits.headersTimeout });
        await listenOn(redirect, cfg.listen.http);
        addrs.http = redirect.address() as AddressInfo;
      }
      if (cfg.listen.admin && options.adminListener !== false) {
        admin = createAdminServer({
          ready: () => gateway.ready(),
          logger,
          metrics: () => metrics.exposition(),
          metricsToken: () => state.config.admin.metricsToken,
        });
        await listenOn(admin, cfg.listen.admin);
        addrs.admin = admin.address() as AddressInfo;
      }
      listening = true;
      // Stored certificates are installed at once; orders run in the background.
      await automation.start(cfg);
      if (authenticator) authenticator.start().catch((err: unknown) => logger.error({ err }, 'token validation start failed'));
      return addrs;
    },
    addresses() {
      if (!addrs) throw new Error('gateway is not listening');
      return addrs;
    },
    async reload(next, reloadOptions = {}) {
      const old = state;
      // Said once, by whoever reloads the whole host (a cluster's primary, not each worker).
      if (reloadOptions.quiet !== true) for (const warning of restartOnlyWarnings(old.config, next)) logger.warn(warning);
      // The state keeps what the process really runs, so that nothing reads a value not in force.
      const config = withRestartOnly(next, restartOnlyOf0);
      // Every file the new configuration writes is opened before anything changes: one that
      // cannot be written refuses the reload, and the old files stay in use.
      const logs = prepareLogFiles(logger, securityLog, config.log);
      try {
        await applyConfig(config, old, reloadOptions.beforeApply);
      } catch (err) {
        logs.discard();
        throw err;
      }
      logs.commit();
      // The level is read on every line: it applies at once (the access log is info).
      if (config.log.level !== old.config.log.level) securityLog.setMainLevel(config.log.level);
    },
    reopenLogs() {
      prepareLogFiles(logger, securityLog, state.config.log).commit();
    },
    async close(graceMs = state.config.shutdownGrace) {
      listening = false;
      draining = true;
      await automation.stop();
      const closing = Promise.all([front?.close(), app.close(), closeServer(redirect), closeServer(admin)]);
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
      const outcome = await Promise.race([closing.then(() => 'closed' as const), timer]);
      if (outcome === 'timeout') {
        logger.warn({ open_connections: tlsSockets.size }, 'shutdown grace period over: closing remaining connections');
        for (const s of tlsSockets) s.destroy();
        redirect?.closeAllConnections();
        admin?.closeAllConnections();
        await closing;
      }
      slowloris.close();
      await authenticator?.close();
      await store.close();
      await securityLog.close();
    },
    setTicketKeys(keys) {
      (server as unknown as TlsServer).setTicketKeys(keys);
    },
    ready() {
      const checks = {
        config: true,
        listeners: listening,
        certificates: state.config.sites.every((s) => s.hosts.every((h) => certificates.hasCertificateFor(h))),
      };
      return { ready: Object.values(checks).every(Boolean), checks };
    },
  };
  return gateway;
}

const notAnswered = (): false => false;

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function headerValues(rawHeaders: readonly string[], lowerName: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === lowerName) out.push(rawHeaders[i + 1]!);
  return out;
}

/** What @fastify/rate-limit puts on the reply (`enableDraftSpec`); `retry-after` only on a 429. */
const RATE_LIMIT_HEADERS = ['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'retry-after'] as const;

/** @fastify/rate-limit put its headers on the reply before throwing; keep them on our error body. */
function rateLimitHeaders(reply: FastifyReply): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  for (const name of RATE_LIMIT_HEADERS) {
    const v = reply.getHeader(name);
    if (v !== undefined) out[name] = String(v);
  }
  return Object.keys(out).length ? out : undefined;
}

function findGatewayError(err: unknown): GatewayError | null {
  let e: unknown = err;
  for (let i = 0; i < 5 && e; i++) {
    if (e instanceof GatewayError) return e;
    e = (e as { cause?: unknown }).cause;
  }
  return null;
}

function rootCode(err: unknown): string | undefined {
  let e: unknown = err;
  let code: string | undefined;
  for (let i = 0; i < 5 && e; i++) {
    code = (e as { code?: string }).code ?? code;
    e = (e as { cause?: unknown }).cause;
  }
  return code;
}
