// Attack tests against the rewritten request hot path (review of the speed work): the gateway's
// own forwarding on undici's Agent.dispatch (src/proxy/forward.ts), header filtering while copying
// (src/proxy/headers.ts), the callback-style onRequest gate and response header rewriting
// (src/gateway.ts), the verified-token cache (src/auth/lru.ts, authenticator.ts) and the same-turn
// rate-limit counter (src/state/memory.ts, src/protect/ratelimit.ts).
//
// Every test runs a real gateway (real TLS, ephemeral loopback ports) in front of a real or
// deliberately misbehaving upstream. Two rules are checked throughout: the upstream never sees a
// request the policy forbids (or a header the gateway must strip), and the client never gets
// something the gateway should have stripped or refused.
import t from 'tap';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { closedPort, LOOPBACK_LISTEN, startGateway, startUpstream, statusOf, type SeenRequest, type Tap, sleep, until, accessLine, rawUpstream } from '../helpers/gateway.js';
import { appSite as site, h2Request, h2Session, parseResponses, tlsClient } from '../helpers/clients.js';

// ---------------------------------------------------------------------------------------------
// Helpers

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Lower-case raw header names the upstream received. */
const rawNames = (s: SeenRequest): string[] => s.rawHeaders.filter((_v, i) => i % 2 === 0).map((n) => n.toLowerCase());

/** Every raw value of one (lower-case) header name the upstream received. */
const rawValues = (s: SeenRequest, name: string): string[] => {
  const out: string[] = [];
  for (let i = 0; i < s.rawHeaders.length; i += 2) if (s.rawHeaders[i]!.toLowerCase() === name) out.push(s.rawHeaders[i + 1]!);
  return out;
};

/**
 * A token issuer on loopback: an ES256 key whose JWKS is served by a local HTTP server. While
 * `hold()` is in effect, JWKS requests wait until `release()`: a token check that needs the keys is
 * then a stage waiting for I/O, for as long as the test wants.
 */
interface Issuer {
  issuer: string;
  yaml: string;
  jwksRequests(): number;
  hold(): void;
  release(): void;
  token(claims?: Record<string, unknown>, expSeconds?: number): Promise<string>;
}

async function startIssuer(t: Tap, opts: { held?: boolean; authExtra?: string } = {}): Promise<Issuer> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  let held = opts.held ?? false;
  let waiting: Array<() => void> = [];
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    const answer = (): void => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    };
    if (held) waiting.push(answer);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const w of waiting) w();
    server.closeAllConnections();
    server.close(() => r());
  }));
  const port = (server.address() as net.AddressInfo).port;
  const issuer = 'https://idp.hot-path.test';
  return {
    issuer,
    yaml: `auth:
  issuers:
    - issuer: ${issuer}
      audiences: [api]
      algorithms: [ES256]
      jwks_uri: http://127.0.0.1:${port}/jwks
      roles_claim: roles
      clock_skew: 0s
${opts.authExtra ?? ''}`,
    jwksRequests: () => requests,
    hold: () => {
      held = true;
    },
    release: () => {
      held = false;
      const w = waiting;
      waiting = [];
      for (const answer of w) answer();
    },
    token: (claims = {}, expSeconds = 300) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ sub: 'alice', roles: ['user'], email: 'alice@app.test', ...claims })
        .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'at+jwt' })
        .setIssuer(issuer)
        .setAudience('api')
        .setIssuedAt(now)
        .setExpirationTime(now + expSeconds)
        .sign(privateKey);
    },
  };
}

const protectedSite = (iss: Issuer, origin: string, extra = ''): string => `${LOOPBACK_LISTEN}${iss.yaml}${extra}
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes:
      - { path: /public, access: public }
      - { path: /admin, roles: [admin] }
      - { path: /, access: authenticated }
`;

// =============================================================================================
// 1. Request headers: what the client names in Connection, spells oddly or sends twice.

