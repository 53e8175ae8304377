/**
 * The real example app (docker/example-app/app.py, run as is by Debian's python3 + python3-flask,
 * with its ProxyFix) behind the running gateway, configured like docker/gateway.yml but on
 * loopback ports, the local development CA and a token issuer the test controls. The client
 * connects from 127.0.0.2 so "the client IP" is distinguishable from the gateway's own address.
 */
import t from 'tap';
import https from 'node:https';
import { LOOPBACK_LISTEN, startGateway, type RunningGateway } from '../helpers/gateway.js';
import { FLASK_SKIP as SKIP, startExampleApp } from '../ops/tools.js';
import { authYaml, startIssuer, type TestIssuer } from './_support.js';

const CLIENT_ADDRESS = '127.0.0.2';

/** docker/gateway.yml's routes, plus a public site on the same app to see what anonymous requests carry. */
function gatewayYaml(iss: TestIssuer, app: string): string {
  return `${LOOPBACK_LISTEN}trusted_proxies: []
${authYaml(iss)}sites:
  - id: app
    hosts: [app.test]
    upstream: ${app}
    routes:
      - { id: health, path: /health, methods: [GET, HEAD], access: public }
      - { id: static, path: /static/, methods: [GET, HEAD], access: public }
      - { id: admin, path: /admin, roles: [admin] }
      - { id: app, path: /, access: authenticated }
  - id: anon
    hosts: [anon.test]
    upstream: ${app}
    routes:
      - { id: anon, path: /, access: public }
`;
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** HTTPS through the gateway from CLIENT_ADDRESS; `headers` as raw pairs so duplicates and odd case go out as written. */
function request(gw: RunningGateway, opts: { host?: string; path: string; method?: string; headers?: Array<[string, string]>; body?: string }): Promise<Reply> {
  const host = opts.host ?? 'app.test';
  const raw = [['Host', host], ...(opts.headers ?? [])].flat();
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: gw.port, localAddress: CLIENT_ADDRESS, servername: host, ca: gw.ca, agent: false, method: opts.method ?? 'GET', path: opts.path, headers: raw as unknown as Record<string, string> },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('error', reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

interface Whoami {
  scheme: string;
  host: string;
  remote_addr: string;
  user: string | null;
  email: string | null;
  roles: string[];
  headers: Record<string, string>;
}

const FORGED: Array<[string, string]> = [
  ['X-Auth-User', 'mallory'],
  ['x-auth-user', 'mallory2'],
  ['X-AUTH-ROLES', 'admin'],
  ['X-Auth-Email', 'mallory@evil.example'],
  ['X-Forwarded-For', '6.6.6.6'],
  ['X-Forwarded-Proto', 'http'],
  ['X-Forwarded-Host', 'evil.example'],
  ['X-Forwarded-Port', '80'],
  ['Forwarded', 'for=6.6.6.6;proto=http;host=evil.example'],
  ['X-Real-IP', '6.6.6.6'],
];

t.test('the Flask example app behind the running gateway', { skip: SKIP }, async (t) => {
  const iss = await startIssuer(t);
  const app = await startExampleApp(t, { FLASK_SECRET_KEY: 'ops-e2e-only' });
  const gw = await startGateway(t, gatewayYaml(iss, app));
  const alice = await iss.token('alice', { roles: ['admin', 'dev'], email: 'alice@app.test' });
  const bob = await iss.token('bob', { roles: ['user'] });

  t.test('public /health reaches the app', async (t) => {
    const r = await request(gw, { path: '/health' });
    t.equal(r.status, 200);
    t.same(JSON.parse(r.body), { status: 'ok' });
  });

  t.test('the app sees https, the client IP and the identity from the token, never the forged ones', async (t) => {
    const r = await request(gw, { path: '/api/whoami', headers: [['Authorization', `Bearer ${alice}`], ...FORGED] });
    t.equal(r.status, 200);
    const who = JSON.parse(r.body) as Whoami;
    t.equal(who.scheme, 'https', 'request.scheme via ProxyFix x_proto');
    t.equal(who.remote_addr, CLIENT_ADDRESS, 'the real client address, not the gateway\'s and not the forged 6.6.6.6');
    t.equal(who.host, `app.test:${gw.port}`, 'request.host is the client\'s Host (x_host + x_port)');
    t.equal(who.user, 'alice');
    t.equal(who.email, 'alice@app.test');
    t.same(who.roles, ['admin', 'dev']);
    t.equal(who.headers['X-Forwarded-For'], CLIENT_ADDRESS, 'the app got exactly one hop, the gateway\'s');
    t.equal(who.headers['X-Forwarded-Proto'], 'https');
    t.equal(who.headers['X-Auth-User'], 'alice', 'one X-Auth-User value, from the token');
    t.equal(who.headers.Authorization, '[present]', 'the token is forwarded (forward_token default) and masked by the app');
    t.notOk('Forwarded' in who.headers, 'a client Forwarded header is dropped');
    t.notOk('X-Real-Ip' in who.headers, 'a client X-Real-IP header is dropped');
    t.notMatch(r.body, /mallory|6\.6\.6\.6|evil\.example/, 'no forged value reached the app');
    t.match(who.headers['X-Request-Id'], /^[0-9a-f-]{36}$/);
    t.equal(r.headers['x-request-id'], who.headers['X-Request-Id'], 'the same request id on both sides');
  });

  t.test('a user token with forged admin roles: the roles the app sees are the token\'s; /admin is refused at the gateway', async (t) => {
    const who = JSON.parse((await request(gw, { path: '/api/whoami', headers: [['Authorization', `Bearer ${bob}`], ...FORGED] })).body) as Whoami;
    t.equal(who.user, 'bob');
    t.same(who.roles, ['user']);
    t.equal(who.email, null, 'no email claim: no X-Auth-Email at all, not the forged one');
    const admin = await request(gw, { path: '/admin', headers: [['Authorization', `Bearer ${bob}`], ['X-Auth-Roles', 'admin']] });
    t.equal(admin.status, 403);
    t.notMatch(admin.body, /Only users with the/, 'the refusal is the gateway\'s, not the app page');
    const ok = await request(gw, { path: '/admin', headers: [['Authorization', `Bearer ${alice}`]] });
    t.equal(ok.status, 200);
    t.match(ok.body, /Only users with the <code>admin<\/code> role get here/);
  });

  t.test('without a token: 401 from the gateway; forged identity never authenticates', async (t) => {
    const r = await request(gw, { path: '/api/whoami', headers: FORGED });
    t.equal(r.status, 401);
    t.match(r.headers['www-authenticate'], /^Bearer/);
    t.notMatch(r.body, /mallory/);
  });

  t.test('anonymous request on a public route: forged identity headers are stripped before the app', async (t) => {
    const r = await request(gw, { host: 'anon.test', path: '/api/whoami', headers: FORGED });
    t.equal(r.status, 200);
    const who = JSON.parse(r.body) as Whoami;
    t.equal(who.user, null);
    t.equal(who.email, null);
    t.same(who.roles, []);
    t.equal(who.remote_addr, CLIENT_ADDRESS);
    t.equal(who.scheme, 'https');
    t.notMatch(r.body, /mallory|6\.6\.6\.6|evil\.example/);
  });

  t.test('the app\'s form: a cross-site POST is refused by the gateway, a same-origin one works with a hardened cookie', async (t) => {
    const first = await request(gw, {
      method: 'POST',
      path: '/preferences',
      headers: [['Authorization', `Bearer ${alice}`], ['Content-Type', 'application/x-www-form-urlencoded'], ['Origin', `https://app.test:${gw.port}`]],
      body: 'colour=blue',
    });
    t.equal(first.status, 303, 'same-origin form POST reaches the app');
    const cookie = String(first.headers['set-cookie'] ?? '');
    t.match(cookie, /^session=/);
    t.match(cookie, /Secure/);
    t.match(cookie, /HttpOnly/);
    const session = cookie.split(';')[0]!;
    const cross = await request(gw, {
      method: 'POST',
      path: '/preferences',
      headers: [['Authorization', `Bearer ${alice}`], ['Cookie', session], ['Content-Type', 'application/x-www-form-urlencoded'], ['Origin', 'https://evil.example'], ['Sec-Fetch-Site', 'cross-site']],
      body: 'colour=red',
    });
    t.equal(cross.status, 403, 'CSRF refused at the gateway');
    const page = await request(gw, { path: '/', headers: [['Authorization', `Bearer ${alice}`], ['Cookie', session]] });
    t.match(page.body, /Favourite colour \(session cookie\): blue/, 'the refused POST changed nothing');
    t.match(page.body, new RegExp(`Reached as https://app\\.test:${gw.port} from ${CLIENT_ADDRESS.replace(/\./g, '\\.')}`));
  });
});
