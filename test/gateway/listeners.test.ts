// The HTTP redirect listener, the admin listener, HTTP/2 over ALPN, and WebSocket upgrades.
import t from 'tap';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { LOOPBACK_LISTEN, httpRequest, startGateway, startUpstream } from '../helpers/gateway.js';

const yaml = (origin: string) => `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test, "*.apps.test"]
    upstream: ${origin}
    routes: [{ path: /, access: public }]
`;

function rawHttp(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect(port, '127.0.0.1', () => s.write(bytes));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    s.on('error', reject);
    setTimeout(() => s.destroy(), 2000).unref();
  });
}

t.test('HTTP listener: 301 for GET/HEAD, 308 otherwise, to the configured host only', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin).replace(LOOPBACK_LISTEN, `${LOOPBACK_LISTEN}  public_https_port: 443\n`));
  const p = gw.httpPort!;
  const get = await httpRequest(p, { path: '/a/b?x=1&y=%20' });
  t.equal(get.status, 301);
  t.equal(get.headers.location, 'https://app.test/a/b?x=1&y=%20');
  t.notOk(get.headers['strict-transport-security'], 'no HSTS on plain HTTP');
  const post = await httpRequest(p, { method: 'POST', path: '/form', body: 'a=1' });
  t.equal(post.status, 308);
  const wild = await httpRequest(p, { host: 'x.apps.test', path: '/' });
  t.equal(wild.headers.location, 'https://x.apps.test/');
  const upper = await httpRequest(p, { host: 'APP.TEST:80', path: '/' });
  t.equal(upper.headers.location, 'https://app.test/', 'host normalized, port replaced');
  const evil = await httpRequest(p, { host: 'evil.example', path: '/' });
  t.equal(evil.status, 421, 'unknown host: no redirect');
  t.notOk(evil.headers.location);
  const open = await httpRequest(p, { path: '//evil.example/x' });
  t.equal(open.status, 301);
  t.equal(open.headers.location, 'https://app.test/evil.example/x', 'a //host path cannot become a protocol-relative redirect');
  const bs = await rawHttp(p, 'GET /\\evil.example HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.match(bs, /^HTTP\/1\.1 400/, 'backslash path refused');
  const crlf = await rawHttp(p, 'GET /a%0d%0aSet-Cookie:x=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.match(crlf, /^HTTP\/1\.1 400/, 'encoded CRLF refused');
  t.notMatch(crlf, /Set-Cookie: ?x=1/i);
  const abs = await rawHttp(p, 'GET http://evil.example/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.match(abs, /^HTTP\/1\.1 400/, 'absolute-form refused');
  const trace = await rawHttp(p, 'TRACE / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.match(trace, /^HTTP\/1\.1 405/, 'TRACE refused');
  t.match(trace, /\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n/i, 'with Allow');
  t.equal(up.seen.length, 0, 'the HTTP listener never proxies');
});

t.test('redirect keeps a non-443 public port', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin).replace(LOOPBACK_LISTEN, `${LOOPBACK_LISTEN}  public_https_port: 8443\n`));
  const res = await httpRequest(gw.httpPort!, { path: '/x' });
  t.equal(res.headers.location, 'https://app.test:8443/x');
});

t.test('admin listener: healthz and readyz', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const h = await httpRequest(gw.adminPort!, { path: '/healthz' });
  t.equal(h.status, 200);
  const r = await httpRequest(gw.adminPort!, { path: '/readyz' });
  t.equal(r.status, 200);
  t.match(JSON.parse(r.body), { status: 'ready', checks: { config: true, listeners: true, certificates: true } });
});

t.test('HTTP/2 over ALPN, HTTP/1.1 upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const client = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => client.close());
  const res = await new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const req = client.request({ ':path': '/h2?x=1', ':authority': 'app.test', ':method': 'GET' });
    let body = '';
    let headers: http2.IncomingHttpHeaders = {};
    req.on('response', (h) => (headers = h));
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => resolve({ status: Number(headers[':status']), headers, body }));
    req.on('error', reject);
    req.end();
  });
  t.equal(res.status, 200);
  t.equal(up.seen[0]?.url, '/h2?x=1');
  t.equal(up.seen[0]?.headers.host, 'app.test', ':authority becomes Host');
  t.notOk(Object.keys(up.seen[0]!.headers).some((k) => k.startsWith(':')), 'no pseudo-headers upstream');
  t.ok(res.headers['strict-transport-security']);

  // RFC 9113 §8.3.1: a Host header naming another entity than :authority is malformed.
  const status = (headers: http2.OutgoingHttpHeaders) =>
    new Promise<number>((resolve, reject) => {
      const req = client.request({ ':method': 'GET', ':authority': 'app.test', ...headers });
      req.on('response', (h) => {
        req.resume();
        req.on('end', () => resolve(Number(h[':status'])));
      });
      req.on('error', reject);
      req.end();
    });
  t.equal(await status({ ':path': '/two-names', host: 'admin.internal' }), 400, ':authority app.test + Host admin.internal: refused');
  t.equal(await status({ ':path': '/same-name', host: 'APP.test' }), 200, 'the same name twice (any case) is fine');
  t.same(up.seen.map((r) => r.url), ['/h2?x=1', '/same-name'], 'the refused request never reached the upstream');
  const logged = () => gw.logs.some((l) => l.type === 'access' && l.reason === 'authority_host_mismatch');
  for (let i = 0; i < 100 && !logged(); i++) await new Promise((r) => setTimeout(r, 10));
  t.ok(logged(), 'logged with its reason');
});

t.test('TLS: SNI picks the site certificate; old protocols refused; ALPN h2', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, yaml(up.origin));
  const connect = (opts: tls.ConnectionOptions) =>
    new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, ...opts }, () => resolve(s));
      s.on('error', reject);
    });
  const s = await connect({ servername: 'x.apps.test', ALPNProtocols: ['h2', 'http/1.1'] });
  t.equal(s.authorized, true, 'wildcard host verifies');
  t.equal(s.alpnProtocol, 'h2');
  s.destroy();
  await t.rejects(connect({ servername: 'app.test', maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }), 'TLS 1.1 refused');
});

t.test('WebSocket upgrades are proxied', async (t) => {
  const { WebSocketServer, WebSocket } = await import('ws');
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  t.teardown(() => new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); }));
  let upgradeHeaders: Record<string, unknown> = {};
  let upgradeUrl = '';
  wss.on('connection', (ws, req) => {
    upgradeHeaders = req.headers;
    upgradeUrl = req.url ?? '';
    ws.on('message', (m) => ws.send(`echo:${m.toString()}`));
  });
  const port = (wss.address() as { port: number }).port;
  const gw = await startGateway(t, yaml(`http://127.0.0.1:${port}`));
  const ws = new WebSocket(`wss://127.0.0.1:${gw.port}/chat/../socket?room=1`, { ca: gw.ca, servername: 'app.test', headers: { host: 'app.test', 'x-forwarded-for': '6.6.6.6' } } as object);
  t.teardown(() => ws.terminate());
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  ws.send('hello');
  const reply = await new Promise<string>((r) => ws.once('message', (m) => r(m.toString())));
  t.equal(reply, 'echo:hello');
  t.equal(upgradeUrl, '/socket?room=1', 'canonical path upstream');
  t.equal(upgradeHeaders['x-forwarded-for'], '127.0.0.1', 'forged X-Forwarded-For replaced');
  t.equal(upgradeHeaders['x-forwarded-proto'], 'https');
});
