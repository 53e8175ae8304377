/**
 * Clients for attack tests that need to see the bytes: a raw HTTP/1.1 client over TLS that keeps
 * everything the gateway sends, a parser of those bytes into responses, an HTTP/2 session and
 * request, and the one-site configuration most of these tests run.
 */
import http2 from 'node:http2';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { LOOPBACK_LISTEN, statusOf, until, type RunningGateway, type Tap } from './gateway.js';

/** One site `app.test` in front of `origin` (or a list of targets), public unless `routes` says otherwise. */
export const appSite = (origin: string | string[], routes = '[{ path: /, access: public }]', extra = ''): string => `${LOOPBACK_LISTEN}${extra}
sites:
  - hosts: [app.test]
    upstream: ${Array.isArray(origin) ? `[${origin.join(', ')}]` : origin}
    routes: ${routes}
`;

export interface TlsClient {
  socket: tls.TLSSocket;
  /** Everything received so far, as latin1 text. */
  text(): string;
  isClosed(): boolean;
  /** `Date.now()` when the connection closed (0 while it is open). */
  closedAt(): number;
  /** Resolves true once the gateway closed the connection, false if it is still open after `ms`. */
  closedWithin(ms: number): Promise<boolean>;
}

/** A raw HTTP/1.1 client over TLS (ALPN http/1.1) that keeps everything the gateway sends; destroyed at teardown. */
export async function tlsClient(t: Tap, gw: RunningGateway): Promise<TlsClient> {
  const socket = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['http/1.1'] });
  const chunks: Buffer[] = [];
  let closedAt = 0;
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.on('error', () => undefined);
  socket.on('close', () => (closedAt = Date.now()));
  t.teardown(() => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  return {
    socket,
    text: () => Buffer.concat(chunks).toString('latin1'),
    isClosed: () => closedAt !== 0,
    closedAt: () => closedAt,
    closedWithin: (ms) => until(() => closedAt !== 0, ms),
  };
}

export interface RawResponse {
  status: number;
  /** Raw header lines of the head, as sent. */
  lines: string[];
  /** Lower-case names; repeated ones joined with ', '. */
  headers: Record<string, string>;
  body: string;
  /** The body's framing was complete (Content-Length reached, or the last chunk seen). */
  complete: boolean;
}

/**
 * Splits the bytes a gateway sent on one HTTP/1.1 connection into responses. `methods` are the
 * methods of the requests, in order (a HEAD response has no body whatever its headers say).
 */
export function parseResponses(raw: string, methods: string[]): RawResponse[] {
  const out: RawResponse[] = [];
  let rest = raw;
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n');
    if (end === -1) break;
    const [statusLine, ...lines] = rest.slice(0, end).split('\r\n');
    rest = rest.slice(end + 4);
    const status = statusOf(statusLine!);
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const i = line.indexOf(':');
      const name = line.slice(0, i).toLowerCase();
      const value = line.slice(i + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    const method = methods[out.length] ?? 'GET';
    let body = '';
    let complete = true;
    if (method === 'HEAD' || status < 200 || status === 204 || status === 304) {
      // no body (an interim response is followed by the final one)
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      complete = false;
      for (;;) {
        const eol = rest.indexOf('\r\n');
        if (eol === -1) break;
        const size = parseInt(rest.slice(0, eol), 16);
        if (Number.isNaN(size)) break;
        if (size === 0) {
          if (rest.startsWith('\r\n', eol + 2)) {
            complete = true;
            rest = rest.slice(eol + 4);
          }
          break;
        }
        const data = rest.slice(eol + 2, eol + 2 + size);
        body += data;
        if (data.length < size || !rest.startsWith('\r\n', eol + 2 + size)) {
          rest = '';
          break;
        }
        rest = rest.slice(eol + 4 + size);
      }
    } else if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      body = rest.slice(0, n);
      complete = body.length === n;
      rest = rest.slice(n);
    } else {
      body = rest;
      rest = '';
    }
    out.push({ status, lines, headers, body, complete });
  }
  return out;
}

/** Status codes of every HTTP/1.x response head in raw bytes of one connection, in order. */
export const statuses = (raw: string): number[] => [...raw.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1]));

/** Raw bytes to a plain TCP port; everything sent back until close (or `waitMs`). */
export function rawTcp(port: number, bytes: string | Buffer, waitMs = 1500): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect(port, '127.0.0.1', () => s.write(bytes));
    const timer = setTimeout(() => s.destroy(), waitMs);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
    s.on('error', (err) => {
      if (chunks.length === 0) reject(err);
    });
  });
}

/** An HTTP/2 session to the gateway (`app.test`), destroyed at teardown. */
export function h2Session(t: Tap, gw: RunningGateway): http2.ClientHttp2Session {
  const session = http2.connect(`https://127.0.0.1:${gw.port}`, { ca: gw.ca, servername: 'app.test' });
  session.on('error', () => undefined);
  t.teardown(() => session.destroy());
  return session;
}

