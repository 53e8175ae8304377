// Attacks on how the configuration's policy is composed and applied per request: protection
// blocks merged top level → site → route ("the most specific wins, key by key"), requests that
// match no route or no site, routes split by method, per-route upstreams and timeouts, wildcard
// hosts, and the route table's answer to an ambiguous path (src/policy/routes.ts strictest(),
// weighed by src/policy/protection.ts routeAtLeastAsStrict). Every case runs against a real
// gateway and a real upstream on loopback and checks what the upstream saw, not only the status.
import t from 'tap';
import http2 from 'node:http2';
import { accessRoute, LOOPBACK_LISTEN, startGateway, startUpstream, type RunningGateway } from '../helpers/gateway.js';
import { h2Request } from '../helpers/clients.js';

const FORM = 'application/x-www-form-urlencoded';

function post(gw: RunningGateway, path: string, headers: Record<string, string> = {}, body = 'x=1'): ReturnType<RunningGateway['request']> {
  return gw.request({ method: 'POST', path, headers: { 'content-type': FORM, 'content-length': String(Buffer.byteLength(body)), ...headers }, body });
}

const routeOf = accessRoute;

const all = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

// ---------------------------------------------------------------------------------------------
// 1. Ambiguous paths: the stricter reading must hold in full

t.test('a route\'s rate limit holds for its resources spelled into a nested route that has a limit of its own: an ambiguous request is counted under every reading', async (t) => {
  const up = await startUpstream(t);
  // The most common shape: one site-wide limit, inherited by every route (each route counts on
  // its own, README "Rate limit per route"). /api/IMPORT/n is /api/:collection/n to a
  // case-sensitive app (Express, Flask, Go's ServeMux): a resource of /api.
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    rate_limit: { max: 2, window: 1m }
    routes:
      - { id: api, path: /api, access: public }
      - { id: import, path: /api/import, access: public }
`);
  const control: number[] = [];
  for (let i = 0; i < 3; i++) control.push((await post(gw, `/api/orders/${i}`)).status);
  t.same(control, [200, 200, 429], 'control: /api/* gets 2 requests a minute');
  const before = up.seen.length;
  const dodged: string[] = [];
  for (let i = 0; i < 2; i++) {
    const res = await post(gw, `/api/IMPORT/${i}`);
    dodged.push(`${res.status} (route ${String(routeOf(gw, res.headers['x-request-id']))})`);
  }
  t.equal(up.seen.length - before, 0, `/api's budget is used up: no further /api resource reaches the app (got ${dodged.join(', ')})`);

  // The other way round: the parent is the stricter one, so the table picks it for the ambiguous
  // spelling, which a case-insensitive app (IIS, Spring with case-insensitive matching) serves
  // as /api/import, whose own budget is used up by then.
  const up2 = await startUpstream(t);
  const gw2 = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up2.origin}
    routes:
      - { id: api, path: /api, access: public, rate_limit: { max: 1, window: 1m } }
      - { id: import, path: /api/import, access: public, rate_limit: { max: 2, window: 1m } }
`);
  const imports: number[] = [];
  for (let i = 0; i < 3; i++) imports.push((await post(gw2, '/api/import')).status);
  t.same(imports, [200, 200, 429], 'control: /api/import gets 2 requests a minute');
  const before2 = up2.seen.length;
  const res = await post(gw2, '/api/IMPORT');
  t.equal(up2.seen.length - before2, 0, `/api/import's budget is used up: /api/IMPORT, counted under /api, must not reach it either (got ${res.status}, route ${String(routeOf(gw2, res.headers['x-request-id']))})`);
});

t.test('a nested route whose CSP names frame-ancestors does not make its parent\'s pages frameable through a case variant', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<form method=post action=/account/delete><button>Delete my account</button></form>');
  });
  // The parent keeps the default X-Frame-Options: DENY and sends no CSP. The widget may be
  // embedded anywhere: its CSP names frame-ancestors, and a CSP frame-ancestors directive makes
  // browsers ignore X-Frame-Options (CSP3 §6.4.2; HTML "X-Frame-Options" processing), so the
  // widget's DENY is void there. That is the operator's choice for /account/widget only.
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: account, path: /account, access: public }
      - id: widget
        path: /account/widget
        access: public
        headers: { content_security_policy: "default-src 'self'; frame-ancestors *" }
