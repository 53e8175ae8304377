import type { Logger } from '../observability/logging.js';

/**
 * The process's changes to what it serves — reloads, certificate renewals, a late worker's
 * catch-up — run one at a time, in the order they were asked for, so that none of them
 * interleaves with another.
 *
 * A chain of `promise.then(...)` does that until one link rejects: every later link is then
 * skipped (no reload or renewal ever runs again, silently) and the last rejection is unhandled,
 * which ends the process. Here each task's failure stays with that task.
 */
export interface TaskQueue {
  /** Runs `task` after every task queued before it; settles as it does (the caller handles a failure). */
  run<T>(task: () => Promise<T>): Promise<T>;
  /** Runs `task` in turn, for a caller that does not wait: a failure is logged with `what`. */
  push(what: string, task: () => Promise<void>): void;
}

export function createTaskQueue(logger: Pick<Logger, 'error'>): TaskQueue {
  let tail: Promise<unknown> = Promise.resolve();
  const run = <T>(task: () => Promise<T>): Promise<T> => {
    const result = tail.then(task);
    tail = result.catch(() => undefined);
    return result;
  };
  return {
    run,
    push(what, task) {
      run(task).catch((err: unknown) => {
        logger.error({ task: what, err }, `${what} failed; the next change in the queue still runs`);
      });
    },
  };
}
