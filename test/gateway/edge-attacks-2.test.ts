// Fifth round of attack tests: the TLS policy and certificate selection as a real client sees them
// (old versions, weak suites, SNI shapes, ALPN, renegotiation), HTTP/2 abuse shapes (rapid reset,
// oversized header lists, ping floods, a body on GET, a stream that never ends), WebSocket proxying
// robustness (a lying upstream handshake, an unrequested subprotocol, messages sent before the
// upstream answered, odd close codes) and configuration secrets / YAML shapes through the CLI.
//
// Every test runs a real gateway (real TLS, ephemeral loopback ports) in front of a real upstream.
import t from 'tap';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';
import { LOOPBACK_LISTEN, startGateway, startUpstream, type RunningGateway, type Tap, sleep, until } from '../helpers/gateway.js';
import { appSite as site, wsAccept } from '../helpers/clients.js';
import { makeCert } from '../config/certs.js';

interface Hs {
  ok: boolean;
  error?: string;
  protocol?: string | null;
  cipher?: string;
  alpn?: string | false | null;
  sans?: string;
}

function handshake(port: number, opts: tls.ConnectionOptions): Promise<Hs> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts }, () => {
      const out: Hs = {
        ok: true,
        protocol: s.getProtocol(),
        cipher: s.getCipher().name,
        alpn: s.alpnProtocol,
        sans: s.getPeerCertificate().subjectaltname,
      };
      s.destroy();
      resolve(out);
    });
    s.on('error', (err) => resolve({ ok: false, error: err.message }));
  });
}

/** The gateway is still serving a plain client. */
async function aliveStatus(gw: RunningGateway): Promise<number> {
  const res = await gw.request({ path: '/alive' });
  return res.status;
}

function h2connect(gw: RunningGateway, settings?: http2.Settings): http2.ClientHttp2Session {
  const s = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test', settings });
  s.on('error', () => undefined);
  return s;
}

// ---------------------------------------------------------------------------------------------
// 1. TLS policy and certificate selection

