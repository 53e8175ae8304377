import t from 'tap';
import type { IncomingHttpHeaders } from 'node:http';
import { applySecurityHeaders, computeSecurityHeaders, STRIPPED_RESPONSE_HEADERS } from '../../src/protect/index.js';
import type { HeadersRules } from '../../src/protect/index.js';

const base: HeadersRules = {
  contentSecurityPolicy: null,
  cspReportOnly: false,
  frameOptions: 'DENY',
  referrerPolicy: 'strict-origin-when-cross-origin',
  upstream: 'keep',
};
const hsts = { maxAge: 31536000, includeSubdomains: true, preload: false };
const noHsts = { maxAge: 0, includeSubdomains: false, preload: false };

t.test('baseline set without CSP', async (t) => {
  const set = computeSecurityHeaders(base, hsts);
  t.same(set.common, {
    'cross-origin-opener-policy': 'same-origin',
    'origin-agent-cluster': '?1',
    'referrer-policy': 'strict-origin-when-cross-origin',
    'x-content-type-options': 'nosniff',
    'x-dns-prefetch-control': 'off',
    'x-download-options': 'noopen',
    'x-frame-options': 'DENY',
    'x-permitted-cross-domain-policies': 'none',
    'x-xss-protection': '0',
  });
  t.same(set.httpsOnly, { 'strict-transport-security': 'max-age=31536000; includeSubDomains' });
  t.same(set.gatewayOnly, { 'cross-origin-resource-policy': 'same-origin' });
  t.notOk('content-security-policy' in set.common);
  t.ok(Object.isFrozen(set) && Object.isFrozen(set.common));
});

t.test('HSTS: preload, no subdomains, disabled with max-age 0', async (t) => {
  t.same(computeSecurityHeaders(base, { maxAge: 600, includeSubdomains: false, preload: true }).httpsOnly,
    { 'strict-transport-security': 'max-age=600; preload' });
  t.same(computeSecurityHeaders(base, noHsts).httpsOnly, {});
});

t.test('CSP as a string gets frame-ancestors from frame options', async (t) => {
  const deny = computeSecurityHeaders({ ...base, contentSecurityPolicy: "default-src 'self'; img-src 'self' data:" }, hsts);
  t.equal(deny.common['content-security-policy'], "default-src 'self';img-src 'self' data:;frame-ancestors 'none'");
  const same = computeSecurityHeaders({ ...base, frameOptions: 'SAMEORIGIN', contentSecurityPolicy: "DEFAULT-SRC 'self' ;  " }, hsts);
  t.equal(same.common['content-security-policy'], "default-src 'self';frame-ancestors 'self'");
  t.equal(same.common['x-frame-options'], 'SAMEORIGIN');
  const none = computeSecurityHeaders({ ...base, frameOptions: null, contentSecurityPolicy: "default-src 'self'" }, hsts);
  t.equal(none.common['content-security-policy'], "default-src 'self'");
  t.notOk('x-frame-options' in none.common);
});

t.test('CSP as a directive map; an explicit frame-ancestors is kept', async (t) => {
  const set = computeSecurityHeaders({
    ...base,
    contentSecurityPolicy: { 'default-src': "'none'", 'script-src': ["'self'", 'https://cdn.example'], 'frame-ancestors': ['https://portal.example'] },
  }, hsts);
  t.equal(set.common['content-security-policy'], "default-src 'none';script-src 'self' https://cdn.example;frame-ancestors https://portal.example");
});

t.test('report-only mode uses the report-only header only', async (t) => {
  const set = computeSecurityHeaders({ ...base, cspReportOnly: true, contentSecurityPolicy: "default-src 'self'" }, hsts);
  t.equal(set.common['content-security-policy-report-only'], "default-src 'self';frame-ancestors 'none'");
  t.notOk('content-security-policy' in set.common);
});

t.test('invalid configuration is a coded config error (helmet validates)', async (t) => {
  const bad: Array<[string, Partial<HeadersRules>]> = [
    ['unquoted keyword', { contentSecurityPolicy: 'default-src self' }],
    ['no default-src', { contentSecurityPolicy: "script-src 'self'" }],
    ['injection via value', { contentSecurityPolicy: { 'default-src': "'self'; script-src *" } }],
    ['comma in value', { contentSecurityPolicy: { 'default-src': "'self', *" } }],
    ['duplicate directive', { contentSecurityPolicy: "default-src 'self'; default-src *" }],
    ['bad referrer policy', { referrerPolicy: 'always' }],
    ['bad frame option', { frameOptions: 'ALLOW-FROM x' as never }],
  ];
  for (const [name, patch] of bad) {
    t.throws(() => computeSecurityHeaders({ ...base, ...patch }, hsts), { code: 'GW_ERR_CONFIG_INVALID' }, name);
  }
  t.equal(computeSecurityHeaders({ ...base, referrerPolicy: 'no-referrer, strict-origin-when-cross-origin' }, hsts)
    .common['referrer-policy'], 'no-referrer,strict-origin-when-cross-origin', 'fallback list');
});

