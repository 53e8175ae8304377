// Security headers through the real gateway: on proxied responses and on every answer the gateway
// writes itself (401, 403, 404, 421, 429, 502), with `upstream: keep|override` and per-route overrides.
import t, { type Test } from 'tap';
import http2 from 'node:http2';
import type { IncomingHttpHeaders } from 'node:http';
import { LOOPBACK_LISTEN, httpRequest, startGateway, startUpstream } from '../helpers/gateway.js';
import { deadPort } from './_helpers.js';

const HSTS = 'max-age=31536000; includeSubDomains';

/** The headers every response carries, proxied or not. */
function assertCommon(t: Test, h: IncomingHttpHeaders, what: string): void {
  t.equal(h['x-content-type-options'], 'nosniff', `${what}: nosniff`);
  t.equal(h['x-frame-options'], 'DENY', `${what}: X-Frame-Options`);
  t.equal(h['referrer-policy'], 'no-referrer', `${what}: Referrer-Policy from the config`);
  t.equal(h['cross-origin-opener-policy'], 'same-origin', `${what}: COOP`);
  t.equal(h['strict-transport-security'], HSTS, `${what}: HSTS`);
  t.equal(h['content-security-policy'], "default-src 'self';frame-ancestors 'none'", `${what}: CSP with frame-ancestors from frame_options`);
  t.notOk(h['content-security-policy-report-only'], `${what}: not report-only`);
}

t.test('proxied responses and every gateway answer carry the security headers', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<p>app</p>');
  });
  const dead = await deadPort();
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
headers:
  content_security_policy: "default-src 'self'"
  referrer_policy: no-referrer
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /app/, access: public }
      - { path: /private/ }
      - { path: /deny/, access: deny }
      - { path: /limited/, access: public, rate_limit: { max: 1, window: 1m, key: ip } }
      - { path: /down/, access: public, upstream: "http://127.0.0.1:${dead}" }
`);

  const proxied = await gw.request({ path: '/app/page' });
  t.equal(proxied.status, 200);
  t.equal(proxied.body, '<p>app</p>');
  assertCommon(t, proxied.headers, 'proxied 200');
  t.notOk(proxied.headers['cross-origin-resource-policy'], 'no CORP on proxied responses (it would break cross-site assets)');

  const seenBefore = up.seen.length;
  const answers: Array<[number, Parameters<typeof gw.request>[0]]> = [
    [401, { path: '/private/x' }],
    [403, { path: '/deny/x' }],
    [404, { path: '/nowhere' }],
    [421, { path: '/app/x', host: 'other.test', servername: 'app.test' }],
    [502, { path: '/down/x' }],
  ];
  for (const [status, req] of answers) {
    const res = await gw.request(req);
    t.equal(res.status, status, `${req.path} → ${status}`);
    assertCommon(t, res.headers, `gateway ${status}`);
    t.equal(res.headers['cross-origin-resource-policy'], 'same-origin', `gateway ${status}: CORP`);
    t.ok(res.headers['x-request-id'], `gateway ${status}: request id`);
  }
  t.equal((await gw.request({ path: '/limited/a' })).status, 200);
  const limited = await gw.request({ path: '/limited/a' });
  t.equal(limited.status, 429);
  assertCommon(t, limited.headers, 'gateway 429');
  t.equal(limited.headers['cross-origin-resource-policy'], 'same-origin', 'gateway 429: CORP');
  t.equal(up.seen.length, seenBefore + 1, 'only the first /limited request reached the upstream');
  t.same(up.seen.map((r) => r.url), ['/app/page', '/limited/a']);
});

t.test('upstream: keep lets the app win, override replaces the app value; routes override the top level', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, {
      'content-type': 'text/html',
      'X-Frame-Options': 'SAMEORIGIN',
      'referrer-policy': 'unsafe-url',
      'content-security-policy': "default-src https://cdn.example",
      'cross-origin-opener-policy': 'same-origin-allow-popups',
      // An app (or an attacker who controls one response) trying to switch HSTS off for the host.
      'strict-transport-security': 'max-age=0',
    });
    res.end('ok');
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
headers:
  content_security_policy: "default-src 'none'"
sites:
  - id: keep
    hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /, access: public }
      - path: /embed/
        access: public
        headers:
          upstream: override
          frame_options: SAMEORIGIN
          csp_report_only: true
          content_security_policy:
            default-src: "'self'"
            img-src: ["'self'", "data:"]
      - path: /embed/admin/
        headers: { frame_options: SAMEORIGIN, csp_report_only: true, content_security_policy: "default-src 'self'" }
  - id: override
    hosts: [strict.test]
    upstream: ${up.origin}
    headers: { upstream: override }
    routes: [{ path: /, access: public }]
`);
  const kept = await gw.request({ path: '/' });
  t.equal(kept.status, 200);
  t.equal(kept.headers['x-frame-options'], 'SAMEORIGIN', 'keep: the app X-Frame-Options wins');
  t.equal(kept.headers['referrer-policy'], 'unsafe-url', 'keep: the app Referrer-Policy wins');
  t.equal(kept.headers['content-security-policy'], 'default-src https://cdn.example', 'keep: the app CSP wins');
  t.equal(kept.headers['cross-origin-opener-policy'], 'same-origin-allow-popups', 'keep: the app COOP wins');
  t.equal(kept.headers['x-content-type-options'], 'nosniff', 'keep: headers the app did not set are still added');
  t.equal(kept.headers['strict-transport-security'], HSTS, 'keep: the app cannot weaken HSTS (its max-age=0 is replaced)');

  const over = await gw.request({ path: '/', host: 'strict.test' });
  t.equal(over.status, 200);
  t.equal(over.headers['x-frame-options'], 'DENY', 'override: the gateway X-Frame-Options replaces the app one');
  t.equal(over.headers['referrer-policy'], 'strict-origin-when-cross-origin');
  t.equal(over.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'");
  t.equal(over.headers['cross-origin-opener-policy'], 'same-origin');
  t.notMatch(JSON.stringify(over.headers), /cdn\.example|unsafe-url|allow-popups/, 'no trace of the app values (no duplicates)');

  const embed = await gw.request({ path: '/embed/x' });
  t.equal(embed.status, 200);
  t.equal(embed.headers['x-frame-options'], 'SAMEORIGIN', 'route frame_options');
  t.equal(
    embed.headers['content-security-policy-report-only'],
    "default-src 'self';img-src 'self' data:;frame-ancestors 'self'",
    'route CSP from a directives map, report-only, with frame-ancestors from SAMEORIGIN',
  );
  // The app's own enforcing CSP is a different header from the report-only one: it stays.
  t.equal(embed.headers['content-security-policy'], 'default-src https://cdn.example', 'report-only does not replace the app enforcing CSP');
  t.equal(embed.headers['referrer-policy'], 'strict-origin-when-cross-origin', 'route override: the app value replaced');

  // A route override also applies to the gateway's own answers on that route.
  const seen = up.seen.length;
  const denied = await gw.request({ path: '/embed/admin/x' });
  t.equal(denied.status, 401);
  t.equal(up.seen.length, seen, 'the 401 never reached the upstream');
  t.equal(denied.headers['x-frame-options'], 'SAMEORIGIN', 'route frame_options on the gateway 401');
  t.equal(denied.headers['content-security-policy-report-only'], "default-src 'self';frame-ancestors 'self'", 'route CSP on the gateway 401');
  t.notOk(denied.headers['content-security-policy'], 'no enforcing CSP on it');
  t.equal(denied.headers['cross-origin-resource-policy'], 'same-origin');
});

