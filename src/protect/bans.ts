/**
 * Temporary bans after repeated authentication failures (brute force / credential stuffing).
 *
 * `recordAuthFailure` counts 401s per client in a fixed window of `windowMs` (Store.incr); the
 * failure that reaches `authFailures` bans the client for `durationMs`. Bans live in the Store with
 * a TTL, so they expire by themselves, and with a shared store they apply on every instance.
 *
 * `activeBans()` is for a gauge and is approximate: it counts bans issued by THIS process that
 * have not expired (a ban issued by another instance, or lifted with `unban` elsewhere, is not
 * seen), tracked in a bounded map.
 */

import type { Store, StoredValue } from '../state/store.js';
import type { BanRules } from './types.js';

export type BanStatus = { readonly banned: true; readonly retryAfterMs: number } | { readonly banned: false };

/** {@link BanStatus}, and whether the check itself wrote the ban (`issued`: log the ban). */
export type VerifiedBanStatus = BanStatus | { readonly banned: true; readonly retryAfterMs: number; readonly issued: true };

/**
 * `overLimit`: the client has used up its `auth_failures` answers in this window — this failure
 * came after them (a burst whose members all passed the ban check before the ban existed, over
 * several workers or HTTP/2 streams) — so it is answered like a banned request (429), not 401.
 */
export type AuthFailureResult =
  /** No ban set by this failure. */
  | { readonly banned: false; readonly failures: number; readonly overLimit: boolean }
  /** This failure set the ban (log a security event). */
  | { readonly banned: true; readonly failures: number; readonly retryAfterMs: number; readonly overLimit: boolean };

export interface BanListOptions {
  readonly store: Store;
  /** Clock for the `activeBans()` gauge only. Default `Date.now`. */
  readonly now?: () => number;
  /** Key prefix in the store. Default `ban:`. */
  readonly prefix?: string;
  /** Most bans tracked for the gauge. Default 100 000. */
  readonly maxTracked?: number;
}

function assertRules(rules: BanRules): void {
  if (!Number.isInteger(rules.authFailures) || rules.authFailures < 1) {
    throw new TypeError(`bans.auth_failures must be a positive integer, got ${String(rules.authFailures)}`);
  }
  for (const [name, ms] of [['window', rules.windowMs], ['duration', rules.durationMs]] as const) {
    if (!Number.isFinite(ms) || ms <= 0) throw new TypeError(`bans.${name} must be a positive duration, got ${String(ms)}`);
  }
}

const NOT_BANNED: BanStatus = Object.freeze({ banned: false });

function banStatus(entry: StoredValue | null): BanStatus {
  return entry === null ? NOT_BANNED : { banned: true, retryAfterMs: entry.ttlMs };
}

const DEFAULT_PREFIX = 'ban:';
/** Store key prefix of active bans (default prefix): read on every request of a route with bans. */
export const ACTIVE_BAN_KEY_PREFIX = `${DEFAULT_PREFIX}on:`;

export class BanList {
  readonly #store: Store;
  readonly #now: () => number;
  readonly #prefix: string;
  readonly #maxTracked: number;
  /** clientKey → ban end (own clock), for the gauge only. */
  readonly #issued = new Map<string, number>();

  constructor(options: BanListOptions) {
    this.#store = options.store;
    this.#now = options.now ?? Date.now;
    this.#prefix = options.prefix ?? DEFAULT_PREFIX;
    this.#maxTracked = options.maxTracked ?? 100_000;
  }

