// The fixed upstream of every benchmark: Node `http`, a constant ~1 KB JSON body, keep-alive; and,
// for the `ws` scenario, a WebSocket echo (the `ws` library, as a Node app would use it) on any path.
// Run as a child process: `node upstream.mjs [port]`; prints `LISTENING <port>` when ready.
import http from 'node:http';
// The gateway's own dependency (the repository's node_modules), so the bench installs nothing more.
import { WebSocketServer } from 'ws';

const items = Array.from({ length: 15 }, (_, i) => ({ id: i + 1, name: `item-${i + 1}`, price: 10 + i, tags: ['bench', 'portcullis'] }));
const BODY = Buffer.from(JSON.stringify({ ok: true, service: 'bench-upstream', items }));

const server = http.createServer((req, res) => {
  // Drain any request body before answering, so keep-alive connections stay usable.
  req.resume();
  req.on('end', () => {
    // The Set-Cookie lets the gateway's cookie rules do real work on every response.
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': BODY.length, 'set-cookie': 'session=abc123; Path=/' });
    res.end(BODY);
  });
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => ws.terminate());
  });
});
// Longer than any proxy's upstream idle timeout, so the proxy (not us) decides when to close.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 130_000;
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port} ${BODY.length}\n`);
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
