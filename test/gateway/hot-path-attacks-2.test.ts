// Second round of attack tests against the rewritten request hot path, on what the first round
// (hot-path-attacks.test.ts) did not cover: the HTTP/1.1 deadlines of the HTTP/2 compat server
// (src/server/slowloris.ts), HTTP/2 forwarding corner cases (src/proxy/forward.ts), the access
// log's batching and redaction (src/observability/log-batch.ts, logging.ts), the verified-token
// cache (src/auth/lru.ts, authenticator.ts) and rate limits / bans in real time.
//
// Every test runs a real gateway (real TLS, ephemeral loopback ports) in front of a real upstream.
import t from 'tap';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair, type JWK } from 'jose';
import { loadConfigFile } from '../../src/config/index.js';
import { createLogger } from '../../src/observability/logging.js';
import { buildGateway } from '../../src/gateway.js';
import { prepareCertificates } from '../../src/server/certificates.js';
import { MemoryStore } from '../../src/state/index.js';
import { LOOPBACK_LISTEN, startGateway, startUpstream, statusOf, type LogRecord, type Tap, sleep, until, accessLine } from '../helpers/gateway.js';
import { appSite as site, h2Request, h2Session, statuses, tlsClient, type H2Response } from '../helpers/clients.js';

// ---------------------------------------------------------------------------------------------
// Helpers

/** An upstream that records each request's fate: completed (whole body read) or aborted. */
interface FateUpstream {
  origin: string;
  started: string[];
  completed: Array<{ url: string; bytes: number }>;
  aborted: Array<{ url: string; bytes: number }>;
}

async function fateUpstream(t: Tap, respond?: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void): Promise<FateUpstream> {
  const up: FateUpstream = { origin: '', started: [], completed: [], aborted: [] };
  const server = http.createServer((req, res) => {
    up.started.push(req.url!);
    const chunks: Buffer[] = [];
    let done = false;
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      done = true;
      const body = Buffer.concat(chunks);
      up.completed.push({ url: req.url!, bytes: body.length });
      if (respond) respond(req, res, body);
      else res.writeHead(200, { 'content-type': 'text/plain' }).end(`got ${body.length}`);
    });
    req.on('close', () => {
      if (!done) up.aborted.push({ url: req.url!, bytes: Buffer.concat(chunks).length });
    });
    req.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));
  up.origin = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return up;
}

// =============================================================================================
// 1. HTTP/1.1 deadlines on the HTTP/2 compat server (src/server/slowloris.ts).

const DEADLINES = 'timeouts: { idle: 1s, response: 10s }\nlimits: { headers_timeout: 1s, request_timeout: 2s }\n';

t.test('slowloris drip: header bytes every 150 ms do not extend limits.headers_timeout (408, nothing forwarded)', async (t) => {
  const up = await fateUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', DEADLINES));
  const c = await tlsClient(t, gw);
  const opened = Date.now();
  const head = 'GET /drip HTTP/1.1\r\nHost: app.test\r\nX-Slow: ' + 'a'.repeat(200);
  void (async () => {
    for (let i = 0; i < head.length && !c.isClosed(); i++) {
      c.socket.write(head[i]!);
      await sleep(150);
    }
  })();
  t.ok(await c.closedWithin(5000), 'the gateway closed the connection');
  const after = c.closedAt() - opened;
  t.ok(after >= 900 && after < 3000, `after about headers_timeout (1 s), not extended by the drip (${after} ms)`);
  t.equal(statusOf(c.text()), 408, '408 Request Timeout');
  t.same(up.started, [], 'the upstream saw nothing');
});

t.test('keep-alive: a second request whose headers never complete gets 408 after idle + headers_timeout; the upstream saw only the first', async (t) => {
  const up = await fateUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', DEADLINES));
  const c = await tlsClient(t, gw);
  c.socket.write('GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n');
  t.ok(await until(() => c.text().includes('got 0')), 'first answered');
  await sleep(200);
  const began = Date.now();
  // The next request starts, then drips a byte every 150 ms forever.
  const head = 'GET /second HTTP/1.1\r\nHost: app.test\r\nX-Slow: ' + 'b'.repeat(500);
  void (async () => {
    for (let i = 0; i < head.length && !c.isClosed(); i++) {
      c.socket.write(head[i]!);
      await sleep(150);
    }
  })();
  t.ok(await c.closedWithin(6000), 'closed');
  const after = c.closedAt() - began;
  t.ok(after < 3500, `within idle + headers_timeout (~2 s) of the second request's start (${after} ms)`);
  t.same(statuses(c.text()), [200, 408], 'the first 200, then a 408');
  t.same(up.started, ['/first'], 'the upstream never saw the second request');
});

