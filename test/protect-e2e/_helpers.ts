// Shared bits for the edge-protection end-to-end tests (test/protect-e2e/*.test.ts).
import http from 'node:http';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { MemoryStore } from '../../src/state/index.js';
import { startGateway, type LogRecord, type RunningGateway, type Tap } from '../helpers/gateway.js';

/** Security-event lines (`security: true`) named `event`, in the order they were logged. */
export function securityEvents(logs: readonly LogRecord[], event: string): LogRecord[] {
  return logs.filter((l) => l.security === true && l.event === event);
}

/**
 * A loopback port nothing listens on: connecting to it is refused. Not a just-closed ephemeral
 * port (a parallel test's server can be given it again): port 1 (tcpmux) is privileged and unused.
 */
export async function deadPort(): Promise<number> {
  return 1;
}

/** Values of a header that may be repeated, as an array. */
export function all(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** A clock the test moves by hand (epoch milliseconds). */
export interface FakeClock {
  now(): number;
  advance(ms: number): void;
}

export function fakeClock(start = Date.now()): FakeClock {
  let now = start;
  return { now: () => now, advance: (ms) => { now += ms; } };
}

/**
 * Like the harness's `startGateway`, but the rate-limit / ban store is a MemoryStore on `clock`,
 * so windows and ban durations elapse when the test says so (no sleeping).
 */
export function startGatewayOnClock(t: Tap, yaml: string, clock: FakeClock): Promise<RunningGateway> {
  return startGateway(t, yaml, {}, { store: new MemoryStore({ now: clock.now }) });
}

/**
 * A minimal token issuer: an ES256 key whose JWKS is served on loopback, and tokens minted with
 * jose for any subject. `forged()` signs with a key the JWKS does not hold (a bad token).
 */
export interface TestIssuer {
  issuer: string;
  jwksUri: string;
  audience: string;
  token(sub: string): Promise<string>;
  forged(sub: string): Promise<string>;
  /** The `auth:` YAML block for this issuer. */
  yaml: string;
}

export async function startIssuer(t: Tap): Promise<TestIssuer> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const other = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  const server = http.createServer((req, res) => {
    if (req.url === '/jwks') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
      return;
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const issuer = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const audience = 'https://api.app.test';
  const mint = (key: Parameters<SignJWT['sign']>[0], sub: string): Promise<string> =>
    new SignJWT({ scope: 'api' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'at+jwt' })
      .setIssuer(issuer)
      .setAudience(audience)
      .setSubject(sub)
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(key);
  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    audience,
    token: (sub) => mint(privateKey, sub),
    forged: (sub) => mint(other.privateKey, sub),
    yaml: `auth:
  issuers:
    - issuer: ${issuer}
      audiences: [${audience}]
      algorithms: [ES256]
      jwks_uri: ${issuer}/jwks
`,
  };
}
