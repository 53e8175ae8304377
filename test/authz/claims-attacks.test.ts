// Seventh adversarial round: the shapes a roles claim and the other claims can take, what the route
// decision is for each, what the upstream receives in the identity headers, and the modes of the
// key files the gateway writes.
import t from 'tap';
import { mkdtempSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CompactSign, importJWK } from 'jose';
import { startGateway, startUpstream, type SeenRequest } from '../helpers/gateway.js';
import { JWT_AUD, bearer, goodClaims, lastAccess, policyYaml, privateKey, sign, startIdp } from './_support.js';
import { ensureLocalCertificate } from '../../src/tls/local-ca.js';
import { AcmeStorage } from '../../src/acme/storage.js';

const idp = await startIdp();
t.teardown(() => idp.close());
const es = privateKey(idp, 'ES256');
const rs = privateKey(idp, 'RS256');
const nowSec = (): number => Math.floor(Date.now() / 1000);
const withRoles = (roles: unknown): Record<string, unknown> => goodClaims(idp, { realm_access: { roles } });

/** Every raw (name, value) pair of one header name as the upstream's parser read it. */
function raw(seen: SeenRequest, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) if (seen.rawHeaders[i]!.toLowerCase() === name) out.push(seen.rawHeaders[i + 1]!);
  return out;
}

/** An RFC 9110 §5.6.1 list parser, as an app would read X-Auth-Roles: split on commas, trim OWS, then percent-decode. */
const appRoles = (v: string | undefined): string[] => (v ?? '').split(',').map((s) => s.trim()).filter((s) => s.length > 0).map((s) => decodeURIComponent(s));

t.test('roles claim shapes: decision on an admin route and the X-Auth-Roles the upstream gets', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const cases: Array<{ name: string; claims: Record<string, unknown>; admin: number; roles: string }> = [
    { name: 'a single string', claims: withRoles('admin'), admin: 200, roles: 'admin' },
    { name: 'a space separated string', claims: withRoles('user admin'), admin: 200, roles: 'user,admin' },
    { name: 'realm_access missing', claims: goodClaims(idp, { realm_access: undefined }), admin: 403, roles: '' },
    { name: 'realm_access a string', claims: goodClaims(idp, { realm_access: 'admin' }), admin: 403, roles: '' },
    { name: 'realm_access an array', claims: goodClaims(idp, { realm_access: [{ roles: ['admin'] }] }), admin: 403, roles: '' },
    { name: 'roles an object', claims: withRoles({ admin: true }), admin: 403, roles: '' },
    { name: 'roles a number', claims: withRoles(1), admin: 403, roles: '' },
    { name: 'a top-level "realm_access.roles" claim (dotted name) wins over the nested one', claims: goodClaims(idp, { 'realm_access.roles': ['user'] }), admin: 403, roles: 'user' },
    { name: 'Admin', claims: withRoles(['Admin']), admin: 403, roles: 'Admin' },
    { name: 'ADMIN', claims: withRoles(['ADMIN']), admin: 403, roles: 'ADMIN' },
    { name: 'full-width ａｄｍｉｎ', claims: withRoles(['ａｄｍｉｎ']), admin: 403, roles: encodeURIComponent('ａｄｍｉｎ') },
    { name: 'admin + NUL', claims: withRoles(['admin\u0000']), admin: 403, roles: 'admin%00' },
    { name: 'admin + tab', claims: withRoles(['admin\t']), admin: 403, roles: 'admin%09' },
    { name: 'non-strings and a nested array', claims: withRoles([1, null, true, {}, ['admin'], 'user', '']), admin: 403, roles: 'user' },
    { name: 'a literal %2C inside a role', claims: withRoles(['user%2Cadmin']), admin: 403, roles: 'user%252Cadmin' },
    { name: '600 roles then admin', claims: withRoles([...Array.from({ length: 600 }, (_, i) => `r${i}`), 'admin']), admin: 200, roles: [...Array.from({ length: 600 }, (_, i) => `r${i}`), 'admin'].join(',') },
    { name: 'scope/scp naming admin are not roles', claims: goodClaims(idp, { realm_access: { roles: ['user'] }, scope: 'admin', scp: ['admin'], roles: ['admin'] }), admin: 403, roles: 'user' },
  ];
  for (const c of cases) {
    const token = await sign(es, c.claims);
    const before = up.seen.length;
    const res = await gw.request({ path: '/admin', headers: bearer(token) });
    t.equal(res.status, c.admin, `${c.name}: /admin → ${c.admin}`);
    const other = await gw.request({ path: '/orders', headers: bearer(token) });
    t.equal(other.status, 200, `${c.name}: authenticated route → 200`);
    const seen = up.seen.at(-1)!;
    t.equal(up.seen.length, before + (c.admin === 200 ? 2 : 1), `${c.name}: upstream saw only the allowed requests`);
    t.same(raw(seen, 'x-auth-roles'), [c.roles], `${c.name}: exactly one X-Auth-Roles, the verified list`);
    t.equal(seen.headers['x-auth-user'], 'mallory');
  }
});