t.test('TLS: 1.0/1.1 refused; TLS 1.2 CBC, static-RSA and 3DES suites refused; a good suite accepted', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  for (const v of ['TLSv1', 'TLSv1.1'] as const) {
    const r = await handshake(gw.port, { servername: 'app.test', minVersion: v, maxVersion: v, ciphers: 'DEFAULT:@SECLEVEL=0' });
    t.notOk(r.ok, `${v} refused (${r.error ?? r.protocol})`);
  }
  for (const c of ['ECDHE-ECDSA-AES128-SHA', 'ECDHE-RSA-AES128-SHA', 'ECDHE-ECDSA-AES256-SHA384', 'AES128-GCM-SHA256', 'AES256-SHA', 'DHE-RSA-AES128-GCM-SHA256']) {
    const r = await handshake(gw.port, { servername: 'app.test', maxVersion: 'TLSv1.2', ciphers: `${c}:@SECLEVEL=0` });
    t.notOk(r.ok, `TLS 1.2 ${c} refused (${r.error ?? r.cipher})`);
  }
  const good = await handshake(gw.port, { servername: 'app.test', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256' });
  t.ok(good.ok, `TLS 1.2 ECDHE AES-GCM accepted (${good.error ?? good.cipher})`);
  t.equal(good.protocol, 'TLSv1.2');
});

t.test('SNI: exact name in any case or with a trailing dot picks its site certificate; no SNI, unknown SNI and an IP get the default', async (t) => {
  const up = await startUpstream(t);
  const a = await makeCert({ dns: ['a.test'] });
  const b = await makeCert({ dns: ['b.test'] });
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-sni-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a.pem'), a.cert);
  writeFileSync(join(dir, 'a.key'), a.key);
  writeFileSync(join(dir, 'b.pem'), b.cert);
  writeFileSync(join(dir, 'b.key'), b.key);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}tls:
  certificates:
    - { cert: ${join(dir, 'a.pem')}, key: ${join(dir, 'a.key')} }
    - { cert: ${join(dir, 'b.pem')}, key: ${join(dir, 'b.key')} }
sites:
  - hosts: [a.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
  - hosts: [b.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  for (const sn of ['b.test', 'B.TEST', 'b.test.', 'B.Test.']) {
    const r = await handshake(gw.port, { servername: sn });
    t.equal(r.sans, 'DNS:b.test', `SNI ${sn}: b.test's certificate (${r.error ?? ''})`);
  }
  for (const sn of ['a.test', 'A.TEST.']) {
    const r = await handshake(gw.port, { servername: sn });
    t.equal(r.sans, 'DNS:a.test', `SNI ${sn}: a.test's certificate`);
  }
  // No SNI at all (servername '' sends none), an unknown name, a name that only ends like ours.
  for (const sn of ['', 'unknown.test', 'xb.test', 'test', 'b.test..']) {
    const r = await handshake(gw.port, { servername: sn });
    t.ok(r.ok, `SNI "${sn}": handshake completes with the default (${r.error ?? ''})`);
    t.equal(r.sans, 'DNS:a.test', `SNI "${sn}": the default (first loaded) certificate, never b.test's`);
  }
  // HTTPS by IP: Node sends no SNI for an IP; the default certificate.
  const ip = await handshake(gw.port, {});
  t.equal(ip.sans, 'DNS:a.test', 'connect by IP: the default certificate');
});

t.test('ALPN: h2 and http/1.1 negotiated as offered; an unknown protocol alone never yields a made-up protocol', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const h2 = await handshake(gw.port, { servername: 'app.test', ALPNProtocols: ['h2', 'http/1.1'] });
  t.equal(h2.alpn, 'h2');
  const h1 = await handshake(gw.port, { servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  t.equal(h1.alpn, 'http/1.1');
  const h1first = await handshake(gw.port, { servername: 'app.test', ALPNProtocols: ['http/1.1', 'h2'] });
  t.equal(h1first.alpn, 'h2', 'server preference: h2');
  const odd = await handshake(gw.port, { servername: 'app.test', ALPNProtocols: ['spdy/3', 'h2c'] });
  t.ok(!odd.ok || odd.alpn === false, `unknown protocols only: refused or no ALPN (${odd.error ?? String(odd.alpn)})`);
  t.equal(await aliveStatus(gw), 200, 'the gateway still serves another client');
});

function renegotiate(port: number, alpn: string): Promise<{ connected: boolean; renegotiated: boolean; error?: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, servername: 'app.test', maxVersion: 'TLSv1.2', ALPNProtocols: [alpn] }, () => {
      const started = s.renegotiate({ rejectUnauthorized: false }, (err) => {
        s.destroy();
        resolve({ connected: true, renegotiated: err === null || err === undefined, error: err?.message });
      });
      if (!started) {
        s.destroy();
        resolve({ connected: true, renegotiated: false, error: 'renegotiate() returned false' });
      }
      // HTTP/1.1: a request after the renegotiation keeps the exchange going for OpenSSL to act on.
      if (alpn === 'http/1.1') s.write('GET /alive HTTP/1.1\r\nHost: app.test\r\n\r\n');
    });
    s.on('error', (err) => resolve({ connected: false, renegotiated: false, error: err.message }));
    setTimeout(() => {
      s.destroy();
      resolve({ connected: true, renegotiated: false, error: 'timeout' });
    }, 3000).unref();
  });
}

t.test('TLS 1.2 client-initiated renegotiation is refused (HTTP/1.1 and HTTP/2)', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  for (const alpn of ['http/1.1', 'h2']) {
    const r = await renegotiate(gw.port, alpn);
    t.comment(`${alpn}: ${JSON.stringify(r)}`);
    t.notOk(r.renegotiated, `${alpn}: renegotiation refused (${r.error ?? 'it succeeded'})`);
  }
  t.equal(await aliveStatus(gw), 200, 'the gateway still serves another client');
});

// ---------------------------------------------------------------------------------------------
// 2. HTTP/2 abuse shapes

