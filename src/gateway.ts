/**
 * buildGateway: the one place that knows the request pipeline's order (drawn in docs/pipeline.md).
 *
 *   TLS (SNI → certificate) → onRequest resolve → onRequest authorize → preParsing body limit
 *   → handler proxy (→ upstream, retries on connect failure) → onSend response headers
 *   → onResponse access log + metrics;  errors → safe error body (http/errors).
 *
 * Three listeners: HTTPS (this Fastify app), HTTP (redirects + ACME HTTP-01) and admin
 * (health, readiness, metrics). Configuration changes are applied by swapping one RuntimeState.
 */
import type { AddressInfo, Socket } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { Transform, type TransformCallback } from 'node:stream';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import httpProxy from '@fastify/http-proxy';
import type { GatewayConfig, ListenAddress } from './config/types.js';
import { GatewayError, type GatewayErrorCode } from './errors.js';
import { renderError } from './http/errors.js';
import { redactUrl, type Logger } from './observability/logging.js';
import { buildRuntimeState, type RuntimeState } from './runtime.js';
import { hasDuplicate, newContext, resolveRequest, PROXIED_METHODS, type RawRequestView } from './pipeline/resolve.js';
import type { RequestContext } from './pipeline/context.js';
import { buildUpstreamHeaders, stripResponseHeaders, type HeaderBag } from './proxy/headers.js';
import { classifyUpstreamError, isConnectFailure } from './proxy/upstream-errors.js';
import { authorizeRequest } from './pipeline/authorize.js';
import { createAuthenticatorFor } from './pipeline/auth-factory.js';
import { CertificateStore, tlsServerOptions } from './tls/index.js';
import { createRedirectServer } from './server/redirect.js';
import { createAdminServer } from './server/admin.js';
import { SlowlorisGuard } from './server/slowloris.js';
import type { Authenticator } from './auth/index.js';

export interface GatewayOptions {
  readonly config: GatewayConfig;
  readonly logger: Logger;
  /** Certificates to serve; when omitted the gateway loads `config.tls.certificates`. */
  readonly certificates?: CertificateStore;
  readonly version?: string;
}

export interface ListenerAddresses {
  https: AddressInfo;
  http: AddressInfo | null;
  admin: AddressInfo | null;
}

export interface Gateway {
  readonly app: FastifyInstance;
  readonly certificates: CertificateStore;
  /** The state new requests get. */
  current(): RuntimeState;
  listen(): Promise<ListenerAddresses>;
  addresses(): ListenerAddresses;
  /** Swap in a new, already validated configuration; throws (keeping the old one) if it cannot be applied. */
  reload(config: GatewayConfig): Promise<void>;
  /** Stop accepting, let in-flight requests finish for up to `graceMs`, then close everything. */
  close(graceMs?: number): Promise<void>;
  ready(): { ready: boolean; checks: Record<string, boolean> };
}

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

