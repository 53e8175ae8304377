/**
 * The issue-7 optimizations must not change what the hot-path functions compute. Each optimized
 * function is checked against a REFERENCE: the straightforward implementation it replaced (kept
 * here, written with split/regex/ipaddr.js, independent of the optimized code), on generated
 * inputs that include the hostile shapes (odd spellings, control characters, case variants).
 */
import t from 'tap';
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import { ipKey, ipKeyReference, SLOW_KEY_CACHE_SIZE } from '../../src/protect/client-key.js';
import { hardenSetCookie } from '../../src/protect/cookies.js';
import { applySecurityHeaders, type SecurityHeaderSet } from '../../src/protect/headers.js';
import { buildUpstreamHeaders, headerSafe, withoutHopByHopResponseHeaders, HOP_BY_HOP, LEAKY_RESPONSE_HEADERS, connectionTokens, type HeaderBag, type Identity } from '../../src/proxy/headers.js';
import { plainAddress } from '../../src/proxy/forwarded.js';
import type { CookieRules } from '../../src/protect/types.js';

// ---------------------------------------------------------------- ipKey

const octet = fc.oneof(fc.integer({ min: 0, max: 255 }).map(String), fc.constantFrom('00', '01', '007', '256', '999', '0x1f', ''));
const ipv4ish = fc.array(octet, { minLength: 1, maxLength: 5 }).map((p) => p.join('.'));
const hextet = fc.oneof(fc.integer({ min: 0, max: 0xffff }).map((n) => n.toString(16)), fc.constantFrom('0', 'FFFF', 'ffff', '00000', 'g', ''));
const ipv6ish = fc.array(hextet, { minLength: 1, maxLength: 9 }).map((p) => p.join(':'));
const addressLike = fc.oneof(
  ipv4ish,
  ipv6ish,
  ipv4ish.map((v4) => `::ffff:${v4}`),
  ipv4ish.map((v4) => `::FFFF:${v4}`),
  ipv4ish.map((v4) => `0:0:0:0:0:ffff:${v4}`),
  ipv4ish.map((v4) => `::${v4}`),
  fc.tuple(ipv6ish, fc.constantFrom('%eth0', '%1', '%')).map(([a, z]) => a + z),
  fc.tuple(ipv4ish, fc.constantFrom(' ', '\n', '\t', '%eth0', '/32')).map(([a, s]) => a + s),
  fc.string({ maxLength: 50 }),
);

t.test('ipKey agrees with the ipaddr.js-only reference on every input shape', async (t) => {
  fc.assert(
    fc.property(addressLike, (ip) => {
      // twice: the second call may come from the memo
      return ipKey(ip) === ipKeyReference(ip) && ipKey(ip) === ipKeyReference(ip);
    }),
    { numRuns: 5000 },
  );
  t.pass('5000 generated addresses agree');
});

t.test('ipKey reference is ipaddr.js itself (the oracle is not circular)', async (t) => {
  t.equal(ipKeyReference('::ffff:192.0.2.10'), `ip:${ipaddr.process('::ffff:192.0.2.10').toString()}`);
  t.equal(ipKeyReference('2001:db8:1:2:3:4:5:6'), 'ip:2001:db8:1:2::/64');
});

t.test('fast paths: canonical IPv4 and Node-style IPv4-mapped IPv6', async (t) => {
  t.equal(ipKey('198.51.100.7'), 'ip:198.51.100.7');
  t.equal(ipKey('::ffff:198.51.100.7'), 'ip:198.51.100.7');
  t.equal(ipKey('::ffff:198.051.100.7'), ipKeyReference('::ffff:198.051.100.7'), 'a leading zero takes the ipaddr.js path');
  t.equal(ipKey('198.51.100.7 '), 'ip:198.51.100.7 ', 'not an address: counted verbatim, never trimmed into another client');
});

t.test('rotating IPv6 interface ids cannot grow the memo or escape the /64', async (t) => {
  const first = ipKey('2001:db8:aa:bb::1');
  const escaped: string[] = [];
  for (let i = 0; i < SLOW_KEY_CACHE_SIZE * 2 + 10; i++) {
    const ip = `2001:db8:aa:bb:${(i >>> 16).toString(16)}:${(i & 0xffff).toString(16)}:1:2`;
    if (ipKey(ip) !== first) escaped.push(ip);
  }
  t.same(escaped, [], 'every address of the /64 got the same key, across memo resets');
  // A long non-address is never memoized (and is bounded by hashing as before).
  t.match(ipKey('x'.repeat(1000)), /^ip:sha256:/);
});

