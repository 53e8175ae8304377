// Protocol upgrades through the gateway: what may pass once a client asks for another protocol.
//
// - h2c smuggling: an `Upgrade: h2c` on a public route, followed by the HTTP/2 preface and a
//   request for a denied path, against an upstream that would switch; combined and repeated
//   `Upgrade` values on a WebSocket handshake.
// - A "fake WebSocket" tunnel: an upstream that answers 101 with a valid accept key and then talks
//   HTTP, a client that writes a raw HTTP request after its 101 — after the switch only WebSocket
//   frames pass, re-framed by the gateway.
// - A WebSocket handshake pipelined behind another request on one HTTP/1.1 connection.
// - Subprotocol negotiation: whose choice is it, the gateway's or the app's?
// - Secrets of a handshake (query token, token in Sec-WebSocket-Protocol, cookie) in the logs.
// - Rate limits and bans: are handshakes counted, and refused once over the limit or banned?
// - CSRF on handshakes with `Origin: null`, or with only `Sec-Fetch-Site`.
//
// Every test runs a real gateway (real TLS, ephemeral loopback ports) in front of real upstreams.
import t from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import https from 'node:https';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createInterface } from 'node:readline';
import type { IncomingHttpHeaders } from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import { LOOPBACK_LISTEN, rawTls, rawUpstream as rawUpstreamAll, sleep, startGateway, startUpstream, statusOf, until, type RunningGateway, type Tap } from '../helpers/gateway.js';
import { appSite as site, h2Frame, tlsClient, wsAccept } from '../helpers/clients.js';
import { securityEvents, startIssuer } from '../protect-e2e/_helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');

const wsKey = (): string => randomBytes(16).toString('base64');
const acceptOf = wsAccept;

/** A ws echo upstream that records each handshake it accepted (URL, headers). */
async function wsUpstream(t: Tap, options: ConstructorParameters<typeof WebSocketServer>[0] = {}): Promise<{ origin: string; handshakes: Array<{ url: string; headers: IncomingHttpHeaders }> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...options });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const handshakes: Array<{ url: string; headers: IncomingHttpHeaders }> = [];
  wss.on('connection', (ws, req) => {
    handshakes.push({ url: req.url ?? '', headers: req.headers });
    ws.on('message', (m: Buffer) => ws.send(`echo:${m.toString()}`));
  });
  t.teardown(() => new Promise<void>((r) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => r());
  }));
  return { origin: `http://127.0.0.1:${(wss.address() as net.AddressInfo).port}`, handshakes };
}

interface Opened {
  /** 101, or the status the gateway refused the handshake with. */
  status: number;
  headers: IncomingHttpHeaders;
  ws: WebSocket | null;
}

/** Opens a WebSocket to app.test through the gateway. */
function openWs(t: Tap, gw: RunningGateway, path: string, headers: Record<string, string> = {}, protocols: string[] = []): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${gw.port}${path}`, protocols, { ca: gw.ca, servername: 'app.test', headers: { host: 'app.test', ...headers } } as object);
    t.teardown(() => ws.terminate());
    ws.once('upgrade', (res) => resolve({ status: 101, headers: res.headers, ws }));
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      ws.terminate();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, ws: null });
    });
    ws.once('error', reject);
  });
}

/** Sends `text` and resolves with the first message back, or how the socket closed. */
function roundTrip(ws: WebSocket, text: string, ms = 3000): Promise<{ message?: string; closed?: number }> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({}), ms);
    ws.once('message', (m: Buffer) => {
      clearTimeout(timer);
      resolve({ message: m.toString() });
    });
    ws.once('close', (code) => {
      clearTimeout(timer);
      resolve({ closed: code });
    });
    if (ws.readyState === WebSocket.OPEN) ws.send(text);
    else ws.once('open', () => ws.send(text));
  });
}

/** A raw upstream that answers each connection's first request head; the rest is tunnel data. */
const rawUpstream = (t: Tap, onHead: (socket: net.Socket, head: string) => void) => rawUpstreamAll(t, onHead, { firstHeadOnly: true });

/** The HTTP/2 client preface, an empty SETTINGS and a HEADERS frame (HPACK literals) for GET `path`. */
function h2PrefaceAndGet(path: string): Buffer {
  const lit = (nameIndex: number, value: string): Buffer => Buffer.concat([Buffer.from([0x00 | nameIndex, value.length]), Buffer.from(value, 'latin1')]);
  const block = Buffer.concat([Buffer.from([0x82, 0x87]), lit(4, path), lit(1, 'app.test')]);
  return Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), h2Frame(0x4, 0, 0, Buffer.alloc(0)), h2Frame(0x1, 0x5, 1, block)]);
}

const policy = (origin: string, extra = ''): string => `${LOOPBACK_LISTEN}${extra}
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes:
      - { id: public, path: /public, access: public }
      - { id: admin, path: /admin, access: deny }
      - { id: rest, path: /, access: deny }
