// Role checks per route and method through the real gateway, with path variants an upstream may
// read as the admin path. The invariant: a caller without the admin role never gets a request to
// the admin area in front of the upstream, however the path is spelled.
import t from 'tap';
import { rawTls, startGateway, startUpstream, statusOf, type SeenRequest } from '../helpers/gateway.js';
import { ADMIN_CLAIMS, USER_CLAIMS, bearer, idpToken, lastAccess, policyYaml, startIdp } from './_support.js';

const idp = await startIdp();
t.teardown(() => idp.close());
const adminToken = await idpToken(idp, { claims: ADMIN_CLAIMS });
const userToken = await idpToken(idp, { claims: USER_CLAIMS });

/**
 * How the most lenient upstream could read a forwarded path: percent-decoded (`passes` times),
 * case-folded, `;` parameters dropped, empty and dot segments resolved.
 */
function lenientSegments(path: string, passes = 1): string[] {
  let p = path.split('?')[0] ?? '';
  for (let i = 0; i < passes; i++) {
    try {
      p = decodeURIComponent(p);
    } catch {
      break;
    }
  }
  const out: string[] = [];
  for (const raw of p.toLowerCase().split('/')) {
    const seg = raw.split(';')[0] ?? '';
    if (seg === '' || seg === '.') continue;
    if (seg === '..') out.pop();
    else out.push(seg);
  }
  return out;
}
const readsAsAdmin = (s: SeenRequest, passes = 1): boolean => lenientSegments(s.url, passes)[0] === 'admin';

// Paths that must resolve to the /admin route (GET), as a client may send them.
const ADMIN_VARIANTS = [
  '/admin',
  '/ADMIN',
  '/Admin',
  '/%61dmin',
  '/%41DMIN',
  '/%61%64%6d%69%6e',
  '/health/../admin',
  '/health/%2e%2e/admin',
  '/health/%2E%2E/admin',
  '/x/y/../../admin',
  '/./admin',
  '//admin',
  '///admin//',
  '/admin/',
  '/admin/.',
  '/admin/x/..',
  '/admin;x=1',
  '/admin;',
  '/ADMIN;jsessionid=1/x',
  '/health;/../admin',
  '/admin/users',
  '/admin/users?x=1',
  '/admin/%2e/users',
  '/adm%69n/users',
];

t.test('every spelling of /admin is refused to a non-admin, before the upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const path of ADMIN_VARIANTS) {
    const res = await gw.request({ path, headers: bearer(userToken) });
    t.equal(res.status, 403, `${path}: 403 for a user without the role`);
    t.equal(lastAccess(gw)?.route, 'app.test:1', `${path}: decided on the /admin GET,POST route`);
    const anon = await gw.request({ path });
    t.equal(anon.status, 401, `${path}: 401 without a token`);
  }
  const post = await gw.request({ method: 'POST', path: '/ADMIN;x', headers: { ...bearer(userToken), 'content-type': 'text/plain' }, body: 'rm -rf' });
  t.equal(post.status, 403, 'POST too');
  t.equal(up.seen.length, 0, 'the upstream saw nothing at all');
});

t.test('the same spellings reach the upstream for an admin, in canonical form', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const path of ADMIN_VARIANTS) {
    const before = up.seen.length;
    const res = await gw.request({ path, headers: bearer(adminToken) });
    t.equal(res.status, 200, `${path}: allowed for admin`);
    const seen = up.seen[before];
    t.ok(seen && readsAsAdmin(seen), `${path}: upstream got ${seen?.url}`);
    t.notOk(seen?.url.split('?')[0]?.match(/\/\/|\/\.\.?(\/|$)|%(2e|61|41|64|6d|69|6e)/i), `${path}: no dot-segment, double slash or needless escape upstream (${seen?.url})`);
  }
  t.equal(up.seen.find((s) => s.url.startsWith('/admin/users?'))?.url, '/admin/users?x=1', 'query kept');
});

