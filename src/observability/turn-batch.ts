/**
 * The main log's lines, handed to sonic-boom once per event-loop turn instead of once per line.
 *
 * sonic-boom (pino's asynchronous file destination) starts one `fs.write` per line when no write
 * is in flight: a thread-pool job, its completion on the event loop, and a `Buffer.from` copy of
 * what was written. Lines that arrive while a write is in flight are appended to one string whose
 * UTF-8 length it measures again for every line, which flattens the whole pending string each
 * time. Under load the access line (one per request) made this the largest single cost of the
 * full pipeline's log (BENCHMARKS.md, session 7). Collected here and handed over at the end of the
 * turn (`setImmediate`), a turn's lines cost one write, and reach the file before the event loop
 * waits for anything else: nothing is delayed by a timer, and the order of lines is kept.
 *
 * The turn's lines are handed over as one UTF-8 `Buffer` (sonic-boom's `contentMode: 'buffer'`).
 * Given strings, sonic-boom measures the UTF-8 length of its whole pending string again on every
 * write while one is in flight (flattening it each time), has `fs.write` encode it, and copies it
 * into a new Buffer again when the write completes. Given Buffers, it adds lengths and concatenates
 * once: in a micro-benchmark with two lines per turn, 2.7 instead of 4.5 µs per line, and no longer
 * more with `log.buffer` than without (BENCHMARKS.md, session 11; end to end, within the noise).
 *
 * A process that exits in the turn that logged (`process.exit()`, an uncaught exception) still
 * writes what waits here: the `exit` listener hands it over and flushes synchronously, as pino
 * does for its own destinations.
 */
import type { DestinationStream } from 'pino';

/** The part of sonic-boom (in `contentMode: 'buffer'`) this wrapper uses. */
export interface LineSink {
  write(data: Buffer): boolean;
  flush?(cb?: (err?: Error) => void): void;
  flushSync?(): void;
  end?(): void;
  readonly destroyed?: boolean;
}

// Only batches holding lines are here, so a batch that is no longer used is never kept alive.
const waiting = new Set<TurnBatchedDestination>();
let exitHookInstalled = false;

function flushAllOnExit(): void {
  for (const batch of waiting) batch.flushSync();
}

export class TurnBatchedDestination implements DestinationStream {
  readonly sink: LineSink;
  #pending = '';
  #scheduled = false;

  constructor(sink: LineSink) {
    this.sink = sink;
  }

  write(line: string): boolean {
    this.#pending += line;
    if (!this.#scheduled) {
      this.#scheduled = true;
      waiting.add(this);
      if (!exitHookInstalled) {
        exitHookInstalled = true;
        process.on('exit', flushAllOnExit);
      }
      setImmediate(this.#endOfTurn);
    }
    return true;
  }

  readonly #endOfTurn = (): void => {
    this.#handOver();
  };

  /** Gives what waits to the sink; a destroyed sink (closed at shutdown) drops it, as pino would. */
  #handOver(): void {
    this.#scheduled = false;
    waiting.delete(this);
    const lines = this.#pending;
    if (lines === '') return;
    this.#pending = '';
    if (this.sink.destroyed === true) return;
    this.sink.write(Buffer.from(lines, 'utf8'));
  }

  /** pino's `logger.flush(cb)`: what waits here, then the sink's own buffer. */
  flush(cb?: (err?: Error) => void): void {
    this.#handOver();
    if (this.sink.flush) this.sink.flush(cb);
    else cb?.();
  }

  flushSync(): void {
    this.#handOver();
    try {
      this.sink.flushSync?.();
    } catch {
      // sonic-boom refuses while its file is still opening or after it was closed: nothing to save.
    }
  }

  end(): void {
    this.#handOver();
    this.sink.end?.();
  }
}
