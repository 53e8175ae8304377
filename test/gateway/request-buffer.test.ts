// `limits.request_buffer`: request bodies are read (up to that size) before the upstream is
// contacted, so slow uploads hold no upstream connection. Without it (bodies streamed), a few
// hundred connections each trickling a body held every connection of the upstream pool (256) and
// no other client was served: the first test shows both.
import t from 'tap';
import tls from 'node:tls';
import { LOOPBACK_LISTEN, rawTls, sleep, startGateway, startUpstream, until, type RunningGateway } from '../helpers/gateway.js';
import { parseConfig } from '../../src/config/index.js';

const site = (origin: string, limits = ''): string => `${LOOPBACK_LISTEN}
${limits}sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes:
      - { id: small, path: /small, access: public, max_body_size: 4kb }
      - { id: all, path: /, access: public, max_body_size: 10mb }
`;

/** `n` HTTPS connections, each announcing a 1000-byte body and sending one byte of it. */
function slowUploads(t: { teardown(fn: () => void): void }, gw: RunningGateway, n: number): void {
  const sockets: tls.TLSSocket[] = [];
  t.teardown(() => {
    for (const s of sockets) s.destroy();
  });
  for (let i = 0; i < n; i++) {
    const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test' });
    s.on('error', () => undefined);
    s.write('POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\nx');
    sockets.push(s);
  }
}

const answeredWithin = async (gw: RunningGateway, ms: number): Promise<number | 'no answer'> =>
  Promise.race([gw.request({ path: '/victim' }).then((r) => r.status), sleep(ms).then(() => 'no answer' as const)]);

t.test('300 slow uploads hold no upstream connection: another client is served at once (with request_buffer: 0b it is not)', async (t) => {
  const up = await startUpstream(t);
  let upstreamConnections = 0;
  up.server.on('connection', () => upstreamConnections++);
  const gw = await startGateway(t, site(up.origin));
  slowUploads(t, gw, 300);
  await sleep(1000);
  t.equal(upstreamConnections, 0, 'no upload reached the upstream: their bodies are still being read');
  t.equal(await answeredWithin(gw, 3000), 200, 'the victim is served');

  const up2 = await startUpstream(t);
  const streamed = await startGateway(t, site(up2.origin, 'limits: { request_buffer: 0b }\n'));
  slowUploads(t, streamed, 300);
  await sleep(1000);
  t.equal(await answeredWithin(streamed, 1500), 'no answer', 'streamed bodies hold the pool: the victim waits');
});

t.test('a body within the buffer reaches the upstream whole, with its length; a larger one is streamed, byte for byte', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin, 'limits: { request_buffer: 1kb }\n'));
  const small = await gw.request({ method: 'POST', path: '/a', headers: { 'content-type': 'text/plain' }, body: 'hello' });
  t.equal(small.status, 200);
  t.equal(up.seen[0]?.body.toString(), 'hello');
  t.equal(up.seen[0]?.headers['content-length'], '5');

  const big = Buffer.alloc(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251;
  t.equal((await gw.request({ method: 'POST', path: '/b', body: big })).status, 200);
  t.ok(up.seen[1]?.body.equals(big), 'the streamed body arrives exact (its first 1kb from memory)');

  // Chunked, in pieces: buffered whole (within), then streamed (beyond).
  const chunked = (parts: string[]): string =>
    `POST /c HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${parts.map((p) => `${p.length.toString(16)}\r\n${p}\r\n`).join('')}0\r\n\r\n`;
  t.match(await rawTls(gw.port, gw.ca, chunked(['ab', 'cd', 'ef'])), /^HTTP\/1\.1 200 /);
  t.equal(up.seen[2]?.body.toString(), 'abcdef');
  const long = ['x'.repeat(800), 'y'.repeat(800), 'z'.repeat(800)];
  t.match(await rawTls(gw.port, gw.ca, chunked(long)), /^HTTP\/1\.1 200 /);
  t.equal(up.seen[3]?.body.toString(), long.join(''));
});

t.test('a chunked body over the route limit is refused 413 while it is read: the upstream is never contacted', async (t) => {
  const up = await startUpstream(t);
  let upstreamConnections = 0;
  up.server.on('connection', () => upstreamConnections++);
  const gw = await startGateway(t, site(up.origin));
  const part = 'x'.repeat(1000);
  const req = `POST /small HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n${`3e8\r\n${part}\r\n`.repeat(6)}0\r\n\r\n`;
  t.match(await rawTls(gw.port, gw.ca, req), /^HTTP\/1\.1 413 /);
  t.equal(upstreamConnections, 0);
  await until(() => gw.logs.some((l) => l.type === 'access' && l.path === '/small'));
  t.equal(gw.logs.find((l) => l.type === 'access' && l.path === '/small')?.reason, 'GW_ERR_BODY_TOO_LARGE');
});

t.test('a client that leaves mid-body: nothing reaches the upstream, the line says 499 client_closed', async (t) => {
  const up = await startUpstream(t);
  let upstreamConnections = 0;
  up.server.on('connection', () => upstreamConnections++);
  const gw = await startGateway(t, site(up.origin));
  const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test' });
  s.on('error', () => undefined);
  s.write('POST /gone HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nhalf');
  await sleep(200);
  s.destroy();
  await until(() => gw.logs.some((l) => l.type === 'access' && l.path === '/gone'));
  const line = gw.logs.find((l) => l.type === 'access' && l.path === '/gone');
  t.equal(line?.status, 499);
  t.equal(line?.reason, 'client_closed');
  t.equal(upstreamConnections, 0);
});

t.test('limits.request_buffer: a size up to 64mb, 1mb by default, 0b to stream', async (t) => {
  const base = 'sites:\n  - hosts: [a.test]\n    upstream: http://127.0.0.1:1\n    routes: [{ path: /, access: public }]\n';
  t.equal(parseConfig(base, '/x.yml', {}).config.limits.requestBuffer, 1024 * 1024);
  t.equal(parseConfig(`limits: { request_buffer: 0b }\n${base}`, '/x.yml', {}).config.limits.requestBuffer, 0);
  t.throws(() => parseConfig(`limits: { request_buffer: 65mb }\n${base}`, '/x.yml', {}), /request_buffer: must be at most 64mb/);
});