t.test('Connection naming Host, Content-Length, Authorization, X-Forwarded-For, X-Request-Id and the identity headers: nothing the gateway sets is lost, nothing the client set gets through', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, protectedSite(iss, up.origin));
  const token = await iss.token();
  const c = await tlsClient(t, gw);
  const body = 'name=widget&qty=3';
  c.socket.write(
    'POST /orders HTTP/1.1\r\nHost: app.test\r\n' +
      `Authorization: Bearer ${token}\r\n` +
      'Content-Type: application/x-www-form-urlencoded\r\n' +
      `Content-Length: ${body.length}\r\n` +
      'X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\n' +
      'X-Request-Id: attacker-chosen\r\n' +
      'X-Auth-User: admin\r\nx-auth-USER: root\r\nX-Auth-Roles: admin\r\nX-Auth-Issuer: https://evil.test\r\n' +
      'Connection: keep-alive, Host, Content-Length, Authorization, X-Forwarded-For, x-request-id, X-AUTH-USER, x-auth-roles, X-Auth-Email, x-auth-issuer, X-Forwarded-Proto\r\n' +
      `\r\n${body}` +
      // A second request on the same connection: the first one's framing must not have leaked.
      'GET /second HTTP/1.1\r\nHost: app.test\r\n' + `Authorization: Bearer ${token}\r\n` + 'Connection: close\r\n\r\n',
  );
  t.ok(await c.closedWithin(5000), 'both answered, connection closed');
  const responses = parseResponses(c.text(), ['POST', 'GET']);
  t.same(responses.map((r) => r.status), [200, 200], 'two 200s');
  t.equal(up.seen.length, 2, 'the upstream saw exactly two requests');
  const s = up.seen[0]!;
  t.equal(s.method, 'POST');
  t.equal(s.body.toString(), body, 'the body arrived whole');
  t.same(rawValues(s, 'host'), ['app.test'], 'exactly one Host, the client one');
  t.same(rawValues(s, 'x-forwarded-for'), ['127.0.0.1'], 'X-Forwarded-For: only the gateway value');
  t.same(rawValues(s, 'x-forwarded-proto'), ['https']);
  const rid = rawValues(s, 'x-request-id');
  t.equal(rid.length, 1);
  t.match(rid[0], /^[0-9a-f-]{36}$/, 'the gateway request id, not the client one');
  t.same(rawValues(s, 'x-auth-user'), ['alice'], 'identity: exactly the token subject');
  t.same(rawValues(s, 'x-auth-roles'), ['user']);
  t.same(rawValues(s, 'x-auth-email'), ['alice@app.test']);
  t.same(rawValues(s, 'x-auth-issuer'), [iss.issuer]);
  t.same(rawValues(s, 'authorization'), [], 'no Authorization (forward_token is off)');
  t.notOk(rawNames(s).includes('connection') && rawValues(s, 'connection').some((v) => /host|authorization|x-auth/i.test(v)), 'the client Connection value is not forwarded');
  t.equal(up.seen[1]!.url, '/second');
  t.same(rawValues(up.seen[1]!, 'x-auth-user'), ['alice']);
});

t.test('Connection naming Transfer-Encoding on a chunked upload: the body arrives whole, nothing else', async (t) => {
  const up = await startUpstream(t, (_req, res, body) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`${body.length} ${sha256(body)}`);
  });
  const gw = await startGateway(t, site(up.origin));
  const data = randomBytes(3000).toString('hex');
  const chunk = (s: string): string => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
  const c = await tlsClient(t, gw);
  c.socket.write(
    'POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n' +
      'Connection: Transfer-Encoding, TE, Trailer\r\nTE: trailers\r\nTrailer: X-Checksum\r\n\r\n' +
      `${chunk(data.slice(0, 1000))}${chunk(data.slice(1000))}0\r\nX-Checksum: abc\r\n\r\n` +
      'GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n',
  );
  t.ok(await c.closedWithin(5000));
  const responses = parseResponses(c.text(), ['POST', 'GET']);
  t.same(responses.map((r) => r.status), [200, 200]);
  t.equal(responses[0]?.body, `${data.length} ${sha256(Buffer.from(data))}`, 'the upstream got the body byte for byte');
  t.equal(up.seen.length, 2, 'two requests, no third one made of body bytes');
  const names = rawNames(up.seen[0]!);
  for (const n of ['te', 'trailer', 'x-checksum']) t.notOk(names.includes(n), `${n} not forwarded`);
  t.equal(up.seen[1]!.url, '/after');
});

