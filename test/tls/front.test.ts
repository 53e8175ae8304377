// TLS-ALPN-01 (RFC 8737) on the SAME port as HTTPS: an http2 secure server (as the lead builds it)
// behind createTlsFront. Every check is a real handshake.
import { once } from 'node:events';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import acme from 'acme-client';
import t from 'tap';
import { CertificateStore, createTlsFront, type TlsFrontEvent } from '../../src/tls/index.js';
import { createTestCa, probe, type TestCa } from './helpers.js';

let ca: TestCa;
t.before(async () => {
  ca = await createTestCa();
});

const KEY_AUTH = 'token123.thumbprint456';

async function challengeCert(host: string): Promise<{ certPem: string; keyPem: string }> {
  const authz = { identifier: { type: 'dns', value: host } } as unknown as Parameters<typeof acme.crypto.createAlpnCertificate>[0];
  const [key, cert] = await acme.crypto.createAlpnCertificate(authz, KEY_AUTH);
  return { certPem: cert.toString(), keyPem: key.toString() };
}

async function setup(t: Tap, helloTimeoutMs?: number) {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const leaf = await ca.issue({ dns: ['app.test', 'other.test'], cn: 'normal' });
  store.loadFromPem('site', leaf.certPem, leaf.keyPem, 'acme');
  const app = http2.createSecureServer({ ...store.serverOptions(), allowHTTP1: true }, (req, res) => res.end(`hello ${req.httpVersion}`));
  const clientErrors: Error[] = [];
  app.on('tlsClientError', (err) => clientErrors.push(err));
  const sessions = new Set<http2.ServerHttp2Session>();
  app.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  const events: TlsFrontEvent[] = [];
  const front = createTlsFront({ store, target: app, onEvent: (e) => events.push(e), ...(helloTimeoutMs === undefined ? {} : { helloTimeoutMs }) });
  const { port } = await front.listen(0, '127.0.0.1');
  t.teardown(async () => {
    for (const s of sessions) s.destroy();
    await Promise.all([front.close(), new Promise((r) => app.close(r))]);
  });
  return { store, app, front, port, events, clientErrors };
}
type Tap = { teardown(fn: () => unknown): void };

const acmeClient = { servername: 'app.test', ALPNProtocols: ['acme-tls/1'], rejectUnauthorized: false };

t.test('acme-tls/1 clients get the challenge certificate; everyone else the normal one (concurrently)', async (t) => {
  const { store, port, events } = await setup(t);
  const ch = await challengeCert('app.test');

  // No challenge pending: an acme-tls/1 client must not get acme-tls/1 (and not a challenge cert).
  const before = await probe(port, acmeClient).catch((err: Error) => err);
  if (!(before instanceof Error)) {
    t.not(before.alpn, 'acme-tls/1');
    t.equal(before.peer.subject, 'CN=normal');
  } else t.pass('handshake refused without a pending challenge');

  store.setAlpnChallenge('App.Test.', ch);
  const runs = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      i % 2 === 0 ? probe(port, acmeClient) : probe(port, { ca: ca.certPem, servername: 'app.test', ALPNProtocols: ['h2', 'http/1.1'] }),
    ),
  );
  for (const [i, r] of runs.entries()) {
    if (i % 2 === 0) {
      t.equal(r.alpn, 'acme-tls/1', `acme client ${i} negotiated acme-tls/1`);
      t.ok(acme.crypto.isAlpnCertificateAuthorizationValid(r.peer.toString(), KEY_AUTH), `acme client ${i} got the challenge certificate`);
    } else {
      t.equal(r.alpn, 'h2', `normal client ${i} negotiated h2`);
      t.equal(r.peer.subject, 'CN=normal', `normal client ${i} got the normal certificate`);
    }
  }
  t.equal(events.filter((e) => e.event === 'tls_alpn_challenge_served').length, 4);

  // Same host, no acme-tls/1 offered (a browser while the challenge is pending): normal service.
  const h11 = await probe(port, { ca: ca.certPem, servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  t.equal(h11.alpn, 'http/1.1');
  t.equal(h11.peer.subject, 'CN=normal');
  // acme-tls/1 for a host WITHOUT a pending challenge: never the challenge certificate.
  const other = await probe(port, { ...acmeClient, servername: 'other.test' }).catch((err: Error) => err);
  if (!(other instanceof Error)) t.equal(other.peer.subject, 'CN=normal', 'other host: normal certificate');
  else t.pass('other host: refused');
  // A real HTTP/2 request on the shared port, while the challenge is pending.
  const session = http2.connect(`https://127.0.0.1:${port}`, { ca: ca.certPem, servername: 'app.test' });
  t.teardown(() => session.close());
  const req = session.request({ ':path': '/' });
  req.setEncoding('utf8');
  let body = '';
  req.on('data', (d: string) => (body += d));
  await once(req, 'end');
  t.equal(body, 'hello 2.0');

  store.clearAlpnChallenge('app.test');
  t.notOk(store.hasAlpnChallenges());
  const after = await probe(port, acmeClient).catch((err: Error) => err);
  if (!(after instanceof Error)) {
    t.not(after.alpn, 'acme-tls/1', 'after clear: no acme-tls/1');
    t.equal(after.peer.subject, 'CN=normal');
  } else t.pass('after clear: refused');
});

