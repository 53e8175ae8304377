// Defaults, normalization, per-key merging, certificates/ACME hosts, warnings and the example files.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfigFile, parseConfig, type GatewayConfig, type ProtectConfig } from '../../src/config/index.js';
import { makeCert, memFs } from './certs.js';

const FILE = '/srv/gw/gateway.yml';
const SITE = 'sites:\n  - hosts: [App.Example.com]\n    upstream: http://127.0.0.1:8000\n';
const load = (text: string, files: Record<string, string> = {}, env: NodeJS.ProcessEnv = {}) => parseConfig(text, FILE, env, memFs(files));

const DEFAULT_PROTECT: ProtectConfig = {
  headers: { contentSecurityPolicy: null, cspReportOnly: false, frameOptions: 'DENY', referrerPolicy: 'strict-origin-when-cross-origin', upstream: 'keep' },
  cookies: { secure: true, httpOnly: true, httpOnlyExcept: [], sameSite: 'Lax' },
  csrf: { enabled: true, trustedOrigins: [] },
  rateLimit: null,
  bans: null,
};

t.test('every default', async (t) => {
  const { config } = load(SITE);
  const expected: GatewayConfig = {
    source: FILE,
    listen: { https: { host: '0.0.0.0', port: 8443 }, http: { host: '0.0.0.0', port: 8080 }, admin: { host: '127.0.0.1', port: 9090 }, publicHttpsPort: 8443 },
    tls: { minVersion: 'TLSv1.2', hsts: { maxAge: 31_536_000, includeSubdomains: true, preload: false }, storage: '/srv/gw/certs', certificates: [], acme: null },
    trustedProxies: [],
    log: { level: 'info', file: null, securityFile: null, buffer: 0 },
    limits: { maxBodySize: 1_048_576, requestBuffer: 1_048_576, maxHeaderSize: 16_384, headersTimeout: 10_000, requestTimeout: 60_000 },
    timeouts: { connect: 5000, response: 60_000, idle: 60_000 },
    shutdownGrace: 10_000,
    workers: 1,
    auth: { issuers: [], identityHeaders: { user: 'X-Auth-User', email: 'X-Auth-Email', roles: 'X-Auth-Roles', issuer: 'X-Auth-Issuer' }, forwardToken: true, realm: 'portcullis' },
    sites: [
      {
        id: 'app.example.com',
        hosts: ['app.example.com'],
        upstream: [{ origin: 'http://127.0.0.1:8000', protocol: 'http:' }],
        routes: [
          {
            id: 'app.example.com:0',
            path: '/',
            methods: null,
            access: 'authenticated',
            roles: [],
            upstream: [{ origin: 'http://127.0.0.1:8000', protocol: 'http:' }],
            maxBodySize: 1_048_576,
            timeouts: { connect: 5000, response: 60_000, idle: 60_000 },
            protect: DEFAULT_PROTECT,
          },
        ],
        protect: DEFAULT_PROTECT,
      },
    ],
    admin: { metricsToken: null },
    protect: DEFAULT_PROTECT,
  };
  t.same(config, expected);
  t.ok(Object.isFrozen(config) && Object.isFrozen(config.sites[0]?.routes[0]?.protect.csrf.trustedOrigins), 'deep-frozen');
  t.throws(() => {
    (config.listen as { publicHttpsPort: number }).publicHttpsPort = 1;
  }, TypeError);
});

