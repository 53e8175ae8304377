// Attacks on how `workers: N` hand their configuration to the workers (LoadResult.inputs: the text
// the primary validated, the environment variables and the files it read). The promise: a worker —
// also one started later to replace a crashed one — runs exactly what the primary validated, never
// what the disk or the environment says now; a refused reload changes nothing anywhere; secrets never
// reach a log line; restart-only settings are warned about truthfully.
// The gateway runs as a real child process (`node dist/cli.js start`), as the image runs it.
// Eight defects when written, all fixed: a worker read an issuer's ca_bundle from disk (a removed
// or rewritten bundle broke or split a replacement; a bundle renewed in place was never applied,
// since only its path was compared); the primary warned about restart-only settings against the
// last file, not what runs; a refused reload had already installed its certificates (one process:
// served; workers: in the primary's expiry metric); a withdrawn ACME certificate came back in a
// replacement; a replacement issued its own local-CA leaf after a refused reload.
import t from 'tap';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { httpsRequest, sleep, startUpstream, until, type ClientResponse, type Tap } from '../helpers/gateway.js';
import { alive, childrenOf } from '../helpers/processes.js';
import { createTestCa, type TestCa } from '../tls/helpers.js';
import { CLI_SKIP, parseExposition, pick, scrape, spawnCli, type CliProcess } from '../ops-e2e/_support.js';
import { freePort, startPebble } from '../helpers/pebble-harness.mjs';

if (CLI_SKIP) throw new Error(CLI_SKIP);

type Log = Record<string, unknown>;

const isReloaded = (l: Log): boolean => l.msg === 'configuration reloaded';
const isRejected = (l: Log): boolean => l.msg === 'configuration rejected; the previous configuration keeps serving';
const isListening = (l: Log): boolean => l.msg === 'worker listening';

interface Gw {
  readonly cli: CliProcess;
  readonly dir: string;
  readonly file: string;
  readonly port: number;
  readonly admin: number | null;
  logs(): Log[];
  count(test: (l: Log) => boolean): number;
  workerPids(): Map<number, number>;
  /** Writes `text` (unless null) and sends SIGHUP; resolves once the gateway said reloaded/rejected. */
  reload(text: string | null): Promise<'reloaded' | 'rejected'>;
  get(path: string, headers?: Record<string, string>): Promise<ClientResponse>;
  /** Kills worker `id` and waits for its replacement to listen; returns the replacement's id. */
  replace(id: number): Promise<number>;
}

async function startGw(
  t: Tap,
  conf: (dir: string) => string,
  opts: { env?: (dir: string) => Record<string, string>; ca?: (dir: string) => string; workers?: number; prepare?: (dir: string) => void | Promise<void> } = {},
): Promise<Gw> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-cluster-inputs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await opts.prepare?.(dir);
  const file = join(dir, 'gw.yml');
  writeFileSync(file, conf(dir));
  const cli = spawnCli(t, ['start', '--config', file], opts.env?.(dir) ?? {}, { gracefulStop: true });
  const started = await cli.waitForLog((l) => l.msg === 'portcullis started', 60_000);
  const workers = opts.workers ?? 2;
  if (workers > 1) await cli.waitForLog(() => cli.logs().filter(isListening).length >= workers, 30_000);
  const ca = opts.ca?.(dir) ?? readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  const port = (started.https as { port: number }).port;
  const admin = (started.admin as { port: number } | null)?.port ?? null;
  const count = (test: (l: Log) => boolean): number => cli.logs().filter(test).length;
  const gw: Gw = {
    cli,
    dir,
    file,
    port,
    admin,
    logs: () => cli.logs(),
    count,
    workerPids: () => new Map(cli.logs().filter(isListening).map((l) => [l.worker as number, l.pid as number])),
    async reload(text) {
      const ok = count(isReloaded);
      const bad = count(isRejected);
      if (text !== null) writeFileSync(file, text);
      cli.child.kill('SIGHUP');
      await cli.waitForLog(() => count(isReloaded) > ok || count(isRejected) > bad, 30_000);
      return count(isReloaded) > ok ? 'reloaded' : 'rejected';
    },
    get: (path, headers = {}) => httpsRequest(port, ca, { path, headers: { accept: 'application/json', ...headers } }),
    async replace(id) {
      const before = Math.max(...gw.workerPids().keys());
      process.kill(gw.workerPids().get(id)!, 'SIGKILL');
      const outcome = await Promise.race([
        cli.waitForLog((l) => isListening(l) && (l.worker as number) > before, 15_000).then(
          (l) => l.worker as number,
          () => 'no replacement listening within 15 s' as const,
        ),
        cli.exited.then((e) => `gateway exited ${String(e.code ?? e.signal)}` as const),
      ]);
      if (typeof outcome !== 'number') {
        const exits = count((l) => l.msg === 'worker exited unexpectedly');
        const err = cli.stderr().split('\n').filter(Boolean).slice(0, 2).join(' | ');
        throw new Error(`worker ${id} was not replaced: ${outcome}; worker exits: ${exits}; stderr: ${err}`);
      }
      return outcome;
    },
  };
  return gw;
}

