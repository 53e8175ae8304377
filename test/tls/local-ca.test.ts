import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import t from 'tap';
import { CertificateStore, LOCAL_LEAF_LIFETIME_MS, ensureLocalCertificate } from '../../src/tls/index.js';
import { portOf, probe } from './helpers.js';
import { installLocalCertificate, keepLocalCertificateRenewed, localRenewalDue, prepareCertificates, stageCertificates } from '../../src/server/certificates.js';
import { parseConfig } from '../../src/config/index.js';
import type { GatewayConfig } from '../../src/config/types.js';
import { memoryLogger } from '../helpers/gateway.js';

async function tempDir(t: Tap): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-local-ca-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A configuration served by the development CA in `dir`, for the site hosts `hosts` ("a.test, b.test"). */
function siteConfig(dir: string, hosts: string): GatewayConfig {
  return parseConfig(
    `listen: { https: 127.0.0.1:0 }
tls: { storage: ${dir} }
sites:
  - hosts: [${hosts}]
    upstream: http://127.0.0.1:9
    routes: [{ path: /, access: public }]
`,
    'gw.yml',
  ).config;
}
type Tap = { teardown(fn: () => unknown): void };

t.test('issues a leaf that verifies against the root in a real handshake (DNS, wildcard and IP SANs)', async (t) => {
  const dir = await tempDir(t);
  const res = await ensureLocalCertificate(dir, ['App.Test', '*.app.test', '127.0.0.1']);
  t.ok(res.issued);
  t.ok(res.rootCreated);
  t.same(res.warnings, []);
  t.equal(res.rootPath, join(dir, 'local-ca', 'root.crt'));
  t.equal(await readFile(res.rootPath, 'utf8'), res.rootPem);
  t.equal((await stat(join(dir, 'local-ca', 'root.key'))).mode & 0o777, 0o600, 'root key 0600');
  t.equal((await stat(join(dir, 'local', 'leaf.key'))).mode & 0o777, 0o600, 'leaf key 0600');
  const leaf = new X509Certificate(res.certPem);
  t.equal(leaf.subjectAltName, 'DNS:*.app.test, IP Address:127.0.0.1, DNS:app.test');
  t.notOk(leaf.ca);
  t.ok(new X509Certificate(res.rootPem).ca);
  t.equal(new Date(leaf.validTo).getTime() - new Date(leaf.validFrom).getTime() <= LOCAL_LEAF_LIFETIME_MS + 6 * 60_000, true, 'about 7 days');

  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  store.loadFromPem('local-ca', res.certPem, res.keyPem, 'local-ca');
  const server = tls.createServer(store.serverOptions(), (s) => s.end());
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise((r) => server.close(r)));
  const port = portOf(server);
  for (const servername of ['app.test', 'x.app.test']) {
    await t.resolves(probe(port, { ca: res.rootPem, servername }), `trusted for ${servername}`);
  }
  // By IP: no SNI, the default (this leaf) is served and the IP SAN verifies.
  await t.resolves(probe(port, { ca: res.rootPem }), 'trusted for 127.0.0.1');
  // Without the root the chain does not verify: the root really is what makes it trusted.
  await t.rejects(probe(port, { servername: 'app.test' }), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
});

