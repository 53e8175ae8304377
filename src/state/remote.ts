/**
 * A {@link Store} served by another process: with `workers: N` every worker's rate-limit counters
 * and bans live in ONE store held by the primary, so a client spreading its requests over the
 * workers (connections are distributed round robin) is counted once, not N times.
 *
 * The transport is a function (`call(method, params)`), so the same pair of functions works over
 * node:cluster IPC or anything else that can carry JSON.
 */
import { GatewayError } from '../errors.js';
import type { CounterState, Store, StoredValue } from './store.js';

export type RemoteCall = (method: string, params: unknown) => Promise<unknown>;

/** Method names on the wire. */
const INCR = 'state.incr';
const GET = 'state.get';
const SET = 'state.set';
const DELETE = 'state.delete';

export class RemoteStore implements Store {
  readonly #call: RemoteCall;
  #closed = false;

  constructor(call: RemoteCall) {
    this.#call = call;
  }

  async incr(key: string, windowMs: number): Promise<CounterState> {
    this.#assertOpen();
    return (await this.#call(INCR, [key, windowMs])) as CounterState;
  }

  async get(key: string): Promise<StoredValue | null> {
    this.#assertOpen();
    return (await this.#call(GET, [key])) as StoredValue | null;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#assertOpen();
    await this.#call(SET, [key, value, ttlMs]);
  }

  async delete(key: string): Promise<void> {
    this.#assertOpen();
    await this.#call(DELETE, [key]);
  }

  async close(): Promise<void> {
    // The store itself belongs to the serving process; closing a client only stops its use.
    this.#closed = true;
  }

  #assertOpen(): void {
    if (this.#closed) throw new GatewayError('GW_ERR_INTERNAL', 'remote store used after close()');
  }
}

/**
 * The serving side: answers a {@link RemoteStore}'s calls from `store`. Returns undefined for
 * methods that are not store methods (so a dispatcher can try other handlers), and validates
 * parameter shapes because they come from another process.
 */
export function serveStoreCall(store: Store, method: string, params: unknown): Promise<unknown> | undefined {
  const p = Array.isArray(params) ? (params as unknown[]) : [];
  const str = (i: number): string => {
    if (typeof p[i] !== 'string') throw new GatewayError('GW_ERR_INTERNAL', `${method}: parameter ${i} must be a string`);
    return p[i] as string;
  };
  const num = (i: number): number => {
    if (typeof p[i] !== 'number') throw new GatewayError('GW_ERR_INTERNAL', `${method}: parameter ${i} must be a number`);
    return p[i] as number;
  };
  switch (method) {
    case INCR:
      return store.incr(str(0), num(1));
    case GET:
      return store.get(str(0));
    case SET:
      return store.set(str(0), str(1), num(2));
    case DELETE:
      return store.delete(str(0));
    default:
      return undefined;
  }
}
