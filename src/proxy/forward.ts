/**
 * The HTTP forwarding path: one request to an upstream through undici's dispatcher, the response
 * streamed from undici's callbacks straight into the client's response.
 *
 * Why not `reply.from()` (@fastify/reply-from, what @fastify/http-proxy calls by default): on this
 * project's 2-core benchmark machine (BENCHMARKS.md, session 4) a bare Fastify app proxying with
 * `reply.from` served ~12k req/s over TLS, and the same app dispatching with undici into the raw
 * response ~19k: reply-from builds URL objects, copies and re-filters the headers, wraps the
 * upstream body in a Readable and hands it to Fastify's stream reply (a pipe, two end-of-stream
 * watchers and a `setHeader` per header). Here a response costs one handler object: headers are
 * rewritten once, written with one `writeHead`, and each body chunk is one `write`.
 * @fastify/http-proxy still owns the routes, the request-body pass-through parser and WebSocket
 * proxying; its `handler` option hands each HTTP request to the gateway, which calls this.
 *
 * Behaviour that is the gateway's contract, kept here in one place:
 * - Nothing reaches the client before the first body byte (or the end of an empty body). Until
 *   then a failure is answered by the gateway's own error (`failed`), with no upstream header on it.
 * - After that, an upstream failure cuts the client's response (HTTP/1.1: the connection is closed
 *   before the announced length or the final chunk; HTTP/2: the stream is reset with
 *   INTERNAL_ERROR): a truncated body is never passed off as a complete one. So is a head Node
 *   refuses to write (it may have taken part of it already).
 * - 1xx interim responses are skipped; a status over 599 is a bad response (the gateway's 502).
 * - A target that refused the connection (or timed out connecting) never saw the request, so the
 *   next target of the pool gets it, whatever the method. Nothing else is retried.
 * - The client leaving aborts the upstream request.
 * - Upstream bodies are pulled only as fast as the client reads (undici pauses on backpressure).
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { constants as http2Constants, type Http2ServerResponse } from 'node:http2';
import type { Readable } from 'node:stream';
import { Agent, buildConnector, type Dispatcher } from 'undici';
import { classifyUpstreamError, isConnectFailure, type UpstreamErrorKind } from './upstream-errors.js';
import type { UpstreamPool } from './upstreams.js';

export type ClientResponse = ServerResponse | Http2ServerResponse;

export interface UpstreamClientOptions {
  /** Connections per upstream origin. */
  readonly connections: number;
  readonly connectTimeoutMs: number;
  /** How long an idle upstream connection is kept for reuse. */
  readonly keepAliveTimeoutMs: number;
}

export interface ForwardRequest {
  readonly pool: UpstreamPool;
  /** Index in `pool.targets` of the first target to try. */
  readonly target: number;
  readonly method: string;
  /** Path and query, as the upstream gets them. */
  readonly path: string;
  readonly headers: Record<string, string | string[]>;
  readonly body: Readable | string | Buffer | null;
  /**
   * Milliseconds to wait for the response head once the request is sent whole, between two
   * response body chunks, and for a client that reads nothing (then cut). 0: no such deadline.
   */
  readonly timeoutMs: number;
  readonly res: ClientResponse;
  /**
   * The HTTP/1.x client request, or null over HTTP/2. If the upstream answers before this
   * request's body was read whole, the client connection is closed after the response: its
   * unread body would otherwise be parsed as the next request.
   */
  readonly http1Request: { readonly complete: boolean } | null;
}

/** How a forwarded response ended, for the access log and metrics. */
export type ForwardOutcome =
  /** Sent whole. */
  | 'finished'
  /** Cut after it had started: the upstream failed mid-body, or the client went away. */
  | 'cut'
  /** The client went away before anything was sent. */
  | 'client_closed';

/**
 * What the gateway decides along the way. One object per gateway (not per request): each call gets
 * the request's own context `C`.
 */
export interface ForwardHooks<C> {
  /** The upstream's status and headers, rewritten into the headers the client gets. Must not throw. */
  responseHeaders(ctx: C, statusCode: number, headers: IncomingHttpHeaders): OutgoingHttpHeaders;
  /** The response starts going to the client (status and headers now on their way). */
  committed(ctx: C, origin: string, statusCode: number, seconds: number): void;
  /**
   * An attempt could not connect; `next` is the origin tried next, or null when none is left.
   * `wasDown`: the target was already marked down (it is marked down again, for longer).
   */
  connectFailed(ctx: C, origin: string, kind: UpstreamErrorKind, seconds: number, next: string | null, wasDown: boolean): void;
  /** Failed before anything was sent: the gateway answers with its own error. */
  failed(ctx: C, origin: string, error: Error): void;
  /**
   * Called once, when the client's response is over, unless `failed` was called. `bytes` are the
   * body bytes written to the client; `error` is the upstream error that cut the response.
   */
  ended(ctx: C, outcome: ForwardOutcome, bytes: number, error: Error | null): void;
}

