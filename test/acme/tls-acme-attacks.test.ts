// Attack tests on the certificate side of the gateway: the ClientHello-peeking TLS front (silent,
// half-sent, dripped, fragmented and non-TLS first bytes), TLS-ALPN-01 routing on the shared HTTPS
// port, an ACME CA that answers with a certificate we did not ask for (another key, other names),
// files planted in the ACME storage, and a reload that switches a host from ACME to a certificate
// you bring.
//
// Every test runs the real gateway (real TLS, ephemeral loopback ports). The CA is a small scripted
// RFC 8555 server over HTTPS (authorizations already valid, so no challenge round trip): it plays
// the misbehaving CA that Pebble cannot.
import t from 'tap';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { Duplex } from 'node:stream';
import { X509Certificate, randomBytes, webcrypto } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import acme from 'acme-client';
import { loadConfigFile } from '../../src/config/index.js';
import { buildGateway } from '../../src/gateway.js';
import { prepareCertificates } from '../../src/server/certificates.js';
import { AcmeStorage, certValidity } from '../../src/acme/storage.js';
import { memoryLogger, startGateway, startUpstream, until, sleep, type LogRecord, type Tap } from '../helpers/gateway.js';
import { appSite } from '../helpers/clients.js';

const crypto = webcrypto;
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY = 86_400_000;

// ---------------------------------------------------------------------------------------------
// Fixtures

interface MiniCa {
  readonly certPem: string;
  readonly name: string;
  /** A leaf for these names; with `publicKey` (a CSR's) no key is made and keyPem is ''. */
  issue(o: { dns?: string[]; ips?: string[]; publicKey?: x509.PublicKey; notBefore?: Date; notAfter?: Date }): Promise<{ certPem: string; keyPem: string }>;
}

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await crypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