`;

// ---------------------------------------------------------------------------------------------
// 1. h2c smuggling and odd Upgrade values

t.test('h2c smuggling: an Upgrade: h2c on a public route, then the HTTP/2 preface and a request for /admin, never reaches an upstream that would switch', async (t) => {
  // The upstream plays a server that speaks h2c: it switches on any request asking for it.
  const up = await rawUpstream(t, (socket, head) => {
    if (/\r\nupgrade:\s*h2c/i.test(head)) socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
    else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  });
  const gw = await startGateway(t, policy(up.origin));
  const tunnelled = h2PrefaceAndGet('/admin/secret');
  const variants: Array<[string, string]> = [
    ['Connection: Upgrade, HTTP2-Settings', 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n'],
    ['Connection: HTTP2-Settings only (not an upgrade for the parser)', 'Connection: HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n'],
    ['Upgrade: h2c with a WebSocket key', `Connection: Upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Key: ${wsKey()}\r\nSec-WebSocket-Version: 13\r\n`],
  ];
  for (const [name, lines] of variants) {
    const c = await tlsClient(t, gw);
    c.socket.write(Buffer.concat([Buffer.from(`GET /public/page HTTP/1.1\r\nHost: app.test\r\n${lines}\r\n`, 'latin1'), tunnelled]));
    await until(() => c.text().includes('\r\n\r\n'), 3000);
    await c.closedWithin(3000);
    const status = statusOf(c.text());
    t.not(status, 101, `${name}: never 101 to the client (got ${status})`);
    t.ok(status >= 200, `${name}: a final answer`);
    t.notMatch(c.text(), /upgrade: h2c/i, `${name}: nothing of the upstream's switch reaches the client`);
  }
  const all = up.received.join('');
  t.notMatch(all, /PRI \* HTTP\/2\.0/, 'the HTTP/2 preface never reached the upstream');
  t.notMatch(all, /\/admin/, 'the tunnelled request for /admin never reached the upstream');
  t.notMatch(all, /\r\nupgrade:/i, 'no Upgrade header reached the upstream');
  t.notMatch(all, /\r\nhttp2-settings:/i, 'no HTTP2-Settings header reached the upstream');
});

t.test('a WebSocket handshake naming another protocol too (Upgrade: websocket, h2c; h2c, websocket; two Upgrade lines) is refused with 400; nothing is dialled', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const values = ['Upgrade: websocket, h2c\r\n', 'Upgrade: h2c, websocket\r\n', 'Upgrade: websocket\r\nUpgrade: h2c\r\n', 'Upgrade: websocket\r\nUpgrade: websocket\r\n'];
  for (const v of values) {
    const raw = await rawTls(gw.port, gw.ca, `GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n${v}Sec-WebSocket-Key: ${wsKey()}\r\nSec-WebSocket-Version: 13\r\n\r\n`, { waitMs: 2000 });
    t.equal(statusOf(raw), 400, `${JSON.stringify(v)}: 400`);
    t.match(raw, /\r\nx-request-id: /i, 'the gateway\'s own answer');
  }
  await until(() => gw.logs.filter((l) => l.type === 'access' && l.path === '/ws').length === values.length, 2000);
  t.same(gw.logs.filter((l) => l.type === 'access' && l.path === '/ws').map((l) => l.reason), values.map(() => 'websocket_handshake_invalid'));
  await sleep(50);
  t.same(up.handshakes, [], 'the upstream was never dialled');
});