/** Access lines of requests whose path starts with `prefix`, since log index `from`. */
const access = (gw: Gw, prefix: string, from = 0): Log[] =>
  gw.logs().slice(from).filter((l) => l.type === 'access' && typeof l.path === 'string' && l.path.startsWith(prefix));

/** `n` requests, each on its own TLS connection (the cluster hands connections round robin). */
async function fresh(gw: Gw, path: string, n: number, headers: Record<string, string> | ((i: number) => Record<string, string>) = {}): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const h = typeof headers === 'function' ? headers(i) : headers;
    out.push((await gw.get(`${path}${path.includes('?') ? '&' : '?'}i=${i}`, h)).status);
  }
  return out;
}

/** Waits for the access lines of `n` requests under `prefix` since `from`; their workers. */
async function servedBy(gw: Gw, prefix: string, from: number, n: number): Promise<number[]> {
  await until(() => access(gw, prefix, from).length >= n, 5_000);
  return [...new Set(access(gw, prefix, from).map((l) => l.worker as number))].sort();
}

function site(dir: string, upstream: string, extra = '', listen = '{ https: 127.0.0.1:0, http: null, admin: null }', hosts = '[app.test]', workers = 2): string {
  return `listen: ${listen}
workers: ${workers}
shutdown_grace: 3s
tls: { storage: ${join(dir, 'certs')} }
${extra}sites:
  - hosts: ${hosts}
    upstream: ${upstream}
    routes: [{ path: /, access: public }]
`;
}

const withCerts = (yaml: string, dir: string, certs: string): string => yaml.replace(`tls: { storage: ${join(dir, 'certs')} }`, `tls: { storage: ${join(dir, 'certs')}, certificates: ${certs} }`);

/** The serial of the certificate served for `host` on one fresh connection (whoever issued it). */
function servedSerial(port: number, host: string): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: host, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => {
      resolve(s.getPeerCertificate().serialNumber);
      s.destroy();
    });
    s.on('error', (err) => resolve(`error:${err.message}`));
  });
}

/** Serials of the certificate served for `host` over `n` fresh connections (one per connection: round robin over the workers). */
async function serials(gw: Gw, host: string, _ca: string, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(await servedSerial(gw.port, host));
  return out;
}

// ---------------------------------------------------------------------------------------------
// An issuer's ca_bundle: a file the configuration names, like a secret file or a certificate
// ---------------------------------------------------------------------------------------------

