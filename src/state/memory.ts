/**
 * In-process {@link Store}: expiry checked lazily on every read plus a periodic sweep.
 *
 * Bounded: when `maxEntries` live keys are held, expired entries are swept first and, if the
 * store is still full, the oldest-inserted entries of the LARGEST namespace are evicted. A
 * namespace is a key's prefix up to its second `:` — one per route's rate limit (`rl:<route>:`),
 * one for ban counters (`ban:fail:`), one for bans (`ban:on:`) — much as nginx gives each
 * `limit_req_zone` its own memory. Without it, a key space a client can mint at will (`key:
 * header:NAME`, or a flood of IPv6 /64s) pushed the oldest entries of every other space out: a
 * client evicted its own ban and the counters of its address by sending made-up API keys. Now a
 * flood evicts from the space it floods, and eviction still forgets a counter early (fails open)
 * only there. Size the bound above the number of distinct clients expected per window (IPv6
 * clients are keyed by /64 in `protect/client-key.ts`).
 *
 * State is per process: several gateway instances each count separately (use the Redis store).
 */

import { GatewayError } from '../errors.js';
import type { CounterState, Store, StoredValue } from './store.js';

export interface MemoryStoreOptions {
  /** Maximum number of live keys. Default {@link DEFAULT_MAX_ENTRIES}. */
  readonly maxEntries?: number;
  /** Milliseconds between background sweeps of expired keys; 0 disables the timer. Default {@link DEFAULT_SWEEP_INTERVAL_MS}. */
  readonly sweepIntervalMs?: number;
  /** Clock in epoch milliseconds; injectable for tests. Default `Date.now`. */
  readonly now?: () => number;
}

export const DEFAULT_MAX_ENTRIES = 100_000;
export const DEFAULT_SWEEP_INTERVAL_MS = 30_000;
/** Least time between two sweeps made because the store is full (see `#insert`). */
const FULL_SWEEP_INTERVAL_MS = 1_000;

interface Entry {
  /**
   * A counter is held as a number: `String(count)` on every increment made a new string that V8's
   * number-to-string cache (old generation) kept alive, so each one was promoted; measured at ~4 %
   * of everything the gateway promoted under load (BENCHMARKS.md, session 8). Callers still only ever see strings.
   */
  value: string | number;
  /** Epoch milliseconds (store clock) at which the entry stops existing. */
  expiresAt: number;
}

function assertPositiveMs(name: string, ms: number): void {
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new TypeError(`${name} must be a positive number of milliseconds, got ${String(ms)}`);
  }
}

/** The integer a stored string spells in decimal (as Redis's INCR accepts it), else NaN. */
function counterOf(value: string): number {
  return /^(?:0|-?[1-9][0-9]*)$/.test(value) ? Number(value) : NaN;
}

/** The namespace of `key`: its prefix up to and including the second `:` (or the first, or none). */
export function namespaceOf(key: string): string {
  const first = key.indexOf(':');
  if (first === -1) return '';
  const second = key.indexOf(':', first + 1);
  return key.slice(0, (second === -1 ? first : second) + 1);
}

