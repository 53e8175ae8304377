// Golden table: each bad input → the exact path, line, col and a message fragment.
import t from 'tap';
import { ConfigError, formatProblems, parseConfig, type ConfigProblem } from '../../src/config/index.js';
import { memFs } from './certs.js';

const FILE = '/etc/portcullis/gateway.yml';
const SITE = 'sites:\n  - hosts: [app.example.com]\n    upstream: http://127.0.0.1:8000\n';

function problems(yaml: string, env: NodeJS.ProcessEnv = {}, files: Record<string, string> = {}): ConfigProblem[] {
  try {
    parseConfig(yaml, FILE, env, memFs(files));
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
  return [];
}

interface Case {
  name: string;
  yaml: string;
  path: string;
  line: number;
  col: number;
  message: string;
}

const cases: Case[] = [
  { name: 'unknown key points at the key, suggests the right one', yaml: 'sites:\n  - hosts: [a.example.com]\n    upsteam: http://127.0.0.1:1\n', path: 'sites.0.upsteam', line: 3, col: 5, message: 'unknown key "upsteam" (did you mean "upstream"?)' },
  { name: 'missing required key points at the parent map', yaml: 'sites:\n  - hosts: [a.example.com]\n', path: 'sites.0.upstream', line: 2, col: 5, message: 'missing required key "upstream"' },
  { name: 'missing sites', yaml: 'listen:\n  https: 127.0.0.1:0\n', path: 'sites', line: 1, col: 1, message: 'missing required key "sites"' },
  { name: 'enum as literal union', yaml: SITE + '    routes:\n      - path: /\n        access: pubic\n', path: 'sites.0.routes.0.access', line: 6, col: 17, message: 'must be one of: public, authenticated, deny' },
  { name: 'nullable enum', yaml: SITE + 'headers: { frame_options: ALLOW }\n', path: 'headers.frame_options', line: 4, col: 27, message: 'must be one of: DENY, SAMEORIGIN, null' },
  { name: 'duration pattern', yaml: SITE + 'shutdown_grace: 10 seconds\n', path: 'shutdown_grace', line: 4, col: 17, message: 'must be a duration' },
  { name: 'size pattern', yaml: SITE + 'limits:\n  max_body_size: 1.5mb\n', path: 'limits.max_body_size', line: 5, col: 18, message: 'must be a size' },
  { name: 'wrong type in a union', yaml: 'sites:\n  - hosts: [a.example.com]\n    upstream: 8000\n', path: 'sites.0.upstream', line: 3, col: 15, message: 'must be a string or a list' },
  { name: 'a route cannot set connect/idle timeouts (pooled per upstream)', yaml: 'sites:\n  - hosts: [a.example.com]\n    upstream: http://127.0.0.1:1\n    routes: [{ path: /, timeouts: { connect: 1s } }]\n', path: 'sites.0.routes.0.timeouts.connect', line: 4, col: 37, message: 'unknown key "connect"' },
  { name: 'unknown top-level key', yaml: SITE + 'tsl: {}\n', path: 'tsl', line: 4, col: 1, message: 'unknown key "tsl" (did you mean "tls"?)' },
  { name: '__proto__ is just an unknown key', yaml: SITE + '__proto__: { admin: true }\n', path: '__proto__', line: 4, col: 1, message: 'unknown key "__proto__"' },
  { name: 'YAML syntax error', yaml: 'sites: [\n', path: '', line: 2, col: 1, message: 'YAML syntax error' },
  { name: 'duplicate key', yaml: SITE + 'shutdown_grace: 1s\nshutdown_grace: 2s\n', path: '', line: 5, col: 1, message: 'duplicate key "shutdown_grace"' },
  { name: 'listen without port', yaml: SITE + 'listen: { https: 0.0.0.0 }\n', path: 'listen.https', line: 4, col: 18, message: 'must be host:port' },
  { name: 'listen port too large', yaml: SITE + 'listen: { https: "[::1]:70000" }\n', path: 'listen.https', line: 4, col: 18, message: 'port must be between 1 and 65535' },
  { name: 'listen bad IPv6', yaml: SITE + 'listen: { admin: "[::g]:9090" }\n', path: 'listen.admin', line: 4, col: 18, message: 'invalid IPv6 address' },
  { name: 'upstream with a path', yaml: 'sites:\n  - hosts: [a.example.com]\n    upstream: http://127.0.0.1:8000/api\n', path: 'sites.0.upstream', line: 3, col: 15, message: 'must be an origin only' },
  { name: 'upstream with user info', yaml: 'sites:\n  - hosts: [a.example.com]\n    upstream: [http://127.0.0.1:1, "http://u:p@127.0.0.1:2"]\n', path: 'sites.0.upstream.1', line: 3, col: 36, message: 'must not contain user info' },
  { name: 'upstream with a query', yaml: 'sites:\n  - hosts: [a.example.com]\n    upstream: http://127.0.0.1:8000/?x=1\n', path: 'sites.0.upstream', line: 3, col: 15, message: 'must not have a query' },
  { name: 'upstream scheme', yaml: 'sites:\n  - hosts: [a.example.com]\n    upstream: ftp://127.0.0.1\n', path: 'sites.0.upstream', line: 3, col: 15, message: 'scheme must be http or https' },
  { name: 'route path with ..', yaml: SITE + '    routes:\n      - path: /a/../admin\n', path: 'sites.0.routes.0.path', line: 5, col: 15, message: '"." or ".." segments' },
  { name: 'route path with %', yaml: SITE + '    routes:\n      - path: /%61dmin\n', path: 'sites.0.routes.0.path', line: 5, col: 15, message: 'must not contain "%"' },
  { name: 'route path with //', yaml: SITE + '    routes:\n      - path: /a//b\n', path: 'sites.0.routes.0.path', line: 5, col: 15, message: 'must not contain "//"' },
  { name: 'route path with backslash', yaml: SITE + '    routes:\n      - path: "/a\\\\b"\n', path: 'sites.0.routes.0.path', line: 5, col: 15, message: 'must not contain "\\"' },
  { name: 'route path with control char', yaml: SITE + '    routes:\n      - path: "/a\\tb"\n', path: 'sites.0.routes.0.path', line: 5, col: 15, message: 'control characters' },
  { name: 'route path relative', yaml: SITE + '    routes:\n      - path: admin\n', path: 'sites.0.routes.0.path', line: 5, col: 15, message: 'must start with "/"' },
  { name: 'route path with ?', yaml: SITE + '    routes:\n      - path: /a?b\n', path: 'sites.0.routes.0.path', line: 5, col: 15, message: 'must not contain "?"' },
  { name: 'host with two wildcards', yaml: 'sites:\n  - hosts: [a.example.com, "*.*.example.com"]\n    upstream: http://127.0.0.1:1\n', path: 'sites.0.hosts.1', line: 2, col: 28, message: 'wildcard is allowed only as the whole first label' },
  { name: 'host with underscore', yaml: 'sites:\n  - hosts: [a_b.example.com]\n    upstream: http://127.0.0.1:1\n', path: 'sites.0.hosts.0', line: 2, col: 13, message: 'is not a valid DNS name' },
  { name: 'host that is a disguised IP', yaml: 'sites:\n  - hosts: ["127.1"]\n    upstream: http://127.0.0.1:1\n', path: 'sites.0.hosts.0', line: 2, col: 13, message: 'neither a valid IP address nor a DNS name' },
  { name: 'host with port', yaml: 'sites:\n  - hosts: [a.example.com:443]\n    upstream: http://127.0.0.1:1\n', path: 'sites.0.hosts.0', line: 2, col: 13, message: 'must not include a port' },
  { name: 'host in two sites (case-insensitive)', yaml: SITE + '  - hosts: [APP.example.com]\n    upstream: http://127.0.0.1:2\n', path: 'sites.1.hosts.0', line: 4, col: 13, message: 'already belongs to site "app.example.com" (sites.0)' },
  { name: 'duplicate site id', yaml: 'sites:\n  - { id: x, hosts: [a.example.com], upstream: "http://127.0.0.1:1" }\n  - { id: x, hosts: [b.example.com], upstream: "http://127.0.0.1:1" }\n', path: 'sites.1.id', line: 3, col: 11, message: 'site id "x" is already used by sites.0' },
  { name: 'duplicate route id', yaml: SITE + '    routes:\n      - { id: r, path: /a }\n      - { id: r, path: /b }\n', path: 'sites.0.routes.1.id', line: 6, col: 15, message: 'route id "r" is already used' },
  { name: 'same path and methods twice', yaml: SITE + '    routes:\n      - { path: /a, methods: [get, POST] }\n      - { path: /a, methods: [POST, GET] }\n', path: 'sites.0.routes.1.path', line: 6, col: 17, message: 'same path and methods as sites.0.routes.0' },
  { name: 'roles with public', yaml: SITE + '    routes:\n      - { path: /, access: public, roles: [admin] }\n', path: 'sites.0.routes.0.roles', line: 5, col: 43, message: 'contradict access: public' },
  { name: 'roles with deny', yaml: SITE + '    routes:\n      - path: /\n        access: deny\n        roles: [admin]\n', path: 'sites.0.routes.0.roles', line: 7, col: 16, message: 'contradict access: deny' },
  { name: 'alg none', yaml: SITE + 'auth:\n  issuers:\n    - { issuer: "https://id.example.com", audiences: [a], algorithms: [RS256, none] }\n', path: 'auth.issuers.0.algorithms.1', line: 6, col: 79, message: '"none" is refused' },
  { name: 'alg HS256', yaml: SITE + 'auth:\n  issuers:\n    - issuer: https://id.example.com\n      audiences: [a]\n      algorithms: [HS256]\n', path: 'auth.issuers.0.algorithms.0', line: 8, col: 20, message: 'HMAC algorithms use a shared secret' },
  { name: 'alg unknown', yaml: SITE + 'auth:\n  issuers:\n    - issuer: https://id.example.com\n      audiences: [a]\n      algorithms: [RS1]\n', path: 'auth.issuers.0.algorithms.0', line: 8, col: 20, message: 'unsupported algorithm "RS1"' },
  { name: 'empty algorithms', yaml: SITE + 'auth:\n  issuers:\n    - issuer: https://id.example.com\n      audiences: [a]\n      algorithms: []\n', path: 'auth.issuers.0.algorithms', line: 8, col: 19, message: 'must not be an empty list' },
  { name: 'missing audiences', yaml: SITE + 'auth:\n  issuers:\n    - issuer: https://id.example.com\n      algorithms: [RS256]\n', path: 'auth.issuers.0.audiences', line: 6, col: 7, message: 'missing required key "audiences"' },
  { name: 'duplicate issuer', yaml: SITE + 'auth:\n  issuers:\n    - { issuer: "https://id.example.com", audiences: [a], algorithms: [RS256] }\n    - { issuer: "https://id.example.com", audiences: [b], algorithms: [RS256] }\n', path: 'auth.issuers.1.issuer', line: 7, col: 17, message: 'issuer is already configured (auth.issuers.0)' },
  { name: 'plain-http issuer', yaml: SITE + 'auth:\n  issuers:\n    - { issuer: "http://id.example.com", audiences: [a], algorithms: [RS256] }\n', path: 'auth.issuers.0.issuer', line: 6, col: 17, message: 'must be an https URL' },
  { name: 'trusted proxy not an address', yaml: SITE + 'trusted_proxies: [10.0.0.0/8, loopback]\n', path: 'trusted_proxies.1', line: 4, col: 31, message: 'must be an IPv4/IPv6 address or CIDR' },
  { name: 'trusted proxy lenient IPv4 form', yaml: SITE + 'trusted_proxies: [0x7f.1]\n', path: 'trusted_proxies.0', line: 4, col: 19, message: 'must be an IPv4/IPv6 address or CIDR' },
  { name: 'trusted proxy prefix too long', yaml: SITE + 'trusted_proxies: [10.0.0.0/33]\n', path: 'trusted_proxies.0', line: 4, col: 19, message: 'prefix length must be at most 32' },
  { name: 'hsts preload needs one year', yaml: SITE + 'tls:\n  hsts: { max_age: 180d, preload: true }\n', path: 'tls.hsts.preload', line: 5, col: 35, message: 'preload requires max_age of at least 1y' },
  { name: 'hsts preload needs include_subdomains', yaml: SITE + 'tls:\n  hsts: { include_subdomains: false, preload: true }\n', path: 'tls.hsts.preload', line: 5, col: 47, message: 'include_subdomains: true' },
  { name: 'certificate file missing', yaml: SITE + 'tls:\n  certificates:\n    - { cert: certs/app.pem, key: certs/app.key }\n', path: 'tls.certificates.0.cert', line: 6, col: 15, message: 'cannot read /etc/portcullis/certs/app.pem (ENOENT)' },
  { name: 'SameSite=None without Secure', yaml: SITE + 'cookies: { secure: false, same_site: None }\n', path: 'cookies.same_site', line: 4, col: 38, message: 'same_site: None requires secure: true' },
  { name: 'CSP header injection', yaml: SITE + 'headers: { content_security_policy: "default-src \'self\'\\r\\nSet-Cookie: a=b" }\n', path: 'headers.content_security_policy', line: 4, col: 37, message: 'must not contain control characters' },
  { name: 'CSP source starting a new directive', yaml: SITE + 'headers:\n  content_security_policy:\n    script-src: "\'self\'; object-src *"\n', path: 'headers.content_security_policy', line: 6, col: 5, message: 'sources must not contain ";"' },
  { name: 'trusted origin with a path', yaml: SITE + 'csrf: { trusted_origins: ["https://a.example.com/x"] }\n', path: 'csrf.trusted_origins.0', line: 4, col: 27, message: 'must be an origin only' },
  { name: 'rate limit key', yaml: SITE + 'rate_limit: { key: cookie }\n', path: 'rate_limit.key', line: 4, col: 20, message: 'must be ip, user or header:NAME' },
  { name: 'rate limit max 0', yaml: SITE + 'rate_limit: { max: 0 }\n', path: 'rate_limit.max', line: 4, col: 20, message: 'must be at least 1' },
  { name: 'identity header reserved', yaml: SITE + 'auth:\n  identity_headers: { user: Authorization }\n', path: 'auth.identity_headers.user', line: 5, col: 29, message: 'is reserved' },
  { name: 'realm with a quote', yaml: SITE + 'auth: { realm: \'a"b\' }\n', path: 'auth.realm', line: 4, col: 16, message: 'must not contain quotes' },
  { name: 'duration too large', yaml: SITE + 'shutdown_grace: 99999999999999999y\n', path: 'shutdown_grace', line: 4, col: 17, message: 'too large' },
  { name: 'http-01 without http listener', yaml: SITE + 'listen: { http: null }\ntls:\n  acme: { email: ops@example.com }\n', path: 'tls.acme.challenge', line: 6, col: 11, message: 'http-01 needs the plain HTTP listener' },
  { name: 'ACME for localhost', yaml: 'sites:\n  - hosts: [localhost]\n    upstream: http://127.0.0.1:1\ntls:\n  acme: { email: ops@example.com }\n', path: 'sites.0.hosts.0', line: 2, col: 13, message: 'no public CA issues certificates for localhost' },
  { name: 'ACME for an IP', yaml: 'sites:\n  - hosts: ["[::1]"]\n    upstream: http://127.0.0.1:1\ntls:\n  acme: { email: ops@example.com, challenge: tls-alpn-01 }\n', path: 'sites.0.hosts.0', line: 2, col: 13, message: 'cannot issue certificates for IP addresses' },
  { name: 'ACME wildcard with http-01', yaml: 'sites:\n  - hosts: ["*.example.com"]\n    upstream: http://127.0.0.1:1\ntls:\n  acme: { email: ops@example.com, challenge: http-01 }\n', path: 'sites.0.hosts.0', line: 2, col: 13, message: 'wildcard certificates cannot be validated with http-01' },
  { name: 'empty document', yaml: '# nothing\n', path: '', line: 1, col: 1, message: 'the configuration is empty' },
  { name: 'not a map', yaml: '- a\n- b\n', path: '', line: 1, col: 1, message: 'must be a map' },
];

for (const c of cases) {
  t.test(c.name, async (t) => {
    const got = problems(c.yaml);
    const match = got.find((p) => p.path === c.path && p.message.includes(c.message));
    t.ok(match, `expected ${c.path}: …${c.message}… in\n${formatProblems(got)}`);
    if (match) t.same({ line: match.line, col: match.col, file: match.file }, { line: c.line, col: c.col, file: FILE });
  });
}

t.test('all problems are collected, in file order', async (t) => {
  const got = problems('sites:\n  - hosts: [a_b.example.com]\n    upstream: ftp://x\n    routes:\n      - { path: x, access: nope }\nshutdown_grace: 1x\nbogus: 1\n');
  // Schema problems (access, shutdown_grace, bogus) are reported together; cross-field ones after the shape is fixed.
  t.same(got.map((p) => p.path), ['sites.0.routes.0.access', 'shutdown_grace', 'bogus']);
  const sem = problems('sites:\n  - hosts: [a_b.example.com]\n    upstream: ftp://x\n    routes:\n      - { path: x }\n');
  t.same(sem.map((p) => `${p.line}:${p.col} ${p.path}`), ['2:13 sites.0.hosts.0', '3:15 sites.0.upstream', '5:17 sites.0.routes.0.path']);
});

t.test('ConfigError carries code, problems and a formatted message', async (t) => {
  try {
    parseConfig('sites: []\n', FILE, {});
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof ConfigError);
    const e = err as ConfigError;
    t.equal(e.code, 'GW_ERR_CONFIG_INVALID');
    t.same(e.problems, [{ file: FILE, line: 1, col: 8, path: 'sites', message: 'must not be an empty list' }]);
    t.match(e.message, `${FILE}:1:8: sites: must not be an empty list`);
  }
  t.equal(formatProblems([{ file: 'f.yml', line: 3, col: 5, path: 'a.b', message: 'm' }, { file: 'f.yml', line: 1, col: 1, path: '', message: 'n' }]), 'f.yml:3:5: a.b: m\nf.yml:1:1: n');
});

t.test('an alias bomb is refused, not expanded', async (t) => {
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]', 'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]', 'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]', 'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]', 'e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]', ''].join('\n');
  const got = problems(bomb);
  t.equal(got.length, 1);
  t.match(got[0]?.message, /YAML cannot be loaded/);
});

t.test('a host in two sites is one problem, not a cascade of derived-id collisions', async (t) => {
  const got = problems(SITE + '  - hosts: [app.example.com]\n    upstream: http://127.0.0.1:2\n');
  t.same(got.map((p) => p.path), ['sites.1.hosts.0']);
});
