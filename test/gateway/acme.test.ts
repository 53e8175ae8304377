// ACME through the running gateway against a real Pebble: HTTP-01 answered by the gateway's HTTP
// listener, TLS-ALPN-01 by its HTTPS listener (the TLS front), certificates installed into the live
// listener without a restart, and reused from storage after a restart without a new order.
import t from 'tap';
import tls from 'node:tls';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startPebble } from '../helpers/pebble-harness.mjs';
import { loadConfigFile } from '../../src/config/index.js';
import { buildGateway } from '../../src/gateway.js';
import { prepareCertificates } from '../../src/server/certificates.js';
import { memoryLogger, startUpstream, tlsPeer, type LogRecord } from '../helpers/gateway.js';
import { requireBinary } from '../helpers/requires.js';

requireBinary(t, '/usr/bin/pebble', 'pebble');

const work = mkdtempSync(join(tmpdir(), 'gw-acme-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

async function waitAuthorized(port: number, host: string, ca: string, ms = 40_000): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if ((await tlsPeer(port, host, ca)).authorized) return true;
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

async function gatewayWith(yaml: string, logs: LogRecord[], acmeTuning?: Parameters<typeof buildGateway>[0]['acme']) {
  const file = join(work, `gw-${Math.random().toString(36).slice(2)}.yml`);
  writeFileSync(file, yaml);
  const { config } = await loadConfigFile(file);
  const logger = memoryLogger(logs);
  const certificates = await prepareCertificates(config, logger);
  const gw = await buildGateway({ config, logger, certificates, acme: acmeTuning });
  await gw.listen();
  return gw;
}

for (const challenge of ['http-01', 'tls-alpn-01'] as const) {
  await t.test(`${challenge}: certificates ordered, served live, reused after restart`, async (t) => {
    const httpPort = await freePort();
    const httpsPort = await freePort();
    const pebble = await startPebble({ httpPort, tlsPort: httpsPort });
    t.teardown(() => pebble.stop());
    const root = await pebble.getRootPem();
    const caBundle = join(work, `pebble-ca-${challenge}.pem`);
    writeFileSync(caBundle, pebble.listenerCaPem);
    const storage = join(work, `storage-${challenge}`);
    const up = await startUpstream(t);
    const yaml = `listen: { https: 127.0.0.1:${httpsPort}, http: 127.0.0.1:${httpPort}, admin: null }
tls:
  storage: ${storage}
  acme: { email: ops@app.test, directory: ${pebble.directoryUrl}, challenge: ${challenge}, ca_bundle: ${caBundle} }
sites:
  - id: app
    hosts: [app.test, www.app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
  - id: api
    hosts: [api.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`;
    const logs: LogRecord[] = [];
    const gw = await gatewayWith(yaml, logs);
    t.notOk(gw.ready().ready, 'not ready before certificates exist');
    for (const host of ['app.test', 'www.app.test', 'api.test']) {
      t.ok(await waitAuthorized(httpsPort, host, root), `${host}: a certificate chaining to Pebble's root is served by the running listener`);
    }
    // The event follows the install (storage is written in between).
    for (let i = 0; i < 100 && logs.filter((l) => l.event === 'cert_issued').length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    const issued = logs.filter((l) => l.event === 'cert_issued');
    t.equal(issued.length, 2, 'one order per site');
    t.ok(gw.ready().ready, 'ready once every host has a certificate');
    const metrics = await gw.metrics.metrics();
    t.match(metrics, /portcullis_acme_orders_total\{result="success"\} 2/);
    t.match(metrics, /portcullis_tls_certificate_expiry_timestamp_seconds\{host="api.test"\} \d+/);
    if (challenge === 'http-01') {
      t.ok(logs.some((l) => l.listener === 'http' && l.reason === 'acme_http01' && l.status === 200), 'HTTP-01 answered by the HTTP listener');
    }
    await gw.close(1000);

    // Restart on the same storage: served at once, no new order.
    const logs2: LogRecord[] = [];
    const gw2 = await gatewayWith(yaml, logs2);
    t.teardown(() => gw2.close(1000));
    const first = await tlsPeer(httpsPort, 'app.test', root);
    t.ok(first.authorized, 'the stored certificate is served immediately after a restart');
    t.equal(logs2.filter((l) => l.event === 'cert_issued').length, 0, 'no new order');
  });
}

await t.test('renewal replaces the certificate served by a running gateway, without a restart', async (t) => {
  const httpPort = await freePort();
  const httpsPort = await freePort();
  const pebble = await startPebble({ httpPort, tlsPort: httpsPort });
  t.teardown(() => pebble.stop());
  const root = await pebble.getRootPem();
  const caBundle = join(work, 'pebble-ca-renew.pem');
  writeFileSync(caBundle, pebble.listenerCaPem);
  const up = await startUpstream(t);
  let skew = 0;
  const logs: LogRecord[] = [];
  const gw = await gatewayWith(
    `listen: { https: 127.0.0.1:${httpsPort}, http: 127.0.0.1:${httpPort}, admin: null }
tls:
  storage: ${join(work, 'storage-renew')}
  acme: { email: ops@app.test, directory: ${pebble.directoryUrl}, ca_bundle: ${caBundle}, renew_before: 30d }
sites:
  - { id: app, hosts: [app.test], upstream: ${up.origin}, routes: [{ path: /, access: public }] }
`,
    logs,
    // The manager's clock can be moved forward; its periodic check runs every 300 ms of real time.
    { now: () => Date.now() + skew, checkInterval: 300, random: () => 0.5 },
  );
  t.teardown(() => gw.close(1000));
  t.ok(await waitAuthorized(httpsPort, 'app.test', root), 'first certificate served');
  const serial = async (): Promise<string> => (await tlsPeer(httpsPort, 'app.test', root)).serial;
  const first = await serial();
  // A connection opened before the renewal keeps working across it.
  const kept = tls.connect({ host: '127.0.0.1', port: httpsPort, servername: 'app.test', ca: root, ALPNProtocols: ['http/1.1'] });
  await new Promise((r) => kept.once('secureConnect', r));
  t.teardown(() => kept.destroy());
  const notAfter = gw.certificates.expiries().get('app.test')!.getTime();
  skew = notAfter - Date.now() - 10 * 86_400_000; // 10 days left: inside renew_before (30d)
  let renewed = '';
  for (let i = 0; i < 120 && (renewed === '' || renewed === first); i++) {
    await new Promise((r) => setTimeout(r, 250));
    renewed = await serial();
  }
  t.not(renewed, first, 'a new certificate is served by the same listener');
  t.ok(logs.some((l) => l.event === 'cert_issued'), 'cert_issued event');
  kept.write('GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  const answer = await new Promise<string>((resolve) => {
    let buf = '';
    kept.on('data', (c: Buffer) => (buf += c.toString()));
    kept.on('close', () => resolve(buf));
  });
  t.match(answer, /^HTTP\/1\.1 200/, 'the connection opened before the renewal still works');
});
