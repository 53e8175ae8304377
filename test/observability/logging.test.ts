// The main logger's line format: the cached timestamp is pino's isoTime, millisecond for millisecond.
import t from 'tap';
import pino from 'pino';
import { Writable } from 'node:stream';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, isoTimeCached, LOG_FLUSH_MS, redactUrl } from '../../src/observability/logging.js';

t.test('isoTimeCached gives what pino.stdTimeFunctions.isoTime gives, for every millisecond', async (t) => {
  const realNow = Date.now;
  t.teardown(() => {
    Date.now = realNow;
  });
  // Same millisecond twice, the next one, a jump back (clock stepped), and a far one.
  for (const ms of [1_764_979_930_123, 1_764_979_930_123, 1_764_979_930_124, 1_764_979_929_000, 4_102_444_800_000]) {
    Date.now = () => ms;
    t.equal(isoTimeCached(), pino.stdTimeFunctions.isoTime(), `at ${ms}`);
  }
});

t.test('log lines carry an ISO time and redact credentials', async (t) => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const logger = createLogger({ level: 'info', file: null }, sink);
  logger.info({ headers: { authorization: 'Bearer SECRET' }, path: redactUrl('/cb?code=SECRET&x=1') }, 'hello');
  const line = JSON.parse(lines[0]!) as { time: string; headers: { authorization: string }; path: string };
  t.match(line.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  t.ok(Math.abs(Date.parse(line.time) - Date.now()) < 5_000, 'the time is now');
  t.equal(line.headers.authorization, '[REDACTED]');
  t.equal(line.path, '/cb?code=[REDACTED]&x=1');
  t.notMatch(lines[0]!, /SECRET/);
});

t.test('log.buffer reaches the destination as batching settings; 0 writes each line at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-log-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const streamOf = (l: pino.Logger) => (l as unknown as Record<symbol, { minLength: number; _periodicFlush: number }>)[pino.symbols.streamSym]!;
  const buffered = createLogger({ level: 'info', file: join(dir, 'a.log'), buffer: 8192 });
  t.equal(streamOf(buffered).minLength, 8192);
  t.equal(streamOf(buffered)._periodicFlush, LOG_FLUSH_MS);
  const direct = createLogger({ level: 'info', file: join(dir, 'b.log'), buffer: 0 });
  t.equal(streamOf(direct).minLength, 0);
  t.equal(streamOf(direct)._periodicFlush, 0);
  buffered.info('one line');
  await new Promise<void>((r) => buffered.flush(() => r()));
  t.match(readFileSync(join(dir, 'a.log'), 'utf8'), /one line/, 'flush() writes what waits');
});
