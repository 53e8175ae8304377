// The audit's verdicts, from observations alone: a deployment that keeps every practice passes
// every check, and each way of breaking one practice fails (or warns on) that check only.
import t from 'tap';
import { EXPIRY_WARN_DAYS, formatFindings, judge, parseHsts, type Exchange, type Finding, type ForgedAttempt, type Observations } from '../../src/audit/checks.js';

const NOW = new Date('2026-12-07T12:00:00Z');
const DAY = 86_400_000;

const goodHeaders = {
  'strict-transport-security': 'max-age=31536000; includeSubDomains',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'content-security-policy': "default-src 'self'",
  'referrer-policy': 'no-referrer',
  'set-cookie': ['sid=1; Path=/; Secure; HttpOnly; SameSite=Lax'],
};

/** The same answer to each unsigned token the probe sends. */
const unsigned = (answer: Exchange): ForgedAttempt[] => ['none', 'None', 'NONE', 'nOnE'].map((alg) => ({ alg, answer }));

function good(): Observations {
  const page: Exchange = { status: 200, headers: goodHeaders, body: '<html>app</html>' };
  return {
    url: new URL('https://app.example/'),
    now: NOW,
    tls: { error: null, protocol: 'TLSv1.3', authorized: true, authorizationError: null, validFrom: new Date(NOW.getTime() - 30 * DAY), validTo: new Date(NOW.getTime() + 60 * DAY) },
    legacy: { TLSv1: { outcome: 'refused', reason: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' }, 'TLSv1.1': { outcome: 'refused', reason: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' } },
    page,
    missing: { status: 404, headers: { 'x-content-type-options': 'nosniff' }, body: '{"error":{"code":"GW_ERR_NO_ROUTE"}}' },
    malformed: { status: 400, headers: {}, body: '{"error":{"code":"GW_ERR_BAD_PATH"}}' },
    trace: { status: 405, headers: {}, body: '' },
    http: { status: 308, headers: { location: 'https://app.example/' }, body: '' },
    protectedPaths: [{ path: '/admin/', anonymous: { status: 401, headers: {}, body: '' }, forged: unsigned({ status: 401, headers: {}, body: '' }) }],
  };
}

const verdicts = (f: readonly Finding[]): Record<string, string> => Object.fromEntries(f.map((x) => [x.check, x.verdict]));

/** The checks whose verdict differs from the good deployment's (all pass). */
function changed(o: Observations): Record<string, string> {
  const all = verdicts(judge(o));
  return Object.fromEntries(Object.entries(all).filter(([, v]) => v !== 'pass'));
}

t.test('a deployment that keeps every practice passes every check', async (t) => {
  const findings = judge(good());
  t.same(changed(good()), {});
  t.same(findings.map((f) => f.check), ['tls', 'certificate-expiry', 'legacy-tls', 'http-redirect', 'hsts', 'server-banner', 'nosniff', 'framing', 'csp', 'referrer-policy', 'cookies', 'error-pages', 'trace', 'protected /admin/']);
  const text = formatFindings(findings);
  t.match(text, /^PASS {2}tls {17}TLSv1\.3, certificate trusted for app\.example$/m);
  t.match(text, /0 failed, 0 warnings, 14 passed\n$/);
  t.match(formatFindings(judge({ ...good(), http: null })), /0 failed, 1 warning, 13 passed\n$/);
});

const withPage = (headers: Record<string, string | string[]>): Observations => ({ ...good(), page: { status: 200, headers, body: '' } });
const without = (name: keyof typeof goodHeaders): Record<string, string | string[]> => {
  const h: Record<string, string | string[]> = { ...goodHeaders };
  delete h[name];
  return h;
};

