// policy/protection.ts: the order the route table uses for a path two routes may claim. Each
// protection is weakened alone against a base route and must make the weaker route lose; the
// table then returns the route that protects most, or 404 when neither does.
import t from 'tap';
import { canonicalizePath, compileRouteTable, protectsAtLeastAs, routeAtLeastAsStrict, type ProtectedRoute } from '../../src/policy/index.js';
import type { ProtectConfig } from '../../src/config/types.js';

const BASE: ProtectConfig = {
  headers: { contentSecurityPolicy: "default-src 'self'", cspReportOnly: false, frameOptions: 'DENY', referrerPolicy: 'no-referrer', upstream: 'override' },
  cookies: { secure: true, httpOnly: true, httpOnlyExcept: [], sameSite: 'Lax' },
  csrf: { enabled: true, trustedOrigins: ['https://a.test'] },
  rateLimit: { max: 10, window: 60_000, key: { type: 'ip' } },
  bans: { authFailures: 5, window: 60_000, duration: 600_000 },
};

/** Each entry: a way to make BASE weaker in exactly one respect. */
const WEAKER: Array<[string, ProtectConfig]> = [
  ['CSRF off', { ...BASE, csrf: { enabled: false, trustedOrigins: [] } }],
  ['one more trusted origin', { ...BASE, csrf: { enabled: true, trustedOrigins: ['https://a.test', 'https://b.test'] } }],
  ['no bans', { ...BASE, bans: null }],
  ['more failures before a ban', { ...BASE, bans: { authFailures: 6, window: 60_000, duration: 600_000 } }],
  ['a shorter ban', { ...BASE, bans: { authFailures: 5, window: 60_000, duration: 1_000 } }],
  ['no Secure', { ...BASE, cookies: { ...BASE.cookies, secure: false } }],
  ['no HttpOnly', { ...BASE, cookies: { ...BASE.cookies, httpOnly: false } }],
  ['an HttpOnly exception', { ...BASE, cookies: { ...BASE.cookies, httpOnlyExcept: ['csrftoken'] } }],
  ['SameSite left alone', { ...BASE, cookies: { ...BASE.cookies, sameSite: null } }],
  ['SameSite=None', { ...BASE, cookies: { ...BASE.cookies, sameSite: 'None' } }],
  ['framing allowed', { ...BASE, headers: { ...BASE.headers, frameOptions: null } }],
  ['no CSP', { ...BASE, headers: { ...BASE.headers, contentSecurityPolicy: null } }],
  ['SAMEORIGIN framing', { ...BASE, headers: { ...BASE.headers, frameOptions: 'SAMEORIGIN' } }],
  ['the CSP report-only', { ...BASE, headers: { ...BASE.headers, cspReportOnly: true } }],
  ['no Referrer-Policy', { ...BASE, headers: { ...BASE.headers, referrerPolicy: null } }],
];

/** Each entry: BASE changed so that neither it nor BASE protects more. */
const INCOMPARABLE: Array<[string, ProtectConfig]> = [
  ['another CSP', { ...BASE, headers: { ...BASE.headers, contentSecurityPolicy: "default-src 'none'" } }],
  ['another Referrer-Policy', { ...BASE, headers: { ...BASE.headers, referrerPolicy: 'same-origin' } }],
  // `override` replaces the app's own headers (maybe stricter), `keep` lets them win over the gateway's.
  ['the upstream\'s headers kept', { ...BASE, headers: { ...BASE.headers, upstream: 'keep' } }],
  ['stricter cookies but CSRF off', { ...BASE, cookies: { ...BASE.cookies, sameSite: 'Strict' }, csrf: { enabled: false, trustedOrigins: [] } }],
];

/** Without a CSP of its own, a route's pages are framed as X-Frame-Options says; these CSPs override it. */
const NO_CSP: ProtectConfig = { ...BASE, headers: { ...BASE.headers, contentSecurityPolicy: null } };
const framedBy = (csp: string, reportOnly = false): ProtectConfig => ({ ...NO_CSP, headers: { ...NO_CSP.headers, contentSecurityPolicy: csp, cspReportOnly: reportOnly } });

t.test('each protection weakened alone makes the route weaker, never stronger', async (t) => {
  t.ok(protectsAtLeastAs(BASE, BASE), 'a protection set is at least as strong as itself');
  for (const [what, weaker] of WEAKER) {
    t.ok(protectsAtLeastAs(BASE, weaker), `${what}: the base protects at least as much`);
    t.notOk(protectsAtLeastAs(weaker, BASE), `${what}: the weaker one does not`);
  }
  for (const [what, other] of INCOMPARABLE) {
    t.notOk(protectsAtLeastAs(BASE, other), `${what}: the base does not protect more`);
    t.notOk(protectsAtLeastAs(other, BASE), `${what}: nor the other`);
  }
  t.ok(protectsAtLeastAs({ ...BASE, cookies: { ...BASE.cookies, sameSite: 'Strict' } }, BASE), 'SameSite=Strict is at least Lax');
  t.ok(protectsAtLeastAs({ ...BASE, rateLimit: null }, BASE) && protectsAtLeastAs(BASE, { ...BASE, rateLimit: null }), 'rate limits are not weighed: every reading\'s is enforced');
});

