/**
 * The TCP front of the HTTPS listener: serves TLS-ALPN-01 (RFC 8737) on the same port as HTTPS.
 *
 * Why a front and not a TLS callback: RFC 8737 §3 needs the certificate chosen by (SNI, ALPN),
 * but Node's `SNICallback` never sees the offered ALPN list and `ALPNCallback` (Node ≥ 20) only
 * returns a protocol name: neither gets the socket, so the two cannot be tied to one connection
 * (measured on Node 20: `ALPNCallback` even runs BEFORE `SNICallback`, since Node selects the SNI
 * context in OpenSSL's cert callback). `http2.createSecureServer` also owns `ALPNProtocols`.
 *
 * So a plain `net.Server` accepts the connection and waits for its first bytes. With no challenge
 * pending (`store.hasAlpnChallenges()`) they are not parsed: the socket is handed over with them
 * (for memory, see `handleConnection`). ONLY while a challenge is pending it reads the first TLS
 * record without consuming it: if the
 * ClientHello offers `acme-tls/1` for a host with a pending challenge, the socket goes to a tiny
 * TLS server that presents the challenge certificate and negotiates `acme-tls/1`; everything else
 * (other hosts, other ALPN, malformed or fragmented hellos, timeouts) goes unchanged to the real
 * HTTPS server. The bytes are put back with `socket.unshift()` and the socket is handed over with
 * `server.emit('connection', socket)`, the documented way to inject a connection into a server.
 */
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type SecureContext, type TLSSocket } from 'node:tls';
import { GatewayError } from '../errors.js';
import { MAX_HELLO_BYTES, parseClientHello } from './client-hello.js';
import { secureContextOptions, type TlsMinVersion } from './policy.js';
import { normalizeServername } from './store.js';

/** RFC 8737 §6.2 ALPN protocol ID. */
export const ACME_TLS_ALPN = 'acme-tls/1';

/** What the front needs from the store. */
export interface AlpnChallengeSource {
  readonly minVersion: TlsMinVersion;
  hasAlpnChallenges(): boolean;
  alpnChallengeContext(host: string): SecureContext | undefined;
}

export type TlsFrontEvent =
  | { readonly event: 'tls_alpn_challenge_served'; readonly host: string }
  | { readonly event: 'tls_alpn_challenge_failed'; readonly host: string; readonly reason: string }
  | { readonly event: 'client_hello_timeout'; readonly remoteAddress: string | undefined };

export interface TlsFrontOptions {
  readonly store: AlpnChallengeSource;
  /**
   * The HTTPS server (`http2.createSecureServer`, `https.createServer`, `tls.createServer`). It
   * must NOT listen itself: the front owns the port and injects connections into it.
   */
  readonly target: NetServer;
  /**
   * Milliseconds to wait for the first TLS record while a challenge is pending; then the
   * connection goes to `target` unchanged (which applies its own handshake timeout). Default 10000.
   */
  readonly helloTimeoutMs?: number;
  /**
   * Milliseconds from accept to the end of the TLS handshake (read at each accept: a reload may
   * change it); a connection still without a finished handshake then is destroyed. Node's own
   * `handshakeTimeout` is an inactivity timer that every byte restarts: a client dripping its
   * ClientHello (up to 128 KiB) a byte at a time would hold the socket for days. The target's
   * `secureConnection` must call {@link TlsFront.handshakeDone}. Default: none.
   */
  readonly handshakeDeadlineMs?: () => number;
  /** Observability hook (the lead maps events to logs/metrics). Must not throw. */
  readonly onEvent?: (event: TlsFrontEvent) => void;
}