t.test('transport: handshake, trust, protocol, expiry, legacy versions', async (t) => {
  const o = good();
  t.same(changed({ ...o, tls: { ...o.tls, error: 'connect ECONNREFUSED', authorized: false, protocol: null, validFrom: null, validTo: null } }), { tls: 'fail', 'certificate-expiry': 'fail', 'legacy-tls': 'warn' }, 'old versions refused by a server that refuses everything prove nothing');
  t.same(changed({ ...o, tls: { ...o.tls, authorized: false, authorizationError: 'SELF_SIGNED_CERT_IN_CHAIN' } }), { tls: 'fail' });
  t.match(judge({ ...o, tls: { ...o.tls, authorized: false, authorizationError: 'ERR_TLS_CERT_ALTNAME_INVALID' } })[0]!.detail, /not trusted for app\.example: ERR_TLS_CERT_ALTNAME_INVALID/);
  t.same(changed({ ...o, tls: { ...o.tls, protocol: 'TLSv1.1' } }), { tls: 'fail' });
  t.same(changed({ ...o, tls: { ...o.tls, validTo: new Date(NOW.getTime() - DAY) } }), { 'certificate-expiry': 'fail' });
  // 90-day certificates (Let's Encrypt's): renewal is due with 30 days left.
  const lifetime90 = (daysLeft: number) => ({ ...o.tls, validFrom: new Date(NOW.getTime() - (90 - daysLeft) * DAY), validTo: new Date(NOW.getTime() + daysLeft * DAY) });
  t.same(changed({ ...o, tls: lifetime90(29) }), { 'certificate-expiry': 'warn' });
  t.match(judge({ ...o, tls: lifetime90(29) })[1]!.detail, /in 29 days: it should have been renewed by now/);
  t.same(changed({ ...o, tls: lifetime90(31) }), {});
  // The local development CA's 7-day leaves: 5 days left is on schedule, 2 is not.
  const lifetime7 = (daysLeft: number) => ({ ...o.tls, validFrom: new Date(NOW.getTime() - (7 - daysLeft) * DAY), validTo: new Date(NOW.getTime() + daysLeft * DAY) });
  t.same(changed({ ...o, tls: lifetime7(5) }), {});
  t.same(changed({ ...o, tls: lifetime7(2) }), { 'certificate-expiry': 'warn' });
  // No start date: the fixed bar.
  t.same(changed({ ...o, tls: { ...o.tls, validFrom: null, validTo: new Date(NOW.getTime() + (EXPIRY_WARN_DAYS - 1) * DAY) } }), { 'certificate-expiry': 'warn' });
  t.same(changed({ ...o, tls: { ...o.tls, validFrom: null, validTo: new Date(NOW.getTime() + (EXPIRY_WARN_DAYS + 1) * DAY) } }), {});
  t.same(changed({ ...o, legacy: { ...o.legacy, 'TLSv1.1': { outcome: 'accepted', protocol: 'TLSv1.1' } } }), { 'legacy-tls': 'fail' });
  t.same(changed({ ...o, legacy: { ...o.legacy, TLSv1: { outcome: 'untested', reason: 'ERR_SSL_NO_PROTOCOLS_AVAILABLE' } } }), { 'legacy-tls': 'warn' });
  // A server that speaks only TLS 1.0/1.1: our modern handshake fails, and the old ones are accepted.
  const legacyOnly: Observations = { ...o, tls: { ...o.tls, error: 'ERR_SSL_UNSUPPORTED_PROTOCOL', authorized: false, protocol: null, validFrom: null, validTo: null }, legacy: { TLSv1: { outcome: 'accepted', protocol: 'TLSv1' }, 'TLSv1.1': { outcome: 'accepted', protocol: 'TLSv1.1' } } };
  t.same(changed(legacyOnly), { tls: 'fail', 'certificate-expiry': 'fail', 'legacy-tls': 'fail' });
});

t.test('plain HTTP: only a redirect to https:// on the same host passes; a temporary one warns', async (t) => {
  const o = good();
  const http = (status: number, location?: string): Observations => ({ ...o, http: { status, headers: location === undefined ? {} : { location }, body: '' } });
  t.same(changed(http(301, 'https://app.example/')), {});
  t.same(changed(http(302, 'https://app.example/')), { 'http-redirect': 'warn' });
  t.same(changed(http(200)), { 'http-redirect': 'fail' });
  t.same(changed(http(301, 'http://app.example/')), { 'http-redirect': 'fail' }, 'a redirect that stays in clear');
  t.same(changed(http(301, '/login')), { 'http-redirect': 'fail' }, 'a relative redirect stays on http');
  t.same(changed(http(308, 'https://evil.example/')), { 'http-redirect': 'fail' }, 'an open redirect to another host');
  t.same(changed({ ...o, http: { error: 'ECONNREFUSED' } }), { 'http-redirect': 'warn' });
  t.same(changed({ ...o, http: null }), { 'http-redirect': 'warn' });
});

