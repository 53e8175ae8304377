import t from 'tap';
import { createHash } from 'node:crypto';
import { ipKey, MAX_KEY_PART, rateLimitKey } from '../../src/protect/index.js';

t.test('IPv4 as is', async (t) => {
  t.equal(ipKey('192.0.2.10'), 'ip:192.0.2.10');
  t.not(ipKey('192.0.2.10'), ipKey('192.0.2.11'));
});

t.test('IPv6 grouped by /64: rotating the interface id does not escape the limit', async (t) => {
  const a = ipKey('2001:db8:1:2:3:4:5:6');
  t.equal(a, 'ip:2001:db8:1:2::/64');
  t.equal(ipKey('2001:db8:1:2:ffff:ffff:ffff:ffff'), a);
  t.equal(ipKey('2001:0DB8:0001:0002::1'), a, 'non-canonical spelling, same key');
  t.not(ipKey('2001:db8:1:3::1'), a, 'another /64 is another client');
  t.equal(ipKey('fe80::1%eth0'), 'ip:fe80::/64', 'zone id dropped');
});

t.test('IPv4-mapped IPv6 is keyed as IPv4 (dual-stack sockets)', async (t) => {
  t.equal(ipKey('::ffff:192.0.2.10'), 'ip:192.0.2.10');
  t.equal(ipKey('::ffff:c000:20a'), 'ip:192.0.2.10');
  t.not(ipKey('::ffff:192.0.2.10'), ipKey('::ffff:192.0.2.11'), 'mapped addresses are not lumped into one /64');
});

t.test('unparsable ip is still keyed (counted, not bypassed), bounded', async (t) => {
  t.equal(ipKey('not-an-ip'), 'ip:not-an-ip');
  t.match(ipKey('x'.repeat(1000)), /^ip:sha256:[A-Za-z0-9_-]{43}$/);
});

t.test('user key with ip fallback', async (t) => {
  t.equal(rateLimitKey('user', { ip: '192.0.2.1', subject: 'alice', headers: {} }), 'user:alice');
  t.equal(rateLimitKey('user', { ip: '192.0.2.1', subject: 'alice', issuer: 'https://idp.test', headers: {} }), 'user:alice@https%3A%2F%2Fidp.test');
  // One subject, two issuers: two keys. And a subject cannot spell another issuer's key.
  t.not(rateLimitKey('user', { ip: '', subject: 'alice', issuer: 'https://a.test', headers: {} }), rateLimitKey('user', { ip: '', subject: 'alice', issuer: 'https://b.test', headers: {} }));
  t.not(rateLimitKey('user', { ip: '', subject: 'a@b', issuer: 'c', headers: {} }), rateLimitKey('user', { ip: '', subject: 'a', issuer: 'b@c', headers: {} }), 'the issuer is encoded: the last @ ends the subject');
  t.not(rateLimitKey('user', { ip: '', subject: 'alice@https%3A%2F%2Fb.test', issuer: 'https://a.test', headers: {} }), rateLimitKey('user', { ip: '', subject: 'alice', issuer: 'https://b.test', headers: {} }));
  t.equal(rateLimitKey('user', { ip: '192.0.2.1', headers: {} }), 'ip:192.0.2.1');
  t.equal(rateLimitKey('user', { ip: '192.0.2.1', subject: '', headers: {} }), 'ip:192.0.2.1');
  t.equal(rateLimitKey('user', { ip: '192.0.2.1', subject: null, headers: {} }), 'ip:192.0.2.1');
  t.not(rateLimitKey('user', { ip: '192.0.2.1', subject: 'ip:192.0.2.1', headers: {} }), 'ip:192.0.2.1', 'a subject cannot impersonate an ip key');
});

t.test('header key: case-insensitive name, ip fallback, the value always hashed (it is usually a credential)', async (t) => {
  const spec = { header: 'X-Api-Key' };
  const sha = (v: string): string => `header:x-api-key:sha256:${createHash('sha256').update(v).digest('base64url')}`;
  t.equal(rateLimitKey(spec, { ip: '192.0.2.1', headers: { 'x-api-key': 'k1' } }), sha('k1'));
  t.notMatch(rateLimitKey(spec, { ip: '192.0.2.1', headers: { 'x-api-key': 'sk_live_secret' } }), /sk_live_secret/, 'the value never appears in the key');
  t.equal(rateLimitKey(spec, { ip: '192.0.2.1', headers: {} }), 'ip:192.0.2.1');
  t.equal(rateLimitKey(spec, { ip: '192.0.2.1', headers: { 'x-api-key': '  ' } }), 'ip:192.0.2.1', 'blank is absent');
  t.equal(rateLimitKey(spec, { ip: '192.0.2.1', headers: { 'x-api-key': ['a', 'b'] } }), sha('a, b'));
  t.equal(rateLimitKey(spec, { ip: '192.0.2.1', headers: { 'x-api-key': ' k1 ' } }), sha('k1'), 'trimmed before hashing');
  const long = rateLimitKey(spec, { ip: '192.0.2.1', headers: { 'x-api-key': 'k'.repeat(10_000) } });
  t.ok(long.length < 64 + MAX_KEY_PART / 2, 'bounded');
  t.not(long, rateLimitKey(spec, { ip: '192.0.2.1', headers: { 'x-api-key': 'k'.repeat(10_001) } }), 'distinct values stay distinct');
});

t.test('a forged X-Forwarded-For never enters the key unless it is given as ip', async (t) => {
  const headers = { 'x-forwarded-for': '203.0.113.66', 'x-real-ip': '203.0.113.67', forwarded: 'for=203.0.113.68' };
  for (const spec of ['ip', 'user', { header: 'x-api-key' }] as const) {
    const key = rateLimitKey(spec, { ip: '198.51.100.7', headers });
    t.equal(key, 'ip:198.51.100.7', `spec ${JSON.stringify(spec)}`);
    t.notMatch(key, /203\.0\.113/);
  }
  t.equal(rateLimitKey('ip', { ip: '203.0.113.66', headers: {} }), 'ip:203.0.113.66', 'only via the ip field');
});
