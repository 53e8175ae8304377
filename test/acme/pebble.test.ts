// Real ACME orders against Debian's Pebble (RFC 8555): HTTP-01, TLS-ALPN-01, reuse from storage,
// renewal, two sites, corrupt/mismatched storage, changed SANs. Pebble runs with nonce rejection
// ON (raised to 30 %) so acme-client's badNonce retry is exercised on every order.
import t from 'tap';
import { mkdtempSync, writeFileSync, readFileSync, statSync, rmSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import acme from 'acme-client';
import { startPebble } from '../helpers/pebble-harness.mjs';
import { createAcmeManager } from '../../src/acme/index.js';
import type { AcmeManager, AcmeManagerOptions } from '../../src/acme/index.js';
import type { AcmeConfig } from '../../src/config/types.js';
import { EventLog, RecordingSink, quietLogger, serialOf, splitPem, startHttp01, startTlsAlpn01, tlsAuthorized } from './support.js';
import { requireBinary } from '../helpers/requires.js';

requireBinary(t, '/usr/bin/pebble', 'pebble');

const http01 = await startHttp01();
t.teardown(() => http01.close());
const alpn = await startTlsAlpn01();
t.teardown(() => alpn.close());

const pebble = await startPebble({ httpPort: http01.port, tlsPort: alpn.port, env: { PEBBLE_WFE_NONCEREJECT: '30' } });
t.teardown(() => pebble.stop());
const rootPem = await pebble.getRootPem();

const work = mkdtempSync(join(tmpdir(), 'acme-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const caBundle = join(work, 'pebble-listener-ca.pem');
writeFileSync(caBundle, pebble.listenerCaPem);

// Count badNonce answers from the CA: proves rejection is on and acme-client coped with it.
let badNonces = 0;
const nonceSpy = acme.axios.interceptors.response.use((res) => {
  if (res.status === 400 && (res.data as { type?: string } | undefined)?.type === 'urn:ietf:params:acme:error:badNonce') badNonces++;
  return res;
});
t.teardown(() => acme.axios.interceptors.response.eject(nonceSpy));

const baseConfig: AcmeConfig = {
  email: 'ops@app.test',
  directory: pebble.directoryUrl,
  challenge: 'http-01',
  keyType: 'ec-p256',
  caBundle,
  caBundlePem: pebble.listenerCaPem,
  eab: null,
  renewBefore: null,
};

function manager(
  storageDir: string,
  orders: AcmeManagerOptions['orders'],
  extra: Omit<Partial<AcmeManagerOptions>, 'config'> & { config?: Partial<AcmeConfig> } = {},
): { m: AcmeManager; sink: RecordingSink; log: EventLog } {
  const sink = new RecordingSink();
  const log = new EventLog();
  const m = createAcmeManager({
    storageDir,
    orders,
    sink,
    http01: http01.challenges,
    tlsAlpn01: alpn.responder,
    logger: quietLogger,
    events: log.push,
    backoffMin: 50,
    backoffMax: 400,
    pollMin: 50,
    pollMax: 300,
    ...extra,
    config: { ...baseConfig, ...extra.config },
  });
  t.teardown(() => m.stop());
  return { m, sink, log };
}

const APP = ['app.test', 'www.app.test'];
const storeA = join(work, 'a');

await t.test('HTTP-01: one certificate for all site hosts, chaining to the Pebble root', async (t) => {
  const { m, sink, log } = manager(storeA, [{ siteId: 'app', hosts: APP }]);
  await m.start();
  t.equal(sink.installs.length, 0, 'nothing stored yet, nothing installed');
  t.equal(m.status().ready, false);
  const issued = await log.waitFor((e) => e.event === 'cert_issued', 0);
  t.match(issued, { event: 'cert_issued', site: 'app', renewal: false });
  t.match(log.events.find((e) => e.event === 'order_started'), { reason: 'missing' });
  t.equal(log.count('account_registered'), 1);
  const got = sink.latest('app');
  t.ok(got, 'sink received the certificate');
  if (!got) return;
  t.same(got.hosts, APP);
  const [leaf, inter] = splitPem(got.certPem);
  t.ok(leaf && inter, 'leaf and intermediate');
  t.equal(new X509Certificate(leaf as string).subjectAltName, 'DNS:app.test, DNS:www.app.test');
  t.equal(new X509Certificate(leaf as string).publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1', 'ec-p256 key');
  for (const host of APP) {
    t.same(await tlsAuthorized(got.certPem, got.keyPem, host, rootPem), { authorized: true, error: null }, `TLS by SNI ${host}`);
  }
  // Not trusted by an unrelated root: the check above can fail.
  const other = await tlsAuthorized(got.certPem, got.keyPem, 'app.test', pebble.listenerCaPem);
  t.equal(other.authorized, false, 'a different root does not verify it');
  t.same(await tlsAuthorized(got.certPem, got.keyPem, 'evil.test', rootPem).then((r) => r.authorized), false, 'wrong SNI name fails');

  const st = m.status();
  t.equal(st.ready, true);
  t.equal(st.hosts['www.app.test']?.notAfter, Date.parse(new X509Certificate(leaf as string).validTo));
  t.equal(http01.challenges.size, 0, 'challenges removed after the order');

  const dir = join(storeA, 'acme', `localhost_${pebble.listenPort}`);
  t.same(readdirSync(dir).sort(), ['account.json', 'account.key', 'app.crt', 'app.json', 'app.key'], 'no temp files left');
  t.equal(statSync(join(dir, 'account.key')).mode & 0o777, 0o600);
  t.equal(statSync(join(dir, 'app.key')).mode & 0o777, 0o600);
  t.match(JSON.parse(readFileSync(join(dir, 'account.json'), 'utf8')), { directory: pebble.directoryUrl, url: /^https:\/\/localhost:/ });
  t.match(JSON.parse(readFileSync(join(dir, 'app.json'), 'utf8')), { hosts: APP });
  await m.stop();
});

await t.test('a new manager on the same storage installs at once and places no order', async (t) => {
  const { m, sink, log } = manager(storeA, [{ siteId: 'app', hosts: APP }]);
  await m.start();
  t.equal(sink.installs.length, 1, 'installed during start(), before any CA contact');
  t.match(log.events, [{ event: 'cert_loaded', site: 'app' }]);
  await m.checkNow();
  t.equal(log.count('order_started'), 0, 'no new order');
  t.equal(log.count('account_registered'), 0, 'account reused');
  t.equal(sink.installs.length, 1);
  t.equal(m.status().ready, true);
  await m.stop();
});

await t.test('renewal inside the margin replaces the certificate and the sink receives it', async (t) => {
  const stored = readFileSync(join(storeA, 'acme', `localhost_${pebble.listenPort}`, 'app.crt'), 'utf8');
  const notAfter = Date.parse(new X509Certificate(stored).validTo);
  let clock = Date.now();
  const { m, sink, log } = manager(storeA, [{ siteId: 'app', hosts: APP }], { now: () => clock });
  await m.start();
  await m.checkNow();
  t.equal(log.count('order_started'), 0, 'not due yet');
  clock = notAfter - 60_000; // a minute before expiry: well inside a third of the lifetime
  await m.checkNow();
  t.equal(log.count('order_started'), 1, 'exactly one order');
  t.match(log.events.filter((e) => e.event === 'order_started'), [{ reason: 'expiring' }]);
  t.match(log.events.find((e) => e.event === 'cert_issued'), { renewal: true });
  t.equal(sink.installs.length, 2);
  const fresh = sink.latest('app');
  t.not(serialOf(fresh?.certPem ?? ''), serialOf(stored), 'a different certificate');
  t.equal(await tlsAuthorized(fresh?.certPem ?? '', fresh?.keyPem ?? '', 'www.app.test', rootPem).then((r) => r.authorized), true);
  const onDisk = readFileSync(join(storeA, 'acme', `localhost_${pebble.listenPort}`, 'app.crt'), 'utf8');
  t.equal(onDisk, fresh?.certPem, 'storage holds the new certificate');
  await m.stop();
});

await t.test('TLS-ALPN-01, ec-p384 key', async (t) => {
  const { m, sink, log } = manager(join(work, 'alpn'), [{ siteId: 'alpn', hosts: ['alpn.app.test'] }], {
    config: { challenge: 'tls-alpn-01', keyType: 'ec-p384' },
  });
  await m.start();
  await log.waitFor((e) => e.event === 'cert_issued', 0);
  const got = sink.latest('alpn');
  t.ok(got);
  t.equal(new X509Certificate(got?.certPem ?? '').publicKey.asymmetricKeyDetails?.namedCurve, 'secp384r1');
  t.same(await tlsAuthorized(got?.certPem ?? '', got?.keyPem ?? '', 'alpn.app.test', rootPem), { authorized: true, error: null });
  t.same(alpn.hosts(), [], 'ALPN challenge certificate removed');
  t.equal(http01.challenges.size, 0, 'HTTP-01 responder not used');
  await m.stop();
});

await t.test('two sites get separate certificates', async (t) => {
  const { m, sink, log } = manager(join(work, 'two'), [
    { siteId: 'one', hosts: ['one.test'] },
    { siteId: 'two', hosts: ['two.test', 'api.two.test'] },
  ]);
  await m.start();
  await m.checkNow();
  await log.waitFor((e) => e.event === 'cert_issued' && e.site === 'one', 0);
  await log.waitFor((e) => e.event === 'cert_issued' && e.site === 'two', 0);
  const one = sink.latest('one');
  const two = sink.latest('two');
  t.equal(new X509Certificate(one?.certPem ?? '').subjectAltName, 'DNS:one.test');
  t.equal(new X509Certificate(two?.certPem ?? '').subjectAltName, 'DNS:two.test, DNS:api.two.test');
  t.not(one?.keyPem, two?.keyPem, 'separate keys');
  t.equal(await tlsAuthorized(two?.certPem ?? '', two?.keyPem ?? '', 'one.test', rootPem).then((r) => r.authorized), false, "site two's cert does not cover one.test");
  t.equal(await tlsAuthorized(one?.certPem ?? '', one?.keyPem ?? '', 'one.test', rootPem).then((r) => r.authorized), true);
  t.equal(log.count('account_registered'), 1, 'one account for both');
  await m.stop();
});

await t.test('corrupt or mismatched storage is reported and re-ordered, never fatal', async (t) => {
  const dir = join(work, 'two', 'acme', `localhost_${pebble.listenPort}`);
  const goodTwoKey = readFileSync(join(dir, 'two.key'), 'utf8');
  writeFileSync(join(dir, 'one.crt'), '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
  writeFileSync(join(dir, 'two.key'), readFileSync(join(dir, 'one.key'), 'utf8')); // key of another cert
  const { m, sink, log } = manager(join(work, 'two'), [
    { siteId: 'one', hosts: ['one.test'] },
    { siteId: 'two', hosts: ['two.test', 'api.two.test'] },
  ]);
  await m.start();
  t.equal(sink.installs.length, 0, 'nothing broken gets installed');
  // Sites are loaded concurrently: their events come in either order.
  const invalid = log.events.filter((e) => e.event === 'cert_storage_invalid').sort((a, b) => String(a.site).localeCompare(String(b.site)));
  t.match(invalid, [
    { site: 'one', file: /one\.crt$/ },
    { site: 'two', file: /two\.key$/, reason: /does not match/ },
  ]);
  await m.checkNow();
  await log.waitFor((e) => e.event === 'cert_issued' && e.site === 'one', 0);
  await log.waitFor((e) => e.event === 'cert_issued' && e.site === 'two', 0);
  t.match(log.events.filter((e) => e.event === 'order_started'), [{ reason: 'invalid' }, { reason: 'invalid' }]);
  t.not(readFileSync(join(dir, 'two.key'), 'utf8'), goodTwoKey, 'replaced with a fresh key');
  const two = sink.latest('two');
  t.equal(await tlsAuthorized(two?.certPem ?? '', two?.keyPem ?? '', 'api.two.test', rootPem).then((r) => r.authorized), true);
  await m.stop();

  writeFileSync(join(dir, 'one.json'), '{"hosts": ["one.test"], "notAfter": ');
  const again = manager(join(work, 'two'), [{ siteId: 'one', hosts: ['one.test'] }]);
  await again.m.start();
  t.match(again.log.events, [{ event: 'cert_storage_invalid', file: /one\.json$/, reason: /unparseable/ }]);
  await again.log.waitFor((e) => e.event === 'cert_issued', 0);
  await again.m.stop();
});

await t.test('stored certificate whose SANs differ from the site hosts is re-ordered', async (t) => {
  const { m, sink, log } = manager(storeA, [{ siteId: 'app', hosts: ['app.test', 'new.app.test'] }]);
  await m.start();
  t.same(sink.installs.map((i) => i.hosts), [['app.test']], 'old cert kept only for the name it still covers');
  await log.waitFor((e) => e.event === 'cert_issued', 0);
  t.match(log.events.find((e) => e.event === 'order_started'), { reason: 'hosts_changed' });
  const got = sink.latest('app');
  t.same(got?.hosts, ['app.test', 'new.app.test']);
  t.equal(new X509Certificate(got?.certPem ?? '').subjectAltName, 'DNS:app.test, DNS:new.app.test');
  await m.stop();
});

t.test('Pebble really rejected nonces during these orders', async (t) => {
  t.ok(badNonces > 0, `badNonce answers seen: ${badNonces}`);
});
