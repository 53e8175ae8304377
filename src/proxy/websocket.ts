/**
 * Proxied WebSocket sessions: the upstream's handshake first, then the client's.
 *
 * The gateway opens the upstream WebSocket before it answers the client, offering the upstream
 * every subprotocol the client offered, and answers the client's handshake only once the upstream
 * has accepted its own (101), with the upstream's choice. So, as when the client reaches the app
 * directly:
 * - the app picks the subprotocol (a gateway answering first can only guess, and a guess the app
 *   does not speak breaks the session after the 101);
 * - an upstream that is down, silent or broken is answered over HTTP (502, 504) before any 101,
 *   and an app that refuses the handshake (401, 403, 404…) has its answer relayed;
 * - nothing the client sends is read before both sides are open: its socket is not read while
 *   the upstream is dialled, so early messages wait in the kernel, not in the gateway's memory.
 *
 * Once both sides are open, messages, pings and pongs are relayed as they come (each hop answers
 * no ping itself: a client's ping is answered by the app's pong). A side whose peer does not read
 * is paused once RELAY_HIGH_WATER bytes wait to be written to that peer, and resumed when they have
 * been: a client that never reads cannot make the gateway buffer everything the app sends it.
 */
import type { ClientRequest, IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { WebSocket, WebSocketServer, type ClientOptions } from 'ws';

/** Bytes that may wait to be written to one side before the other side is no longer read. */
export const RELAY_HIGH_WATER = 256 * 1024;
/**
 * What a frame waiting to be written costs beyond its payload (a write request, a header, a
 * callback: ~250 bytes measured), charged to the window so that empty messages and pings fill it
 * too: without it, a flood of them queued without bound.
 */
const FRAME_COST = 256;
/** How long a client whose session the gateway closed (1011) may take to answer the close frame. */
export const LINGER_MS = 2_000;

/** RFC 7230 `token` (RFC 6455 §4.1: each subprotocol is one). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * The subprotocols a client's `Sec-WebSocket-Protocol` offers, in its order; `[]` when it offers
 * none; null when the header is malformed (an empty element, a non-token, a duplicate), which `ws`
 * would refuse with 400 after the upstream had already been dialled.
 */
export function offeredSubprotocols(header: string | string[] | undefined): string[] | null {
  if (header === undefined) return [];
  // Node joins repeated lines of this header with ", ": one list either way.
  const value = Array.isArray(header) ? header.join(',') : header;
  const out: string[] = [];
  for (const part of value.split(',')) {
    const name = part.replace(/^[ \t]+|[ \t]+$/g, '');
    if (!TOKEN.test(name) || out.includes(name)) return null;
    out.push(name);
  }
  return out;
}

/** On a client socket `ws` upgraded: its `bytesWritten` once the 101 was written. */
const UPGRADED = Symbol('portcullis.upgraded');
/** The subprotocol the upstream chose, read by the server's `handleProtocols`. */
const CHOSEN = Symbol('portcullis.subprotocol');

/** How many bytes went to the client after its 101; undefined when the socket was never upgraded. */
export function bytesAfterUpgrade(socket: Duplex): number | undefined {
  const at = (socket as Duplex & { [UPGRADED]?: number })[UPGRADED];
  return at === undefined ? undefined : (socket as Socket).bytesWritten - at;
}

/** Emitted by a ClientSideWebSocket when the client's close frame arrives: (code, reason). */
const CLOSE_FRAME = Symbol('portcullis.closeFrame');

/**
 * The client side of a session.
 * - `ws` emits 'close' only once the client's TCP connection is gone, which a client may put off
 *   for ws's 30 s after its close frame: the frame itself is announced (CLOSE_FRAME), so the app
 *   hears of it at once rather than losing its messages meanwhile.
 * - After a 1011 (the app failed, or closed with it), `ws` would wait 30 s for the client's close
 *   frame, holding the socket and the session's access line: once nothing is left to deliver, a
 *   client that has not answered within LINGER_MS is cut. A slow reader with data still queued
 *   keeps ws's wait and gets the rest.
 */
class ClientSideWebSocket extends WebSocket {
  override close(code?: number, data?: string | Buffer): void {
    const own = this as unknown as { _closeFrameReceived?: boolean; _closeFrameSent?: boolean };
    // ws answering the client's close frame (its receiver calls close() with the frame's code).
    if (own._closeFrameReceived === true && own._closeFrameSent !== true) {
      this.emit(CLOSE_FRAME, code ?? 1005, typeof data === 'string' ? Buffer.from(data) : (data ?? Buffer.alloc(0)));
    }
    super.close(code, data);
    if (code === 1011 && this.readyState === WebSocket.CLOSING) {
      // Checked again every LINGER_MS: whatever was queued with the close frame (a message just
      // relayed, the 101 itself) leaves first; ws's own 30 s bound the wait of a slow reader.
      let timer: NodeJS.Timeout;
      const check = (): void => {
        if (this.bufferedAmount === 0) this.terminate();
        else timer = setTimeout(check, LINGER_MS).unref();
      };
      timer = setTimeout(check, LINGER_MS).unref();
      this.once('close', () => clearTimeout(timer));
    }
  }

  /**
   * `ws`'s server calls this (a method its typings leave out) once it has written the 101: the
   * access line then says 101, and counts the bytes sent from here on.
   */
  setSocket(socket: Duplex, ...rest: unknown[]): void {
    (socket as Duplex & { [UPGRADED]?: number })[UPGRADED] = (socket as Socket).bytesWritten ?? 0;
    (WebSocket.prototype as unknown as { setSocket(...args: unknown[]): void }).setSocket.call(this, socket, ...rest);
  }
}

/** What the gateway learns of an upstream handshake; exactly one of the first three is called. */
export interface HandshakeHooks {
  /** The upstream accepted (101, valid), choosing `subprotocol` ('' for none): answer the client (`accept`). */
  opened(upstream: WebSocket, subprotocol: string): void;
  /** The upstream answered with another status: its answer, to relay or drop. */
  refused(res: IncomingMessage, req: ClientRequest): void;
  /** No usable answer: not reachable, timed out, or a 101 that breaks RFC 6455. */
  failed(error: Error): void;
}

export interface UpstreamHandshake {
  /** The upstream's origin (`http:` or `https:`). */
  readonly origin: string;
  /**
   * The request-target, sent as it is: what the HTTP path sends the same upstream, not the
   * rendering of `ws`'s URL parser (which resolves dot segments and re-encodes).
   */
  readonly path: string;
  readonly protocols: readonly string[];
  /** The request's headers for the upstream, with the dial plan attached (websocket-dial.ts). */
  readonly headers: Record<string, string>;
  readonly createConnection: ClientOptions['createConnection'];
  readonly finishRequest: ClientOptions['finishRequest'];
}

/** A 101 `ws` refused (a wrong `Sec-WebSocket-Accept`, a subprotocol the client never offered…). */
export class UpstreamHandshakeError extends Error {
  readonly code = 'GW_UPSTREAM_BAD_HANDSHAKE';
  constructor(message: string) {
    super(message);
  }
}

/**
 * Why the gateway ended a session, when it did: the app's connection dropped, the app or the
 * client broke the protocol (a client's message over the limit has its own), or shutdown.
 */
export type SessionEndReason = 'upstream_reset' | 'upstream_bad_response' | 'client_protocol_error' | 'websocket_message_too_large' | 'shutdown';

export interface WebSocketRelayOptions {
  /** The largest message a client may send; a larger one closes the session (1009). */
  readonly maxPayload: number;
}

export class WebSocketRelay {
  private readonly server: WebSocketServer;
  private closing = false;
  private readonly sessions = new Set<{ client: WebSocket; upstream: WebSocket; ended: (reason: SessionEndReason) => void }>();

  constructor(options: WebSocketRelayOptions) {
    this.server = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload: options.maxPayload,
      // The app's pong answers the client's ping (relayed), not the gateway's.
      autoPong: false,
      // A compressed hop would cost the gateway a zlib context per session, for nothing it checks.
      perMessageDeflate: false,
      WebSocket: ClientSideWebSocket,
      handleProtocols: (_offered, req) => (req as IncomingMessage & { [CHOSEN]?: string })[CHOSEN] || false,
    });
  }

  /** Opens the upstream side. The client's socket is not touched until `accept`. */
  connect(handshake: UpstreamHandshake, hooks: HandshakeHooks): WebSocket {
    const finish = handshake.finishRequest;
    const offered = handshake.protocols;
    // The subprotocol offer is made and checked here, not by `ws`: `ws` (like a browser) fails a
    // handshake whose answer names no subprotocol when some were offered, but that is for the
    // client to decide (RFC 6455 §4.1 lets a server choose none); the gateway relays the answer.
    const headers: Record<string, string> = { ...handshake.headers };
    if (offered.length > 0) headers['sec-websocket-protocol'] = offered.join(', ');
    let chosen = '';
    let badChoice: string | null = null;
    const upstream = new WebSocket(`${handshake.origin}/`, {
      headers,
      createConnection: handshake.createConnection,
      finishRequest: (req, ws) => {
        // Read when the request's head is written, at end(): nothing has been sent yet.
        req.path = handshake.path;
        // Ahead of ws's own listener, which must not see the choice (it offered nothing itself).
        req.prependOnceListener('upgrade', (res: IncomingMessage) => {
          const value = res.headers['sec-websocket-protocol'];
          delete res.headers['sec-websocket-protocol'];
          if (value === undefined) return;
          if (offered.includes(value)) chosen = value;
          else badChoice = value;
        });
        if (finish) finish(req, ws);
        else req.end();
      },
      // The app's messages are as large as it likes (ws's own bound, 100 MiB): the limit is for clients.
      autoPong: false,
      perMessageDeflate: false,
      followRedirects: false,
    });
    let settled = false;
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      return true;
    };
    let upgraded = false;
    upstream.once('upgrade', () => {
      upgraded = true;
    });
    upstream.once('open', () => {
      if (!settle()) return;
      if (badChoice !== null) {
        upstream.terminate();
        hooks.failed(new UpstreamHandshakeError('the upstream chose a subprotocol the client did not offer'));
        return;
      }
      hooks.opened(upstream, chosen);
    });
    // With a listener here, ws leaves the refused request to its caller.
    upstream.once('unexpected-response', (req: ClientRequest, res: IncomingMessage) => {
      if (settle()) hooks.refused(res, req);
      else res.destroy();
    });
    upstream.on('error', (err: Error) => {
      // After a 101, ws's errors are about the 101 itself; they carry no code of their own.
      const error = upgraded && !('code' in err) ? new UpstreamHandshakeError(err.message) : err;
      if (settle()) hooks.failed(error);
    });
    return upstream;
  }

  /**
   * Answers the client's handshake (101, with the upstream's subprotocol) and relays the session.
   * False when the client is gone already (the upstream is then closed here).
   */
  accept(req: IncomingMessage, socket: Duplex, head: Buffer, upstream: WebSocket, subprotocol: string, ended: (reason: SessionEndReason) => void = () => undefined): boolean {
    if (socket.destroyed || !socket.writable) {
      upstream.terminate();
      return false;
    }
    (req as IncomingMessage & { [CHOSEN]?: string })[CHOSEN] = subprotocol;
    let accepted = false;
    // Synchronous here: no verifyClient, and the handshake was checked before the upstream was dialled.
    this.server.handleUpgrade(req, socket, head, (client) => {
      accepted = true;
      this.relay(client, upstream, ended);
    });
    if (!accepted) upstream.terminate();
    return accepted;
  }

  /** Closes every session (1001, going away), and those that open from now on: the gateway is shutting down. */
  closeAll(): void {
    this.closing = true;
    for (const s of this.sessions) {
      s.ended('shutdown');
      s.client.close(1001);
      s.upstream.close(1001);
    }
  }

  private relay(client: WebSocket, upstream: WebSocket, onEnd: (reason: SessionEndReason) => void): void {
    let why: SessionEndReason | null = null;
    const note = (reason: SessionEndReason): void => {
      if (why !== null) return;
      why = reason;
      onEnd(reason);
    };
    const session = { client, upstream, ended: note };
    this.sessions.add(session);
    let ended = false;
    const end = (from: WebSocket, to: WebSocket, code: number, reason: Buffer): void => {
      if (ended) return;
      ended = true;
      this.sessions.delete(session);
      if (from === upstream && code === 1006) note('upstream_reset');
      // A side paused for backpressure must be read again, or its close frame is never seen.
      to.resume();
      if (to.readyState !== WebSocket.OPEN) return;
      if (code === 1005) {
        // The peer closed without a status: so does this side, for the other (RFC 6455 §7.1.5).
        to.close();
      } else if (code === 1006) {
        // The peer's connection dropped without a close frame: an app that vanished is an
        // internal error for the client; a client that vanished is gone, for the app.
        to.close(from === upstream ? 1011 : 1001);
      } else {
        to.close(code, reason);
      }
    };
    pipe(client, upstream);
    pipe(upstream, client);
    client.once('close', (code: number, reason: Buffer) => end(client, upstream, code, reason));
    client.once(CLOSE_FRAME, (code: number, reason: Buffer) => end(client, upstream, code, reason));
    upstream.once('close', (code: number, reason: Buffer) => end(upstream, client, code, reason));
    // ws emits 'close' after each of these (it has closed the side with 1002, 1007 or 1009 itself).
    // The other side gets 1011 if the app broke the protocol, 1001 if the client did.
    client.on('error', (err: Error & { code?: string }) => {
      // A message over maxPayload, or a frame announcing more than a JavaScript number can count.
      const tooLarge = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' || err.code === 'WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH';
      note(tooLarge ? 'websocket_message_too_large' : 'client_protocol_error');
      if (upstream.readyState === WebSocket.OPEN) upstream.close(1001);
    });
    upstream.on('error', () => {
      note('upstream_bad_response');
      if (client.readyState === WebSocket.OPEN) client.close(1011);
    });
    // A handshake still under way when the gateway began to close: ended as the others were.
    if (this.closing) {
      note('shutdown');
      client.close(1001);
      upstream.close(1001);
    }
  }
}