t.test('underscore and mixed spellings of gateway-owned headers (X-Forwarded-*, X-Real-IP, X-Request-Id, Forwarded, identity) never reach the upstream', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, protectedSite(iss, up.origin));
  const token = await iss.token();
  const tricks =
    'X_Forwarded_For: 6.6.6.6\r\nx-forwarded_for: 6.6.6.7\r\nX_Real_IP: 6.6.6.6\r\nx_request_id: attacker\r\n' +
    'X_Forwarded_Host: evil.test\r\nx_forwarded_proto: http\r\nX-Forwarded_Port: 1\r\n' +
    'X-Auth_User: admin\r\nx_auth-roles: admin\r\nX_AUTH_EMAIL: root@app.test\r\nX_Auth_Issuer: https://evil.test\r\n';
  for (const path of ['/public/x', '/orders']) {
    const c = await tlsClient(t, gw);
    c.socket.write(`GET ${path} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer ${token}\r\n${tricks}Connection: close\r\n\r\n`);
    t.ok(await c.closedWithin(5000));
    t.equal(statusOf(c.text()), 200, `${path}: 200`);
    const s = up.seen.at(-1)!;
    const bad = rawNames(s).filter((n) => n.includes('_'));
    t.same(bad, [], `${path}: no underscore spelling of an owned header (${bad.join(', ')})`);
    t.same(rawValues(s, 'x-forwarded-for'), ['127.0.0.1']);
    t.same(rawValues(s, 'x-forwarded-host'), ['app.test']);
    t.same(rawValues(s, 'x-forwarded-proto'), ['https']);
    t.same(rawValues(s, 'x-real-ip'), []);
    t.same(rawValues(s, 'x-auth-user'), path === '/orders' ? ['alice'] : [], `${path}: identity only from the gateway`);
    t.same(rawValues(s, 'x-auth-roles'), path === '/orders' ? ['user'] : []);
  }
});

t.test('Upgrade on a plain request (h2c, or a WebSocket upgrade without a key): no 101, the upstream never sees Upgrade or HTTP2-Settings', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin));
  const variants = [
    'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n',
    'Connection: Upgrade\r\nUpgrade: websocket\r\n',
    'Connection: keep-alive, Upgrade\r\nUpgrade: TLS/1.2, HTTP/1.1\r\n',
  ];
  for (const v of variants) {
    const c = await tlsClient(t, gw);
    c.socket.write(`GET /plain HTTP/1.1\r\nHost: app.test\r\n${v}\r\n`);
    await until(() => c.text().includes('\r\n\r\n'), 3000);
    await sleep(50);
    const status = statusOf(c.text());
    t.not(status, 101, `${v.split('\r\n')[1]}: never switching protocols (got ${status})`);
    t.ok(status >= 200, 'a final answer');
    for (const s of up.seen) {
      const names = rawNames(s);
      t.notOk(names.includes('upgrade'), 'no Upgrade upstream');
      t.notOk(names.includes('http2-settings'), 'no HTTP2-Settings upstream');
      t.notOk(rawValues(s, 'connection').some((x) => /upgrade/i.test(x)), 'no Connection: Upgrade upstream');
    }
    c.socket.destroy();
  }
});

t.test('Expect: 100-continue: the client gets its 100 from the gateway, the upstream gets the body and no Expect', async (t) => {
  const up = await startUpstream(t, (_req, res, body) => {
    res.writeHead(201, { 'content-type': 'text/plain' });
    res.end(`got ${body.length}`);
  });
  const gw = await startGateway(t, site(up.origin));
  const c = await tlsClient(t, gw);
  const body = 'x'.repeat(5000);
  c.socket.write(`POST /expect HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`);
  t.ok(await until(() => c.text().startsWith('HTTP/1.1 100'), 3000), 'interim 100 Continue');
  t.equal(up.seen.length, 0, 'nothing forwarded before the body comes');
  c.socket.write(body);
  t.ok(await c.closedWithin(5000));
  const responses = parseResponses(c.text(), ['POST']);
  const final = responses.find((r) => r.status >= 200);
  t.equal(final?.status, 201);
  t.equal(final?.body, `got ${body.length}`);
  t.equal(up.seen.length, 1);
  t.notOk(rawNames(up.seen[0]!).includes('expect'), 'no Expect upstream');
  t.equal(up.seen[0]!.body.length, body.length);
});

