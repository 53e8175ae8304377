/**
 * The upstream side of a proxied WebSocket, dialled with the same failover as an HTTP request.
 *
 * The gateway opens the upstream side with `ws` before it answers the client (proxy/websocket.ts).
 * `ws` lets its caller create the upstream socket (`createConnection`, handed on to Node's
 * `http.request`), so the connection is made here: the picked target first, then the pool's next
 * ones after a connect failure, each failure marking its target down exactly as the HTTP path does
 * (proxy/forward.ts). Only connect failures move on: once a socket is up, the handshake went to
 * that target and is not replayed.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { ClientRequest } from 'node:http';
import { classifyUpstreamError, isConnectFailure, type UpstreamErrorKind } from './upstream-errors.js';
import type { UpstreamPool } from './upstreams.js';

export interface WebSocketDialPlan {
  readonly pool: UpstreamPool;
  /** Index of the target the pipeline picked. */
  readonly first: number;
  /** 0: no limit (as undici reads its connect timeout). */
  readonly connectTimeoutMs: number;
  /** How long the upstream may stay silent before its handshake answer (the route's timeouts.response). */
  readonly handshakeTimeoutMs: number;
  /**
   * TLS server name for https targets: the host the client asked for, as the HTTP path sends it
   * (undici takes it from the forwarded Host), so one upstream certificate serves both.
   */
  readonly servername: string | undefined;
  /** The client's connection: when it closes, the dial stops (nobody is left to answer). */
  readonly client: Pick<Duplex, 'destroyed' | 'once' | 'removeListener'>;
  /** A target could not be reached; `next` is the origin tried next, or null when none is left. */
  connectFailed(origin: string, kind: UpstreamErrorKind, seconds: number, next: string | null, wasDown: boolean): void;
  /** The socket to `origin` is up; the handshake goes there. */
  connected(origin: string, seconds: number): void;
  /** `origin` failed otherwise than by not connecting (e.g. its certificate): no failover. */
  attemptFailed(origin: string, kind: UpstreamErrorKind, seconds: number): void;
  /** `origin` connected (reported by `connected`) but did not answer the handshake in time. */
  handshakeTimedOut(origin: string): void;
}

type OnCreate = (err: Error | null, socket?: Duplex) => void;

/** What Node's `http.request` (and so `ws`) passes to `createConnection` (the part read here). */
interface ConnectOptions {
  readonly host?: string;
  readonly headers?: Readonly<Record<string | symbol, unknown>>;
}

/** Coded as undici codes its connect and headers timeouts: classifyUpstreamError reads the code. */
class ConnectTimeoutError extends Error {
  readonly code = 'UND_ERR_CONNECT_TIMEOUT';
  constructor(origin: string) {
    super(`connect timeout: ${origin}`);
  }
}

class HandshakeTimeoutError extends Error {
  readonly code = 'UND_ERR_HEADERS_TIMEOUT';
  constructor(origin: string) {
    super(`no WebSocket handshake answer: ${origin}`);
  }
}

const PLAN = Symbol('portcullis.wsDialPlan');
/** Upstream sockets this module connected, with what `finishUpstreamRequest` reports about them. */
const DIALED = new WeakMap<object, { readonly plan: WebSocketDialPlan; readonly origin: string; readonly deadline: NodeJS.Timeout | null }>();

/**
 * Attaches the dial plan to the handshake's headers (what `rewriteRequestHeaders` returns). `ws`
 * and Node's `http.request` copy the headers object with spread, which keeps symbol keys, and
 * send only its string keys: the plan travels with its own request to `createConnection`.
 */
export function withDialPlan<H extends object>(headers: H, plan: WebSocketDialPlan): H {
  (headers as Record<symbol, unknown>)[PLAN] = plan;
  return headers;
}

/** `ws`'s `createConnection` option (Node's callback form). */
export function createUpstreamConnection(options: ConnectOptions, oncreate: OnCreate): undefined {
  const plan = options.headers?.[PLAN] as WebSocketDialPlan | undefined;
  if (plan === undefined) {
    // Only a `ws` client whose headers carry no plan gets here, which is a bug: the client's
    // socket is closed (1011) rather than connected to whatever the URL says.
    oncreate(new Error(`WebSocket dial to ${String(options.host)} without a plan`));
    return undefined;
  }
  dial(plan, oncreate);
  return undefined;
}