t.test('a Content-Length body trickled slower than limits.request_timeout: closed, the upstream never gets the whole body', async (t) => {
  const up = await fateUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', DEADLINES));
  const c = await tlsClient(t, gw);
  const began = Date.now();
  c.socket.write('POST /trickle HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n');
  void (async () => {
    for (let i = 0; i < 100 && !c.isClosed(); i++) {
      c.socket.write('x');
      await sleep(200); // each gap far below idle; 20 s in total
    }
  })();
  t.ok(await c.closedWithin(6000), 'closed');
  const after = c.closedAt() - began;
  t.ok(after >= 1800 && after < 4000, `at about request_timeout (2 s): ${after} ms`);
  await sleep(200);
  t.same(up.completed, [], 'the upstream never completed the request');
  t.ok(up.aborted.every((a) => a.bytes < 100), 'whatever it started was aborted short');
});

t.test('a chunked body trickled slower than limits.request_timeout: closed, the upstream never gets the final chunk', async (t) => {
  const up = await fateUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', DEADLINES));
  const c = await tlsClient(t, gw);
  const began = Date.now();
  c.socket.write('POST /trickle-chunked HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n');
  void (async () => {
    for (let i = 0; i < 100 && !c.isClosed(); i++) {
      c.socket.write('1\r\nx\r\n');
      await sleep(200);
    }
  })();
  t.ok(await c.closedWithin(6000), 'closed');
  const after = c.closedAt() - began;
  t.ok(after >= 1800 && after < 4000, `at about request_timeout (2 s): ${after} ms`);
  await sleep(200);
  t.same(up.completed, [], 'the upstream never completed the request');
});

