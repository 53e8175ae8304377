// Linux /proc views of processes the tests start (cluster workers, the CLI).
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

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

/** The regular files a process holds open under `dir`, sorted. */
export function openFilesUnder(pid: number, dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (target.startsWith(dir)) out.push(target);
    } catch {
      // closed while listing
    }
  }
  return out.sort();
}

/** Whether `pid` is a node:cluster worker already (exec'd: cluster gives a worker NODE_UNIQUE_ID). */
function execed(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').some((v) => v.startsWith('NODE_UNIQUE_ID='));
  } catch {
    return false;
  }
}

/**
 * Stops (SIGSTOP) the cluster worker `pid` as soon as it holds `file` open; resolves with the
 * function that lets it go on (SIGCONT; calling it again does nothing), or null if it did not
 * open the file within `ms`. Only once the worker runs its own code: between fork and exec the
 * child holds a copy of the primary's descriptors, and a child stopped there freezes the primary,
 * whose spawn waits for the exec (libuv).
 */
export async function holdWhenOpened(pid: number, file: string, ms = 10_000): Promise<(() => void) | null> {
  const deadline = Date.now() + ms;
  const dir = file.slice(0, file.lastIndexOf('/'));
  while (Date.now() < deadline) {
    let open: boolean;
    try {
      open = execed(pid) && openFilesUnder(pid, dir).includes(file);
    } catch {
      return null; // gone
    }
    if (open) {
      process.kill(pid, 'SIGSTOP');
      let held = true;
      return () => {
        if (held) process.kill(pid, 'SIGCONT');
        held = false;
      };
    }
    await new Promise((r) => setImmediate(r));
  }
  return null;
}
