// Route-level protections (csrf, rate_limit, max_body_size, headers, cookies) under path tricks.
//
// The route table matches a path as broadly as any upstream reads it (case, `;` parameters,
// trailing dots), and when the readings lead to different routes it returns the strictest one
// (src/policy/routes.ts, `strictest`). The README promises that case and `;`-parameter tricks
// "cannot reach a route the policy did not check". A case-sensitive upstream reads `/account/HOOK`
// as a resource of `/account`, not of `/account/hook` (the reasoning of test/policy/routes.test.ts,
// "a case/parameter/encoding variant never reaches a less strict nested route"). The attacks
// below target the protections a nested route relaxes (csrf off, no rate limit, a larger body,
// framing allowed, cookie hardening off) while its access is the same as its parent's: the table
// weighs them too (src/policy/protection.ts). They use a real gateway and a real upstream on
// loopback; the first three failed before that order existed.
import t from 'tap';
import { accessRoute, LOOPBACK_LISTEN, startGateway, startUpstream, type RunningGateway } from '../helpers/gateway.js';
import { all } from './_helpers.js';

const FORM = 'application/x-www-form-urlencoded';
/** A forged cross-site form POST riding the victim's session cookie (what a browser sends). */
const FORGED = { cookie: 'sid=victim', 'sec-fetch-site': 'cross-site', origin: 'https://evil.test', 'content-type': FORM };

function post(gw: RunningGateway, path: string, headers: Record<string, string>, body = 'amount=1000&to=mallory'): ReturnType<RunningGateway['request']> {
  return gw.request({ method: 'POST', path, headers: { accept: 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers }, body });
}

const routeOf = accessRoute;

// The session (parent) route keeps CSRF on; a webhook receiver nested under it turns it off, as
// the csrf docs suggest for machine-to-machine endpoints.
const CSRF_SITE = (upstream: string): string => `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes:
      - { id: account, path: /account, access: public }
      - { id: hook, path: /account/hook, access: public, csrf: { enabled: false } }
`;

t.test('a forged cross-site POST spelled into a csrf-disabled nested route by case, `;` or a trailing dot is refused: a case-sensitive app serves it under the CSRF-protected parent', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, CSRF_SITE(up.origin));

  // Control: the exact spelling is the webhook route, whose CSRF check is off by configuration.
  const control = await post(gw, '/account/hook', FORGED);
  t.equal(control.status, 200, 'control: /account/hook itself is csrf-exempt as configured');
  t.equal(routeOf(gw, control.headers['x-request-id']), 'hook');
  // Control: a sibling resource of the parent is protected.
  t.equal((await post(gw, '/account/delete', FORGED)).status, 403, 'control: /account/delete is protected');

  // Each path below is read by a case-sensitive upstream without `;` parameters (Express, Flask,
  // Go's ServeMux, Rails…) as a resource of /account (`/account/:item`, `/account/:item/delete`),
  // and by a case-insensitive one or Tomcat/IIS as /account/hook. The gateway cannot know which:
  // the parent's CSRF check (the stricter reading) must apply.
  const tricks = ['/account/HOOK', '/account/Hook/delete', '/account/hook;jsessionid=x', '/account/hook.'];
  for (const path of tricks) {
    const res = await post(gw, path, FORGED);
    t.not(res.status, 200, `${path}: not forwarded as a webhook (got ${res.status}, route ${String(routeOf(gw, res.headers['x-request-id']))})`);
    t.notOk(up.seen.some((s) => s.url === path), `${path}: the forged POST never reaches the app`);
  }
});