t.test('apply: keep lets the app win, override lets the gateway win; fingerprinting headers stripped', async (t) => {
  const set = computeSecurityHeaders({ ...base, contentSecurityPolicy: "default-src 'self'" }, hsts);
  const upstream = {
    'Content-Type': 'text/html',
    'X-Frame-Options': 'SAMEORIGIN',
    'content-security-policy': "default-src *",
    Server: 'Apache/2.4.1',
    'x-powered-by': 'PHP/5.6',
    'X-AspNet-Version': '4.0',
    'x-aspnetmvc-version': '5.2',
    'set-cookie': ['a=1', 'b=2'],
    'x-empty': undefined,
  };
  const kept = applySecurityHeaders(upstream, set, 'keep', { https: true });
  t.equal(kept['X-Frame-Options'], 'SAMEORIGIN');
  t.notOk('x-frame-options' in kept, 'no duplicate in another case');
  t.equal(kept['content-security-policy'], 'default-src *');
  t.equal(kept['x-content-type-options'], 'nosniff');
  t.equal(kept['strict-transport-security'], 'max-age=31536000; includeSubDomains');
  t.same(kept['set-cookie'], ['a=1', 'b=2']);
  for (const h of ['Server', 'x-powered-by', 'X-AspNet-Version', 'x-aspnetmvc-version']) t.notOk(h in kept, `${h} stripped`);
  t.notOk('x-empty' in kept);
  t.notOk('cross-origin-resource-policy' in kept, 'no CORP on proxied responses');

  const over = applySecurityHeaders(upstream, set, 'override', { https: true });
  t.notOk('X-Frame-Options' in over);
  t.equal(over['x-frame-options'], 'DENY');
  t.equal(over['content-security-policy'], "default-src 'self';frame-ancestors 'none'");
  t.equal(over['Content-Type'], 'text/html');
  t.equal(upstream.Server, 'Apache/2.4.1', 'input not mutated');
  t.same(STRIPPED_RESPONSE_HEADERS, ['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version']);
});

t.test('apply: an app HSTS never replaces the gateway one, even under keep (max-age=0 would erase it in browsers)', async (t) => {
  const set = computeSecurityHeaders(base, hsts);
  for (const mode of ['keep', 'override'] as const) {
    const out = applySecurityHeaders({ 'Strict-Transport-Security': 'max-age=0', 'strict-transport-security': 'max-age=60' }, set, mode, { https: true });
    t.same(
      Object.entries(out).filter(([k]) => k.toLowerCase() === 'strict-transport-security'),
      [['strict-transport-security', 'max-age=31536000; includeSubDomains']],
      `${mode}: only the gateway's HSTS, in no other spelling`,
    );
  }
  // tls.hsts.max_age: 0: the gateway sends none, so the app's own is left alone.
  const off = computeSecurityHeaders(base, { ...hsts, maxAge: 0 });
  t.equal(applySecurityHeaders({ 'strict-transport-security': 'max-age=60' }, off, 'keep', { https: true })['strict-transport-security'], 'max-age=60');
});

t.test('apply: HSTS never over plain HTTP; CORP on gateway responses; app CSP survives when the route has none', async (t) => {
  const set = computeSecurityHeaders(base, hsts);
  const plain = applySecurityHeaders({ 'content-security-policy': "default-src 'self'" }, set, 'override', { https: false });
  t.notOk('strict-transport-security' in plain);
  t.equal(plain['content-security-policy'], "default-src 'self'");
  const own = applySecurityHeaders({}, set, 'override', { https: true, gatewayGenerated: true });
  t.equal(own['cross-origin-resource-policy'], 'same-origin');
  t.equal(own['strict-transport-security'], 'max-age=31536000; includeSubDomains');
});

t.test('usable as reply-from rewriteHeaders (IncomingHttpHeaders in and out)', async (t) => {
  const set = computeSecurityHeaders(base, hsts);
  const rewriteHeaders = (headers: IncomingHttpHeaders): IncomingHttpHeaders => applySecurityHeaders(headers, set, 'keep', { https: true });
  const out = rewriteHeaders({ 'content-type': 'text/plain', server: 'nginx', 'set-cookie': ['a=1'] });
  t.equal(out['x-content-type-options'], 'nosniff');
  t.notOk('server' in out);
  t.same(out['set-cookie'], ['a=1']);
});
