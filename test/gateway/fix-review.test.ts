// Regression tests from a review of the security fixes of session 12 (after 04bf9a1): each was a
// reproduction of a defect the fixes introduced or left, or of a suspicion that did not hold.
import t from 'tap';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { redactUrl } from '../../src/observability/logging.js';
import { MemoryStore } from '../../src/state/index.js';
import { LOOPBACK_LISTEN, startGateway, startUpstream } from '../helpers/gateway.js';
import { h2Request, h2Session } from '../helpers/clients.js';
import { securityEvents, startIssuer } from '../protect-e2e/_helpers.js';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { judgeIntrospection } from '../../src/auth/introspection.js';
import type { IssuerConfig } from '../../src/config/types.js';
import { createHash, randomBytes } from 'node:crypto';
import { WebSocketServer } from 'ws';
import { WebSocket as WsClient } from 'ws';
import net from 'node:net';
import { parseConfig } from '../../src/config/load.js';

// ---------------------------------------------------------------------------------------------
// 1. bans.ts: `count > authFailures` never bans. The failure counter (ban:fail:<ip>) is shared by
//    every route, the threshold is per route: failures on a laxer route push the counter past a
//    stricter route's threshold, and from then on the strict route never bans (before the fix:
//    count >= threshold banned).
t.test('per-route bans: failures counted on a lax route must not disable a strict route\'s ban', async (t) => {
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: lax, path: /lax/, bans: { auth_failures: 10, window: 5m, duration: 15m } }
      - { id: login, path: /login/, bans: { auth_failures: 3, window: 5m, duration: 15m } }
`);
  const session = h2Session(t, gw);
  // 3 failures on the lax route: below its 10, no ban (as configured).
  for (let i = 0; i < 3; i++) t.equal((await h2Request(session, { ':path': '/lax/x', authorization: `Bearer ${await idp.forged(`l${i}`)}` })).status, 401);
  // Now 6 failures on the strict route (auth_failures: 3).
  const strict: number[] = [];
  for (let i = 0; i < 6; i++) strict.push((await h2Request(session, { ':path': '/login/x', authorization: `Bearer ${await idp.forged(`s${i}`)}` })).status);
  t.ok(strict.includes(429), `the strict route bans within its 3 failures at some point (got ${strict.join(',')})`);
  t.ok(securityEvents(gw.logs, 'banned').some((e) => e.reason === 'auth_failures'), 'a banned event was logged');
});

// ---------------------------------------------------------------------------------------------
// 2. tls/front.ts handshake deadline: an established connection must outlive headers_timeout
//    (the deadline is for the handshake only; handshakeDone must find the deadline by peer key).
t.test('the TLS handshake deadline does not cut a connection whose handshake finished', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    if (req.url === '/slow') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('a');
      setTimeout(() => res.end('b'), 1800);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
limits: { headers_timeout: 1s }
timeouts: { idle: 30s, response: 30s }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  // HTTP/1.1 keep-alive: one request, then wait past headers_timeout, then another on the same socket.
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (path: string): Promise<{ status: number; body: string; port: number }> =>
    new Promise((resolve, reject) => {
      const req = https.request({ host: '127.0.0.1', port: gw.port, path, servername: 'app.test', ca: gw.ca, agent, headers: { host: 'app.test' } }, (res) => {
        let body = '';
        const port = res.socket.localPort!;
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body, port }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  const a = await get('/a');
  t.equal(a.status, 200);
  const slow = await get('/slow');
  t.equal(slow.body, 'ab', 'a response streaming past headers_timeout completes');
  await new Promise((r) => setTimeout(r, 1500));
  const b = await get('/b');
  t.equal(b.status, 200);
  t.equal(b.port, a.port, 'the same keep-alive connection served both');
  // HTTP/2 session, idle past headers_timeout.
  const session = h2Session(t, gw);
  t.equal((await h2Request(session, { ':path': '/h2a' })).status, 200);
  await new Promise((r) => setTimeout(r, 1500));
  t.notOk(session.destroyed || session.closed, 'the HTTP/2 session is still open');
  t.equal((await h2Request(session, { ':path': '/h2b' })).status, 200);
});


// ---------------------------------------------------------------------------------------------
// 3. cli.ts: start failures after validation print one line, no stack (f39c985) — but only when
//    workers is 1. With workers: 2 the same unwritable log.security_file escapes runPrimary and
//    main(), and the entry point prints the stack.
const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'src', 'cli.ts');
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const STACK = /^\s+at .+\(?.*:\d+:\d+\)?$/m;
function runChild(args: string[], timeoutMs = 20_000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [`--import=${TSX}`, CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      setTimeout(() => resolve({ code, out, err }), 30);
    });
  });
}
t.test('workers: 2 — an unwritable log.security_file is one clear line, no stack trace (as with workers: 1)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'review-s12-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'a-directory'));
  const yaml = (workers: number) => `listen:
  https: 127.0.0.1:0
  http: null
  admin: 127.0.0.1:0
shutdown_grace: 2s
workers: ${workers}
tls: { storage: ${join(dir, 'storage')} }
log: { security_file: a-directory }
sites:
  - hosts: [app.test]
    upstream: http://127.0.0.1:9
    routes: [{ path: /, access: public }]
`;
  writeFileSync(join(dir, 'one.yml'), yaml(1));
  writeFileSync(join(dir, 'two.yml'), yaml(2));
  const one = await runChild(['start', '-c', join(dir, 'one.yml')]);
  t.equal(one.code, 1, 'workers: 1 exits 1');
  t.notMatch(one.err, STACK, `workers: 1, no stack:\n${one.err}`);
  const two = await runChild(['start', '-c', join(dir, 'two.yml')]);
  t.equal(two.code, 1, 'workers: 2 exits 1');
  t.notMatch(two.err, STACK, `workers: 2, no stack:\n${two.err}`);
  t.match(two.err, /cannot start/, `workers: 2 says "cannot start" like workers: 1:\n${two.err}`);
});

// ---------------------------------------------------------------------------------------------
// 4. logging.ts redactUrl: names that carry credentials and contain none of the listed words.
t.test('redactUrl: credential-carrying query names outside the word list', async (t) => {
  for (const name of ['subscription-key', 'private_key', 'sessionKey', 'access_key', 'client_assertion', 'otp', 'x-api-key', 'id_token_hint']) {
    const out = redactUrl(`/p?${name}=S3CRET`);
    t.notMatch(out, /S3CRET/, `${name}: ${out}`);
  }
});

// ---------------------------------------------------------------------------------------------
// 5. memory.ts: at capacity, every new key sweeps the whole store (O(n)), as before the fix.
t.test('MemoryStore at capacity: a flood of new keys does not sweep the whole store for each', async (t) => {
  let now = 1_000_000;
  const store = new MemoryStore({ maxEntries: 1000, now: () => now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  for (let i = 0; i < 1000; i++) store.incrNow(`rl:keyed:header:${i}`, 60_000);
  let sweeps = 0;
  const sweep = store.sweep.bind(store);
  store.sweep = () => {
    sweeps++;
    return sweep();
  };
  for (let i = 0; i < 500; i++) store.incrNow(`rl:keyed:header:new-${i}`, 60_000);
  t.equal(sweeps, 1, 'one sweep for 500 new keys within a second (each sweep walks every key)');
  t.equal(store.size, 1000, 'still bounded');
  now += 1000;
  store.incrNow('rl:keyed:header:later', 60_000);
  t.equal(sweeps, 2, 'a second later, the next new key sweeps again');
});

// ---------------------------------------------------------------------------------------------
// 6. Token type (9be8aca): introspection now refuses refresh/ID/DPoP answers (token_type,
//    token_use, typ). The JWT path does not look at the same claims, and introspection does not
//    look at `cnf` (RFC 9449 §6.2: a DPoP-bound token's answer carries cnf.jkt).

t.test('introspection: an answer with cnf.jkt (DPoP-bound) but no token_type', async (t) => {
  const now = Date.now();
  const issuer: IssuerConfig = { issuer: 'https://idp.example', audiences: ['api'], algorithms: ['RS256'], jwksUri: null, rolesClaim: 'roles', clockSkew: 0, introspection: null, caBundle: null, caBundlePem: null };
  const cfg = { endpoint: null, clientId: 'c', clientSecret: 's', cache: 60_000 };
  const v = judgeIntrospection({ active: true, sub: 'u', aud: 'api', exp: now / 1000 + 60, cnf: { jkt: '0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I' } }, issuer, cfg as never, now);
  t.match(v, { ok: false }, `DPoP-bound answer: ${JSON.stringify(v)}`);
});

t.test('JWT path: an ID token (typ: ID / token_use: id) or a DPoP-bound JWT presented as Bearer', async (t) => {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  const idp = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { idp.closeAllConnections(); idp.close(() => r()); }));
  const iss = `http://127.0.0.1:${(idp.address() as { port: number }).port}`;
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}auth:
  issuers:
    - issuer: ${iss}
      audiences: [api]
      algorithms: [ES256]
      jwks_uri: ${iss}/jwks
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: / }]
`);
  const mint = (claims: Record<string, unknown>): Promise<string> =>
    new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(iss).setAudience('api').setSubject('u').setIssuedAt().setExpirationTime('5m').sign(privateKey);
  const status = async (claims: Record<string, unknown>): Promise<number> => (await gw.request({ path: '/', headers: { authorization: `Bearer ${await mint(claims)}` } })).status;
  t.equal(await status({}), 200, 'a plain access token passes');
  t.equal(await status({ typ: 'Bearer' }), 200, 'Keycloak access token passes');
  t.not(await status({ typ: 'ID' }), 200, 'Keycloak ID token (typ: ID) refused, as in introspection');
  t.not(await status({ typ: 'Refresh' }), 200, 'Keycloak refresh token (typ: Refresh) refused, as in introspection');
  t.not(await status({ token_use: 'id' }), 200, 'Cognito ID token (token_use: id) refused, as in introspection');
  t.not(await status({ cnf: { jkt: '0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I' } }), 200, 'DPoP-bound JWT without proof refused');
});

// ---------------------------------------------------------------------------------------------
// 7. gateway.ts guardedUpgrade: a handshake sent on a keep-alive connection AFTER the previous
//    response was received whole (not pipelined) must still be switched, never cut as 444.
t.test('a WebSocket handshake after a completed response on the same connection is switched (not pipelined)', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  t.teardown(() => new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); }));
  const wsOrigin = `http://127.0.0.1:${(wss.address() as { port: number }).port}`;
  // HTTP requests go to a plain upstream, /ws to the ws server.
  const up = await startUpstream(t, (_req, res) => { res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' }); res.end('ok'); });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }, { path: /ws, access: public, upstream: ${wsOrigin} }]
`);
  const results: string[] = [];
  for (let i = 0; i < 30; i++) {
    const got = await new Promise<string>((resolve) => {
      let buf = '';
      let sentUpgrade = false;
      const s = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] }, () => {
        s.write('GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n');
      });
      const timer = setTimeout(() => { s.destroy(); }, 3000);
      s.on('data', (c: Buffer) => {
        buf += c.toString('latin1');
        if (!sentUpgrade && /\r\n\r\nok$/.test(buf)) {
          sentUpgrade = true;
          const key = randomBytes(16).toString('base64');
          s.write(`GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
          void createHash;
        }
        if (sentUpgrade && buf.includes('HTTP/1.1 101')) { clearTimeout(timer); s.destroy(); }
      });
      s.on('error', () => undefined);
      s.on('close', () => { clearTimeout(timer); resolve(buf); });
    });
    results.push(got.includes('HTTP/1.1 101') ? '101' : got.includes('HTTP/1.1 200') ? 'cut' : 'none');
  }
  const cut = results.filter((r) => r !== '101').length;
  t.equal(cut, 0, `every sequential (non-pipelined) handshake switched: ${results.join(',')}`);
  t.notOk(gw.logs.some((l) => l.reason === 'pipelined_upgrade'), 'none logged as pipelined_upgrade');
});