  /**
   * Counts one authentication failure (a 401) of `clientKey`. `rules: null` (bans off for the
   * route) records nothing.
   */
  async recordAuthFailure(clientKey: string, rules: BanRules | null): Promise<AuthFailureResult> {
    if (rules === null) return { banned: false, failures: 0, overLimit: false };
    assertRules(rules);
    const { count } = await this.#store.incr(this.#failKey(clientKey), rules.windowMs);
    if (count < rules.authFailures) {
      // Counting restarts at a ban (below): a failure counted after it was still over the limit.
      return { banned: false, failures: count, overLimit: (await this.check(clientKey)).banned };
    }
    // At or over the threshold: ban, unless a ban holds. `setIfAbsent` is atomic in the shared
    // store, so of failures recorded at once (a burst over several workers) exactly one bans —
    // one `banned` event, the ban's end not moved — and if the failure that reached the threshold
    // could not set it (its store call timed out), the next one does.
    if (!(await this.#issue(clientKey, rules))) return { banned: false, failures: count, overLimit: true };
    return { banned: true, failures: count, retryAfterMs: rules.durationMs, overLimit: count > rules.authFailures };
  }

  /**
   * Read after a token's verification succeeds on a route with bans: whether `clientKey` is
   * banned — or has used up its failures in the window, in which case the ban is written now
   * (`issued`: by this call; log it). With workers the failure that reached the threshold writes
   * the ban one round trip after its count, and a right guess finishing inside a burst of wrong
   * ones must not slip through that gap. Answered synchronously by a local store when no ban is
   * due.
   */
  checkAfterVerification(clientKey: string, rules: BanRules): VerifiedBanStatus | Promise<VerifiedBanStatus> {
    const failKey = this.#failKey(clientKey);
    const usedUp = (entry: StoredValue | null): boolean => entry !== null && Number(entry.value) >= rules.authFailures;
    const known = this.#store.peek?.(failKey);
    if (known !== undefined) return usedUp(known) ? this.#banNow(clientKey, rules) : this.check(clientKey);
    return this.#store.get(failKey).then((entry) => (usedUp(entry) ? this.#banNow(clientKey, rules) : this.check(clientKey)));
  }

  /** Writes the ban unless one holds; `issued` when this call wrote it. */
  async #banNow(clientKey: string, rules: BanRules): Promise<VerifiedBanStatus> {
    return (await this.#issue(clientKey, rules)) ? { banned: true, retryAfterMs: rules.durationMs, issued: true } : this.check(clientKey);
  }

  /** Sets the ban unless one holds (true: this call set it), and starts the count afresh. */
  async #issue(clientKey: string, rules: BanRules): Promise<boolean> {
    if (!(await this.#store.setIfAbsent(this.#banKey(clientKey), '1', rules.durationMs))) return false;
    // Start from zero after the ban instead of being re-banned by the next single failure.
    await this.#store.delete(this.#failKey(clientKey));
    this.#track(clientKey, this.#now() + rules.durationMs);
    return true;
  }

  /** Whether `clientKey` is banned now, and for how much longer (milliseconds). */
  async isBanned(clientKey: string): Promise<BanStatus> {
    return this.check(clientKey);
  }

  /**
   * `isBanned`, answered synchronously when the store knows the answer locally (`Store.peek`):
   * read on every request of a route with bans, so the common answer costs no promise.
   */
  check(clientKey: string): BanStatus | Promise<BanStatus> {
    const key = this.#banKey(clientKey);
    const known = this.#store.peek?.(key);
    if (known !== undefined) return banStatus(known);
    return this.#store.get(key).then(banStatus);
  }

  /** Lifts a ban (and forgets the failures) of `clientKey`. */
  async unban(clientKey: string): Promise<void> {
    await this.#store.delete(this.#banKey(clientKey));
    await this.#store.delete(this.#failKey(clientKey));
    this.#issued.delete(clientKey);
  }

  /** Approximate number of bans in force (see the module comment). */
  activeBans(): number {
    const now = this.#now();
    for (const [key, until] of this.#issued) {
      if (until <= now) this.#issued.delete(key);
    }
    return this.#issued.size;
  }

  #track(clientKey: string, until: number): void {
    this.#issued.delete(clientKey);
    if (this.#issued.size >= this.#maxTracked) {
      this.activeBans();
      const oldest = this.#issued.keys().next();
      if (!oldest.done && this.#issued.size >= this.#maxTracked) this.#issued.delete(oldest.value);
    }
    this.#issued.set(clientKey, until);
  }

  #failKey(clientKey: string): string {
    return `${this.#prefix}fail:${clientKey}`;
  }

  #banKey(clientKey: string): string {
    return `${this.#prefix}on:${clientKey}`;
  }
}
