/**
 * Request/response over a node:cluster IPC channel (worker ↔ primary), both directions.
 *
 * node:cluster gives us `send` and `'message'` and nothing else: no replies, no timeouts, and the
 * channel also carries cluster-internal and other libraries' messages. Our messages carry a `pcl`
 * tag so anything else is ignored; every call has a deadline so that a dead or wedged peer turns
 * into a typed error instead of a request that hangs forever.
 */
import { ErrorCodes, GatewayError, type GatewayErrorCode } from '../errors.js';

/** The two ends node:cluster gives us: `process` in a worker, a `Worker` in the primary. */
export interface MessagePort {
  send(message: unknown): unknown;
  /** `process.connected` in a worker. */
  readonly connected?: boolean;
  /** `Worker#isConnected()` in the primary. */
  isConnected?(): boolean;
  on(event: 'message', listener: (message: unknown) => void): unknown;
  off(event: 'message', listener: (message: unknown) => void): unknown;
}

type Request = { pcl: 1; id: number; m: string; p: unknown };
type Notification = { pcl: 1; m: string; p: unknown };
type Response = { pcl: 1; id: number; r: unknown } | { pcl: 1; id: number; e: { code: string; message: string } };
/** Several messages written in one IPC send. */
type Batch = { pcl: 1; b: Array<Request | Notification | Response> };

/** Handles the peer's calls and notifications; a thrown error goes back to the caller (code + message only). */
export type RpcHandler = (method: string, params: unknown) => unknown;

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export const DEFAULT_RPC_TIMEOUT_MS = 5_000;

export class RpcPeer {
  readonly #port: MessagePort;
  readonly #handler: RpcHandler;
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed = false;
  /**
   * Messages produced during one event-loop turn go out as one IPC write (flushed by setImmediate,
   * i.e. later in the same turn): under load every request makes a store call, and one
   * serialization + pipe write per batch instead of per message is what keeps the primary cheap.
   */
  #outbox: Array<Request | Notification | Response> = [];
  #flushScheduled = false;
  readonly #flush = (): void => this.#flushOutbox();
  readonly #onMessage = (message: unknown): void => this.#receive(message);

  constructor(port: MessagePort, handler: RpcHandler, options: { timeoutMs?: number } = {}) {
    this.#port = port;
    this.#handler = handler;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_RPC_TIMEOUT_MS;
    port.on('message', this.#onMessage);
  }

  /** Calls `method` on the peer; rejects with GW_ERR_INTERNAL when it fails, times out or the channel closes. */
  call<T = unknown>(method: string, params?: unknown, timeoutMs = this.#timeoutMs): Promise<T> {
    if (this.#closed) return Promise.reject(new GatewayError('GW_ERR_INTERNAL', `cluster channel closed (${method})`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new GatewayError('GW_ERR_INTERNAL', `cluster peer did not answer ${method} within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      if (!this.#send({ pcl: 1, id, m: method, p: params } satisfies Request)) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(new GatewayError('GW_ERR_INTERNAL', `cluster channel closed (${method})`));
      }
    });
  }

  /** Fire and forget. Returns false when the channel is closed. */
  notify(method: string, params?: unknown): boolean {
    if (this.#closed) return false;
    return this.#send({ pcl: 1, m: method, p: params } satisfies Notification);
  }

  /** Stops listening and fails every call still waiting. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#port.off('message', this.#onMessage);
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      this.#pending.delete(id);
      p.reject(new GatewayError('GW_ERR_INTERNAL', 'cluster channel closed'));
    }
  }

  #connected(): boolean {
    const port = this.#port;
    if (typeof port.isConnected === 'function') return port.isConnected();
    return port.connected !== false;
  }

  #send(message: Request | Notification | Response): boolean {
    if (!this.#connected()) return false;
    this.#outbox.push(message);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(this.#flush);
    }
    return true;
  }

  #flushOutbox(): void {
    this.#flushScheduled = false;
    const batch = this.#outbox;
    this.#outbox = [];
    if (batch.length === 0) return;
    try {
      this.#port.send(batch.length === 1 ? batch[0] : ({ pcl: 1, b: batch } satisfies Batch));
    } catch {
      // ERR_IPC_CHANNEL_CLOSED between the check and the write: the calls in this batch fail now
      // rather than at their deadline.
      for (const m of batch) {
        if ('m' in m && 'id' in m) this.#fail(m.id, new GatewayError('GW_ERR_INTERNAL', `cluster channel closed (${m.m})`));
      }
    }
  }

  #fail(id: number, err: Error): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    pending.reject(err);
  }

  #receive(message: unknown): void {
    if (typeof message !== 'object' || message === null || (message as { pcl?: unknown }).pcl !== 1) return;
    const batch = (message as { b?: unknown }).b;
    if (Array.isArray(batch)) {
      // One level only: a batch inside a batch is not something we send.
      for (const m of batch) if (typeof m === 'object' && m !== null && !('b' in m)) this.#receive(m);
      return;
    }
    const msg = message as { id?: unknown; m?: unknown; p?: unknown; r?: unknown; e?: { code: string; message: string } };
    if (typeof msg.m === 'string') {
      this.#dispatch(typeof msg.id === 'number' ? msg.id : undefined, msg.m, msg.p);
      return;
    }
    if (typeof msg.id !== 'number') return;
    const pending = this.#pending.get(msg.id);
    if (!pending) return; // answered after its deadline
    this.#pending.delete(msg.id);
    clearTimeout(pending.timer);
    if (msg.e) pending.reject(new GatewayError(knownCode(msg.e.code), msg.e.message));
    else pending.resolve(msg.r);
  }

  #dispatch(id: number | undefined, method: string, params: unknown): void {
    let result: unknown;
    try {
      result = this.#handler(method, params);
    } catch (err) {
      if (id !== undefined) this.#send({ pcl: 1, id, e: errorBody(err) });
      return;
    }
    if (id === undefined) {
      // Notifications have nobody to report to: a failing handler must not become an unhandled rejection.
      if (result instanceof Promise) result.catch(() => undefined);
      return;
    }
    Promise.resolve(result).then(
      (r) => this.#send({ pcl: 1, id, r: r === undefined ? null : r }),
      (err: unknown) => this.#send({ pcl: 1, id, e: errorBody(err) }),
    );
  }
}

function errorBody(err: unknown): { code: string; message: string } {
  const e = err as { code?: unknown; message?: unknown };
  return { code: typeof e?.code === 'string' ? e.code : 'GW_ERR_INTERNAL', message: typeof e?.message === 'string' ? e.message : String(err) };
}

function knownCode(code: string): GatewayErrorCode {
  return Object.hasOwn(ErrorCodes, code) ? (code as GatewayErrorCode) : 'GW_ERR_INTERNAL';
}