t.test('roles with surrounding spaces: refused by the gateway, and must not read as "admin" at the upstream', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const roles of [[' admin'], ['admin '], ['user', ' admin'], ['user ', 'admin ']]) {
    const token = await sign(es, withRoles(roles));
    t.equal((await gw.request({ path: '/admin', headers: bearer(token) })).status, 403, `${JSON.stringify(roles)}: not the admin role for the gateway`);
    t.equal((await gw.request({ path: '/orders', headers: bearer(token) })).status, 200);
    const got = up.seen.at(-1)!.headers['x-auth-roles'] as string;
    t.same(appRoles(got), roles, `${JSON.stringify(roles)}: the app reads back the verified role names (got header ${JSON.stringify(got)})`);
    t.notOk(appRoles(got).includes('admin'), `${JSON.stringify(roles)}: the app does not read a plain "admin" role`);
  }
  // The same for the subject: "alice " is another user than "alice".
  const token = await sign(es, goodClaims(idp, { sub: ' alice ', realm_access: { roles: ['user'] } }));
  t.equal((await gw.request({ path: '/orders', headers: bearer(token) })).status, 200);
  const user = up.seen.at(-1)!.headers['x-auth-user'] as string;
  t.not(user, 'alice', `sub " alice " does not reach the app as "alice" (got ${JSON.stringify(user)})`);
});

t.test('duplicate claim names in the signed JSON: one reading, the last (JSON.parse), never a mix', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const now = nowSec();
  const payload = `{"iss":"${idp.issuer}","aud":"${JWT_AUD}","sub":"admin-user","iat":${now},"exp":${now + 300},` +
    `"realm_access":{"roles":["admin"]},"sub":"plain-user","realm_access":{"roles":["user"]}}`;
  const key = await importJWK(es, 'ES256');
  const token = await new CompactSign(new TextEncoder().encode(payload)).setProtectedHeader({ alg: 'ES256', kid: es.kid, typ: 'at+jwt' }).sign(key);
  t.equal((await gw.request({ path: '/admin', headers: bearer(token) })).status, 403, 'the later realm_access (user) is the one judged');
  t.equal((await gw.request({ path: '/orders', headers: bearer(token) })).status, 200);
  const h = up.seen.at(-1)!.headers;
  t.equal(h['x-auth-user'], 'plain-user');
  t.equal(h['x-auth-roles'], 'user');
});