// ---------------------------------------------------------------------------------------------
// 8. websocket-dial.ts: the absolute handshake deadline must be stopped by the 101; a session
//    must outlive the route's timeouts.response.
t.test('a proxied WebSocket session outlives timeouts.response (the handshake deadline is cleared)', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  wss.on('connection', (ws) => ws.on('message', (m: Buffer) => ws.send(`echo:${m.toString()}`)));
  t.teardown(() => new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); }));
  const wsOrigin = `http://127.0.0.1:${(wss.address() as { port: number }).port}`;
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
timeouts: { response: 1s }
sites:
  - hosts: [app.test]
    upstream: ${wsOrigin}
    routes: [{ path: /, access: public }]
`);
  const ws = new WsClient(`wss://127.0.0.1:${gw.port}/chat`, { ca: gw.ca, servername: 'app.test', headers: { host: 'app.test' } } as object);
  t.teardown(() => ws.terminate());
  await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
  let closed: number | null = null;
  ws.on('close', (code) => (closed = code));
  await new Promise((r) => setTimeout(r, 2500));
  t.equal(closed, null, 'still open after 2.5 s (timeouts.response 1s)');
  const echo = await new Promise<string>((resolve) => { ws.once('message', (m: Buffer) => resolve(m.toString())); ws.send('hi'); setTimeout(() => resolve('timeout'), 2000); });
  t.equal(echo, 'echo:hi');
});