export interface TlsFront {
  /** The listening TCP server (for `address()`, or to `listen` yourself). */
  readonly server: NetServer;
  /** Route one accepted TCP connection (use this to feed connections from your own server). */
  handleConnection(socket: Socket): void;
  /** The target finished a handshake (its `secureConnection`): the deadline no longer applies. */
  handshakeDone(socket: { readonly remoteAddress?: string | undefined; readonly remotePort?: number | undefined }): void;
  listen(port: number, host: string): Promise<AddressInfo>;
  /**
   * Stop accepting, destroy connections still being peeked at or in a challenge handshake, and
   * resolve when the listening socket is closed and every connection it accepted has ended. HTTPS
   * connections already handed to `target` are NOT closed here: close the HTTPS server (Fastify
   * `app.close()`) concurrently, e.g. `await Promise.all([front.close(), app.close()])`.
   */
  close(): Promise<void>;
}

const DEFAULT_HELLO_TIMEOUT_MS = 10_000;
/** RFC 8737 validators finish the handshake at once; don't let one hold a socket for long. */
const ACME_HANDSHAKE_TIMEOUT_MS = 10_000;

export function createTlsFront(options: TlsFrontOptions): TlsFront {
  const { store, target } = options;
  const helloTimeoutMs = options.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS;
  const emit = (event: TlsFrontEvent): void => {
    try {
      options.onEvent?.(event);
    } catch {
      // observability must not break connection routing
    }
  };
  /** Sockets the front still owns (peeking or in the challenge server). */
  const owned = new Set<Socket>();
  /**
   * Handshake deadlines by the connection's remote address and port, which the target's
   * TLSSocket reports alike (it has no public link to the TCP socket it wraps).
   */
  const deadlines = new Map<string, NodeJS.Timeout>();
  const peerKey = (s: { readonly remoteAddress?: string | undefined; readonly remotePort?: number | undefined }): string | null =>
    s.remoteAddress === undefined || s.remotePort === undefined ? null : `${s.remoteAddress}|${s.remotePort}`;
  function clearDeadline(key: string | null): void {
    if (key === null) return;
    const timer = deadlines.get(key);
    if (timer === undefined) return;
    clearTimeout(timer);
    deadlines.delete(key);
  }
  function armDeadline(socket: Socket): void {
    const ms = options.handshakeDeadlineMs?.() ?? 0;
    const key = peerKey(socket);
    if (ms <= 0 || key === null) return;
    deadlines.set(
      key,
      setTimeout(() => {
        deadlines.delete(key);
        socket.destroy();
      }, ms).unref(),
    );
    socket.once('close', () => clearDeadline(key));
  }

  const acmeServer = createTlsServer({
    ...secureContextOptions(store.minVersion),
    ALPNProtocols: [ACME_TLS_ALPN],
    handshakeTimeout: ACME_HANDSHAKE_TIMEOUT_MS,
    SNICallback: (servername, cb) => {
      // Looked up again: the challenge may have been cleared since the peek.
      const host = normalizeServername(servername);
      const context = store.alpnChallengeContext(host);
      if (context === undefined) {
        emit({ event: 'tls_alpn_challenge_failed', host, reason: 'challenge cleared before the handshake' });
        cb(new GatewayError('GW_ERR_ACME', `no pending tls-alpn-01 challenge for ${host}`));
      } else {
        // Counted when the certificate is handed to OpenSSL: the validator may reset the
        // connection right after its Finished, before our 'secureConnection' would fire.
        emit({ event: 'tls_alpn_challenge_served', host });
        cb(null, context);
      }
    },
  });
  acmeServer.on('secureConnection', (tlsSocket: TLSSocket) => {
    clearDeadline(peerKey(tlsSocket));
    // RFC 8737 §3: after the handshake the client closes; nothing is exchanged, so we end too.
    tlsSocket.end();
  });
  // Resets by validators after their handshake are normal; the socket is ours to drop.
  acmeServer.on('tlsClientError', (_err, tlsSocket) => tlsSocket.destroy());

  function handOver(socket: Socket, buffered: Buffer | null, to: NetServer): void {
    socket.pause();
    // Put the peeked bytes back: TLSSocket reads a wrapped socket's buffered data first.
    if (buffered !== null && buffered.length > 0) socket.unshift(buffered);
    to.emit('connection', socket);
  }

  function handleConnection(socket: Socket): void {
    // The first bytes are always read here, even with no challenge pending (then nothing is
    // parsed), for memory: a TLSSocket that gets its first bytes from JS (`initRead` feeds them to
    // the TLSWrap) sizes its encrypted-input buffer (node's NodeBIO, kept for the life of the
    // connection) to that chunk, 1 KiB minimum, then adds at most one 16 KiB buffer; one that reads
    // the TCP handle first allocates libuv's suggested 64 KiB instead. Measured on Node 20 with
    // 10 000 idle keep-alive connections: ~7 KB less RSS per connection. Side effect: reads from
    // the TCP socket are then at most 16 KiB (TLS records are at most 16 KiB anyway).
    owned.add(socket);
    armDeadline(socket);
    let chunks: Buffer[] = [];
    let total = 0;
    let done = false;

    const cleanup = (): void => {
      done = true;
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('error', onFail);
      socket.removeListener('end', onFail);
      socket.removeListener('close', onFail);
    };
    const onFail = (): void => {
      // Error, half-close or close before a full ClientHello: nothing worth serving.
      cleanup();
      owned.delete(socket);
      socket.destroy();
    };
    const toTarget = (): void => {
      cleanup();
      owned.delete(socket);
      handOver(socket, Buffer.concat(chunks, total), target);
    };
    const timer = setTimeout(() => {
      if (store.hasAlpnChallenges()) emit({ event: 'client_hello_timeout', remoteAddress: socket.remoteAddress });
      toTarget();
    }, helloTimeoutMs);

    const onData = (chunk: Buffer): void => {
      if (done) return;
      if (chunks.length === 0 && !store.hasAlpnChallenges()) {
        // No challenge pending: no parsing, hand over with the first chunk.
        cleanup();
        owned.delete(socket);
        handOver(socket, chunk, target);
        return;
      }
      chunks.push(chunk);
      total += chunk.length;
      const buffered = Buffer.concat(chunks, total);
      chunks = [buffered];
      const hello = parseClientHello(buffered);
      if (hello.kind === 'incomplete' && total < MAX_HELLO_BYTES) return;
      if (
        hello.kind === 'hello' &&
        hello.serverName !== null &&
        hello.alpn.includes(ACME_TLS_ALPN) &&
        store.alpnChallengeContext(hello.serverName) !== undefined
      ) {
        cleanup();
        // Stays in `owned` until it closes: the challenge server is ours to shut down. The
        // handshake deadline holds here too (the challenge server's own timeout is an idle one).
        socket.once('close', () => owned.delete(socket));
        handOver(socket, buffered, acmeServer);
        return;
      }
      toTarget();
    };

    socket.on('data', onData);
    socket.on('error', onFail);
    socket.on('end', onFail);
    socket.on('close', onFail);
  }

  // Nagle off, as Node's own HTTP servers do (http.Server's default): a response written as headers
  // then body would otherwise wait for the client's delayed ACK (measured: p99 20 ms at 1 connection).
  const server = createNetServer({ noDelay: true }, handleConnection);
  // A connection reset between accept and handover surfaces here; it concerns one socket only.
  server.on('clientError', () => undefined);

  return {
    server,
    handleConnection,
    handshakeDone: (socket) => clearDeadline(peerKey(socket)),
    listen(port, host) {
      return new Promise((resolve, reject) => {
        const onError = (err: Error): void => reject(err);
        server.once('error', onError);
        server.listen(port, host, () => {
          server.removeListener('error', onError);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    close() {
      return new Promise((resolve) => {
        server.close(() => resolve());
        for (const socket of owned) socket.destroy();
        owned.clear();
        for (const timer of deadlines.values()) clearTimeout(timer);
        deadlines.clear();
      });
    },
  };
}