t.test('registered claims and header: aud, nbf, iat, exp types, alg/kid mismatch, typ, iss spelling', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const now = nowSec();
  const cases: Array<{ name: string; token: () => Promise<string>; status: number; reason?: string }> = [
    { name: 'aud array with ours among others', token: () => sign(es, goodClaims(idp, { aud: ['https://other.test', JWT_AUD, 'x'] })), status: 200 },
    { name: 'aud array with a non-string and ours', token: () => sign(es, goodClaims(idp, { aud: [5, JWT_AUD] })), status: 200 },
    { name: 'aud missing', token: () => sign(es, goodClaims(idp, { aud: undefined })), status: 401, reason: 'token_bad_audience' },
    { name: 'aud empty array', token: () => sign(es, goodClaims(idp, { aud: [] })), status: 401, reason: 'token_bad_audience' },
    { name: 'aud as our URL with a trailing slash', token: () => sign(es, goodClaims(idp, { aud: `${JWT_AUD}/` })), status: 401, reason: 'token_bad_audience' },
    { name: 'nbf as a string', token: () => sign(es, goodClaims(idp, { nbf: String(now - 10) })), status: 401, reason: 'token_bad_claims' },
    { name: 'exp as a string', token: () => sign(es, goodClaims(idp, { exp: String(now + 300) })), status: 401, reason: 'token_bad_claims' },
    { name: 'exp as a far-future string', token: () => sign(es, goodClaims(idp, { exp: '99999999999' })), status: 401, reason: 'token_bad_claims' },
    { name: 'exp true', token: () => sign(es, goodClaims(idp, { exp: true })), status: 401, reason: 'token_bad_claims' },
    { name: 'iat as a string', token: () => sign(es, goodClaims(idp, { iat: String(now) })), status: 401, reason: 'token_bad_claims' },
    { name: 'header alg ES256 with the kid of the RS256 key', token: () => sign(es, goodClaims(idp), { kid: rs.kid }), status: 401 },
    { name: 'RS256 key signing under the ES256 kid', token: () => sign(rs, goodClaims(idp), { kid: es.kid }), status: 401 },
    { name: 'no kid at all (key chosen by alg)', token: () => sign(es, goodClaims(idp), { kid: undefined }), status: 200 },
    { name: 'iss with a trailing slash', token: () => sign(es, goodClaims(idp, { iss: `${idp.issuer}/` })), status: 401, reason: 'token_unknown_issuer' },
    { name: 'iss upper-case scheme', token: () => sign(es, goodClaims(idp, { iss: idp.issuer.replace('http', 'HTTP') })), status: 401, reason: 'token_unknown_issuer' },
  ];
  for (const c of cases) {
    const before = up.seen.length;
    const res = await gw.request({ path: '/admin', headers: bearer(await c.token()) });
    t.equal(res.status, c.status, `${c.name}: ${c.status}`);
    t.equal(up.seen.length, before + (c.status === 200 ? 1 : 0), `${c.name}: upstream reached only when allowed`);
    if (c.reason) t.equal(lastAccess(gw)?.reason, c.reason, `${c.name}: ${c.reason}`);
  }
});

t.test('iat in the future: accepted as documented (clock_skew covers exp and nbf; exp still bounds the token)', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const now = nowSec();
  const res = await gw.request({ path: '/admin', headers: bearer(await sign(es, goodClaims(idp, { iat: now + 3600, exp: now + 7200 }))) });
  t.equal(res.status, 200, 'iat is only type-checked, as jose does without maxTokenAge');
  const late = await gw.request({ path: '/admin', headers: bearer(await sign(es, goodClaims(idp, { iat: now + 3600, nbf: now + 3600, exp: now + 7200 }))) });
  t.equal(late.status, 401, 'an nbf in the future is refused');
  t.equal(up.seen.length, 1, 'only the first reached the upstream');
});

t.test('typ header: the README does not promise a check; observed behaviour recorded', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  for (const typ of ['JWT', 'at+jwt', 'application/at+jwt', 'dpop+jwt', 'logout+jwt']) {
    const status = (await gw.request({ path: '/admin', headers: bearer(await sign(es, goodClaims(idp), { typ })) })).status;
    t.comment(`typ ${typ}: ${status}`);
    t.equal(status, 200, `typ ${typ} is not checked (README is silent)`);
  }
});