`);
  const page = await gw.request({ path: '/account/delete' });
  t.equal(page.headers['x-frame-options'], 'DENY', 'control: the parent\'s page cannot be framed');
  t.notOk(page.headers['content-security-policy'], 'control: and has no CSP that could lift that');
  t.match(String((await gw.request({ path: '/account/widget' })).headers['content-security-policy']), /frame-ancestors \*/, 'control: the widget is frameable anywhere, as configured');

  // A case-sensitive app serves /account/WIDGET/delete as /account/:section/delete: the parent's
  // delete page. It must not come with a policy that lets any site frame it (clickjacking).
  for (const path of ['/account/WIDGET/delete', '/account/Widget', '/account/widget;x/delete']) {
    const res = await gw.request({ path });
    const csp = String(res.headers['content-security-policy'] ?? '');
    t.notMatch(csp, /frame-ancestors \*/, `${path}: not frameable by any site (got ${res.status}, route ${String(routeOf(gw, res.headers['x-request-id']))}, CSP ${JSON.stringify(csp)})`);
  }
});

t.test('a nested route with `headers.upstream: override` and a laxer CSP does not replace the app\'s own CSP on its parent\'s pages through a case variant', async (t) => {
  const APP_CSP = "default-src 'none'; script-src 'self'";
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html', 'content-security-policy': APP_CSP });
    res.end('<p>account</p>');
  });
  // The parent keeps the app's own headers (the default `upstream: keep`, no gateway CSP): the
  // app's strict CSP reaches the browser. The nested route imposes the gateway's laxer CSP over
  // whatever its app sends (`override`): the operator's choice for /account/embed only.
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: account, path: /account, access: public }
      - id: embed
        path: /account/embed
        access: public
        headers: { upstream: override, content_security_policy: "default-src * 'unsafe-inline' 'unsafe-eval'" }
`);
  t.equal((await gw.request({ path: '/account/settings' })).headers['content-security-policy'], APP_CSP, 'control: the parent\'s pages keep the app\'s CSP');
  t.match(String((await gw.request({ path: '/account/embed' })).headers['content-security-policy']), /unsafe-inline/, 'control: /account/embed gets the gateway\'s lax CSP, as configured');
  // /account/EMBED/settings is /account/:section/settings to a case-sensitive app: the parent's page.
  for (const path of ['/account/EMBED/settings', '/account/Embed']) {
    const res = await gw.request({ path });
    const csp = String(res.headers['content-security-policy'] ?? '');
    t.ok(res.status === 404 || csp === APP_CSP, `${path}: the app's CSP is not replaced by a laxer one (got ${res.status}, route ${String(routeOf(gw, res.headers['x-request-id']))}, CSP ${JSON.stringify(csp)})`);
  }
});

t.test('an ambiguous path whose readings are incomparable gets 404 with the site\'s headers, and nothing is forwarded', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
headers: { content_security_policy: "default-src 'none'", referrer_policy: no-referrer }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    headers: { content_security_policy: "default-src 'self'", frame_options: SAMEORIGIN }
    routes:
      - { id: api, path: /api, access: public, max_body_size: 2kb, csrf: { enabled: false } }
      - { id: upload, path: /api/upload, access: public }
`);
  t.equal((await post(gw, '/api/upload')).status, 200, 'control: /api/upload');
  t.equal((await post(gw, '/api/x')).status, 200, 'control: /api/x');
  const before = up.seen.length;
  // /api has the smaller body limit, /api/upload the CSRF check: neither is stricter.
  for (const path of ['/api/UPLOAD', '/api/Upload/x', '/api/upload;v=1', '/api/upload.']) {
    for (const method of ['GET', 'POST', 'HEAD', 'OPTIONS']) {
      const res = method === 'POST' ? await post(gw, path) : await gw.request({ method, path });
      // The site's CSP and frame options, the top level's referrer policy (inherited key by key).
      const seen = [res.status, res.headers['content-security-policy'], res.headers['x-frame-options'], res.headers['referrer-policy']];
      t.same(seen, [404, "default-src 'self';frame-ancestors 'self'", 'SAMEORIGIN', 'no-referrer'], `${method} ${path}: 404 with the site's headers`);
    }
  }
  t.equal(up.seen.length, before, 'none of them reached the app');
  const lines = gw.logs.filter((l) => l.type === 'access' && l.status === 404);
  t.ok(lines.length === 16 && lines.every((l) => l.reason === 'no_route' && l.site === 'app.test' && l.route === undefined), 'each is logged as no_route under the site');
});