/** An OpenID issuer over HTTPS (its certificate from `ca`), serving a JWKS and signing tokens. */
async function startHttpsIssuer(t: Tap, ca: TestCa): Promise<{ issuer: string; jwksUri: string; token(sub: string): Promise<string>; fetches: () => number }> {
  const leaf = await ca.issue({ dns: ['localhost'], ips: ['127.0.0.1'] });
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), alg: 'ES256', use: 'sig', kid: 'inputs-1' };
  let fetches = 0;
  let issuer = '';
  const server = https.createServer({ cert: leaf.certPem, key: leaf.keyPem }, (req, res) => {
    if (req.url === '/jwks.json') {
      fetches++;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
    } else if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks.json` }));
    } else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  issuer = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    issuer,
    jwksUri: `${issuer}/jwks.json`,
    fetches: () => fetches,
    token: (sub) =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'at+jwt' })
        .setIssuer(issuer)
        .setAudience('inputs-api')
        .setSubject(sub)
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(privateKey),
  };
}

function authSite(dir: string, upstream: string, issuer: string, jwksUri: string, caBundle: string): string {
  return `listen: { https: 127.0.0.1:0, http: null, admin: null }
workers: 2
shutdown_grace: 3s
tls: { storage: ${join(dir, 'certs')} }
auth:
  issuers:
    - issuer: ${issuer}
      audiences: [inputs-api]
      algorithms: [ES256]
      jwks_uri: ${jwksUri}
      ca_bundle: ${caBundle}
sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes: [{ path: /, access: authenticated }]
`;
}

t.test('an auth issuer\'s ca_bundle removed after start (nothing reloaded), then one worker crash: the replacement runs the validated bundle, the gateway keeps serving', async (t) => {
  const up = await startUpstream(t);
  const idpCa = await createTestCa('IdP CA');
  const idp = await startHttpsIssuer(t, idpCa);
  let bundle = '';
  const gw = await startGw(t, (d) => {
    bundle = join(d, 'idp-ca.pem');
    writeFileSync(bundle, idpCa.certPem);
    return authSite(d, up.origin, idp.issuer, idp.jwksUri, bundle);
  });
  const token = await idp.token('alice');
  const from = gw.logs().length;
  t.same(await fresh(gw, '/before', 4, { authorization: `Bearer ${token}` }), [200, 200, 200, 200], 'tokens verify on both workers (JWKS over HTTPS with the bundle)');
  t.same(await servedBy(gw, '/before', from, 4), [1, 2]);

  // The bundle was read when the configuration was validated; the mount goes away (a config map
  // updated, a cleaned-up directory). Nothing asks the gateway to reload. A worker then crashes.
  rmSync(bundle);
  let replacement: number | string;
  try {
    replacement = await gw.replace(1);
  } catch (err) {
    replacement = (err as Error).message;
  }
  t.type(replacement, 'number', `the crashed worker is replaced (${String(replacement)})`);
  // A replacement that cannot start is replaced in turn: 5 exits within a minute stop the gateway.
  const later = await Promise.race([gw.cli.exited.then((e) => `exited ${String(e.code ?? e.signal)}`), sleep(typeof replacement === 'number' ? 0 : 10_000).then(() => 'running')]);
  t.equal(later, 'running', `one crashed worker does not take the gateway down (${gw.count((l) => l.msg === 'worker exited unexpectedly')} worker exits)`);
  t.notOk(/\n\s+at /.test(gw.cli.stderr()), `no stack trace on stderr: ${gw.cli.stderr().slice(0, 200)}`);
  if (typeof replacement === 'number') {
    const mark = gw.logs().length;
    t.same(await fresh(gw, '/after', 4, { authorization: `Bearer ${token}` }), [200, 200, 200, 200], 'every worker verifies tokens with the validated bundle');
    t.same(await servedBy(gw, '/after', mark, 4), [2, replacement].sort());
  }
});

t.test('an auth issuer\'s ca_bundle rewritten on disk (not reloaded), then one worker crash: the replacement trusts what its sibling trusts, not the new file', async (t) => {
  const up = await startUpstream(t);
  const idpCa = await createTestCa('IdP CA');
  const idp = await startHttpsIssuer(t, idpCa);
  const other = await createTestCa('Some other CA');
  let bundle = '';
  const gw = await startGw(t, (d) => {
    bundle = join(d, 'idp-ca.pem');
    writeFileSync(bundle, idpCa.certPem);
    return authSite(d, up.origin, idp.issuer, idp.jwksUri, bundle);
  });
  const token = await idp.token('alice');
  t.same(await fresh(gw, '/before', 2, { authorization: `Bearer ${token}` }), [200, 200]);
  // The operator stages the IdP's next CA in the file (the reload comes later, with the IdP's switch).
  writeFileSync(bundle, other.certPem);
  const replacement = await gw.replace(1);
  const mark = gw.logs().length;
  const got = await fresh(gw, '/after', 6, { authorization: `Bearer ${await idp.token('bob')}` });
  const by = await servedBy(gw, '/after', mark, 6);
  const lines = access(gw, '/after', mark).map((l) => `w${String(l.worker)}:${String(l.status)}`);
  t.same(by, [2, replacement].sort(), 'both workers served');
  t.same(got, Array(6).fill(200), `one trust store on every worker: the configuration in force (got ${lines.join(' ')})`);
});

// ---------------------------------------------------------------------------------------------
// Restart-only settings: the warning says whether the file differs from what runs
// ---------------------------------------------------------------------------------------------

const LIMITS_WARNING = /^limits\.max_header_size, limits\.headers_timeout or limits\.request_timeout changed/;

for (const workers of [2, 1]) {
  t.test(
    `workers: ${workers}: restart-only warnings follow what runs: a change warns, a reload keeping it warns again (still not in force), a reload changing it back does not`,
    async (t) => {
      const up = await startUpstream(t);
      let dir = '';
      const conf = (size: string): string => site(dir, up.origin, `limits: { max_header_size: ${size} }\n`, undefined, undefined, workers);
      const gw = await startGw(
        t,
        (d) => {
          dir = d;
          return conf('4kb');
        },
        { workers },
      );
      const warnings = (): number => gw.count((l) => l.level === 'warn' && LIMITS_WARNING.test(String(l.msg)));
      const big = { 'x-padding': 'p'.repeat(8 * 1024) };

      t.equal(await gw.reload(conf('64kb')), 'reloaded');
      await sleep(200);
      t.equal(warnings(), 1, 'the change is said to need a restart');
      t.same(await fresh(gw, '/big', 2, big), [431, 431], 'not in force');

      // Another SIGHUP (log rotation, an unrelated edit): the file still asks for 64kb, the
      // gateway still runs 4kb. Saying it once more is what keeps the operator from believing it applied.
      t.equal(await gw.reload(null), 'reloaded');
      await sleep(200);
      t.equal(warnings(), 2, `a reload whose file still differs from what runs warns again (warnings: ${warnings()})`);

      // The operator reverts the edit: the file now says what runs; nothing needs a restart.
      const before = warnings();
      t.equal(await gw.reload(conf('4kb')), 'reloaded');
      await sleep(200);
      t.equal(warnings() - before, 0, `changing it back to what runs is no change needing a restart (new warnings: ${warnings() - before})`);

      if (workers === 2) {
        const n = warnings();
        await gw.replace(1);
        t.same(await fresh(gw, '/after', 4, big), [431, 431, 431, 431], 'the replacement runs the start value too');
        t.equal(warnings(), n, 'a replacement does not warn');
      } else {
        t.same(await fresh(gw, '/after', 2, big), [431, 431]);
      }
    },
  );
}

// ---------------------------------------------------------------------------------------------
// A refused reload changes nothing: not the certificates served, not what the metrics report
// ---------------------------------------------------------------------------------------------

const DAY = 86_400_000;

for (const workers of [1, 2]) {
  t.test(
    `workers: ${workers}: renewed certificate files in a reload refused for another reason (security_file is a directory): the old certificate stays, everywhere${workers === 2 ? ', also in the expiry metric and in a replacement' : ''}`,
    async (t) => {
      const up = await startUpstream(t);
      const ca = await createTestCa('Files CA');
      const old = await ca.issue({ dns: ['app.test'], notAfter: new Date(Date.now() + 20 * DAY) });
      const renewed = await ca.issue({ dns: ['app.test'], notAfter: new Date(Date.now() + 90 * DAY) });
      const serialOf = (pem: string): string => new X509Certificate(pem).serialNumber;
      let dir = '';
      const conf = (extra = ''): string =>
        withCerts(site(dir, up.origin, extra, '{ https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }', undefined, workers), dir, `[{ cert: ${join(dir, 'app.pem')}, key: ${join(dir, 'app.key')} }]`);
      const gw = await startGw(
        t,
        (d) => {
          dir = d;
          writeFileSync(join(d, 'app.pem'), old.certPem);
          writeFileSync(join(d, 'app.key'), old.keyPem);
          mkdirSync(join(d, 'a-directory'));
          return conf();
        },
        { workers, ca: () => ca.certPem },
      );
      const expiry = async (): Promise<number | undefined> =>
        pick(parseExposition((await scrape(gw.admin!)).body), 'portcullis_tls_certificate_expiry_timestamp_seconds', { host: 'app.test' })[0]?.value;
      t.same(new Set(await serials(gw, 'app.test', ca.certPem, 4)), new Set([serialOf(old.certPem)]), 'the certificate brought is served');
      const oldExpiry = Math.floor(new Date(new X509Certificate(old.certPem).validTo).getTime() / 1000);
      t.equal(await expiry(), oldExpiry, 'the metric reports its notAfter');

      // Renewal day: the new pair is written, and the same edit sets a security_file the gateway
      // cannot open. The reload is refused: "the previous configuration keeps serving".
      writeFileSync(join(dir, 'app.pem'), renewed.certPem);
      writeFileSync(join(dir, 'app.key'), renewed.keyPem);
      t.equal(await gw.reload(conf(`log: { security_file: ${join(dir, 'a-directory')} }\n`)), 'rejected', 'refused (security_file cannot be opened)');

      const served = await serials(gw, 'app.test', ca.certPem, 4);
      t.same(served, Array(4).fill(serialOf(old.certPem)), 'every connection still gets the certificate of the configuration in force');
      if (workers === 2) {
        t.equal(await expiry(), oldExpiry, `the expiry metric (what the certificate expiry alert reads) still reports the served certificate (got ${String(await expiry())}, served notAfter ${oldExpiry})`);
        await gw.replace(1);
        t.same(await serials(gw, 'app.test', ca.certPem, 4), Array(4).fill(serialOf(old.certPem)), 'a replacement serves it too');
      }
      // The operator fixes the edit: now the renewal applies, everywhere.
      t.equal(await gw.reload(conf()), 'reloaded');
      t.same(await serials(gw, 'app.test', ca.certPem, 4), Array(4).fill(serialOf(renewed.certPem)), 'the renewed certificate once the reload is accepted');
    },
  );
}

// ---------------------------------------------------------------------------------------------
// ACME certificates handed to a late worker: only those still in force
// ---------------------------------------------------------------------------------------------

const PEBBLE_SKIP = existsSync('/usr/bin/pebble') ? false : '/usr/bin/pebble is missing: install the Debian package pebble';

t.test('ACME switched off by a reload (a certificate you bring instead): every worker stops serving the ACME certificate, and a replacement never serves it again', { skip: PEBBLE_SKIP }, async (t) => {
  const httpPort = await freePort();
  const pebble = await startPebble({ httpPort });
  t.teardown(() => pebble.stop());
  const pebbleRoot = await pebble.getRootPem();
  const up = await startUpstream(t);
  const own = await createTestCa('Own CA');
  // Shorter-lived than Pebble's: an ACME certificate left in a store would win by its later expiry.
  const mine = await own.issue({ dns: ['a.test'], notAfter: new Date(Date.now() + 3 * DAY) });
  let dir = '';
  const head = (tlsBlock: string): string => `listen: { https: 127.0.0.1:0, http: 127.0.0.1:${httpPort}, admin: null }
workers: 2
shutdown_grace: 3s
tls:
  storage: ${join(dir, 'certs')}
${tlsBlock}sites:
  - { id: a, hosts: [a.test], upstream: ${up.origin}, routes: [{ path: /, access: public }] }
`;
  const acme = (): string => head(`  acme: { email: ops@app.test, directory: ${pebble.directoryUrl}, ca_bundle: ${join(dir, 'pebble-listener.pem')} }\n`);
  const files = (): string => head(`  certificates: [{ cert: ${join(dir, 'a.pem')}, key: ${join(dir, 'a.key')} }]\n`);
  const gw = await startGw(
    t,
    (d) => {
      dir = d;
      writeFileSync(join(d, 'pebble-listener.pem'), pebble.listenerCaPem);
      writeFileSync(join(d, 'a.pem'), mine.certPem);
      writeFileSync(join(d, 'a.key'), mine.keyPem);
      return acme();
    },
    { ca: () => pebbleRoot },
  );
  await gw.cli.waitForLog((l) => l.event === 'cert_issued', 90_000);
  const acmeServed = await serials(gw, 'a.test', pebbleRoot, 4);
  t.equal(new Set(acmeServed).size, 1, 'one ACME certificate on both workers');
  const acmeSerial = acmeServed[0]!;

  // The site moves to a certificate you bring (a key leak at the CA, a policy change): ACME off.
  t.equal(await gw.reload(files()), 'reloaded');
  const mineSerial = new X509Certificate(mine.certPem).serialNumber;
  t.same(await serials(gw, 'a.test', own.certPem, 4), Array(4).fill(mineSerial), 'both workers serve the certificate brought');

  const replacement = await gw.replace(1);
  const after = await serials(gw, 'a.test', own.certPem, 6);
  t.same(
    after,
    Array(6).fill(mineSerial),
    `a replacement (worker ${replacement}) serves what its sibling serves, never the withdrawn ACME certificate (${acmeSerial}): got ${after.join(',')}`,
  );
});

// ---------------------------------------------------------------------------------------------
// Secrets from NAME_FILE: rotated with SIGHUP, one value on every worker, never logged
// ---------------------------------------------------------------------------------------------

t.test('an introspection client_secret from ${NAME_FILE} rotated with SIGHUP: every worker and every replacement sends exactly the secret in force; a refused reload keeps it; no log line holds a secret', async (t) => {
  const up = await startUpstream(t);
  const { publicKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), alg: 'ES256', use: 'sig', kid: 'k1' };
  const sent: string[] = [];
  const idp = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url === '/jwks.json') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
      if (req.url === '/introspect') {
        const basic = Buffer.from(String(req.headers.authorization ?? '').replace(/^Basic /, ''), 'base64').toString('utf8');
        sent.push(decodeURIComponent(basic.slice(basic.indexOf(':') + 1)));
        const token = new URLSearchParams(Buffer.concat(chunks).toString('utf8')).get('token') ?? '';
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ active: true, sub: token, aud: 'inputs-api', iss: issuer, exp: Math.floor(Date.now() / 1000) + 300 }));
      }
      res.writeHead(404).end();
    });
  });
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { idp.closeAllConnections(); idp.close(() => r()); }));
  const issuer = `http://127.0.0.1:${(idp.address() as { port: number }).port}`;
  const secrets = ['first-Secret-3b1f9e6a77c04d2f', 'second-Secret-8d2c4a1b99e3f017', 'third-Secret-5e7a0c3d2b6f4981'];
  let dir = '';
  const conf = (extra = ''): string => `listen: { https: 127.0.0.1:0, http: null, admin: null }
workers: 2
shutdown_grace: 3s
tls: { storage: ${join(dir, 'certs')} }
${extra}auth:
  issuers:
    - issuer: ${issuer}
      audiences: [inputs-api]
      algorithms: [ES256]
      jwks_uri: ${issuer}/jwks.json
      introspection: { endpoint: ${issuer}/introspect, client_id: gw, client_secret: "\${PCX_INPUTS_CLIENT_SECRET}" }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: authenticated }]
`;
  const gw = await startGw(
    t,
    (d) => {
      dir = d;
      writeFileSync(join(d, 'client-secret'), `${secrets[0]}\n`);
      return conf();
    },
    { env: (d) => ({ PCX_INPUTS_CLIENT_SECRET_FILE: join(d, 'client-secret') }) },
  );
  let n = 0;
  /** `count` requests with never-seen opaque tokens (no cache hit): the secrets sent, and who served. */
  const round = async (count: number): Promise<{ statuses: number[]; secrets: string[]; workers: number[] }> => {
    const from = gw.logs().length;
    const s0 = sent.length;
    const prefix = `/r${n++}`;
    const statuses = await fresh(gw, prefix, count, () => ({ authorization: `Bearer opaque-${n}-${Math.random().toString(36).slice(2)}` }));
    return { statuses, secrets: [...new Set(sent.slice(s0))], workers: await servedBy(gw, prefix, from, count) };
  };

  const r0 = await round(4);
  t.same(r0.statuses, [200, 200, 200, 200]);
  t.same(r0.secrets, [secrets[0]], 'both workers introspect with the secret the file held at start');
  t.same(r0.workers, [1, 2]);

  // The secret is rotated (Docker/Kubernetes secret updated), then SIGHUP.
  writeFileSync(join(dir, 'client-secret'), `${secrets[1]}\n`);
  t.equal(await gw.reload(null), 'reloaded');
  const r1 = await round(6);
  t.same(r1.statuses, Array(6).fill(200));
  t.same(r1.secrets, [secrets[1]], 'every worker uses the rotated secret, none the old one');

  const w3 = await gw.replace(1);
  const r2 = await round(6);
  t.same(r2.secrets, [secrets[1]], 'a replacement uses the secret in force');
  t.same(r2.workers, [2, w3]);

  // Rotated again, but the same reload carries a typo: refused, the secret in force stays everywhere.
  writeFileSync(join(dir, 'client-secret'), `${secrets[2]}\n`);
  t.equal(await gw.reload(conf('limitz: {}\n')), 'rejected');
  const r3 = await round(6);
  t.same(r3.secrets, [secrets[1]], 'a refused reload changes the secret nowhere');
  const w4 = await gw.replace(2);
  const r4 = await round(6);
  t.same(r4.secrets, [secrets[1]], 'nor in a replacement started after it');
  t.same(r4.workers, [w3, w4].sort());

  // Nothing the workers got over IPC reaches a log line.
  const all = gw.cli.stdout() + gw.cli.stderr();
  for (const s of secrets) t.notOk(all.includes(s), `the secret ${s.slice(0, 6)}… is in no log line`);
});