// =============================================================================================
// 2. Upstream responses: what must never reach the client.

t.test('upstream hop-by-hop and leaky response headers, and those its Connection names, never reach the client (HTTP/1.1 and HTTP/2)', async (t) => {
  const up = await rawUpstream(t, (socket) => {
    socket.write(
      'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n' +
        'Connection: keep-alive, X-Internal-Token, x-debug-trace\r\nconnection: X-Upstream-Host\r\n' +
        'X-Internal-Token: s3cr3t\r\nX-Debug-Trace: db=10.0.0.7\r\nX-Upstream-Host: app-7\r\n' +
        'Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm="internal"\r\nProxy-Connection: keep-alive\r\n' +
        'Trailer: X-Sum\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n' +
        'Server: gunicorn/20.0\r\nSERVER: nginx/1.2\r\nX-Powered-By: PHP/5.6\r\nX-Runtime: 0.2\r\nX-Backend-Server: app-7\r\nX-AspNetMvc-Version: 5.2\r\nX-AspNet-Version: 4.0\r\n' +
        'X-Request-Id: upstream-chosen\r\nX-Kept: yes\r\nContent-Length: 5\r\n\r\nhello',
    );
  });
  const gw = await startGateway(t, site(up.origin));
  const dropped = ['x-internal-token', 'x-debug-trace', 'x-upstream-host', 'keep-alive', 'proxy-authenticate', 'proxy-connection', 'trailer', 'upgrade', 'http2-settings', 'server', 'x-powered-by', 'x-runtime', 'x-backend-server', 'x-aspnetmvc-version', 'x-aspnet-version'];

  const c = await tlsClient(t, gw);
  c.socket.write('GET /leaky HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.ok(await c.closedWithin(5000));
  const [res] = parseResponses(c.text(), ['GET']);
  t.equal(res?.status, 200);
  t.equal(res?.body, 'hello');
  for (const name of dropped) t.equal(res?.headers[name], undefined, `HTTP/1.1: ${name} stripped`);
  t.notMatch(c.text(), /s3cr3t|10\.0\.0\.7|app-7|gunicorn|nginx|PHP/, 'HTTP/1.1: none of their values anywhere in the bytes');
  t.equal(res?.headers['x-kept'], 'yes', 'an ordinary header passes');
  t.not(res?.headers['x-request-id'], 'upstream-chosen', "the gateway's request id, not the upstream's");

  const h2 = await h2Request(h2Session(t, gw), { ':path': '/leaky-h2' });
  t.equal(h2.status, 200);
  t.equal(h2.body, 'hello');
  for (const name of dropped) t.equal(h2.headers[name], undefined, `HTTP/2: ${name} stripped`);
  t.equal(h2.headers['x-kept'], 'yes');
});

t.test('Set-Cookie variants from the upstream are all hardened, none lost', async (t) => {
  const up = await rawUpstream(t, (socket) => {
    socket.write(
      'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n' +
        'Set-Cookie: plain=1\r\n' +
        'Set-Cookie: valueSaysSecure=Secure; Path=/\r\n' +
        'Set-Cookie: bogusSameSite=1; SameSite=bogus; Path=/\r\n' +
        'Set-Cookie: spaced=1 ;  path=/ ;\r\n' +
        'Set-Cookie: expires=1; Expires=Wed, 21 Oct 2035 07:28:00 GMT\r\n' +
        'set-cookie: lower=1; HTTPONLY\r\n' +
        'Content-Length: 2\r\n\r\nok',
    );
  });
  const gw = await startGateway(t, site(up.origin));
  const res = await gw.request({ path: '/cookies' });
  t.equal(res.status, 200);
  const cookies = res.headers['set-cookie'] ?? [];
  t.equal(cookies.length, 6, 'six cookies, none split or merged');
  for (const line of cookies) {
    const attrs = line.split(';').slice(1).map((a) => a.trim().toLowerCase());
    t.ok(attrs.includes('secure'), `${line}: Secure`);
    t.ok(attrs.includes('httponly'), `${line}: HttpOnly`);
    const sameSite = attrs.filter((a) => a.startsWith('samesite=')).at(-1);
    t.ok(sameSite === 'samesite=lax' || sameSite === 'samesite=strict' || sameSite === 'samesite=none', `${line}: a valid SameSite last`);
  }
  t.ok(cookies.some((l) => l.startsWith('expires=1; Expires=Wed, 21 Oct 2035 07:28:00 GMT')), 'an Expires with a comma is kept whole');
});

t.test('upstream framing conflicts (two Content-Length, Content-Length with chunked): never two lengths or a mixed framing at the client', async (t) => {
  const answers: Array<[string, string]> = [
    ['same CL twice', 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello'],
    ['different CLs', 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello'],
    ['CL list', 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5, 5\r\n\r\nhello'],
    ['TE and CL', 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n'],
  ];
  for (const [name, answer] of answers) {
    const up = await rawUpstream(t, (socket) => socket.write(answer));
    const gw = await startGateway(t, site(up.origin));
    const c = await tlsClient(t, gw);
    c.socket.write('GET /framing HTTP/1.1\r\nHost: app.test\r\n\r\nGET /framing2 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
    await c.closedWithin(5000);
    const raw = c.text();
    const heads = raw.split(/(?=HTTP\/1\.1 \d{3} )/);
    for (const h of heads) {
      const head = h.slice(0, h.indexOf('\r\n\r\n'));
      const cl = head.split('\r\n').filter((l) => /^content-length:/i.test(l));
      const te = head.split('\r\n').filter((l) => /^transfer-encoding:/i.test(l));
      t.ok(cl.length <= 1, `${name}: at most one Content-Length line (${cl.join(' | ')})`);
      t.ok(!(cl.length > 0 && te.length > 0), `${name}: not both Content-Length and Transfer-Encoding`);
      if (cl[0] !== undefined) t.match(cl[0], /^content-length: \d+$/i, `${name}: a single number`);
    }
    const responses = parseResponses(raw, ['GET', 'GET']);
    for (const r of responses) {
      t.ok(r.status === 200 || r.status === 502, `${name}: 200 or the gateway's 502 (${r.status})`);
      if (r.status === 200) t.equal(r.body, 'hello', `${name}: a 200 carries the body as the upstream framed it`);
    }
    t.equal((await gw.request({ path: '/alive' })).status >= 200, true, `${name}: the gateway keeps answering`);
  }
});

t.test('a 204 or 304 that carries body bytes anyway: the client gets no body, and its next response is its own', async (t) => {
  for (const status of [204, 304]) {
    const up = await rawUpstream(t, (socket, head) => {
      if (head.startsWith('GET /bodyless')) socket.write(`HTTP/1.1 ${status} X\r\nContent-Length: 33\r\n\r\nHTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n`);
      else socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nafter');
    });
    const gw = await startGateway(t, site(up.origin));
    const c = await tlsClient(t, gw);
    c.socket.write('GET /bodyless HTTP/1.1\r\nHost: app.test\r\n\r\n');
    t.ok(await until(() => c.text().includes('\r\n\r\n')), `${status}: answered`);
    await sleep(100);
    c.socket.write('GET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
    await c.closedWithin(5000);
    const raw = c.text();
    t.notMatch(raw, /X-Evil/i, `${status}: the smuggled bytes never reach the client`);
    const responses = parseResponses(raw, ['GET', 'GET']);
    // Either the upstream's status with no body at all, or (undici refuses the framing) the gateway's own 502.
    const first = responses[0];
    t.ok(first?.status === status || first?.status === 502, `${status}: the upstream's status or the gateway's 502 (${first?.status})`);
    if (first?.status === status) t.match(raw, new RegExp(`^HTTP/1\\.1 ${status} [^]*?\\r\\n\\r\\nHTTP/1\\.1 `), `${status}: no byte between the heads`);
    else t.match(first?.body, /^502 Bad Gateway\ncode: GW_ERR_UPSTREAM_/, `${status}: the gateway's own body`);
    t.ok(responses[1]?.status === 200 || responses[1]?.status === 502, `${status}: a second response (${responses[1]?.status})`);
    if (responses[1]?.status === 200) t.equal(responses[1].body, 'after', `${status}: and it is the second request's`);
  }
});

t.test("upstream failures never show the upstream's address or error text", async (t) => {
  const deadPort = await closedPort();
  const resetter = await rawUpstream(t, (socket) => socket.resetAndDestroy());
  for (const [name, origin] of [['refused', `http://127.0.0.1:${deadPort}`], ['reset', resetter.origin]] as const) {
    const gw = await startGateway(t, site(origin));
    for (const accept of ['application/json', 'text/html', '*/*']) {
      const res = await gw.request({ path: '/fail', headers: { accept } });
      t.equal(res.status, 502, `${name}/${accept}: 502`);
      const all = res.body + JSON.stringify(res.headers);
      t.notMatch(all, /ECONNREFUSED|ECONNRESET|socket hang up|other side closed|127\.0\.0\.1|undici|UND_ERR/i, `${name}/${accept}: no internals`);
      t.notMatch(all, new RegExp(`:${new URL(origin).port}\\b`), `${name}/${accept}: no upstream port`);
    }
  }
});

// =============================================================================================
// 3. The verified-token cache.

t.test('a token cached while valid is refused once it expires; the upstream never sees it after exp', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, protectedSite(iss, up.origin));
  const token = await iss.token({}, 2);
  const exp = (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp;
  t.equal((await gw.request({ path: '/before', headers: { authorization: `Bearer ${token}` } })).status, 200, 'valid: 200 (now cached)');
  t.equal((await gw.request({ path: '/before2', headers: { authorization: `Bearer ${token}` } })).status, 200, 'cached hit: 200');
  const wait = exp * 1000 - Date.now() + 150;
  if (wait > 0) await sleep(wait);
  const after = await gw.request({ path: '/after', headers: { authorization: `Bearer ${token}` } });
  t.equal(after.status, 401, 'expired: 401 even though the cache held it');
  t.equal((await accessLine(gw, '/after'))?.reason, 'token_expired');
  t.same(up.seen.map((s) => s.url), ['/before', '/before2'], 'the upstream saw nothing after exp');
});

t.test('tokens differing by one character from a cached one are refused and never forwarded', async (t) => {
  const iss = await startIssuer(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, protectedSite(iss, up.origin));
  const token = await iss.token();
  t.equal((await gw.request({ path: '/good', headers: { authorization: `Bearer ${token}` } })).status, 200);
  const [h, p, s] = token.split('.') as [string, string, string];
  const flip = (str: string, i: number): string => str.slice(0, i) + (str[i] === 'A' ? 'B' : 'A') + str.slice(i + 1);
  const variants: Array<[string, string]> = [
    ['header char', `${flip(h, 5)}.${p}.${s}`],
    ['payload char', `${h}.${flip(p, Math.floor(p.length / 2))}.${s}`],
    ['signature char', `${h}.${p}.${flip(s, 10)}`],
    ['extra char', `${token}A`],
    ['one char less', token.slice(0, -1)],
    ['payload of another sub', `${h}.${Buffer.from(JSON.stringify({ ...(JSON.parse(Buffer.from(p, 'base64url').toString()) as object), sub: 'mallory' })).toString('base64url')}.${s}`],
  ];
  for (const [name, bad] of variants) {
    if (bad === token) continue;
    const res = await gw.request({ path: `/bad-${name.replace(/ /g, '-')}`, headers: { authorization: `Bearer ${bad}` } });
    t.equal(res.status, 401, `${name}: 401`);
  }
  t.same(up.seen.map((x) => x.url), ['/good'], 'only the genuine token reached the upstream');
  t.same(rawValues(up.seen[0]!, 'x-auth-user'), ['alice']);
});

// =============================================================================================
// 4. Clients that leave while a stage waits for I/O (the first JWKS fetch).

t.test('HTTP/2 streams cancelled while the token check waits for the JWKS: none is forwarded; the one that stayed is', async (t) => {
  const iss = await startIssuer(t, { held: true });
  const up = await startUpstream(t);
  const gw = await startGateway(t, protectedSite(iss, up.origin));
  const token = await iss.token();
  await until(() => iss.jwksRequests() > 0, 3000);
  const session = h2Session(t, gw);
  const leaving: http2.ClientHttp2Stream[] = [];
  for (let i = 0; i < 5; i++) {
    const req = session.request({ ':authority': 'app.test', ':path': `/leave-${i}`, ':method': i % 2 ? 'POST' : 'GET', authorization: `Bearer ${token}` });
    req.on('error', () => undefined);
    if (i % 2) req.end('payload');
    else req.end();
    leaving.push(req);
  }
  const staying = h2Request(session, { ':path': '/stay', authorization: `Bearer ${token}` });
  await sleep(150);
  for (const req of leaving) req.close(http2.constants.NGHTTP2_CANCEL);
  await sleep(100);
  iss.release();
  const res = await staying;
  t.equal(res.status, 200, 'the stream that stayed is answered');
  await sleep(200);
  for (let i = 0; i < 5; i++) {
    const lines = gw.logs.filter((l) => l.type === 'access' && l.path === `/leave-${i}`);
    // One request, one access line (and one count in the request metrics): the 499.
    t.same(lines.map((l) => l.status), [499], `/leave-${i}: exactly one access line, 499 (got ${lines.map((l) => l.status).join(', ')})`);
  }
  t.same(up.seen.map((s) => s.url), ['/stay'], 'the upstream never got a request whose client had left');
});

t.test('HTTP/1.1 upload whose client leaves while the token check waits: the upstream never sees it', async (t) => {
  const iss = await startIssuer(t, { held: true });
  const up = await startUpstream(t);
  const gw = await startGateway(t, protectedSite(iss, up.origin));
  const token = await iss.token();
  await until(() => iss.jwksRequests() > 0, 3000);
  const c = await tlsClient(t, gw);
  c.socket.write(`POST /upload-leave HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\n0123456789`);
  await sleep(150);
  c.socket.destroy();
  await sleep(100);
  iss.release();
  const line = await accessLine(gw, '/upload-leave');
  t.equal(line?.status, 499);
  await sleep(200);
  t.equal(up.seen.length, 0, 'nothing forwarded');
});

// =============================================================================================
// 5. Rate limits: over the limit, the upstream sees nothing.

t.test('a burst of concurrent HTTP/2 streams on an ip-limited route: exactly max reach the upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public, rate_limit: { max: 3, window: 1m, key: ip } }]'));
  const session = h2Session(t, gw);
  const results = await Promise.all(Array.from({ length: 12 }, (_v, i) => h2Request(session, { ':path': `/burst-${i}` })));
  const statuses = results.map((r) => r.status);
  t.equal(statuses.filter((s) => s === 200).length, 3, `three 200s (${statuses.join(',')})`);
  t.equal(statuses.filter((s) => s === 429).length, 9, 'the rest 429');
  t.equal(up.seen.length, 3, 'the upstream saw exactly three');
});

t.test('key: user, a burst of one user while the first token check waits for I/O: exactly max reach the upstream; another user has its own budget', async (t) => {
  const iss = await startIssuer(t, { held: true });
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${iss.yaml}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /, access: authenticated, rate_limit: { max: 2, window: 1m, key: user } }
`);
  await until(() => iss.jwksRequests() > 0, 3000);
  // Two tokens for alice (different strings: two cache entries), one for bob.
  const alice1 = await iss.token({ sub: 'alice', jti: 'a1' });
  const alice2 = await iss.token({ sub: 'alice', jti: 'a2' });
  const bob = await iss.token({ sub: 'bob' });
  const session = h2Session(t, gw);
  const pending = Array.from({ length: 8 }, (_v, i) => h2Request(session, { ':path': `/a-${i}`, authorization: `Bearer ${i % 2 ? alice1 : alice2}` }));
  const bobs = Array.from({ length: 2 }, (_v, i) => h2Request(session, { ':path': `/b-${i}`, authorization: `Bearer ${bob}` }));
  await sleep(150);
  iss.release();
  const a = (await Promise.all(pending)).map((r) => r.status);
  const b = (await Promise.all(bobs)).map((r) => r.status);
  t.equal(a.filter((s) => s === 200).length, 2, `alice: two 200s (${a.join(',')})`);
  t.equal(a.filter((s) => s === 429).length, 6, 'alice: the rest 429');
  t.same(b, [200, 200], 'bob has his own budget');
  t.equal(up.seen.filter((s) => s.url.startsWith('/a-')).length, 2, 'the upstream saw two of alice');
  // Cached now: the same holds synchronously.
  t.equal((await h2Request(session, { ':path': '/a-late', authorization: `Bearer ${alice1}` })).status, 429);
  t.equal(up.seen.filter((s) => s.url.startsWith('/a-')).length, 2);
});

// =============================================================================================
// 6. The gateway's own response timer (timeouts.response) and client-stall timer.

t.test('timeouts.response counts from the end of the request: a slow upload followed by a prompt answer is not a 504', async (t) => {
  // The upload takes 1.5 s, the upstream answers 1.2 s after the body's end: every wait the
  // upstream caused is shorter than timeouts.response (2 s). undici's headers timeout, which the
  // gateway's own timer replaced, is restarted when the request has been written whole.
  const up = await startUpstream(t, (_req, res, body) => {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`got ${body.length}`);
    }, 1200);
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', 'timeouts: { response: 2s }\n'));
  const c = await tlsClient(t, gw);
  c.socket.write('POST /slow-upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 20\r\nConnection: close\r\n\r\n0123456789');
  await sleep(1500);
  c.socket.write('abcdefghij');
  t.ok(await c.closedWithin(6000), 'answered');
  const [res] = parseResponses(c.text(), ['POST']);
  t.equal(res?.status, 200, `the upstream's 200 (got ${res?.status} ${res?.body.split('\n')[0] ?? ''})`);
  t.equal(res?.body, 'got 20');
  t.equal(up.seen.length, 1, 'the upstream got the whole request');
});

t.test('a client upload slower than timeouts.response in total (each gap shorter) is forwarded whole, not cut with a 504', async (t) => {
  // Five chunks 600 ms apart (about 2.4 s), timeouts.response 2 s: the upstream owes nothing until
  // the body has arrived, and answers at once then.
  const up = await startUpstream(t, (_req, res, body) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`got ${body.length}`);
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', 'timeouts: { response: 2s }\n'));
  const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: gw.port, method: 'POST', path: '/trickle-upload', ca: gw.ca, servername: 'app.test', agent: false, headers: { host: 'app.test', 'content-type': 'application/octet-stream' } },
      (r) => {
        let b = '';
        r.setEncoding('utf8');
        r.on('data', (d: string) => (b += d));
        r.on('end', () => resolve({ status: r.statusCode!, body: b }));
      },
    );
    req.on('error', reject);
    void (async () => {
      for (let i = 0; i < 5; i++) {
        if (req.destroyed) return;
        req.write('x'.repeat(1000));
        await sleep(600);
      }
      req.end();
    })();
  });
  t.equal(res.status, 200, `the upstream's 200 (got ${res.status} ${res.body.split('\n')[0] ?? ''})`);
  t.equal(res.body, 'got 5000');
  const line = await accessLine(gw, '/trickle-upload');
  t.equal(line?.reason, undefined, `no failure reason logged (${String(line?.reason)})`);
});