/** A status line outside 200–599 (1xx are informational and skipped): not an answer to pass on. */
export class UpstreamBadStatusError extends Error {
  readonly code = 'GW_UPSTREAM_BAD_STATUS';
  constructor(readonly statusCode: number) {
    super(`upstream answered with status ${statusCode}`);
    this.name = 'UpstreamBadStatusError';
  }
}

class ClientClosedError extends Error {
  readonly code = 'GW_CLIENT_CLOSED';
  constructor() {
    super('the client closed the connection');
  }
}

/**
 * The client stopped reading: nothing could be written for `timeoutMs`. Its response is cut, which
 * frees the upstream connection (undici does not time out a body it was told to pause), like
 * nginx's `send_timeout`: otherwise a few clients that never read could hold every connection of
 * an upstream's pool.
 */
export class ClientStalledError extends Error {
  readonly code = 'GW_CLIENT_STALLED';
  constructor(timeoutMs: number) {
    super(`the client read nothing for ${timeoutMs} ms`);
    this.name = 'ClientStalledError';
  }
}

/**
 * The upstream sent nothing for `timeoutMs`: no response head since the request was written, or no
 * body bytes since the last ones. Coded as undici codes its own headers and body timeouts, which
 * this replaces (see `Exchange.armResponseTimer`); `classifyUpstreamError` reads the code.
 */
class UpstreamResponseTimeoutError extends Error {
  readonly code: 'UND_ERR_HEADERS_TIMEOUT' | 'UND_ERR_BODY_TIMEOUT';
  constructor(timeoutMs: number, headersReceived: boolean) {
    super(headersReceived ? `the upstream sent no body data for ${timeoutMs} ms` : `the upstream sent no response head within ${timeoutMs} ms`);
    this.name = 'UpstreamResponseTimeoutError';
    this.code = headersReceived ? 'UND_ERR_BODY_TIMEOUT' : 'UND_ERR_HEADERS_TIMEOUT';
  }
}

/** The client's side of the exchange is gone (HTTP/1.1: the response; HTTP/2: its stream). */
function responseGone(res: ClientResponse): boolean {
  return res.destroyed === true || (res as Http2ServerResponse).stream?.destroyed === true;
}

/**
 * Node refused to write the response head. Over HTTP/2: a header HTTP/2 allows once, which the
 * upstream sent twice (two Content-Type): the gateway answers 502. Over HTTP/1.1, only a header
 * value with a control character, which undici's parser refuses from the upstream and which the
 * configuration loader refuses in the gateway's own values: a bug in a hook. The response is cut.
 */
export class ResponseHeadRefusedError extends Error {
  readonly code = 'GW_UPSTREAM_BAD_HEADER';
  constructor(cause: unknown) {
    super('the response head could not be written', { cause });
    this.name = 'ResponseHeadRefusedError';
  }
}

/**
 * True exactly while an upstream socket emits an ECONNRESET. A body delimited by the
 * connection's close (no Content-Length, not chunked: HTTP/1.0, or `Connection: close`) ends with
 * a FIN; a reset is the upstream aborting, and the body may be short. undici (7.x, client-h1
 * `onHttpSocketError`) ends such a message on ECONNRESET as if it were complete, calling the
 * handler's `onResponseEnd` inside that 'error' emission; this flag lets the exchange cut the
 * client's response instead — as nginx does on a recv() error. One emission runs at a time.
 */
let upstreamResetting = false;

/** The upstream reset the connection that delimited the response body. */
export class UpstreamResetError extends Error {
  readonly code = 'ECONNRESET';
  constructor() {
    super('the upstream reset the connection before a close-delimited body was known to be complete');
    this.name = 'UpstreamResetError';
  }
}

/** undici's dispatcher for every upstream of one gateway: a pool of keep-alive connections per origin. */
export class UpstreamClient {
  private readonly agent: Agent;

