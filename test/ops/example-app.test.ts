/**
 * The Flask example app under Debian's python3 + python3-flask, as shipped (no virtualenv):
 * ProxyFix must turn the gateway's X-Forwarded-* into the right scheme/host/remote_addr.
 */
import t from 'tap';
import { FLASK_SKIP as SKIP, startExampleApp } from './tools.js';

t.test('the example app behind a simulated gateway hop', { skip: SKIP }, async (t) => {
  const base = await startExampleApp(t, { SESSION_COOKIE_SECURE: '1' });
  t.match(base, /^http:\/\/127\.0\.0\.1:/, 'binds loopback by default');

  const health = await fetch(`${base}/health`);
  t.equal(health.status, 200);
  t.same(await health.json(), { status: 'ok' });

  const headers = {
    'X-Forwarded-For': '203.0.113.50',
    'X-Forwarded-Proto': 'https',
    'X-Forwarded-Host': 'app.example.com',
    'X-Forwarded-Port': '443',
    'X-Request-Id': 'req-123',
    'X-Auth-User': 'alice',
    'X-Auth-Email': 'alice@example.com',
    'X-Auth-Roles': 'admin,dev',
    Authorization: 'Bearer eyJ.secret.token',
  };
  const who = await fetch(`${base}/api/whoami`, { headers });
  t.equal(who.status, 200);
  const body = (await who.json()) as { scheme: string; remote_addr: string; host: string; user: string; email: string; roles: string[]; headers: Record<string, string> };
  t.equal(body.scheme, 'https', 'ProxyFix x_proto');
  t.equal(body.remote_addr, '203.0.113.50', 'ProxyFix x_for');
  t.equal(body.host, 'app.example.com', 'ProxyFix x_host (+ x_port 443 dropped as default)');
  t.equal(body.user, 'alice');
  t.equal(body.email, 'alice@example.com');
  t.same(body.roles, ['admin', 'dev']);
  t.equal(body.headers['X-Request-Id'], 'req-123');
  t.equal(body.headers.Authorization, '[present]', 'credentials are not echoed back');
  t.notMatch(JSON.stringify(body), /secret\.token/);
});

t.test('ProxyFix trusts only the last hop: a client-forged X-Forwarded-For prefix is ignored', { skip: SKIP }, async (t) => {
  const base = await startExampleApp(t, { SESSION_COOKIE_SECURE: '1' });
  const who = await fetch(`${base}/api/whoami`, { headers: { 'X-Forwarded-For': '10.0.0.1, 198.51.100.7', 'X-Forwarded-Proto': 'https' } });
  const body = (await who.json()) as { remote_addr: string; scheme: string; user: string | null; roles: string[] };
  t.equal(body.remote_addr, '198.51.100.7', 'the address the gateway appended, not the forged one');
  t.equal(body.user, null, 'no identity without the gateway headers');
  t.same(body.roles, []);
});

t.test('/admin needs the admin role; the form POST sets a hardened session cookie', { skip: SKIP }, async (t) => {
  const base = await startExampleApp(t, { SESSION_COOKIE_SECURE: '1', FLASK_SECRET_KEY: 'test-only-key' });
  t.equal((await fetch(`${base}/admin`, { headers: { 'X-Auth-User': 'bob', 'X-Auth-Roles': 'dev' } })).status, 403);
  t.equal((await fetch(`${base}/admin`)).status, 403);
  const ok = await fetch(`${base}/admin`, { headers: { 'X-Auth-User': 'alice', 'X-Auth-Roles': 'dev, admin' } });
  t.equal(ok.status, 200);
  t.match(await ok.text(), /admin/);

  const post = await fetch(`${base}/preferences`, {
    method: 'POST',
    body: new URLSearchParams({ colour: 'blue' }),
    headers: { 'X-Forwarded-Proto': 'https', 'X-Forwarded-For': '203.0.113.1' },
    redirect: 'manual',
  });
  t.equal(post.status, 303);
  const cookie = post.headers.get('set-cookie') ?? '';
  t.match(cookie, /^session=/);
  t.match(cookie, /HttpOnly/i);
  t.match(cookie, /Secure/i);
  t.match(cookie, /SameSite=Lax/i);
  const page = await fetch(`${base}/`, { headers: { Cookie: cookie.split(';')[0]!, 'X-Auth-User': '<script>alert(1)</script>' } });
  const html = await page.text();
  t.match(html, /blue/, 'the session round-trips');
  t.notMatch(html, /<script>alert/, 'identity headers are HTML-escaped');
});

t.test('HOST changes the bind address (another loopback address here; 0.0.0.0 in Docker)', { skip: SKIP }, async (t) => {
  const base = await startExampleApp(t, { SESSION_COOKIE_SECURE: '1', HOST: '127.0.0.2' });
  t.match(base, /^http:\/\/127\.0\.0\.2:/);
  t.equal((await fetch(`${base}/health`)).status, 200);
});
