// The WebSocket load generator of the `ws` scenario: N connections, each sending one message and
// waiting for its echo before sending the next (a round trip per message, as wrk does per request).
// Run as a child process pinned to the load generator's core:
//
//   node ws-load.mjs --url https://localhost:PORT/ --connections 64 --duration-ms 5000
//                    [--warmup-ms 1000] [--bytes 125] [--header "name: value"]...
//
// Prints one line `BENCH_JSON {"requests":..,"all_requests":..,"duration_us":..,"p50_us":..,"p99_us":..,"errors":{..}}`
// in wrk's shape (bench/lib/stats.mjs parses both), where a request is one message echoed;
// `all_requests` counts the warm-up's too (the server's CPU time is read over the whole run).
//
// Written on raw sockets with frames built once, so that the generator costs little per message:
// the system under test, not this process, must be the bottleneck (the `direct` row shows where
// this process and the echo upstream, which share the load core, top out).
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    connections: { type: 'string', default: '64' },
    'duration-ms': { type: 'string', default: '5000' },
    'warmup-ms': { type: 'string', default: '1000' },
    bytes: { type: 'string', default: '125' },
    header: { type: 'string', multiple: true, default: [] },
  },
});
const url = new URL(values.url);
const connections = Number(values.connections);
const durationMs = Number(values['duration-ms']);
const warmupMs = Number(values['warmup-ms']);
const bytes = Number(values.bytes);
if (!(connections > 0) || !(durationMs > 0) || !(warmupMs >= 0) || !(bytes > 0 && bytes < 65536)) {
  process.stderr.write('ws-load: bad arguments\n');
  process.exit(2);
}

// The client's message: a masked text frame (RFC 6455 §5.2), the same bytes every time.
const payload = Buffer.alloc(bytes, 'x');
const mask = randomBytes(4);
const head = bytes < 126 ? Buffer.from([0x81, 0x80 | bytes]) : Buffer.from([0x81, 0x80 | 126, bytes >> 8, bytes & 0xff]);
const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
const FRAME = Buffer.concat([head, mask, masked]);
// Its echo: the same text, unmasked (a server never masks).
const ECHO_BYTES = (bytes < 126 ? 2 : 4) + bytes;

const handshake = (key) =>
  `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${values.header.map((h) => `${h}\r\n`).join('')}\r\n`;

const errors = { connect: 0, read: 0, write: 0, status: 0, timeout: 0 };
let measuring = false;
let stopped = false;
let messages = 0;
// Every message echoed, warm-up included: the server's CPU time is read over the whole run.
let allMessages = 0;
// Round trips in µs, measured ones only.
const rtts = [];

function open() {
  return new Promise((resolve) => {
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    const socket = url.protocol === 'https:'
      ? tls.connect({ host: '127.0.0.1', port, servername: url.hostname, rejectUnauthorized: false })
      : net.connect({ host: '127.0.0.1', port });
    socket.setNoDelay(true);
    let upgraded = false;
    let pending = Buffer.alloc(0);
    let received = 0;
    let sentAt = 0;
    const send = () => {
      if (stopped) return;
      sentAt = performance.now();
      socket.write(FRAME);
    };
    socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => socket.write(handshake(randomBytes(16).toString('base64'))));
    socket.on('data', (chunk) => {
      if (!upgraded) {
        pending = Buffer.concat([pending, chunk]);
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (!pending.subarray(0, 13).toString('latin1').startsWith('HTTP/1.1 101')) {
          errors.status++;
          socket.destroy();
          resolve(false);
          return;
        }
        upgraded = true;
        received = pending.length - end - 4;
        pending = Buffer.alloc(0);
        resolve(true);
        send();
        return;
      }
      received += chunk.length;
      // Echoes are whole frames of a known size: count them by bytes, as the frames go.
      while (received >= ECHO_BYTES) {
        received -= ECHO_BYTES;
        allMessages++;
        if (measuring) {
          messages++;
          rtts.push((performance.now() - sentAt) * 1000);
        }
        send();
      }
    });
    socket.on('error', (err) => {
      if (stopped) return;
      if (!upgraded) errors.connect++;
      else if (err.code === 'EPIPE') errors.write++;
      else errors.read++;
      resolve(false);
    });
    socket.on('close', () => {
      if (!stopped && upgraded) errors.read++;
      resolve(false);
    });
    sockets.push(socket);
  });
}

const sockets = [];
const opened = await Promise.all(Array.from({ length: connections }, open));
if (!opened.some(Boolean)) {
  process.stdout.write(`BENCH_JSON ${JSON.stringify({ requests: 0, duration_us: 0, p50_us: 0, p99_us: 0, errors })}\n`);
  process.exit(1);
}
await new Promise((r) => setTimeout(r, warmupMs));
measuring = true;
const started = performance.now();
await new Promise((r) => setTimeout(r, durationMs));
measuring = false;
const elapsedUs = (performance.now() - started) * 1000;
stopped = true;
for (const s of sockets) s.destroy();
rtts.sort((a, b) => a - b);
const pct = (p) => (rtts.length === 0 ? 0 : Math.round(rtts[Math.min(rtts.length - 1, Math.floor((p / 100) * rtts.length))]));
process.stdout.write(`BENCH_JSON ${JSON.stringify({ requests: messages, all_requests: allMessages, duration_us: Math.round(elapsedUs), p50_us: pct(50), p99_us: pct(99), errors })}\n`);