// ---------------------------------------------------------------------------------------------
// The local development CA: one certificate on every worker, also on a replacement
// ---------------------------------------------------------------------------------------------

t.test('local CA: a reload adding a host, refused for another reason, then one worker crash: the replacement serves the certificate its sibling serves', async (t) => {
  const up = await startUpstream(t);
  let dir = '';
  const gw = await startGw(t, (d) => {
    dir = d;
    mkdirSync(join(d, 'a-directory'));
    return site(d, up.origin);
  });
  const before = await serials(gw, 'app.test', gw.dir, 4);
  t.equal(new Set(before).size, 1, 'one local certificate on both workers');

  // A host is added, and the same edit names a security_file that cannot be opened: refused.
  t.equal(await gw.reload(site(dir, up.origin, `log: { security_file: ${join(dir, 'a-directory')} }\n`, undefined, '[app.test, new.test]')), 'rejected');
  t.same(await serials(gw, 'app.test', gw.dir, 4), before, 'the refused reload changes no certificate');

  const replacement = await gw.replace(1);
  const after = await serials(gw, 'app.test', gw.dir, 6);
  t.same(after, Array(6).fill(before[0]), `the replacement (worker ${replacement}) serves the same certificate as its sibling (got ${[...new Set(after)].join(', ')}, before ${before[0]})`);
  t.same(await fresh(gw, '/after', 4), [200, 200, 200, 200], 'and clients trusting the local root are served');
});

