// `portcullis explain`: what it prints, and that it decides exactly like the running gateway.
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigFile } from '../../src/config/index.js';
import { explain, formatExplanation } from '../../src/pipeline/explain.js';
import { main } from '../../src/cli.js';
import { startGateway, startUpstream } from '../helpers/gateway.js';
import { ADMIN_CLAIMS, USER_CLAIMS, bearer, goodClaims, idpToken, policyYaml, sign, signingKeys, startIdp } from './_support.js';

const idp = await startIdp();
t.teardown(() => idp.close());
const adminToken = await idpToken(idp, { claims: ADMIN_CLAIMS });
const userToken = await idpToken(idp, { claims: USER_CLAIMS });
const dir = mkdtempSync(join(tmpdir(), 'portcullis-authz-explain-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const configPath = join(dir, 'gateway.yml');
// Upstream port 9: explain never connects to it.
writeFileSync(configPath, policyYaml(idp.issuer, 'http://127.0.0.1:9'));

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(['explain', '--config', configPath, ...args], { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

t.test('--roles: canonical path, route, requirement and decision', async (t) => {
  const admin = await cli(['--method', 'GET', '--url', 'https://app.test/health/../ADMIN;x=1/users?q=1', '--roles', 'admin']);
  t.equal(admin.code, 0, 'exit 0 when allowed');
  t.match(admin.out, /^request: +GET app\.test\/health\/\.\.\/ADMIN;x=1\/users$/m, 'the raw path as typed');
  t.match(admin.out, /^canonical path: \/ADMIN;x=1\/users$/m);
  t.match(admin.out, /^route: +app\.test:1 +path \/admin +methods GET,POST,HEAD$/m);
  t.match(admin.out, /^requires: +a valid token with any of roles: admin$/m);
  t.match(admin.out, /^caller: +explain roles=\[admin\]$/m);
  t.match(admin.out, /^decision: +ALLOW \(200\) reason=role_granted$/m);

  const user = await cli(['--url', 'https://app.test//Admin/', '--roles', 'user, ops']);
  t.equal(user.code, 1, 'exit 1 when denied');
  t.match(user.out, /^canonical path: \/Admin\/$/m);
  t.match(user.out, /^decision: +DENY \(403\) reason=insufficient_role$/m);

  const del = await cli(['--method', 'delete', '--url', 'https://app.test/admin', '--roles', 'admin']);
  t.match(del.out, /^route: +app\.test:2 +path \/admin +methods any$/m);
  t.match(del.out, /^requires: +nothing can pass \(deny\)$/m);
  t.match(del.out, /^decision: +DENY \(403\) reason=route_denied$/m);

  const anon = await cli(['--url', 'https://app.test/orders']);
  t.match(anon.out, /^requires: +a valid token$/m);
  t.match(anon.out, /^decision: +DENY \(401\) reason=unauthenticated$/m);

  const pub = await cli(['--url', 'https://app.test/health']);
  t.match(pub.out, /^requires: +nothing \(public\)$/m);
  t.match(pub.out, /^decision: +ALLOW \(200\) reason=public$/m);

  const bad = await cli(['--url', 'https://app.test/health/..%2fadmin', '--roles', 'admin']);
  t.match(bad.out, /^canonical path: \(refused before routing\)$/m);
  t.match(bad.out, /^decision: +DENY \(400\) reason=path_encoded_slash$/m);

  const other = await cli(['--url', 'https://elsewhere.test/', '--roles', 'admin']);
  t.match(other.out, /^decision: +DENY \(421\) reason=unknown_host$/m);
});

t.test('--token: verified against the real IdP', async (t) => {
  const ok = await cli(['--url', 'https://app.test/admin', '--token', adminToken]);
  t.equal(ok.code, 0);
  t.match(ok.out, /^caller: +svc roles=\[admin, ops\]$/m);
  t.match(ok.out, /^decision: +ALLOW \(200\) reason=role_granted$/m);

  const user = await cli(['--url', 'https://app.test/%61dmin', '--token', userToken]);
  t.equal(user.code, 1);
  t.match(user.out, /^canonical path: \/admin$/m);
  t.match(user.out, /^caller: +svc roles=\[user\]$/m);
  t.match(user.out, /^decision: +DENY \(403\) reason=insufficient_role$/m);

  const [other] = await signingKeys('test');
  const forged = await cli(['--url', 'https://app.test/admin', '--token', await sign(other!, goodClaims(idp))]);
  t.match(forged.out, /^caller: +anonymous$/m);
  t.match(forged.out, /^decision: +DENY \(401\) reason=token_bad_signature$/m, 'the operator gets the precise reason');
});

t.test('the command line itself (tsx, no build)', async (t) => {
  const { stdout, code } = await new Promise<{ stdout: string; code: number }>((resolve) => {
    execFile(
      process.execPath,
      ['--import=tsx', 'src/cli.ts', 'explain', '--config', configPath, '--method', 'POST', '--url', 'https://app.test/admin', '--roles', 'admin'],
      { cwd: join(import.meta.dirname, '..', '..'), timeout: 20_000 },
      (err, stdout) => resolve({ stdout, code: err ? Number((err as { code?: number }).code ?? 1) : 0 }),
    );
  });
  t.equal(code, 0);
  t.match(stdout, /^decision: +ALLOW \(200\) reason=role_granted$/m);
});

t.test('explain decides exactly like the running gateway', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const { config } = await loadConfigFile(configPath);
  const paths = ['/admin', '/ADMIN;x', '/health/../admin', '//admin/', '/%61dmin/x', '/health', '/HEALTH', '/orders', '/%2561dmin'];
  const methods = ['GET', 'HEAD', 'DELETE'];
  for (const [who, token] of [['admin', adminToken], ['user', userToken], ['anonymous', null]] as const) {
    for (const method of methods) {
      for (const path of paths) {
        const e = await explain(config, { method, url: `https://app.test${path}`, token: token ?? undefined });
        const real = await gw.request({ method, path, headers: token ? bearer(token) : {} });
        t.equal(real.status, e.decision.status, `${who} ${method} ${path}: explain says ${e.decision.status} (${e.decision.reason}), gateway ${real.status}`);
      }
    }
  }
  t.ok(formatExplanation(await explain(config, { method: 'GET', url: 'https://app.test/', roles: [] })).includes('decision:'));
});
