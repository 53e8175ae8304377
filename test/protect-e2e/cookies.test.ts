// Set-Cookie hardening through the real gateway, on tricky values sent by a real upstream, read
// back as the header lines a browser receives.
import t from 'tap';
import { LOOPBACK_LISTEN, startGateway, startUpstream } from '../helpers/gateway.js';
import { all } from './_helpers.js';

// [what the app sends, what the browser must get] with cookies: secure, http_only (except
// csrftoken), same_site Lax — the defaults plus one exception.
const CASES: Array<[string, string, string]> = [
  ['plain', 'sid=abc123; Path=/', 'sid=abc123; Path=/; Secure; HttpOnly; SameSite=Lax'],
  ['quoted value with = and space', 'pref="a=b c"; Path=/', 'pref="a=b c"; Path=/; Secure; HttpOnly; SameSite=Lax'],
  [
    'Expires with a comma stays one cookie',
    'exp=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/',
    'exp=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/; Secure; HttpOnly; SameSite=Lax',
  ],
  ['__Host- prefix keeps Secure, Path=/ and no Domain', '__Host-session=xyz; Path=/; Secure', '__Host-session=xyz; Path=/; Secure; HttpOnly; SameSite=Lax'],
  ['__Secure- prefix', '__Secure-id=1; Secure; Domain=app.test; Path=/', '__Secure-id=1; Secure; Domain=app.test; Path=/; HttpOnly; SameSite=Lax'],
  ['http_only_except: readable by script', 'csrftoken=tok123; Path=/', 'csrftoken=tok123; Path=/; Secure; SameSite=Lax'],
  ['http_only_except is case-sensitive', 'CSRFTOKEN=tok; Path=/', 'CSRFTOKEN=tok; Path=/; Secure; HttpOnly; SameSite=Lax'],
  ['app SameSite=Strict kept, none added', 'strict=1; SameSite=Strict', 'strict=1; SameSite=Strict; Secure; HttpOnly'],
  ['app SameSite=None gets Secure, no second SameSite', 'cross=1; samesite=none', 'cross=1; samesite=none; Secure; HttpOnly'],
  ['invalid SameSite counts as absent', 'odd=1; SameSite=bogus', 'odd=1; SameSite=bogus; Secure; HttpOnly; SameSite=Lax'],
  ['already hardened: byte-for-byte', 'done=1; secure; httponly; samesite=lax', 'done=1; secure; httponly; samesite=lax'],
  ['trailing separator', 'trail=1; ', 'trail=1; Secure; HttpOnly; SameSite=Lax'],
  ['Max-Age=0 deletion', 'sid=; Max-Age=0; Path=/', 'sid=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax'],
];

t.test('every Set-Cookie line of a real upstream response is hardened, none lost, split or merged', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.setHeader('set-cookie', CASES.map(([, sent]) => sent));
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
cookies: { http_only_except: [csrftoken] }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  const res = await gw.request({ path: '/' });
  t.equal(res.status, 200);
  const got = all(res.headers['set-cookie']);
  t.equal(got.length, CASES.length, 'one Set-Cookie line per cookie, in order');
  CASES.forEach(([what, , expected], i) => t.equal(got[i], expected, what));
  for (const line of got.filter((l) => /^__Host-/.test(l))) {
    t.match(line, /; Secure(;|$)/i, '__Host- cookie keeps Secure');
    t.notMatch(line, /domain=/i, '__Host- cookie gets no Domain');
  }
});

t.test('a single Set-Cookie (not an array) and per-route cookie rules', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    // The app itself asks for SameSite=None under /appnone/.
    const cookie = req.url!.startsWith('/appnone/') ? 'x=1; SameSite=None' : 'one=1; Path=/';
    res.writeHead(200, { 'content-type': 'text/plain', 'set-cookie': cookie });
    res.end('ok');
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    cookies: { same_site: Strict }
    routes:
      - { path: /, access: public }
      - { path: /legacy/, access: public, cookies: { same_site: null, http_only: false, secure: false } }
      - { path: /embed/, access: public, cookies: { same_site: None } }
      - { path: /appnone/, access: public, cookies: { secure: false, http_only: false } }
`);
  const site = await gw.request({ path: '/' });
  t.same(all(site.headers['set-cookie']), ['one=1; Path=/; Secure; HttpOnly; SameSite=Strict'], 'site-level same_site');
  const legacy = await gw.request({ path: '/legacy/x' });
  t.same(all(legacy.headers['set-cookie']), ['one=1; Path=/'], 'route with hardening off: untouched');
  const embed = await gw.request({ path: '/embed/x' });
  t.same(all(embed.headers['set-cookie']), ['one=1; Path=/; Secure; HttpOnly; SameSite=None'], 'route same_site: None');
  // SameSite=None without Secure is dropped by browsers (RFC 6265bis §5.7), so Secure is added
  // over HTTPS even with secure: false rather than letting the cookie vanish.
  const appNone = await gw.request({ path: '/appnone/x' });
  t.same(all(appNone.headers['set-cookie']), ['x=1; SameSite=None; Secure'], 'app SameSite=None gets Secure even with secure: false');
});

t.test('cookies on the gateway own answers are not invented, and a 401 passes no upstream cookie', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'set-cookie': 'sid=should-not-leak' });
    res.end('ok');
  });
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /private/ }]
`);
  const res = await gw.request({ path: '/private/x' });
  t.equal(res.status, 401);
  t.notOk(res.headers['set-cookie']);
  t.equal(up.seen.length, 0);
});
