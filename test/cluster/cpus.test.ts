// `workers: auto` counts the CPUs the process may really use: the schedulable CPUs, capped by the
// cgroup CPU quota (docker run --cpus, Kubernetes limits), v2 and v1 layouts.
import t from 'tap';
import { availableParallelism } from 'node:os';
import { cgroupCpuQuota, usableCpus, type ReadText } from '../../src/cluster/cpus.js';
import { parseConfig } from '../../src/config/index.js';

const fs = (files: Record<string, string>): ReadText => (path) => files[path] ?? null;
const V2 = '/sys/fs/cgroup/cpu.max';
const V1Q = '/sys/fs/cgroup/cpu/cpu.cfs_quota_us';
const V1P = '/sys/fs/cgroup/cpu/cpu.cfs_period_us';

t.test('cgroup v2 cpu.max', async (t) => {
  t.equal(cgroupCpuQuota(fs({ [V2]: 'max 100000\n' })), null, 'max: no quota');
  t.equal(cgroupCpuQuota(fs({ [V2]: '200000 100000\n' })), 2);
  t.equal(cgroupCpuQuota(fs({ [V2]: '150000 100000\n' })), 1.5);
  t.equal(cgroupCpuQuota(fs({ [V2]: '50000 100000' })), 0.5);
  t.equal(cgroupCpuQuota(fs({ [V2]: 'garbage' })), null, 'unreadable content: no quota, not a crash');
  t.equal(cgroupCpuQuota(fs({ [V2]: '0 100000' })), null);
  t.equal(cgroupCpuQuota(fs({ [V2]: 'max 100000', [V1Q]: '100000', [V1P]: '100000' })), null, 'v2 wins when present');
});

t.test('cgroup v1 cfs quota and period', async (t) => {
  t.equal(cgroupCpuQuota(fs({ [V1Q]: '-1\n', [V1P]: '100000\n' })), null, '-1: no quota');
  t.equal(cgroupCpuQuota(fs({ [V1Q]: '300000\n', [V1P]: '100000\n' })), 3);
  t.equal(cgroupCpuQuota(fs({ [V1Q]: '300000\n' })), null, 'no period: no quota');
  t.equal(cgroupCpuQuota(fs({})), null, 'no cgroup files at all (not Linux): no quota');
});

t.test('usable CPUs: schedulable CPUs capped by the quota rounded up, at least 1', async (t) => {
  t.equal(usableCpus(fs({}), 32), 32, 'no quota: every schedulable CPU');
  t.equal(usableCpus(fs({ [V2]: '200000 100000' }), 32), 2, 'docker run --cpus=2 on 32 cores: 2');
  t.equal(usableCpus(fs({ [V2]: '150000 100000' }), 32), 2, '--cpus=1.5: 2 processes');
  t.equal(usableCpus(fs({ [V2]: '10000 100000' }), 32), 1, '--cpus=0.1: 1');
  t.equal(usableCpus(fs({ [V2]: '800000 100000' }), 4), 4, 'a quota above the CPU count changes nothing');
  const here = usableCpus();
  t.ok(here >= 1 && here <= availableParallelism(), `this machine: ${here}`);
});

t.test('workers: auto in the configuration uses it', async (t) => {
  const text = 'workers: auto\nsites:\n  - hosts: [app.test]\n    upstream: http://127.0.0.1:9\n';
  t.equal(parseConfig(text, '/etc/portcullis/gateway.yml', {}).config.workers, Math.min(usableCpus(), 64));
});
