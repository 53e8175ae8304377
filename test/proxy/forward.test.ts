// proxy/forward.ts on its own: a real client-facing HTTP server forwarding to a real upstream,
// with recording hooks. What the gateway relies on: the order of the hooks, and that a head Node
// refuses to write (a CR/LF a hook let through) cuts the response: no split head, no upstream byte.
import t from 'tap';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { UpstreamClient, type ForwardHooks } from '../../src/proxy/forward.js';
import { UpstreamPool } from '../../src/proxy/upstreams.js';
import { classifyUpstreamError } from '../../src/proxy/upstream-errors.js';

type Call = [string, ...unknown[]];

async function listen(t: { teardown(fn: () => unknown): void }, handler: http.RequestListener): Promise<number> {
  const server = http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));
  return (server.address() as AddressInfo).port;
}

/** A gateway stand-in: forwards every request with `rewrite` applied to the upstream's headers. */
async function frontFor(
  t: { teardown(fn: () => unknown): void },
  upstreamPort: number,
  rewrite: (h: http.IncomingHttpHeaders) => http.OutgoingHttpHeaders,
): Promise<{ port: number; calls: Call[] }> {
  const client = new UpstreamClient({ connections: 4, connectTimeoutMs: 1000, keepAliveTimeoutMs: 1000 });
  t.teardown(() => client.close());
  const pool = new UpstreamPool([{ origin: `http://127.0.0.1:${upstreamPort}` } as never]);
  const calls: Call[] = [];
  const hooks: ForwardHooks<http.ServerResponse> = {
    responseHeaders: (_res, status, headers) => {
      calls.push(['responseHeaders', status]);
      return rewrite(headers);
    },
    committed: (_res, origin, status) => calls.push(['committed', origin, status]),
    connectFailed: (_res, origin, kind) => calls.push(['connectFailed', origin, kind]),
    failed: (res, _origin, error) => {
      calls.push(['failed', classifyUpstreamError(error), (error as { code?: string }).code]);
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('gateway error');
    },
    ended: (_res, outcome, bytes, error) => calls.push(error ? ['ended', outcome, bytes, classifyUpstreamError(error), (error as { code?: string }).code] : ['ended', outcome, bytes]),
  };
  const port = await listen(t, (req, res) => {
    client.forward(
      { pool, target: 0, method: req.method!, path: req.url!, headers: {}, body: null, timeoutMs: 2000, res, http1Request: req },
      hooks,
      res,
    );
  });
  return { port, calls };
}

function get(port: number, path: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    }).on('error', reject);
  });
}

/** Everything the server sends to one raw request, until it closes the connection. */
function raw(port: number, path: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`));
    let text = '';
    socket.on('data', (c: Buffer) => (text += c.toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(text));
  });
}

t.test('a response: responseHeaders, committed, then ended with the bytes sent', async (t) => {
  const up = await listen(t, (req, res) => {
    if (req.url === '/empty') {
      res.writeHead(204);
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'x-up': '1' });
    res.write('hello ');
    res.end('world');
  });
  const front = await frontFor(t, up, (h) => ({ ...h, 'x-added': 'yes' }));
  const res = await get(front.port, '/x');
  t.equal(res.status, 200);
  t.equal(res.body, 'hello world');
  t.equal(res.headers['x-added'], 'yes', 'the rewritten headers are the ones sent');
  await new Promise((r) => setTimeout(r, 50));
  t.same(front.calls, [['responseHeaders', 200], ['committed', `http://127.0.0.1:${up}`, 200], ['ended', 'finished', 11]]);

  front.calls.length = 0;
  t.equal((await get(front.port, '/empty')).status, 204);
  await new Promise((r) => setTimeout(r, 50));
  t.same(front.calls, [['responseHeaders', 204], ['committed', `http://127.0.0.1:${up}`, 204], ['ended', 'finished', 0]]);
});

t.test('a head Node refuses to write: the response is cut, nothing of it sent, with or without a body', async (t) => {
  const up = await listen(t, (req, res) => {
    if (req.url === '/empty') {
      res.writeHead(204, { 'x-up': 'secret' });
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'x-up': 'secret' });
    res.end('upstream body');
  });
  // A CR/LF in a value: Node throws rather than split the response.
  const front = await frontFor(t, up, (h) => ({ ...h, 'x-injected': 'a\r\nSet-Cookie: evil=1' }));
  for (const path of ['/body', '/empty']) {
    front.calls.length = 0;
    t.equal(await raw(front.port, path), '', `${path}: the connection closes without a byte`);
    await new Promise((r) => setTimeout(r, 50));
    t.same(
      front.calls,
      [['responseHeaders', path === '/empty' ? 204 : 200], ['ended', 'cut', 0, 'bad_response', 'GW_UPSTREAM_BAD_HEADER']],
      `${path}: cut, never committed`,
    );
  }
});