t.test('a refused upload (401 before the body) whose client keeps trickling the body: the connection is not held open forever', async (t) => {
  const { publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  const idp = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] })));
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { idp.closeAllConnections(); idp.close(() => r()); }));
  const up = await fateUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${DEADLINES}auth:
  issuers:
    - issuer: https://idp.test
      audiences: [api]
      algorithms: [ES256]
      jwks_uri: http://127.0.0.1:${(idp.address() as net.AddressInfo).port}/jwks
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: authenticated }]
`);
  const c = await tlsClient(t, gw);
  const began = Date.now();
  c.socket.write('POST /refused HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n');
  void (async () => {
    for (let i = 0; i < 200 && !c.isClosed(); i++) {
      c.socket.write('y');
      await sleep(100);
    }
  })();
  t.ok(await until(() => statuses(c.text()).length > 0, 3000), 'answered');
  t.equal(statuses(c.text())[0], 401);
  t.ok(await c.closedWithin(8000), 'and the connection closed');
  t.ok(c.closedAt() - began < 5000, `within idle + headers_timeout or request_timeout (${c.closedAt() - began} ms)`);
  t.same(up.started, [], 'nothing forwarded');
});

t.test('pipelined: a second request whose upstream answer takes longer than timeouts.idle is answered, not cut by the first one\'s idle timer', async (t) => {
  const up = await fateUpstream(t, (req, res) => {
    const delay = req.url === '/slow' ? 1800 : 0;
    setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(`done ${req.url}`), delay);
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', DEADLINES));
  const c = await tlsClient(t, gw);
  const began = Date.now();
  c.socket.write('GET /fast HTTP/1.1\r\nHost: app.test\r\n\r\nGET /slow HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
  t.ok(await c.closedWithin(6000), 'the connection ended');
  t.comment(`connection closed ${c.closedAt() - began} ms after the two requests were sent`);
  const raw = c.text();
  t.same(statuses(raw), [200, 200], `both answered (got ${statuses(raw).join(',') || 'nothing'})`);
  t.match(raw, /done \/slow/, 'the slow one\'s body arrived');
  const line = await accessLine(gw, '/slow');
  t.equal(line?.status, 200, `access line status ${String(line?.status)}`);
  t.equal(line?.reason, undefined, `no cut reason (${String(line?.reason)})`);
});

t.test('pipelined: a second request with a body uploaded within request_timeout (but longer than idle) is not cut by the first one\'s idle timer', async (t) => {
  const up = await fateUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', 'timeouts: { idle: 1s, response: 10s }\nlimits: { headers_timeout: 1s, request_timeout: 5s }\n'));
  const c = await tlsClient(t, gw);
  c.socket.write('GET /fast HTTP/1.1\r\nHost: app.test\r\n\r\nPOST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\nConnection: close\r\n\r\n');
  for (let i = 0; i < 10 && !c.isClosed(); i++) {
    await sleep(300); // 3 s in all: under request_timeout (5 s), over idle + headers_timeout (2 s)
    c.socket.write('z');
  }
  t.ok(await c.closedWithin(6000), 'the connection ended');
  t.same(statuses(c.text()), [200, 200], `both answered (got ${statuses(c.text()).join(',')})`);
  t.same(up.completed.map((x) => `${x.url} ${x.bytes}`), ['/fast 0', '/upload 10'], 'the upload arrived whole');
});

t.test('pipelined: the 408 for a stalled third request is never written inside the second request\'s response body', async (t) => {
  const TIMEOUT_RESPONSE = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';
  const first = 'a'.repeat(20);
  // A Content-Length body: 20 bytes at once, the rest 2.5 s later (within timeouts.response).
  const length = first.length + TIMEOUT_RESPONSE.length;
  const up = await fateUpstream(t, (req, res) => {
    if (req.url !== '/stream') return void res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '4' }).end('fast');
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(length) });
    res.write(first);
    setTimeout(() => res.end('b'.repeat(length - first.length)), 2500);
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', DEADLINES));
  const c = await tlsClient(t, gw);
  c.socket.write('GET /fast HTTP/1.1\r\nHost: app.test\r\n\r\nGET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n');
  await sleep(300);
  c.socket.write('GET /third HTTP/1.1\r\n'); // and nothing more: this one deserves a 408, after /stream
  await c.closedWithin(6000);
  const raw = c.text();
  const heads = [...raw.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => ({ status: Number(m[1]), at: m.index }));
  const streamHead = raw.indexOf('\r\n\r\n', heads[1]?.at ?? 0);
  const streamBody = streamHead === -1 ? '' : raw.slice(streamHead + 4, streamHead + 4 + length);
  t.notMatch(streamBody, /HTTP\/1\.1 408/, 'the second response\'s body holds no gateway status line');
  t.ok(streamBody === first + 'b'.repeat(length - first.length) || streamBody.length < length,
    `the second response is either whole or visibly short (client read ${JSON.stringify(streamBody.slice(0, 60))}…)`);
  t.comment(`statuses seen: ${heads.map((h) => h.status).join(',')}`);
});

// =============================================================================================
// 2. HTTP/2 forwarding (src/proxy/forward.ts).

t.test('HTTP/2: RST_STREAM in the middle of an upload aborts the upstream request (it never completes), 499 logged, session serves on', async (t) => {
  const up = await fateUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', 'timeouts: { response: 10s }\nlimits: { request_buffer: 0b }\n'));
  const session = h2Session(t, gw);
  const req = session.request({ ':authority': 'app.test', ':path': '/h2-upload', ':method': 'POST', 'content-type': 'application/octet-stream', 'content-length': '100000' });
  req.on('error', () => undefined);
  req.write(Buffer.alloc(30_000, 1));
  t.ok(await until(() => up.started.includes('/h2-upload')), 'the upstream got the start of the upload');
  await sleep(100);
  const cancelled = Date.now();
  req.close(http2.constants.NGHTTP2_CANCEL);
  t.ok(await until(() => up.aborted.some((a) => a.url === '/h2-upload'), 3000), 'the upstream saw the request aborted');
  t.comment(`upstream abort seen ${Date.now() - cancelled} ms after the RST_STREAM`);
  t.same(up.completed, [], 'never completed');
  const line = await accessLine(gw, '/h2-upload');
  t.equal(line?.status, 499);
  t.equal(line?.reason, 'client_closed');
  t.equal(gw.logs.filter((l) => l.type === 'access' && l.path === '/h2-upload').length, 1, 'one access line');
  const next = await h2Request(session, { ':path': '/after' });
  t.equal(next.status, 200, 'the session still serves');
});

/** An upstream answering /big with an endless body (as fast as the gateway takes it), anything else with a short one. */
async function bigAndSmallUpstream(t: Tap): Promise<{ origin: string; bigClosed: () => boolean }> {
  let bigClosed = false;
  const up = await startUpstream(t);
  up.server.removeAllListeners('request');
  up.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (req.url !== '/big') return void res.writeHead(200, { 'content-type': 'text/plain' }).end(`small ${req.url}`);
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.on('close', () => (bigClosed = true));
    const pump = (): void => {
      while (!res.destroyed) if (!res.write(Buffer.alloc(16 * 1024, 7))) return void res.once('drain', pump);
    };
    pump();
  });
  return { origin: up.origin, bigClosed: () => bigClosed };
}

t.test('HTTP/2: one stream whose reader stopped does not block the other streams of its session', async (t) => {
  const up = await bigAndSmallUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public }]', 'timeouts: { response: 8s }\n'));
  const session = h2Session(t, gw);
  const big = session.request({ ':authority': 'app.test', ':path': '/big' });
  big.on('error', () => undefined);
  big.end();
  await new Promise<void>((resolve) => big.once('data', () => {
    big.pause(); // never reads again
    resolve();
  }));
  await sleep(300); // the gateway fills the stream's window
  const started = Date.now();
  const others = await Promise.all(Array.from({ length: 8 }, (_v, i) => h2Request(session, { ':path': `/small-${i}` })));
  const took = Date.now() - started;
  t.same(others.map((r) => r.status), Array(8).fill(200), 'the others are answered');
  t.same(others.map((r) => r.body), Array.from({ length: 8 }, (_v, i) => `small /small-${i}`));
  t.ok(took < 4000, `well before the stalled stream is cut (8 s): ${took} ms`);
  t.notOk(up.bigClosed(), 'the stalled stream is still pending meanwhile');
  big.close(http2.constants.NGHTTP2_CANCEL);
});

t.test('HTTP/2: 103 then 200, 204 and 304 from the upstream: the final status, no body, a cleanly ended stream', async (t) => {
  const up = await startUpstream(t);
  up.server.removeAllListeners('request');
  up.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    req.resume();
    if (req.url === '/early') {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('final'), 50);
    } else if (req.url === '/no-content') res.writeHead(204, { 'x-app': 'deleted' }).end();
    else if (req.url === '/not-modified') res.writeHead(304, { etag: '"v1"' }).end();
    else res.writeHead(200).end('other');
  });
  const gw = await startGateway(t, site(up.origin));
  const session = h2Session(t, gw);
  const early = await h2Request(session, { ':path': '/early' });
  t.equal(early.status, 200);
  t.equal(early.body, 'final');
  t.equal(early.rstCode, http2.constants.NGHTTP2_NO_ERROR);
  const nc = await h2Request(session, { ':path': '/no-content', ':method': 'DELETE' });
  t.equal(nc.status, 204);
  t.equal(nc.headers['x-app'], 'deleted');
  t.equal(nc.body, '');
  t.equal(nc.rstCode, http2.constants.NGHTTP2_NO_ERROR, `204 stream ended cleanly (rst ${String(nc.rstCode)})`);
  const nm = await h2Request(session, { ':path': '/not-modified', 'if-none-match': '"v1"' });
  t.equal(nm.status, 304);
  t.equal(nm.headers.etag, '"v1"');
  t.equal(nm.body, '');
  t.equal(nm.rstCode, http2.constants.NGHTTP2_NO_ERROR, `304 stream ended cleanly (rst ${String(nm.rstCode)})`);
  t.same([(await accessLine(gw, '/no-content'))?.status, (await accessLine(gw, '/not-modified'))?.status, (await accessLine(gw, '/early'))?.status], [204, 304, 200]);
  t.equal((await h2Request(session, { ':path': '/after' })).status, 200, 'the session serves on');
});

t.test('HTTP/2: upstream trailers (chunked, Trailer header): the body arrives whole, the stream ends cleanly; trailer fields are dropped consistently (no Trailer announcement either)', async (t) => {
  const up = await startUpstream(t);
  up.server.removeAllListeners('request');
  up.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' });
    res.write('part1-');
    res.addTrailers({ 'x-checksum': 'abc123' });
    res.end('part2');
  });
  const gw = await startGateway(t, site(up.origin));
  const session = h2Session(t, gw);
  const res = await h2Request(session, { ':path': '/trailers', te: 'trailers' });
  t.equal(res.status, 200);
  t.equal(res.body, 'part1-part2', 'the body whole');
  t.equal(res.rstCode, http2.constants.NGHTTP2_NO_ERROR, 'a clean end');
  t.equal(res.headers.trailer, undefined, 'no Trailer announcement in the head');
  // RFC 9110 §6.5.1 lets a recipient that removes the chunked coding discard trailer fields: the
  // gateway does (forward.ts ignores onResponseEnd's trailers), and announces none.
  t.equal(res.trailers, null, `no trailers reach the client (${JSON.stringify(res.trailers)})`);
});

// =============================================================================================
// 3. The access log: the production logger (file destination, window batching), and redaction.

interface FileGateway {
  port: number;
  ca: string;
  logFile: string;
  /** Closes the gateway (flushing its log) and returns the file's JSON lines. */
  stopAndRead(): Promise<LogRecord[]>;
}

/** A gateway whose logger is the one `portcullis start` builds: createLogger(config.log), a file. */
async function startFileGateway(t: Tap, yaml: string): Promise<FileGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-log-test-'));
  const configPath = join(dir, 'gateway.yml');
  writeFileSync(configPath, yaml);
  const { config } = await loadConfigFile(configPath, process.env);
  const logger = createLogger(config.log);
  const certificates = await prepareCertificates(config, logger);
  const gw = await buildGateway({ config, logger, certificates });
  const addrs = await gw.listen();
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await gw.close(1000);
    await new Promise<void>((r) => logger.flush(() => r()));
    await sleep(100);
  };
  t.teardown(async () => {
    await stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const logFile = config.log.file!;
  return {
    port: addrs.https.port,
    ca: readFileSync(join(config.tls.storage, 'local-ca', 'root.crt'), 'utf8'),
    logFile,
    stopAndRead: async () => {
      await stop();
      const text = existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
      return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogRecord);
    },
  };
}

for (const buffer of ['0b', '4kb']) {
  t.test(`access log to a file (log.buffer: ${buffer}): 200 HTTP/2 requests ending in the same few turns: every line once, none lost, none twice, in time order`, async (t) => {
    // The upstream holds every request until all have arrived, then answers them in one turn.
    const N = 200;
    const held: http.ServerResponse[] = [];
    const up = await startUpstream(t);
    up.server.removeAllListeners('request');
    up.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      req.resume();
      held.push(res);
      if (held.length === N) for (const r of held) r.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' }).end('ok');
    });
    const gw = await startFileGateway(t, `${LOOPBACK_LISTEN}log: { level: info, file: ./access.log, buffer: ${buffer} }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
    const sessions = [0, 1].map(() => {
      const s = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
      s.on('error', () => undefined);
      t.teardown(() => s.destroy());
      return s;
    });
    const results = await Promise.all(Array.from({ length: N }, (_v, i) => h2Request(sessions[i % 2]!, { ':path': `/many-${i}` })));
    t.equal(results.filter((r) => r.status === 200).length, N, 'all answered');
    for (const s of sessions) s.close();
    const lines = (await gw.stopAndRead()).filter((l) => l.type === 'access');
    const paths = lines.map((l) => String(l.path)).filter((p) => p.startsWith('/many-'));
    t.equal(paths.length, N, `${N} access lines (got ${paths.length})`);
    t.equal(new Set(paths).size, N, 'each request exactly once');
    t.equal(new Set(lines.map((l) => l.request_id)).size, lines.length, 'request ids unique');
    const times = lines.map((l) => Date.parse(String(l.time)));
    t.ok(times.every((v, i) => i === 0 || v >= times[i - 1]!), 'lines in the order they were written (time never goes back)');
  });
}

