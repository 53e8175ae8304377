/**
 * Shared pieces of the operations end-to-end tests: a token issuer we control (a JWKS served over
 * loopback HTTP, tokens signed with jose — never by hand), a Prometheus text-format reader for
 * assertions (promtool checks the format itself), and the built CLI as the Docker image runs it.
 */
import http from 'node:http';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { SignJWT, exportJWK, generateKeyPair, type JWTPayload } from 'jose';
import { ROOT } from '../ops/tools.js';

export interface Tap {
  teardown(fn: () => unknown): void;
}

export interface TestIssuer {
  /** `http://127.0.0.1:PORT` — also the `iss` of every token. */
  readonly issuer: string;
  readonly jwksUri: string;
  readonly audience: string;
  /** How many times the JWKS was fetched. */
  jwksFetches(): number;
  /** An ES256 access token for `audience`, valid for 5 minutes, with `claims` on top. */
  token(sub: string, claims?: JWTPayload): Promise<string>;
}

/**
 * A minimal token issuer on an ephemeral loopback port: GET /jwks.json serves the public key, and
 * OIDC discovery (`/.well-known/openid-configuration`) points at it for configs without jwks_uri.
 */
export async function startIssuer(t: Tap, audience = 'https://api.app.test'): Promise<TestIssuer> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), alg: 'ES256', use: 'sig', kid: 'ops-e2e-1' };
  let fetches = 0;
  const server = http.createServer((req, res) => {
    if (req.url === '/jwks.json') {
      fetches++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
      return;
    }
    if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks.json`, id_token_signing_alg_values_supported: ['ES256'] }));
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const issuer = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    issuer,
    jwksUri: `${issuer}/jwks.json`,
    audience,
    jwksFetches: () => fetches,
    token: (sub, claims = {}) =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'at+jwt' })
        .setIssuer(issuer)
        .setAudience(audience)
        .setSubject(sub)
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(privateKey),
  };
}

/** The `auth:` block for a `TestIssuer`, roles in a top-level `roles` claim. */
export function authYaml(iss: TestIssuer): string {
  return `auth:
  issuers:
    - issuer: ${iss.issuer}
      audiences: ["${iss.audience}"]
      algorithms: [ES256]
      jwks_uri: ${iss.jwksUri}
      roles_claim: roles
`;
}

export interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** Unescapes a label value of the text format (\\, \", \n). */
function unescapeLabel(v: string): string {
  return v.replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c));
}

/** Every sample line of a Prometheus text exposition. */
export function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/;
  const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
  for (const l of text.split('\n')) {
    if (l === '' || l.startsWith('#')) continue;
    const m = line.exec(l);
    if (m === null) throw new Error(`unparseable exposition line: ${l}`);
    const labels: Record<string, string> = {};
    for (const p of (m[2] ?? '').matchAll(pair)) labels[p[1]!] = unescapeLabel(p[2]!);
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** Samples of `name` whose labels include every pair of `match`. */
export function pick(samples: readonly Sample[], name: string, match: Record<string, string> = {}): Sample[] {
  return samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

/** Sum of the values of `pick(...)` (0 when the series does not exist). */
export function total(samples: readonly Sample[], name: string, match: Record<string, string> = {}): number {
  return pick(samples, name, match).reduce((a, s) => a + s.value, 0);
}

export async function scrape(adminPort: number, token?: string): Promise<{ status: number; contentType: string; body: string }> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  return { status: res.status, contentType: res.headers.get('content-type') ?? '', body: await res.text() };
}

/**
 * Where the built gateway lives: the repository (`npm run build` writes dist/), or
 * PORTCULLIS_APP_DIR — a directory laid out like the image's /app (package.json, node_modules,
 * dist) — so the tests can run against a private build.
 */
export const APP_DIR = process.env.PORTCULLIS_APP_DIR ?? ROOT;
export const CLI_SKIP = existsSync(join(APP_DIR, 'dist', 'cli.js')) ? false : `${join(APP_DIR, 'dist/cli.js')} is missing: run npm run build first`;

export interface CliProcess {
  readonly child: ChildProcess;
  /** stdout so far (the main JSON log). */
  stdout(): string;
  stderr(): string;
  /** Parsed JSON lines of stdout. */
  logs(): Array<Record<string, unknown>>;
  /** Resolves with the exit code (null when killed by a signal) and the signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits until a stdout log line satisfies `test`. */
  waitForLog(test: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

/**
 * `node dist/cli.js <args>` in APP_DIR, like the image's CMD (cwd /app, exec form, no shell).
 * `gracefulStop`: at teardown a still-running gateway (even one a test stopped with SIGSTOP) gets
 * SIGCONT and SIGTERM, so that its workers drain and exit with it; SIGKILL after 8 s.
 */
export function spawnCli(
  t: Tap,
  args: readonly string[],
  env: Record<string, string>,
  options: { detached?: boolean; nodeArgs?: readonly string[]; gracefulStop?: boolean } = {},
): CliProcess {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), 'dist/cli.js', ...args], {
    cwd: APP_DIR,
    // detached: its own process group, so a test can signal the group like a terminal does.
    detached: options.detached ?? false,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NODE_ENV: 'production', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString('utf8');
    for (const w of waiters) w();
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      for (const w of waiters) w();
      resolve({ code, signal });
    });
  });
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    if (options.gracefulStop !== true) {
      child.kill('SIGKILL');
      await exited;
      return;
    }
    child.kill('SIGCONT');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 8_000);
    await exited;
    clearTimeout(timer);
  });
  // Parsed once per line (a loaded gateway writes thousands, and tests poll).
  let parsed: Array<Record<string, unknown>> = [];
  let parsedUpTo = 0;
  const logs = (): Array<Record<string, unknown>> => {
    const end = out.lastIndexOf('\n') + 1;
    if (end > parsedUpTo) {
      const fresh = out.slice(parsedUpTo, end).split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
      parsed = parsed.concat(fresh);
      parsedUpTo = end;
    }
    return parsed;
  };
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    logs,
    exited,
    waitForLog(test, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = logs().find(test);
          if (hit !== undefined) {
            done();
            resolve(hit);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            done();
            reject(new Error(`gateway exited (${child.exitCode ?? child.signalCode}) before the expected log line:\n${out}\n${err}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out waiting for a log line:\n${out}\n${err}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
  };
}