t.test('HSTS: missing or without max-age fails, short warns', async (t) => {
  t.same(changed(withPage(without('strict-transport-security'))), { hsts: 'fail' });
  t.same(changed(withPage({ ...goodHeaders, 'strict-transport-security': 'includeSubDomains' })), { hsts: 'fail' });
  t.same(changed(withPage({ ...goodHeaders, 'strict-transport-security': 'max-age=abc' })), { hsts: 'fail' });
  t.same(changed(withPage({ ...goodHeaders, 'strict-transport-security': 'max-age=86400' })), { hsts: 'warn' });
  t.same(changed(withPage({ ...goodHeaders, 'strict-transport-security': 'max-age=0' })), { hsts: 'fail' }, 'max-age=0 tells browsers to forget HSTS');
  t.same(changed(withPage({ ...goodHeaders, 'strict-transport-security': 'Max-Age="63072000"; preload' })), {});
  t.same(changed({ ...good(), page: { error: 'ECONNRESET' } }), { hsts: 'fail', nosniff: 'warn', framing: 'warn', csp: 'warn', 'referrer-policy': 'warn' }, 'no answer: nothing to judge headers on, and each header check says so');
});

t.test('HSTS as RFC 6797 §6.1 has browsers read it: a header that breaks the grammar is ignored whole, so it fails', async (t) => {
  const hsts = (value: string): Record<string, string> => changed(withPage({ ...goodHeaders, 'strict-transport-security': value }));
  for (const value of [
    'max-age=31536000; includeSubDomains; max-age=0',
    'max-age=31536000; includeSubDomains=true',
    'max-age=31536000; includeSubDomains; includeSubDomains',
    'max-age="31536000',
    'max-age=31536000; MAX-AGE=31536000',
    'max-age=+31536000',
    'max-age=-1',
    'max-age',
    'max-age=31536000; in cludeSubDomains',
  ]) {
    t.same(hsts(value), { hsts: 'fail' }, value);
  }
  t.match(judge(withPage({ ...goodHeaders, 'strict-transport-security': 'max-age=31536000; max-age=0' })).find((f) => f.check === 'hsts')!.detail, /max-age appears twice, so browsers ignore it/);
  for (const value of ['max-age=31536000', ' max-age = 31536000 ; includeSubDomains ; preload ;', 'max-age="31536000"; INCLUDESUBDOMAINS', 'max-age=31536000; unknown-directive="x"; other', ';;max-age=63072000']) {
    t.same(hsts(value), {}, value);
  }
  t.same(parseHsts('max-age=31536000; includeSubDomains'), { maxAge: 31_536_000 });
  t.same(parseHsts('includeSubDomains'), { invalid: 'no max-age' });
});

t.test('software banners fail wherever they appear, error answers included; a bare server name warns', async (t) => {
  t.same(changed(withPage({ ...goodHeaders, server: 'nginx/1.22.1' })), { 'server-banner': 'fail' });
  t.same(changed(withPage({ ...goodHeaders, server: 'cloudflare' })), { 'server-banner': 'warn' }, "a CDN's name, without a version");
  t.same(changed(withPage({ ...goodHeaders, server: 'cloudflare', 'x-powered-by': 'PHP/8.2' })), { 'server-banner': 'fail' });
  t.same(changed({ ...good(), http: { status: 301, headers: { location: 'https://app.example/', server: 'Apache/2.4.57 (Debian)' }, body: '' } }), { 'server-banner': 'fail' }, 'the plain-HTTP answer too');
  t.same(changed({ ...good(), protectedPaths: [{ path: '/admin/', anonymous: { status: 401, headers: { 'x-aspnet-version': '4.0.30319' }, body: '' }, forged: unsigned({ status: 401, headers: {}, body: '' }) }] }), { 'server-banner': 'fail' }, "a protected path's refusal too");
  t.same(changed(withPage({ ...goodHeaders, server: ['cloudflare', 'Apache/2.4.29 (Ubuntu)'] })), { 'server-banner': 'fail' }, 'a second Server field with a version');
  const o = good();
  t.same(changed({ ...o, missing: { status: 404, headers: { 'x-powered-by': 'Express' }, body: '' } }), { 'server-banner': 'fail' });
  t.match(judge({ ...o, trace: { status: 405, headers: { server: 'gunicorn' }, body: '' } }).find((f) => f.check === 'server-banner')!.detail, /server: gunicorn/);
});

