// On-disk state: atomic writes with exact modes, and every way a stored file can be wrong.
import t from 'tap';
import { mkdtempSync, rmSync, readdirSync, statSync, writeFileSync, readFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AcmeStorage, certValidity } from '../../src/acme/storage.js';
import { writeFileAtomic } from '../../src/tls/atomic.js';
import { makeCert } from './support.js';

const DIR_URL = 'https://ca.example:14000/dir';
const HOSTS = ['app.test', 'www.app.test'];
const DAY = 86_400_000;

function tmp(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'acme-store-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

const cert = await makeCert({ hosts: HOSTS, notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + 89 * DAY) });
const other = await makeCert({ hosts: ['other.test'], notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + 89 * DAY) });
const stored = { ...cert, hosts: HOSTS, ...certValidity(cert.certPem) };

t.test('writeFileAtomic: exact mode despite umask, replaces, leaves no temp file', async (t) => {
  const d = tmp(t);
  const f = join(d, 'k.pem');
  await writeFileAtomic(f, 'one', 0o600);
  t.equal(statSync(f).mode & 0o777, 0o600);
  writeFileSync(join(d, 'x'), '');
  await writeFileAtomic(f, 'two', 0o644);
  t.equal(readFileSync(f, 'utf8'), 'two');
  t.equal(statSync(f).mode & 0o777, 0o644);
  t.same(readdirSync(d).sort(), ['k.pem', 'x']);
  // A symlink planted at the destination is replaced, never written through.
  const target = join(d, 'target');
  writeFileSync(target, 'precious');
  const link = join(d, 'link.pem');
  symlinkSync(target, link);
  await writeFileAtomic(link, 'new', 0o600);
  t.equal(readFileSync(target, 'utf8'), 'precious', 'symlink target untouched');
  t.equal(readFileSync(link, 'utf8'), 'new');
  await writeFileAtomic(join(d, 'missing-dir', 'f'), 'x', 0o600);
  t.equal(statSync(join(d, 'missing-dir')).mode & 0o777, 0o700, 'a missing directory is created private');
});

t.test('site round trip; layout and modes', async (t) => {
  const s = new AcmeStorage(tmp(t), DIR_URL);
  t.match(await s.loadSite('app', HOSTS), { kind: 'missing' });
  await s.saveSite('app', stored);
  t.match(s.dir, /acme\/ca\.example_14000$/);
  t.same(readdirSync(s.dir).sort(), ['app.crt', 'app.json', 'app.key']);
  t.equal(statSync(join(s.dir, 'app.key')).mode & 0o777, 0o600);
  t.equal(statSync(s.dir).mode & 0o777, 0o700);
  const r = await s.loadSite('app', ['www.app.test', 'app.test']);
  t.equal(r.kind, 'ok', 'host order does not matter');
  if (r.kind === 'ok') {
    t.equal(r.cert.certPem, cert.certPem);
    t.equal(r.cert.notAfter, stored.notAfter);
  }
  const changed = await s.loadSite('app', ['app.test', 'new.app.test']);
  t.equal(changed.kind, 'hosts_changed');
  // Site ids are file names only after sanitising: no escaping the folder.
  await s.saveSite('../evil', stored);
  t.notOk(readdirSync(join(s.dir, '..')).some((n) => n.includes('evil')), 'nothing written outside the CA folder');
  t.equal((await s.loadSite('../evil', HOSTS)).kind, 'ok');
});

t.test('every kind of bad stored file is reported, never thrown', async (t) => {
  const cases: [string, (s: AcmeStorage) => void, RegExp, RegExp][] = [
    ['cert garbage', (s) => writeFileSync(s.siteFiles('app').crt, 'garbage'), /app\.crt$/, /unparseable/],
    ['cert empty', (s) => writeFileSync(s.siteFiles('app').crt, ''), /app\.crt$/, /unparseable/],
    ['key garbage', (s) => writeFileSync(s.siteFiles('app').key, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n'), /app\.key$/, /unparseable key/],
    ['key of another cert', (s) => writeFileSync(s.siteFiles('app').key, other.keyPem), /app\.key$/, /does not match/],
    ['cert of another key', (s) => writeFileSync(s.siteFiles('app').crt, other.certPem), /app\.key$/, /does not match/],
    ['json garbage', (s) => writeFileSync(s.siteFiles('app').json, '{'), /app\.json$/, /unparseable/],
    ['json wrong notAfter', (s) => writeFileSync(s.siteFiles('app').json, JSON.stringify({ hosts: HOSTS, notAfter: 1 })), /app\.json$/, /does not describe/],
    ['json hosts not SANs', (s) => writeFileSync(s.siteFiles('app').json, JSON.stringify({ hosts: ['x.test'], notAfter: stored.notAfter })), /app\.json$/, /differ/],
    ['json hosts not strings', (s) => writeFileSync(s.siteFiles('app').json, JSON.stringify({ hosts: [1], notAfter: stored.notAfter })), /app\.json$/, /does not describe/],
    ['key missing', (s) => rmSync(s.siteFiles('app').key), /app\.key$/, /missing/],
    ['json missing', (s) => rmSync(s.siteFiles('app').json), /app\.json$/, /missing/],
  ];
  for (const [name, damage, file, reason] of cases) {
    const s = new AcmeStorage(tmp(t), DIR_URL);
    await s.saveSite('app', stored);
    damage(s);
    t.match(await s.loadSite('app', HOSTS), { kind: 'invalid', file, reason }, name);
  }
});

t.test('account key and URL', async (t) => {
  const s = new AcmeStorage(tmp(t), DIR_URL);
  const problems: string[] = [];
  const onInvalid = (file: string, reason: string): void => { problems.push(`${file}: ${reason}`); };
  t.equal(await s.loadAccountKey(onInvalid), null);
  await s.saveAccountKey(cert.keyPem);
  t.equal(statSync(join(s.dir, 'account.key')).mode & 0o777, 0o600);
  t.equal(await s.loadAccountKey(onInvalid), cert.keyPem);
  await s.saveAccountUrl(DIR_URL, 'https://ca.example:14000/acct/1');
  t.equal(await s.loadAccountUrl(DIR_URL, onInvalid), 'https://ca.example:14000/acct/1');
  t.equal(await s.loadAccountUrl('https://ca.example:14000/other-profile', onInvalid), null, 'URL of another directory is not reused');
  await s.clearAccountUrl();
  t.equal(await s.loadAccountUrl(DIR_URL, onInvalid), null);
  t.same(problems, []);

  writeFileSync(join(s.dir, 'account.key'), 'not a key');
  writeFileSync(join(s.dir, 'account.json'), '{"url": 5}');
  t.equal(await s.loadAccountKey(onInvalid), null);
  t.equal(await s.loadAccountUrl(DIR_URL, onInvalid), null);
  t.match(problems, [/account\.key: /, /account\.json: no account url/]);
});
