// `portcullis audit` against real servers over real TLS: a Portcullis gateway in front of a
// careless app (it sends Server and X-Powered-By, a cookie without flags, a stack trace on
// errors) passes every check, since the gateway fixes all of it, and never forwards what the audit
// throws at it; the same careless app served directly, over a TLS setup that still accepts
// TLS 1.0, fails exactly the checks it should.
import t from 'tap';
import https from 'node:https';
import http from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { main } from '../../src/cli.js';
import { ensureLocalCertificate } from '../../src/tls/local-ca.js';
import { closedPort, silentServer, startGateway, startUpstream } from '../helpers/gateway.js';
import { policyYaml, startIdp } from '../authz/_support.js';

interface Run {
  code: number;
  out: string;
  err: string;
}

async function cli(args: string[]): Promise<Run> {
  let out = '';
  let err = '';
  const code = await main(['audit', ...args], { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

/** The verdict of each check in the text report: `{ tls: 'PASS', … }`. */
function verdicts(out: string): Record<string, string> {
  const v: Record<string, string> = {};
  for (const m of out.matchAll(/^(PASS|WARN|FAIL) {2}(\S+(?: \/\S*)?)\s/gm)) v[m[2]!] = m[1]!;
  return v;
}

const dir = mkdtempSync(join(tmpdir(), 'portcullis-audit-'));

/**
 * A self-signed RSA certificate for app.test: an old TLS 1.0 suite such as Camellia needs an RSA
 * key (the local CA's leaves are ECDSA, whose TLS 1.0 suites every client offers).
 */
async function rsaCertificate(): Promise<{ keyPem: string; certPem: string }> {
  const alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 };
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: '01',
      name: 'CN=app.test',
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 86_400_000),
      keys,
      signingAlgorithm: alg,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'app.test' }]), new x509.BasicConstraintsExtension(true, undefined, true)],
    },
    webcrypto,
  );
  return { keyPem: x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY'), certPem: cert.toString('pem') };
}
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The careless app: what many frameworks answer out of the box. */
function carelessApp(req: http.IncomingMessage, res: http.ServerResponse): void {
  // Two Server fields (a CDN's name, then the app server's): Node's own `headers` keeps the first only.
  const base: Record<string, string | string[]> = { server: ['cloudflare', 'gunicorn/20.1.0'], 'x-powered-by': 'Flask', 'content-type': 'text/html' };
  if (req.method === 'TRACE') {
    res.writeHead(200, { ...base, 'content-type': 'message/http' });
    res.end(`TRACE ${req.url} HTTP/1.1\r\n${Object.entries(req.headers).map(([k, v]) => `${k}: ${String(v)}`).join('\r\n')}\r\n`);
    return;
  }
  if (req.url?.startsWith('/portcullis-audit-')) {
    res.writeHead(500, base);
    res.end(`Traceback (most recent call last):\n  File "/srv/app/views.py", line 12, in show\nKeyError: '${req.url}'\n`);
    return;
  }
  res.writeHead(200, { ...base, 'set-cookie': 'session=abc123; Path=/' });
  res.end('<html>home, and the admin area: open to all</html>');
}