t.test('identity values with CR/LF, NUL, non-ASCII, lone surrogates: no split, no fail-open', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const cases: Array<{ name: string; sub: string; email: string; roles: string[] }> = [
    { name: 'CRLF header injection in sub', sub: 'alice\r\nX-Auth-Roles: admin', email: 'a@b.test\r\n\r\nGET /admin HTTP/1.1', roles: ['user\r\nx-auth-roles: admin'] },
    { name: 'bare LF / CR', sub: 'bob\nx-injected: 1', email: 'c@d.test\rx-injected: 2', roles: ['user'] },
    { name: 'NUL', sub: 'eve\u0000root', email: 'e\u0000@f.test', roles: ['user\u0000admin'] },
    { name: 'non-ASCII', sub: 'ünï€😀', email: 'ü@x.test', roles: ['rôle', 'user'] },
    { name: 'DEL and C1', sub: 'del\u007f\u0085', email: 'x@y.test', roles: ['user\u0085'] },
  ];
  for (const c of cases) {
    const token = await sign(es, goodClaims(idp, { sub: c.sub, email: c.email, realm_access: { roles: c.roles } }));
    const before = up.seen.length;
    t.equal((await gw.request({ path: '/admin', headers: bearer(token) })).status, 403, `${c.name}: no admin`);
    const res = await gw.request({ path: '/orders', headers: bearer(token) });
    t.equal(res.status, 200, `${c.name}: authenticated route served`);
    t.equal(up.seen.length, before + 1, `${c.name}: exactly one upstream request (no split)`);
    const seen = up.seen.at(-1)!;
    t.equal(seen.url, '/orders');
    t.same(raw(seen, 'x-auth-user'), [encodeURIComponent(c.sub)], `${c.name}: one X-Auth-User, encoded`);
    t.equal(decodeURIComponent(raw(seen, 'x-auth-user')[0]!), c.sub, `${c.name}: decodes to the verified sub`);
    t.equal(decodeURIComponent(raw(seen, 'x-auth-email')[0]!), c.email, `${c.name}: decodes to the verified email`);
    t.same(raw(seen, 'x-auth-roles').length, 1, `${c.name}: one X-Auth-Roles`);
    t.same(appRoles(raw(seen, 'x-auth-roles')[0]), c.roles, `${c.name}: the verified roles, no extra`);
    t.same(raw(seen, 'x-injected'), [], `${c.name}: no injected header`);
  }
  // A lone UTF-16 surrogate is legal JSON ("\ud800") and cannot be percent-encoded by encodeURIComponent.
  const lone = await sign(es, goodClaims(idp, { sub: 'x\ud800y', realm_access: { roles: ['user'] } }));
  const before = up.seen.length;
  const r1 = await gw.request({ path: '/orders', headers: bearer(lone) });
  t.comment(`lone surrogate in sub: status ${r1.status}; access log ${JSON.stringify(lastAccess(gw))}`);
  t.comment(`error lines: ${JSON.stringify(gw.logs.filter((l) => l.type !== 'access').slice(-3))}`);
  t.ok(r1.status === 200 || (r1.status >= 400 && r1.status < 600), 'answered, not hung');
  if (r1.status === 200) t.notOk(/[\ud800-\udfff]/.test(String(up.seen.at(-1)!.headers['x-auth-user'])), 'no raw surrogate forwarded');
  else t.equal(up.seen.length, before, 'refused before the upstream');
  t.ok(r1.status === 200 || r1.status === 401 || r1.status === 400, `a lone surrogate is handled as a token problem or encoded, not an internal error (got ${r1.status})`);
  // The gateway still serves afterwards.
  t.equal((await gw.request({ path: '/orders', headers: bearer(await sign(es, withRoles(['user']))) })).status, 200, 'gateway still healthy');
});

