/**
 * Bounded, approximately-LRU map with per-entry expiry, checked on read (an expired entry is never
 * served, however recently it was used). Map iteration order is insertion order, so the first key
 * is the one placed longest ago and is the one evicted.
 *
 * A hit moves its entry to the young end only when the entry has drifted into the older half
 * (at least max/2 placements since its own). Moving means `delete` + `set`, and in V8 that is not
 * free: a delete from a nearly empty Map shrinks its table and the tombstones of a fuller one force
 * a rehash every few hundred moves. Either way a new table is allocated and, the Map being
 * long-lived, promoted to the old generation: with one token re-used at full speed, a quarter of
 * everything the gateway promoted (BENCHMARKS.md, session 8). An entry read is still never
 * evicted before max/2 further placements, which is what a verified-token cache needs.
 */
export class ExpiringLru<V> {
  readonly #max: number;
  /** An entry read is moved to the young end when at least this many placements followed its own. */
  readonly #moveAfter: number;
  readonly #map = new Map<string, { value: V; expiresAt: number; placed: number }>();
  /** Placements so far (inserts and moves): an entry's `placed` says how far it has drifted. */
  #placements = 0;

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new TypeError('"max" must be a positive integer');
    this.#max = max;
    this.#moveAfter = max >>> 1;
  }

  get size(): number {
    return this.#map.size;
  }

  /** `now` in the same unit as `expiresAt` (ms). Entries with `expiresAt <= now` are dropped. */
  get(key: string, now: number): V | undefined {
    const entry = this.#map.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= now) {
      this.#map.delete(key);
      return undefined;
    }
    if (this.#placements - entry.placed >= this.#moveAfter) {
      this.#map.delete(key);
      this.#map.set(key, entry); // same object: a move allocates no entry
      entry.placed = ++this.#placements;
    }
    return entry.value;
  }

  set(key: string, value: V, expiresAt: number): void {
    this.#map.delete(key);
    if (this.#map.size >= this.#max) {
      const oldest = this.#map.keys().next();
      if (oldest.done !== true) this.#map.delete(oldest.value);
    }
    this.#map.set(key, { value, expiresAt, placed: ++this.#placements });
  }

  delete(key: string): void {
    this.#map.delete(key);
  }

  /** Drops every entry whose value matches (a full scan: for rare events, never per request). */
  deleteWhere(match: (value: V) => boolean): number {
    let dropped = 0;
    for (const [key, entry] of this.#map) {
      if (match(entry.value)) {
        this.#map.delete(key);
        dropped++;
      }
    }
    return dropped;
  }

  clear(): void {
    this.#map.clear();
  }
}
