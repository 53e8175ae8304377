import t from 'tap';
import { canonicalizePath, compileRouteTable, matchingView, type RouteLike, type SiteLike } from '../../src/policy/index.js';
import type { Access, RouteConfig, SiteConfig } from '../../src/config/types.js';

interface R extends RouteLike {
  readonly id: string;
}
const r = (id: string, path: string, access: Access = 'public', methods: string[] | null = null, roles: string[] = []): R => ({
  id,
  path,
  access,
  methods,
  roles,
});

const canon = (raw: string): string => {
  const c = canonicalizePath(raw);
  if (!c.ok) throw new Error(`test path ${raw} refused: ${c.reason}`);
  return c.path;
};

t.test('sites: exact first, then one-label wildcard', async (t) => {
  const a = { id: 'a', hosts: ['example.com', 'www.example.com'], routes: [] };
  const w = { id: 'w', hosts: ['*.example.com'], routes: [] };
  const other = { id: 'o', hosts: ['*.other.test', 'api.other.test'], routes: [] };
  const table = compileRouteTable([a, w, other]);
  t.equal(table.matchSite('example.com'), a);
  t.equal(table.matchSite('www.example.com'), a, 'exact beats wildcard');
  t.equal(table.matchSite('a.example.com'), w);
  t.equal(table.matchSite('a.b.example.com'), undefined, 'wildcard covers exactly one label');
  t.equal(table.matchSite('xexample.com'), undefined);
  t.equal(table.matchSite('api.other.test'), other);
  t.equal(table.matchSite('other.test'), undefined, 'wildcard does not cover its parent');
  t.equal(table.matchSite('.example.com'), undefined);
  t.equal(table.matchSite('unknown.test'), undefined);
  t.equal(table.matchSite('[::1]'), undefined);
});

t.test('configuration mistakes fail at compile time with GW_ERR_CONFIG_INVALID', async (t) => {
  const bad = [
    [{ hosts: ['a.test'], routes: [] }, { hosts: ['A.test'], routes: [] }],
    [{ hosts: ['*.a.test'], routes: [] }, { hosts: ['*.a.test'], routes: [] }],
    [{ hosts: ['*.'], routes: [] }],
    [{ hosts: ['a.*.test'], routes: [] }],
    [{ hosts: ['a.test'], routes: [r('x', 'admin')] }],
    [{ hosts: ['a.test'], routes: [r('x', '/a%2fb')] }],
  ];
  for (const sites of bad) t.throws(() => compileRouteTable(sites), { code: 'GW_ERR_CONFIG_INVALID' }, JSON.stringify(sites));
  const table = compileRouteTable([{ hosts: ['a.test'], routes: [] }]);
  t.throws(() => table.matchRoute({ hosts: ['a.test'], routes: [] }, 'GET', '/'), TypeError, 'foreign site object');
});

// Compile-time: the config types fit the table's input types as they are.
type Fits = SiteConfig extends SiteLike<RouteConfig> ? true : false;
const fits: Fits = true;

t.test('a real SiteConfig can be passed as is', async (t) => {
  t.equal(fits, true);
  // Fields the table does not read are elided from this fixture (the config type keeps growing).
  const timeouts = { connect: 1, response: 1, idle: 1 };
  const route = { methods: null, roles: [], upstream: [], maxBodySize: 1, timeouts };
  const site = {
    id: 's',
    hosts: ['s.test'],
    upstream: [],
    routes: [
      { ...route, id: 's:0', path: '/', access: 'public' },
      { ...route, id: 's:1', path: '/admin', access: 'deny' },
    ],
  } as unknown as SiteConfig;
  const table = compileRouteTable<SiteConfig>([site]);
  const found = table.matchSite('s.test');
  t.equal(found, site);
  if (found) t.equal(table.matchRoute(found, 'GET', '/admin/x')?.id, 's:1', 'the route comes back untouched, id and all');
});

t.test('longest prefix on segment boundaries, with the matching view', async (t) => {
  const site = {
    hosts: ['x.test'],
    routes: [r('root', '/'), r('admin', '/admin', 'deny'), r('api', '/api/'), r('apiv2', '/api/v2', 'authenticated')],
  };
  const table = compileRouteTable([site]);
  const m = (path: string, method = 'GET') => table.matchRoute(site, method, canon(path))?.id;
  const cases: [string, string][] = [
    ['/', 'root'],
    ['/anything/else', 'root'],
    ['/admin', 'admin'],
    ['/admin/', 'admin'],
    ['/admin/x/y', 'admin'],
    ['/administrator', 'root'],
    ['/admin-x', 'root'],
    ['/adm', 'root'],
    ['/api', 'api'],
    ['/api/', 'api'],
    ['/api/v1', 'api'],
    ['/api/v2', 'apiv2'],
    ['/api/v2/', 'apiv2'],
    ['/api/v2x', 'api'],
    // case, escapes, parameters, dot-segments, slashes: all reach the protected route
    ['/ADMIN', 'admin'],
    ['/Admin/x', 'admin'],
    ['/%61dmin', 'admin'],
    ['/%61DMIN/', 'admin'],
    ['/admin;x=1', 'admin'],
    ['/admin;x=1/y', 'admin'],
    ['/ADMIN;jsessionid=abc/y', 'admin'],
    ['/admin%3Bx/y', 'admin'],
    ['/admin%3bx', 'admin'],
    ['/public/../admin', 'admin'],
    ['/public/%2e%2e/admin', 'admin'],
    ['//admin', 'admin'],
    ['/./admin', 'admin'],
    ['/API/V2', 'apiv2'],
    ['/api;a/v2;b', 'apiv2'],
    // Unicode-aware upstreams fold these to ASCII
    ['/%EF%BD%81dmin', 'admin'], // full-width a
    ['/ADM%C4%B0N', 'root'], // dotted capital I folds to `i̇`, not `i`
    ['/adm%C4%B1n', 'admin'], // dotless i upper-cases to I
  ];
  for (const [path, want] of cases) t.equal(m(path), want, path);
});