t.test('reused across restarts; re-issued when hosts change or a third of the lifetime is left', async (t) => {
  const dir = await tempDir(t);
  let now = Date.parse('2030-01-01T00:00:00Z');
  const clock = () => now;
  const first = await ensureLocalCertificate(dir, ['a.test', 'b.test'], clock);
  const again = await ensureLocalCertificate(dir, ['B.test', 'a.test', 'a.test'], clock);
  t.notOk(again.issued, 'same host set (any order/case) -> reused');
  t.notOk(again.rootCreated);
  t.equal(again.certPem, first.certPem);
  t.equal(again.keyPem, first.keyPem);

  const changed = await ensureLocalCertificate(dir, ['a.test', 'c.test'], clock);
  t.ok(changed.issued, 'host set changed -> new leaf');
  t.notOk(changed.rootCreated, 'same root');
  t.equal(changed.rootPem, first.rootPem);
  t.equal(new X509Certificate(changed.certPem).subjectAltName, 'DNS:a.test, DNS:c.test');

  now += 4 * 86_400_000; // 3 of 7 days left: more than a third
  t.notOk((await ensureLocalCertificate(dir, ['a.test', 'c.test'], clock)).issued, '3 days left: kept');
  now += 1 * 86_400_000 + 60 * 60_000; // under 7/3 days left
  const renewed = await ensureLocalCertificate(dir, ['a.test', 'c.test'], clock);
  t.ok(renewed.issued, 'less than a third left: re-issued');
  t.equal(renewed.notAfter.getTime(), now + LOCAL_LEAF_LIFETIME_MS);
  t.ok(new X509Certificate(renewed.certPem).verify(new X509Certificate(first.rootPem).publicKey), 'signed by the same root');
});

t.test('corrupt or mismatched files are reported and regenerated', async (t) => {
  const dir = await tempDir(t);
  const first = await ensureLocalCertificate(dir, ['a.test']);

  await writeFile(join(dir, 'local', 'leaf.crt'), '-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n');
  const fixedLeaf = await ensureLocalCertificate(dir, ['a.test']);
  t.ok(fixedLeaf.issued);
  t.notOk(fixedLeaf.rootCreated, 'a bad leaf does not cost the root');
  t.match(fixedLeaf.warnings.join('\n'), /local certificate re-issued: .*leaf\.crt/);
  t.equal(fixedLeaf.rootPem, first.rootPem);

  // Leaf key replaced by some other key: mismatch -> re-issue.
  await writeFile(join(dir, 'local', 'leaf.key'), first.keyPem);
  const mismatch = await ensureLocalCertificate(dir, ['a.test']);
  t.ok(mismatch.issued);
  t.match(mismatch.warnings.join('\n'), /does not match/);

  // Corrupt root key: new root (loudly), and the leaf follows it.
  await writeFile(join(dir, 'local-ca', 'root.key'), 'not a key');
  const newRoot = await ensureLocalCertificate(dir, ['a.test']);
  t.ok(newRoot.rootCreated);
  t.ok(newRoot.issued, 'leaf of the old root is re-issued');
  t.match(newRoot.warnings.join('\n'), /local CA root regenerated \(trust the new .*root\.crt\)/);
  t.not(newRoot.rootPem, first.rootPem);
  t.ok(new X509Certificate(newRoot.certPem).verify(new X509Certificate(newRoot.rootPem).publicKey));

  // Missing half of the root pair.
  await rm(join(dir, 'local-ca', 'root.crt'));
  const halfRoot = await ensureLocalCertificate(dir, ['a.test']);
  t.ok(halfRoot.rootCreated);
  t.match(halfRoot.warnings.join('\n'), /root\.crt is missing/);
  t.same((await readdir(join(dir, 'local-ca'))).sort(), ['root.crt', 'root.key'], 'no temp files left behind');

  await t.rejects(ensureLocalCertificate(dir, []), { code: 'GW_ERR_TLS_CERT' });
});