async function miniCa(name: string): Promise<MiniCa> {
  const keys = await crypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const root = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: `01${randomBytes(8).toString('hex')}`,
      name: `CN=${name}`,
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + 3650 * DAY),
      keys,
      signingAlgorithm: SIGN,
      extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
    },
    crypto,
  );
  return {
    certPem: root.toString('pem'),
    name,
    async issue(o) {
      const own = o.publicKey === undefined ? await crypto.subtle.generateKey(EC, true, ['sign', 'verify']) : null;
      const names: x509.JsonGeneralName[] = [
        ...(o.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
        ...(o.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
      ];
      const cert = await x509.X509CertificateGenerator.create(
        {
          serialNumber: `01${randomBytes(8).toString('hex')}`,
          subject: `CN=${o.dns?.[0] ?? o.ips?.[0] ?? 'leaf'}`,
          issuer: root.subject,
          notBefore: o.notBefore ?? new Date(Date.now() - DAY),
          notAfter: o.notAfter ?? new Date(Date.now() + 90 * DAY),
          publicKey: o.publicKey ?? own!.publicKey,
          signingKey: keys.privateKey,
          signingAlgorithm: SIGN,
          extensions: [
            new x509.BasicConstraintsExtension(false, undefined, true),
            new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
            new x509.SubjectAlternativeNameExtension(names),
          ],
        },
        crypto,
      );
      return { certPem: cert.toString('pem'), keyPem: own === null ? '' : await keyPem(own.privateKey) };
    },
  };
}

type CaMode = 'good' | 'wrong-key' | 'wrong-names';

interface FakeAcme {
  readonly directoryUrl: string;
  readonly ca: MiniCa;
  /** What the next certificate download returns. */
  mode: CaMode;
  readonly orders: number[];
  readonly issued: string[];
}

/**
 * A scripted RFC 8555 CA over HTTPS on 127.0.0.1:0. Orders come back `ready` with `valid`
 * authorizations (acme-client then skips the challenges), finalize signs according to `mode`:
 * the CSR's key and names (good), the right names on another key, or the CSR's key for other names.
 */
async function fakeAcme(t: Tap, hosts: string[]): Promise<FakeAcme> {
  const ca = await miniCa('Fake ACME CA');
  const listener = await ca.issue({ ips: ['127.0.0.1'] });
  const state: FakeAcme = { directoryUrl: '', ca, mode: 'good', orders: [], issued: [] };
  const certs = new Map<string, string>();
  let base = '';
  let n = 0;
  const reply = (res: import('node:http').ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { 'content-type': 'application/json', 'replay-nonce': randomBytes(8).toString('hex'), ...headers });
    res.end(JSON.stringify(body));
  };
  const order = (id: string, status: string, extra: object = {}): object => ({
    status,
    expires: new Date(Date.now() + DAY).toISOString(),
    identifiers: hosts.map((value) => ({ type: 'dns', value })),
    authorizations: hosts.map((_h, i) => `${base}/authz/${id}/${i}`),
    finalize: `${base}/finalize/${id}`,
    ...extra,
  });
  const srv = https.createServer({ cert: listener.certPem, key: listener.keyPem }, (req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      void (async () => {
        const url = req.url ?? '';
        if (url === '/dir') return reply(res, 200, { newNonce: `${base}/nonce`, newAccount: `${base}/acct`, newOrder: `${base}/order` });
        if (url === '/nonce') return reply(res, 200, {});
        if (url === '/acct') return reply(res, 201, { status: 'valid' }, { location: `${base}/acct/1` });
        if (url === '/order') {
          const id = String(++n);
          state.orders.push(Date.now());
          return reply(res, 201, order(id, 'ready'), { location: `${base}/order/${id}` });
        }
        const authz = /^\/authz\/\d+\/(\d+)$/.exec(url);
        if (authz) return reply(res, 200, { status: 'valid', identifier: { type: 'dns', value: hosts[Number(authz[1])] }, challenges: [] });
        const fin = /^\/finalize\/(\d+)$/.exec(url);
        if (fin) {
          const id = fin[1]!;
          const jws = JSON.parse(body) as { payload: string };
          const { csr } = JSON.parse(Buffer.from(jws.payload, 'base64url').toString()) as { csr: string };
          const request = new x509.Pkcs10CertificateRequest(Buffer.from(csr, 'base64url'));
          const leaf =
            state.mode === 'wrong-key'
              ? await ca.issue({ dns: hosts })
              : await ca.issue({ dns: state.mode === 'wrong-names' ? ['evil.test'] : hosts, publicKey: request.publicKey });
          certs.set(id, `${leaf.certPem}\n${ca.certPem}`);
          state.issued.push(state.mode);
          return reply(res, 200, order(id, 'valid', { certificate: `${base}/cert/${id}` }));
        }
        const cert = /^\/cert\/(\d+)$/.exec(url);
        if (cert && certs.has(cert[1]!)) {
          res.writeHead(200, { 'content-type': 'application/pem-certificate-chain', 'replay-nonce': randomBytes(8).toString('hex') });
          res.end(certs.get(cert[1]!));
          return;
        }
        reply(res, 404, { type: 'urn:ietf:params:acme:error:malformed', detail: `no ${url}` });
      })().catch(() => res.destroy());
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  base = `https://127.0.0.1:${(srv.address() as net.AddressInfo).port}`;
  (state as { directoryUrl: string }).directoryUrl = `${base}/dir`;
  t.teardown(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
  return state;
}

type AcmeTuning = NonNullable<Parameters<typeof buildGateway>[0]['acme']>;

interface AcmeGateway {
  gw: Awaited<ReturnType<typeof buildGateway>>;
  port: number;
  logs: LogRecord[];
  dir: string;
  logger: ReturnType<typeof memoryLogger>;
}

/** The gateway as `portcullis start` builds it, with the ACME manager's knobs (backoff) tuned. */
async function acmeGateway(t: Tap, dir: string, yaml: string, tuning?: AcmeTuning): Promise<AcmeGateway> {
  const file = join(dir, 'gateway.yml');
  writeFileSync(file, yaml);
  const { config } = await loadConfigFile(file);
  const logs: LogRecord[] = [];
  const logger = memoryLogger(logs);
  const certificates = await prepareCertificates(config, logger);
  const gw = await buildGateway({ config, logger, certificates, ...(tuning === undefined ? {} : { acme: tuning }) });
  const addrs = await gw.listen();
  t.teardown(() => gw.close(1000));
  return { gw, port: addrs.https.port, logs, dir, logger };
}

function workDir(t: Tap): string {
  const dir = mkdtempSync(join(tmpdir(), 'tls-acme-attacks-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Peer {
  ok: boolean;
  error?: string;
  cert?: X509Certificate;
  alpn?: string | false;
}

/** A TLS handshake over `socket` (or a fresh TCP connection): what the server presented. */
function handshake(port: number, opts: tls.ConnectionOptions & { socket?: Duplex }): Promise<Peer> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts }, () => {
      const out: Peer = { ok: true, alpn: s.alpnProtocol ?? false };
      const cert = s.getPeerX509Certificate();
      if (cert !== undefined) out.cert = cert;
      s.destroy();
      resolve(out);
    });
    s.on('error', (err) => resolve({ ok: false, error: err.message }));
    setTimeout(() => {
      s.destroy();
      resolve({ ok: false, error: 'handshake timeout' });
    }, 8000).unref();
  });
}

