// Linux /proc views of processes the tests start (cluster workers, the CLI).
import { readdirSync, readFileSync } from 'node:fs';

/** The child pids of `pid`, whichever of its threads forked them (empty once it is gone). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    try {
      out.push(...readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ').filter((s) => s.trim() !== '').map(Number));
    } catch {
      // the thread is gone
    }
  }
  return out;
}

/** Whether a process exists (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