// ---------------------------------------------------------------------------------------------
// 2. Composition: key by key, lists replaced, null turns off, answers outside any route

t.test('protection blocks compose key by key end to end: partial overrides keep the inherited keys, a list is replaced whole, null turns a feature off', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'set-cookie': ['XSRF-TOKEN=t; Path=/', 'sid=s; Path=/'] });
    res.end('ok');
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
csrf: { trusted_origins: ["https://partner.test"] }
cookies: { http_only_except: [XSRF-TOKEN] }
rate_limit: { max: 1, window: 1h, key: "header:x-api-key" }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    csrf: { enabled: true }
    cookies: { same_site: Strict }
    routes:
      - { id: inherit, path: /inherit, access: public }
      - { id: own-list, path: /own-list, access: public, csrf: { trusted_origins: ["https://other.test"] } }
      - { id: raised, path: /raised, access: public, rate_limit: { max: 2 } }
      - { id: off, path: /off, access: public, rate_limit: null }
`);
  const partner = { cookie: 'sid=v', 'sec-fetch-site': 'cross-site', origin: 'https://partner.test' };
  const other = { ...partner, origin: 'https://other.test' };
  const key = (k: string): Record<string, string> => ({ 'x-api-key': k });

  // csrf: the site's partial block keeps the top level's trusted origins; a route's own list replaces it.
  t.equal((await post(gw, '/inherit/a', { ...partner, ...key('k1') })).status, 200, 'partner.test trusted on /inherit (top-level list through the site\'s partial csrf block)');
  t.equal((await post(gw, '/inherit/a', { ...other, ...key('k2') })).status, 403, 'other.test refused on /inherit');
  t.equal((await post(gw, '/own-list/a', { ...partner, ...key('k3') })).status, 403, 'partner.test refused on /own-list: the route\'s list replaced the inherited one');
  t.equal((await post(gw, '/own-list/a', { ...other, ...key('k4') })).status, 200, 'other.test trusted on /own-list');

  // rate_limit: a partial block keeps the inherited key (header) and window.
  const raised: number[] = [];
  for (let i = 0; i < 3; i++) raised.push((await gw.request({ path: '/raised/a', headers: key('r1') })).status);
  t.same(raised, [200, 200, 429], '/raised: max 2 from its own block');
  const retry = await gw.request({ path: '/raised/a', headers: key('r1') });
  t.ok(Number(retry.headers['retry-after']) > 60, `/raised: the inherited 1h window (Retry-After ${String(retry.headers['retry-after'])})`);
  t.equal((await gw.request({ path: '/raised/a', headers: key('r2') })).status, 200, '/raised: counted per API key (the inherited key), not per address');
  const inherit: number[] = [];
  for (let i = 0; i < 2; i++) inherit.push((await gw.request({ path: '/inherit/b', headers: key('i1') })).status);
  t.same(inherit, [200, 429], '/inherit: the top level\'s max 1');
  const off: number[] = [];
  for (let i = 0; i < 4; i++) off.push((await gw.request({ path: '/off/a', headers: key('o1') })).status);
  t.same(off, [200, 200, 200, 200], '/off: rate_limit null turns it off');
  t.notOk((await gw.request({ path: '/off/a', headers: key('o1') })).headers['ratelimit-limit'], '/off: no RateLimit headers');

  // cookies: the site's partial block keeps the top level's http_only_except.
  const cookies = all((await gw.request({ path: '/off/c' })).headers['set-cookie']);
  t.same(cookies, ['XSRF-TOKEN=t; Path=/; Secure; SameSite=Strict', 'sid=s; Path=/; Secure; HttpOnly; SameSite=Strict'], 'XSRF-TOKEN readable by scripts, both SameSite=Strict from the site');
});

t.test('per-route upstream and response timeout override the site\'s; routes split by method reach their own upstream, HEAD the GET route\'s', async (t) => {
  const site = await startUpstream(t);
  const reads = await startUpstream(t);
  const slow = await startUpstream(t, (_req, res) => {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('late');
    }, 700).unref();
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
timeouts: { response: 5s }
sites:
  - hosts: [app.test]
    upstream: ${site.origin}
    routes:
      - { id: reads, path: /data, methods: [GET], access: public, upstream: ${reads.origin} }
      - { id: writes, path: /data, access: public }
      - { id: slow, path: /slow, access: public, upstream: ${slow.origin}, timeouts: { response: 200ms } }
      - { id: slow-ok, path: /slow/patient, access: public, upstream: ${slow.origin} }
      - { id: rest, path: /, access: public }
`);
  const statuses = [
    (await gw.request({ path: '/data/1' })).status,
    (await gw.request({ method: 'HEAD', path: '/data/1' })).status,
    (await post(gw, '/data/1')).status,
    (await gw.request({ method: 'DELETE', path: '/data/1' })).status,
  ];
  t.same(statuses, [200, 200, 200, 200], 'GET, HEAD, POST, DELETE /data/1 proxied');
  t.same(reads.seen.map((s) => `${s.method} ${s.url}`), ['GET /data/1', 'HEAD /data/1'], 'GET and HEAD went to the read upstream');
  t.same(site.seen.map((s) => `${s.method} ${s.url}`), ['POST /data/1', 'DELETE /data/1'], 'the other methods to the site\'s upstream');

  const cut = await gw.request({ path: '/slow/x' });
  t.equal(cut.status, 504, '/slow: the route\'s 200ms response timeout');
  const ok = await gw.request({ path: '/slow/patient/x' });
  t.same([ok.status, ok.body], [200, 'late'], '/slow/patient: its own (inherited top-level) 5s timeout, not its parent route\'s');
});