export interface H2Response {
  /** NaN when no response head arrived (the stream was reset first). */
  status: number;
  headers: http2.IncomingHttpHeaders;
  /** Statuses of the 1xx heads before the response. */
  informational: number[];
  trailers: http2.IncomingHttpHeaders | null;
  body: string;
  /** The stream's RST_STREAM code (0: NO_ERROR). */
  rstCode: number | undefined;
}

/** One HTTP/2 request to `app.test`, read until its stream closes (ended or reset). */
export function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<H2Response> {
  return new Promise((resolve) => {
    const req = session.request({ ':authority': 'app.test', ...headers });
    let text = '';
    let head: http2.IncomingHttpHeaders = {};
    const informational: number[] = [];
    let trailers: http2.IncomingHttpHeaders | null = null;
    req.setEncoding('utf8');
    req.on('headers', (h) => informational.push(Number(h[':status'])));
    req.on('response', (h) => (head = h));
    req.on('trailers', (h) => (trailers = h));
    req.on('data', (d: string) => (text += d));
    req.on('close', () => resolve({ status: Number(head[':status']), headers: head, informational, trailers, body: text, rstCode: req.rstCode }));
    req.on('error', () => undefined);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

/** One HTTP/2 frame: 9-byte header + payload. */
export function h2Frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/** RFC 6455 §1.3: the `Sec-WebSocket-Accept` that answers a handshake's `Sec-WebSocket-Key`. */
export function wsAccept(key: string): string {
  return createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
}

/** A WebSocket frame as a client sends it (masked); `first`: the FIN and RSV bits. */
export function wsClientFrame(opcode: number, payload: Buffer = Buffer.alloc(0), first = 0x80): Buffer {
  const mask = randomBytes(4);
  const len = payload.length;
  const b0 = first | opcode;
  let head: Buffer;
  if (len < 126) head = Buffer.from([b0, 0x80 | len]);
  else if (len < 65536) head = Buffer.from([b0, 0x80 | 126, len >> 8, len & 255]);
  else {
    head = Buffer.alloc(10);
    head[0] = b0;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  const body = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) body[i] = payload[i]! ^ mask[i & 3]!;
  return Buffer.concat([head, mask, body]);
}

// Raw HTTP/2 (for frames node:http2's client will not send).
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const H2_RST_STREAM = 3;
const H2_SETTINGS = 4;
const H2_GOAWAY = 7;

export interface H2Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** A raw HTTP/2 client connection: it sends what it is told and keeps every frame it receives. */
export interface RawH2 {
  socket: tls.TLSSocket;
  send(...frames: Buffer[]): void;
  frames(): H2Frame[];
  /** Frames of one stream (or of the connection: 0). */
  on(stream: number): H2Frame[];
  closed(): boolean;
  closedWithin(ms: number): Promise<boolean>;
  /** Error codes of the GOAWAY frames received. */
  goaways(): number[];
  /** The RST_STREAM code of `stream`, or undefined. */
  rst(stream: number): number | undefined;
}

export function settingsPayload(entries: Array<[number, number]>): Buffer {
  const b = Buffer.alloc(entries.length * 6);
  entries.forEach(([id, v], i) => {
    b.writeUInt16BE(id, i * 6);
    b.writeUInt32BE(v >>> 0, i * 6 + 2);
  });
  return b;
}

/**
 * Opens a raw HTTP/2 connection: preface and a SETTINGS frame with `settings` (id, value). The
 * gateway's SETTINGS are acknowledged, nothing else is answered (no WINDOW_UPDATE, no PING ACK).
 */
export async function rawH2(t: Tap, gw: RunningGateway, settings: Array<[number, number]> = []): Promise<RawH2> {
  const socket = tls.connect({ host: '127.0.0.1', port: gw.port, ca: gw.ca, servername: 'app.test', ALPNProtocols: ['h2'] });
  socket.on('error', () => undefined);
  t.teardown(() => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  let buf = Buffer.alloc(0);
  const frames: H2Frame[] = [];
  let closed = false;
  socket.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const f = { type: buf[3]!, flags: buf[4]!, stream: buf.readUInt32BE(5) & 0x7fffffff, payload: Buffer.from(buf.subarray(9, 9 + len)) };
      frames.push(f);
      if (f.type === H2_SETTINGS && (f.flags & 1) === 0 && !socket.destroyed) socket.write(h2Frame(H2_SETTINGS, 1, 0, Buffer.alloc(0)));
      buf = buf.subarray(9 + len);
    }
  });
  socket.on('close', () => (closed = true));
  socket.write(Buffer.concat([H2_PREFACE, h2Frame(H2_SETTINGS, 0, 0, settingsPayload(settings))]));
  return {
    socket,
    send: (...bufs) => {
      if (!socket.destroyed) socket.write(Buffer.concat(bufs));
    },
    frames: () => frames,
    on: (stream) => frames.filter((f) => f.stream === stream),
    closed: () => closed,
    closedWithin: (ms) => until(() => closed, ms),
    goaways: () => frames.filter((f) => f.type === H2_GOAWAY).map((f) => f.payload.readUInt32BE(4)),
    rst: (stream) => frames.find((f) => f.type === H2_RST_STREAM && f.stream === stream)?.payload.readUInt32BE(0),
  };
}
