/**
 * Test harness: a real gateway (real TLS, real listeners on ephemeral loopback ports) in front of
 * real upstream HTTP servers, built from YAML exactly as `portcullis start` would build it.
 */
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import net from 'node:net';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { loadConfigFile } from '../../src/config/index.js';
import { createLogger } from '../../src/observability/logging.js';
import { buildGateway, type Gateway } from '../../src/gateway.js';
import { prepareCertificates } from '../../src/server/certificates.js';
import type { Store } from '../../src/state/index.js';
import type { CertificateAutomation } from '../../src/server/acme.js';

export interface Tap {
  teardown(fn: () => unknown): void;
}

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

export interface Upstream {
  origin: string;
  port: number;
  seen: SeenRequest[];
  server: http.Server;
}

/** A real upstream that records every request it sees and answers with `respond` (default: 200 JSON echo). */
export async function startUpstream(
  t: Tap,
  respond?: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void,
): Promise<Upstream> {
  const seen: SeenRequest[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders, body });
      if (respond) return respond(req, res, body);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  return { origin: `http://127.0.0.1:${port}`, port, seen, server };
}

export interface LogRecord {
  [key: string]: unknown;
  msg?: string;
  level?: string | number;
}

export interface RunningGateway {
  gw: Gateway;
  port: number;
  httpPort: number | null;
  adminPort: number | null;
  ca: string;
  dir: string;
  configPath: string;
  logs: LogRecord[];
  request(opts: ClientRequest): Promise<ClientResponse>;
}

export interface ClientRequest {
  method?: string;
  path?: string;
  host?: string;
  servername?: string;
  headers?: Record<string, string | string[]>;
  body?: string | Buffer;
}

export interface ClientResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export function memoryLogger(logs: LogRecord[]): pino.Logger {
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as LogRecord);
      cb();
    },
  });
  // The production logger (its redaction, its access-line writer), at debug level.
  return createLogger({ level: 'debug', file: null }, stream);
}

/**
 * Writes `yaml` to a temp dir as gateway.yml (listeners default to 127.0.0.1:0, storage to the
 * temp dir: certificates come from the local development CA whose root is returned as `ca`).
 */
export async function startGateway(
  t: Tap,
  yaml: string,
  env: Record<string, string> = {},
  options: { store?: Store; certificateAutomation?: CertificateAutomation } = {},
): Promise<RunningGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-test-'));
  const configPath = join(dir, 'gateway.yml');
  writeFileSync(configPath, yaml);
  const { config } = await loadConfigFile(configPath, { ...process.env, ...env });
  const logs: LogRecord[] = [];
  const logger = memoryLogger(logs);
  const certificates = await prepareCertificates(config, logger);
  const gw = await buildGateway({ config, logger, certificates, store: options.store, certificateAutomation: options.certificateAutomation });
  const addrs = await gw.listen();
  t.teardown(async () => {
    await gw.close(1000);
    rmSync(dir, { recursive: true, force: true });
  });
  let ca = '';
  try {
    ca = readFileSync(join(config.tls.storage, 'local-ca', 'root.crt'), 'utf8');
  } catch {
    // certificates brought by the test: it knows its own CA
  }
  const port = addrs.https.port;
  return {
    gw,
    port,
    httpPort: addrs.http?.port ?? null,
    adminPort: addrs.admin?.port ?? null,
    ca,
    dir,
    configPath,
    logs,
    request: async (opts) => {
      const res = await httpsRequest(port, ca, opts);
      // The access line is written when the server side sees the response finish, which can come
      // after the client read it: wait for it (by request id) so tests can read the log at once.
      const id = res.headers['x-request-id'];
      for (let i = 0; i < 200 && id !== undefined && !logs.some((l) => l.type === 'access' && l.request_id === id); i++) {
        await new Promise((r) => setTimeout(r, 5));
      }
      return res;
    },
  };
}

/** Listener block for test configs: every listener on an ephemeral loopback port. */
export const LOOPBACK_LISTEN = `listen:
  https: 127.0.0.1:0
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
`;

export function httpsRequest(port: number, ca: string, opts: ClientRequest): Promise<ClientResponse> {
  const host = opts.host ?? 'app.test';
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method: opts.method ?? 'GET',
        path: opts.path ?? '/',
        servername: opts.servername ?? (host.includes(':') ? undefined : host),
        ca,
        agent: false,
        headers: { host, ...(opts.headers ?? {}) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

export function httpRequest(port: number, opts: ClientRequest): Promise<ClientResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/', agent: false, headers: { host: opts.host ?? 'app.test', ...(opts.headers ?? {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('error', reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

/**
 * Sends raw bytes over a TLS connection (HTTP/1.1 ALPN) and returns everything the gateway sent
 * back until it closed the connection or `waitMs` passed.
 */
export function rawTls(port: number, ca: string, bytes: string | Buffer, opts: { servername?: string; waitMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: opts.servername ?? 'app.test', ALPNProtocols: ['http/1.1'] }, () => {
      socket.write(bytes);
    });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    }, opts.waitMs ?? 2000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      if (chunks.length) resolve(Buffer.concat(chunks).toString('latin1'));
      else reject(err);
    });
  });
}

/** One TLS handshake (HTTP/1.1 ALPN): whether the served certificate chains to `ca`, its issuer CN and serial. */
export function tlsPeer(port: number, servername: string, ca: string): Promise<{ authorized: boolean; issuer: string; serial: string; error?: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['http/1.1'] }, () => {
      const cert = s.getPeerCertificate();
      resolve({ authorized: s.authorized, issuer: String(cert.issuer?.CN ?? ''), serial: cert.serialNumber });
      s.destroy();
    });
    s.on('error', (err) => resolve({ authorized: false, issuer: '', serial: '', error: err.message }));
  });
}