t.test('access log to a file: 30 pipelined HTTP/1.1 requests on one connection are logged in request order, each once', async (t) => {
  const up = await startUpstream(t);
  const gw = await startFileGateway(t, `${LOOPBACK_LISTEN}log: { level: info, file: ./access.log }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`);
  const socket = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  socket.on('error', () => undefined);
  t.teardown(() => socket.destroy());
  let got = '';
  socket.on('data', (c: Buffer) => (got += c.toString('latin1')));
  await new Promise<void>((r) => socket.once('secureConnect', () => r()));
  let reqs = '';
  for (let i = 0; i < 30; i++) reqs += `GET /seq-${i} HTTP/1.1\r\nHost: app.test\r\n${i === 29 ? 'Connection: close\r\n' : ''}\r\n`;
  socket.write(reqs);
  await until(() => socket.destroyed || statuses(got).length === 30, 5000);
  t.equal(statuses(got).length, 30, 'thirty answers');
  const lines = (await gw.stopAndRead()).filter((l) => l.type === 'access');
  t.same(lines.map((l) => l.path), Array.from({ length: 30 }, (_v, i) => `/seq-${i}`), 'one line each, in request order');
});

t.test('redaction: token-like query parameters in odd spellings never reach the access line; Authorization and Cookie values never reach any line', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /deny, access: deny }, { path: /, access: public }]'));
  const cases: Array<[string, string]> = [
    ['lower', '/q?access_token=SECRETlower1'],
    ['upper', '/q?ACCESS_TOKEN=SECRETupper2'],
    ['mixed', '/q?Access_Token=SECRETmixed3'],
    ['percent-encoded name', '/q?%61ccess_token=SECRETpct4'],
    ['percent-encoded underscore', '/q?access%5Ftoken=SECRETpct5'],
    ['plus-free duplicates', '/q?access_token=SECRETdupA6&x=1&access_token=SECRETdupB7'],
    ['array brackets', '/q?access_token[]=SECRETarr8'],
    ['encoded array brackets', '/q?access_token%5B%5D=SECRETarr9'],
    ['indexed array', '/q?access_token[0]=SECRETarr10'],
    ['nested object', '/q?auth[access_token]=SECRETobj11'],
    ['other names', '/q?code=SECRETcode12&Password=SECRETpw13&client_secret=SECRETcs14&X-Amz-Signature=SECRETsig15'],
    ['on a refused request', '/deny?access_token=SECRETdeny16'],
    ['on a bad path', '/a%2fb?access_token=SECRETbad17'],
  ];
  for (const [, path] of cases) await gw.request({ path, headers: { authorization: 'Bearer SECRETauthz99', cookie: 'sid=SECRETcookie98' } });
  await sleep(100);
  const all = JSON.stringify(gw.logs);
  t.notMatch(all, /SECRETauthz99/, 'no Authorization value in any log line');
  t.notMatch(all, /SECRETcookie98/, 'no Cookie value in any log line');
  for (const [name, path] of cases) {
    const secrets = path.match(/SECRET[a-zA-Z]+\d+/g)!;
    for (const s of secrets) t.notMatch(all, new RegExp(s), `${name}: ${s} not logged (${String(gw.logs.find((l) => String(l.path).includes(s))?.path ?? 'redacted')})`);
  }
});