t.test('write: false issues a leaf without touching the disk; save() writes it once, and the next read finds it', async (t) => {
  const dir = await tempDir(t);
  const first = await ensureLocalCertificate(dir, ['a.test']);
  const leafPath = join(dir, 'local', 'leaf.crt');
  const before = await readFile(leafPath, 'utf8');
  t.equal(before, first.certPem);

  const staged = await ensureLocalCertificate(dir, ['a.test', 'b.test'], Date.now, { write: false });
  t.ok(staged.issued, 'the host set changed: a new leaf');
  t.equal(await readFile(leafPath, 'utf8'), before, 'not written yet');
  t.equal(await readFile(join(dir, 'local', 'leaf.key'), 'utf8'), first.keyPem, 'nor its key');
  // Never saved (a refused reload): the next start keeps the leaf on disk for the old host set.
  const unchanged = await ensureLocalCertificate(dir, ['a.test']);
  t.notOk(unchanged.issued, 'the old leaf is still there and used');
  t.equal(unchanged.certPem, before);

  const again = await ensureLocalCertificate(dir, ['a.test', 'b.test'], Date.now, { write: false });
  await again.save();
  await again.save();
  t.equal(await readFile(leafPath, 'utf8'), again.certPem, 'saved');
  t.equal((await stat(join(dir, 'local', 'leaf.key'))).mode & 0o777, 0o600, 'its key 0600');
  const found = await ensureLocalCertificate(dir, ['b.test', 'a.test']);
  t.notOk(found.issued, 'the saved leaf is found, not issued again');
  t.equal(found.keyPem, again.keyPem);
  t.same((await readdir(join(dir, 'local'))).sort(), ['leaf.crt', 'leaf.key'], 'no temp files left behind');
});

t.test('write: false still writes a new root at once (the old one is gone; users need the file), and a storage that cannot take it is an error', async (t) => {
  const dir = await tempDir(t);
  const res = await ensureLocalCertificate(dir, ['a.test'], Date.now, { write: false });
  t.ok(res.rootCreated);
  t.equal(await readFile(join(dir, 'local-ca', 'root.crt'), 'utf8'), res.rootPem, 'root written');
  await t.rejects(readFile(join(dir, 'local', 'leaf.crt')), { code: 'ENOENT' }, 'the leaf waits for save()');

  // `local-ca` a dangling link: nothing to read (a root is due), and nowhere to write it.
  const broken = await tempDir(t);
  await symlink(join(broken, 'gone', 'local-ca'), join(broken, 'local-ca'));
  await t.rejects(ensureLocalCertificate(broken, ['a.test'], Date.now, { write: false }), { code: 'GW_ERR_TLS_CERT', message: /local CA in/ });
});

t.test('a save that fails rejects with GW_ERR_TLS_CERT naming the storage', async (t) => {
  const dir = await tempDir(t);
  await ensureLocalCertificate(dir, ['a.test']);
  const staged = await ensureLocalCertificate(dir, ['c.test'], Date.now, { write: false });
  // The leaf directory replaced by a file between the read and the write.
  await rm(join(dir, 'local'), { recursive: true });
  await writeFile(join(dir, 'local'), 'x');
  await t.rejects(staged.save(), { code: 'GW_ERR_TLS_CERT', message: new RegExp(`local CA in ${dir}`) });
});

