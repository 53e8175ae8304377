import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import t from 'tap';
import { CertificateStore, type CertificateChange } from '../../src/tls/index.js';
import { createTestCa, handshake, portOf, probe, type TestCa } from './helpers.js';

const DAY = 86_400_000;

async function serve(t: Tap, store: CertificateStore): Promise<{ server: tls.Server; port: number }> {
  const server = tls.createServer(store.serverOptions(), (socket) => {
    // Echo server: proves a connection keeps working after a swap.
    socket.on('data', (d) => socket.write(d));
    socket.on('error', () => undefined);
  });
  const sockets = new Set<import('node:net').Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  return { server, port: portOf(server) };
}
type Tap = { teardown(fn: () => unknown): void };

let ca: TestCa;
t.before(async () => {
  ca = await createTestCa();
});

t.test('SNI: exact match, wildcard for exactly one label, default otherwise', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const apex = await ca.issue({ dns: ['app.test', 'www.app.test'] });
  const wild = await ca.issue({ dns: ['*.app.test'] });
  const other = await ca.issue({ dns: ['other.test'] });
  store.loadFromPem('apex', apex.certPem, apex.keyPem, 'file');
  store.loadFromPem('wild', wild.certPem, wild.keyPem, 'acme');
  store.loadFromPem('other', other.certPem, other.keyPem, 'file');
  const { port } = await serve(t, store);
  const name = async (servername?: string): Promise<string | undefined> =>
    (await probe(port, { ca: ca.certPem, ...(servername === undefined ? {} : { servername }), rejectUnauthorized: false })).peer.subjectAltName;

  t.equal(await name('app.test'), 'DNS:app.test, DNS:www.app.test', 'exact');
  t.equal(await name('www.app.test'), 'DNS:app.test, DNS:www.app.test', 'exact beats wildcard');
  t.equal(await name('api.app.test'), 'DNS:*.app.test', 'wildcard');
  t.equal(await name('API.App.Test.'), 'DNS:*.app.test', 'case and trailing dot normalized');
  t.equal(await name('other.test'), 'DNS:other.test');
  t.equal(await name('a.b.app.test'), 'DNS:app.test, DNS:www.app.test', 'wildcard does not cover two labels -> default');
  t.equal(await name('unknown.example'), 'DNS:app.test, DNS:www.app.test', 'no match -> default (first loaded)');
  t.equal(await name(undefined), 'DNS:app.test, DNS:www.app.test', 'no SNI -> default');

  // A verifying client accepts the certificate for the name it asked for.
  const ok = await handshake(port, { ca: ca.certPem, servername: 'api.app.test' });
  t.ok(ok.socket.authorized);
  ok.socket.destroy();
  // ...and rejects the default served for an unknown name.
  await t.rejects(handshake(port, { ca: ca.certPem, servername: 'evil.example' }), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' });

  store.setDefault('other');
  t.equal(store.select(null)?.id, 'other', 'explicit default');
  t.equal(store.select('app.test')?.id, 'apex', 'explicit default does not override SNI');
  t.throws(() => store.setDefault('nope'), { code: 'GW_ERR_TLS_CERT' });
});

t.test('several matches: latest notAfter wins, whatever the load order', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const later = await ca.issue({ dns: ['app.test'], notAfter: new Date(Date.now() + 60 * DAY) });
  const sooner = await ca.issue({ dns: ['app.test'], notAfter: new Date(Date.now() + 10 * DAY) });
  const wildLater = await ca.issue({ dns: ['*.w.test'], notAfter: new Date(Date.now() + 60 * DAY) });
  const wildSooner = await ca.issue({ dns: ['*.w.test'], notAfter: new Date(Date.now() + 10 * DAY) });
  store.loadFromPem('later', later.certPem, later.keyPem, 'file');
  store.loadFromPem('sooner', sooner.certPem, sooner.keyPem, 'file');
  store.loadFromPem('wild-sooner', wildSooner.certPem, wildSooner.keyPem, 'file');
  store.loadFromPem('wild-later', wildLater.certPem, wildLater.keyPem, 'file');
  t.equal(store.select('app.test')?.id, 'later');
  t.equal(store.select('x.w.test')?.id, 'wild-later');
  const { port } = await serve(t, store);
  const h = await probe(port, { ca: ca.certPem, servername: 'app.test' });
  t.equal(new Date(h.peer.validTo).getTime(), store.get('later')?.notAfter.getTime(), 'served the later one');
});