// ---------------------------------------------------------------------------------------------
// Races: reloads while a replacement starts, SIGTERM during a reload
// ---------------------------------------------------------------------------------------------

/** The child pids of `pid` (Linux /proc). */

t.test('SIGHUPs every 40 ms with alternating files while a crashed worker is being replaced and just after it listens: once they settle, every worker (the replacement too) runs the last file', async (t) => {
  const a = await startUpstream(t);
  const b = await startUpstream(t);
  const c = await startUpstream(t);
  let dir = '';
  const gw = await startGw(t, (d) => {
    dir = d;
    return site(d, a.origin);
  });
  const primary = gw.cli.child.pid!;
  const known = new Set(childrenOf(primary));
  process.kill(gw.workerPids().get(1)!, 'SIGKILL');
  let fresher: number | undefined;
  await until(() => (fresher = childrenOf(primary).find((p) => !known.has(p))) !== undefined, 10_000);
  t.ok(fresher, 'a replacement process was forked');
  // While it starts (hello, snapshot, listen) and just after (its catch-up reload), the file flips
  // between two upstreams, one SIGHUP every 40 ms, ending on c.
  let sighups = 0;
  let after = 0;
  while (after < 6 && sighups < 200) {
    if (gw.count((l) => isListening(l) && l.worker === 3) > 0) after++;
    writeFileSync(gw.file, site(dir, (sighups % 2 === 0 ? b : c).origin));
    gw.cli.child.kill('SIGHUP');
    sighups++;
    await sleep(40);
  }
  if (sighups % 2 === 1) {
    writeFileSync(gw.file, site(dir, c.origin));
    gw.cli.child.kill('SIGHUP');
    sighups++;
  }
  await gw.cli.waitForLog((l) => isListening(l) && (l.worker as number) === 3, 20_000);
  // Settled: each SIGHUP is one reload in the primary's queue.
  await until(() => gw.count((l) => isReloaded(l) || isRejected(l)) >= sighups, 30_000);
  const order = gw.logs().filter((l) => isReloaded(l) || (isListening(l) && l.worker === 3)).map((l) => (isListening(l) ? 'L' : 'R')).join('');
  t.comment(`reloads (R) and the replacement listening (L), in order: ${order}`);
  const seenC = c.seen.length;
  const seenB = b.seen.length;
  const from = gw.logs().length;
  t.same(await fresh(gw, '/settled', 8), Array(8).fill(200));
  t.same(await servedBy(gw, '/settled', from, 8), [2, 3], 'both workers served');
  t.equal(c.seen.length - seenC, 8, `every request reached the last file's upstream (b got ${b.seen.length - seenB}; reloads logged: ${gw.count(isReloaded)}; refused by a worker: ${gw.count((l) => l.msg === 'worker could not apply the configuration: replacing it')})`);
  t.equal(gw.count((l) => l.msg === 'worker could not apply the configuration: replacing it'), 0, 'no worker refused a validated file');
});

