// proxy/websocket-dial.ts on its own: the dial of a WebSocket's upstream against real sockets,
// with a recording plan. End-to-end behaviour (through the gateway) is in
// test/gateway/upstream-errors.test.ts; here, what is hard to see from outside: the timing
// reported per attempt, a connect deadline of 0, a client gone before the first attempt.
import t from 'tap';
import net, { type AddressInfo } from 'node:net';
import tls from 'node:tls';
import { makeCert } from '../config/certs.js';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { createUpstreamConnection, withDialPlan, type WebSocketDialPlan } from '../../src/proxy/websocket-dial.js';
import { UpstreamPool } from '../../src/proxy/upstreams.js';
import { countingServer, silentServer } from '../helpers/gateway.js';

/** A fake client connection: 'close' is emitted by the test. */
class FakeClient extends EventEmitter {
  destroyed = false;
  leave(): void {
    this.destroyed = true;
    this.emit('close');
  }
}

interface Recorded {
  failed: Array<{ origin: string; kind: string; seconds: number; next: string | null }>;
  connected: Array<{ origin: string; seconds: number }>;
  otherFailures: Array<{ origin: string; kind: string }>;
  handshakeTimeouts: string[];
}

function plan(targets: string[], connectTimeoutMs: number, client = new FakeClient()): { plan: WebSocketDialPlan; rec: Recorded; client: FakeClient } {
  const rec: Recorded = { failed: [], connected: [], otherFailures: [], handshakeTimeouts: [] };
  const pool = new UpstreamPool(targets.map((origin) => ({ origin, protocol: origin.startsWith('https:') ? 'https:' as const : 'http:' as const })));
  return {
    client,
    rec,
    plan: {
      pool,
      first: 0,
      connectTimeoutMs,
      handshakeTimeoutMs: 60_000,
      servername: 'app.test',
      client: client as unknown as Duplex,
      connectFailed: (origin, kind, seconds, next) => rec.failed.push({ origin, kind, seconds, next }),
      connected: (origin, seconds) => rec.connected.push({ origin, seconds }),
      attemptFailed: (origin, kind) => rec.otherFailures.push({ origin, kind }),
      handshakeTimedOut: (origin) => rec.handshakeTimeouts.push(origin),
    },
  };
}

function dial(p: WebSocketDialPlan): Promise<{ err: Error | null; socket?: Duplex }> {
  return new Promise((resolve) => {
    createUpstreamConnection({ host: 'ignored', headers: withDialPlan({}, p) }, (err, socket) => resolve({ err, socket }));
  });
}

t.test('each attempt reports its own duration: the live target is not charged with the dead one\'s timeout', async (t) => {
  const hung = `https://127.0.0.1:${(await silentServer(t)).port}`;
  const live = net.createServer((s) => s.end());
  await new Promise<void>((r) => live.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => live.close(() => r())));
  const liveOrigin = `http://127.0.0.1:${(live.address() as AddressInfo).port}`;
  const { plan: p, rec } = plan([hung, liveOrigin], 300);
  const { err, socket } = await dial(p);
  t.equal(err, null);
  socket?.destroy();
  t.same(rec.failed.map((f) => [f.origin, f.kind, f.next]), [[hung, 'connect_timeout', liveOrigin]]);
  t.ok(rec.failed[0]!.seconds >= 0.25, `the hung attempt took the deadline (${rec.failed[0]!.seconds} s)`);
  t.same(rec.connected.map((c) => c.origin), [liveOrigin]);
  t.ok(rec.connected[0]!.seconds < rec.failed[0]!.seconds, `the live attempt is timed from its own start (${rec.connected[0]!.seconds} s)`);
});

t.test('connectTimeoutMs 0: no deadline (as undici reads it), the dial waits until the client leaves', async (t) => {
  const hung = `https://127.0.0.1:${(await silentServer(t)).port}`;
  const { plan: p, rec, client } = plan([hung], 0);
  let outcome: { err: Error | null } | null = null;
  const done = dial(p).then((o) => (outcome = o));
  await new Promise((r) => setTimeout(r, 300));
  t.same(rec.failed, [], 'no connect timeout after 300 ms');
  t.equal(outcome, null, 'still dialling');
  t.notOk(p.pool.isDown(0), 'the target was not marked down');
  client.leave();
  await done;
  t.match(outcome!.err?.message, /client closed/, 'the dial ends when the client leaves');
});

t.test('a client already gone: no target is dialled', async (t) => {
  const target = await countingServer(t);
  const client = new FakeClient();
  client.destroyed = true;
  const { plan: p, rec } = plan([target.origin], 1000, client);
  const { err } = await dial(p);
  t.match(err?.message, /client closed/);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(target.accepted(), 0, 'nothing was dialled');
  t.same(rec, { failed: [], connected: [], otherFailures: [], handshakeTimeouts: [] });
});

t.test('headers without a plan: an error, never a connection to the URL', async (t) => {
  const { err } = await new Promise<{ err: Error | null }>((resolve) => createUpstreamConnection({ host: '127.0.0.1', headers: {} }, (e) => resolve({ err: e })));
  t.match(err?.message, /without a plan/);
});

t.test('an https target is verified under the client host name (as undici does for HTTP); a refused certificate is no reason to fail over', async (t) => {
  // A certificate nobody trusts: Node's default CA store is what the gateway trusts upstream.
  const own = await makeCert({ dns: ['app.test'] });
  const names: string[] = [];
  const server = tls.createServer({ cert: own.cert, key: own.key, SNICallback: (name, cb) => {
    names.push(name);
    cb(null, tls.createSecureContext({ cert: own.cert, key: own.key }));
  } }, (s) => s.end());
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const second = await countingServer(t);
  const untrusted = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const { plan: p, rec } = plan([untrusted, second.origin], 1000);
  const { err } = await dial(p);
  t.match(err?.message, /self.signed/i, 'the certificate was refused');
  t.same(names, ['app.test'], 'the TLS server name was the client host, not the IP of the URL');
  t.same(rec.otherFailures, [{ origin: untrusted, kind: 'other' }], 'counted as a failed attempt');
  t.same(rec.failed, [], 'not as a connect failure');
  t.equal(second.accepted(), 0, 'and the next target was not tried');
  t.notOk(p.pool.isDown(0), 'nor the target marked down');
});

t.test('a target that connects and never answers the handshake is cut after handshakeTimeoutMs', async (t) => {
  const { port } = await silentServer(t);
  const { plan: p, rec } = plan([`http://127.0.0.1:${port}`], 1000);
  const shortHandshake = { ...p, handshakeTimeoutMs: 200 };
  const { err, socket } = await dial(shortHandshake);
  t.equal(err, null, 'connected');
  const closed = await new Promise<Error | undefined>((resolve) => {
    let error: Error | undefined;
    socket!.on('error', (e) => (error = e));
    socket!.on('close', () => resolve(error));
  });
  t.match(closed?.message, /no WebSocket handshake answer/);
  t.same(rec.handshakeTimeouts, [`http://127.0.0.1:${port}`]);
});