t.test('a gateway in front of a careless app passes every check; the app never sees the forged token or the TRACE', async (t) => {
  const idp = await startIdp();
  t.teardown(() => idp.close());
  const up = await startUpstream(t, carelessApp);
  const yaml = policyYaml(idp.issuer, up.origin).replace('sites:', `headers:\n  content_security_policy: "default-src 'self'"\nsites:`);
  const gw = await startGateway(t, yaml);
  const ca = join(dir, 'gateway-root.crt');
  writeFileSync(ca, gw.ca);
  const r = await cli([
    '--url', `https://app.test:${gw.port}/health`,
    '--connect', '127.0.0.1',
    '--ca', ca,
    '--http-url', `http://app.test:${gw.httpPort}/health`,
    '--protected', '/admin',
    '--protected', '/',
  ]);
  t.equal(r.err, '');
  t.same(verdicts(r.out), {
    tls: 'PASS',
    'certificate-expiry': 'PASS',
    'legacy-tls': 'PASS',
    'http-redirect': 'PASS',
    hsts: 'PASS',
    'server-banner': 'PASS',
    nosniff: 'PASS',
    framing: 'PASS',
    csp: 'PASS',
    'referrer-policy': 'PASS',
    cookies: 'PASS',
    'error-pages': 'PASS',
    trace: 'PASS',
    'protected /admin': 'PASS',
    'protected /': 'PASS',
  }, r.out);
  t.equal(r.code, 0, 'exit 0: nothing failed');
  t.match(r.out, /^PASS {2}legacy-tls +TLS 1\.0 and 1\.1 refused \(protocol_version\)$/m);
  t.match(r.out, /^PASS {2}protected \/admin +without a token 401, unsigned tokens \(alg "none", "None", "NONE", "nOnE"\) 401; real tokens' signature, issuer and audience checks are not tested$/m);
  t.match(r.out, /^PASS {2}cookies +1 cookie, each Secure, HttpOnly and SameSite$/m, "the app's bare cookie, hardened by the gateway");
  t.match(r.out, /\n0 failed, 0 warnings, 15 passed\n$/);
  // What the app saw: the public page only. Never the TRACE, the token-less or forged requests to
  // protected paths, nor the made-up paths (authenticated route: refused at the gateway).
  t.same([...new Set(up.seen.map((s) => `${s.method} ${s.url}`))], ['GET /health']);
  t.notOk(up.seen.some((s) => s.headers.authorization !== undefined), 'no token reached the app');

  const json = await cli(['--url', `https://app.test:${gw.port}/health`, '--connect', '127.0.0.1', '--ca', ca, '--no-http', '--json']);
  const parsed = JSON.parse(json.out) as { findings: { check: string; verdict: string; detail: string }[] };
  t.equal(json.code, 0);
  t.same(parsed.findings.find((f) => f.check === 'http-redirect'), { check: 'http-redirect', verdict: 'warn', detail: 'not checked (--no-http)' });
  t.equal(parsed.findings.filter((f) => f.verdict === 'fail').length, 0);
});

t.test('the same app served directly, TLS 1.0 still on, fails each practice it breaks', async (t) => {
  const leaf = await rsaCertificate();
  // TLS 1.0 and 1.1 kept for an old client, with the one suite it has (Camellia): a handshake
  // offering only OpenSSL's default suites gets handshake_failure, which is no refusal of TLS 1.0.
  const ciphers = 'ECDHE-RSA-AES128-GCM-SHA256:CAMELLIA128-SHA:@SECLEVEL=0';
  const server = https.createServer({ key: leaf.keyPem, cert: leaf.certPem, minVersion: 'TLSv1', ciphers }, carelessApp);
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  // Plain HTTP serving the app too, instead of redirecting.
  const plain = http.createServer(carelessApp);
  await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { plain.closeAllConnections(); plain.close(() => r()); }));
  const ca = join(dir, 'direct-root.crt');
  writeFileSync(ca, leaf.certPem);
  const port = (server.address() as AddressInfo).port;
  const r = await cli([
    '--url', `https://app.test:${port}/`,
    '--connect', '127.0.0.1',
    '--ca', ca,
    '--http-url', `http://app.test:${(plain.address() as AddressInfo).port}/`,
    '--protected', '/admin',
  ]);
  t.same(verdicts(r.out), {
    tls: 'PASS',
    'certificate-expiry': 'PASS',
    'legacy-tls': 'FAIL',
    'http-redirect': 'FAIL',
    hsts: 'FAIL',
    'server-banner': 'FAIL',
    nosniff: 'FAIL',
    framing: 'FAIL',
    csp: 'WARN',
    'referrer-policy': 'WARN',
    cookies: 'FAIL',
    'error-pages': 'FAIL',
    trace: 'FAIL',
    'protected /admin': 'FAIL',
  }, r.out);
  t.equal(r.code, 1, 'exit 1: checks failed');
  t.match(r.out, /^FAIL {2}legacy-tls +accepts TLSv1 and TLSv1\.1/m);
  t.match(r.out, /^FAIL {2}server-banner +answers name their software: server: cloudflare, gunicorn\/20\.1\.0; x-powered-by: Flask/m, 'the second Server field is read');
  t.match(r.out, /^FAIL {2}error-pages +error answers leak internals: missing path \(500\): a Python traceback; missing path \(500\): a server file path/m);
  t.match(r.out, /^FAIL {2}trace +TRACE answered 200, echoing the request/m);
  t.match(r.out, /^FAIL {2}cookies +session without Secure; session without HttpOnly; session without SameSite/m);
  t.match(r.out, /^FAIL {2}protected \/admin +not refused without a token: 200, with an unsigned token \(alg "none"\): 200, with an unsigned token \(alg "None"\): 200/m);

  // Without --ca the private root is not trusted: that alone fails, and nothing crashes.
  const untrusted = await cli(['--url', `https://app.test:${port}/`, '--connect', '127.0.0.1', '--no-http']);
  t.match(untrusted.out, /^FAIL {2}tls +the certificate is not trusted for app\.test: /m);
  // A name the certificate does not carry.
  const wrongName = await cli(['--url', `https://other.test:${port}/`, '--connect', '127.0.0.1', '--ca', ca, '--no-http']);
  t.match(wrongName.out, /^FAIL {2}tls +the certificate is not trusted for other\.test: .*other\.test.*DNS:app\.test/m);
  // TLS 1.0 on with an ECDSA certificate and no suite for it: the server cannot speak TLS 1.0, but
  // its handshake_failure is no protocol_version either, so it is not known, not passed.
  const ecdsa = await ensureLocalCertificate(join(dir, 'direct'), ['app.test']);
  const noSuite = https.createServer({ key: ecdsa.keyPem, cert: ecdsa.certPem, minVersion: 'TLSv1', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0' }, carelessApp);
  noSuite.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => noSuite.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { noSuite.closeAllConnections(); noSuite.close(() => r()); }));
  writeFileSync(join(dir, 'direct-ecdsa-root.crt'), ecdsa.rootPem);
  const unclear = await cli(['--url', `https://app.test:${(noSuite.address() as AddressInfo).port}/`, '--connect', '127.0.0.1', '--ca', join(dir, 'direct-ecdsa-root.crt'), '--no-http']);
  // OpenSSL 3.0 (Node 20) names the alert ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE, 3.5 (Node 24) ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE.
  t.match(unclear.out, /^WARN {2}legacy-tls +not known: TLSv1: the server ended the handshake with ERR_SSL_\S+_ALERT_HANDSHAKE_FAILURE, not a protocol_version alert/m);
  // An address as the URL's host (no SNI is sent for it): the certificate must name the address.
  const byAddress = await cli(['--url', `https://127.0.0.1:${port}/`, '--ca', ca, '--no-http']);
  t.match(byAddress.out, /^FAIL {2}tls +the certificate is not trusted for 127\.0\.0\.1: .*127\.0\.0\.1/m);
  t.match(byAddress.out, /^FAIL {2}hsts +no Strict-Transport-Security header/m, 'the page was still fetched');
});