t.test('methods: listed beats any at equal length, excluded never matches', async (t) => {
  const site = {
    hosts: ['m.test'],
    routes: [
      r('root', '/'),
      r('items-any', '/items', 'authenticated'),
      r('items-write', '/items', 'authenticated', ['POST', 'PUT'], ['writer']),
      r('items-read', '/items', 'public', ['GET']),
      r('upload', '/upload', 'authenticated', ['POST']),
      r('read-only', '/docs', 'public', ['GET', 'HEAD']),
    ],
  };
  const table = compileRouteTable([site]);
  const m = (method: string, path: string) => table.matchRoute(site, method, path)?.id;
  t.equal(m('GET', '/items'), 'items-read');
  t.equal(m('POST', '/items/1'), 'items-write');
  t.equal(m('PUT', '/items/1'), 'items-write');
  t.equal(m('DELETE', '/items/1'), 'items-any');
  t.equal(m('get', '/items'), 'items-any', 'methods are case-sensitive (RFC 9110 §9.1)');
  t.equal(m('POST', '/upload'), 'upload');
  t.equal(m('GET', '/upload'), 'root', 'excluded method falls back to a shorter prefix');
  t.equal(m('DELETE', '/docs'), 'root');
  t.equal(m('HEAD', '/docs'), 'read-only');

  const noRoot = { hosts: ['n.test'], routes: [r('only-get', '/x', 'public', ['GET'])] };
  const t2 = compileRouteTable([noRoot]);
  t.equal(t2.matchRoute(noRoot, 'POST', '/x'), undefined, 'no match → undefined');
  t.equal(t2.matchRoute(noRoot, 'GET', '/y'), undefined);
  t.equal(t2.matchRoute(noRoot, 'GET', '/x/y')?.id, 'only-get');
});

t.test('first route in config order wins among equals', async (t) => {
  const site = { hosts: ['d.test'], routes: [r('first', '/a'), r('second', '/a/', 'deny'), r('g1', '/b', 'public', ['GET']), r('g2', '/B', 'deny', ['GET'])] };
  const table = compileRouteTable([site]);
  t.equal(table.matchRoute(site, 'GET', '/a/x')?.id, 'first');
  t.equal(table.matchRoute(site, 'GET', '/b')?.id, 'g1', 'config paths are compared lower-cased too');
});

t.test('attack: a case/parameter/encoding variant never reaches a less strict nested route', async (t) => {
  // /admin is denied except /admin/public. A case-sensitive upstream serves /admin/PUBLIC as an
  // admin resource, not as /admin/public: the gateway must not apply the public rule to it.
  const site = {
    hosts: ['z.test'],
    routes: [r('root', '/'), r('admin', '/admin', 'deny'), r('admin-public', '/admin/public', 'public')],
  };
  const table = compileRouteTable([site]);
  const m = (path: string) => table.matchRoute(site, 'GET', canon(path))?.id;
  t.equal(m('/admin/public'), 'admin-public', 'the exact spelling gets the nested route');
  t.equal(m('/admin/public/x'), 'admin-public');
  t.equal(m('/admin/PUBLIC'), 'admin');
  t.equal(m('/admin/public;x'), 'admin');
  t.equal(m('/admin/p%75blic'), 'admin-public', 'unreserved escapes are canonicalized away first');
  t.equal(m('/admin/public%3b'), 'admin');
  // Read as /admin/public (public) or as an unknown /ADMIN/public under root (public): never admin.
  t.equal(m('/ADMIN/public'), 'admin-public');
  t.equal(m('/ADMIN/PUBLIC'), 'admin', 'one reading reaches /admin: deny is the strictest');

  // Two routes with unrelated roles: neither is stricter, so nothing matches (404).
  const roles = {
    hosts: ['q.test'],
    routes: [r('root', '/', 'public'), r('ops', '/ops', 'authenticated', null, ['ops']), r('ops-billing', '/ops/billing', 'authenticated', null, ['billing'])],
  };
  const t2 = compileRouteTable([roles]);
  t.equal(t2.matchRoute(roles, 'GET', '/ops/billing')?.id, 'ops-billing');
  t.equal(t2.matchRoute(roles, 'GET', '/ops/Billing'), undefined);
  t.equal(t2.matchRoute(roles, 'GET', '/Ops/x')?.id, 'ops', 'ops is stricter than public root');

  // Without a root route, an upstream that does not fold case would see a path no route covers.
  const noRoot = { hosts: ['p.test'], routes: [r('pub', '/pub', 'public'), r('deny', '/secret', 'deny')] };
  const t3 = compileRouteTable([noRoot]);
  t.equal(t3.matchRoute(noRoot, 'GET', '/PUB'), undefined);
  t.equal(t3.matchRoute(noRoot, 'GET', '/SECRET')?.id, 'deny');
});

t.test('matchingView', async (t) => {
  t.equal(matchingView('admin'), 'admin');
  t.equal(matchingView('ADMIN'), 'admin');
  t.equal(matchingView('admin;x=1'), 'admin');
  t.equal(matchingView('%41dmin%3Bx'), 'admin');
  t.equal(matchingView('a%20b'), 'a b');
  t.equal(matchingView('%E2%84%AAey'), 'key', 'KELVIN SIGN');
  t.equal(matchingView('%C5%BFecret'), 'secret', 'LONG S');
  t.equal(matchingView('%E9'), '\ufffd', 'invalid UTF-8 does not match ASCII');
});