t.test('headers sent twice (nginx add_header in front of an app that sets them too) are judged as browsers read them', async (t) => {
  t.same(changed(withPage({ ...goodHeaders, 'x-content-type-options': 'nosniff, nosniff' })), {});
  t.same(changed(withPage({ ...goodHeaders, 'x-frame-options': 'SAMEORIGIN, SAMEORIGIN' })), {});
  // HTML: several different values, one of them deny, sameorigin or allowall: framing is refused.
  t.same(changed(withPage({ ...goodHeaders, 'x-frame-options': 'DENY, SAMEORIGIN' })), {}, 'values that disagree: browsers refuse framing');
  t.match(judge(withPage({ ...goodHeaders, 'x-frame-options': 'DENY, SAMEORIGIN' })).find((f) => f.check === 'framing')!.detail, /conflicting values: browsers refuse framing/);
  t.same(changed(withPage({ ...goodHeaders, 'x-frame-options': 'ALLOWALL, deny' })), {});
  t.same(changed(withPage({ ...goodHeaders, 'x-frame-options': 'ALLOWALL' })), { framing: 'fail' }, 'ALLOWALL alone allows');
  t.same(changed(withPage({ ...goodHeaders, 'x-frame-options': 'foo, bar' })), { framing: 'fail' }, 'unknown values only: allowed');
  t.same(changed(withPage({ ...goodHeaders, 'strict-transport-security': 'max-age=31536000, max-age=31536000' })), {});
  t.same(changed(withPage({ ...goodHeaders, 'strict-transport-security': 'max-age=60, max-age=31536000' })), { hsts: 'warn' }, 'the first one counts');
  t.same(changed(withPage({ ...without('x-frame-options'), 'content-security-policy': "default-src 'self', frame-ancestors 'none'" })), {}, 'two CSP policies: both enforced');
});

t.test('framing: a frame-ancestors that lets anyone in fails, and X-Frame-Options beside it does not save it', async (t) => {
  const csp = (policy: string, xfo?: string): Observations => withPage({ ...without('x-frame-options'), 'content-security-policy': policy, ...(xfo ? { 'x-frame-options': xfo } : {}) });
  t.same(changed(csp('frame-ancestors *')), { framing: 'fail' });
  t.same(changed(csp("default-src 'self'; frame-ancestors https:")), { framing: 'fail' });
  t.same(changed(csp('frame-ancestors *', 'DENY')), { framing: 'fail' }, 'browsers ignore X-Frame-Options once frame-ancestors is there');
  t.same(changed(csp("frame-ancestors 'self' https://partner.example")), {});
  for (const src of ['https://*', 'http://*', 'https://*:*', '*:443', 'https://*/']) t.same(changed(csp(`frame-ancestors ${src}`)), { framing: 'fail' }, `a host of * matches every site: ${src}`);
  t.same(changed(csp('frame-ancestors https://*.example.com')), {}, "one site's subdomains");
  t.same(changed(csp("FRAME-ANCESTORS 'none'")), {});
  t.match(judge(csp('frame-ancestors *')).find((f) => f.check === 'framing')!.detail, /lets any site frame the pages/);
});

