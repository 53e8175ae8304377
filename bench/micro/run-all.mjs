// All micro-benchmarks, one table: `node bench/micro/run-all.mjs [--quick] [--json]`.
import { rowsOf } from './common.mjs';

const suites = ['./path.mjs', './routes.mjs', './protect.mjs'];
const rows = [];
for (const s of suites) {
  const { bench } = await import(s);
  await bench.run();
  rows.push(...rowsOf(bench));
}
if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify({ node: process.version, rows }, null, 2)}\n`);
else console.table(rows);