t.test('framing: an enforced CSP frame-ancestors wins over X-Frame-Options, as in browsers', async (t) => {
  t.notOk(protectsAtLeastAs(framedBy("default-src 'self'; frame-ancestors *"), NO_CSP), 'frame-ancestors * under X-Frame-Options DENY: anyone may frame');
  t.notOk(protectsAtLeastAs(framedBy("frame-ancestors https://a.test"), NO_CSP), 'a listed origin is weaker than DENY');
  t.ok(protectsAtLeastAs(framedBy("default-src 'self'; frame-ancestors 'none'"), NO_CSP), "frame-ancestors 'none' is DENY");
  t.ok(protectsAtLeastAs(framedBy("default-src 'self'"), NO_CSP), 'a CSP without frame-ancestors only restricts more');
  t.ok(protectsAtLeastAs(framedBy("default-src 'self'; frame-ancestors *", true), NO_CSP), 'report-only: X-Frame-Options still decides');
  t.notOk(protectsAtLeastAs(framedBy("frame-ancestors https://a.test"), framedBy("frame-ancestors https://b.test")), 'two different lists are incomparable');
});

const route = (protect: ProtectConfig, over: Partial<ProtectedRoute> = {}): ProtectedRoute => ({ access: 'public', roles: [], maxBodySize: 1024, protect, ...over });

t.test('routes: access first, then the body limit and the protections; no route and deny refuse everything', async (t) => {
  t.ok(routeAtLeastAsStrict(route(BASE), route(BASE)));
  t.notOk(routeAtLeastAsStrict(route(BASE, { maxBodySize: 2048 }), route(BASE)), 'a larger body limit is weaker');
  t.ok(routeAtLeastAsStrict(route(BASE, { maxBodySize: 512 }), route(BASE)), 'a smaller one is not');
  t.notOk(routeAtLeastAsStrict(route(BASE), route(BASE, { access: 'authenticated' })), 'public is weaker than authenticated, whatever it protects');
  t.notOk(routeAtLeastAsStrict(route(WEAKER[0]![1], { access: 'authenticated' }), route(BASE)), 'authenticated with CSRF off does not dominate public with CSRF on');
  t.ok(routeAtLeastAsStrict(undefined, route(BASE)), 'no route (404) is strictest');
  t.ok(routeAtLeastAsStrict(route(WEAKER[0]![1], { access: 'deny' }), route(BASE)), 'deny refuses everything');
  t.notOk(routeAtLeastAsStrict(route(BASE), undefined), 'a route is weaker than none');
});

t.test('the table: an ambiguous spelling gets the route that protects most, or 404 when neither does', async (t) => {
  const site = (nested: ProtectConfig, nestedBody = 1024) => ({
    hosts: ['app.test'],
    routes: [
      { path: '/account', methods: null, ...route(BASE) },
      { path: '/account/hook', methods: null, ...route(nested, { maxBodySize: nestedBody }) },
    ],
  });
  const match = (s: ReturnType<typeof site>, path: string) => {
    const table = compileRouteTable([s], routeAtLeastAsStrict);
    const c = canonicalizePath(path);
    if (!c.ok) throw new Error(path);
    return table.matchRoute(s, 'POST', c.path)?.path;
  };
  for (const [what, weaker] of WEAKER) {
    const s = site(weaker);
    t.equal(match(s, '/account/hook'), '/account/hook', `${what}: the exact spelling is the nested route`);
    t.equal(match(s, '/account/HOOK'), '/account', `${what}: /account/HOOK gets the parent, which protects more`);
    t.equal(match(s, '/account/hook;x/y'), '/account', `${what}: so does /account/hook;x/y`);
  }
  for (const [what, other] of INCOMPARABLE) t.equal(match(site(other), '/account/HOOK'), undefined, `${what}: neither protects more, no route (404)`);
  // The nested route protects more: it keeps the ambiguous spellings.
  const stricter = site({ ...BASE, cookies: { ...BASE.cookies, sameSite: 'Strict' } });
  t.equal(match(stricter, '/account/HOOK'), '/account/hook', 'a stricter nested route keeps them');
  // Neither dominates (the nested one has the stricter cookies, the parent the smaller body): 404.
  t.equal(match(site({ ...BASE, cookies: { ...BASE.cookies, sameSite: 'Strict' } }, 4096), '/account/Hook'), undefined, 'neither protects more: no route');
  // The other readings come back for what is counted per route (rate limits), only for an ambiguous path.
  const readings: unknown[] = [];
  const table = compileRouteTable([stricter], routeAtLeastAsStrict);
  const at = (path: string): string => {
    const c = canonicalizePath(path);
    return c.ok ? c.path : '';
  };
  table.matchRoute(stricter, 'POST', at('/account/hook/x'), readings as never);
  t.same(readings, [], 'a plain path: no other reading');
  table.matchRoute(stricter, 'POST', at('/account/HOOK/x'), readings as never);
  t.same(readings.map((r) => (r as { path: string }).path), ['/account'], 'an ambiguous one: the parent, the route not returned');
  // The default order (access only), for callers that have no protections: the nested route.
  const s = site(WEAKER[0]![1]);
  const c = canonicalizePath('/account/HOOK');
  t.equal(c.ok ? compileRouteTable([s]).matchRoute(s, 'POST', c.path)?.path : null, '/account/hook', 'access alone cannot tell them apart');
});
