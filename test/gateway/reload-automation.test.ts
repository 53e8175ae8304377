// A reload whose last step, restarting the certificate automation, fails: the new configuration is
// in force already, so the reload is not undone and not reported as refused; the failure is
// logged, the certificates in use keep being served, and the next reload tries the automation
// again. (The cluster primary ends its reloads with the same step: src/server/acme.ts
// restartAutomation.)
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { loadConfigFile } from '../../src/config/index.js';
import { Http01Challenges } from '../../src/acme/http01.js';
import type { CertificateAutomation } from '../../src/server/acme.js';
import type { GatewayConfig } from '../../src/config/types.js';
import { startGateway, startUpstream, until } from '../helpers/gateway.js';
import { appSite as site } from '../helpers/clients.js';

t.test('the automation fails to restart in a reload: the reload stays in force, the failure is logged, the next reload retries', async (t) => {
  const up = await startUpstream(t);
  const reloads: GatewayConfig[] = [];
  const automation: CertificateAutomation = {
    http01: new Http01Challenges(),
    start: async () => undefined,
    stop: async () => undefined,
    reload: async (config) => {
      reloads.push(config);
      if (reloads.length === 1) throw new Error('the ACME manager could not restart');
    },
  };
  const gw = await startGateway(t, site(up.origin), {}, { certificateAutomation: automation });
  t.equal((await gw.request({ path: '/private/a', headers: { host: 'app.test' } })).status, 200, 'before: /private is public');

  writeFileSync(gw.configPath, site(up.origin, '[{ path: /private, access: deny }, { path: /, access: public }]'));
  const first = (await loadConfigFile(gw.configPath, process.env)).config;
  await t.resolves(gw.gw.reload(first), 'the reload is not reported as refused');
  t.equal(reloads.length, 1, 'the automation was asked to restart');
  const denied = await gw.request({ path: '/private/a', headers: { host: 'app.test' } });
  t.equal(denied.status, 403, 'and it is enforced: /private is denied');
  t.equal(up.seen.filter((r) => r.url === '/private/a').length, 1, 'the upstream saw /private only before the reload');
  t.equal((await gw.request({ path: '/', headers: { host: 'app.test' } })).status, 200, 'the certificate in use is still served');
  t.ok(
    await until(() => gw.logs.some((l) => l.level === 'error' && /certificate automation could not be restarted/.test(String(l.msg)))),
    'the failure is logged',
  );
  const line = gw.logs.find((l) => /certificate automation could not be restarted/.test(String(l.msg)))!;
  t.match((line.err as { message: string }).message, /the ACME manager could not restart/, 'with its cause');

  writeFileSync(gw.configPath, site(up.origin, '[{ path: /private, access: deny }, { path: /other, access: deny }, { path: /, access: public }]'));
  const second = (await loadConfigFile(gw.configPath, process.env)).config;
  await gw.gw.reload(second);
  t.equal(reloads.length, 2, 'the next reload asked the automation again');
  t.equal((await gw.request({ path: '/other', headers: { host: 'app.test' } })).status, 403, 'and the next reload is in force too');
  t.equal(gw.logs.filter((l) => /certificate automation could not be restarted/.test(String(l.msg))).length, 1, 'no failure logged for it');
});