t.test('timeouts.response: 0s (no deadline, as for timeouts.connect) does not cut a client that reads at normal speed', async (t) => {
  const size = 8 * 1024 * 1024;
  const payload = randomBytes(size);
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    res.end(payload);
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', 'timeouts: { response: 0s }\n'));
  const got = await new Promise<{ status: number; bytes: number; ended: boolean; hash: string }>((resolve) => {
    const req = https.request({ host: '127.0.0.1', port: gw.port, path: '/big', ca: gw.ca, servername: 'app.test', agent: false, headers: { host: 'app.test' } }, (res) => {
      const chunks: Buffer[] = [];
      let ended = false;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => (ended = true));
      res.on('error', () => undefined);
      res.on('close', () => {
        const all = Buffer.concat(chunks);
        resolve({ status: res.statusCode!, bytes: all.length, ended, hash: sha256(all) });
      });
    });
    req.on('error', () => resolve({ status: 0, bytes: 0, ended: false, hash: '' }));
    req.end();
  });
  t.equal(got.status, 200);
  t.equal(got.bytes, size, `every byte delivered (got ${got.bytes} of ${size})`);
  t.ok(got.ended, 'the response ended normally');
  t.equal(got.hash, sha256(payload));
  const line = await accessLine(gw, '/big');
  t.equal(line?.reason, undefined, `no cut reason in the access line (${String(line?.reason)})`);
});