  constructor(options: UpstreamClientOptions) {
    this.agent = new Agent({
      connections: options.connections,
      // One request at a time per connection: a pipelined request behind a slow one would wait
      // for it, and a failure would take the requests queued behind it down too.
      pipelining: 1,
      connect: watchResets(buildConnector({ timeout: options.connectTimeoutMs })),
      keepAliveTimeout: options.keepAliveTimeoutMs,
      // An upstream's keep-alive hint may not hold a connection longer than ours.
      keepAliveMaxTimeout: options.keepAliveTimeoutMs,
    });
  }

  /** Sends `req` to its pool's target, streams the answer into `req.res`, and reports through `hooks`. */
  forward<C>(req: ForwardRequest, hooks: ForwardHooks<C>, ctx: C): void {
    new Exchange(this.agent, req, hooks, ctx).start();
  }

  /** Closes idle connections at once, and the others when their request is done. */
  async close(): Promise<void> {
    await this.agent.close();
  }
}

/**
 * `connect`, with each socket's ECONNRESET emission bracketed by {@link upstreamResetting}. The
 * flag must be down again before anything else runs (another socket's FIN-ended body may end in
 * the very next tick), so it wraps the emission rather than being raised by a listener.
 */
function watchResets(connect: buildConnector.connector): buildConnector.connector {
  return (options, callback) =>
    connect(options, (err, socket) => {
      // On a failed connect undici's connector passes no socket at all (undefined, not null).
      if (socket) {
        const emit = socket.emit;
        // Every emit of the socket passes here ('readable', 'data'…): no rest parameter or spread,
        // `arguments` is handed on as it is.
        socket.emit = function emitWatchingResets(this: typeof socket, event: string | symbol, err?: NodeJS.ErrnoException): boolean {
          // eslint-disable-next-line prefer-rest-params
          if (event !== 'error' || err?.code !== 'ECONNRESET') return Reflect.apply(emit, this, arguments);
          upstreamResetting = true;
          try {
            // eslint-disable-next-line prefer-rest-params
            return Reflect.apply(emit, this, arguments);
          } finally {
            upstreamResetting = false;
          }
        } as typeof socket.emit;
      }
      (callback as (err: Error | null, socket: unknown) => void)(err, socket);
    });
}

