/**
 * How many CPUs this process may really use, for `workers: auto`.
 *
 * `os.availableParallelism()` counts the CPUs the process may be scheduled on, but a container
 * started with `docker run --cpus=2` (or a Kubernetes CPU limit) on a 32-core host may run on all
 * 32 while the kernel throttles it to 2 CPUs' worth of time: 32 workers would then share 2 CPUs.
 * The limit is the cgroup's CFS quota: cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"),
 * cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 = none). A container sees its own
 * cgroup at these paths (cgroup namespace / mount namespace).
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** Reads a small text file, or null when it does not exist or cannot be read. */
export type ReadText = (path: string) => string | null;

const V2_MAX = '/sys/fs/cgroup/cpu.max';
const V1_QUOTA = '/sys/fs/cgroup/cpu/cpu.cfs_quota_us';
const V1_PERIOD = '/sys/fs/cgroup/cpu/cpu.cfs_period_us';

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

function positive(text: string | undefined): number | null {
  if (text === undefined || !/^\d+$/.test(text)) return null;
  const n = Number(text);
  return n > 0 ? n : null;
}

/**
 * The CPU quota in CPUs (may be fractional, e.g. 1.5), or null when there is none or it cannot be
 * read. Pure apart from `read`.
 */
export function cgroupCpuQuota(read: ReadText = readText): number | null {
  const v2 = read(V2_MAX);
  if (v2 !== null) {
    const [quota, period] = v2.trim().split(/\s+/);
    const q = positive(quota);
    const p = positive(period);
    return q !== null && p !== null ? q / p : null; // "max …": no quota
  }
  const q = positive(read(V1_QUOTA)?.trim()); // "-1": no quota
  const p = positive(read(V1_PERIOD)?.trim());
  return q !== null && p !== null ? q / p : null;
}

/**
 * CPUs available to this process: the schedulable CPUs, capped by the cgroup quota rounded up
 * (a 1.5-CPU quota is worth two processes), never less than 1.
 */
export function usableCpus(read: ReadText = readText, schedulable: number = availableParallelism()): number {
  const quota = cgroupCpuQuota(read);
  const n = quota === null ? schedulable : Math.min(schedulable, Math.ceil(quota));
  return Math.max(1, n);
}