t.test('nothing listening: every transport check fails with the reason, exit 1', async (t) => {
  const port = await closedPort();
  const r = await cli(['--url', `https://app.test:${port}/`, '--connect', '127.0.0.1', '--http-url', `http://app.test:${port}/`, '--timeout', '5s']);
  t.equal(r.code, 1);
  t.match(r.out, /^FAIL {2}tls +no TLS handshake: ECONNREFUSED$/m);
  t.match(r.out, /^FAIL {2}hsts +no answer: ECONNREFUSED/m);
  t.match(r.out, /^WARN {2}http-redirect +no plain-HTTP answer \(ECONNREFUSED\)/m);
});

t.test('a server that never answers, and one that never finishes its answer, hold the audit no longer than --timeout', async (t) => {
  const silent = await silentServer(t);
  const dripping = http.createServer((_req, res) => {
    res.writeHead(301, { location: 'https://app.test/' });
    res.write('a'); // and never ends
  });
  await new Promise<void>((r) => dripping.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { dripping.closeAllConnections(); dripping.close(() => r()); }));
  const r = await cli(['--url', `https://app.test:${silent.port}/`, '--connect', '127.0.0.1', '--http-url', `http://app.test:${(dripping.address() as AddressInfo).port}/`, '--timeout', '1s']);
  t.equal(r.code, 1);
  t.match(r.out, /^FAIL {2}tls +no TLS handshake: timed out/m);
  t.match(r.out, /^WARN {2}legacy-tls +not judged: no TLS handshake succeeded/m);
  t.match(r.out, /^FAIL {2}hsts +no answer: /m);
  t.match(r.out, /^PASS {2}http-redirect +301 to https:\/\/app\.test\//m, 'what arrived before the deadline is judged');
});