/**
 * `ws`'s `finishRequest` option: the handshake deadline stops at the head of the answer (101, or
 * any other status, which the gateway relays: proxy/websocket.ts).
 */
export function finishUpstreamRequest(req: ClientRequest): void {
  const answered = (): void => {
    const dialed = req.socket === null ? undefined : DIALED.get(req.socket);
    if (dialed?.deadline) clearTimeout(dialed.deadline);
  };
  req.once('upgrade', answered);
  req.once('response', answered);
  req.end();
}

function dial(plan: WebSocketDialPlan, oncreate: OnCreate): void {
  const { pool } = plan;
  const tried = [plan.first];
  let current: Duplex | null = null;
  let timer: NodeJS.Timeout | undefined;
  let settled = false;

  const settle = (err: Error | null, socket?: Duplex): void => {
    settled = true;
    clearTimeout(timer);
    plan.client.removeListener('close', clientGone);
    oncreate(err, socket);
  };
  // The client left while the upstream was being dialled: @fastify/http-proxy closes only an
  // upstream socket that is already open, so an unfinished dial is stopped here.
  function clientGone(): void {
    if (settled) return;
    current?.destroy();
    settle(new Error('the client closed its WebSocket before the upstream answered'));
  }
  plan.client.once('close', clientGone);

  const attempt = (idx: number): void => {
    if (plan.client.destroyed) return clientGone();
    const target = pool.targets[idx]!;
    const started = process.hrtime.bigint();
    const seconds = (): number => Number(process.hrtime.bigint() - started) / 1e9;
    const url = new URL(target.origin);
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const secure = target.protocol === 'https:';
    const port = url.port === '' ? (secure ? 443 : 80) : Number(url.port);
    const socket = secure
      ? tls.connect({ host, port, servername: plan.servername, ALPNProtocols: ['http/1.1'] })
      : net.connect({ host, port });
    current = socket;
    if (plan.connectTimeoutMs > 0) {
      // Deferred one turn, as undici does: after a long event-loop turn the timers run before the
      // poll phase that would deliver a connect that already happened.
      timer = setTimeout(() => setImmediate(() => {
        if (current === socket && !settled) socket.destroy(new ConnectTimeoutError(target.origin));
      }), plan.connectTimeoutMs);
    }
    const onError = (err: Error): void => {
      clearTimeout(timer);
      if (settled) return;
      failed(idx, err, seconds());
    };
    socket.once('error', onError);
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      if (settled) return;
      plan.connected(target.origin, seconds());
      // An upstream that takes the connection and never answers the handshake would hold the
      // client's socket open forever; one that trickles its answer a byte at a time would restart
      // an idle timeout forever. So an absolute deadline, stopped by the answer's head
      // (finishUpstreamRequest) or the socket's end. `0`: none, as for HTTP.
      let deadline: NodeJS.Timeout | null = null;
      if (plan.handshakeTimeoutMs > 0) {
        const timer = setTimeout(() => {
          plan.handshakeTimedOut(target.origin);
          socket.destroy(new HandshakeTimeoutError(target.origin));
        }, plan.handshakeTimeoutMs);
        socket.once('close', () => clearTimeout(timer));
        deadline = timer;
      }
      DIALED.set(socket, { plan, origin: target.origin, deadline });
      settle(null, socket);
    });
  };

  const failed = (idx: number, err: Error, seconds: number): void => {
    if (!isConnectFailure(err)) {
      // The target answered (a TLS alert, a reset): another target would not fix that.
      plan.attemptFailed(pool.targets[idx]!.origin, classifyUpstreamError(err), seconds);
      return settle(err);
    }
    const wasDown = pool.isDown(idx);
    pool.markDown(idx);
    const next = pool.after(tried);
    plan.connectFailed(pool.targets[idx]!.origin, classifyUpstreamError(err), seconds, next === -1 ? null : pool.targets[next]!.origin, wasDown);
    if (next === -1) return settle(err);
    tried.push(next);
    attempt(next);
  };

  attempt(plan.first);
}
