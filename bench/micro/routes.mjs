// compileRouteTable → matchSite / matchRoute, and decide(): the per-request policy lookups.
import { dist, newBench, runSuite } from './common.mjs';

const { compileRouteTable, decide } = await dist('policy/index.js');

const route = (path, extra = {}) => ({ path, methods: null, access: 'authenticated', roles: [], ...extra });
// A realistic table: 20 sites, the one we hit has 30 routes at several depths.
const sites = Array.from({ length: 20 }, (_, i) => ({
  id: `site${i}`,
  hosts: [`app${i}.example.com`, `*.tenants${i}.example.com`],
  routes: [
    route('/'),
    route('/static/', { access: 'public', methods: ['GET', 'HEAD'] }),
    route('/admin/', { roles: ['admin'] }),
    route('/internal/', { access: 'deny' }),
    ...Array.from({ length: 26 }, (_, j) => route(`/api/v${j % 3}/resource${j}/`, j % 2 ? { methods: ['GET'] } : {})),
  ],
}));
const table = compileRouteTable(sites);
const site = table.matchSite('app7.example.com');
if (!site || table.matchRoute(site, 'GET', '/api/v1/resource13/items/9')?.path !== '/api/v1/resource13/') {
  throw new Error('route table does not match the expected route');
}
const adminRoute = table.matchRoute(site, 'GET', '/admin/users');
const principal = { roles: ['user', 'admin'] };
if (decide(adminRoute, principal).allow !== true) throw new Error('decide refused an admin');

export const bench = newBench('routing and decision');
bench
  .add('compileRouteTable (20 sites x 30 routes)', () => compileRouteTable(sites))
  .add('matchSite exact', () => table.matchSite('app7.example.com'))
  .add('matchSite wildcard', () => table.matchSite('acme.tenants7.example.com'))
  .add('matchRoute deep', () => table.matchRoute(site, 'GET', '/api/v1/resource13/items/9'))
  .add('matchRoute fallback to /', () => table.matchRoute(site, 'POST', '/nothing/here'))
  .add('decide role granted', () => decide(adminRoute, principal))
  .add('decide anonymous', () => decide(adminRoute, null));

if (import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href) await runSuite(bench, import.meta.url);