t.test('garbage, plain HTTP and unfinished hellos go to the real server unchanged', async (t) => {
  const { store, port, events, clientErrors } = await setup(t, 50);
  store.setAlpnChallenge('app.test', await challengeCert('app.test'));

  // Plain HTTP on the HTTPS port: passed through; the TLS server rejects it.
  const raw = net.connect(port, '127.0.0.1');
  raw.on('error', () => undefined);
  raw.write('GET / HTTP/1.1\r\nHost: app.test\r\n\r\n');
  await once(raw, 'close');
  t.ok(clientErrors.length >= 1, 'the HTTPS server saw (and refused) the bytes');

  // A client that says nothing: after the hello timeout the socket is handed over as it is, and a
  // handshake started later on the same TCP connection is served by the normal server.
  const slow = net.connect(port, '127.0.0.1');
  await once(slow, 'connect');
  while (!events.some((e) => e.event === 'client_hello_timeout')) await new Promise((r) => setImmediate(r));
  const late = tls.connect({ socket: slow, servername: 'app.test', ca: ca.certPem, ALPNProtocols: ['acme-tls/1', 'h2'] });
  await once(late, 'secureConnect');
  t.equal(late.alpnProtocol, 'h2', 'after the timeout it is an ordinary HTTPS connection');
  t.equal(late.getPeerX509Certificate()?.subject, 'CN=normal');
  late.destroy();
});

t.test('a ClientHello split across TCP segments is still routed', async (t) => {
  const { store, port } = await setup(t);
  store.setAlpnChallenge('app.test', await challengeCert('app.test'));
  // A duplex that forwards to TCP but sends the first write in two pieces, a tick apart.
  const tcp = net.connect(port, '127.0.0.1');
  await once(tcp, 'connect');
  let first = true;
  const splitter = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      if (!first) return void tcp.write(chunk, cb);
      first = false;
      tcp.write(chunk.subarray(0, 7));
      setTimeout(() => tcp.write(chunk.subarray(7), cb), 20);
    },
    read() {},
    final(cb) {
      tcp.end(cb);
    },
  });
  tcp.on('data', (d) => splitter.push(d));
  tcp.on('end', () => splitter.push(null));
  tcp.on('error', (err) => splitter.destroy(err));
  t.teardown(() => tcp.destroy());
  const s = tls.connect({ socket: splitter, ...acmeClient });
  await once(s, 'secureConnect');
  t.equal(s.alpnProtocol, 'acme-tls/1');
  t.ok(acme.crypto.isAlpnCertificateAuthorizationValid(s.getPeerX509Certificate()?.toString() ?? '', KEY_AUTH));
  s.destroy();
});

t.test('challenge certificates are checked before they are installed', async (t) => {
  const store = new CertificateStore({ minVersion: 'TLSv1.2' });
  const a = await challengeCert('app.test');
  const b = await challengeCert('app.test');
  t.throws(() => store.setAlpnChallenge('app.test', { certPem: a.certPem, keyPem: b.keyPem }), { code: 'GW_ERR_TLS_CERT' });
  t.throws(() => store.setAlpnChallenge('app.test', { certPem: 'nope', keyPem: a.keyPem }), { code: 'GW_ERR_TLS_CERT' });
  t.notOk(store.hasAlpnChallenges());
});

t.test('no pending challenge: connections go straight to the server (no peeking)', async (t) => {
  const { port } = await setup(t);
  const r = await probe(port, { ca: ca.certPem, servername: 'app.test', ALPNProtocols: ['h2'] });
  t.equal(r.alpn, 'h2');
  t.equal(r.peer.subject, 'CN=normal');
});

t.test('accepted sockets have Nagle off, like Node HTTP servers (a headers-then-body response must not wait for a delayed ACK)', async (t) => {
  const { app, port } = await setup(t);
  const seen = once(app, 'connection');
  const r = await probe(port, { ca: ca.certPem, servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  t.equal(r.peer.subject, 'CN=normal');
  const [socket] = (await seen) as [net.Socket];
  // Node keeps the requested state under an internal symbol (no public getter exists).
  const sym = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kSetNoDelay');
  t.ok(sym, 'Node 20 and 24 keep it as kSetNoDelay');
  if (sym === undefined) return;
  t.equal((socket as unknown as Record<symbol, unknown>)[sym], true);
});
