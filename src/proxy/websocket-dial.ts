/**
 * The upstream side of a proxied WebSocket, dialled with the same failover as an HTTP request.
 *
 * @fastify/http-proxy answers the client's handshake (101) first and then opens one `ws`
 * connection to the target the pipeline picked; a refused connection used to end the client's
 * socket with 1011 even when another target of the route was up. `ws` lets its caller create the
 * upstream socket (`createConnection`, handed on to Node's `http.request`), so the connection is
 * made here: the picked target first, then the pool's next ones after a connect failure, each
 * failure marking its target down exactly as the HTTP path does (proxy/forward.ts). Only connect
 * failures move on: once a socket is up, the handshake went to that target and is not replayed.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { classifyUpstreamError, isConnectFailure, type UpstreamErrorKind } from './upstream-errors.js';
import type { UpstreamPool } from './upstreams.js';

export interface WebSocketDialPlan {
  readonly pool: UpstreamPool;
  /** Index of the target the pipeline picked. */
  readonly first: number;
  readonly connectTimeoutMs: number;
  /** How long the upstream may stay silent before its handshake answer (the route's timeouts.response). */
  readonly handshakeTimeoutMs: number;
  /** A target could not be reached; `next` is the origin tried next, or null when none is left. */
  connectFailed(origin: string, kind: UpstreamErrorKind, seconds: number, next: string | null, wasDown: boolean): void;
  /** The socket to `origin` is up; the handshake goes there. */
  connected(origin: string, seconds: number): void;
}

type OnCreate = (err: Error | null, socket?: Duplex) => void;

/** What Node's `http.request` (and so `ws`) passes to `createConnection` (the part read here). */
interface ConnectOptions {
  readonly host?: string;
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

export class WebSocketDialer {
  #pending: WebSocketDialPlan | null = null;

  /**
   * The plan for the `ws` client about to be created. `ws` builds its request synchronously in
   * its constructor, which is where `createConnection` runs, so the plan set just before (from
   * `rewriteRequestHeaders`, called in the same turn) is the one it takes.
   */
  plan(plan: WebSocketDialPlan): void {
    this.#pending = plan;
  }

  /** `ws`'s `createConnection` option. */
  readonly createConnection = (options: ConnectOptions, oncreate: OnCreate): undefined => {
    const plan = this.#pending;
    this.#pending = null;
    if (plan === null) {
      // Only a `ws` client created without plan() gets here, which is a bug: the client's socket
      // is closed (1011) rather than connected to whatever the URL says.
      oncreate(new Error(`WebSocket dial to ${String(options.host)} without a plan`));
      return undefined;
    }
    dial(plan, oncreate);
    return undefined;
  };
}

function dial(plan: WebSocketDialPlan, oncreate: OnCreate): void {
  const started = process.hrtime.bigint();
  const seconds = (): number => Number(process.hrtime.bigint() - started) / 1e9;
  const { pool } = plan;
  const tried = [plan.first];

  const attempt = (idx: number): void => {
    const target = pool.targets[idx]!;
    const url = new URL(target.origin);
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const secure = target.protocol === 'https:';
    const port = url.port === '' ? (secure ? 443 : 80) : Number(url.port);
    const socket = secure
      ? tls.connect({ host, port, servername: net.isIP(host) === 0 ? host : undefined, ALPNProtocols: ['http/1.1'] })
      : net.connect({ host, port });
    const timer = setTimeout(() => socket.destroy(new ConnectTimeoutError(target.origin)), plan.connectTimeoutMs);
    const onError = (err: Error): void => {
      clearTimeout(timer);
      failed(idx, err);
    };
    socket.once('error', onError);
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      plan.connected(target.origin, seconds());
      // An upstream that takes the connection and never answers the handshake would hold the
      // client's socket open forever. `ws` clears the socket's idle timeout once the handshake
      // succeeds (setSocket → setTimeout(0)), so this bounds the handshake only.
      socket.setTimeout(plan.handshakeTimeoutMs, () => socket.destroy(new HandshakeTimeoutError(target.origin)));
      oncreate(null, socket);
    });
  };

  const failed = (idx: number, err: Error): void => {
    if (!isConnectFailure(err)) {
      oncreate(err);
      return;
    }
    const wasDown = pool.isDown(idx);
    pool.markDown(idx);
    const next = pool.after(tried);
    plan.connectFailed(pool.targets[idx]!.origin, classifyUpstreamError(err), seconds(), next === -1 ? null : pool.targets[next]!.origin, wasDown);
    if (next === -1) {
      oncreate(err);
      return;
    }
    tried.push(next);
    attempt(next);
  };

  attempt(plan.first);
}
