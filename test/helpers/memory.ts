// What this test process (the gateway in it) holds in memory, for tests that bound it.
import v8 from 'node:v8';
import vm from 'node:vm';

// gc() without --expose-gc on the command line: the flag is read when a context is created.
v8.setFlagsFromString('--expose-gc');
/** A full collection before each memory reading, so that garbage does not read as held memory. */
export const gc = vm.runInNewContext('gc') as () => void;

export interface Held {
  rss: number;
  heap: number;
  /** ArrayBuffers (Buffers): request and response bodies. */
  buffers: number;
}

/** Memory held now, after a full collection. */
export function held(): Held {
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed, buffers: m.arrayBuffers };
}

/**
 * What stays held once the gateway had time to let go: the lowest of a few measurements over 3 s,
 * so that garbage of an earlier test, or a release still under way (V8 frees dead ArrayBuffers on
 * a background thread, which lags on a loaded machine), is not counted as held; a leak stays high
 * in every one.
 */
export async function heldSettled(): Promise<Held> {
  let low = held();
  for (let i = 0; i < 12; i++) {
    await new Promise((r) => setTimeout(r, 250));
    const now = held();
    low = { rss: Math.min(low.rss, now.rss), heap: Math.min(low.heap, now.heap), buffers: Math.min(low.buffers, now.buffers) };
  }
  return low;
}