t.test('hot swap: new handshakes get the new certificate, an open connection keeps working', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const v1 = await ca.issue({ dns: ['app.test'], cn: 'v1' });
  const v2 = await ca.issue({ dns: ['app.test'], cn: 'v2' });
  store.loadFromPem('site', v1.certPem, v1.keyPem, 'acme');
  const { port } = await serve(t, store);

  const before = await handshake(port, { ca: ca.certPem, servername: 'app.test' });
  t.teardown(() => before.socket.destroy());
  t.equal(before.peer.subject, 'CN=v1');

  const changes: CertificateChange[] = [];
  store.onChange((c) => changes.push(c));
  store.loadFromPem('site', v2.certPem, v2.keyPem, 'acme');
  t.equal(store.size, 1, 'same id replaced, not added');
  t.same(changes.map((c) => [c.type, 'id' in c ? c.id : null]), [['set', 'site']]);

  const after = await probe(port, { ca: ca.certPem, servername: 'app.test' });
  t.equal(after.peer.subject, 'CN=v2', 'new handshake sees the new certificate');

  // The connection made before the swap still carries data both ways.
  before.socket.write('still here');
  const [echo] = (await once(before.socket, 'data')) as [Buffer];
  t.equal(echo.toString(), 'still here');

  t.ok(store.remove('site'));
  t.notOk(store.remove('site'), 'second remove is a no-op');
  t.same(changes.map((c) => c.type), ['set', 'remove']);
  await t.rejects(probe(port, { ca: ca.certPem, servername: 'app.test' }), 'empty store: handshake fails, listener survives');
  store.loadFromPem('site', v1.certPem, v1.keyPem, 'acme');
  t.equal((await probe(port, { ca: ca.certPem, servername: 'app.test' })).peer.subject, 'CN=v1', 'listener still serves after an empty period');
});

t.test('a throwing onChange listener does not break the swap', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const seen: string[] = [];
  store.onChange(() => {
    throw new Error('observer bug');
  });
  const off = store.onChange((c) => seen.push(c.type === 'default' ? String(c.id) : c.type === 'policy' ? c.minVersion : c.id));
  const c = await ca.issue({ dns: ['a.test'] });
  store.loadFromPem('a', c.certPem, c.keyPem, 'file');
  t.equal(store.select('a.test')?.id, 'a');
  off();
  store.remove('a');
  t.same(seen, ['a'], 'unsubscribed listener no longer called');
});

t.test('bindServer: a new default certificate reaches clients without SNI', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const v1 = await ca.issue({ dns: ['app.test'], cn: 'v1' });
  const v2 = await ca.issue({ dns: ['app.test'], cn: 'v2' });
  store.loadFromPem('site', v1.certPem, v1.keyPem, 'file');
  const { server, port } = await serve(t, store);
  t.teardown(store.bindServer(server));
  t.equal((await probe(port, { ca: ca.certPem, rejectUnauthorized: false })).peer.subject, 'CN=v1');
  store.loadFromPem('site', v2.certPem, v2.keyPem, 'file');
  t.equal((await probe(port, { ca: ca.certPem, rejectUnauthorized: false })).peer.subject, 'CN=v2', 'no-SNI client sees the swap');
});

t.test('bindServer keeps the session ticket keys when the default certificate changes (tickets stay good; workers keep the shared keys)', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const v1 = await ca.issue({ dns: ['app.test'], cn: 'v1' });
  const v2 = await ca.issue({ dns: ['app.test'], cn: 'v2' });
  store.loadFromPem('site', v1.certPem, v1.keyPem, 'file');
  const { server } = await serve(t, store);
  t.teardown(store.bindServer(server));
  const keys = Buffer.alloc(48, 7);
  server.setTicketKeys(keys);
  store.loadFromPem('site', v2.certPem, v2.keyPem, 'file');
  t.same(server.getTicketKeys(), keys, 'a new default certificate');
  store.setMinVersion('TLSv1.3');
  t.same(server.getTicketKeys(), keys, 'a new policy');
});

t.test('setMinVersion (a reload of tls.min_version): new handshakes, with SNI or without, get the new floor at once; open connections keep theirs', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const c = await ca.issue({ dns: ['app.test'], cn: 'app' });
  store.loadFromPem('site', c.certPem, c.keyPem, 'file');
  store.setAlpnChallenge('app.test', { certPem: c.certPem, keyPem: c.keyPem });
  const { server, port } = await serve(t, store);
  t.teardown(store.bindServer(server));
  const tls12 = { ca: ca.certPem, maxVersion: 'TLSv1.2' as const };
  t.equal((await probe(port, { ...tls12, servername: 'app.test' })).protocol, 'TLSv1.2', 'TLS 1.2 accepted at first');
  const open = await handshake(port, { ...tls12, servername: 'app.test' });
  t.teardown(() => open.socket.destroy());
  const changes: CertificateChange[] = [];
  store.onChange((ch) => changes.push(ch));
  store.setMinVersion('TLSv1.3');
  t.same(changes, [{ type: 'policy', minVersion: 'TLSv1.3' }]);
  t.equal(store.minVersion, 'TLSv1.3');
  await t.rejects(probe(port, { ...tls12, servername: 'app.test' }), 'TLS 1.2 with SNI refused');
  await t.rejects(probe(port, { ...tls12, rejectUnauthorized: false }), 'TLS 1.2 without SNI refused');
  t.equal((await probe(port, { ca: ca.certPem, servername: 'app.test' })).protocol, 'TLSv1.3');
  t.equal(store.get('site')?.hosts[0], 'app.test', 'the certificate is still there');
  t.ok(store.alpnChallengeContext('app.test'), 'and the pending challenge');
  open.socket.write('still here');
  const [echo] = (await once(open.socket, 'data')) as [Buffer];
  t.equal(echo.toString(), 'still here', 'a TLS 1.2 connection made before keeps working');
  store.setMinVersion('TLSv1.3');
  t.equal(changes.length, 1, 'the same version again changes nothing');
  store.setMinVersion('TLSv1.2');
  t.equal((await probe(port, { ...tls12, servername: 'app.test' })).protocol, 'TLSv1.2', 'and back');
});