export class MemoryStore implements Store {
  /** namespace → (key → entry), each in insertion order. */
  readonly #spaces = new Map<string, Map<string, Entry>>();
  #size = 0;
  #lastFullSweep = -Infinity;
  readonly #maxEntries: number;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    const maxEntries = options.maxEntries ?? DEFAULT_MAX_ENTRIES;
    if (!Number.isInteger(maxEntries) || maxEntries < 1) {
      throw new TypeError(`maxEntries must be a positive integer, got ${String(maxEntries)}`);
    }
    const sweepIntervalMs = options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
    if (!Number.isFinite(sweepIntervalMs) || sweepIntervalMs < 0) {
      throw new TypeError(`sweepIntervalMs must be >= 0, got ${String(sweepIntervalMs)}`);
    }
    this.#maxEntries = maxEntries;
    this.#now = options.now ?? Date.now;
    if (sweepIntervalMs > 0) {
      this.#timer = setInterval(() => this.sweep(), sweepIntervalMs);
      // The sweep only frees memory; it must never keep the process alive on shutdown.
      this.#timer.unref();
    }
  }

  /** Number of keys held, including expired ones not yet swept (for tests and a gauge). */
  get size(): number {
    return this.#size;
  }

  /** Drops every expired entry now. Returns how many were dropped. */
  sweep(): number {
    const now = this.#now();
    let dropped = 0;
    for (const [name, entries] of this.#spaces) {
      for (const [key, entry] of entries) {
        if (entry.expiresAt <= now) {
          entries.delete(key);
          dropped++;
        }
      }
      if (entries.size === 0) this.#spaces.delete(name);
    }
    this.#size -= dropped;
    return dropped;
  }

  async incr(key: string, windowMs: number): Promise<CounterState> {
    return this.incrNow(key, windowMs);
  }

  /** Always known here: `incr` without the promise. */
  incrNow(key: string, windowMs: number): CounterState {
    this.#assertOpen();
    assertPositiveMs('windowMs', windowMs);
    const now = this.#now();
    const entry = this.#live(key, now);
    if (entry === undefined) {
      this.#insert(key, { value: 1, expiresAt: now + windowMs });
      return { count: 1, ttlMs: windowMs };
    }
    // A string here was written by `set`: a counter only if it reads as one (as Redis's INCR).
    const current = typeof entry.value === 'number' ? entry.value : counterOf(entry.value);
    if (!Number.isSafeInteger(current)) {
      throw new GatewayError('GW_ERR_INTERNAL', `state key ${JSON.stringify(key)} does not hold a counter`);
    }
    entry.value = current + 1;
    return { count: current + 1, ttlMs: entry.expiresAt - now };
  }

  async get(key: string): Promise<StoredValue | null> {
    return this.peek(key);
  }

  /** Always known here: the same answer as `get`, without the promise. */
  peek(key: string): StoredValue | null {
    this.#assertOpen();
    const now = this.#now();
    const entry = this.#live(key, now);
    return entry === undefined ? null : { value: String(entry.value), ttlMs: entry.expiresAt - now };
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#assertOpen();
    assertPositiveMs('ttlMs', ttlMs);
    // Re-insert so that Map order stays "oldest write first" for eviction.
    this.#remove(key);
    this.#insert(key, { value, expiresAt: this.#now() + ttlMs });
  }

  async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    this.#assertOpen();
    assertPositiveMs('ttlMs', ttlMs);
    const now = this.#now();
    if (this.#live(key, now) !== undefined) return false;
    this.#insert(key, { value, expiresAt: now + ttlMs });
    return true;
  }

  async delete(key: string): Promise<void> {
    this.#assertOpen();
    this.#remove(key);
  }

  async close(): Promise<void> {
    if (this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
    this.#closed = true;
    this.#spaces.clear();
    this.#size = 0;
  }

  #live(key: string, now: number): Entry | undefined {
    const entries = this.#spaces.get(namespaceOf(key));
    const entry = entries?.get(key);
    if (entry !== undefined && entry.expiresAt <= now) {
      entries!.delete(key);
      this.#size--;
      return undefined;
    }
    return entry;
  }

  #remove(key: string): void {
    const entries = this.#spaces.get(namespaceOf(key));
    if (entries !== undefined && entries.delete(key)) this.#size--;
  }

  #insert(key: string, entry: Entry): void {
    if (this.#size >= this.#maxEntries) {
      // A sweep walks every key (100 000 by default: ~1.5 ms). Full, each new key would pay one —
      // a flood of made-up keys, one sweep per request — so at most one per second; between
      // them the oldest of the largest key space makes room.
      const now = this.#now();
      if (now - this.#lastFullSweep >= FULL_SWEEP_INTERVAL_MS) {
        this.#lastFullSweep = now;
        this.sweep();
      }
      while (this.#size >= this.#maxEntries) this.#evictOldestOfLargest();
    }
    const name = namespaceOf(key);
    let entries = this.#spaces.get(name);
    if (entries === undefined) {
      entries = new Map();
      this.#spaces.set(name, entries);
    }
    entries.set(key, entry);
    this.#size++;
  }

  /** Map iteration order is insertion order: the first key of the largest namespace is its oldest. */
  #evictOldestOfLargest(): void {
    let largest: Map<string, Entry> | undefined;
    for (const entries of this.#spaces.values()) {
      if (largest === undefined || entries.size > largest.size) largest = entries;
    }
    const oldest = largest?.keys().next();
    if (oldest === undefined || oldest.done === true) return;
    largest!.delete(oldest.value);
    this.#size--;
  }

  #assertOpen(): void {
    if (this.#closed) throw new GatewayError('GW_ERR_INTERNAL', 'state store is closed');
  }
}
