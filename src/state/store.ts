/**
 * The one interface for state shared between requests (and, with the later Redis implementation,
 * between gateway instances): rate-limit counters and bans.
 *
 * Kept deliberately small and async so that a Redis implementation maps onto single commands:
 * `incr` = `INCR` + `PEXPIRE NX` (fixed window), `get` = `GET` + `PTTL`, `set` = `SET PX`,
 * `setIfAbsent` = `SET NX PX`, `delete` = `DEL`.
 *
 * Times are returned as *remaining* milliseconds (`ttlMs`), not as absolute instants, so callers
 * never need the store's clock (a Redis server's clock is not the gateway's).
 */

/** Result of {@link Store.incr}. */
export interface CounterState {
  /** The counter's value after this increment (1 for the first hit of a window). */
  readonly count: number;
  /** Milliseconds until the window (and with it the counter) ends; > 0. */
  readonly ttlMs: number;
}

/** Result of {@link Store.get}. */
export interface StoredValue {
  readonly value: string;
  /** Milliseconds until the entry expires; > 0. */
  readonly ttlMs: number;
}

export interface Store {
  /**
   * Fixed-window counter: increments `key`; the first increment starts a window of `windowMs`
   * milliseconds, later increments inside the window do NOT extend it. After the window the next
   * increment starts a new one at 1.
   *
   * Rejects with a `GW_ERR_INTERNAL` GatewayError when `key` holds a non-counter value.
   */
  incr(key: string, windowMs: number): Promise<CounterState>;
  /** The live value of `key`, or null when absent or expired. */
  get(key: string): Promise<StoredValue | null>;
  /**
   * What `get` would answer, when this process knows it without I/O (an in-memory store always;
   * a remote one for the keys it keeps locally); `undefined` means "ask with `get`". Optional: a
   * store over the network may not know anything locally. Read on every request (the ban check),
   * so that the common answer costs no promise.
   */
  peek?(key: string): StoredValue | null | undefined;
  /**
   * `incr` answered at once, when this process holds the counter (an in-memory store); absent on
   * stores that need I/O. Called on every rate-limited request, so that the common case costs no
   * promise. Throws what `incr` would reject with.
   */
  incrNow?(key: string, windowMs: number): CounterState;
  /** Stores `value` under `key` for `ttlMs` milliseconds (> 0), replacing any previous value. */
  set(key: string, value: string, ttlMs: number): Promise<void>;
  /**
   * `set`, only if `key` holds no live value: true when this call stored it (Redis `SET NX PX`).
   * Atomic where the store is shared: of several callers at once exactly one gets true.
   */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  /** Removes `key`; absent keys are not an error. */
  delete(key: string): Promise<void>;
  /** Releases timers/connections. Further calls after `close()` are a programming error. */
  close(): Promise<void>;
}