// ---------------------------------------------------------------------------------------------
// 9. normalize.ts listener clash: a wildcard of one family against a specific address of the
//    other family (0.0.0.0 vs ::1) binds fine on Linux, yet validate refuses it.
t.test('listeners: 0.0.0.0:P and [::1]:P can both bind; validate should not refuse them', async (t) => {
  const a = net.createServer();
  await new Promise<void>((r) => a.listen(0, '0.0.0.0', r));
  const port = (a.address() as net.AddressInfo).port;
  const b = net.createServer();
  const bound = await new Promise<boolean>((r) => { b.once('error', () => r(false)); b.listen(port, '::1', () => r(true)); });
  t.teardown(() => { a.close(); b.close(); });
  t.ok(bound, `the OS binds 0.0.0.0:${port} and [::1]:${port} together`);
  let problems = '';
  try {
    parseConfig(`listen:\n  https: 0.0.0.0:${port}\n  http: null\n  admin: "[::1]:${port}"\nsites:\n  - hosts: [app.test]\n    upstream: http://127.0.0.1:9\n    routes: [{ path: /, access: public }]\n`, '/tmp/review-s12.yml');
  } catch (err) {
    problems = JSON.stringify((err as { problems?: unknown }).problems ?? String(err));
  }
  t.equal(problems, '', `validate accepts it (got: ${problems})`);
});

t.test('listeners: localhost:P and 127.0.0.1:P pass validate, yet cannot both bind', async (t) => {
  const a = net.createServer();
  await new Promise<void>((r) => a.listen(0, 'localhost', r));
  const port = (a.address() as net.AddressInfo).port;
  const b = net.createServer();
  const err = await new Promise<string | null>((r) => { b.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error')); b.listen(port, '127.0.0.1', () => r(null)); });
  t.teardown(() => { a.close(); b.close(); });
  t.comment(`binding localhost:${port} then 127.0.0.1:${port}: ${err ?? 'ok'} (localhost bound to ${(a.address() as net.AddressInfo).address})`);
  let problems = '';
  try {
    parseConfig(`listen:\n  https: localhost:${port}\n  http: null\n  admin: 127.0.0.1:${port}\nsites:\n  - hosts: [app.test]\n    upstream: http://127.0.0.1:9\n    routes: [{ path: /, access: public }]\n`, '/tmp/review-s12.yml');
  } catch (e) {
    problems = JSON.stringify((e as { problems?: unknown }).problems ?? String(e));
  }
  if (err !== null) t.not(problems, '', `validate should refuse what start cannot bind (${err})`);
});