// =============================================================================================
// 4. The verified-token cache.

interface MutableIdp {
  issuer: string;
  yaml: string;
  /** kid → private key; `publish` sets which kids the JWKS lists. */
  sign(kid: string, claims?: Record<string, unknown>, expSeconds?: number): Promise<string>;
  publish(kids: string[]): void;
  jwksFetches(): number;
  /** Opaque token → introspection answer (absent: inactive). */
  opaque: Map<string, Record<string, unknown>>;
  introspections(): number;
}

async function startMutableIdp(t: Tap, introspectionCache = '1s'): Promise<MutableIdp> {
  const keys = new Map<string, { priv: Awaited<ReturnType<typeof generateKeyPair>>['privateKey']; pub: JWK }>();
  for (const kid of ['k1', 'k2']) {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    keys.set(kid, { priv: privateKey, pub: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } });
  }
  let published = ['k1'];
  let fetches = 0;
  let introspections = 0;
  const opaque = new Map<string, Record<string, unknown>>();
  const issuer = 'https://idp.round2.test';
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url === '/jwks') {
        fetches++;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: published.map((k) => keys.get(k)!.pub) }));
      } else if (req.url === '/introspect') {
        introspections++;
        const token = new URLSearchParams(Buffer.concat(chunks).toString()).get('token') ?? '';
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(opaque.get(token) ?? { active: false }));
      } else res.writeHead(404).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));
  const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return {
    issuer,
    yaml: `auth:
  issuers:
    - issuer: ${issuer}
      audiences: [api]
      algorithms: [ES256]
      jwks_uri: ${base}/jwks
      clock_skew: 0s
      introspection:
        endpoint: ${base}/introspect
        client_id: gateway
        client_secret: round2-secret
        cache: ${introspectionCache}
`,
    sign: (kid, claims = {}, expSeconds = 3600) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ sub: 'alice', ...claims })
        .setProtectedHeader({ alg: 'ES256', kid, typ: 'at+jwt' })
        .setIssuer(issuer)
        .setAudience('api')
        .setIssuedAt(now)
        .setExpirationTime(now + expSeconds)
        .sign(keys.get(kid)!.priv);
    },
    publish: (kids) => {
      published = kids;
    },
    jwksFetches: () => fetches,
    opaque,
    introspections: () => introspections,
  };
}

