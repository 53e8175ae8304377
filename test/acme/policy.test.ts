// Pure decisions: renewal time, backoff, Retry-After, RFC 9773 renewalInfo, names, HTTP-01 paths.
import t from 'tap';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import {
  MAX_RETRY_AFTER,
  ariCertId,
  backoffDelay,
  decideRenewal,
  derIntegerContent,
  directoryFolder,
  jitter,
  parseRenewalInfo,
  parseRetryAfter,
  pickInWindow,
  renewAt,
  safeName,
  sameHosts,
} from '../../src/acme/policy.js';
import { Http01Challenges, matchChallengePath } from '../../src/acme/index.js';

const DAY = 86_400_000;

t.test('renewAt: a third of the lifetime by default, configured margin clamped to half', async (t) => {
  t.equal(renewAt(0, 90 * DAY, null), 60 * DAY);
  t.equal(renewAt(0, 90 * DAY, 30 * DAY), 60 * DAY);
  t.equal(renewAt(0, 90 * DAY, 10 * DAY), 80 * DAY);
  // 6-day certificate with a 30-day margin: renew at half-life, not at every check
  t.equal(renewAt(0, 6 * DAY, 30 * DAY), 3 * DAY);
  t.equal(renewAt(10, 10, null), 10, 'degenerate lifetime');
});

t.test('decideRenewal', async (t) => {
  const base = { notBefore: 0, notAfter: 90 * DAY, renewBefore: null, ariAt: null };
  t.same(decideRenewal({ ...base, now: 59 * DAY }), { due: false, at: 60 * DAY });
  t.same(decideRenewal({ ...base, now: 60 * DAY }), { due: true, reason: 'expiring' });
  t.same(decideRenewal({ ...base, now: 100 * DAY }), { due: true, reason: 'expiring' }, 'expired');
  // ARI may only move renewal earlier
  t.same(decideRenewal({ ...base, now: 10 * DAY, ariAt: 5 * DAY }), { due: true, reason: 'ari' });
  t.same(decideRenewal({ ...base, now: 10 * DAY, ariAt: 20 * DAY }), { due: false, at: 20 * DAY });
  t.same(decideRenewal({ ...base, now: 10 * DAY, ariAt: 80 * DAY }), { due: false, at: 60 * DAY }, 'a late window does not postpone');
  t.same(decideRenewal({ ...base, now: 61 * DAY, ariAt: 80 * DAY }), { due: true, reason: 'expiring' });
});

t.test('backoffDelay: exponential, jittered ±10 %, capped, Retry-After as floor', async (t) => {
  const o = { min: 60_000, max: 3_600_000 };
  t.equal(backoffDelay(1, { ...o, random: 0.5 }), 60_000);
  t.equal(backoffDelay(2, { ...o, random: 0.5 }), 120_000);
  t.equal(backoffDelay(3, { ...o, random: 0.5 }), 240_000);
  t.equal(backoffDelay(1, { ...o, random: 0 }), 54_000, '-10 %');
  t.equal(backoffDelay(1, { ...o, random: 0.999999 }), 66_000, '+10 %');
  t.equal(backoffDelay(7, { ...o, random: 0.5 }), 3_600_000, 'cap reached');
  t.equal(backoffDelay(7, { ...o, random: 0.99 }), 3_600_000, 'jitter never exceeds the cap');
  t.equal(backoffDelay(5000, { ...o, random: 0.5 }), 3_600_000, 'no overflow on many failures');
  t.equal(backoffDelay(1, { ...o, random: 0.5, retryAfterMs: 600_000 }), 600_000, 'Retry-After wins when longer');
  t.equal(backoffDelay(1, { ...o, random: 0.5, retryAfterMs: 1000 }), 60_000, 'and not when shorter');
  t.equal(backoffDelay(1, { ...o, random: 0.5, retryAfterMs: 365 * DAY }), MAX_RETRY_AFTER, 'absurd Retry-After capped');
  t.equal(backoffDelay(1, { ...o, random: 0.5, retryAfterMs: -5 }), 60_000);
});

t.test('jitter stays within ±10 %', async (t) => {
  t.equal(jitter(1000, 0), 900);
  t.equal(jitter(1000, 0.5), 1000);
  t.ok(jitter(1000, 0.9999) <= 1100);
});

t.test('parseRetryAfter (RFC 9110 §10.2.3)', async (t) => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  t.equal(parseRetryAfter('120', now), 120_000);
  t.equal(parseRetryAfter(' 0 ', now), 0);
  t.equal(parseRetryAfter('Thu, 01 Jan 2026 00:10:00 GMT', now), 600_000);
  t.equal(parseRetryAfter('Wed, 31 Dec 2025 00:00:00 GMT', now), 0, 'past date');
  t.equal(parseRetryAfter('-5', now), null);
  t.equal(parseRetryAfter('soon', now), null);
  t.equal(parseRetryAfter(undefined, now), null);
  t.equal(parseRetryAfter(['1'], now), null);
});

