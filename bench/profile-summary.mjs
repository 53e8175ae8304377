#!/usr/bin/env node
// Summarizes a V8 .cpuprofile (from `node --cpu-prof`, e.g. `bench/run.mjs --cpu-prof DIR`):
// the functions and the files with the largest share of self time.
//   node bench/profile-summary.mjs FILE.cpuprofile [--top 25]
import { readFileSync } from 'node:fs';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: node bench/profile-summary.mjs FILE.cpuprofile [--top N]\n');
  process.exit(2);
}
const topIdx = process.argv.indexOf('--top');
const top = topIdx > 0 ? Number(process.argv[topIdx + 1]) : 25;
const profile = JSON.parse(readFileSync(file, 'utf8'));

// Self time per node = (number of samples hitting it) x (sampling interval); intervals vary, so
// use timeDeltas, attributing each delta to the sample that follows it (V8's own convention).
const selfUs = new Map();
const samples = profile.samples ?? [];
const deltas = profile.timeDeltas ?? [];
for (let i = 0; i < samples.length; i++) selfUs.set(samples[i], (selfUs.get(samples[i]) ?? 0) + (deltas[i] ?? 0));
// Shares are of BUSY time: '(idle)' is the event loop waiting (e.g. while another system of the
// run was under load), which says nothing about where the gateway spends its CPU.
const idleIds = new Set(profile.nodes.filter((n) => n.callFrame.functionName === '(idle)').map((n) => n.id));
const all = [...selfUs.values()].reduce((a, b) => a + b, 0);
const total = [...selfUs.entries()].filter(([id]) => !idleIds.has(id)).reduce((a, [, us]) => a + us, 0) || 1;

const short = (url) => {
  if (!url) return '(native)';
  const s = url.replace(/^file:\/\//, '');
  const nm = s.lastIndexOf('node_modules/');
  if (nm >= 0) return s.slice(nm + 'node_modules/'.length);
  const d = s.indexOf('/dist/');
  return d >= 0 ? s.slice(d + 1) : s;
};

const byFn = new Map();
const byFile = new Map();
const byPackage = new Map();
for (const node of profile.nodes) {
  const us = selfUs.get(node.id) ?? 0;
  if (!us || idleIds.has(node.id)) continue;
  const cf = node.callFrame;
  const where = short(cf.url);
  const fnKey = `${cf.functionName || '(anonymous)'}  ${where}:${cf.lineNumber + 1}`;
  byFn.set(fnKey, (byFn.get(fnKey) ?? 0) + us);
  byFile.set(where, (byFile.get(where) ?? 0) + us);
  const pkg = !cf.url ? (cf.functionName.startsWith('(') ? cf.functionName : '(native)') : cf.url.startsWith('node:') ? 'node core' : where.startsWith('dist/') ? 'portcullis dist/' : where.split('/')[where.startsWith('@') ? 1 : 0].startsWith('@') ? where.split('/').slice(0, 2).join('/') : where.split('/')[0];
  byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us);
}
const print = (title, map, n) => {
  process.stdout.write(`\n## ${title}\n`);
  for (const [k, us] of [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)) {
    process.stdout.write(`${((us / total) * 100).toFixed(1).padStart(5)}%  ${k}\n`);
  }
};
process.stdout.write(`${file}: ${(all / 1e6).toFixed(1)} s of samples, ${(total / 1e6).toFixed(1)} s busy (shares below are of busy time)\n`);
print('self time by package', byPackage, 15);
print('self time by file', byFile, top);
print('self time by function', byFn, top);