t.test('very long identity values: never fail open, upstream app never sees a truncated identity', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  // ~1700 chars of € each: the token stays under 8 KiB, the encoded headers exceed Node's 16 KiB.
  const big = '€'.repeat(850);
  const token = await sign(es, goodClaims(idp, { sub: big, email: big, realm_access: { roles: ['user'] } }));
  t.ok(token.length < 8192, `token fits (${token.length})`);
  const before = up.seen.length;
  const res = await gw.request({ path: '/admin', headers: bearer(token) });
  t.equal(res.status, 403, 'still no admin');
  const res2 = await gw.request({ path: '/orders', headers: bearer(token) });
  t.comment(`long identity on /orders: ${res2.status}, upstream saw ${up.seen.length - before}; access log ${JSON.stringify(lastAccess(gw))}`);
  if (up.seen.length > before) {
    t.equal(decodeURIComponent(String(up.seen.at(-1)!.headers['x-auth-user'])), big, 'the full subject, not truncated');
  } else {
    t.ok(res2.status >= 400, 'refused, not served without identity');
  }
  t.equal((await gw.request({ path: '/orders', headers: bearer(await sign(es, withRoles(['user']))) })).status, 200, 'gateway still healthy');
});

t.test('key files: local development CA in a fresh tls.storage through the real gateway', async (t) => {
  const up = await startUpstream(t);
  const base = mkdtempSync(join(tmpdir(), 'pc-claims-store-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  const storage = join(base, 'nested', 'certs');
  const yaml = policyYaml(idp.issuer, up.origin).replace(/^auth:/m, `tls:\n  storage: ${storage}\nauth:`);
  const gw = await startGateway(t, yaml);
  t.equal((await gw.request({ path: '/health' })).status, 200, 'served with the local CA');
  const mode = (p: string): number => statSync(p).mode & 0o777;
  t.equal(mode(storage), 0o700, 'tls.storage created 0700');
  t.equal(mode(join(base, 'nested')), 0o700, 'missing parent created 0700');
  t.equal(mode(join(storage, 'local-ca')), 0o700, 'local-ca/ 0700');
  t.equal(mode(join(storage, 'local-ca', 'root.key')), 0o600, 'root.key 0600');
  t.equal(mode(join(storage, 'local')), 0o700, 'local/ 0700');
  t.equal(mode(join(storage, 'local', 'leaf.key')), 0o600, 'leaf.key 0600');
});

t.test('key files: a pre-existing world-readable leaf key is replaced 0600 on re-issue; umask 000 does not loosen', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pc-claims-ca-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const old = process.umask(0);
  try {
    await ensureLocalCertificate(dir, ['a.test']);
    chmodSync(join(dir, 'local', 'leaf.key'), 0o644);
    writeFileSync(join(dir, 'local', 'leaf.crt'), 'garbage'); // forces a re-issue
    const again = await ensureLocalCertificate(dir, ['a.test']);
    t.equal(again.issued, true);
    t.equal(statSync(join(dir, 'local', 'leaf.key')).mode & 0o777, 0o600, 'leaf.key back to 0600');
    t.equal(statSync(join(dir, 'local-ca', 'root.key')).mode & 0o777, 0o600);
    t.equal(statSync(join(dir, 'local')).mode & 0o777, 0o700, 'local/ 0700 even with umask 000');

    const store = new AcmeStorage(join(dir, 'fresh'), 'https://acme.example/directory');
    await store.saveAccountKey('-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n');
    await store.saveAccountUrl('https://acme.example/directory', 'https://acme.example/acct/1');
    t.equal(statSync(join(store.dir, 'account.key')).mode & 0o777, 0o600, 'account.key 0600');
    t.equal(statSync(join(store.dir, 'account.json')).mode & 0o777, 0o600, 'account.json 0600');
    for (const d of [join(dir, 'fresh'), join(dir, 'fresh', 'acme'), store.dir]) {
      t.equal(statSync(d).mode & 0o777, 0o700, `${d.slice(dir.length)} 0700 even with umask 000`);
    }
  } finally {
    process.umask(old);
  }
});