t.test('HTTP/2 rapid reset: 1000 streams opened and reset at once never become a flood of upstream requests; the gateway serves on', async (t) => {
  let open = 0;
  let peak = 0;
  const up = await startUpstream(t, (_req, res) => {
    open++;
    peak = Math.max(peak, open);
    setTimeout(() => {
      open--;
      res.end('slow');
    }, 300);
  });
  const gw = await startGateway(t, site(up.origin));
  const s = h2connect(gw);
  t.teardown(() => s.destroy());
  await new Promise<void>((r) => s.once('remoteSettings', () => r()));
  let opened = 0;
  for (let round = 0; round < 10; round++) {
    for (let i = 0; i < 100; i++) {
      const st = s.request({ ':path': `/r${round}-${i}`, ':authority': 'app.test' });
      st.on('error', () => undefined);
      opened++;
      st.close(http2.constants.NGHTTP2_CANCEL);
    }
    await sleep(5);
  }
  await sleep(1500);
  t.equal(opened, 1000);
  t.ok(up.seen.length <= 128, `upstream saw ${up.seen.length} of 1000 reset streams (at most one stream-limit's worth)`);
  t.ok(peak <= 128, `at most 128 upstream requests at once (peak ${peak})`);
  t.equal(await aliveStatus(gw), 200, 'the gateway still serves another client');
});

t.test('HTTP/2: a header list over limits.max_header_size is refused (431 or a reset stream), never forwarded; the session or gateway serves on', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin, undefined, 'limits: { max_header_size: 8kb }\n'));
  const s = h2connect(gw);
  t.teardown(() => s.destroy());
  await new Promise<void>((r) => s.once('remoteSettings', () => r()));
  const headers: http2.OutgoingHttpHeaders = { ':path': '/big', ':authority': 'app.test' };
  for (let i = 0; i < 40; i++) headers[`x-h${i}`] = 'v'.repeat(1000);
  const outcome = await new Promise<string>((resolve) => {
    const st = s.request(headers);
    st.on('response', (h) => resolve(`status ${String(h[':status'])}`));
    st.on('error', (e: Error) => resolve(`error ${e.message}`));
    st.on('close', () => resolve(`closed ${st.rstCode}`));
    st.end();
  });
  t.notMatch(outcome, /status 200/, `refused: ${outcome}`);
  t.notOk(up.seen.some((r) => r.url === '/big'), 'never forwarded');
  t.equal(await aliveStatus(gw), 200, 'the gateway still serves another client');
});

t.test('HTTP/2: a ping flood is answered or cut with GOAWAY; other clients are served meanwhile', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const s = h2connect(gw);
  t.teardown(() => s.destroy());
  await new Promise<void>((r) => s.once('remoteSettings', () => r()));
  // Raw PING frames on a raw TLS connection (the client API keeps at most 10 outstanding).
  const raw = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['h2'] });
  raw.on('error', () => undefined);
  t.teardown(() => raw.destroy());
  await new Promise<void>((r) => raw.once('secureConnect', () => r()));
  let received = 0;
  raw.on('data', (c: Buffer) => (received += c.length));
  const settings = Buffer.from([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
  const frame = Buffer.alloc(9 + 8);
  frame.writeUIntBE(8, 0, 3);
  frame[3] = 0x6; // PING, no ACK
  raw.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), settings, ...Array.from({ length: 20000 }, () => frame)]));
  const res = await gw.request({ path: '/alive' });
  t.equal(res.status, 200, 'another client is served during the flood');
  await until(() => raw.destroyed, 2000);
  t.comment(`ping flood: ${received} bytes back, connection ${raw.destroyed ? 'closed' : 'open'}`);
  t.equal(await aliveStatus(gw), 200, 'the gateway still serves another client');
});

t.test('HTTP/2: a GET with a body — the upstream gets the body the client sent or nothing, never a mis-framed request', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const s = h2connect(gw);
  t.teardown(() => s.destroy());
  const out = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const st = s.request({ ':path': '/get-body', ':authority': 'app.test', ':method': 'GET', 'content-type': 'text/plain' }, { endStream: false });
    let status = 0;
    let body = '';
    st.on('response', (h) => (status = Number(h[':status'])));
    st.setEncoding('utf8');
    st.on('data', (c: string) => (body += c));
    st.on('end', () => resolve({ status, body }));
    st.on('error', reject);
    st.end('GET-BODY-PAYLOAD');
  });
  t.ok([200, 400, 413].includes(out.status), `status ${out.status}`);
  const seen = up.seen.filter((r) => r.url === '/get-body');
  t.ok(seen.length <= 1, 'at most one upstream request');
  const first = seen[0];
  if (first !== undefined) {
    const body = first.body.toString('utf8');
    t.ok(body === '' || body === 'GET-BODY-PAYLOAD', `upstream body: ${JSON.stringify(body)}`);
    const framed = first.headers['content-length'] !== undefined || first.headers['transfer-encoding'] !== undefined;
    if (body !== '') t.ok(framed, 'a body is framed for the upstream');
  }
});