/** One client request and its attempts upstream; undici's dispatch handler for each attempt. */
class Exchange<C> implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | null = null;
  private origin = '';
  private targetIndex: number;
  /** Targets already tried, only once a connect failure made us try another. */
  private tried: number[] | null = null;
  private startedAt = 0n;
  private statusCode = 0;
  private outHeaders: OutgoingHttpHeaders | null = null;
  private committed = false;
  /** `failed` was called: the gateway answers; this exchange reports nothing more. */
  private handedOver = false;
  private clientGone = false;
  private waitingForDrain = false;
  private stallTimer: NodeJS.Timeout | null = null;
  /** The streamed request body's end is being waited for (to start the response timer then). */
  private watchingUpload = false;
  /** Runs while the upstream owes us its head or more body (never while the client is the slow one). */
  private responseTimer: NodeJS.Timeout | null = null;
  private bytes = 0;
  /** The upstream's response ended and `res.end()` was called. */
  private ended = false;
  private upstreamError: Error | null = null;

  constructor(
    private readonly agent: Agent,
    private readonly req: ForwardRequest,
    private readonly hooks: ForwardHooks<C>,
    private readonly ctx: C,
  ) {
    this.targetIndex = req.target;
  }

  start(): void {
    // The client may have left while an earlier stage waited for I/O: its response's 'close' has
    // already been emitted, so nothing would ever end this exchange. Nothing is sent upstream.
    if (responseGone(this.req.res)) {
      this.clientGone = true;
      this.hooks.ended(this.ctx, 'client_closed', 0, null);
      return;
    }
    this.req.res.once('close', this.onClientClose);
    this.dispatch();
  }

  private dispatch(): void {
    const req = this.req;
    this.origin = req.pool.targets[this.targetIndex]!.origin;
    this.statusCode = 0;
    this.controller = null;
    this.startedAt = process.hrtime.bigint();
    this.agent.dispatch(
      {
        origin: this.origin,
        path: req.path,
        method: req.method as Dispatcher.HttpMethod,
        headers: req.headers,
        body: req.body,
        // 0: off. undici's timers for these are its 'fast timers', a new object per request that
        // stays in undici's timer list until its next sweep, up to a second later, long after the
        // request is done: every one of them was promoted to V8's old generation (15 % of all
        // promotion under load, measured with a heap sampling profile; BENCHMARKS.md, session 8).
        // Node's own timer, armed in onRequestStart, is unlinked when cleared and dies young.
        headersTimeout: 0,
        bodyTimeout: 0,
      },
      this,
    );
  }

  private seconds(): number {
    return Number(process.hrtime.bigint() - this.startedAt) / 1e9;
  }

  /**
   * undici calls this as the request starts being written. The wait for the upstream's answer
   * starts once the request is sent whole: at once without a body (or with one in memory), else when
   * undici has read the client's streamed body to its end. How long the client takes to upload is
   * not the upstream's delay: it is bounded by `limits.request_timeout` (HTTP/1.1) and the
   * connection's idle timeout, not by `timeouts.response`.
   */
  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.clientGone) {
      controller.abort(new ClientClosedError());
      return;
    }
    const body = this.req.body;
    if (body === null || typeof body === 'string' || Buffer.isBuffer(body) || body.readableEnded) {
      this.armResponseTimer();
    } else if (!this.watchingUpload) {
      // Once per exchange: a failover dispatches the same (still unread) body again.
      this.watchingUpload = true;
      body.once('end', this.onRequestSent);
    }
  }

  private readonly onRequestSent = (): void => {
    // Not while the client is the slow reader (the stall timer watches it), nor after the end.
    if (this.clientGone || this.handedOver || this.ended || this.waitingForDrain) return;
    this.armResponseTimer();
  };

  /** (Re)starts the wait for the upstream's next sign of life. */
  private armResponseTimer(): void {
    if (this.req.timeoutMs <= 0) return;
    if (this.responseTimer === null) this.responseTimer = setTimeout(this.onResponseTimeout, this.req.timeoutMs).unref();
    else this.responseTimer.refresh();
  }

  private stopResponseTimer(): void {
    if (this.responseTimer !== null) {
      clearTimeout(this.responseTimer);
      this.responseTimer = null;
    }
  }

  private readonly onResponseTimeout = (): void => {
    this.responseTimer = null;
    // undici reports the abort to onResponseError, which answers 504 or cuts the response.
    this.controller?.abort(new UpstreamResponseTimeoutError(this.req.timeoutMs, this.statusCode !== 0));
  };

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    // 1xx (100 Continue, 103 Early Hints) are interim: the final response follows, and
    // `timeouts.response` runs until its head. An interim answer does not restart it: an upstream
    // dripping 103s would hold the client and a pooled connection for as long as it liked.
    if (statusCode < 200) return;
    this.armResponseTimer();
    if (statusCode > 599) {
      controller.abort(new UpstreamBadStatusError(statusCode));
      return;
    }
    this.statusCode = statusCode;
    this.outHeaders = this.hooks.responseHeaders(this.ctx, statusCode, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.clientGone || this.handedOver) return;
    if (!this.committed && !this.commit(controller)) return;
    this.bytes += chunk.length;
    this.armResponseTimer();
    // Both response kinds take a Buffer and answer "keep writing?"; TypeScript cannot call the union.
    if (!(this.req.res as ServerResponse).write(chunk)) {
      controller.pause();
      // The client is the slow one now: the stall timer below watches it, not the upstream.
      this.stopResponseTimer();
      if (!this.waitingForDrain) {
        this.waitingForDrain = true;
        this.req.res.once('drain', this.onDrain);
        // `timeouts.response: 0` turns both waits off: the client may be as slow as it likes.
        if (this.req.timeoutMs > 0) this.stallTimer = setTimeout(this.onStall, this.req.timeoutMs).unref();
      }
    }
  }

  onResponseEnd(controller: Dispatcher.DispatchController): void {
    if (upstreamResetting) {
      // A close-delimited body ended by a reset, not a FIN: it may be short (see upstreamResetting).
      this.onResponseError(controller, new UpstreamResetError());
      return;
    }
    this.stopResponseTimer();
    if (this.clientGone || this.handedOver) return;
    if (!this.committed && !this.commit(controller)) return;
    this.ended = true;
    this.req.res.end();
    // HTTP/2: a response within the stream's buffer is taken whole, and waits there for the
    // client's flow-control window. A client that never opens it (SETTINGS_INITIAL_WINDOW_SIZE 0,
    // no WINDOW_UPDATE) would hold the stream, its buffers and the session forever: it gets
    // `timeouts.response` to take the rest, as a client that stops reading a larger one does.
    const stream = this.req.http1Request === null ? (this.req.res as Http2ServerResponse).stream : null;
    if (stream && !stream.writableFinished && this.req.timeoutMs > 0 && this.stallTimer === null) {
      this.stallTimer = setTimeout(this.onStall, this.req.timeoutMs).unref();
      stream.once('finish', () => {
        if (this.stallTimer !== null) clearTimeout(this.stallTimer);
        this.stallTimer = null;
      });
    }
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.stopResponseTimer();
    if (this.clientGone || this.handedOver) return;
    if (this.committed) {
      // Mid-body: cut the response so that the client can tell it is incomplete.
      if (this.upstreamError === null) this.cut(error);
      return;
    }
    if (this.statusCode === 0 && isConnectFailure(error)) {
      const pool = this.req.pool;
      const kind = classifyUpstreamError(error);
      const wasDown = pool.isDown(this.targetIndex);
      pool.markDown(this.targetIndex);
      this.tried ??= [this.targetIndex];
      const next = pool.after(this.tried);
      this.hooks.connectFailed(this.ctx, this.origin, kind, this.seconds(), next === -1 ? null : pool.targets[next]!.origin, wasDown);
      if (next !== -1) {
        this.tried.push(next);
        this.targetIndex = next;
        this.dispatch();
        return;
      }
    }
    this.handOver(error);
  }

  /** Nothing was sent: the gateway answers. This exchange reports nothing more. */
  private handOver(error: Error): void {
    this.handedOver = true;
    this.req.res.removeListener('close', this.onClientClose);
    this.hooks.failed(this.ctx, this.origin, error);
  }

  /** Writes the status and headers; false if Node refused them (the response is then cut). */
  private commit(controller: Dispatcher.DispatchController): boolean {
    const res = this.req.res;
    const headers = this.outHeaders!;
    if (this.req.http1Request !== null && !this.req.http1Request.complete) headers.connection = 'close';
    this.committed = true;
    try {
      res.writeHead(this.statusCode, headers);
    } catch (err) {
      const error = new ResponseHeadRefusedError(err);
      if (this.req.http1Request === null && !res.headersSent) {
        // HTTP/2 (e.g. an upstream's two Content-Type headers, which HTTP/2 forbids): nothing was
        // sent; the headers taken before the refused one are removed, and the gateway answers.
        for (const name of res.getHeaderNames()) if (name.charCodeAt(0) !== 58 /* ':' */) res.removeHeader(name);
        this.committed = false;
        this.handOver(error);
      } else {
        // HTTP/1.1: Node has already taken the status (and, for a 204 or 304, decided that the
        // response has no body), so no clean answer can follow on it: it is cut, like a failed body.
        this.cut(error);
      }
      // Stop the upstream body (a no-op once it is complete); its error report is ignored now.
      controller.abort(error);
      return false;
    }
    this.hooks.committed(this.ctx, this.origin, this.statusCode, this.seconds());
    return true;
  }

  /** Ends the client's response as visibly incomplete. */
  private cut(error: Error): void {
    this.upstreamError = error;
    if (this.req.http1Request === null) {
      // HTTP/2: destroy() without an error resets the stream with NO_ERROR, which a client takes
      // for the end of the body (Node's client emits 'end'). INTERNAL_ERROR says it was cut.
      (this.req.res as Http2ServerResponse).stream.close(http2Constants.NGHTTP2_INTERNAL_ERROR);
    } else {
      this.req.res.destroy();
    }
  }

  private readonly onDrain = (): void => {
    this.waitingForDrain = false;
    if (this.stallTimer !== null) {
      clearTimeout(this.stallTimer);
      this.stallTimer = null;
    }
    if (!this.ended) this.armResponseTimer();
    this.controller?.resume();
  };

  private readonly onStall = (): void => {
    this.stallTimer = null;
    if (this.clientGone || this.upstreamError !== null) return;
    const error = new ClientStalledError(this.req.timeoutMs);
    // Cut first: the abort's error report then finds the response already cut.
    this.cut(error);
    this.controller?.abort(error);
  };

  private readonly onClientClose = (): void => {
    const res = this.req.res;
    this.stopResponseTimer();
    if (this.stallTimer !== null) {
      clearTimeout(this.stallTimer);
      this.stallTimer = null;
    }
    // `ended` first: over HTTP/2 a stream reset by the client also ends its writable side, so
    // writableFinished alone would take a client that left for a response sent whole.
    if (this.ended && res.writableFinished) {
      this.hooks.ended(this.ctx, 'finished', this.bytes, null);
      return;
    }
    // The client went away (or the response was cut above): stop the upstream request too.
    this.clientGone = true;
    this.controller?.abort(new ClientClosedError());
    this.hooks.ended(this.ctx, this.committed ? 'cut' : 'client_closed', this.bytes, this.upstreamError);
  };
}