t.test('SIGTERM while a reload is being applied (a worker still in its reload): the gateway drains and exits 0, no worker left behind', async (t) => {
  const up = await startUpstream(t);
  const other = await startUpstream(t);
  let dir = '';
  const gw = await startGw(t, (d) => {
    dir = d;
    return site(d, up.origin);
  });
  const workers = [...gw.workerPids().values()];
  writeFileSync(gw.file, site(dir, other.origin));
  gw.cli.child.kill('SIGHUP');
  gw.cli.child.kill('SIGTERM');
  const exit = await Promise.race([gw.cli.exited, sleep(15_000).then(() => null)]);
  t.same(exit, { code: 0, signal: null }, `exit 0 (stderr: ${gw.cli.stderr().split('\n')[0] ?? ''})`);
  t.notOk(/\n\s+at /.test(gw.cli.stderr()), 'no stack trace');
  await until(() => workers.every((p) => !alive(p)), 5_000);
  t.same(workers.filter(alive), [], 'every worker exited');
});

t.test('a certificate file grown to 15 MB (a chain file a script kept appending to, under the 16 MB limit): the workers start, reload and get replaced with it', async (t) => {
  const up = await startUpstream(t);
  const ca = await createTestCa('Big CA');
  const leaf = await ca.issue({ dns: ['app.test'] });
  const junk = `# ${'x'.repeat(1022)}\n`.repeat(15 * 1024);
  let dir = '';
  const conf = (): string => withCerts(site(dir, up.origin), dir, `[{ cert: ${join(dir, 'app.pem')}, key: ${join(dir, 'app.key')} }]`);
  const gw = await startGw(
    t,
    (d) => {
      dir = d;
      writeFileSync(join(d, 'app.pem'), `${leaf.certPem.trimEnd()}\n${junk}`);
      writeFileSync(join(d, 'app.key'), leaf.keyPem);
      return conf();
    },
    { ca: () => ca.certPem },
  );
  const serial = new X509Certificate(leaf.certPem).serialNumber;
  t.same(await serials(gw, 'app.test', ca.certPem, 4), Array(4).fill(serial), 'served by both workers');
  t.equal(await gw.reload(null), 'reloaded', 'a reload carries it to both workers');
  await gw.replace(1);
  t.same(await fresh(gw, '/big-file', 4), [200, 200, 200, 200], 'the replacement got it too');
  t.equal(gw.count((l) => l.msg === 'worker could not apply the configuration: replacing it'), 0);
});