t.test('parseRenewalInfo (RFC 9773 §4.2)', async (t) => {
  t.same(parseRenewalInfo({ suggestedWindow: { start: '2025-01-02T04:00:00Z', end: '2025-01-03T04:00:00Z' }, explanationURL: 'https://x' }), {
    start: Date.parse('2025-01-02T04:00:00Z'),
    end: Date.parse('2025-01-03T04:00:00Z'),
  });
  const bad: unknown[] = [
    null,
    'str',
    {},
    { suggestedWindow: null },
    { suggestedWindow: { start: '2025-01-02T04:00:00Z' } },
    { suggestedWindow: { start: 1, end: 2 } },
    { suggestedWindow: { start: 'yesterday', end: '2025-01-03T04:00:00Z' } },
    { suggestedWindow: { start: '2025-01-03T04:00:00Z', end: '2025-01-03T04:00:00Z' } },
    { suggestedWindow: { start: '2025-01-04T04:00:00Z', end: '2025-01-03T04:00:00Z' } },
  ];
  for (const b of bad) t.throws(() => parseRenewalInfo(b), { code: 'GW_ERR_ACME' }, JSON.stringify(b));
  t.equal(pickInWindow({ start: 1000, end: 2000 }, 0), 1000);
  t.equal(pickInWindow({ start: 1000, end: 2000 }, 0.5), 1500);
  t.ok(pickInWindow({ start: 1000, end: 2000 }, 0.9999) < 2000);
});

t.test('ariCertId: the RFC 9773 §4.1 example', async (t) => {
  // AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4, serial 00:87:65:43:21
  // → "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE" (leading zero octet of the serial kept)
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '0087654321',
    subject: 'CN=leaf.test',
    issuer: 'CN=issuer',
    notBefore: new Date('2025-01-01T00:00:00Z'),
    notAfter: new Date('2025-04-01T00:00:00Z'),
    signingAlgorithm: alg,
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    extensions: [new x509.AuthorityKeyIdentifierExtension('69885B6B87464041E1B37B847BA0AE2CDE01C8D4')],
  });
  t.equal(ariCertId(cert.toString('pem')), 'aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE');

  const noAki = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=self',
    notBefore: new Date('2025-01-01T00:00:00Z'),
    notAfter: new Date('2025-04-01T00:00:00Z'),
    signingAlgorithm: alg,
    keys,
  });
  t.throws(() => ariCertId(noAki.toString('pem')), { code: 'GW_ERR_ACME' });
  t.equal(derIntegerContent('87654321'), '0087654321');
  t.equal(derIntegerContent('0087654321'), '0087654321');
  t.equal(derIntegerContent('7f'), '7f');
  t.equal(derIntegerContent('1'), '01');
  t.equal(derIntegerContent('0001'), '01');
  t.equal(derIntegerContent('00'), '00');
});

t.test('safeName / directoryFolder: no path tricks, no collisions', async (t) => {
  t.equal(safeName('app.test'), 'app.test');
  t.equal(safeName('site-1_a'), 'site-1_a');
  for (const evil of ['../etc/passwd', '..', '.', '', 'a/b', 'a\\b', 'App.Test', 'x'.repeat(300), 'a\u0000b']) {
    const n = safeName(evil);
    t.match(n, /^[a-z0-9_][a-z0-9._-]*$/, `${JSON.stringify(evil.slice(0, 20))} → ${n}`);
    t.notOk(n.includes('/') || n.startsWith('.'), 'stays in its folder');
    t.ok(n.length <= 100);
  }
  t.not(safeName('a/b'), safeName('a_b'), 'sanitised names do not collide with real ones');
  t.not(safeName('App'), safeName('app'));
  t.equal(directoryFolder('https://acme-v02.api.letsencrypt.org/directory'), 'acme-v02.api.letsencrypt.org');
  t.equal(directoryFolder('https://localhost:14000/dir'), 'localhost_14000');
});

t.test('sameHosts ignores order, case and duplicates', async (t) => {
  t.ok(sameHosts(['a.test', 'b.test'], ['B.test', 'a.test']));
  t.ok(sameHosts(['a.test', 'a.test'], ['a.test']));
  t.notOk(sameHosts(['a.test'], ['a.test', 'b.test']));
  t.notOk(sameHosts(['a.test', 'c.test'], ['a.test', 'b.test']));
});

t.test('HTTP-01 challenge paths', async (t) => {
  const token = 'LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0';
  t.equal(matchChallengePath(`/.well-known/acme-challenge/${token}`), token);
  t.equal(matchChallengePath(`/.well-known/acme-challenge/${token}?x=1`), token);
  for (const p of [
    '/.well-known/acme-challenge/',
    '/.well-known/acme-challenge/short',
    `/.well-known/acme-challenge/${token}/extra`,
    `/.well-known/acme-challenge/../${token}`,
    `/.well-known/acme-challenge/${token}%2F..`,
    `/.well-known/acme-challenge/${token}.`,
    `/x/.well-known/acme-challenge/${token}`,
    `/.WELL-KNOWN/acme-challenge/${token}`,
  ]) t.equal(matchChallengePath(p), null, p);

  const c = new Http01Challenges();
  c.set(token, `${token}.thumb`);
  t.equal(c.get(token), `${token}.thumb`);
  t.equal(c.lookupPath(`/.well-known/acme-challenge/${token}`), `${token}.thumb`);
  t.equal(c.lookupPath(`/.well-known/acme-challenge/${token}/`), undefined);
  t.equal(c.get('__proto__'), undefined);
  c.delete(token);
  t.equal(c.get(token), undefined);
  t.equal(c.size, 0);
});
