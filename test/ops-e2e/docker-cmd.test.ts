/**
 * The Docker image's command outside Docker: `node dist/cli.js start --config <file>` (the CMD,
 * exec form, cwd like WORKDIR /app) on a copy of docker/gateway.yml, with the image's ENV and the
 * environment compose gives it (docker/.env.example as the env_file, METRICS_TOKEN_FILE pointing
 * at a secret file).
 *
 * What the copy changes, and why:
 *   - listeners 0.0.0.0:8080/8443/9090 → 127.0.0.1:0 (tests bind ephemeral loopback ports only);
 *   - tls.acme removed and tls.storage → a temp dir: ACME needs a public hostname, so the gateway
 *     falls back to its local development CA (and /var/lib/portcullis is not writable here);
 *   - upstream http://app:5000 (a compose service name) → a local upstream server;
 *   - OIDC_ISSUER → a loopback issuer the test controls (discovery + JWKS), no internet.
 * Then: it starts, the Dockerfile's HEALTHCHECK command passes against it, it serves, SIGHUP
 * reloads (and counts it in portcullis_config_reloads_total), SIGTERM exits 0.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseDocument } from 'yaml';
import { httpsRequest, startUpstream } from '../helpers/gateway.js';
import { ROOT, envInstruction, parseDockerfile, run } from '../ops/tools.js';
import { CLI_SKIP, parseExposition, pick, scrape, spawnCli, startIssuer, total, type CliProcess } from './_support.js';
import { logFileLines } from '../helpers/log-file.js';

/** The Dockerfile's HEALTHCHECK exec array (continuations joined). */
function healthcheck(): string[] {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const line = text.split('\n').find((l) => l.startsWith('HEALTHCHECK '));
  if (line === undefined) throw new Error('no HEALTHCHECK in the Dockerfile');
  return JSON.parse(line.slice(line.indexOf('CMD ') + 4)) as string[];
}

function imageCmd(): string[] {
  const line = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').split('\n').find((l) => l.startsWith('CMD '));
  if (line === undefined) throw new Error('no CMD in the Dockerfile');
  return JSON.parse(line.slice(4)) as string[];
}

/** The environment the image sets: the ENV instructions of the Dockerfile's last stage. */
function imageEnv(): Record<string, string> {
  const instructions = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
  const last = Math.max(...instructions.map((i) => i.stage));
  return Object.assign({}, ...instructions.filter((i) => i.stage === last && i.op === 'ENV').map((i) => envInstruction(i.args))) as Record<string, string>;
}

