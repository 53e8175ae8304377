/**
 * Upstream target selection: round robin over a route's targets, skipping targets that recently
 * failed to connect (passive health). When every target is marked down, all are tried again —
 * a gateway that refuses to even try is worse than one that tries a target that may be back.
 */
import type { UpstreamTarget } from '../config/types.js';

/** How long a target that refused a connection is skipped. */
export const DEFAULT_DOWN_MS = 5_000;

export class UpstreamPool {
  readonly targets: readonly UpstreamTarget[];
  private next = 0;
  private readonly downUntil: number[];

  constructor(targets: readonly UpstreamTarget[], private readonly now: () => number = Date.now, private readonly downMs = DEFAULT_DOWN_MS) {
    if (targets.length === 0) throw new TypeError('an upstream pool needs at least one target');
    this.targets = targets;
    this.downUntil = targets.map(() => 0);
  }

  /** Index of the target to try first for a new request. */
  pick(): number {
    const n = this.targets.length;
    if (n === 1) return 0;
    const t = this.now();
    for (let i = 0; i < n; i++) {
      const idx = (this.next + i) % n;
      if (this.downUntil[idx]! <= t) {
        this.next = (idx + 1) % n;
        return idx;
      }
    }
    const idx = this.next;
    this.next = (idx + 1) % n;
    return idx;
  }

  /** The target to try after `tried` (indices already attempted), or -1 when all were tried. */
  after(tried: readonly number[]): number {
    const n = this.targets.length;
    const t = this.now();
    let fallback = -1;
    for (let i = 1; i <= n; i++) {
      const idx = (tried[tried.length - 1]! + i) % n;
      if (tried.includes(idx)) continue;
      if (this.downUntil[idx]! <= t) return idx;
      if (fallback === -1) fallback = idx;
    }
    return fallback;
  }

  markDown(idx: number): void {
    this.downUntil[idx] = this.now() + this.downMs;
  }

  markUp(idx: number): void {
    this.downUntil[idx] = 0;
  }

  isDown(idx: number): boolean {
    return this.downUntil[idx]! > this.now();
  }
}
