import { once } from 'node:events';
import * as net from 'node:net';
import * as tls from 'node:tls';
import fc from 'fast-check';
import t from 'tap';
import { MAX_HELLO_BYTES, parseClientHello } from '../../src/tls/client-hello.js';

/** A real ClientHello as Node/OpenSSL sends it, captured on a raw TCP server. */
async function capture(opts: tls.ConnectionOptions): Promise<Buffer> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const got = new Promise<Buffer>((resolve) => {
    server.once('connection', (s) => {
      let buf = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const len = buf.length >= 5 ? buf.readUInt16BE(3) + 5 : Infinity;
        if (buf.length >= len) {
          resolve(buf.subarray(0, len));
          s.destroy();
        }
      });
    });
  });
  const client = tls.connect({ host: '127.0.0.1', port, ...opts });
  client.on('error', () => undefined);
  const hello = await got;
  client.destroy();
  await new Promise((r) => server.close(r));
  return hello;
}

t.test('reads SNI and ALPN from real ClientHellos', async (t) => {
  const acme = await capture({ servername: 'App.Test', ALPNProtocols: ['acme-tls/1'] });
  t.same(parseClientHello(acme), { kind: 'hello', serverName: 'App.Test', alpn: ['acme-tls/1'] });
  const browserish = await capture({ servername: 'www.app.test', ALPNProtocols: ['h2', 'http/1.1'] });
  t.same(parseClientHello(browserish), { kind: 'hello', serverName: 'www.app.test', alpn: ['h2', 'http/1.1'] });
  const bare = await capture({ ALPNProtocols: [] });
  t.same(parseClientHello(bare), { kind: 'hello', serverName: null, alpn: [] }, 'no SNI, no ALPN');
  const tls12 = await capture({ servername: 'a.test', maxVersion: 'TLSv1.2', ALPNProtocols: ['acme-tls/1'] });
  t.same(parseClientHello(tls12), { kind: 'hello', serverName: 'a.test', alpn: ['acme-tls/1'] });

  // Every strict prefix is "incomplete", never a wrong answer or a throw.
  for (let n = 0; n < acme.length; n++) {
    const r = parseClientHello(acme.subarray(0, n));
    if (r.kind !== 'incomplete') t.fail(`prefix ${n}: ${JSON.stringify(r)}`);
  }
  // Bytes after the first record (e.g. early data) do not matter.
  t.equal(parseClientHello(Buffer.concat([acme, Buffer.from([23, 3, 3, 0, 1, 0])])).kind, 'hello');
});

/** Build a ClientHello by hand so each field can be broken on purpose. */
function hello(opts: { ext?: Buffer; sessionId?: number; suites?: number; compression?: number; recordType?: number; handshakeType?: number; helloLenDelta?: number; extLenDelta?: number }): Buffer {
  const ext = opts.ext ?? Buffer.alloc(0);
  const sid = Buffer.alloc(opts.sessionId ?? 32, 1);
  const suites = Buffer.alloc(opts.suites ?? 2, 0x13);
  const comp = Buffer.alloc(opts.compression ?? 1, 0);
  const extLen = Buffer.alloc(2);
  extLen.writeUInt16BE(ext.length + (opts.extLenDelta ?? 0));
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7),
    Buffer.from([sid.length]),
    sid,
    u16(suites.length),
    suites,
    Buffer.from([comp.length]),
    comp,
    ...(opts.ext === undefined ? [] : [extLen, ext]),
  ]);
  const hsLen = body.length + (opts.helloLenDelta ?? 0);
  const hs = Buffer.concat([Buffer.from([opts.handshakeType ?? 1, (hsLen >> 16) & 0xff, (hsLen >> 8) & 0xff, hsLen & 0xff]), body]);
  return Buffer.concat([Buffer.from([opts.recordType ?? 22, 3, 1]), u16(hs.length), hs]);
}
function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
function extension(type: number, body: Buffer): Buffer {
  return Buffer.concat([u16(type), u16(body.length), body]);
}
function sni(...names: [number, string][]): Buffer {
  const list = Buffer.concat(names.map(([type, n]) => Buffer.concat([Buffer.from([type]), u16(Buffer.byteLength(n, 'latin1')), Buffer.from(n, 'latin1')])));
  return extension(0, Buffer.concat([u16(list.length), list]));
}
function alpn(...protos: string[]): Buffer {
  const list = Buffer.concat(protos.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, 'latin1')])));
  return extension(16, Buffer.concat([u16(list.length), list]));
}

