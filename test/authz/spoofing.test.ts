// Client-sent identity headers never reach the upstream: any case, repeated, named in Connection,
// over HTTP/1.1 and HTTP/2, on public and protected routes. The upstream sees the gateway's
// values (protected routes) or none at all (public routes).
import t from 'tap';
import http2 from 'node:http2';
import { rawTls, startGateway, startUpstream, statusOf, type SeenRequest } from '../helpers/gateway.js';
import { USER_CLAIMS, bearer, idpToken, policyYaml, startIdp } from './_support.js';

const idp = await startIdp();
t.teardown(() => idp.close());
const userToken = await idpToken(idp, { claims: { ...USER_CLAIMS, email: 'svc@app.test' } });

const IDENTITY = ['x-auth-user', 'x-auth-email', 'x-auth-roles', 'x-auth-issuer'];

/** Every raw header line (name, value) the upstream received with an identity header name. */
function identityLines(s: SeenRequest): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i < s.rawHeaders.length; i += 2) {
    const name = s.rawHeaders[i]!;
    if (IDENTITY.includes(name.toLowerCase())) out.push([name.toLowerCase(), s.rawHeaders[i + 1]!]);
  }
  return out.sort();
}

const SPOOF_HEADERS =
  'X-Auth-User: admin\r\n' +
  'x-AUTH-roles: admin\r\n' +
  'X-AUTH-ROLES: superuser\r\n' +
  'x-auth-email: root@app.test\r\n' +
  'X-Auth-Issuer: https://evil.test\r\n' +
  'X-Auth-User: second-admin\r\n';