t.test('headers too big for browsers, and a protected path that never answers: said as such, every check still listed', async (t) => {
  const leaf = await ensureLocalCertificate(join(dir, 'odd'), ['app.test']);
  const server = https.createServer({ key: leaf.keyPem, cert: leaf.certPem }, (req, res) => {
    if (req.url === '/admin') return; // never answers
    // 70 cookies of 4 KB: ~280 KB of headers, more than Chromium's 256 KiB.
    res.setHeader('set-cookie', Array.from({ length: 70 }, (_, i) => `c${i}=${'x'.repeat(4000)}; Secure; HttpOnly; SameSite=Lax`));
    res.end('ok');
  });
  server.maxHeadersCount = 0;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const ca = join(dir, 'odd-root.crt');
  writeFileSync(ca, leaf.rootPem);
  const r = await cli(['--url', `https://app.test:${(server.address() as AddressInfo).port}/`, '--connect', '127.0.0.1', '--ca', ca, '--no-http', '--protected', '/admin', '--timeout', '2s']);
  t.match(r.out, /^FAIL {2}hsts +no answer: response headers over 256 KiB \(HPE_HEADER_OVERFLOW\), more than browsers accept/m);
  for (const check of ['nosniff', 'framing', 'csp', 'referrer-policy']) t.match(r.out, new RegExp(`^WARN {2}${check} +not judged: no answer \\(response headers over 256 KiB`, 'm'), check);
  t.match(r.out, /^WARN {2}protected \/admin +not judged: without a token no answer \(timed out\)/m, 'a timeout is not a refusal');
});

t.test("the audit's options are refused by the other commands, and theirs by the audit", async (t) => {
  for (const [command, option] of [['validate', '--json'], ['start', '--protected=/x'], ['explain', '--connect=127.0.0.1'], ['validate', '--watch']] as const) {
    let err = '';
    const code = await main([command, '--config', join(dir, 'none.yml'), option], { out: () => undefined, err: (s) => (err += s) });
    t.equal(code, 2, `${command} ${option}`);
    t.match(err, new RegExp(`^portcullis ${command}: ${option.split('=')[0]} is not an option of this command`), `${command} ${option}`);
  }
});

t.test('usage errors: exit 2 and one line saying what is wrong, before any connection', async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /--url is required/],
    [['--url', 'http://app.test/'], /--url must be an https:\/\/ URL/],
    [['--url', 'not a url'], /--url is not a URL/],
    [['--url', 'https://u:p@app.test/'], /must not carry credentials/],
    [['--url', 'https://app.test/', '--http-url', 'https://app.test/'], /--http-url must be an http:\/\/ URL/],
    [['--url', 'https://app.test/', '--http-url', 'http://app.test/', '--no-http'], /exclude each other/],
    [['--url', 'https://app.test/', '--connect', 'app.test'], /--connect takes an IP address/],
    [['--url', 'https://app.test/', '--protected', 'admin'], /--protected takes a path starting with \//],
    [['--url', 'https://app.test/', '--ca', join(dir, 'missing.pem')], /--ca .*missing\.pem: ENOENT/],
    [['--url', 'https://app.test/', '--timeout', 'soon'], /--timeout soon: invalid duration/],
    [['--url', 'https://app.test/', '--timeout', '0s'], /--timeout 0s: must be more than 0/],
  ];
  writeFileSync(join(dir, 'not-pem.txt'), 'hello');
  cases.push([['--url', 'https://app.test/', '--ca', join(dir, 'not-pem.txt')], /no PEM certificate/]);
  // A block OpenSSL would skip in silence, after a good one.
  const good = (await ensureLocalCertificate(join(dir, 'ca-check'), ['app.test'])).rootPem;
  writeFileSync(join(dir, 'corrupt.pem'), `${good}\n-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n`);
  cases.push([['--url', 'https://app.test/', '--ca', join(dir, 'corrupt.pem')], /--ca .*corrupt\.pem: certificate 2 of 2 cannot be read/]);
  cases.push([['--url', 'https://app.test/', '--config', 'gateway.yml'], /portcullis audit: --config is not an option of this command/]);
  cases.push([['--url', 'https://app.test/', '--token', 'x'], /--token is not an option of this command/]);
  for (const [args, message] of cases) {
    const r = await cli(args);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.err, message, args.join(' '));
    t.equal(r.out, '');
  }
});