// ---------------------------------------------------------------------------------------------
// 2. After a 101: only WebSocket frames

t.test('a "fake WebSocket" tunnel: raw HTTP after the 101 passes in neither direction (no request to /admin upstream, no raw answer to the client)', async (t) => {
  // The upstream answers the handshake properly, then talks HTTP on the switched connection.
  const up = await rawUpstream(t, (socket, head) => {
    const key = /\r\nsec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? '';
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptOf(key)}\r\n\r\n`);
    if (head.startsWith('GET /public/talky')) setTimeout(() => socket.write('HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 6\r\n\r\nsecret'), 200);
  });
  const gw = await startGateway(t, policy(up.origin));
  const handshake = (path: string): string =>
    `GET ${path} HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${wsKey()}\r\nSec-WebSocket-Version: 13\r\n\r\n`;

  // The client writes a raw HTTP request into the tunnel right after its 101.
  const c = await tlsClient(t, gw);
  c.socket.write(handshake('/public/quiet'));
  t.ok(await until(() => c.text().startsWith('HTTP/1.1 101 '), 3000), 'the client got its 101');
  await until(() => up.received.length === 1, 2000);
  c.socket.write('GET /admin/secret HTTP/1.1\r\nHost: app.test\r\n\r\n');
  t.ok(await c.closedWithin(5000), 'the gateway ends a connection that sends something other than frames');
  const after = c.text().slice(c.text().indexOf('\r\n\r\n') + 4);
  t.notMatch(after, /HTTP\/1\.1/, 'no HTTP answer after the 101');

  // The upstream writes a raw HTTP response into the tunnel.
  const d = await tlsClient(t, gw);
  d.socket.write(handshake('/public/talky'));
  t.ok(await until(() => d.text().startsWith('HTTP/1.1 101 '), 3000));
  t.ok(await d.closedWithin(5000), 'the gateway ends the session of an upstream that sends something other than frames');
  t.notMatch(d.text(), /X-Smuggled|secret|HTTP\/1\.1 200/, 'nothing of the upstream\'s raw answer reached the client');

  await sleep(100);
  t.equal(up.received.length, 2, 'two handshakes were dialled');
  t.match(up.received[0], /^GET \/public\/quiet HTTP\/1\.1\r\n/, 'the first handshake was for the public path');
  t.notMatch(up.received.join(''), /\/admin/, 'the raw request for /admin never reached the upstream');
});

// ---------------------------------------------------------------------------------------------
// 3. A handshake pipelined behind another request

/** `portcullis start` as a child process (the real entry point); resolves once it listens. */
async function startCliGateway(t: Tap, origin: string): Promise<{ port: number; ca: string; alive(): boolean; stderr(): string }> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-upgrade-'));
  const file = join(dir, 'gateway.yml');
  writeFileSync(file, `listen: { https: 127.0.0.1:0, http: null, admin: null }
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes: [{ path: /, access: public }]
`);
  const tsx = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
  const child = spawn(process.execPath, [`--import=${tsx}`, join(ROOT, 'src', 'cli.ts'), 'start', '--config', file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the gateway did not start: ${stderr}`)), 20_000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      let rec: { msg?: string; https?: { port?: number } };
      try {
        rec = JSON.parse(line) as typeof rec;
      } catch {
        return;
      }
      if (rec.msg === 'portcullis started' && rec.https?.port) {
        clearTimeout(timer);
        resolve(rec.https.port);
      }
    });
  });
  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  return { port, ca, alive: () => child.exitCode === null && child.signalCode === null, stderr: () => stderr };
}

