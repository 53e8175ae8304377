import { once } from 'node:events';
import * as http2 from 'node:http2';
import type { Socket } from 'node:net';
import * as tls from 'node:tls';
import t from 'tap';
import { CertificateStore, TLS12_CIPHERS, tlsServerOptions, type TlsMinVersion } from '../../src/tls/index.js';
import { createTestCa, portOf, probe, type TestCa } from './helpers.js';

let ca: TestCa;
t.before(async () => {
  ca = await createTestCa();
});

async function listen(t: Tap, server: tls.Server): Promise<number> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
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
  return portOf(server);
}
type Tap = { teardown(fn: () => unknown): void };

/** A deliberately permissive server with the same kind of certificate: proves the probes below
 * CAN succeed, so their failure against the policy is the policy's doing. */
async function permissiveServer(t: Tap, rsa = false): Promise<number> {
  const leaf = await ca.issue({ dns: ['app.test'], rsa });
  return listen(t, tls.createServer({ key: leaf.keyPem, cert: leaf.certPem, minVersion: 'TLSv1', ciphers: 'ALL:@SECLEVEL=0' }, (s) => s.end()));
}

async function storeServer(t: Tap, minVersion: TlsMinVersion, rsa = false): Promise<number> {
  const store = new CertificateStore({ minVersion });
  const leaf = await ca.issue({ dns: ['app.test'], rsa });
  store.loadFromPem('app', leaf.certPem, leaf.keyPem, 'file');
  return listen(t, tls.createServer(store.serverOptions(), (s) => s.end()));
}

t.test('the policy is Mozilla intermediate without DHE, CBC or RSA key exchange', async (t) => {
  for (const c of TLS12_CIPHERS) {
    t.match(c, /^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$/);
  }
  const opts = tlsServerOptions('TLSv1.2');
  t.equal(opts.honorCipherOrder, false);
  t.equal(opts.ecdhCurve, 'X25519:prime256v1:secp384r1');
  t.same(opts.ALPNProtocols, ['h2', 'http/1.1']);
});

t.test('minVersion TLSv1.2: TLS 1.1 refused, 1.2 and 1.3 accepted', async (t) => {
  const port = await storeServer(t, 'TLSv1.2');
  const base = { ca: ca.certPem, servername: 'app.test' };
  // Node 20's default client floor is 1.2; lower it so the server is what refuses.
  const old = { ...base, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' } as const;
  t.equal((await probe(await permissiveServer(t), old)).protocol, 'TLSv1.1', 'control: this client can speak TLS 1.1');
  await t.rejects(probe(port, old));
  t.equal((await probe(port, { ...base, maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
  t.equal((await probe(port, base)).protocol, 'TLSv1.3', 'TLS 1.3 preferred when both sides can');
});

t.test('minVersion TLSv1.3: a TLS 1.2 client is refused, also via SNI', async (t) => {
  const port = await storeServer(t, 'TLSv1.3');
  await t.rejects(probe(port, { ca: ca.certPem, servername: 'app.test', maxVersion: 'TLSv1.2' }));
  await t.rejects(probe(port, { ca: ca.certPem, maxVersion: 'TLSv1.2' }), 'without SNI (base context) too');
  t.equal((await probe(port, { ca: ca.certPem, servername: 'app.test' })).protocol, 'TLSv1.3');
});

t.test('TLS 1.2: no CBC suite and no RSA key exchange can be negotiated', async (t) => {
  const ecPort = await storeServer(t, 'TLSv1.2');
  const rsaPort = await storeServer(t, 'TLSv1.2', true);
  const base = { ca: ca.certPem, servername: 'app.test', maxVersion: 'TLSv1.2' as const };
  const cbc = 'ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384';
  const lax = await permissiveServer(t);
  const laxRsa = await permissiveServer(t, true);
  t.match((await probe(lax, { ...base, ciphers: cbc })).cipher, /SHA/, 'control: a lax server would negotiate CBC');
  t.equal((await probe(laxRsa, { ...base, ciphers: 'AES128-GCM-SHA256' })).cipher, 'AES128-GCM-SHA256', 'control: static RSA works elsewhere');
  await t.rejects(probe(ecPort, { ...base, ciphers: cbc }), 'ECDSA CBC refused');
  await t.rejects(probe(rsaPort, { ...base, ciphers: 'ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA256' }), 'RSA CBC refused');
  await t.rejects(probe(rsaPort, { ...base, ciphers: 'AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA' }), 'static RSA key exchange refused');
  await t.rejects(probe(rsaPort, { ...base, ciphers: 'DHE-RSA-AES128-GCM-SHA256:DHE-RSA-CHACHA20-POLY1305' }), 'DHE refused');
  t.equal((await probe(ecPort, base)).cipher, 'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-ECDSA AEAD negotiated');
  t.equal((await probe(rsaPort, { ...base, ciphers: 'ECDHE-RSA-CHACHA20-POLY1305' })).cipher, 'ECDHE-RSA-CHACHA20-POLY1305');
  // honorCipherOrder false: the client's preference decides.
  t.equal((await probe(ecPort, { ...base, ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256' })).cipher, 'ECDHE-ECDSA-CHACHA20-POLY1305');
});

t.test('ALPN on an http2 secure server: h2 preferred, http/1.1 allowed', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const leaf = await ca.issue({ dns: ['app.test'] });
  store.loadFromPem('app', leaf.certPem, leaf.keyPem, 'file');
  const server = http2.createSecureServer({ ...store.serverOptions(), allowHTTP1: true }, (_req, res) => res.end('ok'));
  const port = await listen(t, server);
  const base = { ca: ca.certPem, servername: 'app.test' };
  t.equal((await probe(port, { ...base, ALPNProtocols: ['http/1.1', 'h2'] })).alpn, 'h2', 'server preference h2');
  t.equal((await probe(port, { ...base, ALPNProtocols: ['http/1.1'] })).alpn, 'http/1.1');
  const h2 = http2.connect(`https://127.0.0.1:${port}`, { ca: ca.certPem, servername: 'app.test' });
  t.teardown(() => h2.close());
  const req = h2.request({ ':path': '/' });
  req.setEncoding('utf8');
  let body = '';
  req.on('data', (d: string) => (body += d));
  await once(req, 'end');
  t.equal(body, 'ok', 'a real HTTP/2 request works through the policy');
});