t.test('a reload\'s staged development certificate: written when installed; a write that fails then is logged, and the certificate is served anyway', async (t) => {
  const dir = await tempDir(t);
  const logs: Record<string, unknown>[] = [];
  const logger = memoryLogger(logs as never);
  const store = await prepareCertificates(siteConfig(dir, 'a.test'), logger);
  const leafPath = join(dir, 'local', 'leaf.crt');
  const first = await readFile(leafPath, 'utf8');

  const install = await stageCertificates(siteConfig(dir, 'a.test, b.test'), logger, store);
  t.equal(await readFile(leafPath, 'utf8'), first, 'staged: nothing written');
  install();
  t.equal(new X509Certificate(store.get('local-ca')!.certPem).subjectAltName, 'DNS:a.test, DNS:b.test', 'installed: served');
  await ensureLocalCertificate(dir, ['a.test', 'b.test']); // waits for the save in progress
  t.equal(await readFile(leafPath, 'utf8'), store.get('local-ca')!.certPem, 'and saved');

  const install2 = await stageCertificates(siteConfig(dir, 'c.test'), logger, store);
  await rm(join(dir, 'local'), { recursive: true });
  await writeFile(join(dir, 'local'), 'x');
  install2();
  t.equal(new X509Certificate(store.get('local-ca')!.certPem).subjectAltName, 'DNS:c.test', 'served from memory');
  const said = (): Record<string, unknown> | undefined => logs.find((l) => l.msg === 'local CA: the new certificate could not be saved; it is served, and issued again at the next start');
  for (let i = 0; i < 100 && said() === undefined; i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(said(), 'the failed save is logged');
  t.equal(said()?.level, 'error');
});

t.test('the development CA warning: said when it starts serving a set of hosts, not again for the same hosts', async (t) => {
  const dir = await tempDir(t);
  const logs: Record<string, unknown>[] = [];
  const warned = (): unknown[] => logs.filter((l) => /LOCAL DEVELOPMENT CA/.test(String(l.msg))).map((l) => l.hosts);
  const logger = memoryLogger(logs as never);
  const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 50));
  const store = await prepareCertificates(siteConfig(dir, 'a.test'), logger);
  await settle();
  t.same(warned(), [['a.test']], 'at start');
  // A reload or a renewal for the same hosts: nothing new to say.
  (await stageCertificates(siteConfig(dir, 'a.test'), logger, store))();
  await settle();
  t.same(warned(), [['a.test']], 'not repeated for the same hosts');
  // The same hosts with a new leaf (what a renewal installs): still not repeated.
  const renewed = await ensureLocalCertificate(dir, ['a.test'], () => Date.now() - 6 * 86_400_000);
  installLocalCertificate(store, renewed);
  (await stageCertificates(siteConfig(dir, 'a.test'), logger, store))();
  await settle();
  t.same(warned(), [['a.test']], 'not repeated when the leaf is renewed');
  (await stageCertificates(siteConfig(dir, 'a.test, b.test'), logger, store))();
  await settle();
  t.same(warned(), [['a.test'], ['a.test', 'b.test']], 'said again when the hosts change');
  // Switched off (a certificate file would replace it), then on again: said again.
  store.remove('local-ca');
  (await stageCertificates(siteConfig(dir, 'a.test, b.test'), logger, store))();
  await settle();
  t.same(warned(), [['a.test'], ['a.test', 'b.test'], ['a.test', 'b.test']], 'said again when it starts serving again');
});

t.test('renewal while running: a renewal that installs nothing (or fails) is logged and tried again a minute later, never in a tight loop', async (t) => {
  const dir = await tempDir(t);
  // Issued 6 days ago: due now.
  const due = await ensureLocalCertificate(dir, ['a.test'], () => Date.now() - 6 * 86_400_000);
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  installLocalCertificate(store, due);
  t.ok(localRenewalDue(store), 'due');
  const logs: Record<string, unknown>[] = [];
  let calls = 0;
  const stop = keepLocalCertificateRenewed(store, memoryLogger(logs as never), async () => {
    calls++;
  });
  t.teardown(stop);
  await new Promise((r) => setTimeout(r, 300));
  t.equal(calls, 1, 'called once');
  t.same(
    logs.filter((l) => String(l.msg).startsWith('local CA:')).map((l) => [l.level, l.msg]),
    [['error', 'local CA: renewing the certificate failed; trying again in a minute']],
  );

  // A renewal that installs a fresh leaf: said, and the next check is days away.
  const fresh = await ensureLocalCertificate(await tempDir(t), ['a.test']);
  installLocalCertificate(store, due);
  const logs2: Record<string, unknown>[] = [];
  let calls2 = 0;
  const stop2 = keepLocalCertificateRenewed(store, memoryLogger(logs2 as never), async () => {
    calls2++;
    installLocalCertificate(store, fresh);
  });
  t.teardown(stop2);
  await new Promise((r) => setTimeout(r, 300));
  t.equal(calls2, 1);
  t.notOk(localRenewalDue(store));
  t.same(logs2.map((l) => l.msg), ['local CA: certificate renewed']);
});
