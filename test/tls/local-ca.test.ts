import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import t from 'tap';
import { CertificateStore, LOCAL_LEAF_LIFETIME_MS, ensureLocalCertificate } from '../../src/tls/index.js';
import { portOf, probe } from './helpers.js';

async function tempDir(t: Tap): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-local-ca-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
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