t.test('HTTP/2: a POST stream whose body never ends is cut by limits.request_timeout; the upstream never sees the end', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin, undefined, 'limits: { request_timeout: 2s }\n'));
  const s = h2connect(gw);
  t.teardown(() => s.destroy());
  const started = Date.now();
  const outcome = await new Promise<string>((resolve) => {
    const st = s.request({ ':path': '/never-ends', ':authority': 'app.test', ':method': 'POST', 'content-type': 'text/plain' });
    st.on('response', (h) => resolve(`status ${String(h[':status'])}`));
    st.on('close', () => resolve(`closed ${st.rstCode}`));
    st.on('error', () => undefined);
    st.write('partial');
    setTimeout(() => resolve('still open'), 8000).unref();
  });
  const took = Date.now() - started;
  t.not(outcome, 'still open', `the stalled stream was ended (${outcome} after ${took} ms)`);
  t.ok(took < 7000, `within about request_timeout (${took} ms)`);
  t.notOk(up.seen.some((r) => r.url === '/never-ends'), 'the upstream never got a finished request');
});

// ---------------------------------------------------------------------------------------------
// 3. WebSocket proxying

/** A raw upstream that answers every upgrade with `answer(key, request)`. */
async function rawWsUpstream(t: Tap, answer: (key: string, head: string) => string): Promise<{ port: number; dialled: () => number }> {
  let dialled = 0;
  const server = net.createServer((sock) => {
    dialled++;
    let head = '';
    sock.on('data', (c: Buffer) => {
      head += c.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? '';
      sock.write(answer(key, head));
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as net.AddressInfo).port, dialled: () => dialled };
}

const acceptOf = wsAccept;

function wsClient(gw: RunningGateway, path = '/ws', protocols?: string[]): WebSocket {
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}${path}`, protocols, { ca: gw.ca, servername: 'app.test', headers: { host: 'app.test' } } as object);
  ws.on('error', () => undefined);
  return ws;
}

function closeOf(ws: WebSocket, ms = 6000): Promise<{ code: number; messages: string[] }> {
  const messages: string[] = [];
  ws.on('message', (m: Buffer) => messages.push(m.toString()));
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      ws.terminate();
      resolve({ code: -1, messages });
    }, ms);
    ws.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, messages });
    });
  });
}

/** The status the client's handshake got (101, or the HTTP answer instead), and the messages after it. */
function handshakeOf(ws: WebSocket): Promise<{ status: number; messages: string[] }> {
  const messages: string[] = [];
  ws.on('message', (m: Buffer) => messages.push(m.toString()));
  return new Promise((resolve) => {
    ws.once('upgrade', () => setTimeout(() => resolve({ status: 101, messages }), 200));
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      ws.terminate();
      resolve({ status: res.statusCode ?? 0, messages });
    });
  });
}

t.test('WebSocket: an upstream 101 with a wrong Sec-WebSocket-Accept is refused — 502, nothing it sends reaches the client', async (t) => {
  // A frame right after the 101: a text message "leak" (unmasked, server to client).
  const leak = Buffer.from([0x81, 4, ...Buffer.from('leak')]).toString('latin1');
  const upstream = await rawWsUpstream(t, () => `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptOf('AAAAAAAAAAAAAAAAAAAAAA==')}\r\n\r\n${leak}`);
  const gw = await startGateway(t, site(`http://127.0.0.1:${upstream.port}`));
  const r = await handshakeOf(wsClient(gw));
  t.same(r, { status: 502, messages: [] }, 'the client gets 502 and no upstream frame');
  await until(() => gw.logs.some((l) => l.type === 'access' && l.path === '/ws'), 2000);
  const line = gw.logs.find((l) => l.type === 'access' && l.path === '/ws');
  t.match(line, { status: 502, reason: 'upstream_bad_response' }, 'logged as a bad upstream answer');
});

