import t from 'tap';
import { hardenSetCookie, hardenSetCookies } from '../../src/protect/index.js';
import type { CookieRules } from '../../src/protect/index.js';

const rules: CookieRules = { secure: true, httpOnly: true, httpOnlyExcept: ['csrftoken'], sameSite: 'Lax' };
const https = { https: true };
const http = { https: false };

t.test('plain cookie gets all three attributes over HTTPS', async (t) => {
  t.equal(hardenSetCookie('sid=abc', rules, https), 'sid=abc; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('sid=abc; Path=/', rules, https), 'sid=abc; Path=/; Secure; HttpOnly; SameSite=Lax');
});

t.test('over plain HTTP no Secure is added (the browser would drop the cookie)', async (t) => {
  t.equal(hardenSetCookie('sid=abc', rules, http), 'sid=abc; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('sid=abc', { ...rules, sameSite: 'None' }, http), 'sid=abc; HttpOnly', 'no SameSite=None without Secure');
});

t.test('Expires with a comma and quoted values with = and spaces stay byte-for-byte', async (t) => {
  const line = 'id="a=b c=="; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Max-Age=60';
  t.equal(hardenSetCookie(line, rules, https), `${line}; Secure; HttpOnly; SameSite=Lax`);
  const values = ['a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT', 'b=2'];
  const out = hardenSetCookies(values, rules, https);
  t.equal(out.length, 2, 'never split on commas');
  t.equal(out[0], 'a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Secure; HttpOnly; SameSite=Lax');
  t.equal(out[1], 'b=2; Secure; HttpOnly; SameSite=Lax');
  t.same(values, ['a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT', 'b=2'], 'input untouched');
});

t.test('attributes in odd case are recognised, not duplicated', async (t) => {
  t.equal(hardenSetCookie('a=1; secure; HTTPONLY; samesite=strict', rules, https), 'a=1; secure; HTTPONLY; samesite=strict');
  t.equal(hardenSetCookie('a=1;Secure;HttpOnly;SameSite=Lax', rules, https), 'a=1;Secure;HttpOnly;SameSite=Lax');
  t.equal(hardenSetCookie('a=1;  SECURE  ', rules, https), 'a=1;  SECURE; HttpOnly; SameSite=Lax');
});

t.test('the app\'s SameSite is kept; an invalid one is overridden by appending ours', async (t) => {
  t.equal(hardenSetCookie('a=1; SameSite=Strict', rules, https), 'a=1; SameSite=Strict; Secure; HttpOnly');
  t.equal(hardenSetCookie('a=1; SameSite=bogus', rules, https), 'a=1; SameSite=bogus; Secure; HttpOnly; SameSite=Lax');
});

t.test('the LAST SameSite attribute decides, even an invalid or empty one', async (t) => {
  // RFC 6265bis §5.6.7: every SameSite attribute is appended (an unknown or missing value as
  // "Default"), and the last one in the list sets the cookie's same-site flag (Chromium's
  // ParsedCookie keeps the index of the last "samesite" pair). A valid value followed by an
  // invalid one is therefore NO SameSite for the browser: ours must still be appended.
  t.equal(hardenSetCookie('a=1; SameSite=Strict; SameSite=bogus', rules, https), 'a=1; SameSite=Strict; SameSite=bogus; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('a=1; SameSite=Lax; SameSite', rules, https), 'a=1; SameSite=Lax; SameSite; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('a=1; SameSite=None; SameSite=', rules, https), 'a=1; SameSite=None; SameSite=; Secure; HttpOnly; SameSite=Lax');
  // The other way round the last, valid, one stays the app's choice.
  t.equal(hardenSetCookie('a=1; SameSite=bogus; SameSite=Strict', rules, https), 'a=1; SameSite=bogus; SameSite=Strict; Secure; HttpOnly');
});

t.test('SameSite=None requires Secure (added over HTTPS even when secure is off)', async (t) => {
  const off = { ...rules, secure: false };
  t.equal(hardenSetCookie('a=1; samesite=none', off, https), 'a=1; samesite=none; Secure; HttpOnly');
  t.equal(hardenSetCookie('a=1', { ...off, sameSite: 'None' }, https), 'a=1; Secure; HttpOnly; SameSite=None');
  t.equal(hardenSetCookie('a=1', off, https), 'a=1; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('a=1; samesite=none', off, http), 'a=1; samesite=none; HttpOnly', 'cannot fix over HTTP; left to the app');
});

t.test('http_only_except is exact and case-sensitive', async (t) => {
  t.equal(hardenSetCookie('csrftoken=x', rules, https), 'csrftoken=x; Secure; SameSite=Lax');
  t.equal(hardenSetCookie(' csrftoken =x', rules, https), ' csrftoken =x; Secure; SameSite=Lax', 'name is WSP-trimmed (RFC 6265 §5.2)');
  t.equal(hardenSetCookie('CSRFTOKEN=x', rules, https), 'CSRFTOKEN=x; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('csrftoken2=x', rules, https), 'csrftoken2=x; Secure; HttpOnly; SameSite=Lax');
});

t.test('__Host- and __Secure- cookies stay valid', async (t) => {
  t.equal(hardenSetCookie('__Host-sid=1; Secure; Path=/', rules, https), '__Host-sid=1; Secure; Path=/; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('__Secure-x=1; Secure; Domain=example.com', rules, https), '__Secure-x=1; Secure; Domain=example.com; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('__Host-sid=1; Secure; Path=/', rules, http), '__Host-sid=1; Secure; Path=/; HttpOnly; SameSite=Lax', 'Secure never stripped, even over HTTP');
});

t.test('empty value, no "=", trailing separators', async (t) => {
  t.equal(hardenSetCookie('a=', rules, https), 'a=; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('a=; Max-Age=0', rules, https), 'a=; Max-Age=0; Secure; HttpOnly; SameSite=Lax', 'deletion cookie still matches');
  t.equal(hardenSetCookie('justavalue', rules, https), 'justavalue; Secure; HttpOnly; SameSite=Lax', 'nameless cookie (6265bis) is hardened');
  t.equal(hardenSetCookie('a=1; Path=/;  ', rules, https), 'a=1; Path=/; Secure; HttpOnly; SameSite=Lax');
});

t.test('malformed lines pass through unchanged and are never dropped', async (t) => {
  const malformed = ['', '   ', '=', ';', 'a=1\r\nSet-Cookie: evil=1', 'a=\u0000b'];
  const out = hardenSetCookies(malformed, rules, https);
  t.same(out, malformed);
});

t.test('an attribute smuggled in a value cannot make us skip hardening', async (t) => {
  // "HttpOnly" inside the value is part of the name-value pair, not an attribute.
  t.equal(hardenSetCookie('a=HttpOnly', rules, https), 'a=HttpOnly; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('a="Secure"; Path=/Secure', rules, https), 'a="Secure"; Path=/Secure; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('a=1; Path=/x;HttpOnlyX', rules, https), 'a=1; Path=/x;HttpOnlyX; Secure; HttpOnly; SameSite=Lax');
});

t.test('rules off: nothing added', async (t) => {
  const none: CookieRules = { secure: false, httpOnly: false, httpOnlyExcept: [], sameSite: null };
  t.equal(hardenSetCookie('a=1; Path=/ ; ', none, https), 'a=1; Path=/ ; ');
});