/**
 * A duplex over a real TCP connection whose FIRST write (the ClientHello record) goes through
 * `shape` (dripped, re-framed…); everything after it passes unchanged.
 */
function shapedSocket(port: number, shape: (first: Buffer, tcp: net.Socket) => Promise<void>): Duplex {
  const tcp = net.connect(port, '127.0.0.1');
  tcp.setNoDelay(true);
  let first = true;
  const d = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      if (!first) {
        tcp.write(chunk, cb);
        return;
      }
      first = false;
      shape(chunk, tcp).then(() => cb(), cb);
    },
    read() {},
    final(cb) {
      tcp.end(cb);
    },
    destroy(err, cb) {
      tcp.destroy();
      cb(err);
    },
  });
  tcp.on('data', (c: Buffer) => d.push(c));
  tcp.on('end', () => d.push(null));
  tcp.on('error', (err) => d.destroy(err));
  return d;
}

const drip = async (first: Buffer, tcp: net.Socket): Promise<void> => {
  for (let i = 0; i < first.length; i++) {
    tcp.write(first.subarray(i, i + 1));
    await sleep(1);
  }
};

/** The first TLS record re-framed as two records, the split 40 bytes into the ClientHello. */
const twoRecords = async (first: Buffer, tcp: net.Socket): Promise<void> => {
  const len = first.readUInt16BE(3);
  const body = first.subarray(5, 5 + len);
  const head = (n: number): Buffer => Buffer.from([first[0]!, first[1]!, first[2]!, n >> 8, n & 0xff]);
  tcp.write(Buffer.concat([head(40), body.subarray(0, 40), head(len - 40), body.subarray(40), first.subarray(5 + len)]));
  await sleep(0);
};

async function challengeCert(host: string): Promise<{ certPem: string; keyPem: string; fingerprint: string }> {
  const authz = { identifier: { type: 'dns', value: host } } as unknown as Parameters<typeof acme.crypto.createAlpnCertificate>[0];
  const [key, cert] = await acme.crypto.createAlpnCertificate(authz, 'token.thumbprint');
  return { certPem: cert.toString(), keyPem: key.toString(), fingerprint: new X509Certificate(cert).fingerprint256 };
}