const authSite = (idp: MutableIdp, origin: string): string => `${LOOPBACK_LISTEN}${idp.yaml}
sites:
  - hosts: [app.test]
    upstream: ${origin}
    routes: [{ path: /, access: authenticated }]
`;

t.test('300 distinct valid tokens through one session: each request carries its own token\'s identity; expired and tampered tokens are refused', async (t) => {
  const idp = await startMutableIdp(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, authSite(idp, up.origin));
  const session = h2Session(t, gw);
  const tokens = await Promise.all(Array.from({ length: 300 }, (_v, i) => idp.sign('k1', { sub: `user-${i}` })));
  for (let round = 0; round < 2; round++) {
    const results = await Promise.all(tokens.map((tok, i) => h2Request(session, { ':path': `/u/${round}/${i}`, authorization: `Bearer ${tok}` })));
    t.equal(results.filter((r) => r.status === 200).length, 300, `round ${round}: all 200`);
  }
  const wrong = up.seen.filter((s) => s.headers['x-auth-user'] !== `user-${s.url.split('/')[3]}`);
  t.same(wrong.map((s) => `${s.url} ${String(s.headers['x-auth-user'])}`), [], 'no request got another token\'s identity');
  const expired = await idp.sign('k1', { sub: 'late' }, -5);
  t.equal((await h2Request(session, { ':path': '/expired', authorization: `Bearer ${expired}` })).status, 401);
  const [h, p, s] = tokens[7]!.split('.') as [string, string, string];
  const forgedPayload = Buffer.from(JSON.stringify({ ...(JSON.parse(Buffer.from(p, 'base64url').toString()) as object), sub: 'user-8' })).toString('base64url');
  t.equal((await h2Request(session, { ':path': '/tampered', authorization: `Bearer ${h}.${forgedPayload}.${s}` })).status, 401);
  t.notOk(up.seen.some((x) => x.url === '/expired' || x.url === '/tampered'), 'neither forwarded');
});

