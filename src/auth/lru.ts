/**
 * Bounded LRU with per-entry expiry, checked on read (an expired entry is never served, however
 * recently it was used). Map iteration order is insertion order, so re-inserting on a hit moves
 * the entry to the young end and the first key is the least recently used.
 */
export class ExpiringLru<V> {
  readonly #max: number;
  readonly #map = new Map<string, { value: V; expiresAt: number }>();

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new TypeError('"max" must be a positive integer');
    this.#max = max;
  }

  get size(): number {
    return this.#map.size;
  }

  /** `now` in the same unit as `expiresAt` (ms). Entries with `expiresAt <= now` are dropped. */
  get(key: string, now: number): V | undefined {
    const entry = this.#map.get(key);
    if (entry === undefined) return undefined;
    this.#map.delete(key);
    if (entry.expiresAt <= now) return undefined;
    this.#map.set(key, entry); // same object: a hit allocates nothing
    return entry.value;
  }

  set(key: string, value: V, expiresAt: number): void {
    this.#map.delete(key);
    if (this.#map.size >= this.#max) {
      const oldest = this.#map.keys().next();
      if (oldest.done !== true) this.#map.delete(oldest.value);
    }
    this.#map.set(key, { value, expiresAt });
  }

  delete(key: string): void {
    this.#map.delete(key);
  }

  clear(): void {
    this.#map.clear();
  }
}
