/**
 * The main log's lines, collected for a few milliseconds and handed to sonic-boom as one write.
 *
 * sonic-boom (pino's asynchronous file destination) starts one `fs.write` per line when no write
 * is in flight: a thread-pool job, its completion on the event loop, and a `Buffer.from` copy of
 * what was written. Lines that arrive while a write is in flight are appended to one string whose
 * UTF-8 length it measures again for every line, which flattens the whole pending string each
 * time. Under load the access line (one per request) made this the largest single cost of the
 * full pipeline's log (BENCHMARKS.md, session 7).
 *
 * Lines wait here at most {@link LOG_WINDOW_MS} (or until {@link MAX_BATCH_CHARS} wait) and are
 * then handed over together, in order. The window is not the end of the event-loop turn, which
 * is what this did until session 20: at low load a turn holds one request, so each access line
 * still cost its own thread-pool round trip, which woke the event loop once more per request.
 * With the window, one gateway on one core at one connection used 11–24 % less CPU per request
 * (medians of three runs), and was ahead in 21 of 22 rounds (BENCHMARKS.md, session 20). What
 * a window costs: a line reaches the file up to 10 ms later, and a killed process (SIGKILL, the
 * OOM killer) loses at most those 10 ms of lines.
 *
 * The lines are handed over as one UTF-8 `Buffer` (sonic-boom's `contentMode: 'buffer'`).
 * Given strings, sonic-boom measures the UTF-8 length of its whole pending string again on every
 * write while one is in flight (flattening it each time), has `fs.write` encode it, and copies it
 * into a new Buffer again when the write completes. Given Buffers, it adds lengths and concatenates
 * once: in a micro-benchmark with two lines per batch, 2.7 instead of 4.5 µs per line
 * (BENCHMARKS.md, session 11).
 *
 * A process that exits while lines wait (`process.exit()`, an uncaught exception, the event loop
 * running dry: the window's timer does not keep a process alive) still writes them: the `exit`
 * listener hands them over and flushes synchronously, as pino does for its own destinations.
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
const waiting = new Set<LogBatchDestination>();
let exitHookInstalled = false;

function flushAllOnExit(): void {
  for (const batch of waiting) batch.flushSync();
}

/** How long the first line of a batch waits for others, at most. */
export const LOG_WINDOW_MS = 10;

/**
 * A batch this long (in UTF-16 code units) is handed over at once, without waiting for the rest of
 * its window: it bounds what a batch holds and what one write carries under heavy load (a few
 * workers' worth of access lines, ~30 000 a second, would fill ~100 KB in one window).
 */
export const MAX_BATCH_CHARS = 64 * 1024;

export class LogBatchDestination implements DestinationStream {
  readonly sink: LineSink;
  readonly #windowMs: number;
  #pending = '';
  #timer: NodeJS.Timeout | null = null;

  constructor(sink: LineSink, windowMs = LOG_WINDOW_MS) {
    this.sink = sink;
    this.#windowMs = windowMs;
  }

  write(line: string): boolean {
    this.#pending += line;
    if (this.#pending.length >= MAX_BATCH_CHARS) {
      this.#handOver();
    } else if (this.#timer === null) {
      waiting.add(this);
      if (!exitHookInstalled) {
        exitHookInstalled = true;
        process.on('exit', flushAllOnExit);
      }
      this.#timer = setTimeout(this.#windowEnded, this.#windowMs).unref();
    }
    return true;
  }

  readonly #windowEnded = (): void => {
    this.#timer = null;
    this.#handOver();
  };

  /** Gives what waits to the sink; a destroyed sink (closed at shutdown) drops it, as pino would. */
  #handOver(): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
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