t.test('methods: /admin is GET/POST for admins, every other method hits the deny route', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const method of ['PUT', 'PATCH', 'DELETE', 'OPTIONS']) {
    for (const path of ['/admin', '/ADMIN/x', '/health/../admin;y']) {
      const res = await gw.request({ method, path, headers: bearer(adminToken) });
      t.equal(res.status, 403, `${method} ${path}: denied even for admin`);
      t.equal(lastAccess(gw)?.reason, 'route_denied');
    }
  }
  // methods: [GET, POST] implies HEAD (RFC 9110 §9.3.2); a non-admin never gets a HEAD through.
  for (const path of ['/admin', '/Admin/', '//admin;x']) {
    const user = await gw.request({ method: 'HEAD', path, headers: bearer(userToken) });
    t.equal(user.status, 403, `HEAD ${path}: refused to a user`);
  }
  t.equal(up.seen.length, 0, 'nothing reached the upstream');
  const adminHead = await gw.request({ method: 'HEAD', path: '/admin', headers: bearer(adminToken) });
  t.equal(adminHead.status, 200, 'HEAD /admin is allowed for admins: GET implies HEAD');
  t.equal(up.seen.length, 1);
  t.equal(up.seen[0]?.method, 'HEAD');
  up.seen.length = 0;

  // Methods the gateway never proxies.
  for (const method of ['TRACE', 'CONNECT', 'PROPFIND']) {
    const raw = await rawTls(gw.port, gw.ca, `${method} /admin HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer ${adminToken}\r\nConnection: close\r\n\r\n`);
    // CONNECT: Node's server has no 'connect' listener and drops the connection (status 0).
    t.ok([0, 400, 405].includes(statusOf(raw)), `${method}: refused (${statusOf(raw) || 'connection closed'})`);
  }
  t.equal(up.seen.length, 0);
});

t.test('public and authenticated routes: neighbours of /health and /admin are not confused', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const path of ['/health', '/health/', '/health/deep', '/admin/../health', '/%68ealth']) {
    const res = await gw.request({ path });
    t.equal(res.status, 200, `${path}: public`);
  }
  // Only the matching view makes these /health; a case-sensitive or `;`-unaware upstream would
  // serve them from "/", so the gateway applies the stricter of the two routes (authenticated).
  for (const path of ['/HEALTH', '/Health/x', '/health;x']) {
    t.equal((await gw.request({ path })).status, 401, `${path}: strictest candidate route applies`);
    t.equal(lastAccess(gw)?.route, 'app.test:3');
  }
  for (const path of ['/healthz', '/health-admin', '/administrator', '/admins', '/']) {
    t.equal((await gw.request({ path })).status, 401, `${path}: not public, needs a token`);
    t.equal((await gw.request({ path, headers: bearer(userToken) })).status, 200, `${path}: any valid token`);
  }
  const adminish = up.seen.filter((s) => readsAsAdmin(s));
  t.same(adminish, [], 'no admin-looking path was served');
});

t.test('paths that cannot be read one way only are refused with 400', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const path of ['/health/..%2fadmin', '/health/..%2Fadmin', '/health\\..\\admin', '/health/..%5cadmin', '/admin%00', '/health/%2e%2e%2fadmin', '/%zzadmin']) {
    const raw = await rawTls(gw.port, gw.ca, `GET ${path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n`);
    t.equal(statusOf(raw), 400, `${path}: 400`);
  }
  t.equal(up.seen.length, 0);
});

t.test('double encoding: /%2561dmin is refused (an upstream that decodes twice would read /admin)', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const path of ['/%2561dmin', '/%2561%2564min', '/x/%252e%252e/admin', '/%25%36%31dmin']) {
    const res = await gw.request({ path, headers: bearer(userToken) });
    t.equal(res.status, 400, `${path}: 400`);
  }
  t.equal(lastAccess(gw)?.reason, 'path_double_encoding');
  t.equal(up.seen.length, 0, 'the upstream never sees a double-encoded path');
  t.notOk(up.seen.some((s) => readsAsAdmin(s, 2)));
  const pct = await gw.request({ path: '/discount/100%25', headers: bearer(userToken) });
  t.equal(pct.status, 200, 'an encoded % not followed by hex digits is an ordinary character');
});

t.test('a site without a "/" route: unmatched paths are 404 and never proxied', async (t) => {
  const up = await startUpstream(t);
  const routes = `      - { path: /health, access: public }
      - { path: /admin, methods: [GET, POST], roles: [admin] }
      - { path: /admin, access: deny }
      - { path: /api, access: authenticated }
`;
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin, { routes }));
  for (const path of ['/', '/other', '/healthz', '/apiv2', '/api/../other', '/API2']) {
    t.equal((await gw.request({ path, headers: bearer(adminToken) })).status, 404, `${path}: 404`);
  }
  t.equal((await gw.request({ path: '/api/x', headers: bearer(userToken) })).status, 200, '/api/x matches /api');
  // A case-sensitive upstream would not serve /API/x from /api, and there is no "/" route: 404 is
  // the strictest reading.
  t.equal((await gw.request({ path: '/API/x', headers: bearer(userToken) })).status, 404, '/API/x: 404');
  t.equal((await gw.request({ path: '/health/../admin', headers: bearer(userToken) })).status, 403);
  t.equal(up.seen.length, 1);
  t.equal(up.seen[0]?.url, '/api/x');
});