t.test('wildcard hosts: one label only, :authority spellings pick the wildcard site\'s own protections, deeper or bare names are misdirected', async (t) => {
  const wild = await startUpstream(t);
  const exact = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - id: tenants
    hosts: ["*.apps.test"]
    upstream: ${wild.origin}
    headers: { frame_options: SAMEORIGIN }
    routes: [{ path: /, access: public }]
  - id: admin
    hosts: [admin.apps.test]
    upstream: ${exact.origin}
    routes: [{ path: /, access: deny }]
`);
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'x.apps.test' });
  session.on('error', () => undefined);
  t.teardown(() => session.destroy());
  const cases: Array<[string, number]> = [
    ['x.apps.test', 200],
    ['X.Apps.TEST.', 200],
    ['x.apps.test:443', 200],
    ['admin.apps.test', 403], // the exact name beats the wildcard
    ['ADMIN.apps.test.', 403],
    ['a.admin.apps.test', 421], // two labels below the wildcard
    ['a.b.apps.test', 421],
    ['apps.test', 421], // the wildcard's parent itself
  ];
  for (const [authority, status] of cases) {
    const res = await h2Request(session, { ':method': 'GET', ':path': '/p', ':authority': authority });
    t.equal(res.status, status, `:authority ${authority}: ${status}`);
    if (status === 200) t.equal(res.headers['x-frame-options'], 'SAMEORIGIN', `:authority ${authority}: the wildcard site's headers`);
  }
  t.equal(wild.seen.length, 3, 'the wildcard site got the three one-label names');
  t.same(wild.seen.map((s) => s.headers.host), ['x.apps.test', 'X.Apps.TEST.', 'x.apps.test:443'], 'with Host as the client sent it');
  t.equal(exact.seen.length, 0, 'the deny site\'s upstream saw nothing');
});