/** Relays what `from` receives to `to`, pausing `from` while `to` is not keeping up. */
function pipe(from: WebSocket, to: WebSocket): void {
  let waiting = 0;
  let paused = false;
  const written = (bytes: number) => (): void => {
    waiting -= bytes;
    if (paused && waiting <= RELAY_HIGH_WATER / 2) {
      paused = false;
      from.resume();
    }
  };
  const sent = (bytes: number): void => {
    waiting += bytes;
    if (!paused && waiting > RELAY_HIGH_WATER) {
      paused = true;
      from.pause();
    }
  };
  from.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
    if (to.readyState !== WebSocket.OPEN) return;
    const bytes = byteLength(data) + FRAME_COST;
    sent(bytes);
    to.send(data, { binary: isBinary }, written(bytes));
  });
  from.on('ping', (data: Buffer) => {
    if (to.readyState !== WebSocket.OPEN) return;
    sent(data.length + FRAME_COST);
    to.ping(data, undefined, written(data.length + FRAME_COST));
  });
  from.on('pong', (data: Buffer) => {
    if (to.readyState !== WebSocket.OPEN) return;
    sent(data.length + FRAME_COST);
    to.pong(data, undefined, written(data.length + FRAME_COST));
  });
}

function byteLength(data: Buffer | ArrayBuffer | Buffer[]): number {
  if (Array.isArray(data)) return data.reduce((n, b) => n + b.length, 0);
  return data.byteLength;
}