t.test('WebSocket: an upstream choosing a subprotocol the client did not offer is refused (502); a valid choice is relayed', async (t) => {
  const upstream = await rawWsUpstream(t, (key) => `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptOf(key)}\r\nSec-WebSocket-Protocol: evil\r\n\r\n`);
  const gw = await startGateway(t, site(`http://127.0.0.1:${upstream.port}`));
  t.same(await handshakeOf(wsClient(gw, '/ws', ['chat'])), { status: 502, messages: [] }, 'the upstream choice "evil" is refused with 502');
  // Without a client offer: an upstream that picks one anyway is refused too.
  t.same(await handshakeOf(wsClient(gw, '/ws')), { status: 502, messages: [] }, 'an unrequested subprotocol from the upstream: 502');
  const good = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (offered) => (offered.has('chat') ? 'chat' : false) });
  await new Promise<void>((r) => good.once('listening', () => r()));
  t.teardown(() => new Promise<void>((r) => { for (const c of good.clients) c.terminate(); good.close(() => r()); }));
  const gw2 = await startGateway(t, site(`http://127.0.0.1:${(good.address() as net.AddressInfo).port}`));
  const ws = wsClient(gw2, '/ws', ['other', 'chat']);
  t.equal((await handshakeOf(ws)).status, 101, 'a choice among the offers: 101');
  t.equal(ws.protocol, 'chat', 'with the upstream\'s choice');
  ws.terminate();
});

t.test('WebSocket: messages sent before the upstream answered are delivered in order, none dropped; binary and a 1 MB frame pass', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  t.teardown(() => new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); }));
  const got: string[] = [];
  let bigLen = 0;
  wss.on('connection', (ws) => {
    ws.on('message', (m: Buffer, binary) => {
      if (m.length > 1000) bigLen = m.length;
      else got.push(`${binary ? 'b' : 't'}:${m.toString()}`);
    });
  });
  // Delay the upstream's handshake answer by 500 ms: the client's messages wait in the gateway.
  const origEmit = wss.handleUpgrade.bind(wss);
  wss.handleUpgrade = ((...args: Parameters<typeof wss.handleUpgrade>) => {
    setTimeout(() => origEmit(...args), 500);
  }) as typeof wss.handleUpgrade;
  const port = (wss.address() as net.AddressInfo).port;
  const gw = await startGateway(t, site(`http://127.0.0.1:${port}`));
  const ws = wsClient(gw);
  t.teardown(() => ws.terminate());
  await new Promise<void>((r, j) => { ws.once('open', () => r()); ws.once('close', (c) => j(new Error(`closed ${c}`))); });
  for (let i = 0; i < 20; i++) ws.send(i % 2 === 0 ? `m${i}` : Buffer.from(`m${i}`));
  ws.send(Buffer.alloc(1024 * 1024, 7));
  t.ok(await until(() => got.length === 20 && bigLen > 0, 4000), `all messages arrived (${got.length}, big ${bigLen})`);
  t.same(got, Array.from({ length: 20 }, (_, i) => `${i % 2 === 0 ? 't' : 'b'}:m${i}`), 'in order, text stays text, binary stays binary');
  t.equal(bigLen, 1024 * 1024);
});

t.test('WebSocket: odd close codes from the upstream (4999, 1000 with reason, no code) reach the client without taking the gateway down', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  t.teardown(() => new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); }));
  wss.on('connection', (ws, req) => {
    const how = req.url ?? '';
    setTimeout(() => {
      if (how === '/c4999') ws.close(4999, 'bye');
      else if (how === '/c1000') ws.close(1000, 'x'.repeat(123));
      else if (how === '/cnone') ws.close();
      else ws.terminate();
    }, 50);
  });
  const port = (wss.address() as net.AddressInfo).port;
  const gw = await startGateway(t, site(`http://127.0.0.1:${port}`));
  const expect: Record<string, (code: number) => boolean> = {
    '/c4999': (c) => c === 4999,
    '/c1000': (c) => c === 1000,
    '/cnone': (c) => c === 1005 || c === 4005 || c === 1000,
    '/kill': (c) => c === 1006 || c === 4006 || c === 1011,
  };
  for (const [path, ok] of Object.entries(expect)) {
    const r = await closeOf(wsClient(gw, path));
    t.ok(ok(r.code), `${path}: client close code ${r.code}`);
  }
  const again = await closeOf(wsClient(gw, '/c4999'));
  t.equal(again.code, 4999, 'the gateway still proxies a new WebSocket afterwards');
});