// ---------------------------------------------------------------- Set-Cookie

/** The parser this change replaced (split + regular expressions). */
function referenceHardenSetCookie(line: string, rules: CookieRules, context: { https: boolean }): string {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(line)) return line;
  const trimWsp = (s: string): string => s.replace(/^[ \t]+|[ \t]+$/g, '');
  const [pair = '', ...attributes] = line.split(';');
  const eq = pair.indexOf('=');
  const name = eq === -1 ? '' : trimWsp(pair.slice(0, eq));
  const value = eq === -1 ? trimWsp(pair) : trimWsp(pair.slice(eq + 1));
  if (name === '' && value === '') return line;
  let secure = false;
  let httpOnly = false;
  let sameSite: string | null = null;
  for (const attribute of attributes) {
    const aeq = attribute.indexOf('=');
    const attrName = trimWsp(aeq === -1 ? attribute : attribute.slice(0, aeq)).toLowerCase();
    const attrValue = aeq === -1 ? '' : trimWsp(attribute.slice(aeq + 1)).toLowerCase();
    if (attrName === 'secure') secure = true;
    else if (attrName === 'httponly') httpOnly = true;
    // The last SameSite attribute decides, an invalid or empty one included (RFC 6265bis §5.6.7).
    else if (attrName === 'samesite') sameSite = attrValue === 'lax' || attrValue === 'strict' || attrValue === 'none' ? attrValue : null;
  }
  const addSameSite = sameSite === null && rules.sameSite !== null && (rules.sameSite !== 'None' || context.https);
  const sameSiteNone = sameSite === 'none' || (addSameSite && rules.sameSite === 'None');
  const addSecure = !secure && context.https && (rules.secure || sameSiteNone);
  const addHttpOnly = !httpOnly && rules.httpOnly && !rules.httpOnlyExcept.includes(name);
  const added: string[] = [];
  if (addSecure) added.push('Secure');
  if (addHttpOnly) added.push('HttpOnly');
  if (addSameSite) added.push(`SameSite=${String(rules.sameSite)}`);
  if (added.length === 0) return line;
  return `${line.replace(/[ \t;]+$/, '')}; ${added.join('; ')}`;
}

const cookiePiece = fc.constantFrom(
  'sid', 'a', '=', '==', ';', '; ', ' ;', ' ', '\t', '"', 'v"a;l"', 'Secure', 'secure', 'SECURE', 'SeCuRe', ' Secure ',
  'HttpOnly', 'httponly', 'HTTPONLY', 'SameSite', 'samesite', 'SAMESITE', '=Lax', '=lax', '=Strict', '=NONE', '=none', '= None ',
  '=bogus', '=', 'Path=/', 'Domain=example.com', 'Expires=Wed, 21 Oct 2015 07:28:00 GMT', 'Max-Age=0',
  '\u212Aey', 'ſecure', 'İ', 'httponİy', '\u0000', '\u0007', '\n', '\u007f', '\u0085', 'é', '😀', '__Host-', '__Secure-',
);
const cookieLine = fc.oneof(fc.array(cookiePiece, { maxLength: 14 }).map((p) => p.join('')), fc.string({ maxLength: 40 }));
const cookieRules: fc.Arbitrary<CookieRules> = fc.record({
  secure: fc.boolean(),
  httpOnly: fc.boolean(),
  httpOnlyExcept: fc.constantFrom([], ['sid'], ['a', 'csrf']),
  sameSite: fc.constantFrom('Lax', 'Strict', 'None', null),
}) as fc.Arbitrary<CookieRules>;

t.test('hardenSetCookie agrees with the split/regex reference', async (t) => {
  fc.assert(
    fc.property(cookieLine, cookieRules, fc.boolean(), (line, rules, https) => hardenSetCookie(line, rules, { https }) === referenceHardenSetCookie(line, rules, { https })),
    { numRuns: 20000 },
  );
  t.pass('20000 generated Set-Cookie lines agree');
});

