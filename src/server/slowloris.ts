/**
 * Header and request deadlines for HTTP/1.1 connections on the HTTPS listener, and the request
 * (body) deadline for HTTP/2 streams.
 *
 * Node's http2 server with `allowHTTP1` hands HTTP/1.1 connections to the http1 parser but does
 * not apply `headersTimeout`/`requestTimeout` to them (verified on Node 20), so a client could
 * drip header bytes forever (slowloris). This guard gives every HTTP/1.1 connection a deadline to
 * deliver complete request headers, and every request a deadline to deliver its body.
 */
import type { Server as HttpServer, IncomingMessage, ServerResponse } from 'node:http';
import { constants as h2, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2';
import type { TLSSocket } from 'node:tls';

const kTimer = Symbol('portcullis.headersTimer');
const kIdleSince = Symbol('portcullis.idleSinceBytes');
const kActive = Symbol('portcullis.activeRequests');
type Guarded = TLSSocket & { [kTimer]?: NodeJS.Timeout; [kIdleSince]?: number; [kActive]?: number; _httpMessage?: unknown };

const TIMEOUT_RESPONSE = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

/**
 * A deadline passed: the client gets a 408 and the connection ends. `res`: the response of the
 * request whose body was late, if any. The 408 is written as raw bytes, so only when nothing else
 * is being written on the connection: not once that response has started, nor while an earlier
 * pipelined response is still going out (Node attaches one response at a time to the socket):
 * the bytes would land inside it. Then the connection is only closed.
 */
/** Responses whose request got the guard's 408, written as raw bytes (Node's `res` never knew). */
const answeredByGuard = new WeakSet<object>();

/** Whether the guard answered `res`'s request with its own 408 (for the access line). */
export function answeredRequestTimeout(res: object): boolean {
  return answeredByGuard.has(res);
}

function timedOut(socket: Guarded, res: ServerResponse | null): void {
  const writing = socket._httpMessage;
  const busy = (writing !== undefined && writing !== null && writing !== res) || res?.headersSent === true;
  if (!busy) {
    socket.end(TIMEOUT_RESPONSE);
    if (res !== null) answeredByGuard.add(res);
  }
  socket.destroySoon();
}

export class SlowlorisGuard {
  private readonly sockets = new Set<Guarded>();

  /**
   * @param keepAliveIdle how long a keep-alive connection may sit between requests (`timeouts.idle`):
   *   then it is closed quietly (no 408 to a client that sent nothing). If the next request has
   *   started by then, its headers get `headersTimeout` more before the 408.
   */
  constructor(
    private readonly headersTimeout: number,
    private readonly requestTimeout: number,
    private readonly keepAliveIdle: number,
  ) {}

  /** One shared 'close' listener (`this` is the socket): no closure or once-wrapper per connection. */
  private readonly onClose = ((guard: SlowlorisGuard) =>
    function (this: Guarded): void {
      guard.disarm(this);
      guard.sockets.delete(this);
    })(this);

  attach(server: HttpServer): void {
    server.on('secureConnection', (socket: Guarded) => {
      if (socket.alpnProtocol === 'h2') return; // HTTP/2 sessions have their own idle timeout
      this.sockets.add(socket);
      this.arm(socket, this.headersTimeout);
      // 'close' is emitted once per socket, so a plain listener is enough.
      socket.on('close', this.onClose);
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (req.httpVersionMajor === 2) {
        this.streamBodyDeadline(req as unknown as Http2ServerRequest, res as unknown as Http2ServerResponse);
        return;
      }
      if (req.httpVersionMajor !== 1) return;
      const socket = req.socket as Guarded;
      this.disarm(socket);
      // Pipelined requests: Node emits 'request' for the next one while an earlier response is
      // still going out. The connection is idle only once every one of them is over; an idle
      // deadline armed by the first response to finish would cut the others.
      socket[kActive] = (socket[kActive] ?? 0) + 1;
      // 'close' comes once per response, finished or not (then the connection is going anyway).
      res.once('close', () => {
        socket[kActive]! -= 1;
        if (socket[kActive] === 0 && !socket.destroyed) this.armIdle(socket);
      });
      // RFC 9112 §6.3: neither Content-Length nor Transfer-Encoding → no body, nothing left to
      // wait for: no body deadline (a timer and three listeners less on most requests).
      if (req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined) return;
      // `complete`: the whole body arrived (a pipelined request waiting for its turn has not been
      // read yet, so its 'end' has not come; its body is there all the same).
      const bodyTimer = setTimeout(() => {
        if (!req.complete) timedOut(socket, res);
      }, this.requestTimeout);
      bodyTimer.unref();
      const clear = (): void => clearTimeout(bodyTimer);
      if (req.complete) clear();
      else {
        req.once('end', clear);
        req.once('close', clear);
        res.once('close', clear);
      }
    });
    server.on('upgrade', (req: IncomingMessage) => this.disarm(req.socket as Guarded));
    // HTTP/2: a header block the client leaves unfinished (HEADERS without END_HEADERS, then a
    // CONTINUATION now and then) makes no stream, so none of the above sees it: the session's
    // first request must be whole within `headers_timeout`, as an HTTP/1.1 connection's first
    // headers. Later ones are bounded by `timeouts.idle`.
    server.on('session', (session: ServerHttp2Session) => {
      const timer = setTimeout(() => session.destroy(), this.headersTimeout).unref();
      session.once('stream', () => clearTimeout(timer));
      session.once('close', () => clearTimeout(timer));
    });
  }

  /**
   * HTTP/2: the session's idle timeout does not end one stream whose body stalls while others are
   * busy, so each stream with a body gets `limits.request_timeout` to deliver it, as an HTTP/1.1
   * request does. Then a 408 if nothing was answered yet (and RST_STREAM NO_ERROR once it is out,
   * RFC 9113 §8.1: stop sending), else the stream is reset (CANCEL); either way the upstream
   * request is aborted (the forwarding path sees the client's side close).
   */
  private streamBodyDeadline(req: Http2ServerRequest, res: Http2ServerResponse): void {
    const stream = req.stream;
    // HEADERS with END_STREAM: no body to wait for (every GET from a browser).
    if (stream.endAfterHeaders || req.complete) return;
    const timer = setTimeout(() => {
      if (stream.destroyed || req.complete) return;
      if (!res.headersSent) {
        // The stream's own 'finish' (the 408 is out): the compat response's comes only once the
        // stream has closed, which a client still sending never lets happen.
        stream.once('finish', () => stream.close(h2.NGHTTP2_NO_ERROR));
        res.writeHead(408, { 'content-length': '0', 'cache-control': 'no-store' });
        res.end();
      } else {
        stream.close(h2.NGHTTP2_CANCEL);
      }
    }, this.requestTimeout);
    timer.unref();
    const clear = (): void => clearTimeout(timer);
    req.once('end', clear);
    stream.once('close', clear);
  }

  /** A connection the HTTP server let go of (a CONNECT the gateway answers and closes itself). */
  release(socket: object): void {
    this.disarm(socket as Guarded);
  }

  private arm(socket: Guarded, ms: number): void {
    this.disarm(socket);
    const t = setTimeout(() => timedOut(socket, null), ms);
    t.unref();
    socket[kTimer] = t;
  }

  /** Between keep-alive requests: quiet close after `keepAliveIdle` unless the next request began. */
  private armIdle(socket: Guarded): void {
    this.disarm(socket);
    socket[kIdleSince] = socket.bytesRead;
    const t = setTimeout(() => {
      socket[kTimer] = undefined;
      if (socket.bytesRead === socket[kIdleSince]) {
        socket.end();
        socket.destroySoon();
      } else {
        this.arm(socket, this.headersTimeout);
      }
    }, this.keepAliveIdle);
    t.unref();
    socket[kTimer] = t;
  }

  private disarm(socket: Guarded): void {
    const t = socket[kTimer];
    if (t) {
      clearTimeout(t);
      socket[kTimer] = undefined;
    }
  }

  close(): void {
    for (const s of this.sockets) this.disarm(s);
    this.sockets.clear();
  }
}