t.test('hand-built hellos: accepted shapes', async (t) => {
  t.same(parseClientHello(hello({})), { kind: 'hello', serverName: null, alpn: [] }, 'no extensions block at all');
  t.same(parseClientHello(hello({ ext: Buffer.concat([sni([0, 'a.test']), alpn('acme-tls/1')]) })), { kind: 'hello', serverName: 'a.test', alpn: ['acme-tls/1'] });
  t.same(parseClientHello(hello({ ext: Buffer.concat([extension(0xfafa, Buffer.alloc(0)), sni([0, 'a.test'])]) })), { kind: 'hello', serverName: 'a.test', alpn: [] }, 'unknown (GREASE) extension skipped');
  t.same(parseClientHello(hello({ ext: sni([1, 'ignored'], [0, 'a.test']) })), { kind: 'hello', serverName: 'a.test', alpn: [] }, 'unknown name types skipped');
  t.same(parseClientHello(hello({ sessionId: 0 })), { kind: 'hello', serverName: null, alpn: [] }, 'empty session id');
});

t.test('malformed input is "invalid" (passed through to the real server), never a throw', async (t) => {
  const cases: [string, Buffer][] = [
    ['HTTP on the TLS port', Buffer.from('GET / HTTP/1.1\r\n')],
    ['one non-handshake byte', Buffer.from([0x47])],
    ['alert record', hello({ recordType: 21 })],
    ['SSLv2-style header', Buffer.from([0x80, 0x2e, 0x01, 0x03, 0x01])],
    ['record version 2.x', Buffer.from([22, 2, 0, 0, 4, 1, 0, 0, 0])],
    ['record too long', Buffer.from([22, 3, 1, 0x40, 0x01])],
    ['empty record', Buffer.from([22, 3, 1, 0, 0])],
    ['not a ClientHello', hello({ handshakeType: 2 })],
    ['hello continues in another record', hello({ helloLenDelta: 1 })],
    ['hello shorter than record (trailing)', hello({ helloLenDelta: -1 })],
    ['session id > 32', hello({ sessionId: 33 })],
    ['odd cipher suites length', hello({ suites: 3 })],
    ['no cipher suites', hello({ suites: 0 })],
    ['no compression', hello({ compression: 0 })],
    ['extensions length too long', hello({ ext: sni([0, 'a.test']), extLenDelta: 1 })],
    ['extensions length too short', hello({ ext: sni([0, 'a.test']), extLenDelta: -1 })],
    ['duplicate SNI extension', hello({ ext: Buffer.concat([sni([0, 'a.test']), sni([0, 'b.test'])]) })],
    ['two host names', hello({ ext: sni([0, 'a.test'], [0, 'b.test']) })],
    ['empty host name', hello({ ext: sni([0, '']) })],
    ['NUL in host name', hello({ ext: sni([0, 'a.test\u0000.evil']) })],
    ['space in host name', hello({ ext: sni([0, 'a test']) })],
    ['non-ASCII host name', hello({ ext: sni([0, 'ä.test']) })],
    ['empty SNI list', hello({ ext: extension(0, u16(0)) })],
    ['SNI list length lies', hello({ ext: extension(0, Buffer.concat([u16(50), Buffer.from([0, 0, 1, 0x61])])) })],
    ['SNI trailing bytes', hello({ ext: extension(0, Buffer.concat([u16(4), Buffer.from([0, 0, 1, 0x61, 9])])) })],
    ['empty ALPN list', hello({ ext: extension(16, u16(0)) })],
    ['empty ALPN name', hello({ ext: extension(16, Buffer.concat([u16(1), Buffer.from([0])])) })],
    ['ALPN name runs past list', hello({ ext: extension(16, Buffer.concat([u16(3), Buffer.from([9, 0x61, 0x62])])) })],
    ['duplicate ALPN extension', hello({ ext: Buffer.concat([alpn('acme-tls/1'), alpn('h2')]) })],
    ['extension body runs past block', hello({ ext: Buffer.concat([u16(16), u16(200), Buffer.from([0, 1])]) })],
  ];
  for (const [name, bytes] of cases) {
    const r = parseClientHello(bytes);
    t.equal(r.kind, 'invalid', name);
  }
});

t.test('fuzz: arbitrary and mutated bytes never throw and never yield an unvalidated name', async (t) => {
  const real = await capture({ servername: 'a.test', ALPNProtocols: ['acme-tls/1', 'h2'] });
  const check = (bytes: Uint8Array): boolean => {
    const r = parseClientHello(bytes);
    if (r.kind === 'hello' && r.serverName !== null) return /^[A-Za-z0-9._-]{1,255}$/.test(r.serverName);
    return true;
  };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), check), { numRuns: 2000 });
  // Mutations of a real hello: flip bytes at random positions.
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(real.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), (flips) => {
      const m = Buffer.from(real);
      for (const [i, v] of flips) m[i] = v;
      return check(m);
    }),
    { numRuns: 3000 },
  );
  // A handshake-looking header claiming the maximum record: incomplete until that many bytes.
  const big = Buffer.alloc(MAX_HELLO_BYTES);
  big.set([22, 3, 1, 0x40, 0x00, 1]);
  t.equal(parseClientHello(big.subarray(0, 100)).kind, 'incomplete');
  t.equal(parseClientHello(big).kind, 'invalid', 'complete but garbage -> invalid');
});