t.test('a rate limit and a body limit on a route hold for a nested unlimited route spelled in another case', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    max_body_size: 1kb
    routes:
      - { id: api, path: /api, access: public, rate_limit: { max: 2, window: 1m } }
      - { id: import, path: /api/import, access: public, max_body_size: 1mb }
`);
  // Control: the parent route is limited.
  const limited: number[] = [];
  for (let i = 0; i < 4; i++) limited.push((await post(gw, `/api/orders/${i}`, {}, 'x=1')).status);
  t.same(limited, [200, 200, 429, 429], 'control: /api/* gets 2 requests a minute');

  // A case-sensitive app reads /api/IMPORT/... as /api/:collection/...: a resource of /api.
  const before = up.seen.length;
  const dodged: number[] = [];
  for (let i = 0; i < 5; i++) dodged.push((await post(gw, `/api/IMPORT/${i}`, {}, 'x=1')).status);
  t.equal(dodged.filter((s) => s === 200).length, 0, `the /api limit (used up) holds for /api/IMPORT/*: got ${dodged.join(',')}`);
  t.equal(up.seen.length - before, 0, 'none of them reaches the app once /api\'s budget is used');

  // The site's 1kb body limit, which /api inherits, against an 8kb body through the case trick.
  const big = 'x'.repeat(8 * 1024);
  t.equal((await post(gw, '/api/other', {}, big)).status, 413, 'control: an 8kb body for /api/other gets 413');
  const res = await post(gw, '/api/Import', {}, big);
  t.not(res.status, 200, `an 8kb body for /api/Import is refused like one for /api/anything (got ${res.status})`);
  t.notOk(up.seen.some((s) => s.body.length === big.length), 'the app never receives the 8kb body');
});

t.test('framing and cookie hardening a nested route turns off do not leak onto the parent\'s resources spelled in another case', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html', 'set-cookie': 'sid=s3cret; Path=/' });
    res.end('<form method=post action=/account/delete><button>Delete my account</button></form>');
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
headers: { content_security_policy: "default-src 'self'", frame_options: DENY }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: account, path: /account, access: public }
      - id: widget
        path: /account/widget
        access: public
        headers: { frame_options: null, content_security_policy: null }
        cookies: { secure: false, http_only: false, same_site: null }
`);
  // Control: the parent's pages cannot be framed and its cookie is hardened.
  const page = await gw.request({ path: '/account/settings' });
  t.equal(page.headers['x-frame-options'], 'DENY', 'control: /account/settings is not frameable');
  t.same(all(page.headers['set-cookie']), ['sid=s3cret; Path=/; Secure; HttpOnly; SameSite=Lax'], 'control: its cookie is hardened');
  // Control: the widget route is frameable as configured.
  t.notOk((await gw.request({ path: '/account/widget' })).headers['x-frame-options'], 'control: /account/widget is frameable as configured');

  // A case-sensitive app serves /account/WIDGET/delete as /account/:section/delete: the parent's
  // page, which must not be frameable (clickjacking) and whose session cookie must stay hardened.
  for (const path of ['/account/WIDGET/delete', '/account/widget;x']) {
    const res = await gw.request({ path });
    t.equal(res.headers['x-frame-options'], 'DENY', `${path}: X-Frame-Options DENY (got ${String(res.headers['x-frame-options'])}, status ${res.status})`);
    t.match(String(res.headers['content-security-policy']), /frame-ancestors 'none'/, `${path}: CSP frame-ancestors 'none'`);
    for (const c of all(res.headers['set-cookie'])) t.match(c, /; Secure; HttpOnly; SameSite=Lax$/, `${path}: session cookie hardened: ${c}`);
  }
});

t.test('dot-segment, encoded-dot and separator tricks out of a csrf-disabled route are checked under the route they land on; nothing forged is forwarded', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, CSRF_SITE(up.origin));
  const tricks: [string, number[]][] = [
    ['/account/hook/../delete', [403]],
    ['/account/hook/%2e%2e/delete', [403]],
    ['/account/hook/.%2E/delete', [403]],
    ['/account/hook/./../delete', [403]],
    ['/account/hook//../delete', [403]],
    ['/account/hook/..;/delete', [400]],
    ['/account/hook%2f..%2fdelete', [400]],
    ['/account/hook/..%5cdelete', [400]],
    ['/account/hook/%252e%252e/delete', [400]],
    ['/account/hook/%u002e%u002e/delete', [400]],
    ['/account/hook/%EF%BC%8E%EF%BC%8E/delete', [400]],
  ];
  for (const [path, expected] of tricks) {
    const res = await post(gw, path, FORGED);
    t.ok(expected.includes(res.status), `${path}: ${expected.join('/')} (got ${res.status})`);
  }
  t.same(up.seen.map((s) => s.url), [], 'no forged request reached the app');
});

t.test('the other way round: a CSRF-protected route nested under an exempt one keeps its check whatever the spelling', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: api, path: /, access: public, csrf: { enabled: false } }
      - { id: account, path: /account, access: public }
`);
  t.equal((await post(gw, '/orders', FORGED)).status, 200, 'control: the exempt parent takes the POST');
  for (const path of ['/account', '/ACCOUNT/delete', '/Account;x/delete', '/account./delete', '/%61ccount/delete']) {
    const res = await post(gw, path, FORGED);
    t.equal(res.status, 403, `${path}: refused`);
    t.equal(routeOf(gw, res.headers['x-request-id']), 'account', `${path}: checked under /account`);
  }
  // Control: a look-alike no upstream reads as /account (ö is not o, even under NFKC) is the parent's.
  t.equal((await post(gw, '/acc%C3%B6unt/delete', FORGED)).status, 200, 'control: /accöunt is not /account');
  t.same(up.seen.map((s) => s.url), ['/orders', '/acc%C3%B6unt/delete'], 'only requests no upstream reads as /account reached the app');
});