/** When a TCP connection to `port` that sends `bytes` (null: nothing) is closed by the gateway, in ms (-1: still open after `waitMs`). */
function closedAfter(port: number, bytes: Buffer | null, waitMs: number): Promise<number> {
  return new Promise((resolve) => {
    const start = Date.now();
    const s = net.connect(port, '127.0.0.1', () => {
      if (bytes !== null) s.write(bytes);
    });
    s.on('data', () => undefined);
    s.on('error', () => undefined);
    const timer = setTimeout(() => {
      s.destroy();
      resolve(-1);
    }, waitMs);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - start);
    });
  });
}

/** A TLS record header announcing a 512-byte ClientHello, and its first 6 bytes: half a hello. */
const HALF_HELLO = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);

// ---------------------------------------------------------------------------------------------
// The TLS front

t.test('a connection that never finishes its TLS handshake (silent, or half a ClientHello) is closed within about limits.headers_timeout', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, appSite(up.origin, undefined, 'limits: { headers_timeout: 1s }\n'));
  // The slowloris deadline was armed on 'secureConnection' only; before it, the TLS front waited
  // 10 s for a first byte and Node's tls.Server 120 s (its default handshakeTimeout) for the
  // handshake: measured 132 s (silent) and 122 s (half a ClientHello) with headers_timeout 1s.
  // Thousands of such sockets from one client held as many file descriptors for two minutes.
  const [silent, half] = await Promise.all([closedAfter(gw.port, null, 5000), closedAfter(gw.port, HALF_HELLO, 5000)]);
  t.ok(silent >= 0 && silent < 4000, `a silent connection is closed within headers_timeout + 3 s (closed after ${silent} ms; -1: still open at 5 s)`);
  t.ok(half >= 0 && half < 4000, `half a ClientHello is closed within headers_timeout + 3 s (closed after ${half} ms; -1: still open at 5 s)`);
  // Node's handshakeTimeout is an inactivity timer: a ClientHello dripped a byte every 300 ms
  // would restart it forever. The deadline counts from accept.
  const drip = await new Promise<number>((resolve) => {
    const start = Date.now();
    const s = net.connect(gw.port, '127.0.0.1');
    let i = 0;
    const pump = setInterval(() => {
      if (!s.destroyed) s.write(Buffer.from([HALF_HELLO[i % HALF_HELLO.length]!]));
      i++;
    }, 300);
    s.on('error', () => undefined);
    const giveUp = setTimeout(() => s.destroy(), 6000);
    s.on('close', () => {
      clearInterval(pump);
      clearTimeout(giveUp);
      resolve(Date.now() - start);
    });
  });
  t.ok(drip < 4000, `a ClientHello dripped a byte every 300 ms is cut within headers_timeout + 3 s (closed after ${drip} ms; 6000: still open)`);
  t.equal((await gw.request({ path: '/alive' })).status, 200, 'the gateway serves on');
});

t.test('non-TLS first bytes (plain HTTP, an SSLv2 hello, garbage, a TLS 9.x record) are closed at once, with or without a pending TLS-ALPN-01 challenge', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, appSite(up.origin));
  const probes: Record<string, Buffer> = {
    'plain HTTP': Buffer.from('GET / HTTP/1.1\r\nHost: app.test\r\n\r\n'),
    // SSLv2 CLIENT-HELLO: 2-byte length with the top bit set, msg type 1, version 3.1.
    'SSLv2 hello': Buffer.from('802e0103010015000000100000040000050000000a00000900000300000600000800000200000100000102030405060708090a0b0c0d0e0f', 'hex'),
    garbage: Buffer.from([0x00, 0xff, 0x13, 0x37, 0x00, 0x00, 0x00, 0x00]),
    'handshake record, version 9.9': Buffer.from([0x16, 0x09, 0x09, 0x00, 0x10, ...Buffer.alloc(16)]),
  };
  for (const pending of [false, true]) {
    if (pending) gw.gw.certificates.setAlpnChallenge('app.test', await challengeCert('app.test'));
    for (const [name, bytes] of Object.entries(probes)) {
      const ms = await closedAfter(gw.port, bytes, 5000);
      t.ok(ms >= 0 && ms < 2000, `${name}${pending ? ' (challenge pending)' : ''}: closed after ${ms} ms`);
    }
  }
  t.equal((await gw.request({ path: '/alive' })).status, 200, 'the gateway serves on');
});

