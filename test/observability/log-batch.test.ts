// The main log hands sonic-boom the lines of a short window (LOG_WINDOW_MS) as one write, in order,
// at once when a batch grows past MAX_BATCH_CHARS, and loses none of them when the process exits
// (or runs out of work) while they wait.
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LOG_WINDOW_MS, LogBatchDestination, MAX_BATCH_CHARS, type LineSink } from '../../src/observability/log-batch.js';

function recordingSink(): LineSink & { writes: string[]; flushed: number; flushedSync: number; ended: number; destroyed: boolean } {
  return {
    writes: [],
    flushed: 0,
    flushedSync: 0,
    ended: 0,
    destroyed: false,
    write(data: Buffer) {
      if (!Buffer.isBuffer(data)) throw new TypeError('the sink is handed bytes, not strings');
      this.writes.push(data.toString('utf8'));
      return true;
    },
    flush(cb?: (err?: Error) => void) {
      this.flushed++;
      cb?.();
    },
    flushSync() {
      this.flushedSync++;
    },
    end() {
      this.ended++;
    },
  };
}

const endOfTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
// Timers fire late on a loaded machine, never early: a sleep armed after the window's timer and
// longer than it ends after it. So the tests below need no margin for a slow machine, except that
// "not yet" is asserted only with a window no machine overruns.
const windowEnd = (): Promise<void> => sleep(LOG_WINDOW_MS + 1);
const LONG_WINDOW = 600_000;

t.test("a window's lines, over several turns, reach the sink as one write, in order, once the window ends", async (t) => {
  const sink = recordingSink();
  const dest = new LogBatchDestination(sink, LONG_WINDOW);
  dest.write('a\n');
  dest.write('b\n');
  await endOfTurn();
  dest.write('c\n');
  await endOfTurn();
  t.same(sink.writes, [], 'nothing is written at the end of a turn: the window is still open');
  dest.flush();
  t.same(sink.writes, ['a\nb\nc\n']);

  const timed = recordingSink();
  const windowed = new LogBatchDestination(timed); // the gateway's window
  windowed.write('a\n');
  windowed.write('b\n');
  await windowEnd();
  t.same(timed.writes, ['a\nb\n'], 'the window ends by itself');
  windowed.write('d\n');
  t.same(timed.writes, ['a\nb\n'], 'a line after a window opens the next one');
  await windowEnd();
  t.same(timed.writes, ['a\nb\n', 'd\n'], "the next window's lines are the next write");
  await windowEnd();
  t.equal(timed.writes.length, 2, 'a window without lines writes nothing');
});

t.test('a batch that reaches MAX_BATCH_CHARS is handed over at once, its window closed with it', async (t) => {
  const sink = recordingSink();
  const dest = new LogBatchDestination(sink, LONG_WINDOW);
  const line = `${'x'.repeat(1023)}\n`;
  const fits = MAX_BATCH_CHARS / line.length - 1;
  for (let i = 0; i < fits; i++) dest.write(line);
  t.same(sink.writes, [], 'one line short of the limit, the batch waits');
  dest.write(line);
  t.equal(sink.writes.length, 1, 'the line that reaches the limit hands the batch over in the same call');
  t.equal(sink.writes[0]!.length, MAX_BATCH_CHARS);
  dest.write('after\n');
  t.equal(sink.writes.length, 1, 'the next line waits for a window of its own');
  dest.write('y'.repeat(MAX_BATCH_CHARS + 10));
  t.equal(sink.writes.length, 2, 'a line that takes a batch past the limit hands it over at once too');
  t.equal(sink.writes[1], `after\n${'y'.repeat(MAX_BATCH_CHARS + 10)}`, 'with what waited before it, in order');
  dest.flush();
  t.equal(sink.writes.length, 2, 'and leaves nothing behind to write again');
});

t.test('the window does not keep the event loop alive', async (t) => {
  const sink = recordingSink();
  const dest = new LogBatchDestination(sink);
  // Timers that keep the loop alive; the window's is unref'd, so a process with nothing else to
  // do exits, and the exit hook (tested below with a real file) writes what waits.
  const loopTimers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = loopTimers();
  dest.write('x\n');
  t.equal(loopTimers(), before, "a waiting batch adds no timer that holds the loop");
  dest.flush();
  t.same(sink.writes, ['x\n']);
});

t.test('flush and flushSync hand over what waits before the sink flushes; end too', async (t) => {
  const sink = recordingSink();
  const dest = new LogBatchDestination(sink);
  dest.write('one\n');
  let called = false;
  dest.flush(() => {
    called = true;
  });
  t.same(sink.writes, ['one\n']);
  t.equal(sink.flushed, 1);
  t.ok(called, "the sink's flush callback is passed on");
  dest.write('two\n');
  dest.flushSync();
  t.same(sink.writes, ['one\n', 'two\n']);
  t.equal(sink.flushedSync, 1);
  dest.write('three\n');
  dest.end();
  t.same(sink.writes, ['one\n', 'two\n', 'three\n']);
  t.equal(sink.ended, 1);
  await windowEnd();
  t.equal(sink.writes.length, 3, 'the end of the window finds nothing left to write');
});

