// Shared runner of the micro-benchmarks: tinybench over functions imported from the BUILT dist/.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';

const here = dirname(fileURLToPath(import.meta.url));
export const DIST = join(here, '..', '..', 'dist');

/** Imports a module of the built gateway, e.g. `dist('policy/index.js')`. */
export async function dist(rel) {
  const file = join(DIST, rel);
  if (!existsSync(file)) throw new Error(`${file} is missing: run \`npm run build\` in the repository root first`);
  return import(pathToFileURL(file).href);
}

/** `--quick` (or BENCH_QUICK=1) shortens every task to a smoke-sized run. */
export const QUICK = process.argv.includes('--quick') || process.env.BENCH_QUICK === '1';

export function newBench(name) {
  return new Bench({ name, time: QUICK ? 50 : 500, warmupTime: QUICK ? 10 : 100 });
}

/** Rows { suite, task, opsPerSec, meanNs, p99Ns, samples } of a finished bench. */
export function rowsOf(bench) {
  return bench.tasks.map((t) => {
    const r = t.result;
    if (!r || r.state === 'errored' || r.error) throw new Error(`${bench.name} / ${t.name}: ${r?.error?.message ?? 'no result'}`);
    return {
      suite: bench.name,
      task: t.name,
      opsPerSec: Math.round(r.throughput.mean),
      meanNs: Math.round(r.latency.mean * 1e6),
      p99Ns: Math.round(r.latency.p99 * 1e6),
      samples: r.latency.samplesCount,
    };
  });
}

/** Runs a bench; when the file is the entry point, prints its table. */
export async function runSuite(bench, entryUrl) {
  await bench.run();
  const rows = rowsOf(bench);
  if (entryUrl === pathToFileURL(process.argv[1]).href) {
    if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    else console.table(rows);
  }
  return rows;
}