t.test('TLS-ALPN-01 on the shared port: only an acme-tls/1 hello for the pending host gets the challenge certificate, however the hello arrives', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `listen: { https: 127.0.0.1:0, http: null, admin: null }
sites:
  - hosts: [app.test, other.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  const site = (await handshake(gw.port, { servername: 'app.test', ALPNProtocols: ['h2'] })).cert?.fingerprint256;
  t.ok(site, 'site certificate');

  // No challenge pending: acme-tls/1 next to h2 is an ordinary h2 connection with the site certificate.
  const idle = await handshake(gw.port, { servername: 'app.test', ALPNProtocols: ['acme-tls/1', 'h2'] });
  t.match(idle, { ok: true, alpn: 'h2' });
  t.equal(idle.cert?.fingerprint256, site);

  const ch = await challengeCert('app.test');
  gw.gw.certificates.setAlpnChallenge('app.test', ch);
  t.teardown(() => gw.gw.certificates.clearAlpnChallenge('app.test'));

  // A validator whose ClientHello arrives one byte per TCP segment is still answered.
  const dripped = await handshake(gw.port, { socket: shapedSocket(gw.port, drip), servername: 'app.test', ALPNProtocols: ['acme-tls/1'] });
  t.match(dripped, { ok: true, alpn: 'acme-tls/1' }, 'dripped acme-tls/1 hello: challenge handshake');
  t.equal(dripped.cert?.fingerprint256, ch.fingerprint, 'dripped acme-tls/1 hello: the challenge certificate');
  // A browser dripping its hello meanwhile gets the site.
  const browser = await handshake(gw.port, { socket: shapedSocket(gw.port, drip), servername: 'APP.TEST', ALPNProtocols: ['h2', 'http/1.1'] });
  t.match(browser, { ok: true, alpn: 'h2' });
  t.equal(browser.cert?.fingerprint256, site, 'dripped browser hello: the site certificate');

  // Never the challenge certificate to: another configured host, a hello without acme-tls/1, a
  // hello fragmented over two TLS records (the front does not reassemble: it goes to the site).
  const other = await handshake(gw.port, { servername: 'other.test', ALPNProtocols: ['acme-tls/1', 'h2'] });
  t.not(other.cert?.fingerprint256, ch.fingerprint, 'acme-tls/1 for a host without a pending challenge');
  t.equal(other.alpn, 'h2');
  const fragmented = await handshake(gw.port, { socket: shapedSocket(gw.port, twoRecords), servername: 'app.test', ALPNProtocols: ['acme-tls/1', 'h2'] });
  t.match(fragmented, { ok: true, alpn: 'h2' }, 'a hello over two records is an ordinary connection');
  t.equal(fragmented.cert?.fingerprint256, site);
  const h2 = await handshake(gw.port, { servername: 'app.test', ALPNProtocols: ['h2'] });
  t.equal(h2.cert?.fingerprint256, site);
  // A real request while the challenge is pending.
  t.equal((await gw.request({ path: '/during-challenge' })).status, 200);
  t.equal(up.seen.at(-1)?.url, '/during-challenge');
});

// ---------------------------------------------------------------------------------------------
// A CA that answers with a certificate we did not ask for

const FAST: AcmeTuning = { backoffMin: 300, backoffMax: 600, random: () => 0.5, checkInterval: 3_600_000 };

function acmeYaml(dir: string, ca: FakeAcme, origin: string): string {
  const bundle = join(dir, 'fake-ca.pem');
  writeFileSync(bundle, ca.ca.certPem);
  return `listen: { https: 127.0.0.1:0, http: null, admin: null }
tls:
  storage: ${join(dir, 'certs')}
  acme: { email: ops@app.test, directory: ${ca.directoryUrl}, ca_bundle: ${bundle}, challenge: tls-alpn-01 }
sites:
  - { id: app, hosts: [app.test], upstream: ${origin}, routes: [{ path: /, access: public }] }
`;
}

t.test('a renewal whose certificate has the right names but ANOTHER key is a failed order: not issued, the working files kept, retried', async (t) => {
  const ca = await fakeAcme(t, ['app.test']);
  ca.mode = 'wrong-key';
  const up = await startUpstream(t);
  const dir = workDir(t);
  // A working certificate in storage, 5 of its 65 days left: inside the renewal margin (a third).
  const storage = new AcmeStorage(join(dir, 'certs'), ca.directoryUrl);
  const working = await ca.ca.issue({ dns: ['app.test'], notBefore: new Date(Date.now() - 60 * DAY), notAfter: new Date(Date.now() + 5 * DAY) });
  await storage.saveSite('app', { ...working, hosts: ['app.test'], ...certValidity(working.certPem) });
  const workingFp = new X509Certificate(working.certPem).fingerprint256;
  const { gw, port, logs } = await acmeGateway(t, dir, acmeYaml(dir, ca, up.origin), FAST);
  await until(() => ca.issued.length >= 1, 10_000);
  // Backoff is 300–600 ms here: a failed renewal is tried again within ~1 s.
  await until(() => ca.orders.length >= 2, 3000);
  await sleep(200);
  const served = await handshake(port, { servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  t.equal(served.cert?.fingerprint256, workingFp, 'the working certificate is still served (the store refuses the mismatched one)');
  t.equal(logs.filter((l) => l.event === 'cert_issued').length, 0, 'no cert_issued event for a certificate that cannot be served');
  t.ok(logs.some((l) => l.event === 'cert_renewal_failed'), 'cert_renewal_failed is emitted');
  t.match(await gw.metrics.metrics(), /portcullis_acme_orders_total\{result="failure"\} [1-9]/, 'counted as a failed order');
  t.ok(ca.orders.length >= 2, `the renewal is retried with backoff (orders placed: ${ca.orders.length})`);
  const onDisk = await storage.loadSite('app', ['app.test']);
  t.equal(onDisk.kind, 'ok', `the working pair stays in storage for the next start (loadSite: ${onDisk.kind}${onDisk.kind === 'invalid' ? `, ${onDisk.reason}` : ''})`);
});

t.test('a CA certificate for other names is refused and retried; the next good one is served; a planted symlink is replaced, never written through', async (t) => {
  const ca = await fakeAcme(t, ['app.test']);
  ca.mode = 'wrong-names';
  const up = await startUpstream(t);
  const dir = workDir(t);
  // Plant the site key as a symlink to a file outside the storage, and the account key as a link to
  // a garbage file: the gateway must not write through either, nor trust what they point at.
  const outside = join(dir, 'outside.txt');
  writeFileSync(outside, 'not a key\n');
  const storageDir = new AcmeStorage(join(dir, 'certs'), ca.directoryUrl).dir;
  mkdirSync(storageDir, { recursive: true, mode: 0o700 });
  symlinkSync(outside, join(storageDir, 'app.key'));
  symlinkSync(outside, join(storageDir, 'account.key'));
  const { gw, port, logs } = await acmeGateway(t, dir, acmeYaml(dir, ca, up.origin), FAST);
  // The first order gets the wrong names; from the second on the CA behaves.
  await until(() => ca.issued.length >= 1, 10_000);
  ca.mode = 'good';
  await until(() => logs.some((l) => l.event === 'cert_issued'), 10_000);
  t.match(ca.issued, ['wrong-names', 'good']);
  const failed = logs.find((l) => l.event === 'cert_renewal_failed');
  t.match(failed, { host: 'app.test', error: /evil\.test/ }, 'the wrong names are refused with a reason');
  const served = await handshake(port, { servername: 'app.test', ca: ca.ca.certPem, ALPNProtocols: ['h2'] });
  t.ok(served.ok, 'handshake');
  t.equal(served.cert?.issuer, `CN=${ca.ca.name}`, 'the good certificate is served');
  t.match(served.cert?.subjectAltName, /^DNS:app\.test$/);
  t.ok(gw.ready().ready);

  t.equal(readFileSync(outside, 'utf8'), 'not a key\n', 'the file the symlinks pointed at is untouched');
  for (const name of ['app.key', 'account.key']) {
    const p = join(storageDir, name);
    t.notOk(lstatSync(p).isSymbolicLink(), `${name} is a regular file now`);
    t.equal(statSync(p).mode & 0o777, 0o600, `${name} is 0600`);
  }
  t.same(readdirSync(storageDir).filter((f) => f.endsWith('.tmp')), [], 'no temp files left');
  t.ok(existsSync(join(storageDir, 'app.crt')));
});

// ---------------------------------------------------------------------------------------------
// Reload

t.test('after a reload that switches a host from ACME to a certificate you bring, the brought certificate is served', async (t) => {
  const dir = workDir(t);
  const up = await startUpstream(t);
  // An ACME certificate already in storage (valid 80 more days): installed at start, no order.
  // The directory is a closed port: the background check cannot reach it, nothing is ordered.
  const directory = 'https://127.0.0.1:9/dir';
  const acmeCa = await miniCa('Old ACME CA');
  const old = await acmeCa.issue({ dns: ['app.test'], notAfter: new Date(Date.now() + 80 * DAY) });
  await new AcmeStorage(join(dir, 'certs'), directory).saveSite('app', { ...old, hosts: ['app.test'], ...certValidity(old.certPem) });
  const first = `listen: { https: 127.0.0.1:0, http: null, admin: null }
tls:
  storage: ${join(dir, 'certs')}
  acme: { email: ops@app.test, directory: ${directory}, challenge: tls-alpn-01 }
sites:
  - { id: app, hosts: [app.test], upstream: ${up.origin}, routes: [{ path: /, access: public }] }
`;
  const { gw, port, logger } = await acmeGateway(t, dir, first, FAST);
  const before = await handshake(port, { servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  t.equal(before.cert?.issuer, 'CN=Old ACME CA', 'the stored ACME certificate is served');

  // The operator brings a certificate of their own (e.g. the ACME key leaked) and reloads, as
  // `portcullis start` does on SIGHUP: prepareCertificates on the live store, then reload.
  const ownCa = await miniCa('Own CA');
  const own = await ownCa.issue({ dns: ['app.test'], notAfter: new Date(Date.now() + 30 * DAY) });
  writeFileSync(join(dir, 'own.crt'), own.certPem);
  writeFileSync(join(dir, 'own.key'), own.keyPem, { mode: 0o600 });
  const second = join(dir, 'second.yml');
  writeFileSync(
    second,
    `listen: { https: 127.0.0.1:0, http: null, admin: null }
tls:
  storage: ${join(dir, 'certs')}
  certificates: [{ cert: own.crt, key: own.key }]
sites:
  - { id: app, hosts: [app.test], upstream: ${up.origin}, routes: [{ path: /, access: public }] }
`,
  );
  const { config } = await loadConfigFile(second);
  await prepareCertificates(config, logger, gw.certificates);
  await gw.reload(config);
  const after = await handshake(port, { servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  t.equal(after.cert?.issuer, 'CN=Own CA', 'the certificate now configured is served (as after a restart)');
  const noSni = await handshake(port, { ALPNProtocols: ['http/1.1'] });
  t.equal(noSni.cert?.issuer, 'CN=Own CA', 'and to clients without SNI (the default certificate)');
  t.same(
    gw.certificates.list().map((c) => c.source),
    ['file'],
    'no ACME certificate is left in the live store once ACME is off',
  );
});