/** Sends the gateway's own safe error body. */
export function sendError(reply: FastifyReply, status: number, code: GatewayErrorCode, extraHeaders?: Record<string, string>): FastifyReply {
  const ctx = reply.request.gw as RequestContext | undefined;
  const requestId = ctx?.requestId ?? String(reply.request.id);
  const out = renderError(status, code, requestId, reply.request.headers.accept);
  reply.code(status).header('content-type', out.contentType).header('cache-control', 'no-store');
  if (extraHeaders) for (const [k, v] of Object.entries(extraHeaders)) reply.header(k, v);
  return reply.send(out.body);
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

function listenOptions(addr: ListenAddress): { host: string; port: number } {
  return { host: addr.host, port: addr.port };
}

export async function buildGateway(options: GatewayOptions): Promise<Gateway> {
  const logger = options.logger;
  const certificates = options.certificates ?? new CertificateStore({ minVersion: options.config.tls.minVersion });
  if (!options.certificates) await certificates.loadFiles(options.config.tls.certificates);

  let authenticator: Authenticator | null = createAuthenticatorFor(options.config, logger);
  let state = buildRuntimeState(options.config, authenticator);
  const cfg0 = options.config;
  const slowloris = new SlowlorisGuard(cfg0.limits.headersTimeout, cfg0.limits.requestTimeout);

  const app = Fastify({
    http2: true,
    https: {
      allowHTTP1: true,
      ...tlsServerOptions(cfg0.tls.minVersion),
      SNICallback: certificates.sniCallback,
    },
    loggerInstance: logger,
    disableRequestLogging: true,
    requestIdHeader: false,
    return503OnClosing: true,
    http2SessionTimeout: cfg0.timeouts.idle,
    keepAliveTimeout: cfg0.timeouts.idle,
    // Bodies are streamed to the upstream; the limit is enforced per route by BodyLimit.
    bodyLimit: Number.MAX_SAFE_INTEGER,
    // find-my-way refuses malformed percent-encoding with FST_ERR_BAD_URL; answered below.
    frameworkErrors: (err, request, reply) => {
      const req = request as unknown as FastifyRequest;
      if (!req.gw) req.gw = newContext(state, rawView(req), process.hrtime.bigint());
      req.gw.reason = err.code === 'FST_ERR_BAD_URL' ? 'path_bad_encoding' : 'framework_error';
      sendError(reply as unknown as FastifyReply, 400, 'GW_ERR_BAD_REQUEST');
    },
  }) as unknown as FastifyInstance;

  const server = app.server as unknown as HttpServer;
  slowloris.attach(server);

  app.decorateRequest('gw', null as unknown as RequestContext);

  // 1. resolve: request line and headers → site, route, canonical path. Cheapest checks first.
  app.addHook('onRequest', async function resolve(request, reply) {
    const ctx = newContext(state, rawView(request), process.hrtime.bigint());
    request.gw = ctx;
    const refusal = resolveRequest(ctx.state, rawView(request), ctx);
    if (refusal) {
      ctx.reason = refusal.reason;
      return sendError(reply, refusal.status, refusal.code);
    }
    // The canonical path is what the upstream gets (and what WebSocket proxying reads).
    request.raw.url = ctx.path + ctx.query;
    const pool = ctx.state.pools.get(ctx.route!)!;
    ctx.upstream = pool.targets[pool.pick()]!.origin;
    return undefined;
  });

  // 2. authorize: bearer token → principal, then the route's access rule.
  app.addHook('onRequest', async function authorize(request, reply) {
    const ctx = request.gw;
    // Two Authorization headers: Node kept the first; present both to the authenticator so it refuses.
    const authorization = hasDuplicate(request.raw.rawHeaders, 'authorization') ? authorizationValues(request.raw.rawHeaders) : request.headers.authorization;
    const refusal = await authorizeRequest(ctx, authorization);
    if (refusal) {
      ctx.reason = refusal.reason;
      return sendError(reply, refusal.status, refusal.code, refusal.headers);
    }
    return undefined;
  });

  // 3. body limit for bodies without (or lying about) Content-Length.
  app.addHook('preParsing', async function bodyLimit(request, _reply, payload) {
    const limit = request.gw.route?.maxBodySize;
    if (limit === undefined) return payload;
    const counted = new BodyLimit(limit);
    payload.on('error', (err) => counted.destroy(err));
    return payload.pipe(counted);
  });

  // 4. response headers on every answer, proxied or the gateway's own.
  app.addHook('onSend', async function responseHeaders(request, reply, payload) {
    const ctx = request.gw;
    if (ctx) {
      reply.header('x-request-id', ctx.requestId);
      if (ctx.state.hsts) reply.header('strict-transport-security', ctx.state.hsts);
    }
    reply.header('x-content-type-options', 'nosniff');
    return payload;
  });

  // 5. access log.
  app.addHook('onResponse', async function accessLog(request, reply) {
    const ctx = request.gw;
    if (!ctx) return;
    const durationMs = Number(process.hrtime.bigint() - ctx.startedAt) / 1e6;
    const len = reply.getHeader('content-length');
    logger.info(
      {
        type: 'access',
        request_id: ctx.requestId,
        ip: ctx.clientIp,
        method: request.raw.method,
        host: ctx.host,
        path: redactUrl(ctx.path ? ctx.path + ctx.query : request.raw.url ?? ''),
        status: reply.statusCode,
        bytes: len === undefined ? undefined : Number(len),
        duration_ms: Math.round(durationMs * 1000) / 1000,
        site: ctx.site?.id,
        route: ctx.route?.id,
        upstream: ctx.upstream,
        user: ctx.principal?.subject,
        reason: ctx.reason ?? undefined,
        http: request.raw.httpVersion,
      },
      'request',
    );
  });

  app.setErrorHandler(function safeErrors(err: Error & { statusCode?: number; code?: string }, request, reply) {
    const ctx = request.gw as RequestContext | undefined;
    const gwErr = findGatewayError(err);
    if (gwErr?.statusCode) {
      if (ctx) ctx.reason = gwErr.code;
      return sendError(reply, gwErr.statusCode, gwErr.code);
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (ctx) ctx.reason = err.code ?? 'error';
    if (status >= 500) request.log.error({ err, request_id: ctx?.requestId }, 'request failed');
    else request.log.info({ err: { code: err.code, message: err.message }, request_id: ctx?.requestId }, 'request refused');
    const code: GatewayErrorCode = status === 413 ? 'GW_ERR_BODY_TOO_LARGE' : status === 431 ? 'GW_ERR_HEADERS_TOO_LARGE' : status >= 500 ? 'GW_ERR_INTERNAL' : 'GW_ERR_BAD_REQUEST';
    return sendError(reply, status, code);
  });

  app.setNotFoundHandler(function notFound(request, reply) {
    // Only reached for requests the wildcard route does not take: unsupported methods and
    // targets that are not origin-form (resolve answers most of these first).
    const ctx = request.gw as RequestContext | undefined;
    if (ctx && reply.sent) return reply;
    const method = request.raw.method ?? '';
    if (!(PROXIED_METHODS as readonly string[]).includes(method)) return sendError(reply, 405, 'GW_ERR_METHOD_NOT_ALLOWED');
    return sendError(reply, 404, 'GW_ERR_NO_ROUTE');
  });

  await app.register(httpProxy, {
    upstream: '',
    prefix: '/',
    websocket: true,
    httpMethods: [...PROXIED_METHODS],
    undici: {
      connections: 256,
      pipelining: 1,
      connect: { timeout: cfg0.timeouts.connect },
      headersTimeout: cfg0.timeouts.response,
      bodyTimeout: cfg0.timeouts.idle,
      keepAliveTimeout: Math.min(cfg0.timeouts.idle, 4_000),
    },
    replyOptions: {
      getUpstream: (request: FastifyRequest) => request.gw.upstream ?? '',
      rewriteRequestHeaders: (request: FastifyRequest, headers: HeaderBag) => upstreamHeaders(request, headers, false),
      rewriteHeaders: (headers: HeaderBag) => {
        stripResponseHeaders(headers);
        return headers;
      },
      onError: (reply: FastifyReply, { error }: { error: Error }) => onUpstreamError(reply, error),
    } as never,
    wsClientOptions: {
      rewriteRequestHeaders: (_headers: HeaderBag, request: FastifyRequest) => {
        const h = upstreamHeaders(request, { ...(request.headers as HeaderBag) }, true);
        for (const name of Object.keys(h)) if (name.startsWith('sec-websocket-') || name === 'connection' || name === 'upgrade') delete h[name];
        return h;
      },
    } as never,
    handler: (request: FastifyRequest, reply: FastifyReply, _dest: string, opts: object) => proxyRequest(request, reply, opts),
  } as never);

  function upstreamHeaders(request: FastifyRequest, headers: HeaderBag, websocket: boolean): HeaderBag {
    const ctx = request.gw;
    const st = ctx.state;
    const p = ctx.principal;
    const rawHost = request.raw.httpVersionMajor === 2 ? request.headers[':authority'] ?? request.headers.host : request.headers.host;
    return buildUpstreamHeaders(headers, {
      peer: peerOf(request),
      trustedPeer: ctx.trustedPeer,
      requestId: ctx.requestId,
      host: String(rawHost ?? ctx.host),
      publicPort: publicPort(st),
      gatewayOwned: st.gatewayOwnedHeaders,
      identityHeaders: st.identityHeaders,
      identity: p ? { user: p.subject, email: p.email, roles: p.roles } : null,
      forwardToken: st.config.auth.forwardToken,
      websocket,
    });
  }

  function proxyRequest(request: FastifyRequest, reply: FastifyReply, opts: object): FastifyReply {
    const ctx = request.gw;
    const route = ctx.route!;
    const pool = ctx.state.pools.get(route)!;
    const tried = [pool.targets.findIndex((t) => t.origin === ctx.upstream)];
    // Path only: reply-from takes the query from req.url untouched (and would refuse `../` in it).
    return reply.from(ctx.path, {
      ...opts,
      getUpstream: () => ctx.upstream ?? '',
      timeout: route.timeouts.response,
      // Failover: a target that refused the connection never saw the request, so the next
      // target may get it whatever the method. Anything else is not retried (not idempotent-safe).
      retryDelay: ({ err, req }: { err?: Error; req: { url: URL } }) => {
        if (!err || !isConnectFailure(err)) return null;
        const last = tried[tried.length - 1]!;
        pool.markDown(last);
        logger.warn({ request_id: ctx.requestId, upstream: ctx.upstream, err: { code: (err as { code?: string }).code } }, 'upstream connect failed');
        const next = pool.after(tried);
        if (next === -1) return null;
        tried.push(next);
        const origin = pool.targets[next]!.origin;
        ctx.upstream = origin;
        req.url = new URL(req.url.pathname + req.url.search, origin);
        return 1;
      },
    } as never);
  }

  function onUpstreamError(reply: FastifyReply, error: Error): void {
    const ctx = reply.request.gw;
    const gwErr = findGatewayError(error);
    if (gwErr?.statusCode) {
      ctx.reason = gwErr.code;
      sendError(reply, gwErr.statusCode, gwErr.code);
      return;
    }
    const kind = classifyUpstreamError(error);
    ctx.reason = `upstream_${kind}`;
    reply.request.log.warn({ request_id: ctx.requestId, upstream: ctx.upstream, reason: kind, err: { code: rootCode(error) } }, 'upstream request failed');
    if (kind === 'connect_timeout' || kind === 'response_timeout') sendError(reply, 504, 'GW_ERR_UPSTREAM_TIMEOUT');
    else sendError(reply, 502, kind === 'bad_response' ? 'GW_ERR_UPSTREAM_BAD_RESPONSE' : 'GW_ERR_UPSTREAM_UNAVAILABLE');
  }

  /** The port clients use for HTTPS: configured, or (port 0 in tests) the one actually bound. */
  function publicPort(st: RuntimeState): number {
    const p = st.config.listen.publicHttpsPort;
    return p === 0 && addrs ? addrs.https.port : p;
  }

  let redirect: HttpServer | null = null;
  let admin: HttpServer | null = null;
  let addrs: ListenerAddresses | null = null;
  let listening = false;
  const tlsSockets = new Set<Socket>();
  server.on('secureConnection', (s: TLSSocket) => {
    tlsSockets.add(s);
    s.once('close', () => tlsSockets.delete(s));
  });

  const gateway: Gateway = {
    app,
    certificates,
    current: () => state,
    async listen() {
      const cfg = state.config;
      await app.listen(listenOptions(cfg.listen.https));
      const https = app.server.address() as AddressInfo;
      addrs = { https, http: null, admin: null };
      let http: AddressInfo | null = null;
      if (cfg.listen.http) {
        redirect = createRedirectServer({ current: () => state, logger, httpsPort: () => publicPort(state) });
        await listenOn(redirect, cfg.listen.http);
        http = redirect.address() as AddressInfo;
      }
      let adm: AddressInfo | null = null;
      if (cfg.listen.admin) {
        admin = createAdminServer({ ready: () => gateway.ready(), logger });
        await listenOn(admin, cfg.listen.admin);
        adm = admin.address() as AddressInfo;
      }
      addrs = { https, http, admin: adm };
      listening = true;
      if (authenticator) authenticator.start().catch((err: unknown) => logger.error({ err }, 'token validation start failed'));
      return addrs;
    },
    addresses() {
      if (!addrs) throw new Error('gateway is not listening');
      return addrs;
    },
    async reload(config) {
      const old = state;
      if (JSON.stringify(config.listen) !== JSON.stringify(old.config.listen)) {
        logger.warn('listener addresses changed: they take effect on the next restart');
      }
      const sameAuth = JSON.stringify(config.auth) === JSON.stringify(old.config.auth);
      let nextAuth = authenticator;
      if (!sameAuth) {
        nextAuth = createAuthenticatorFor(config, logger);
        if (nextAuth && listening) await nextAuth.start();
      }
      if (JSON.stringify(config.tls.certificates) !== JSON.stringify(old.config.tls.certificates) || !options.certificates) {
        await certificates.loadFiles(config.tls.certificates);
      }
      state = buildRuntimeState(config, nextAuth, old);
      if (nextAuth !== authenticator) {
        const previous = authenticator;
        authenticator = nextAuth;
        // In-flight requests may still hold the old authenticator; close it once they had time to finish.
        if (previous) setTimeout(() => void previous.close(), 30_000).unref();
      }
    },
    async close(graceMs = state.config.shutdownGrace) {
      listening = false;
      const closing = Promise.all([app.close(), closeServer(redirect), closeServer(admin)]);
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

function authorizationValues(rawHeaders: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === 'authorization') out.push(rawHeaders[i + 1]!);
  return out;
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

function listenOn(server: HttpServer, addr: ListenAddress): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server: HttpServer | null): Promise<void> {
  if (!server || !server.listening) return Promise.resolve();
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}