/** docker/.env.example as compose's env_file reads it (KEY=VALUE lines). */
function envExample(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const m of readFileSync(join(ROOT, 'docker/.env.example'), 'utf8').matchAll(/^([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  return env;
}

interface Started {
  https: number;
  admin: number;
}

async function started(cli: CliProcess): Promise<Started> {
  const line = await cli.waitForLog((l) => l.msg === 'portcullis started');
  const port = (k: string): number => (line[k] as { port: number }).port;
  return { https: port('https'), admin: port('admin') };
}

/** SIGTERM, as `docker stop` sends it (STOPSIGNAL SIGTERM); resolves with how the process ended. */
function sigterm(cli: CliProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  cli.child.kill('SIGTERM');
  return cli.exited;
}

t.test('the image CMD on a copy of docker/gateway.yml: starts, HEALTHCHECK passes, serves, reloads, SIGTERM exits 0', { skip: CLI_SKIP }, async (t) => {
  const cmd = imageCmd();
  const cliAt = cmd.indexOf('dist/cli.js');
  t.same(cmd.slice(cliAt, cliAt + 3), ['dist/cli.js', 'start', '--config'], 'the CMD this test runs');
  t.equal(cmd[0], 'node');
  const nodeFlags = cmd.slice(1, cliAt);

  const iss = await startIssuer(t, 'example-app');
  const up = await startUpstream(t);
  const dir = mkdtempSync(join(tmpdir(), 'pc-docker-cmd-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  const doc = parseDocument(readFileSync(join(ROOT, 'docker/gateway.yml'), 'utf8'));
  t.equal(doc.getIn(['tls', 'acme', 'challenge']), 'http-01', 'the shipped config uses ACME (needs a public hostname)');
  doc.setIn(['listen', 'http'], '127.0.0.1:0');
  doc.setIn(['listen', 'https'], '127.0.0.1:0');
  doc.setIn(['listen', 'admin'], '127.0.0.1:0');
  doc.deleteIn(['tls', 'acme']);
  doc.setIn(['tls', 'storage'], join(dir, 'certs'));
  t.equal(doc.getIn(['sites', 0, 'upstream']), 'http://app:5000');
  doc.setIn(['sites', 0, 'upstream'], up.origin);
  const config = join(dir, 'gateway.yml');
  writeFileSync(config, doc.toString());

  const token = 'metrics-secret-from-file-0123456789abcdef';
  const tokenFile = join(dir, 'metrics_token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o444 });
  const image = imageEnv();
  t.equal(image.NODE_ENV, 'production', "the image's ENV, as the container gets it");
  const env = { ...image, ...envExample(), PORTCULLIS_HOST: 'app.test', OIDC_ISSUER: iss.issuer, OIDC_AUDIENCE: 'example-app', METRICS_TOKEN_FILE: tokenFile };

  const cli = spawnCli(t, [...cmd.slice(cliAt + 1, cliAt + 3), config], env, { nodeArgs: nodeFlags });
  const ports = await started(cli);
  t.ok(ports.https > 0 && ports.admin > 0, 'listening');
  t.ok(cli.logs().some((l) => typeof l.msg === 'string' && l.msg.includes('LOCAL DEVELOPMENT CA')), 'says loudly that it serves local-CA certificates');

  const hc = healthcheck();
  t.same(hc.slice(0, 2), ['node', '-e']);
  const script = hc[2]!.replace('127.0.0.1:9090', `127.0.0.1:${ports.admin}`);
  t.not(script, hc[2], 'the HEALTHCHECK URL remapped to the admin port');
  const health = await run(process.execPath, ['-e', script]);
  t.equal(health.code, 0, 'the HEALTHCHECK command passes against the running gateway');
  const ready = await fetch(`http://127.0.0.1:${ports.admin}/readyz`);
  t.equal(ready.status, 200, '/readyz: a certificate for every host');

  const ca = readFileSync(join(dir, 'certs', 'local-ca', 'root.crt'), 'utf8');
  const alice = await iss.token('alice', { realm_access: { roles: ['admin'] }, aud: 'example-app' });
  const healthRoute = await httpsRequest(ports.https, ca, { host: 'app.test', path: '/health' });
  t.equal(healthRoute.status, 200, 'public /health proxied');
  t.equal((await httpsRequest(ports.https, ca, { host: 'app.test', path: '/' })).status, 401, '/ needs a token');
  const admin = await httpsRequest(ports.https, ca, { host: 'app.test', path: '/admin', headers: { authorization: `Bearer ${alice}` } });
  t.equal(admin.status, 200, 'roles from realm_access.roles (OIDC_ROLES_CLAIM of .env.example), issuer found by discovery');
  t.equal(up.seen.at(-1)?.headers['x-auth-roles'], 'admin');

  t.equal((await scrape(ports.admin)).status, 401, '/metrics needs the token');
  const m = await scrape(ports.admin, token);
  t.equal(m.status, 200, 'the token read from METRICS_TOKEN_FILE (a Docker secret)');
  const before = parseExposition(m.body);
  t.equal(pick(before, 'portcullis_build_info')[0]?.labels.version, JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version, 'build_info carries the package version');
  t.equal(total(before, 'portcullis_config_reloads_total', { result: 'success' }), 0);

  // SIGHUP: a reload with an unchanged file succeeds and is counted.
  cli.child.kill('SIGHUP');
  await cli.waitForLog((l) => l.msg === 'configuration reloaded');
  let after = parseExposition((await scrape(ports.admin, token)).body);
  t.equal(total(after, 'portcullis_config_reloads_total', { result: 'success' }), 1, 'SIGHUP reload counted as success');
  // A broken file is refused, counted, and the old configuration keeps serving.
  writeFileSync(config, `${doc.toString()}\nsites: not-a-list\n`);
  cli.child.kill('SIGHUP');
  await cli.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('configuration rejected'));
  after = parseExposition((await scrape(ports.admin, token)).body);
  t.equal(total(after, 'portcullis_config_reloads_total', { result: 'failure' }), 1, 'rejected reload counted as failure');
  t.equal((await httpsRequest(ports.https, ca, { host: 'app.test', path: '/health' })).status, 200, 'still serving');
  const events = cli.logs().filter((l) => l.security === true).map((l) => l.event);
  t.same(events, ['config_reloaded', 'config_rejected'], 'reload events in the main log (no security_file configured)');

  t.notOk(cli.stdout().includes(token) || cli.stderr().includes(token), 'the metrics token never reaches the logs');
  t.same(await sigterm(cli), { code: 0, signal: null }, 'SIGTERM handled: exit code 0');
  t.ok(cli.logs().some((l) => l.msg === 'shut down cleanly'));
  // Known (reported): Fastify 5 prints an FSTDEP023 deprecation warning for `disableRequestLogging`
  // (src/gateway.ts). Anything else on stderr is a failure.
  const stderr = cli.stderr().split('\n').filter((l) => l.trim() !== '' && !/FSTDEP023|--trace-warnings/.test(l));
  t.same(stderr, [], 'nothing on stderr but the known Fastify deprecation warning');
});

t.test('CLI with log.security_file: reload events go to that file, not to stdout', { skip: CLI_SKIP }, async (t) => {
  const up = await startUpstream(t);
  const dir = mkdtempSync(join(tmpdir(), 'pc-cli-seclog-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'gateway.yml');
  writeFileSync(
    config,
    `listen: { https: 127.0.0.1:0, http: null, admin: 127.0.0.1:0 }
log: { level: info, security_file: ./logs/security.log }
sites:
  - { id: app, hosts: [app.test], upstream: ${up.origin}, routes: [{ id: all, path: /, access: public }] }
`,
  );
  const cli = spawnCli(t, ['start', '--config', config], {});
  const ports = await started(cli);
  cli.child.kill('SIGHUP');
  await cli.waitForLog((l) => l.msg === 'configuration reloaded');
  const file = join(dir, 'logs', 'security.log');
  let lines: Array<Record<string, unknown>> = [];
  for (let i = 0; i < 100 && !lines.some((l) => l.event === 'config_reloaded'); i++) {
    lines = logFileLines(file);
    if (!lines.some((l) => l.event === 'config_reloaded')) await sleep(50); // asynchronous file destination: poll
  }
  const ev = lines.find((l) => l.event === 'config_reloaded');
  t.ok(ev, 'config_reloaded is in the security file (relative path resolved against the config file)');
  t.equal(ev?.file, config);
  t.equal(ev?.reason, 'SIGHUP');
  t.notOk(cli.logs().some((l) => l.security === true || l.event !== undefined), 'not in the main log');
  const reloads = total(parseExposition((await scrape(ports.admin)).body), 'portcullis_config_reloads_total', { result: 'success' });
  t.equal(reloads, 1);
  t.same(await sigterm(cli), { code: 0, signal: null }, 'SIGTERM handled: exit code 0');
});