t.test('a sink closed before the end of the window drops the lines instead of throwing', async (t) => {
  const sink = recordingSink();
  let calls = 0;
  sink.write = () => {
    calls++;
    throw new Error('SonicBoom destroyed');
  };
  const dest = new LogBatchDestination(sink);
  dest.write('late\n');
  sink.destroyed = true;
  await windowEnd();
  t.equal(calls, 0, 'the closed sink was not written to (it would have thrown outside any caller)');
});

t.test('a sink that cannot flush synchronously (file still opening) does not break flushSync', async (t) => {
  const sink = recordingSink();
  sink.flushSync = () => {
    throw new Error('sonic boom is not ready yet');
  };
  const dest = new LogBatchDestination(sink);
  dest.write('x\n');
  t.doesNotThrow(() => dest.flushSync());
  t.same(sink.writes, ['x\n']);
});

// The gateway's own logger on a real file: lines written in the turn that exits still reach it.
const LOGGING = fileURLToPath(new URL('../../src/observability/logging.ts', import.meta.url));

function runChild(script: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], { timeout: 20_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? child.exitCode) : 0, stderr });
    });
  });
}

t.test('process.exit(), an uncaught exception and a process out of work, with lines waiting, lose no line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-turn-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [name, ending] of [
    ['exit', 'process.exit(3);'],
    ['throw', "throw new Error('boom');"],
    // Nothing else to do: the process ends by itself while lines wait, and the exit hook writes
    // them (that the window's timer holds no event loop is the test above).
    ['drained', ''],
  ] as const) {
    const file = join(dir, `${name}.log`);
    // Wait until the file is open (a first line written and flushed), then log and leave at once.
    const script = `
      import { createLogger } from ${JSON.stringify(LOGGING)};
      const log = createLogger({ level: 'info', file: ${JSON.stringify(file)} });
      log.info('first');
      await new Promise((r) => log.flush(() => r()));
      await new Promise((r) => setTimeout(r, 50));
      for (let i = 0; i < 100; i++) log.info({ i }, 'last turn');
      ${ending}
    `;
    const r = await runChild(script);
    if (name === 'drained') t.equal(r.code, 0, `${name}: the child ended by itself`);
    else t.not(r.code, 0, `${name}: the child failed as asked`);
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { msg: string; i?: number });
    t.equal(lines.length, 101, `${name}: every line is in the file (${r.stderr.split('\n')[0] ?? ''})`);
    t.same(lines.slice(1).map((l) => l.i), [...Array(100).keys()], `${name}: in order`);
  }
});

t.test('many turns of lines with multi-byte characters reach a file and a stdout pipe whole and in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-turn-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // Lines of every UTF-8 length, written over many turns while earlier writes are still in flight
  // (the bytes are handed to sonic-boom as Buffers: a length counted in characters would cut them).
  const writer = (dest: string, buffer: number) => `
      import { createLogger } from ${JSON.stringify(LOGGING)};
      const log = createLogger({ level: 'info', ${dest} buffer: ${buffer} });
      const words = ['plain', 'café', '日本語', 'emoji \\u{1F600}', 'sep \\u2028 \\u2029', 'x'.repeat(3000)];
      for (let turn = 0; turn < 200; turn++) {
        for (let j = 0; j < 25; j++) { const i = turn * 25 + j; log.info({ i, w: words[i % words.length] }, 'line'); }
        await new Promise((r) => setImmediate(r));
      }
      await new Promise((r) => log.flush(() => r()));
    `;
  const check = (name: string, text: string) => {
    const lines = text.trim().split('\n').map((l) => JSON.parse(l) as { i: number; w: string });
    t.equal(lines.length, 5000, `${name}: every line`);
    const words = ['plain', 'café', '日本語', 'emoji \u{1F600}', 'sep \u2028 \u2029', 'x'.repeat(3000)];
    t.ok(lines.every((l, k) => l.i === k && l.w === words[k % words.length]), `${name}: in order, every character intact`);
  };
  for (const buffer of [0, 8192]) {
    const file = join(dir, `many-${buffer}.log`);
    const r = await runChild(writer(`file: ${JSON.stringify(file)},`, buffer));
    t.equal(r.code, 0, r.stderr);
    check(`file, log.buffer ${buffer}`, readFileSync(file, 'utf8'));
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--import=tsx', '--input-type=module', '-e', writer('', buffer)], { timeout: 30_000, maxBuffer: 64 << 20 }, (err, stdout) =>
        err ? reject(err) : resolve(stdout),
      );
    });
    check(`stdout pipe, log.buffer ${buffer}`, out);
  }
});