t.test('log.buffer over 1mb is refused, with the reason', async (t) => {
  try {
    load(`${SITE}log: { buffer: 2mb }\n`);
    t.fail('should throw');
  } catch (err) {
    t.same((err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`), ['log.buffer: must be at most 1mb (a crash loses what the buffer holds)']);
  }
  t.equal(load(`${SITE}log: { buffer: 1mb }\n`).config.log.buffer, 1_048_576, '1mb itself is accepted');
});

t.test('listen, paths, units and issuers are normalized', async (t) => {
  const { config } = load(
    SITE +
      [
        'listen: { https: "[::1]:0", http: null, admin: null }',
        'tls: { min_version: TLSv1.3, storage: /var/lib/gw, hsts: { max_age: 2y, preload: true } }',
        'trusted_proxies: [10.1.2.3, "fd00::/8", 10.0.0.0/8, 10.0.0.0/8]',
        'log: { level: debug, file: logs/gw.log, security_file: /var/log/sec.log, buffer: 32kb }',
        'limits: { max_body_size: 10mb, max_header_size: 8kb, headers_timeout: 5s, request_timeout: 2m }',
        'shutdown_grace: 500ms',
        'auth:',
        '  forward_token: false',
        '  issuers:',
        '    - issuer: http://127.0.0.1:4000',
        '      audiences: [a, a, b]',
        '      algorithms: [ES256, EdDSA, ES256]',
        '      introspection: { client_id: gw, client_secret: s }',
      ].join('\n') +
      '\n',
  );
  t.same(config.listen, { https: { host: '::1', port: 0 }, http: null, admin: null, publicHttpsPort: 0 });
  t.same(config.tls.hsts, { maxAge: 2 * 31_536_000, includeSubdomains: true, preload: true });
  t.equal(config.tls.storage, '/var/lib/gw');
  t.equal(config.tls.minVersion, 'TLSv1.3');
  t.same(config.trustedProxies, ['10.1.2.3/32', 'fd00::/8', '10.0.0.0/8']);
  t.same(config.log, { level: 'debug', file: '/srv/gw/logs/gw.log', securityFile: '/var/log/sec.log', buffer: 32_768 });
  t.same(config.limits, { maxBodySize: 10_485_760, requestBuffer: 1_048_576, maxHeaderSize: 8192, headersTimeout: 5000, requestTimeout: 120_000 });
  t.equal(config.shutdownGrace, 500);
  t.equal(config.auth.forwardToken, false);
  t.same(config.auth.issuers[0], {
    issuer: 'http://127.0.0.1:4000',
    audiences: ['a', 'b'],
    algorithms: ['ES256', 'EdDSA'],
    jwksUri: null,
    rolesClaim: 'roles',
    clockSkew: 30_000,
    introspection: { endpoint: null, clientId: 'gw', clientSecret: 's', cache: 60_000 },
    caBundle: null,
    caBundlePem: null,
  });
});

t.test('routes: ids, methods, fallbacks for body size, upstream and timeouts', async (t) => {
  const { config } = load(
    [
      'limits: { max_body_size: 1kb }',
      'timeouts: { connect: 1s, response: 2s, idle: 3s }',
      'sites:',
      '  - id: web',
      '    hosts: ["*.Apps.example.com", "[::1]", 192.0.2.1]',
      '    upstream: [http://127.0.0.1:1, "HTTPS://Backend.example.com:443"]',
      '    max_body_size: 2kb',
      '    routes:',
      '      - { path: /a/, methods: [get, Get, post], roles: [x] }',
      '      - { id: up, path: /b/, upstream: http://127.0.0.1:2, max_body_size: 3kb, timeouts: { response: 5m } }',
      '      - { path: /c/, access: deny }',
    ].join('\n') + '\n',
  );
  const site = config.sites[0]!;
  t.same(site.hosts, ['*.apps.example.com', '[::1]', '192.0.2.1']);
  t.same(site.upstream.map((u) => u.origin), ['http://127.0.0.1:1', 'https://backend.example.com']);
  const [a, b, c] = site.routes;
  t.same([a?.id, b?.id, c?.id], ['web:0', 'up', 'web:2']);
  t.same(a?.methods, ['GET', 'POST', 'HEAD'], 'GET implies HEAD');
  t.same([a?.access, a?.roles], ['authenticated', ['x']]);
  t.same([a?.maxBodySize, b?.maxBodySize], [2048, 3072]);
  t.same(a?.upstream, site.upstream);
  t.same(b?.upstream, [{ origin: 'http://127.0.0.1:2', protocol: 'http:' }]);
  t.same(a?.timeouts, { connect: 1000, response: 2000, idle: 3000 });
  t.same(b?.timeouts, { connect: 1000, response: 300_000, idle: 3000 });
  t.equal(c?.access, 'deny');
});

t.test('protection blocks merge top → site → route per key', async (t) => {
  const { config } = load(
    [
      'csrf: { trusted_origins: ["HTTPS://Admin.example.com/", "https://b.example.com:8443"] }',
      'headers: { content_security_policy: { default-src: "\'self\'", img-src: ["\'self\'", "data:"], upgrade-insecure-requests: [] } }',
      'rate_limit: { max: 50 }',
      'sites:',
      '  - hosts: [a.example.com]',
      '    upstream: http://127.0.0.1:1',
      '    cookies: { same_site: Strict, http_only_except: [XSRF-TOKEN] }',
      '    bans: { auth_failures: 3 }',
      '    routes:',
      '      - path: /',
      '        csrf: { enabled: false }',
      '        rate_limit: { window: 10s, key: "header:X-Api-Key" }',
      '        headers: { frame_options: null, csp_report_only: true }',
      '      - path: /off/',
      '        rate_limit: null',
      '        bans: null',
    ].join('\n') + '\n',
  );
  t.same(config.protect.csrf.trustedOrigins, ['https://admin.example.com', 'https://b.example.com:8443']);
  t.equal(config.protect.headers.contentSecurityPolicy, "default-src 'self'; img-src 'self' data:; upgrade-insecure-requests");
  t.same(config.protect.rateLimit, { max: 50, window: 60_000, key: { type: 'ip' } });
  const site = config.sites[0]!;
  t.same(site.protect.cookies, { secure: true, httpOnly: true, httpOnlyExcept: ['XSRF-TOKEN'], sameSite: 'Strict' });
  t.same(site.protect.bans, { authFailures: 3, window: 300_000, duration: 900_000 });
  const [root, off] = site.routes;
  // csrf: {enabled: false} keeps the inherited trusted_origins.
  t.same(root?.protect.csrf, { enabled: false, trustedOrigins: ['https://admin.example.com', 'https://b.example.com:8443'] });
  t.same(root?.protect.rateLimit, { max: 50, window: 10_000, key: { type: 'header', header: 'x-api-key' } });
  t.same(root?.protect.headers, { contentSecurityPolicy: "default-src 'self'; img-src 'self' data:; upgrade-insecure-requests", cspReportOnly: true, frameOptions: null, referrerPolicy: 'strict-origin-when-cross-origin', upstream: 'keep' });
  t.same(root?.protect.cookies.sameSite, 'Strict');
  t.same(root?.protect.bans, { authFailures: 3, window: 300_000, duration: 900_000 });
  t.equal(off?.protect.rateLimit, null);
  t.equal(off?.protect.bans, null);
});

t.test('certificates: files resolved against the config dir, SANs decide which hosts need ACME', async (t) => {
  const good = await makeCert({ dns: ['app.example.com', '*.apps.example.com'], ip: ['127.0.0.1'] });
  const other = await makeCert({ dns: ['other.example.com'] });
  const files = { '/srv/gw/certs/app.pem': good.cert, '/srv/gw/certs/app.key': good.key, '/srv/gw/certs/other.key': other.key, '/etc/ca.pem': 'x' };
  const tls = (extra: string) => `tls:\n  certificates:\n    - { cert: certs/app.pem, key: certs/app.key }\n${extra}`;
  const sites = (hosts: string) => `sites:\n  - hosts: [${hosts}]\n    upstream: http://127.0.0.1:1\n`;

  // Covered: exact, one-label wildcard, IP. Not covered: two labels below the wildcard.
  const r = load(tls('  acme: { email: ops@example.com, directory: letsencrypt-staging, ca_bundle: /etc/ca.pem, eab: { kid: k, hmac_key: h }, renew_before: 30d }\n') + sites('app.example.com, x.apps.example.com, "*.apps.example.com", 127.0.0.1, a.b.apps.example.com'), files);
  t.same(r.config.tls.certificates, [{ cert: '/srv/gw/certs/app.pem', key: '/srv/gw/certs/app.key' }]);
  t.same(r.config.tls.acme, {
    email: 'ops@example.com',
    directory: 'https://acme-staging-v02.api.letsencrypt.org/directory',
    challenge: 'http-01',
    keyType: 'ec-p256',
    caBundle: '/etc/ca.pem',
    caBundlePem: files['/etc/ca.pem'],
    eab: { kid: 'k', hmacKey: 'h' },
    renewBefore: 30 * 86_400_000,
  });
  t.equal(load(tls('  acme: { email: ops@example.com }\n') + sites('app.example.com'), files).config.tls.acme?.directory, 'https://acme-v02.api.letsencrypt.org/directory');

  // An uncovered localhost with ACME is refused; covered IPs and wildcards are fine.
  try {
    load(tls('  acme: { email: ops@example.com }\n') + sites('app.example.com, localhost, "*.other.example.com"'), files);
    t.fail('should throw');
  } catch (err) {
    t.same((err as ConfigError).problems.map((p) => p.path), ['sites.0.hosts.1', 'sites.0.hosts.2']);
  }

  // A key that does not belong to the certificate, and a file that is not PEM.
  try {
    load('tls:\n  certificates:\n    - { cert: certs/app.pem, key: certs/other.key }\n    - { cert: certs/app.key, key: certs/app.key }\n' + sites('app.example.com'), files);
    t.fail('should throw');
  } catch (err) {
    t.same((err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`), ['tls.certificates.0.key: the key does not match the certificate', 'tls.certificates.1.cert: /srv/gw/certs/app.key is not a PEM certificate']);
  }

  // A certificate without SANs could never be selected.
  const nosan = await makeCert({});
  t.throws(() => load(tls('') + sites('app.example.com'), { '/srv/gw/certs/app.pem': nosan.cert, '/srv/gw/certs/app.key': nosan.key }), { code: 'GW_ERR_CONFIG_INVALID', message: /no subjectAltName/ });

  // Without ACME, uncovered hosts are warned about (development CA).
  const w = load(tls('') + sites('app.example.com, www.example.com'), files);
  const dev = w.warnings.filter((x) => x.includes('development CA'));
  t.equal(dev.length, 1);
  t.match(dev[0], /^\/srv\/gw\/gateway\.yml:5:30: sites\.0\.hosts\.1: no tls\.certificates entry covers this host/);
});

t.test('warnings for risky but legal settings', async (t) => {
  const r = load(
    [
      'listen: { admin: "0.0.0.0:9090" }',
      'tls: { hsts: { max_age: 0s } }',
      'trusted_proxies: [0.0.0.0/0, "::/0"]',
      'sites:',
      '  - hosts: [a.example.com]',
      '    upstream: http://127.0.0.1:1',
    ].join('\n') + '\n',
  );
  t.same(
    r.warnings.map((w) => w.replace(`${FILE}:`, '').split(': ').slice(0, 2).join(': ')),
    ['1:18: listen.admin', '2:8: tls', '2:25: tls.hsts.max_age', '3:19: trusted_proxies.0', '3:30: trusted_proxies.1', '5:5: sites.0'],
  );
  t.match(r.warnings.join('\n'), /metrics_token is not set/);
  t.match(r.warnings.join('\n'), /for development only/);
  t.match(r.warnings.join('\n'), /every request to it will get 401/);
  // With a token, a public route set and certificates, none of these remain.
  const quiet = load('admin: { metrics_token: "${TOK}" }\nlisten: { admin: "0.0.0.0:9090" }\ntls: { acme: { email: ops@example.com } }\nsites:\n  - hosts: [a.example.com]\n    upstream: http://127.0.0.1:1\n    routes: [{ path: /, access: public }]\n', {}, { TOK: 't0ken' });
  t.same(quiet.warnings, []);
});

t.test('a secret written into the file is warned about by its path, never quoted; from the environment or a secret file it is not', async (t) => {
  const yaml = (token: string, secret: string, hmac: string) =>
    [
      `admin: { metrics_token: "${token}" }`,
      `tls: { acme: { email: ops@example.com, eab: { kid: k, hmac_key: "${hmac}" } } }`,
      'auth:',
      '  issuers:',
      '    - issuer: https://id.example.com',
      '      audiences: [api]',
      '      algorithms: [ES256]',
      `      introspection: { client_id: gw, client_secret: "${secret}" }`,
      'sites:',
      '  - hosts: [a.example.com]',
      '    upstream: http://127.0.0.1:1',
      '    routes: [{ path: /, access: public }]',
    ].join('\n') + '\n';
  const literal = load(yaml('tok-literal', 'secret-literal', 'hmac-literal'));
  const named = literal.warnings.filter((w) => w.includes('secret written into the file'));
  t.same(
    named.map((w) => w.replace(`${FILE}:`, '').split(': ')[1]),
    ['admin.metrics_token', 'tls.acme.eab.hmac_key', 'auth.issuers.0.introspection.client_secret'],
  );
  t.notMatch(literal.warnings.join('\n'), /literal/, 'no value is quoted');
  const fromEnv = load(yaml('${TOK}', 'x-${SECRET}', '${HMAC}'), { '/run/secrets/hmac': 'from-a-file' }, { TOK: 'a', SECRET: 'b', HMAC_FILE: '/run/secrets/hmac' });
  t.same(fromEnv.warnings.filter((w) => w.includes('secret written into the file')), []);
  t.equal(fromEnv.config.tls.acme?.eab?.hmacKey, 'from-a-file');
});

t.test('the example files load (secrets from the environment)', async (t) => {
  const minimal = fileURLToPath(new URL('../../config/examples/minimal.yml', import.meta.url));
  const full = fileURLToPath(new URL('../../config/examples/full.yml', import.meta.url));
  const m = await loadConfigFile(minimal, {});
  t.equal(m.config.sites[0]?.routes[0]?.access, 'authenticated');
  t.equal(m.config.auth.issuers.length, 1);

  const cert = await makeCert({ dns: ['app.example.com', '*.apps.example.com'] });
  const dir = fileURLToPath(new URL('../../config/examples/', import.meta.url));
  const f = parseConfig(readFileSync(full, 'utf8'), full, { EAB_HMAC: 'hmac', METRICS_TOKEN: 'mt', INTROSPECTION_SECRET: 'is' }, memFs({ [`${dir}certs/app.pem`]: cert.cert, [`${dir}certs/app.key`]: cert.key }));
  t.same(f.warnings, []);
  t.equal(f.config.admin.metricsToken, 'mt');
  t.equal(f.config.auth.issuers[0]?.introspection?.clientSecret, 'is');
  t.equal(f.config.tls.acme?.eab?.hmacKey, 'hmac');
  t.same(f.config.sites.map((s) => s.id), ['app', 'api.example.com']);
  t.same(f.config.sites[0]?.routes.map((r) => r.id), ['static', 'admin', 'internal', 'app:3']);
  t.equal(f.config.sites[0]?.routes[1]?.timeouts.response, 300_000);
  t.equal(f.config.sites[0]?.routes[0]?.protect.rateLimit, null);
  t.same(f.config.sites[0]?.routes[1]?.protect.rateLimit, { max: 300, window: 60_000, key: { type: 'ip' } });
  t.equal(f.config.sites[1]?.routes[0]?.protect.csrf.enabled, false);

  // Without the environment, the secrets are reported, not silently empty.
  await t.rejects(loadConfigFile(full, {}), { code: 'GW_ERR_CONFIG_INVALID', message: /METRICS_TOKEN is not set/ });
});

t.test('an unreadable file is GW_ERR_CONFIG_READ', async (t) => {
  await t.rejects(loadConfigFile('/nonexistent/portcullis.yml', {}), { code: 'GW_ERR_CONFIG_READ' });
});