/** The status code of the first response in a raw HTTP/1.1 byte string, or 0. */
export function statusOf(raw: string): number {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
  return m ? Number(m[1]) : 0;
}

/**
 * A TCP server that accepts and never says a word (a TLS client to it never finishes connecting,
 * an HTTP client never gets an answer). `held`: the accepted sockets, destroyed at teardown.
 */
export async function silentServer(t: Tap): Promise<{ port: number; held: net.Socket[] }> {
  const held: net.Socket[] = [];
  const server = net.createServer((socket) => {
    held.push(socket);
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const socket of held) socket.destroy();
    server.close(() => r());
  }));
  return { port: (server.address() as net.AddressInfo).port, held };
}

/** A TCP server that closes every connection at once, counting them (was anything dialled?). */
export async function countingServer(t: Tap): Promise<{ origin: string; accepted: () => number }> {
  let accepted = 0;
  const server = net.createServer((s) => {
    accepted++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { origin: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, accepted: () => accepted };
}

/**
 * A loopback port nothing listens on, and nothing can listen on while this process runs: a
 * connection to it is refused. The port is the local end of a connection this process keeps open
 * (to a listener closed at once). A listener's port, freed and returned, could be handed to
 * another suite's `listen(0)` running in parallel before the test dials it (seen once in CI: the
 * "refused" upstream answered 405); a port held by an open connection is never handed out and
 * cannot be bound, yet takes no connection.
 */
export async function closedPort(): Promise<number> {
  const listener = net.createServer((accepted) => {
    accepted.unref();
    accepted.on('error', () => undefined);
  });
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  const holder = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1');
  holder.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    holder.once('connect', resolve);
    holder.once('error', reject);
  });
  // Stops listening at once; close()'s callback would wait for the connection, which stays.
  listener.close();
  holder.unref();
  return holder.localPort!;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 10 ms; true once it holds, false after `ms`. */
export async function until(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(10);
  }
  return true;
}

/** The access line of the request to `path` (waits for it: it is written when the response is over). */
export async function accessLine(gw: RunningGateway, path: string): Promise<LogRecord | undefined> {
  const find = (): LogRecord | undefined => gw.logs.find((l) => l.type === 'access' && l.path === path);
  await until(() => find() !== undefined);
  return find();
}

/** The route the access line of request `requestId` names (undefined: no line, or no route). */
export function accessRoute(gw: RunningGateway, requestId: unknown): unknown {
  return gw.logs.find((l) => l.type === 'access' && l.request_id === requestId)?.route;
}

export interface RawUpstream {
  origin: string;
  /** Every request head read, in order. */
  heads: string[];
  /** Everything each connection received, as latin1 text, one entry per connection. */
  received: string[];
}

/**
 * A raw TCP app for protocol switches (a WebSocket app that misbehaves): `onHead(socket, head, i)`
 * once per connection `i`, with its first request head; the bytes that follow it are kept in
 * `after[i]`, as they came. Sockets are destroyed at teardown.
 */
export async function rawApp(t: Tap, onHead: (s: net.Socket, head: string, i: number) => void): Promise<{ origin: string; port: number; heads: string[]; after: Buffer[]; sockets: net.Socket[]; closed: () => number }> {
  const app = { origin: '', port: 0, heads: [] as string[], after: [] as Buffer[], sockets: [] as net.Socket[], closed: () => closedCount };
  let closedCount = 0;
  const server = net.createServer((s) => {
    app.sockets.push(s);
    const n = app.after.push(Buffer.alloc(0)) - 1;
    let buf = Buffer.alloc(0);
    let headDone = false;
    s.on('error', () => undefined);
    s.on('close', () => closedCount++);
    s.on('data', (c: Buffer) => {
      if (headDone) {
        app.after[n] = Buffer.concat([app.after[n]!, c]);
        return;
      }
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      headDone = true;
      const head = buf.subarray(0, end + 4).toString('latin1');
      app.after[n] = buf.subarray(end + 4);
      app.heads.push(head);
      onHead(s, head, n);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const s of app.sockets) s.destroy();
    server.close(() => r());
  }));
  app.port = (server.address() as net.AddressInfo).port;
  app.origin = `http://127.0.0.1:${app.port}`;
  return app;
}

/**
 * A raw HTTP/1.1 upstream for misbehaving answers: `onHead` is called for every request head it
 * reads (it expects no request bodies: body bytes would show up at the start of the next "head").
 * `firstHeadOnly`: only each connection's first head, for an upstream that switches protocols
 * (what follows a 101 is tunnel data, kept in `received`).
 */
export async function rawUpstream(t: Tap, onHead: (socket: net.Socket, head: string) => void, options: { firstHeadOnly?: boolean } = {}): Promise<RawUpstream> {
  const up: RawUpstream = { origin: '', heads: [], received: [] };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    const conn = up.received.push('') - 1;
    let buf = '';
    let heads = 0;
    socket.on('data', (c: Buffer) => {
      up.received[conn] += c.toString('latin1');
      if (options.firstHeadOnly === true && heads > 0) return;
      buf += c.toString('latin1');
      for (let end = buf.indexOf('\r\n\r\n'); end !== -1 && !(options.firstHeadOnly === true && heads > 0); end = buf.indexOf('\r\n\r\n')) {
        heads++;
        const head = buf.slice(0, end + 4);
        buf = buf.slice(end + 4);
        up.heads.push(head);
        onHead(socket, head);
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    for (const s of sockets) s.destroy();
    server.close(() => r());
  }));
  up.origin = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return up;
}
