/**
 * Header and request deadlines for HTTP/1.1 connections on the HTTPS listener.
 *
 * Node's http2 server with `allowHTTP1` hands HTTP/1.1 connections to the http1 parser but does
 * not apply `headersTimeout`/`requestTimeout` to them (verified on Node 20), so a client could
 * drip header bytes forever (slowloris). This guard gives every HTTP/1.1 connection a deadline to
 * deliver complete request headers, and every request a deadline to deliver its body.
 */
import type { Server as HttpServer, IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';

const kTimer = Symbol('portcullis.headersTimer');
type Guarded = TLSSocket & { [kTimer]?: NodeJS.Timeout };

const TIMEOUT_RESPONSE = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

export class SlowlorisGuard {
  private readonly sockets = new Set<Guarded>();

  constructor(
    private readonly headersTimeout: number,
    private readonly requestTimeout: number,
    private readonly keepAliveIdle = 5_000,
  ) {}

  attach(server: HttpServer): void {
    server.on('secureConnection', (socket: Guarded) => {
      if (socket.alpnProtocol === 'h2') return; // HTTP/2 sessions have their own idle timeout
      this.sockets.add(socket);
      this.arm(socket, this.headersTimeout);
      socket.once('close', () => {
        this.disarm(socket);
        this.sockets.delete(socket);
      });
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (req.httpVersionMajor !== 1) return;
      const socket = req.socket as Guarded;
      this.disarm(socket);
      const bodyTimer = setTimeout(() => {
        if (!res.headersSent) socket.end(TIMEOUT_RESPONSE);
        socket.destroySoon();
      }, this.requestTimeout);
      bodyTimer.unref();
      const clear = (): void => clearTimeout(bodyTimer);
      if (req.complete) clear();
      else {
        req.once('end', clear);
        req.once('close', clear);
      }
      res.once('finish', () => {
        clear();
        // Keep-alive: the next request's headers must arrive within idle + headers time.
        if (!socket.destroyed) this.arm(socket, this.keepAliveIdle + this.headersTimeout);
      });
    });
    server.on('upgrade', (req: IncomingMessage) => this.disarm(req.socket as Guarded));
  }

  private arm(socket: Guarded, ms: number): void {
    this.disarm(socket);
    const t = setTimeout(() => {
      socket.end(TIMEOUT_RESPONSE);
      socket.destroySoon();
    }, ms);
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
