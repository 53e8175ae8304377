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

export interface RemoteStoreOptions {
  /**
   * `get` answers for keys under these prefixes are kept locally, so a key read on every request
   * (the active-ban check) costs no round trip. Correct only if the serving side calls
   * {@link RemoteStore.invalidate} for every write to such a key, AFTER the write is applied (see
   * {@link writtenKey}): until then a client may read the old value (one IPC hop of staleness).
   */
  readonly cachePrefixes?: readonly string[];
  /** Most cached keys; the oldest are forgotten first. Default 10 000. */
  readonly maxCached?: number;
  /** Clock for the expiry of cached values. Default `Date.now`. */
  readonly now?: () => number;
}

interface Cached {
  readonly value: string | null;
  /** Local clock; Infinity for an absent key (it stays absent until a write is announced). */
  readonly expiresAt: number;
}

/** Method names on the wire. */
const INCR = 'state.incr';
const GET = 'state.get';
const SET = 'state.set';
const DELETE = 'state.delete';
const SET_IF_ABSENT = 'state.setIfAbsent';

export class RemoteStore implements Store {
  readonly #call: RemoteCall;
  readonly #prefixes: readonly string[];
  readonly #maxCached: number;
  readonly #now: () => number;
  readonly #cache = new Map<string, Cached>();
  /** Invalidations received so far (see {@link get}). */
  #invalidations = 0;
  #closed = false;

  constructor(call: RemoteCall, options: RemoteStoreOptions = {}) {
    this.#call = call;
    this.#prefixes = options.cachePrefixes ?? [];
    this.#maxCached = options.maxCached ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /** The serving side announced a write to `key`: forget what we know about it. */
  invalidate(key: string): void {
    this.#cache.delete(key);
    this.#invalidations++;
  }

  async incr(key: string, windowMs: number): Promise<CounterState> {
    this.#assertOpen();
    return (await this.#call(INCR, [key, windowMs])) as CounterState;
  }

  /** The locally kept answer for a key under a cached prefix, or undefined (ask with `get`). */
  peek(key: string): StoredValue | null | undefined {
    this.#assertOpen();
    const hit = this.#cache.get(key);
    if (hit === undefined) return undefined;
    const now = this.#now();
    if (hit.expiresAt <= now) return undefined;
    return hit.value === null ? null : { value: hit.value, ttlMs: hit.expiresAt - now };
  }

  async get(key: string): Promise<StoredValue | null> {
    this.#assertOpen();
    if (!this.#cached(key)) return (await this.#call(GET, [key])) as StoredValue | null;
    const known = this.peek(key);
    if (known !== undefined) return known;
    const seen = this.#invalidations;
    const answer = (await this.#call(GET, [key])) as StoredValue | null;
    // An invalidation that arrived while the call was out may be for a write the answer does not
    // reflect: the serving side can send the answer and a later write's invalidation in one
    // message, and the invalidation then runs before this continuation. Such an answer is used
    // once, not remembered.
    if (this.#invalidations === seen) {
      this.#remember(key, answer === null ? { value: null, expiresAt: Infinity } : { value: answer.value, expiresAt: this.#now() + answer.ttlMs });
    }
    return answer;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#assertOpen();
    await this.#call(SET, [key, value, ttlMs]);
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    this.#assertOpen();
    return (await this.#call(SET_IF_ABSENT, [key, value, ttlMs])) === true;
  }

  /** `get` from the serving side, never from what is kept locally. */
  async getFresh(key: string): Promise<StoredValue | null> {
    this.#assertOpen();
    return (await this.#call(GET, [key])) as StoredValue | null;
  }

  async delete(key: string): Promise<void> {
    this.#assertOpen();
    await this.#call(DELETE, [key]);
  }

  async close(): Promise<void> {
    // The store itself belongs to the serving process; closing a client only stops its use.
    this.#closed = true;
    this.#cache.clear();
  }

  #cached(key: string): boolean {
    for (const p of this.#prefixes) if (key.startsWith(p)) return true;
    return false;
  }

  #remember(key: string, entry: Cached): void {
    this.#cache.delete(key);
    if (this.#cache.size >= this.#maxCached) {
      const oldest = this.#cache.keys().next();
      if (!oldest.done) this.#cache.delete(oldest.value);
    }
    this.#cache.set(key, entry);
  }

  #assertOpen(): void {
    if (this.#closed) throw new GatewayError('GW_ERR_INTERNAL', 'remote store used after close()');
  }
}

/** The key a call writes (incr, set, setIfAbsent, delete), or null for reads and other methods. */
export function writtenKey(method: string, params: unknown): string | null {
  if (method !== INCR && method !== SET && method !== DELETE && method !== SET_IF_ABSENT) return null;
  const key = Array.isArray(params) ? (params as unknown[])[0] : undefined;
  return typeof key === 'string' ? key : null;
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
    case SET_IF_ABSENT:
      return store.setIfAbsent(str(0), str(1), num(2));
    default:
      return undefined;
  }
}
