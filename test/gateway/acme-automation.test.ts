// The gateway's certificate automation (src/server/acme.ts) around its lazily loaded manager: a
// stop() that comes while start() still waits for the manager's module wins, and a start that
// failed leaves the configuration to be tried again. This file must not import the manager
// itself: the first import has to be the automation's, or there is nothing to wait for.
import t from 'tap';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigFile } from '../../src/config/index.js';
import { createCertificateAutomation } from '../../src/server/acme.js';
import { CertificateStore } from '../../src/tls/index.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { createSecurityEvents } from '../../src/observability/events.js';
import { memoryLogger, type LogRecord } from '../helpers/gateway.js';

async function setup(t: { teardown(fn: () => unknown): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-acme-auto-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'gateway.yml');
  // A CA nobody answers for: a started manager would log its first order's failure.
  writeFileSync(path, `listen: { https: 127.0.0.1:0, http: 127.0.0.1:0 }
tls:
  acme: { email: ops@app.test, directory: 'https://127.0.0.1:1/dir', challenge: http-01 }
sites:
  - hosts: [app.test]
    upstream: http://127.0.0.1:1
    routes: [{ path: /, access: public }]
`);
  const { config } = await loadConfigFile(path, {});
  const logs: LogRecord[] = [];
  const logger = memoryLogger(logs);
  const automation = createCertificateAutomation({
    certificates: new CertificateStore({ minVersion: 'TLSv1.2' }),
    logger,
    metrics: createMetrics({ version: 'test' }),
    events: createSecurityEvents(logger),
    tuning: { checkInterval: 60_000, backoffMin: 60_000, backoffMax: 60_000 },
  });
  return { config, logs, automation };
}

t.test('a stop() while start() waits for the manager module: no manager is left running', async (t) => {
  const { config, logs, automation } = await setup(t);
  const started = automation.start(config);
  await automation.stop();
  await started;
  await new Promise((r) => setTimeout(r, 500));
  t.same(logs.filter((l) => l.component === 'acme' || /order|account|acme/i.test(String(l.msg))), [], 'the manager never started');
});

t.test('a start that failed is tried again by a reload with the same configuration', async (t) => {
  const { config } = await setup(t);
  let starts = 0;
  const fake = {
    createAcmeManager: () => ({
      start: async () => {
        starts++;
        if (starts === 1) throw new Error('the manager could not start');
      },
      stop: async () => undefined,
    }),
  };
  const { createCertificateAutomation: create } = await t.mockImport<typeof import('../../src/server/acme.js')>('../../src/server/acme.js', {
    '../../src/acme/manager.ts': fake,
  });
  const logger = memoryLogger([]);
  const automation = create({
    certificates: new CertificateStore({ minVersion: 'TLSv1.2' }),
    logger,
    metrics: createMetrics({ version: 'test' }),
    events: createSecurityEvents(logger),
  });
  await t.rejects(automation.start(config), /could not start/);
  await automation.reload(config);
  t.equal(starts, 2, 'the reload started the manager again (the failed start did not count as current)');
  await automation.reload(config);
  t.equal(starts, 2, 'and a reload once it runs changes nothing');
  await automation.stop();
});