t.test('an issuer\'s ca_bundle renewed in place (the IdP moved to a new CA) and SIGHUP: every worker trusts the new bundle, like a replacement does', async (t) => {
  const up = await startUpstream(t);
  const ca1 = await createTestCa('IdP CA 2025');
  const ca2 = await createTestCa('IdP CA 2026');
  const { publicKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), alg: 'ES256', use: 'sig', kid: 'k1' };
  let issuer = '';
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url === '/jwks.json') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
      if (req.url === '/introspect') {
        const token = new URLSearchParams(Buffer.concat(chunks).toString('utf8')).get('token') ?? '';
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ active: true, sub: token, aud: 'inputs-api', iss: issuer, exp: Math.floor(Date.now() / 1000) + 300 }));
      }
      res.writeHead(404).end();
    });
  };
  const serve = async (ca: TestCa, port = 0): Promise<https.Server> => {
    const leaf = await ca.issue({ ips: ['127.0.0.1'] });
    const s = https.createServer({ cert: leaf.certPem, key: leaf.keyPem }, handler);
    await new Promise<void>((r) => s.listen(port, '127.0.0.1', r));
    return s;
  };
  let idp = await serve(ca1);
  t.teardown(() => new Promise<void>((r) => { idp.closeAllConnections(); idp.close(() => r()); }));
  const port = (idp.address() as { port: number }).port;
  issuer = `https://127.0.0.1:${port}`;
  let dir = '';
  const conf = (): string => `listen: { https: 127.0.0.1:0, http: null, admin: null }
workers: 2
shutdown_grace: 3s
tls: { storage: ${join(dir, 'certs')} }
auth:
  issuers:
    - issuer: ${issuer}
      audiences: [inputs-api]
      algorithms: [ES256]
      jwks_uri: ${issuer}/jwks.json
      ca_bundle: ${join(dir, 'idp-ca.pem')}
      introspection: { endpoint: ${issuer}/introspect, client_id: gw, client_secret: "\${PCX_INPUTS_CS}" }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: authenticated }]
`;
  const gw = await startGw(
    t,
    (d) => {
      dir = d;
      writeFileSync(join(d, 'idp-ca.pem'), ca1.certPem);
      return conf();
    },
    { env: () => ({ PCX_INPUTS_CS: 'cs-0123456789abcdef' }) },
  );
  let n = 0;
  const opaque = (): Record<string, string> => ({ authorization: `Bearer opaque-${n++}-${Math.random().toString(36).slice(2)}` });
  t.same(await fresh(gw, '/before', 4, opaque), [200, 200, 200, 200], 'opaque tokens introspected over HTTPS on both workers');

  // The IdP's certificate now comes from its new CA; the operator renews the bundle file and reloads.
  await new Promise<void>((r) => { idp.closeAllConnections(); idp.close(() => r()); });
  idp = await serve(ca2, port);
  writeFileSync(join(dir, 'idp-ca.pem'), ca2.certPem);
  t.equal(await gw.reload(null), 'reloaded');
  const from = gw.logs().length;
  const got = await fresh(gw, '/renewed', 6, opaque);
  await servedBy(gw, '/renewed', from, 6);
  const lines = access(gw, '/renewed', from).map((l) => `w${String(l.worker)}:${String(l.status)}`);
  t.same(got, Array(6).fill(200), `every worker verifies the IdP with the bundle the reload validated (got ${lines.join(' ')})`);

  const replacement = await gw.replace(1);
  const mark = gw.logs().length;
  const after = await fresh(gw, '/replaced', 6, opaque);
  await servedBy(gw, '/replaced', mark, 6);
  const lines2 = access(gw, '/replaced', mark).map((l) => `w${String(l.worker)}:${String(l.status)}`);
  t.same(after, Array(6).fill(200), `a replacement (worker ${replacement}) and its sibling agree (got ${lines2.join(' ')})`);
});
