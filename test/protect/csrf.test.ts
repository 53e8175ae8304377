import t from 'tap';
import { checkCsrf, normalizeOrigin } from '../../src/protect/index.js';
import type { CsrfRequest, CsrfRules } from '../../src/protect/index.js';

const rules: CsrfRules = { enabled: true, trustedOrigins: ['https://Portal.Example:443'] };
const own = 'https://app.example';
const post = (extra: Partial<CsrfRequest>): CsrfRequest => ({ method: 'POST', hasCookie: true, ownOrigin: own, ...extra });
const ok = { allow: true };
const no = (reason: string) => ({ allow: false, reason });

t.test('cross-site form POST carrying a cookie is refused', async (t) => {
  t.same(checkCsrf(post({ secFetchSite: 'cross-site', origin: 'https://evil.example' }), rules), no('cross_site'));
  t.same(checkCsrf(post({ origin: 'https://evil.example' }), rules), no('origin_mismatch'), 'old browser: Origin only');
  for (const method of ['PUT', 'PATCH', 'DELETE', 'post', 'PROPFIND']) {
    t.same(checkCsrf(post({ method, secFetchSite: 'cross-site' }), rules), no('cross_site'), `${method} is unsafe`);
  }
});

t.test('same-origin requests are allowed', async (t) => {
  t.same(checkCsrf(post({ secFetchSite: 'same-origin', origin: own }), rules), ok);
  t.same(checkCsrf(post({ secFetchSite: 'none' }), rules), ok, 'user-initiated navigation');
  t.same(checkCsrf(post({ origin: own }), rules), ok, 'old browser, own Origin');
  t.same(checkCsrf(post({ secFetchSite: ' Same-Origin ' }), rules), ok, 'token compared case-insensitively');
});

t.test('Origin: null is refused', async (t) => {
  t.same(checkCsrf(post({ origin: 'null' }), rules), no('null_origin'));
  t.same(checkCsrf(post({ origin: 'null', secFetchSite: 'cross-site' }), rules), no('cross_site'));
});

t.test('Sec-Fetch-Site: same-site is refused unless the Origin is trusted', async (t) => {
  t.same(checkCsrf(post({ secFetchSite: 'same-site', origin: 'https://blog.app.example' }), rules), no('cross_site'));
  t.same(checkCsrf(post({ secFetchSite: 'same-site', origin: 'https://portal.example' }), rules), ok);
  t.same(checkCsrf(post({ secFetchSite: 'cross-site', origin: 'https://PORTAL.example' }), rules), ok, 'trusted cross-site');
  t.same(checkCsrf(post({ secFetchSite: 'cross-site' }), rules), no('cross_site'), 'no Origin, nothing to trust');
  t.same(checkCsrf(post({ secFetchSite: 'bogus', origin: own }), rules), no('cross_site'), 'unknown Sec-Fetch-Site value');
});

t.test('Sec-Fetch-Site wins over an Origin that looks like ours', async (t) => {
  t.same(checkCsrf(post({ secFetchSite: 'cross-site', origin: own }), rules), no('cross_site'));
});

t.test('requests without cookies (bearer-only APIs) are not subject to the check', async (t) => {
  t.same(checkCsrf(post({ hasCookie: false, secFetchSite: 'cross-site', origin: 'https://evil.example' }), rules), ok);
});

t.test('GET, HEAD and OPTIONS are unaffected', async (t) => {
  for (const method of ['GET', 'HEAD', 'OPTIONS']) {
    t.same(checkCsrf(post({ method, secFetchSite: 'cross-site', origin: 'null' }), rules), ok, method);
  }
});

t.test('no Origin and no Sec-Fetch-Site: non-browser client, allowed', async (t) => {
  t.same(checkCsrf(post({}), rules), ok);
  t.same(checkCsrf(post({ origin: '', secFetchSite: '' }), rules), ok);
});

t.test('port, scheme and case differences in Origin', async (t) => {
  t.same(checkCsrf(post({ origin: 'HTTPS://APP.EXAMPLE' }), rules), ok, 'case');
  t.same(checkCsrf(post({ origin: 'https://app.example:443' }), rules), ok, 'default port');
  t.same(checkCsrf(post({ origin: 'https://app.example:8443' }), rules), no('origin_mismatch'), 'other port');
  t.same(checkCsrf(post({ origin: 'http://app.example' }), rules), no('origin_mismatch'), 'other scheme');
  t.same(checkCsrf(post({ origin: 'https://app.example.evil.example' }), rules), no('origin_mismatch'), 'suffix trick');
  t.same(checkCsrf(post({ origin: 'https://evil.example/https://app.example' }), rules), no('origin_mismatch'), 'path trick');
  t.same(checkCsrf(post({ origin: 'https://app.example@evil.example' }), rules), no('origin_mismatch'), 'userinfo trick');
  t.same(checkCsrf({ ...post({ origin: 'http://localhost:8080' }), ownOrigin: 'http://LOCALHOST:8080' }, rules), ok, 'non-default port kept');
});

t.test('trusted origins are exact', async (t) => {
  t.same(checkCsrf(post({ origin: 'https://portal.example' }), rules), ok);
  t.same(checkCsrf(post({ origin: 'https://sub.portal.example' }), rules), no('origin_mismatch'));
  t.same(checkCsrf(post({ origin: 'http://portal.example' }), rules), no('origin_mismatch'));
});

t.test('disabled: everything passes', async (t) => {
  t.same(checkCsrf(post({ secFetchSite: 'cross-site', origin: 'null' }), { enabled: false, trustedOrigins: [] }), ok);
});

t.test('normalizeOrigin', async (t) => {
  t.equal(normalizeOrigin('HTTPS://Example.COM:443'), 'https://example.com');
  t.equal(normalizeOrigin('http://example.com:80'), 'http://example.com');
  t.equal(normalizeOrigin('http://example.com:8080'), 'http://example.com:8080');
  t.equal(normalizeOrigin('https://bücher.example'), 'https://xn--bcher-kva.example');
  t.equal(normalizeOrigin('https://[::1]:8443'), 'https://[::1]:8443');
  for (const bad of ['null', '', 'example.com', 'ftp://example.com', 'https://example.com/path', 'https://u:p@example.com', 'https://example.com?q', 'https://example.com#f', 'javascript:alert(1)']) {
    t.equal(normalizeOrigin(bad), null, JSON.stringify(bad));
  }
});

t.test('a WebSocket handshake (GET + upgrade) carrying a cookie is checked like an unsafe method', async (t) => {
  const ws = (extra: Partial<CsrfRequest>): CsrfRequest => post({ method: 'GET', upgrade: true, ...extra });
  t.same(checkCsrf(ws({ secFetchSite: 'cross-site', origin: 'https://evil.example' }), rules), no('cross_site'), 'cross-site WebSocket hijacking');
  t.same(checkCsrf(ws({ origin: 'https://evil.example' }), rules), no('origin_mismatch'));
  t.same(checkCsrf(ws({ secFetchSite: 'same-origin', origin: own }), rules), ok);
  t.same(checkCsrf(ws({ origin: 'https://portal.example' }), rules), ok, 'trusted origin');
  t.same(checkCsrf(ws({ hasCookie: false, origin: 'https://evil.example' }), rules), ok, 'no cookie');
  t.same(checkCsrf(post({ method: 'GET', secFetchSite: 'cross-site', origin: 'https://evil.example' }), rules), ok, 'a plain GET is still never refused');
});