t.test('hardenSetCookie still hardens what an attacker-shaped line hides', async (t) => {
  const rules: CookieRules = { secure: true, httpOnly: true, httpOnlyExcept: [], sameSite: 'Lax' } as CookieRules;
  // "Secure" inside the value or another attribute's value is not the Secure attribute.
  t.equal(hardenSetCookie('sid=Secure; Path=/Secure', rules, { https: true }), 'sid=Secure; Path=/Secure; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenSetCookie('sid=1; SameSite', rules, { https: true }), 'sid=1; SameSite; Secure; HttpOnly; SameSite=Lax', 'SameSite without value is not set');
  t.equal(hardenSetCookie('sid=1; ſecure', rules, { https: true }), 'sid=1; ſecure; Secure; HttpOnly; SameSite=Lax', 'a look-alike name is not Secure');
  t.equal(hardenSetCookie('sid=1;  ;\t', rules, { https: true }), 'sid=1; Secure; HttpOnly; SameSite=Lax');
});

// ---------------------------------------------------------------- security headers

/** The merge this change replaced (Object.entries + a Map of present names). */
function referenceApply(existing: Record<string, unknown>, computed: SecurityHeaderSet, mode: 'keep' | 'override', https: boolean, gatewayGenerated: boolean): Record<string, unknown> {
  const stripped = ['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version'];
  const out: Record<string, unknown> = {};
  const present = new Map<string, string[]>();
  for (const [name, value] of Object.entries(existing)) {
    const lower = name.toLowerCase();
    if (value === undefined || stripped.includes(lower)) continue;
    out[name] = value;
    present.set(lower, [...(present.get(lower) ?? []), name]);
  }
  const add = (headers: Readonly<Record<string, string>>, always = false): void => {
    for (const [name, value] of Object.entries(headers)) {
      const keys = present.get(name);
      if (keys !== undefined) {
        if (mode === 'keep' && !always) continue;
        for (const k of keys) delete out[k];
      }
      out[name] = value;
      present.set(name, [name]);
    }
  };
  add(computed.common);
  // HSTS is the gateway's even under `keep` (an app's max-age=0 would erase it in browsers).
  if (https) add(computed.httpsOnly, true);
  if (gatewayGenerated) add(computed.gatewayOnly);
  return out;
}

const SET: SecurityHeaderSet = Object.freeze({
  common: Object.freeze({ 'content-security-policy': "default-src 'self'", 'x-frame-options': 'DENY', 'x-content-type-options': 'nosniff' }),
  httpsOnly: Object.freeze({ 'strict-transport-security': 'max-age=31536000' }),
  gatewayOnly: Object.freeze({ 'cross-origin-resource-policy': 'same-origin' }),
});

const headerName = fc.constantFrom(
  'content-type', 'Content-Type', 'content-security-policy', 'Content-Security-Policy', 'CONTENT-SECURITY-POLICY', 'x-frame-options',
  'X-Frame-Options', 'x-FRAME-options', 'strict-transport-security', 'Strict-Transport-Security', 'cross-origin-resource-policy',
  'Cross-Origin-Resource-Policy', 'server', 'Server', 'x-powered-by', 'X-Powered-By', 'set-cookie', 'x-custom',
);
const headerValue = fc.oneof(fc.constantFrom('a', 'DENY', 'frame-ancestors *', 'max-age=0', undefined), fc.array(fc.constantFrom('c=1', 'd=2'), { maxLength: 2 }));
const headerObject = fc.dictionary(headerName, headerValue, { maxKeys: 10 });

t.test('applySecurityHeaders: same names and values as the reference, never an app variant next to ours', async (t) => {
  fc.assert(
    fc.property(headerObject, fc.constantFrom<'keep' | 'override'>('keep', 'override'), fc.boolean(), fc.boolean(), (existing, mode, https, gw) => {
      const got = applySecurityHeaders(existing as never, SET, mode, { https, gatewayGenerated: gw }) as Record<string, unknown>;
      const want = referenceApply(existing, SET, mode, https, gw);
      const sorted = (o: Record<string, unknown>): string => JSON.stringify(Object.keys(o).sort().map((k) => [k, o[k]]));
      if (sorted(got) !== sorted(want)) return false;
      // Every spelling of a gateway header is the gateway's value; under keep, HSTS still is.
      const ours = (mode === 'override'
        ? { ...SET.common, ...(https ? SET.httpsOnly : {}), ...(gw ? SET.gatewayOnly : {}) }
        : { ...(https ? SET.httpsOnly : {}) }) as Record<string, string>;
      for (const [k, v] of Object.entries(got)) if (Object.hasOwn(ours, k.toLowerCase()) && v !== ours[k.toLowerCase()]) return false;
      return true;
    }),
    { numRuns: 5000 },
  );
  t.pass('5000 generated header sets agree');
});

t.test('override removes every case variant of the app header (two spellings in one response)', async (t) => {
  const out = applySecurityHeaders({ 'X-Frame-Options': 'ALLOWALL', 'x-FRAME-options': 'ALLOWALL', 'x-frame-options': 'SAMEORIGIN' }, SET, 'override', { https: true });
  t.same(Object.keys(out).filter((k) => k.toLowerCase() === 'x-frame-options'), ['x-frame-options']);
  t.equal(out['x-frame-options'], 'DENY');
  const kept = applySecurityHeaders({ 'X-Frame-Options': 'SAMEORIGIN' }, SET, 'keep', { https: true });
  t.equal(kept['X-Frame-Options'], 'SAMEORIGIN');
  t.notOk(Object.hasOwn(kept, 'x-frame-options'), 'keep: the app spelling wins, no second header');
});

t.test('an unfrozen header set is not cached: a later change is applied', async (t) => {
  const common: Record<string, string> = { 'x-a': '1' };
  const set = { common, httpsOnly: {}, gatewayOnly: {} } as SecurityHeaderSet;
  t.equal(applySecurityHeaders({}, set, 'override', { https: true })['x-a'], '1');
  common['x-a'] = '2';
  t.equal(applySecurityHeaders({}, set, 'override', { https: true })['x-a'], '2');
});

// ---------------------------------------------------------------- proxy header stripping

const reqName = fc.constantFrom(
  'host', 'connection', 'keep-alive', 'te', 'upgrade', 'transfer-encoding', 'proxy-authorization', 'x-auth-user', 'x_auth_user', 'x-forwarded-for',
  'x_forwarded_for', ':path', ':authority', 'server', 'x-powered-by', 'x-runtime', 'x-custom', 'x_custom', 'constructor', 'hasOwnProperty',
  'authorization', 'expect', 'forwarded', 'x-request-id', 'x_request_id', 'x-http-method-override', 'x-forwarded-proto', 'x-forwarded-port',
  'sec-websocket-key', 'sec-websocket-protocol',
);
const bag = fc.dictionary(
  reqName,
  fc.oneof(
    fc.constantFrom('1', 'x-custom, close', 'X-Auth-User', 'upgrade', 'Keep-Alive, x_custom', 'Host, Authorization', 'X-Forwarded-For, expect'),
    fc.array(fc.constantFrom('x-custom', 'te'), { maxLength: 2 }),
  ),
  { maxKeys: 10 },
);

function referenceStripRequest(headers: HeaderBag, gatewayOwned: readonly string[], keepUpgrade: boolean): void {
  for (const name of connectionTokens(headers.connection)) {
    if (keepUpgrade && name === 'upgrade') continue;
    delete headers[name];
  }
  for (const name of HOP_BY_HOP) {
    if (keepUpgrade && (name === 'connection' || name === 'upgrade')) continue;
    delete headers[name];
  }
  for (const name of gatewayOwned) delete headers[name];
  for (const name of Object.keys(headers)) {
    if (name.charCodeAt(0) === 58) delete headers[name];
    else if (name.includes('_') && gatewayOwned.includes(name.replace(/_/g, '-'))) delete headers[name];
  }
}

function referenceStripResponse(headers: HeaderBag): void {
  for (const name of connectionTokens(headers.connection)) delete headers[name];
  for (const name of HOP_BY_HOP) delete headers[name];
  for (const name of LEAKY_RESPONSE_HEADERS) delete headers[name];
}

/**
 * What the gateway sent upstream before it filtered while copying: a copy of the client's
 * headers, `delete`s, then the gateway's own headers (the implementation it replaced); for a
 * WebSocket handshake, then without Connection, Upgrade and Sec-WebSocket-* (deleted by the
 * gateway's WebSocket route, which now leaves that to buildUpstreamHeaders).
 */
function referenceUpstreamHeaders(received: HeaderBag, o: { owned: readonly string[]; websocket: boolean; forwardToken: boolean; trustedPeer: boolean; identity: Identity | null }): HeaderBag {
  const headers: HeaderBag = { ...received };
  referenceStripRequest(headers, o.owned, o.websocket);
  delete headers.expect;
  if (!o.forwardToken) delete headers.authorization;
  headers.host = 'app.example';
  const peer = plainAddress('::ffff:192.0.2.1');
  const first = (v: HeaderBag[string]) => (v === undefined ? undefined : Array.isArray(v) ? v[0] : String(v));
  if (o.trustedPeer) {
    const xff = received['x-forwarded-for'];
    const joined = Array.isArray(xff) ? xff.join(', ') : xff;
    headers['x-forwarded-for'] = joined ? `${joined}, ${peer}` : peer;
    headers['x-forwarded-proto'] = first(received['x-forwarded-proto']) ?? 'https';
    headers['x-forwarded-host'] = first(received['x-forwarded-host']) ?? 'app.example';
    headers['x-forwarded-port'] = first(received['x-forwarded-port']) ?? '8443';
    if (received.forwarded !== undefined) headers.forwarded = received.forwarded;
  } else {
    headers['x-forwarded-for'] = peer;
    headers['x-forwarded-proto'] = 'https';
    headers['x-forwarded-host'] = 'app.example';
    headers['x-forwarded-port'] = '8443';
  }
  headers['x-request-id'] = 'req-1';
  if (o.identity) {
    headers['x-auth-user'] = headerSafe(o.identity.subject, false);
    headers['x-auth-issuer'] = headerSafe(o.identity.issuer, false);
    if (o.identity.email !== null) headers['x-auth-email'] = headerSafe(o.identity.email, false);
    headers['x-auth-roles'] = o.identity.roles.map((r) => headerSafe(r, true)).join(',');
  }
  if (o.websocket) for (const name of Object.keys(headers)) if (name.startsWith('sec-websocket-') || name === 'connection' || name === 'upgrade') delete headers[name];
  return headers;
}

const claimText = fc.oneof(fc.constantFrom('alice', 'a,b', 'ü', '100%', 'x\r\ny', ''), fc.string({ maxLength: 8 }));
const identity = fc.option(
  fc.record({ subject: claimText, email: fc.option(claimText, { nil: null }), roles: fc.array(claimText, { maxLength: 3 }), issuer: claimText }),
  { nil: null },
);

t.test('buildUpstreamHeaders (filtering while copying) = the reference copy-then-delete, in the same order', async (t) => {
  const ownedList = [
    'x-auth-user', 'x-auth-email', 'x-auth-roles', 'x-auth-issuer', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host',
    'x-forwarded-port', 'forwarded', 'x-real-ip', 'x-request-id', 'x-http-method-override',
  ];
  const owned = new Set(ownedList);
  fc.assert(
    fc.property(bag, fc.boolean(), fc.boolean(), fc.boolean(), identity, (received, websocket, forwardToken, trustedPeer, who) => {
      const before = JSON.stringify(received);
      const got = buildUpstreamHeaders({
        peer: '::ffff:192.0.2.1', trustedPeer, requestId: 'req-1', host: 'app.example', publicPort: 8443, gatewayOwned: owned,
        identityHeaders: ['x-auth-user', 'x-auth-email', 'x-auth-roles', 'x-auth-issuer'], identity: who, forwardToken, websocket,
        received: received as Record<string, string | string[]>,
      });
      const want = referenceUpstreamHeaders(received, { owned: ownedList, websocket, forwardToken, trustedPeer, identity: who });
      // Twice: the second call takes the identity's encoded values from the per-principal memo.
      const again = buildUpstreamHeaders({
        peer: '::ffff:192.0.2.1', trustedPeer, requestId: 'req-1', host: 'app.example', publicPort: 8443, gatewayOwned: owned,
        identityHeaders: ['x-auth-user', 'x-auth-email', 'x-auth-roles', 'x-auth-issuer'], identity: who, forwardToken, websocket,
        received: received as Record<string, string | string[]>,
      });
      const same = (a: HeaderBag) => JSON.stringify(Object.entries(a)) === JSON.stringify(Object.entries(want));
      return JSON.stringify(received) === before && same(got) && same(again);
    }),
    { numRuns: 5000 },
  );
  t.pass('5000 generated requests agree, key order included; the client headers are not modified');
});

t.test('withoutHopByHopResponseHeaders = the reference strip on a copy, input untouched', async (t) => {
  fc.assert(
    fc.property(bag, (headers) => {
      const before = JSON.stringify(headers);
      const got = withoutHopByHopResponseHeaders(headers);
      const want = { ...headers };
      referenceStripResponse(want);
      return JSON.stringify(headers) === before && JSON.stringify(Object.entries(got).sort()) === JSON.stringify(Object.entries(want).sort());
    }),
    { numRuns: 5000 },
  );
  const leaked = withoutHopByHopResponseHeaders({ connection: 'X-Internal, close', 'x-internal': 'secret', server: 'nginx/1.2', 'keep-alive': 'timeout=5', 'x-ok': '1' });
  t.same(leaked, { 'x-ok': '1' }, 'connection-named, hop-by-hop and leaky headers are all dropped');
});
