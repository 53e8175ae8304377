// `floor`: the cheapest reverse proxy this project's stack can be, as the reference for what the
// gateway itself adds. The same server the gateway runs (Fastify, HTTP/2 with HTTP/1.1 allowed,
// the same certificate), one wildcard route, and undici's dispatcher streaming the upstream's
// answer into the raw response: no policy, no headers rewritten beyond hop-by-hop ones, no log,
// no metrics. Run as a child process:
//   node floor.mjs <port> <upstream origin> <cert file> <key file>
// and prints `LISTENING <port>` when ready.
import { readFileSync } from 'node:fs';
import Fastify from 'fastify';
import { Agent } from 'undici';

const [port, origin, certFile, keyFile] = process.argv.slice(2);
if (!port || !origin || !certFile || !keyFile) {
  process.stderr.write('usage: node floor.mjs <port> <upstream origin> <cert file> <key file>\n');
  process.exit(2);
}

// RFC 9110 §7.6.1: connection-specific fields never cross a proxy.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'http2-settings']);

const agent = new Agent({ connections: 256, pipelining: 1, keepAliveTimeout: 4_000, keepAliveMaxTimeout: 4_000 });
const app = Fastify({
  http2: true,
  https: { cert: readFileSync(certFile), key: readFileSync(keyFile), allowHTTP1: true },
  logger: false,
});

app.all('/*', (request, reply) => {
  reply.hijack();
  const res = reply.raw;
  const headers = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (!HOP_BY_HOP.has(name) && name !== 'host' && name[0] !== ':') headers[name] = value;
  }
  headers.host = new URL(origin).host;
  agent.dispatch(
    { origin, path: request.raw.url, method: request.raw.method, headers, body: request.raw.method === 'GET' || request.raw.method === 'HEAD' ? null : request.raw },
    {
      onRequestStart() {},
      onResponseStart(_controller, status, upstreamHeaders) {
        const out = {};
        for (const [name, value] of Object.entries(upstreamHeaders)) if (!HOP_BY_HOP.has(name)) out[name] = value;
        res.writeHead(status, out);
      },
      onResponseData(_controller, chunk) {
        res.write(chunk);
      },
      onResponseEnd() {
        res.end();
      },
      onResponseError(_controller, err) {
        if (!res.headersSent) {
          res.writeHead(502, { 'content-length': '0' });
          res.end();
        } else {
          res.destroy(err);
        }
      },
    },
  );
});

await app.listen({ port: Number(port), host: '127.0.0.1' });
process.stdout.write(`LISTENING ${port}\n`);
process.on('SIGTERM', () => {
  agent.close().finally(() => process.exit(0));
  app.close();
});