t.test('errors: bad PEM, mismatched key, no SAN, unreadable files', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const a = await ca.issue({ dns: ['a.test'] });
  const b = await ca.issue({ dns: ['b.test'] });
  const noSan = await ca.issue({ cn: 'a.test' });
  t.throws(() => store.loadFromPem('x', 'not a pem', a.keyPem, 'file'), { code: 'GW_ERR_TLS_CERT', message: /x: not a valid PEM certificate/ });
  t.throws(() => store.loadFromPem('x', a.certPem, 'garbage', 'file'), { code: 'GW_ERR_TLS_CERT', message: /private key is not a valid/ });
  t.throws(() => store.loadFromPem('x', a.certPem, b.keyPem, 'file'), { code: 'GW_ERR_TLS_CERT', message: /does not match/ });
  t.throws(() => store.loadFromPem('x', noSan.certPem, noSan.keyPem, 'file'), { code: 'GW_ERR_TLS_CERT', message: /no DNS subjectAltName/ });
  // A truncated certificate (e.g. a half-written file) is rejected, not half-loaded.
  t.throws(() => store.loadFromPem('x', a.certPem.slice(0, 200), a.keyPem, 'file'), { code: 'GW_ERR_TLS_CERT' });
  t.equal(store.size, 0, 'nothing installed by failed loads');

  const dir = await mkdtemp(join(tmpdir(), 'gw-tls-store-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const good = { cert: join(dir, 'a.crt'), key: join(dir, 'a.key') };
  await writeFile(good.cert, a.certPem);
  await writeFile(good.key, a.keyPem);
  await writeFile(join(dir, 'b.key'), b.keyPem);
  const missing = join(dir, 'missing.crt');
  await t.rejects(store.loadFiles([good, { cert: missing, key: good.key }]), {
    code: 'GW_ERR_TLS_CERT',
    message: new RegExp(`certificate file ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
  });
  t.equal(store.size, 0, 'all-or-nothing: the good file was not installed either');
  await t.rejects(store.loadFiles([{ cert: good.cert, key: join(dir, 'b.key') }]), {
    code: 'GW_ERR_TLS_CERT',
    message: new RegExp(`private key .*b\\.key does not match`),
  });
  const loaded = await store.loadFiles([good]);
  t.equal(loaded[0]?.id, good.cert);
  t.equal(loaded[0]?.source, 'file');
  t.same(store.select('a.test')?.hosts, ['a.test']);
});

t.test('list, expiries and hasCertificateFor (injected clock)', async (t) => {
  let now = Date.now();
  const store = new CertificateStore({ minVersion: 'TLSv1.2', now: () => now });
  const a = await ca.issue({ dns: ['a.test', '*.w.test'], notAfter: new Date(now + 10 * DAY) });
  const ip = await ca.issue({ ips: ['127.0.0.1'] });
  store.loadFromPem('a', a.certPem, a.keyPem, 'acme');
  store.loadFromPem('ip', ip.certPem, ip.keyPem, 'local-ca');
  const rows = store.list();
  t.same(
    rows.map((r) => [r.id, r.hosts, r.source, r.isDefault]),
    [
      ['a', ['a.test', '*.w.test'], 'acme', true],
      ['ip', [], 'local-ca', false],
    ],
  );
  t.same(store.get('ip')?.ips, ['127.0.0.1'], 'IP-only certificate accepted, IPs recorded');
  t.equal(store.expiries().get('a.test')?.getTime(), store.get('a')?.notAfter.getTime());
  t.ok(store.hasCertificateFor('a.test'));
  t.ok(store.hasCertificateFor('x.w.test'), 'wildcard counts');
  t.notOk(store.hasCertificateFor('y.x.w.test'), 'two labels below a wildcard do not');
  t.notOk(store.hasCertificateFor('b.test'), 'the default fallback does not count');
  now += 11 * DAY;
  t.notOk(store.hasCertificateFor('a.test'), 'expired certificate does not count');
});
