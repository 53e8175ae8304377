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
import { main } from '../../src/cli.js';
import { ensureLocalCertificate } from '../../src/tls/local-ca.js';
import { silentServer, startGateway, startUpstream } from '../helpers/gateway.js';
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
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The careless app: what many frameworks answer out of the box. */
function carelessApp(req: http.IncomingMessage, res: http.ServerResponse): void {
  const base = { server: 'gunicorn/20.1.0', 'x-powered-by': 'Flask', 'content-type': 'text/html' };
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
  t.match(r.out, /^PASS {2}protected \/admin +without a token 401, forged token 401$/m);
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
  const leaf = await ensureLocalCertificate(join(dir, 'direct'), ['app.test']);
  const server = https.createServer({ key: leaf.keyPem, cert: leaf.certPem, minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' }, carelessApp);
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  // Plain HTTP serving the app too, instead of redirecting.
  const plain = http.createServer(carelessApp);
  await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { plain.closeAllConnections(); plain.close(() => r()); }));
  const ca = join(dir, 'direct-root.crt');
  writeFileSync(ca, leaf.rootPem);
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
  t.match(r.out, /^FAIL {2}server-banner +answers name their software: server: gunicorn\/20\.1\.0; x-powered-by: Flask/m);
  t.match(r.out, /^FAIL {2}error-pages +error answers leak internals: missing path \(500\): a Python traceback; missing path \(500\): a server file path/m);
  t.match(r.out, /^FAIL {2}trace +TRACE answered 200, echoing the request/m);
  t.match(r.out, /^FAIL {2}cookies +session without Secure; session without HttpOnly; session without SameSite/m);
  t.match(r.out, /^FAIL {2}protected \/admin +not refused without a token: 200, with a forged token \(alg none\): 200/m);

  // Without --ca the private root is not trusted: that alone fails, and nothing crashes.
  const untrusted = await cli(['--url', `https://app.test:${port}/`, '--connect', '127.0.0.1', '--no-http']);
  t.match(untrusted.out, /^FAIL {2}tls +the certificate is not trusted for app\.test: /m);
  // A name the certificate does not carry.
  const wrongName = await cli(['--url', `https://other.test:${port}/`, '--connect', '127.0.0.1', '--ca', ca, '--no-http']);
  t.match(wrongName.out, /^FAIL {2}tls +the certificate is not trusted for other\.test: .*other\.test.*DNS:app\.test/m);
  // An address as the URL's host (no SNI is sent for it): the certificate must name the address.
  const byAddress = await cli(['--url', `https://127.0.0.1:${port}/`, '--ca', ca, '--no-http']);
  t.match(byAddress.out, /^FAIL {2}tls +the certificate is not trusted for 127\.0\.0\.1: .*127\.0\.0\.1/m);
  t.match(byAddress.out, /^FAIL {2}hsts +no Strict-Transport-Security header/m, 'the page was still fetched');
});

t.test('nothing listening: every transport check fails with the reason, exit 1', async (t) => {
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
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
  cases.push([['--url', 'https://app.test/', '--config', 'gateway.yml'], /portcullis audit: --config is not an option of this command/]);
  cases.push([['--url', 'https://app.test/', '--token', 'x'], /--token is not an option of this command/]);
  for (const [args, message] of cases) {
    const r = await cli(args);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.err, message, args.join(' '));
    t.equal(r.out, '');
  }
});