function rawGet(path: string, extra: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: app.test\r\n${extra}Connection: close\r\n\r\n`;
}

t.test('HTTP/1.1: spoofed identity headers are removed on public and protected routes', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));

  // public route: none of them arrive
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/health', SPOOF_HEADERS))), 200);
  t.same(identityLines(up.seen.at(-1)!), [], 'public route: no identity header at all');

  // public route, and Connection names them (a hop-by-hop trick to make a proxy *keep* them elsewhere)
  t.equal(statusOf(await rawTls(gw.port, gw.ca, `GET /health HTTP/1.1\r\nHost: app.test\r\n${SPOOF_HEADERS}Connection: close, X-Auth-User, x-auth-roles\r\n\r\n`)), 200);
  t.same(identityLines(up.seen.at(-1)!), [], 'public route + Connection: none');

  // protected route: only the gateway's values, once each
  const expected = [['x-auth-email', 'svc@app.test'], ['x-auth-issuer', idp.issuer], ['x-auth-roles', 'user'], ['x-auth-user', 'svc']];
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/orders', `Authorization: Bearer ${userToken}\r\n${SPOOF_HEADERS}`))), 200);
  t.same(identityLines(up.seen.at(-1)!), expected, 'protected route: exactly the gateway values');

  // protected route, Connection naming the identity headers must not remove the gateway's values
  t.equal(
    statusOf(await rawTls(gw.port, gw.ca, `GET /orders HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer ${userToken}\r\n${SPOOF_HEADERS}Connection: X-Auth-User, X-Auth-Roles, X-Auth-Email, close\r\n\r\n`)),
    200,
  );
  t.same(identityLines(up.seen.at(-1)!), expected, 'Connection cannot strip what the gateway sets');

  // the spoofed values must not have helped: /admin is still refused to this user
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/admin', `Authorization: Bearer ${userToken}\r\n${SPOOF_HEADERS}`))), 403);
  t.equal(up.seen.length, 4, '/admin never reached the upstream');
});

t.test('HTTP/1.1: whitespace and underscore variants do not smuggle an identity', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  // Whitespace before the colon (RFC 9112 §5.1: MUST be rejected with 400) and obs-fold.
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/health', 'X-Auth-User : admin\r\n'))), 400, 'space before colon: 400');
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/health', 'X-Foo: a\r\n X-Auth-User: admin\r\n'))), 400, 'obs-fold: 400');
  t.equal(up.seen.length, 0);
  // Underscore variant: CGI/WSGI/PHP map both "-" and "_" to "_", so X_Auth_User reads as HTTP_X_AUTH_USER.
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/health', 'X_Auth_User: admin\r\nx_auth_roles: admin\r\nX_Auth_Issuer: https://evil.test\r\n'))), 200);
  const s = up.seen.at(-1)!;
  t.same(identityLines(s), []);
  const underscore = s.rawHeaders.filter((v, i) => i % 2 === 0 && /^x_auth_/i.test(v));
  t.same(underscore, [], 'underscore spellings of the identity headers are dropped too');
});

t.test('HTTP/2: spoofed identity headers are removed on public and protected routes', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const client = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => client.close());
  const get = (path: string, headers: Record<string, string | string[]>): Promise<number> =>
    new Promise((resolve, reject) => {
      const req = client.request({ ':method': 'GET', ':path': path, ':authority': 'app.test', ...headers });
      req.on('response', (h) => {
        req.resume();
        req.on('end', () => resolve(Number(h[':status'])));
      });
      req.on('error', reject);
      req.end();
    });
  const spoof = { 'x-auth-user': ['admin', 'root'], 'x-auth-roles': 'admin', 'x-auth-email': 'root@app.test', 'x-auth-issuer': 'https://evil.test' };
  t.equal(await get('/health', spoof), 200);
  t.same(identityLines(up.seen.at(-1)!), [], 'public route: none');
  t.equal(await get('/orders', { ...spoof, ...bearer(userToken) }), 200);
  t.same(identityLines(up.seen.at(-1)!), [['x-auth-email', 'svc@app.test'], ['x-auth-issuer', idp.issuer], ['x-auth-roles', 'user'], ['x-auth-user', 'svc']]);
  t.equal(await get('/admin', { ...spoof, ...bearer(userToken) }), 403);
  t.equal(up.seen.length, 2);
});

t.test('claims cannot inject headers or roles through the identity headers', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  // The IdP issues odd but legal claim values: a role containing a comma, a non-ASCII email.
  const token = await idpToken(idp, { claims: { email: 'ünïcode@app.test', realm_access: { roles: ['user,admin', 'ops'] } } });
  t.equal((await gw.request({ path: '/orders', headers: bearer(token) })).status, 200);
  const h = up.seen.at(-1)!.headers;
  t.equal(h['x-auth-roles'], 'user%2Cadmin,ops', 'the comma inside a role is escaped, so no "admin" item appears');
  t.notOk(String(h['x-auth-roles']).split(',').includes('admin'));
  t.equal(h['x-auth-email'], '%C3%BCn%C3%AFcode%40app.test', 'non-ASCII percent-encoded (encodeURIComponent)');
  t.equal((await gw.request({ path: '/admin', headers: bearer(token) })).status, 403, 'a role named "user,admin" is not admin');
});

t.test('method and path override headers never reach the upstream (HTTP/1.1 and HTTP/2)', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const OVERRIDE = /^x[-_](http[-_]method([-_]override)?|method[-_]override|original[-_]url|rewrite[-_]url)$/i;
  const overrideLines = (s: SeenRequest): string[] => s.rawHeaders.filter((v, i) => i % 2 === 0 && OVERRIDE.test(v));
  const tricks =
    'X-HTTP-Method-Override: DELETE\r\n' +
    'x-http-method: PUT\r\n' +
    'X-Method-Override: PATCH\r\n' +
    'X-Original-URL: /admin\r\n' +
    'X-REWRITE-URL: /admin\r\n' +
    'X_HTTP_Method_Override: DELETE\r\n' +
    'x_original_url: /admin\r\n';
  // A public GET and an authorized GET: the app must see exactly the method and path the gateway authorized.
  t.equal(statusOf(await rawTls(gw.port, gw.ca, rawGet('/health', tricks))), 200);
  t.same(overrideLines(up.seen.at(-1)!), [], 'public route: no override header, any spelling');
  t.equal(statusOf(await rawTls(gw.port, gw.ca, `GET /orders HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer ${userToken}\r\n${tricks}Connection: X-HTTP-Method-Override, close\r\n\r\n`)), 200);
  const seen = up.seen.at(-1)!;
  t.same(overrideLines(seen), [], 'protected route (and Connection naming one): none');
  t.equal(seen.method, 'GET');
  t.equal(seen.url, '/orders');

  const client = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => client.close());
  const status = await new Promise<number>((resolve, reject) => {
    const req = client.request({ ':method': 'GET', ':path': '/health', ':authority': 'app.test', 'x-http-method-override': 'DELETE', 'x-original-url': '/admin' });
    req.on('response', (h) => {
      req.resume();
      req.on('end', () => resolve(Number(h[':status'])));
    });
    req.on('error', reject);
    req.end();
  });
  t.equal(status, 200);
  t.same(overrideLines(up.seen.at(-1)!), [], 'HTTP/2: none');
});