function getStatus(port: number, ca: string, path: string): Promise<number> {
  return new Promise((resolve) => {
    const req = https.request({ host: '127.0.0.1', port, path, servername: 'app.test', ca, agent: false, headers: { host: 'app.test' }, signal: AbortSignal.timeout(3000) }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.end();
  });
}

t.test('a WebSocket handshake pipelined behind another request on one connection does not take the gateway process down', async (t) => {
  const up = await startUpstream(t);
  const gw = await startCliGateway(t, up.origin);
  t.equal(await getStatus(gw.port, gw.ca, '/before'), 200, 'the gateway serves');
  // One TLS write, no token, any site: a plain GET, then a WebSocket handshake behind it.
  const received = await new Promise<string>((resolve) => {
    const chunks: Buffer[] = [];
    const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] }, () => {
      s.write(
        'GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n' +
          `GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${wsKey()}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    const timer = setTimeout(() => s.destroy(), 1500);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
  await sleep(300);
  const crash = /ERR_HTTP_SOCKET_ASSIGNED|Error.*\n\s+at /.exec(gw.stderr());
  t.ok(gw.alive(), `the gateway process is still running${crash ? ` (it died: ${crash[0].split('\n')[0]})` : ''}`);
  t.equal(gw.alive() ? await getStatus(gw.port, gw.ca, '/after') : 0, 200, 'and serves the next client');
  // Answered (200), or cut as a CONNECT pipelined the same way is; never a 101 inside the first answer.
  t.notOk(received.includes('HTTP/1.1 101'), 'the pipelined handshake was not switched inside the first answer');
});

// ---------------------------------------------------------------------------------------------
// 4. The upstream's handshake deadline

t.test('an upstream that trickles its handshake answer is cut at the route\'s timeouts.response: 504, as an HTTP answer trickled the same way', async (t) => {
  // One byte of a header every 300 ms: never 1 s of silence, but 3.6 s before the head is complete.
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => {
    let buf = '';
    let answered = false;
    sockets.push(s);
    s.on('error', () => undefined);
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      if (answered || !buf.includes('\r\n\r\n')) return;
      answered = true;
      const key = /\r\nsec-websocket-key:\s*(\S+)/i.exec(buf)?.[1];
      s.write(key ? 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Pad: ' : 'HTTP/1.1 200 OK\r\nX-Pad: ');
      let n = 0;
      const timer = setInterval(() => {
        if (s.destroyed) return clearInterval(timer);
        if (++n < 12) return void s.write('a');
        clearInterval(timer);
        if (key) s.write(Buffer.from(`\r\nSec-WebSocket-Accept: ${acceptOf(key)}\r\n\r\n\x81\x04late`, 'latin1'));
        else s.write('\r\nContent-Length: 4\r\n\r\nlate');
      }, 300);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    // This upstream never answers a close frame: cut its sockets rather than wait out ws's 30 s.
    for (const x of sockets) x.destroy();
    server.close(() => r());
  }));
  const gw = await startGateway(t, site(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, '[{ path: /, access: public, timeouts: { response: 1s } }]'));

  let started = Date.now();
  const res = await gw.request({ path: '/http' });
  t.equal(res.status, 504, 'control: the HTTP answer trickled past timeouts.response is a 504');
  t.ok(Date.now() - started < 2500, `control: at the deadline (${Date.now() - started} ms)`);

  started = Date.now();
  const opened = await openWs(t, gw, '/ws');
  const elapsed = Date.now() - started;
  t.equal(opened.status, 504, 'the handshake gets 504: the client never gets a 101 the upstream has not finished');
  t.ok(elapsed < 2500, `at the deadline, not when the upstream finished (${elapsed} ms)`);
});

t.test('many handshakes at once to an upstream that never answers: each answered 504 at the route\'s timeouts.response, every upstream socket closed', async (t) => {
  const held: net.Socket[] = [];
  const closed = new Set<net.Socket>();
  const server = net.createServer((s) => {
    held.push(s);
    s.resume(); // read (and drop) the handshake, so that the gateway's FIN is seen
    s.on('error', () => undefined);
    s.on('close', () => closed.add(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const s of held) s.destroy();
    server.close(() => r());
  }));
  // A top-level deadline of 1 minute, the route's own of 700 ms: the route's applies.
  const gw = await startGateway(t, site(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, '[{ path: /, access: public, timeouts: { response: 700ms } }]', 'timeouts: { response: 1m }\n'));
  const started = Date.now();
  const results = await Promise.all(Array.from({ length: 12 }, async (_, i) => (await openWs(t, gw, `/mute/${i}`)).status));
  t.same(results, results.map(() => 504), 'every client got 504');
  t.ok(Date.now() - started < 3500, `at the route deadline (${Date.now() - started} ms)`);
  t.ok(await until(() => held.length === 12 && closed.size === 12, 2000), `every upstream socket was closed (${closed.size}/${held.length})`);
  await until(() => gw.logs.filter((l) => l.type === 'access' && String(l.path).startsWith('/mute/')).length === 12, 2000);
  t.same(new Set(gw.logs.filter((l) => l.type === 'access' && String(l.path).startsWith('/mute/')).map((l) => l.reason)), new Set(['upstream_response_timeout']));
});

// ---------------------------------------------------------------------------------------------
// 5. Subprotocols: the app's choice

t.test('subprotocol negotiation is the app\'s: a client offering [v1, v2] to an app that speaks only v2 gets v2, and the app sees the whole offer', async (t) => {
  const up = await wsUpstream(t, { handleProtocols: (offered: Set<string>) => (offered.has('v2') ? 'v2' : false) });
  // Control, straight to the app: v2 is chosen.
  const direct = new WebSocket(up.origin.replace('http:', 'ws:'), ['v1', 'v2']);
  t.teardown(() => direct.terminate());
  await new Promise((r) => direct.once('open', r));
  t.equal(direct.protocol, 'v2', 'control: straight to the app, v2 is chosen');
  direct.close();

  const gw = await startGateway(t, site(up.origin));
  const opened = await openWs(t, gw, '/chat', {}, ['v1', 'v2']);
  t.equal(opened.status, 101);
  t.equal(opened.headers['sec-websocket-protocol'], 'v2', 'the client is told the protocol the app chose');
  const rt = await roundTrip(opened.ws!, 'hello');
  t.same(rt, { message: 'echo:hello' }, `the session works (got ${JSON.stringify(rt)})`);
  await until(() => up.handshakes.length > 1, 1000);
  t.equal(up.handshakes.at(-1)?.headers['sec-websocket-protocol'], 'v1, v2', 'the app saw the client\'s whole offer');
});

// ---------------------------------------------------------------------------------------------
// 6. Secrets of a handshake in the logs

t.test('a WebSocket\'s query token never reaches a log line, at any level (nor a token offered as a subprotocol, nor the cookie)', async (t) => {
  const up = await wsUpstream(t);
  // The harness logger runs at debug, a documented `log.level`.
  const gw = await startGateway(t, site(up.origin));
  const queryToken = `qtok${randomBytes(12).toString('hex')}`;
  const protoToken = `ptok${randomBytes(12).toString('hex')}`;
  const cookie = `ctok${randomBytes(12).toString('hex')}`;
  // Browsers cannot set Authorization on a WebSocket: apps take the token from the query string or a subprotocol.
  const opened = await openWs(t, gw, `/socket?room=1&access_token=${queryToken}`, { cookie: `sid=${cookie}` }, [protoToken]);
  t.equal(opened.status, 101);
  t.same(await roundTrip(opened.ws!, 'x'), { message: 'echo:x' });
  opened.ws!.close();
  await until(() => gw.logs.some((l) => l.type === 'access' && String(l.path).startsWith('/socket')), 3000);
  const line = gw.logs.find((l) => l.type === 'access' && String(l.path).startsWith('/socket'));
  t.equal(line?.path, '/socket?room=1&access_token=[REDACTED]', 'the access line redacts the query token');
  for (const [what, secret] of [['query token', queryToken], ['subprotocol token', protoToken], ['cookie', cookie]] as const) {
    const leaks = gw.logs.filter((l) => JSON.stringify(l).includes(secret));
    t.same(leaks.map((l) => `${String(l.level)} ${String(l.msg)}`), [], `the ${what} is in no log line`);
  }
});

// ---------------------------------------------------------------------------------------------
// 7. Rate limits, bans and CSRF on handshakes

t.test('handshakes are counted by rate limits (429 with Retry-After once over) and by bans (a banned address cannot open a socket, even with a valid token)', async (t) => {
  const up = await wsUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${idp.yaml}trusted_proxies: [127.0.0.0/8]
bans: { auth_failures: 2, window: 1m, duration: 1m }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: limited, path: /limited, access: public, rate_limit: { max: 2, window: 1m } }
      - { id: api, path: / }
`);
  const from = (ip: string, extra: Record<string, string> = {}): Record<string, string> => ({ 'x-forwarded-for': ip, ...extra });

  const limited: Opened[] = [];
  for (let i = 0; i < 3; i++) limited.push(await openWs(t, gw, `/limited/${i}`, from('198.51.100.7')));
  t.same(limited.map((o) => o.status), [101, 101, 429], 'the third handshake in the window is refused');
  t.ok(Number(limited[2]!.headers['retry-after']) > 0, 'with Retry-After');
  t.equal(limited[2]!.headers['ratelimit-remaining'], '0', 'and the RateLimit headers');
  t.equal(securityEvents(gw.logs, 'rate_limited').length, 1, 'a rate_limited event');

  const valid = `Bearer ${await idp.token('alice')}`;
  const bad = `Bearer ${await idp.forged('alice')}`;
  const attacker = from('198.51.100.66', { authorization: bad });
  t.same([(await openWs(t, gw, '/api/1', attacker)).status, (await openWs(t, gw, '/api/2', attacker)).status], [401, 401], 'bad tokens on handshakes: 401');
  t.equal(securityEvents(gw.logs, 'banned').length, 1, 'two failed handshakes ban the address');
  const banned = await openWs(t, gw, '/api/3', from('198.51.100.66', { authorization: valid }));
  t.equal(banned.status, 429, 'a banned address cannot open a socket with a valid token');
  t.equal((await openWs(t, gw, '/api/4', from('198.51.100.1', { authorization: valid }))).status, 101, 'another address with the valid token can');
  await until(() => up.handshakes.length === 3, 2000);
  await sleep(50);
  t.same(up.handshakes.map((h) => h.url), ['/limited/0', '/limited/1', '/api/4'], 'only the admitted handshakes reached the upstream');
});

t.test('CSRF on cookie-carrying handshakes: Origin: null, and Sec-Fetch-Site: cross-site without Origin, are refused; nothing is dialled', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const cases: Array<[string, Record<string, string>, number]> = [
    ['Origin: null (sandboxed frame)', { cookie: 'sid=victim', origin: 'null' }, 403],
    ['Sec-Fetch-Site: cross-site, no Origin', { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site' }, 403],
    ['Origin of the site under another scheme (http)', { cookie: 'sid=victim', origin: `http://app.test:${gw.port}` }, 403],
    ['control: Sec-Fetch-Site: same-origin', { cookie: 'sid=me', 'sec-fetch-site': 'same-origin', origin: `https://app.test:${gw.port}` }, 101],
  ];
  for (const [name, headers, status] of cases) {
    const o = await openWs(t, gw, `/ws/${status}`, headers);
    t.equal(o.status, status, `${name}: ${status}`);
    if (o.ws) t.same(await roundTrip(o.ws, 'x'), { message: 'echo:x' });
  }
  t.same(securityEvents(gw.logs, 'csrf_rejected').map((e) => e.reason), ['null_origin', 'cross_site', 'origin_mismatch']);
  t.same(up.handshakes.map((h) => h.url), ['/ws/101'], 'only the same-origin handshake reached the upstream');
});

// ---------------------------------------------------------------------------------------------
// 7. Message size

t.test('a WebSocket message larger than the largest body the configuration accepts closes the session with 1009', async (t) => {
  const up = await wsUpstream(t);
  const gw = await startGateway(t, site(up.origin).replace('sites:', 'limits: { max_body_size: 2mb }\nsites:'));
  const opened = await openWs(t, gw, '/big');
  t.equal(opened.status, 101);
  // ws's default would take (and hold whole) a message of up to 100 MiB.
  t.same(await roundTrip(opened.ws!, 'x'.repeat(2 * 1024 * 1024)), { message: `echo:${'x'.repeat(2 * 1024 * 1024)}` }, 'a message of max_body_size goes through');
  const big = await roundTrip(opened.ws!, 'y'.repeat(2 * 1024 * 1024 + 1));
  t.same(big, { closed: 1009 }, `one byte more: closed with 1009 (got ${JSON.stringify(big)})`);
});
