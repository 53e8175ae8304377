// CSRF with a real browser: Debian Chromium (through playwright-core) holds a session cookie for
// the gateway site; a page on another origin auto-submits a form to it. The cookie is
// `SameSite=None; Secure`, so Chromium really sends it on the cross-site POST and the gateway's
// check (not the browser's SameSite default) is what must stop the request.
import t from 'tap';
import http from 'node:http';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LOOPBACK_LISTEN, startGateway, startUpstream } from '../helpers/gateway.js';
import { securityEvents } from './_helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

const html = (body: string): string => `<!doctype html><html><head><meta charset="utf-8"><title>t</title></head><body>${body}</body></html>`;

t.test('a cross-site auto-submitted form is refused; a same-origin form passes', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install chromium)` }, async (t) => {
  const { chromium } = await import('playwright-core');

  const up = await startUpstream(t, (req, res) => {
    if (req.method === 'GET' && req.url === '/login') {
      res.writeHead(200, {
        'content-type': 'text/html',
        // The app forgot HttpOnly (and Secure on the __Host- cookie): the gateway adds them.
        'set-cookie': ['sid=s3cret; Path=/; SameSite=None; Secure', '__Host-pref=dark; Path=/'],
      });
      res.end(html('<p id="who">logged in</p>'));
      return;
    }
    if (req.method === 'GET' && req.url === '/form') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(html('<form id="f" method="POST" action="/transfer"><input name="amount" value="5"><button id="go">send</button></form>'));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(html(`<p id="done">${req.method} ${req.url} done</p>`));
  });

  const gw = await startGateway(t, `${LOOPBACK_LISTEN}
cookies: { same_site: null }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: web, path: /, access: public }
      - { id: hook, path: /hook/, access: public, csrf: { enabled: false } }
`);
  const site = `https://app.test:${gw.port}`;

  // The attacker: another origin (plain HTTP on another port) whose page auto-submits a form.
  const attacker = http.createServer((req, res) => {
    const target = req.url === '/control.html' ? `${site}/hook/transfer` : `${site}/transfer`;
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(html(`<form method="POST" action="${target}"><input name="amount" value="1000000"><input name="to" value="mallory"></form><script>document.forms[0].submit()</script>`));
  });
  await new Promise<void>((r) => attacker.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { attacker.closeAllConnections(); attacker.close(() => r()); }));
  const attackerOrigin = `http://127.0.0.1:${(attacker.address() as { port: number }).port}`;

  const profile = mkdtempSync(join(tmpdir(), 'pe2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // The gateway's certificate comes from its development CA, which this profile does not trust.
    ignoreHTTPSErrors: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      // app.test → the gateway on loopback, without touching the system resolver.
      '--host-resolver-rules=MAP app.test 127.0.0.1',
    ],
  });
  t.teardown(async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  });
  const page = context.pages()[0] ?? (await context.newPage());

  // 1. Same-origin visit: the browser gets the session cookie through the gateway.
  const login = await page.goto(`${site}/login`);
  t.equal(login?.status(), 200);
  const cookies = await context.cookies(site);
  const sid = cookies.find((c) => c.name === 'sid');
  t.ok(sid, 'the browser stored the session cookie');
  t.match(sid, { value: 's3cret', secure: true, httpOnly: true, sameSite: 'None' }, 'HttpOnly added by the gateway; SameSite=None kept');
  t.match(cookies.find((c) => c.name === '__Host-pref'), { secure: true, path: '/' }, 'the __Host- cookie is accepted: the gateway added the Secure it needs');

  // 2. Control: the same attack against the route with CSRF off reaches the upstream WITH the
  //    cookie, so the browser does send it cross-site and the refusal below is the gateway's.
  const controlResp = page.waitForResponse((r) => r.url() === `${site}/hook/transfer`);
  await page.goto(`${attackerOrigin}/control.html`);
  t.equal((await controlResp).status(), 200, 'control: csrf disabled → the forged POST passes');
  const control = up.seen.find((r) => r.method === 'POST' && r.url === '/hook/transfer');
  t.ok(control, 'control: the upstream saw the forged POST');
  t.match(control?.headers.cookie, /sid=s3cret/, 'control: Chromium sent the SameSite=None cookie cross-site');
  t.equal(control?.headers['sec-fetch-site'], 'cross-site');

  // 3. The attack: auto-submitted cross-site form to the protected route.
  const attackResp = page.waitForResponse((r) => r.url() === `${site}/transfer`);
  await page.goto(`${attackerOrigin}/attacker.html`);
  const refused = await attackResp;
  t.equal(refused.status(), 403, 'the cross-site form POST is refused');
  t.notOk(up.seen.some((r) => r.url === '/transfer'), 'the upstream never saw the forged POST');
  const events = securityEvents(gw.logs, 'csrf_rejected');
  t.equal(events.length, 1, 'one csrf_rejected event');
  t.match(events[0], { route: 'web', reason: 'cross_site', origin: attackerOrigin, method: 'POST', ip: '127.0.0.1' });
  t.equal(events[0]?.request_id, await refused.headerValue('x-request-id'), 'the event names the refused request');

  // 4. Same-origin form on a page served by the gateway site: allowed, with the cookie.
  await page.goto(`${site}/form`);
  const okResp = page.waitForResponse((r) => r.url() === `${site}/transfer`);
  await page.click('#go');
  t.equal((await okResp).status(), 200, 'the same-origin form POST passes');
  const legit = up.seen.find((r) => r.method === 'POST' && r.url === '/transfer');
  t.ok(legit, 'the upstream saw the same-origin POST');
  t.equal(legit?.body.toString(), 'amount=5');
  t.match(legit?.headers.cookie, /sid=s3cret/);
  t.equal(legit?.headers['sec-fetch-site'], 'same-origin');
  t.equal(securityEvents(gw.logs, 'csrf_rejected').length, 1, 'no new refusal');
});