t.test('nosniff, framing, CSP, Referrer-Policy', async (t) => {
  t.same(changed(withPage(without('x-content-type-options'))), { nosniff: 'fail' });
  t.same(changed(withPage({ ...goodHeaders, 'x-content-type-options': 'sniff-away' })), { nosniff: 'fail' });
  t.same(changed(withPage(without('x-frame-options'))), { framing: 'fail' }, "a CSP without frame-ancestors does not stop framing");
  t.same(changed(withPage({ ...without('x-frame-options'), 'content-security-policy': "default-src 'self'; frame-ancestors 'none'" })), {});
  t.same(changed(withPage({ ...goodHeaders, 'x-frame-options': 'ALLOW-FROM https://x.example' })), { framing: 'fail' }, 'ALLOW-FROM is ignored by browsers');
  t.same(changed(withPage(without('content-security-policy'))), { csp: 'warn' });
  t.same(changed(withPage(without('referrer-policy'))), { 'referrer-policy': 'warn' });
  t.same(changed(withPage({ ...goodHeaders, 'referrer-policy': 'unsafe-url' })), { 'referrer-policy': 'warn' });
  t.same(changed(withPage({ ...goodHeaders, 'referrer-policy': 'unsafe-url, strict-origin' })), {}, 'the last known value applies');
  t.same(changed(withPage({ ...goodHeaders, 'content-security-policy': '' })), { csp: 'warn' }, 'an empty policy');
  t.same(changed(withPage({ ...goodHeaders, 'content-security-policy': ' ; ;' })), { csp: 'warn' }, 'a policy without a directive');
  t.same(changed(withPage({ ...goodHeaders, 'referrer-policy': 'unsafe-url, no-referrer-v2' })), { 'referrer-policy': 'warn' }, 'a value browsers do not know is skipped: unsafe-url applies');
  t.same(changed(withPage({ ...goodHeaders, 'referrer-policy': 'strict-origin, made-up' })), {});
  t.match(judge(withPage({ ...goodHeaders, 'referrer-policy': 'made-up' })).find((f) => f.check === 'referrer-policy')!, { verdict: 'warn', detail: /no value browsers know/ });
});

t.test('cookies: Secure is required, HttpOnly and SameSite advised; attributes matched by name, not by substring', async (t) => {
  const cookies = (...c: string[]): Observations => withPage({ ...goodHeaders, 'set-cookie': c });
  t.same(changed(cookies('sid=1; Path=/; HttpOnly; SameSite=Lax')), { cookies: 'fail' });
  t.same(changed(cookies('sid=1; Path=/; Secure')), { cookies: 'warn' });
  t.same(changed(cookies('secure=1; Path=/; HttpOnly; SameSite=Lax')), { cookies: 'fail' }, 'a cookie NAMED secure is not Secure');
  t.same(changed(cookies('sid=1; Path=/secure; HttpOnly; SameSite=Lax')), { cookies: 'fail' }, 'a path containing "secure" is not Secure');
  t.same(changed(cookies('a=1; secure; httponly; samesite=strict', 'b=2; Secure; HttpOnly; SameSite=None')), {});
  const o = good();
  t.same(changed({ ...o, missing: { status: 404, headers: { 'set-cookie': 'tracking=1' }, body: '' } }), { cookies: 'fail' }, 'cookies on error answers count too');
  t.same(changed({ ...o, http: { status: 301, headers: { location: 'https://app.example/', 'set-cookie': 'sid=1; HttpOnly; SameSite=Lax' }, body: '' } }), { cookies: 'fail' }, 'a cookie set on the plain-HTTP redirect travelled in clear');
  t.same(
    changed({ ...o, protectedPaths: [{ path: '/admin/', anonymous: { status: 302, headers: { location: 'https://idp.example/', 'set-cookie': '_oauth2_proxy_csrf=x; Path=/' }, body: '' }, forged: unsigned({ status: 401, headers: {}, body: '' }) }] }),
    { cookies: 'fail', 'protected /admin/': 'warn' },
    "a login redirect's cookie too",
  );
  t.match(judge(cookies('sid=1')).find((f) => f.check === 'cookies')!.detail, /sid without Secure; sid without HttpOnly; sid without SameSite/);
  // A cookie that deletes one is never stored (RFC 6265bis §5.7): nothing to protect.
  t.same(changed(cookies('sid=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT')), {});
  t.same(changed(cookies('sid=; Max-Age=0')), {});
  t.same(changed(cookies('sid=x; Max-Age=-5; Expires=Thu, 01 Jan 2099 00:00:00 GMT')), {}, 'Max-Age wins over Expires');
  t.same(changed(cookies('sid=x; Max-Age=3600; Expires=Thu, 01 Jan 1970 00:00:00 GMT')), { cookies: 'fail' }, 'Max-Age wins over Expires, the other way');
  t.same(changed(cookies('sid=x; Expires=Thu, 01 Jan 2099 00:00:00 GMT')), { cookies: 'fail' });
  t.same(changed(cookies('sid=x; Expires=not a date')), { cookies: 'fail' });
  t.same(changed(cookies('sid=1; Secure; HttpOnly; SameSite=Loose')), { cookies: 'warn' }, 'a SameSite value browsers do not know is none');
  t.same(changed(cookies('sid=1\x01; Path=/')), {}, 'a line with a control character is ignored by browsers: nothing stored');
  const twice = { ...good(), missing: { status: 404, headers: { 'set-cookie': 'sid=2; Path=/; Secure; HttpOnly; SameSite=Lax' }, body: '' } };
  t.match(judge(twice).find((f) => f.check === 'cookies')!.detail, /^1 cookie, each Secure/, 'the same cookie on two answers is one cookie');
});

