// `${NAME}` substitution: set, unset, NAME_FILE, escapes, and never leaking values.
import t from 'tap';
import { ConfigError, parseConfig, parseConfigWith, type ConfigProblem } from '../../src/config/index.js';
import { memFs } from './certs.js';

const FILE = '/srv/gw/gateway.yml';
const yaml = (token: string) => `admin: { metrics_token: "${token}" }\nsites:\n  - hosts: [a.example.com]\n    upstream: http://127.0.0.1:8000\n`;

function load(text: string, env: NodeJS.ProcessEnv, files: Record<string, string> = {}) {
  return parseConfig(text, FILE, env, memFs(files));
}
function problemsOf(text: string, env: NodeJS.ProcessEnv, files: Record<string, string> = {}): ConfigProblem[] {
  try {
    load(text, env, files);
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
  return [];
}

t.test('a set variable is substituted, also inside a longer string', async (t) => {
  t.equal(load(yaml('${TOKEN}'), { TOKEN: 's3cret' }).config.admin.metricsToken, 's3cret');
  t.equal(load(yaml('pre-${A}-${B}-post'), { A: '1', B: '2' }).config.admin.metricsToken, 'pre-1-2-post');
});

t.test('a value is not substituted twice (no injection through a variable)', async (t) => {
  t.equal(load(yaml('${A}'), { A: '${B}', B: 'leak' }).config.admin.metricsToken, '${B}');
});

t.test('an unset variable is a problem at the scalar, naming the variable', async (t) => {
  const got = problemsOf(yaml('${METRICS_TOKEN}'), {});
  t.same(got, [{ file: FILE, line: 1, col: 25, path: 'admin.metrics_token', message: 'environment variable METRICS_TOKEN is not set (nor METRICS_TOKEN_FILE)' }]);
});

t.test('NAME_FILE is read when NAME is unset; one trailing newline is trimmed', async (t) => {
  const r = load(yaml('${TOKEN}'), { TOKEN_FILE: '/run/secrets/token' }, { '/run/secrets/token': 'from-file\n' });
  t.equal(r.config.admin.metricsToken, 'from-file');
  const crlf = load(yaml('${TOKEN}'), { TOKEN_FILE: '/run/secrets/token' }, { '/run/secrets/token': 'x y\r\n' });
  t.equal(crlf.config.admin.metricsToken, 'x y');
  // NAME wins over NAME_FILE.
  t.equal(load(yaml('${TOKEN}'), { TOKEN: 'direct', TOKEN_FILE: '/nope' }).config.admin.metricsToken, 'direct');
});

t.test('an unreadable NAME_FILE is a problem', async (t) => {
  const got = problemsOf(yaml('${TOKEN}'), { TOKEN_FILE: '/run/secrets/missing' });
  t.equal(got.length, 1);
  t.equal(got[0]?.path, 'admin.metrics_token');
  t.match(got[0]?.message, 'cannot read TOKEN_FILE (/run/secrets/missing): ENOENT');
});

t.test('$${ escapes a literal ${', async (t) => {
  t.equal(load(yaml('$${NOT_A_VAR}'), {}).config.admin.metricsToken, '${NOT_A_VAR}');
  t.equal(load(yaml('cost: $5'), {}).config.admin.metricsToken, 'cost: $5');
});

t.test('malformed references are problems, not literals', async (t) => {
  t.match(problemsOf(yaml('${A-B}'), {})[0]?.message, 'invalid environment variable reference');
  t.match(problemsOf(yaml('${A'), {})[0]?.message, 'unterminated');
});

t.test('an empty-but-set variable is used and then validated like any value', async (t) => {
  const got = problemsOf(yaml('${TOKEN}'), { TOKEN: '' });
  t.same(got.map((p) => [p.path, p.message]), [['admin.metrics_token', 'must not be empty']]);
});

t.test('secret values never appear in messages', async (t) => {
  const text = 'auth:\n  issuers:\n    - { issuer: "https://id.example.com", audiences: [a], algorithms: ["${ALG}"] }\nsites:\n  - hosts: ["${HOST}"]\n    upstream: "${UP}"\n';
  const secret = 'HS256-SUPER-SECRET';
  const got = problemsOf(text, { ALG: secret, HOST: `${secret}_x`, UP: `http://u:${secret}@h/` });
  t.ok(got.length >= 3, 'each value is reported');
  for (const p of got) t.notMatch(p.message, 'SUPER-SECRET');
});

t.test('variables in every string scalar (lists, nested maps) are substituted', async (t) => {
  const text = 'trusted_proxies: ["${NET}"]\nsites:\n  - hosts: ["${HOST}"]\n    upstream: "${UP}"\n    routes: [{ path: "${P}", roles: ["${ROLE}"] }]\n';
  const r = load(text, { NET: '10.0.0.0/8', HOST: 'Api.Example.com', UP: 'http://127.0.0.1:9', P: '/x/', ROLE: 'admin' });
  t.same(r.config.trustedProxies, ['10.0.0.0/8']);
  t.same(r.config.sites[0]?.hosts, ['api.example.com']);
  t.equal(r.config.sites[0]?.routes[0]?.path, '/x/');
  t.same(r.config.sites[0]?.routes[0]?.roles, ['admin']);
});

t.test('inputs: the variables named and the files read are recorded; parseConfigWith parses the same text with exactly those (cluster workers)', async (t) => {
  const env = { TOKEN_FILE: '/run/secrets/token', OTHER: 'not named by the file', SECRET: 'abc' };
  const text = `${yaml('${TOKEN}')}log: { level: info }\n# \${SECRET} in a comment is no reference\n`;
  const r = load(text, env, { '/run/secrets/token': 'from-file\n' });
  t.same(r.inputs.env, { TOKEN_FILE: '/run/secrets/token' }, 'only what the file named (and found), not the whole environment');
  t.same(r.inputs.files, { '/run/secrets/token': 'from-file\n' });
  const again = parseConfigWith(r.text, FILE, r.inputs);
  t.equal(again.config.admin.metricsToken, 'from-file', 'the same value, with no environment and no disk');
  t.same(again.config, r.config);
  // A file that was not read then is not read now: a problem naming it, never the disk.
  const problems: ConfigProblem[] = [];
  try {
    parseConfigWith(r.text, FILE, { env: r.inputs.env, files: {} });
  } catch (err) {
    if (err instanceof ConfigError) problems.push(...err.problems);
  }
  t.match(problems, [{ path: 'admin.metrics_token', message: /cannot read TOKEN_FILE \(\/run\/secrets\/token\): ENOENT/ }]);
});
