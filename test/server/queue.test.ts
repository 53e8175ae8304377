// The queue that runs reloads, renewals and late workers' catch-ups one at a time
// (src/server/queue.ts): order, no overlap, and a failing task that neither stops the ones after
// it nor ends the process (an unhandled rejection would end this test file too).
import t from 'tap';
import { createTaskQueue } from '../../src/server/queue.js';
import { memoryLogger, until, type LogRecord } from '../helpers/gateway.js';

const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('tasks run one at a time, in the order they were queued', async (t) => {
  const queue = createTaskQueue(memoryLogger([]));
  const trace: string[] = [];
  let running = 0;
  const task = (name: string, ms: number) => async (): Promise<string> => {
    running++;
    t.equal(running, 1, `${name}: nothing else runs meanwhile`);
    trace.push(`${name} start`);
    await tick(ms);
    trace.push(`${name} end`);
    running--;
    return name;
  };
  const a = queue.run(task('a', 30));
  queue.push('b', async () => void (await task('b', 1)()));
  const c = queue.run(task('c', 10));
  t.equal(await a, 'a', 'run() settles with the task result');
  t.equal(await c, 'c');
  t.same(trace, ['a start', 'a end', 'b start', 'b end', 'c start', 'c end']);
});

t.test('a failing task: its caller sees the failure, and the tasks after it still run', async (t) => {
  const logs: LogRecord[] = [];
  const queue = createTaskQueue(memoryLogger(logs));
  const ran: string[] = [];
  const failed = queue.run(async () => {
    await tick(5);
    throw new Error('the renewal failed');
  });
  const after = queue.run(async () => {
    ran.push('after');
    return 1;
  });
  await t.rejects(failed, /the renewal failed/, 'run() rejects for the caller that waits');
  t.equal(await after, 1, 'the next task ran');
  t.same(ran, ['after']);
  await tick(50);
  t.same(logs.filter((l) => l.level === 'error' || l.level === 'fatal'), [], 'run(): the caller handles the failure, nothing logged twice');
});

t.test('push(): a task that fails is logged with what it was, and the queue goes on', async (t) => {
  const logs: LogRecord[] = [];
  const queue = createTaskQueue(memoryLogger(logs));
  const ran: string[] = [];
  queue.push('configuration reload', async () => {
    throw new Error('the ACME manager could not restart');
  });
  queue.push('catching up a worker', async () => {
    ran.push('catch-up');
  });
  // Thrown before its first await: still the task's failure, not the caller's.
  queue.push('second reload', () => {
    throw new Error('thrown at once');
  });
  queue.push('third reload', async () => {
    ran.push('third');
  });
  await queue.run(async () => undefined);
  t.same(ran, ['catch-up', 'third'], 'every task after a failure ran');
  // The logger writes through a stream: its lines arrive a moment later.
  await until(() => logs.filter((l) => l.level === 'error').length >= 2);
  const errors = logs.filter((l) => l.level === 'error');
  t.same(
    errors.map((l) => [l.task, (l.err as { message: string }).message]),
    [
      ['configuration reload', 'the ACME manager could not restart'],
      ['second reload', 'thrown at once'],
    ],
  );
  t.match(errors[0]!.msg, /configuration reload failed; the next change in the queue still runs/);
});

t.test('a task queued after a failed one waits for what was queued before, and runs', async (t) => {
  const queue = createTaskQueue(memoryLogger([]));
  let done = false;
  queue.push('slow', async () => {
    await tick(20);
    done = true;
  });
  queue.run(async () => {
    throw new Error('last one fails');
  }).catch(() => undefined);
  await queue.run(async () => undefined);
  t.ok(done, 'the slow task had finished');
  t.equal(await queue.run(async () => 'ran'), 'ran', 'a task after a failure runs');
});