t.test('error answers: stack traces, tracebacks, paths and banners in a body fail', async (t) => {
  const leaky = (body: string): Observations => ({ ...good(), missing: { status: 500, headers: {}, body } });
  const leaks = [
    'TypeError: x is undefined\n    at Module._compile (node:internal/modules/cjs/loader:1105:14)\n',
    '<pre>Error: boom<br> &nbsp; &nbsp;at Layer.handle [as handle_request] (C:\\code\\index.js:5:11)</pre>',
    'panic: runtime error\n\ngoroutine 1 [running]:\nmain.main()',
    '<b>Fatal error</b>: Uncaught Error in /www/site/index.php on line 3',
    'Exception in thread "main"\n\tat com.ex.AppKt.main(App.kt:5)',
    '\tat java.base/java.lang.Thread.run(Thread.java:833)',
    'Error at handler (/code/src/index.ts:12)',
    'Traceback (most recent call last):\n  File "app.py", line 3',
    'java.lang.NullPointerException\n\tat com.example.App.run(App.java:42)',
    'upstream error: connect ECONNREFUSED 10.0.0.5:8080',
    'cannot open "/var/www/app/config.php"',
    'Error: Cannot find module /x/node_modules/foo/index.js',
    '<hr><center>nginx/1.22.1</center>',
    '<title>Werkzeug Debugger</title>',
    // Stack traces inside JSON error bodies: escaped as JSON escapes them.
    '{"status":500,"trace":"java.lang.NullPointerException\\n\\tat com.example.shop.OrderController.get(OrderController.java:42)\\n"}',
    '{"message":"SQLSTATE","exception":"QueryException","file":"\\/var\\/www\\/html\\/vendor\\/laravel\\/framework\\/src\\/Illuminate\\/Database\\/Connection.php","line":712}',
    '{"error":"TypeError: x\\n    at handler (\\u002fsrv\\u002fapp\\u002findex.js:3:9)"}',
    'System.NullReferenceException: Object reference not set\n   at Shop.Api.Controllers.OrdersController.Get(Int32 id) in /src/Shop.Api/Controllers/OrdersController.cs:line 42',
    '   at Shop.Api.Program.Main(String[] args) in C:\\src\\Shop\\Program.cs:line 7',
    "app/controllers/orders_controller.rb:12:in `show'",
  ];
  for (const body of leaks) t.same(changed(leaky(body)), { 'error-pages': 'fail' }, body.split('\n')[0]!);
  t.same(changed({ ...good(), malformed: { status: 400, headers: {}, body: 'Traceback (most recent call last):' } }), { 'error-pages': 'fail' }, 'the malformed path too');
  t.same(changed(leaky('{"error":{"code":"GW_ERR_INTERNAL","request_id":"a1"}}')), {}, 'a code and a request id leak nothing');
  t.same(changed(leaky('See the docs at https://example.com/app/help.js for how to call us')), {}, 'a URL is not a server path');
  t.same(changed(leaky('<html><script src="/app/main.js"></script><link href="/var/style.css"><a href="/home/">home</a></html>')), {}, "a page's own assets and links are not server paths");
  t.same(changed(leaky('Not found. Try the search at /search?q=at+x:1:2')), {}, 'a colon-number in a URL is not a stack frame');
});