t.test('a key removed from the JWKS (emergency rotation): a token verified with it before is refused after the refresh, like an uncached token of that key', async (t) => {
  // The JWKS cooldown (30 s from the last fetch attempt) is skipped by shifting Date.now for this test.
  const realNow = Date.now.bind(Date);
  let offset = 0;
  Date.now = () => realNow() + offset;
  t.teardown(() => {
    Date.now = realNow;
  });
  const idp = await startMutableIdp(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, authSite(idp, up.origin));
  // Signed with k1 (say, a leaked key) and far-off exp: cached on first use.
  const cachedOld = await idp.sign('k1', { sub: 'mallory' }, 30 * 24 * 3600);
  t.equal((await gw.request({ path: '/before', headers: { authorization: `Bearer ${cachedOld}` } })).status, 200, 'k1 token: 200 (now cached)');
  // The IdP withdraws k1 and signs with k2 only; the gateway learns it at the first k2 token.
  idp.publish(['k2']);
  offset += 31_000;
  const fetchesBefore = idp.jwksFetches();
  const fresh = await idp.sign('k2', { sub: 'alice' });
  t.equal((await gw.request({ path: '/new-key', headers: { authorization: `Bearer ${fresh}` } })).status, 200, 'k2 token: 200');
  t.equal(idp.jwksFetches(), fetchesBefore + 1, 'the JWKS was fetched again (k1 is gone from what the gateway holds)');
  const uncachedOld = await idp.sign('k1', { sub: 'mallory2' });
  t.equal((await gw.request({ path: '/old-uncached', headers: { authorization: `Bearer ${uncachedOld}` } })).status, 401, 'an uncached k1 token: 401');
  const again = await gw.request({ path: '/old-cached', headers: { authorization: `Bearer ${cachedOld}` } });
  t.equal(again.status, 401, `the cached k1 token after the key was withdrawn: 401 (got ${again.status})`);
  t.notOk(up.seen.some((s) => s.url === '/old-cached'), 'and it never reaches the upstream');
});

t.test('introspection: a revoked opaque token is refused once introspection.cache (1 s) has passed', async (t) => {
  const idp = await startMutableIdp(t, '1s');
  const up = await startUpstream(t);
  const gw = await startGateway(t, authSite(idp, up.origin));
  const exp = Math.floor(Date.now() / 1000) + 3600;
  idp.opaque.set('opaque-good-1', { active: true, sub: 'bob', aud: 'api', exp, iss: idp.issuer, client_id: 'c' });
  const req = (path: string, token: string): Promise<number> => gw.request({ path, headers: { authorization: `Bearer ${token}` } }).then((r) => r.status);
  t.equal(await req('/bad1', 'opaque-bad-1'), 401, 'an unknown opaque token: 401 (negatively cached)');
  t.equal(await req('/bad2', 'opaque-bad-1'), 401);
  t.equal(await req('/good1', 'opaque-good-1'), 200, 'a valid opaque token right after: 200');
  t.equal(await req('/good2', 'opaque-good-1'), 200, 'cached');
  idp.opaque.delete('opaque-good-1'); // revoked at the IdP
  await sleep(1200);
  t.equal(await req('/good3', 'opaque-good-1'), 401, 'revoked: refused once the positive cache lapsed');
  t.same(up.seen.map((s) => s.url), ['/good1', '/good2']);
});

t.test('introspection: a flood of refused opaque tokens neither pushes a cached valid one out nor blocks it', async (t) => {
  // A cache far longer than the test: under CI load the flood alone can outlast a 1 s cache, and
  // the valid token would then be introspected again for that reason, not because it was evicted.
  const idp = await startMutableIdp(t, '1h');
  const up = await startUpstream(t);
  const gw = await startGateway(t, authSite(idp, up.origin));
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const req = (path: string, token: string): Promise<number> => gw.request({ path, headers: { authorization: `Bearer ${token}` } }).then((r) => r.status);
  idp.opaque.set('opaque-good-2', { active: true, sub: 'carol', aud: 'api', exp, iss: idp.issuer });
  t.equal(await req('/good4', 'opaque-good-2'), 200);
  const session = h2Session(t, gw);
  const flood = await Promise.all(Array.from({ length: 200 }, (_v, i) => h2Request(session, { ':path': `/guess-${i}`, authorization: `Bearer opaque-guess-${i}` })));
  t.equal(flood.filter((r) => r.status === 401).length, 200);
  const introspected = idp.introspections();
  t.equal(await req('/good5', 'opaque-good-2'), 200, 'the valid token still passes');
  t.equal(idp.introspections(), introspected, 'from the cache');
});