t.test('a CSP that already names frame-ancestors is not given a second one; no CSP by default', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /, access: public }
      - path: /own/
        access: public
        headers: { content_security_policy: "default-src 'self'; frame-ancestors https://partner.example" }
`);
  const plain = await gw.request({ path: '/' });
  t.notOk(plain.headers['content-security-policy'], 'CSP is off by default');
  t.equal(plain.headers['x-frame-options'], 'DENY', 'frame options on by default');
  const own = await gw.request({ path: '/own/' });
  t.equal(own.headers['content-security-policy'], "default-src 'self';frame-ancestors https://partner.example");
});

t.test('HTTP/2 responses carry the same headers; the plain-HTTP redirect carries no HSTS', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /app/, access: public }, { path: /private/ }]
`);
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  t.teardown(() => session.close());
  const get = (path: string): Promise<http2.IncomingHttpHeaders> =>
    new Promise((resolve, reject) => {
      const req = session.request({ ':path': path, ':authority': 'app.test' });
      req.on('response', resolve);
      req.on('error', reject);
      req.resume();
      req.end();
    });
  for (const [path, status] of [['/app/x', 200], ['/private/x', 401]] as const) {
    const h = await get(path);
    t.equal(h[':status'], status);
    t.equal(h['x-content-type-options'], 'nosniff', `h2 ${status}: nosniff`);
    t.equal(h['x-frame-options'], 'DENY', `h2 ${status}: frame options`);
    t.equal(h['strict-transport-security'], HSTS, `h2 ${status}: HSTS`);
  }
  // RFC 6797 §7.2: an HSTS host MUST NOT include the header over non-secure transport.
  const redirect = await httpRequest(gw.httpPort!, { path: '/app/x' });
  t.equal(redirect.status, 301);
  t.notOk(redirect.headers['strict-transport-security'], 'no HSTS over plain HTTP');
  t.equal(redirect.headers['x-content-type-options'], 'nosniff');
});