// ---------------------------------------------------------------------------------------------
// 4. Configuration and secrets through the CLI

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');

function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 20000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr });
    });
  });
}

const cliConfig = (extra: string): string => `listen:
  https: 127.0.0.1:0
  http: null
  admin: 127.0.0.1:0
${extra}sites:
  - hosts: [app.test]
    upstream: http://127.0.0.1:9
    routes: [{ path: /, access: public }]
`;

t.test('secrets: a missing NAME_FILE, an empty file and a whitespace-only file are errors naming the variable; never a silent value', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-sec-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'gw.yml');
  writeFileSync(file, cliConfig('admin:\n  metrics_token: $' + '{PCX_TOKEN}\n'));
  const missing = await cli(['validate', '--config', file], { PCX_TOKEN: undefined, PCX_TOKEN_FILE: join(dir, 'nope') });
  t.equal(missing.code, 1, 'missing secret file: exit 1');
  t.match(missing.stderr, /PCX_TOKEN/, 'names the variable');
  writeFileSync(join(dir, 'empty'), '');
  const empty = await cli(['validate', '--config', file], { PCX_TOKEN_FILE: join(dir, 'empty') });
  t.equal(empty.code, 1, `empty secret file: exit 1 (${empty.stderr.trim()})`);
  writeFileSync(join(dir, 'nl'), '\n');
  const nl = await cli(['validate', '--config', file], { PCX_TOKEN_FILE: join(dir, 'nl') });
  t.equal(nl.code, 1, `a secret file holding only a newline: exit 1 (${nl.stderr.trim()})`);
  writeFileSync(join(dir, 'ok'), 's3cret-token\n');
  const ok = await cli(['validate', '--config', file], { PCX_TOKEN_FILE: join(dir, 'ok') });
  t.equal(ok.code, 0, `a good secret file with a trailing newline validates (${ok.stderr.trim()})`);
  t.notMatch(ok.stdout + ok.stderr + empty.stderr + missing.stderr, /s3cret-token/, 'the secret is never printed');
  // start: the same missing secret fails the start, naming it.
  const start = await cli(['start', '--config', file], { PCX_TOKEN: undefined, PCX_TOKEN_FILE: undefined });
  t.equal(start.code, 1);
  t.match(start.stderr, /PCX_TOKEN/);
});

t.test('YAML: duplicate keys, custom/binary tags and merge keys are errors; an anchor reused as a value is fine', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-yaml-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cases: Record<string, string> = {
    duplicate: cliConfig('').replace('    routes: [{ path: /, access: public }]\n', '    routes: [{ path: /, access: public }]\n    routes: [{ path: /, access: deny }]\n'),
    duplicateTop: `${cliConfig('')}workers: 1\nworkers: 2\n`,
    binaryTag: cliConfig('admin:\n  metrics_token: !!binary c2VjcmV0\n'),
    customTag: cliConfig('admin:\n  metrics_token: !env SECRET\n'),
    merge: `listen: &l
  https: 127.0.0.1:0
  http: null
  admin: 127.0.0.1:0
sites:
  - &s
    hosts: [app.test]
    upstream: http://127.0.0.1:9
    routes: [{ path: /, access: public }]
  - <<: *s
    hosts: [other.test]
`,
  };
  for (const [name, text] of Object.entries(cases)) {
    const f = join(dir, `${name}.yml`);
    writeFileSync(f, text);
    const r = await cli(['validate', '--config', f]);
    t.equal(r.code, 1, `${name}: refused (exit ${r.code}; stderr: ${r.stderr.trim().replace(/\n/g, ' | ')})`);
    t.match(r.stderr, new RegExp(`${name}\\.yml:\\d+:\\d+`), `${name}: points at a line`);
  }
  const anchors = join(dir, 'anchors.yml');
  writeFileSync(anchors, `listen:
  https: 127.0.0.1:0
  http: null
  admin: 127.0.0.1:0
sites:
  - hosts: [app.test]
    upstream: &up http://127.0.0.1:9
    routes: &r [{ path: /, access: public }]
  - hosts: [other.test]
    upstream: *up
    routes: *r
`);
  const ok = await cli(['validate', '--config', anchors]);
  t.equal(ok.code, 0, `anchors and aliases as values validate (${ok.stderr.trim()})`);
});