// =============================================================================================
// 5. Rate limits and bans in real time (MemoryStore on the real clock).

t.test('rate limit max 3 per 1 s window over HTTP/2: 3 pass with matching RateLimit-* headers, the 4th refused, the next window passes 3 again', async (t) => {
  const up = await startUpstream(t);
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public, rate_limit: { max: 3, window: 1s, key: ip } }]'), {}, { store: new MemoryStore() });
  const session = h2Session(t, gw);
  for (let w = 0; w < 2; w++) {
    const got: H2Response[] = [];
    for (let i = 0; i < 4; i++) got.push(await h2Request(session, { ':path': `/w${w}-${i}` }));
    t.same(got.map((r) => r.status), [200, 200, 200, 429], `window ${w}: 3 pass, the 4th is refused`);
    t.same(got.map((r) => r.headers['ratelimit-remaining']), ['2', '1', '0', '0'], `window ${w}: RateLimit-Remaining counts down`);
    t.ok(got.every((r) => r.headers['ratelimit-limit'] === '3'), 'RateLimit-Limit: 3');
    t.ok(got.every((r) => Number(r.headers['ratelimit-reset']) <= 1), 'RateLimit-Reset within the window');
    t.ok(Number(got[3]!.headers['retry-after']) <= 1, 'Retry-After on the 429');
    await sleep(1100);
  }
  t.same(up.seen.map((s) => s.url), ['/w0-0', '/w0-1', '/w0-2', '/w1-0', '/w1-1', '/w1-2'], 'the upstream saw exactly the allowed ones');
});

t.test('an upstream\'s own RateLimit-* headers never replace the gateway\'s on a limited route', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'RateLimit-Limit': '1000', 'RateLimit-Remaining': '999', 'RateLimit-Reset': '1' });
    res.end('ok');
  });
  const gw = await startGateway(t, site(up.origin, '[{ path: /, access: public, rate_limit: { max: 5, window: 1m, key: ip } }]'), {}, { store: new MemoryStore() });
  const session = h2Session(t, gw);
  const r1 = await h2Request(session, { ':path': '/a' });
  t.equal(r1.headers['ratelimit-limit'], '5');
  t.equal(r1.headers['ratelimit-remaining'], '4');
  const r2 = await gw.request({ path: '/b' });
  t.equal(r2.headers['ratelimit-limit'], '5', 'HTTP/1.1 too');
  t.equal(r2.headers['ratelimit-remaining'], '3');
});

t.test('ban after a concurrent burst of bad tokens (HTTP/2): refused for the whole ban duration, the upstream sees nothing meanwhile, then served again', async (t) => {
  const idp = await startMutableIdp(t);
  const up = await startUpstream(t);
  const gw = await startGateway(t, `${LOOPBACK_LISTEN}${idp.yaml}bans: { auth_failures: 3, window: 10s, duration: 2s }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { path: /public, access: public }
      - { path: /, access: authenticated }
`, {}, { store: new MemoryStore() });
  const good = await idp.sign('k1', { sub: 'alice' });
  const bad = `${good.slice(0, -4)}AAAA`;
  const session = h2Session(t, gw);
  const burst = await Promise.all(Array.from({ length: 10 }, (_v, i) => h2Request(session, { ':path': `/guess-${i}`, authorization: `Bearer ${bad}` })));
  t.ok(burst.every((r) => r.status === 401 || r.status === 429), `burst: 401s then 429s (${burst.map((r) => r.status).join(',')})`);
  t.ok(burst.filter((r) => r.status === 401).length >= 3, 'at least the threshold of 401s');
  const banStarted = Date.now();
  const seen = up.seen.length;
  const during: number[] = [];
  while (Date.now() - banStarted < 1700) {
    during.push((await h2Request(session, { ':path': '/public/x' })).status);
    during.push((await h2Request(session, { ':path': '/private', authorization: `Bearer ${good}` })).status);
    await sleep(150);
  }
  t.ok(during.every((s) => s === 429), `every request during the ban: 429 (${[...new Set(during)].join(',')})`);
  t.equal(up.seen.length, seen, 'the upstream saw nothing during the ban');
  await sleep(Math.max(0, 2100 - (Date.now() - banStarted)));
  t.equal((await h2Request(session, { ':path': '/public/after' })).status, 200, 'served again after the ban');
  t.equal((await h2Request(session, { ':path': '/private-after', authorization: `Bearer ${good}` })).status, 200);
});
