/**
 * No Docker engine runs in CI: these tests check that the Dockerfile, docker-compose.yml,
 * docker/gateway.yml and docker/prometheus agree with each other (ports, paths, secrets, volumes,
 * service names), and run what they rely on outside Docker (the HEALTHCHECK script, the config).
 */
import t from 'tap';
import { createServer } from 'node:http';
import { existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { ROOT, envInstruction, parseDockerfile, run } from './tools.js';

const dockerfile = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
const runtimeStage = Math.max(...dockerfile.map((i) => i.stage));
const runtime = dockerfile.filter((i) => i.stage === runtimeStage);
const one = (op: string): string => {
  const found = runtime.filter((i) => i.op === op);
  if (found.length !== 1) throw new Error(`expected one ${op} in the runtime stage, got ${found.length}`);
  return found[0]!.args;
};

type Service = {
  build?: string;
  image?: string;
  ports?: string[];
  expose?: string[];
  volumes?: string[];
  secrets?: string[];
  environment?: Record<string, string>;
  env_file?: string;
  depends_on?: unknown;
  profiles?: string[];
};
const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as {
  version?: string;
  services: Record<string, Service>;
  secrets: Record<string, { file: string }>;
  volumes: Record<string, unknown>;
};
const gatewayYml = parse(readFileSync(join(ROOT, 'docker/gateway.yml'), 'utf8')) as {
  listen: { http: string; https: string; admin: string; public_https_port: number };
  tls: { storage: string };
  admin: { metrics_token: string };
  sites: Array<{ upstream: string; hosts: string[] }>;
};
const promYml = parse(readFileSync(join(ROOT, 'docker/prometheus/prometheus.yml'), 'utf8')) as {
  rule_files: string[];
  scrape_configs: Array<{ job_name: string; authorization?: { credentials_file: string }; static_configs: Array<{ targets: string[] }> }>;
};
const port = (addr: string): number => Number(addr.slice(addr.lastIndexOf(':') + 1));
const svc = (name: string): Service => {
  const s = compose.services[name];
  if (s === undefined) throw new Error(`no service ${name}`);
  return s;
};

t.test('Dockerfile: multi-stage node:24-bookworm-slim build, prod-only runtime', async (t) => {
  const froms = dockerfile.filter((i) => i.op === 'FROM').map((i) => i.args);
  t.same(froms, ['node:24-bookworm-slim AS build', 'node:24-bookworm-slim']);
  const buildRuns = dockerfile.filter((i) => i.stage === 0 && i.op === 'RUN').map((i) => i.args).join('\n');
  t.match(buildRuns, /npm ci\b/);
  t.match(buildRuns, /npm run build/);
  t.match(buildRuns, /npm prune --omit=dev/);
  const copies = runtime.filter((i) => i.op === 'COPY').map((i) => i.args);
  const dests = copies.map((c) => c.split(/\s+/).at(-1));
  t.same(dests.sort(), ['./config/gateway.schema.json', './dist', './node_modules', './package.json', '/etc/portcullis/gateway.yml'].sort());
  t.notOk(copies.some((c) => /(^|\s)(\.|src|test)\s/.test(c.replace(/--from=\S+\s/, ''))), 'no sources or whole context in the runtime image');
  t.ok(copies.filter((c) => /\/(node_modules|dist)$/.test(c)).every((c) => c.startsWith('--from=build')));
  t.equal(one('USER'), 'node', 'runs as the non-root node user');
  t.equal(one('STOPSIGNAL'), 'SIGTERM');
});

t.test('Dockerfile agrees with docker/gateway.yml and the compose file', async (t) => {
  const exposed = one('EXPOSE').split(/\s+/).map(Number).sort();
  const listeners = [gatewayYml.listen.http, gatewayYml.listen.https, gatewayYml.listen.admin].map(port).sort();
  t.same(exposed, listeners, 'EXPOSE = the listener ports');
  t.same(exposed, [8080, 8443, 9090]);
  for (const l of [gatewayYml.listen.http, gatewayYml.listen.https, gatewayYml.listen.admin]) t.match(l, /^0\.0\.0\.0:/, 'listens on all container interfaces');

  t.equal(one('VOLUME'), gatewayYml.tls.storage, 'VOLUME = tls.storage');
  t.equal(gatewayYml.tls.storage, '/var/lib/portcullis/certs');
  const mkdir = runtime.find((i) => i.op === 'RUN' && i.args.includes(gatewayYml.tls.storage));
  t.match(mkdir?.args, /chown node:node \/var\/lib\/portcullis\/certs/, 'the volume is writable by node');
  t.ok(runtime.findIndex((i) => i.op === 'VOLUME') > runtime.indexOf(mkdir!), 'chown before VOLUME (later changes are discarded)');

  const cmd = JSON.parse(one('CMD')) as string[];
  t.same(cmd, ['node', '--max-semi-space-size=8', '--max-old-space-size=384', 'dist/cli.js', 'start', '--config', '/etc/portcullis/gateway.yml'], 'exec form, no shell, no npm');
  t.same(envInstruction(one('ENV')), { NODE_ENV: 'production', MALLOC_ARENA_MAX: '2' }, 'production mode, two glibc malloc arenas (BENCHMARKS.md, session 9)');
  const configCopy = runtime.find((i) => i.op === 'COPY' && i.args.endsWith(' /etc/portcullis/gateway.yml'));
  t.equal(configCopy?.args, 'docker/gateway.yml /etc/portcullis/gateway.yml', 'the default config is docker/gateway.yml');
  t.equal(one('WORKDIR'), '/app', 'dist/cli.js resolves against WORKDIR');

  const hc = one('HEALTHCHECK');
  t.match(hc, new RegExp(`127\\.0\\.0\\.1:${port(gatewayYml.listen.admin)}/healthz`), 'healthcheck hits the admin listener');
  t.notMatch(hc, /curl|wget/, 'no curl in slim images');
});

t.test('the HEALTHCHECK command really works (run with node against a local server)', async (t) => {
  const hc = one('HEALTHCHECK');
  const exec = JSON.parse(hc.slice(hc.indexOf('CMD ') + 4)) as string[];
  t.same(exec.slice(0, 2), ['node', '-e']);
  let status = 200;
  let seenPath = '';
  const server = createServer((req, res) => {
    seenPath = req.url ?? '';
    res.statusCode = status;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const p = (server.address() as { port: number }).port;
  const script = exec[2]!.replace('127.0.0.1:9090', `127.0.0.1:${p}`);
  t.not(script, exec[2], 'port substituted');
  t.equal((await run(process.execPath, ['-e', script])).code, 0, 'healthy on 200');
  t.equal(seenPath, '/healthz');
  status = 503;
  t.equal((await run(process.execPath, ['-e', script])).code, 1, 'unhealthy on 503');
  const closed = exec[2]!.replace('127.0.0.1:9090', '127.0.0.1:1');
  t.equal((await run(process.execPath, ['-e', closed])).code, 1, 'unhealthy when nothing listens');
});

t.test('.dockerignore lets in exactly what the Dockerfile copies from the context', async (t) => {
  const lines = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  t.equal(lines[0], '*', 'deny by default: secrets, certs, .git, node_modules never reach the build context');
  const allowed = lines.filter((l) => l.startsWith('!')).map((l) => l.slice(1).replace(/\/$/, ''));
  t.equal(allowed.length, lines.length - 1, 'every other line is an exception');
  const included = (p: string) => allowed.some((a) => p === a || p.startsWith(`${a}/`));
  const contextSources = dockerfile
    .filter((i) => i.op === 'COPY' && !i.args.startsWith('--from='))
    .flatMap((i) => i.args.split(/\s+/).slice(0, -1))
    .map((src) => src.replace(/^\.\//, '').replace(/\/$/, ''));
  t.ok(contextSources.length >= 5);
  for (const src of contextSources) {
    t.ok(included(src), `${src} is in the build context`);
    t.ok(existsSync(join(ROOT, src)), `${src} exists`);
  }
  for (const secret of ['docker/secrets/metrics_token', 'docker/.env', 'certs/app.key', '.git/config', 'node_modules/x']) t.notOk(included(secret), `${secret} is excluded`);
});

t.test('compose: services, published ports, admin port never on the host', async (t) => {
  t.equal(compose.version, undefined, 'compose spec: no version key');
  t.same(Object.keys(compose.services).sort(), ['app', 'gateway', 'grafana', 'prometheus']);
  const gw = svc('gateway');
  t.equal(gw.build, '.');
  t.same(gw.ports, [`80:${port(gatewayYml.listen.http)}`, `443:${port(gatewayYml.listen.https)}`]);
  t.equal(gatewayYml.listen.public_https_port, 443, 'redirects point at the published HTTPS port');
  t.same(gw.expose, [String(port(gatewayYml.listen.admin))]);
  for (const [name, s] of Object.entries(compose.services)) {
    for (const p of s.ports ?? []) {
      t.notMatch(p, new RegExp(`(^|:)${port(gatewayYml.listen.admin)}$`), `${name} does not publish the admin port`);
      if (name !== 'gateway') t.match(p, /^127\.0\.0\.1:/, `${name} publishes on loopback only`);
    }
  }
  t.equal(svc('app').ports, undefined, 'the app has no host port (it trusts X-Auth-* headers)');
  t.equal(svc('prometheus').ports, undefined);
  t.same(svc('grafana').profiles, ['dashboards'], 'grafana is opt-in');
});

t.test('compose: certificate volume = tls.storage = Dockerfile VOLUME', async (t) => {
  const gw = svc('gateway');
  const certMount = (gw.volumes ?? []).find((v) => v.endsWith(`:${gatewayYml.tls.storage}`));
  t.ok(certMount, 'a volume is mounted at tls.storage');
  const name = certMount!.split(':')[0]!;
  t.ok(name in compose.volumes, 'it is a named volume (survives re-creation of the container)');
  t.equal(one('VOLUME'), gatewayYml.tls.storage);
});

t.test('compose: the metrics token secret reaches the gateway and Prometheus at the same path', async (t) => {
  t.equal(gatewayYml.admin.metrics_token, '${METRICS_TOKEN}');
  const gw = svc('gateway');
  const tokenFile = gw.environment?.METRICS_TOKEN_FILE;
  t.equal(tokenFile, '/run/secrets/metrics_token');
  const secretName = tokenFile!.split('/').at(-1)!;
  t.ok(gw.secrets?.includes(secretName));
  t.ok(svc('prometheus').secrets?.includes(secretName));
  t.equal(compose.secrets[secretName]?.file, './docker/secrets/metrics_token');
  const job = promYml.scrape_configs.find((j) => j.job_name === 'portcullis');
  t.equal(job?.authorization?.credentials_file, tokenFile);
  t.same(job?.static_configs[0]?.targets, [`gateway:${port(gatewayYml.listen.admin)}`], 'Prometheus scrapes the gateway service on the admin port');

  const ignore = readFileSync(join(ROOT, 'docker/secrets/.gitignore'), 'utf8');
  t.match(ignore, /^\*$/m, 'secret files are git-ignored');
  t.match(readFileSync(join(ROOT, 'docker/.gitignore'), 'utf8'), /^\.env$/m, 'docker/.env is git-ignored');
  for (const [name, s] of Object.entries(compose.secrets)) t.match(s.file, /^\.\/docker\/secrets\//, `${name} lives under docker/secrets`);
  const secretsReadme = readFileSync(join(ROOT, 'docker/secrets/README.md'), 'utf8');
  for (const name of Object.keys(compose.secrets)) t.match(secretsReadme, name, `${name} documented`);
});

t.test('compose: Prometheus mounts its config and rules where rule_files resolves them', async (t) => {
  const vols = svc('prometheus').volumes ?? [];
  t.ok(vols.includes('./docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro'));
  for (const rf of promYml.rule_files) {
    t.ok(vols.includes(`./docker/prometheus/${rf}:/etc/prometheus/${rf}:ro`), `${rf} mounted next to prometheus.yml`);
  }
  for (const v of [...vols, ...(svc('grafana').volumes ?? [])]) {
    const src = v.split(':')[0]!;
    if (src.startsWith('./')) t.ok(existsSync(join(ROOT, src)), `${src} exists`);
  }
  const prov = parse(readFileSync(join(ROOT, 'docker/grafana/provisioning/dashboards/portcullis.yml'), 'utf8')) as { providers: Array<{ options: { path: string } }> };
  t.ok((svc('grafana').volumes ?? []).some((v) => v.endsWith(`:${prov.providers[0]?.options.path}:ro`)), 'dashboards mounted where the provider looks');
});

t.test('compose: the gateway upstream is the app service on the port the app listens on', async (t) => {
  const up = new URL(gatewayYml.sites[0]!.upstream);
  t.equal(up.hostname, 'app');
  const app = svc('app');
  t.equal(app.build, 'docker/example-app');
  t.equal(app.environment?.PORT, up.port);
  t.equal(app.environment?.HOST, '0.0.0.0');
  t.same(app.expose, [up.port]);
  t.ok(existsSync(join(ROOT, 'docker/example-app/Dockerfile')));
  const appDocker = parseDockerfile(readFileSync(join(ROOT, 'docker/example-app/Dockerfile'), 'utf8'));
  t.ok(appDocker.some((i) => i.op === 'EXPOSE' && i.args === up.port));
  t.ok(appDocker.some((i) => i.op === 'USER' && i.args !== 'root'), 'the app runs as non-root');
  t.match(readFileSync(join(ROOT, 'docker/example-app/requirements.txt'), 'utf8'), /^Flask==\d+\.\d+\.\d+$/m, 'Flask is pinned');
});

t.test('every ${VAR} in docker/gateway.yml is documented in docker/.env.example or provided as a secret', async (t) => {
  const yml = readFileSync(join(ROOT, 'docker/gateway.yml'), 'utf8').split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n');
  const vars = new Set([...yml.matchAll(/\$\{([A-Z0-9_]+)\}/g)].map((m) => m[1]!));
  const example = readFileSync(join(ROOT, 'docker/.env.example'), 'utf8');
  const documented = new Set([...example.matchAll(/^([A-Z0-9_]+)=/gm)].map((m) => m[1]!));
  const fromSecrets = new Set(Object.keys(svc('gateway').environment ?? {}).filter((k) => k.endsWith('_FILE')).map((k) => k.slice(0, -5)));
  for (const v of vars) t.ok(documented.has(v) || fromSecrets.has(v), `${v} is provided`);
  for (const v of fromSecrets) t.notOk(documented.has(v), `${v} (a secret) is not in the env file`);
  for (const v of documented) t.ok(vars.has(v), `${v} in .env.example is used`);
  t.equal(svc('gateway').env_file, 'docker/.env');
});

t.test('docker/gateway.yml loads with the real config loader (the env from .env.example + the secret file)', async (t) => {
  const { loadConfigFile } = await import('../../src/config/index.js');
  const dir = mkdtempSync(join(tmpdir(), 'pc-deploy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const tokenFile = join(dir, 'metrics_token');
  writeFileSync(tokenFile, 'token-from-secret-file\n');
  const env: Record<string, string> = { METRICS_TOKEN_FILE: tokenFile };
  for (const m of readFileSync(join(ROOT, 'docker/.env.example'), 'utf8').matchAll(/^([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  const { config, warnings } = await loadConfigFile(join(ROOT, 'docker/gateway.yml'), env);
  t.same(warnings, []);
  t.equal(config.admin.metricsToken, 'token-from-secret-file');
  t.same(config.listen.admin, { host: '0.0.0.0', port: 9090 });
  t.equal(config.tls.storage, '/var/lib/portcullis/certs');
  t.equal(config.tls.acme?.directory, 'https://acme-staging-v02.api.letsencrypt.org/directory');
  t.same(config.trustedProxies, []);
  const routes = config.sites[0]!.routes.map((r) => ({ path: r.path, access: r.access, roles: [...r.roles] }));
  t.same(routes, [
    { path: '/health', access: 'public', roles: [] },
    { path: '/static/', access: 'public', roles: [] },
    { path: '/admin', access: 'authenticated', roles: ['admin'] },
    { path: '/', access: 'authenticated', roles: [] },
  ]);
  t.equal(config.sites[0]!.upstream[0]?.origin, 'http://app:5000');

  // A forgotten variable stops the gateway instead of running with an empty issuer.
  const { OIDC_ISSUER: _dropped, ...missing } = env;
  await t.rejects(loadConfigFile(join(ROOT, 'docker/gateway.yml'), missing), { code: 'GW_ERR_CONFIG_INVALID' });
});