t.test('TRACE: any 2xx fails, a refusal or no answer passes', async (t) => {
  const trace = (e: Exchange): Observations => ({ ...good(), trace: e });
  t.same(changed(trace({ status: 200, headers: {}, body: 'TRACE / HTTP/1.1\r\nauthorization: secret' })), { trace: 'fail' });
  t.match(judge(trace({ status: 200, headers: {}, body: 'TRACE / HTTP/1.1' })).find((f) => f.check === 'trace')!.detail, /echoing the request/);
  t.same(changed(trace({ status: 501, headers: {}, body: '' })), {});
  t.same(changed(trace({ error: 'ECONNRESET' })), {});
});

t.test('protected paths: served without a token or with an alg:none one fails; refused otherwise than 401/403, or redirected, warns', async (t) => {
  const path = (anonymous: Exchange, forged: Exchange | ForgedAttempt[]): Observations => ({ ...good(), protectedPaths: [{ path: '/admin/', anonymous, forged: Array.isArray(forged) ? forged : unsigned(forged) }] });
  const r = (status: number): Exchange => ({ status, headers: {}, body: '' });
  t.same(changed(path(r(200), r(401))), { 'protected /admin/': 'fail' });
  t.same(changed(path(r(401), r(200))), { 'protected /admin/': 'fail' }, 'the forged token let in');
  t.same(changed(path(r(302), r(302))), { 'protected /admin/': 'warn' }, 'a redirect (to a login page, say) serves nothing itself');
  t.match(judge(path({ status: 302, headers: { location: 'https://idp.example/login' }, body: '' }, r(401))).at(-1)!.detail, /without a token 302 to https:\/\/idp\.example\/login/);
  t.same(changed(path(r(403), r(403))), {});
  t.same(changed(path(r(404), r(401))), { 'protected /admin/': 'warn' });
  t.same(changed(path({ error: 'ECONNRESET' }, r(401))), { 'protected /admin/': 'warn' });
  t.match(judge(path({ error: 'timed out' }, r(401))).at(-1)!.detail, /^not judged: without a token no answer \(timed out\)/, 'no answer is not a refusal');
  t.match(judge(path(r(401), [...unsigned(r(401)).slice(0, 3), { alg: 'nOnE', answer: { error: 'timed out' } }])).at(-1)!, { verdict: 'warn', detail: /^not judged: / });
  t.match(judge(path(r(200), r(200))).at(-1)!.detail, /without a token: 200, with an unsigned token \(alg "none"\): 200/);
  // A deny list of "none" that lets "None" through to a case-insensitive lookup.
  const caseOnly = [...unsigned(r(401)).filter((f) => f.alg !== 'None'), { alg: 'None', answer: r(200) }];
  t.same(changed(path(r(401), caseOnly)), { 'protected /admin/': 'fail' });
  t.match(judge(path(r(401), caseOnly)).at(-1)!.detail, /^not refused with an unsigned token \(alg "None"\): 200$/);
  t.match(judge(good()).at(-1)!.detail, /unsigned tokens \(alg "none", "None", "NONE", "nOnE"\) 401; real tokens' signature, issuer and audience checks are not tested/, 'the pass says what it did not test');
});

t.test('legacy TLS: only a protocol_version alert is a refusal; any other end of the handshake leaves it unknown', async (t) => {
  const legacy = (reason: string, outcome: 'refused' | 'unclear'): Observations => ({ ...good(), legacy: { ...good().legacy, TLSv1: { outcome, reason } } });
  t.same(changed(legacy('ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE', 'unclear')), { 'legacy-tls': 'warn' });
  t.match(judge(legacy('ECONNRESET', 'unclear')).find((f) => f.check === 'legacy-tls')!.detail, /TLSv1: the server ended the handshake with ECONNRESET, not a protocol_version alert/);
  t.same(changed(legacy('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', 'refused')), {});
});
