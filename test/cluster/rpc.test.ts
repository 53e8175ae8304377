// The cluster's request/response layer and the remote store on top of it, over an in-memory channel
// that behaves like node:cluster IPC (asynchronous, JSON-cloned, shared with foreign messages).
import t from 'tap';
import { EventEmitter } from 'node:events';
import { RpcPeer, type MessagePort } from '../../src/cluster/rpc.js';
import { MemoryStore, RemoteStore, serveStoreCall, writtenKey } from '../../src/state/index.js';
import { GatewayError } from '../../src/errors.js';
import { ACTIVE_BAN_KEY_PREFIX } from '../../src/protect/index.js';

interface Pipe {
  a: MessagePort & EventEmitter;
  b: MessagePort & EventEmitter;
  /** IPC writes made by a (one per batch). */
  writes: unknown[];
  cut(): void;
  /** Like a peer dying between the connected check and the write. */
  breakSilently(): void;
}

function pipe(): Pipe {
  let open = true;
  let lying = false;
  const writes: unknown[] = [];
  const mk = (): MessagePort & EventEmitter => {
    const port = Object.assign(new EventEmitter(), { send: (_m: unknown): unknown => undefined });
    // Like process.connected: read at every send (Object.assign would copy a getter's value once).
    Object.defineProperty(port, 'connected', { get: () => open || lying });
    return port;
  };
  const a = mk();
  const b = mk();
  const wire = (from: typeof a, to: typeof b): void => {
    from.send = (m: unknown) => {
      if (!open) throw Object.assign(new Error('Channel closed'), { code: 'ERR_IPC_CHANNEL_CLOSED' });
      if (from === a) writes.push(m);
      const copy: unknown = JSON.parse(JSON.stringify(m));
      setImmediate(() => to.emit('message', copy));
      return true;
    };
  };
  wire(a, b);
  wire(b, a);
  return {
    a,
    b,
    writes,
    cut: () => (open = false),
    breakSilently: () => {
      open = false;
      lying = true;
    },
  };
}

t.test('calls, results, notifications, errors with their code', async (t) => {
  const { a, b } = pipe();
  const seen: Array<[string, unknown]> = [];
  const server = new RpcPeer(b, (method, params) => {
    seen.push([method, params]);
    if (method === 'add') return (params as number[]).reduce((x, y) => x + y, 0);
    if (method === 'later') return new Promise((r) => setTimeout(() => r({ ok: true }), 10));
    if (method === 'nothing') return undefined;
    if (method === 'typed') throw new GatewayError('GW_ERR_ACME', 'no order');
    if (method === 'rejects') return Promise.reject(new Error('boom'));
    if (method === 'foreign-code') throw Object.assign(new Error('x'), { code: 'EACCES' });
    throw new Error(`unknown ${method}`);
  });
  const client = new RpcPeer(a, () => undefined);
  t.teardown(() => {
    server.close();
    client.close();
  });
  t.equal(await client.call('add', [1, 2, 3]), 6);
  t.same(await client.call('later'), { ok: true });
  t.equal(await client.call('nothing'), null, 'undefined travels as null');
  await t.rejects(client.call('typed'), { code: 'GW_ERR_ACME', message: 'no order' });
  await t.rejects(client.call('rejects'), { code: 'GW_ERR_INTERNAL', message: 'boom' });
  await t.rejects(client.call('foreign-code'), { code: 'GW_ERR_INTERNAL' }, 'a code outside the table is not trusted');
  t.ok(client.notify('add', [5]));
  await new Promise((r) => setTimeout(r, 20));
  t.same(seen.at(-1), ['add', [5]], 'notification delivered');
  // Concurrent calls are matched to their own answers.
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => client.call('add', [i, 1])));
  t.same(many, Array.from({ length: 50 }, (_, i) => i + 1));
});

t.test('foreign messages on the channel are ignored', async (t) => {
  const { a, b } = pipe();
  let calls = 0;
  const server = new RpcPeer(b, () => ++calls);
  const client = new RpcPeer(a, () => undefined);
  t.teardown(() => {
    server.close();
    client.close();
  });
  for (const m of [null, 'text', 42, { cmd: 'NODE_CLUSTER' }, { type: 'prom-client:getMetricsReq', requestId: 1 }, { pcl: 2, m: 'x' }, { pcl: 1 }, { pcl: 1, id: 999, r: 1 }]) {
    b.emit('message', m);
    a.emit('message', m);
  }
  t.equal(calls, 0);
  t.equal(await client.call('count'), 1);
});

t.test('a peer that never answers: the call fails at its deadline; a late answer is dropped', async (t) => {
  const { a, b } = pipe();
  const server = new RpcPeer(b, () => new Promise((r) => setTimeout(() => r('late'), 80)));
  const client = new RpcPeer(a, () => undefined, { timeoutMs: 20 });
  t.teardown(() => {
    server.close();
    client.close();
  });
  await t.rejects(client.call('slow'), { code: 'GW_ERR_INTERNAL', message: /did not answer slow within 20 ms/ });
  await new Promise((r) => setTimeout(r, 120));
  t.equal(await client.call('slow', undefined, 500), 'late');
});

t.test('closed channel: pending and new calls fail, notify reports false', async (t) => {
  const { a, b, cut } = pipe();
  const server = new RpcPeer(b, () => new Promise(() => undefined));
  const client = new RpcPeer(a, () => undefined);
  t.teardown(() => server.close());
  const pending = client.call('forever');
  client.close();
  await t.rejects(pending, { code: 'GW_ERR_INTERNAL', message: /closed/ });
  await t.rejects(client.call('x'), { code: 'GW_ERR_INTERNAL' });
  t.equal(client.notify('x'), false);
  // The transport itself gone (worker died): the caller sees a rejection at once, not at the deadline.
  const other = new RpcPeer(a, () => undefined, { timeoutMs: 60_000 });
  cut();
  await t.rejects(other.call('x'), { code: 'GW_ERR_INTERNAL', message: /closed/ });
  t.equal(other.notify('x'), false);
  other.close();
});

t.test('a channel that breaks between the check and the write still fails the calls at once', async (t) => {
  const { a, b, breakSilently } = pipe();
  const server = new RpcPeer(b, () => 1);
  const client = new RpcPeer(a, () => undefined, { timeoutMs: 60_000 });
  t.teardown(() => {
    server.close();
    client.close();
  });
  breakSilently();
  const started = Date.now();
  await t.rejects(Promise.all([client.call('x'), client.call('y')]), { code: 'GW_ERR_INTERNAL', message: /closed/ });
  t.ok(Date.now() - started < 1_000);
});

t.test('calls made in one event-loop turn travel as one IPC write, answers too', async (t) => {
  const { a, b, writes } = pipe();
  let served = 0;
  const server = new RpcPeer(b, (_m, p) => {
    served++;
    return p;
  });
  const client = new RpcPeer(a, () => undefined);
  t.teardown(() => {
    server.close();
    client.close();
  });
  const answers = await Promise.all(Array.from({ length: 64 }, (_, i) => client.call('echo', i)));
  t.same(answers, Array.from({ length: 64 }, (_, i) => i), 'each call got its own answer');
  t.equal(served, 64);
  t.equal(writes.length, 1, 'one write for 64 calls');
  t.equal((writes[0] as { b: unknown[] }).b.length, 64);
  // A lone call is sent as itself, not wrapped.
  await client.call('echo', 'solo');
  t.match(writes[1], { pcl: 1, m: 'echo', p: 'solo' });
  // Nested batches are not ours: ignored.
  let nested = 0;
  const probe = new RpcPeer(b, () => ++nested);
  b.emit('message', { pcl: 1, b: [{ pcl: 1, b: [{ pcl: 1, m: 'x', p: null }] }] });
  await new Promise((r) => setTimeout(r, 10));
  t.equal(nested, 0);
  probe.close();
});

t.test('RemoteStore over the channel behaves like the store it reaches', async (t) => {
  const { a, b } = pipe();
  let now = 1_000_000;
  const backing = new MemoryStore({ now: () => now, sweepIntervalMs: 0 });
  const server = new RpcPeer(b, (method, params) => {
    const r = serveStoreCall(backing, method, params);
    if (r === undefined) throw new Error('not a store method');
    return r;
  });
  const client = new RpcPeer(a, () => undefined);
  t.teardown(() => {
    server.close();
    client.close();
  });
  // Two "workers" sharing the one store: counts add up across them.
  const w1 = new RemoteStore((m, p) => client.call(m, p));
  const w2 = new RemoteStore((m, p) => client.call(m, p));
  t.same(await w1.incr('rl:k', 60_000), { count: 1, ttlMs: 60_000 });
  now += 1_000;
  t.same(await w2.incr('rl:k', 60_000), { count: 2, ttlMs: 59_000 });
  t.same(await w1.incr('rl:k', 60_000), { count: 3, ttlMs: 59_000 });
  await w2.set('ban:1.2.3.4', 'x', 5_000);
  t.same(await w1.get('ban:1.2.3.4'), { value: 'x', ttlMs: 5_000 });
  t.equal(await w1.get('absent'), null);
  await w1.delete('ban:1.2.3.4');
  t.equal(await w2.get('ban:1.2.3.4'), null);
  // Errors keep their code across the process boundary.
  await w1.set('text', 'not-a-number', 5_000);
  await t.rejects(w2.incr('text', 1_000), { code: 'GW_ERR_INTERNAL', message: /does not hold a counter/ });
  await t.rejects(w2.incr('k', -1), { message: /windowMs/ });
  // Closing a client does not close the shared store.
  await w1.close();
  await t.rejects(w1.get('rl:k'), { code: 'GW_ERR_INTERNAL' });
  t.same(await w2.get('rl:k'), { value: '3', ttlMs: 59_000 });
  await backing.close();
});

t.test('serveStoreCall refuses malformed parameters from the other process', async (t) => {
  const store = new MemoryStore({ sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  t.equal(serveStoreCall(store, 'metrics', []), undefined, 'not a store method');
  for (const [method, params] of [
    ['state.incr', ['k']],
    ['state.incr', [1, 1000]],
    ['state.get', [{}]],
    ['state.set', ['k', 5, 1000]],
    ['state.set', ['k', 'v', '1000']],
    ['state.delete', null],
  ] as const) {
    t.throws(() => serveStoreCall(store, method, params), { code: 'GW_ERR_INTERNAL' }, `${method} ${JSON.stringify(params)}`);
  }
  t.equal(store.size, 0, 'nothing was written');
});

t.test('RemoteStore read cache for a prefix: no round trip on a hit, exact after invalidate, expires with the value', async (t) => {
  let now = 5_000_000;
  const backing = new MemoryStore({ now: () => now, sweepIntervalMs: 0 });
  t.teardown(() => backing.close());
  const calls: string[] = [];
  const call = async (m: string, p: unknown): Promise<unknown> => {
    calls.push(`${m} ${JSON.stringify(p)}`);
    return serveStoreCall(backing, m, p);
  };
  const w1 = new RemoteStore(call, { cachePrefixes: ['ban:on:'], now: () => now, maxCached: 3 });
  const w2 = new RemoteStore(call, { cachePrefixes: ['ban:on:'], now: () => now });
  // The serving side's duty: announce every write under the prefix, after it is applied.
  const write = async (fn: () => Promise<unknown>, key: string): Promise<void> => {
    await fn();
    w1.invalidate(key);
    w2.invalidate(key);
  };

  t.equal(w1.peek('ban:on:1.2.3.4'), undefined, 'nothing known locally yet: peek says "ask"');
  t.equal(await w1.get('ban:on:1.2.3.4'), null);
  t.equal(await w1.get('ban:on:1.2.3.4'), null);
  t.equal(calls.length, 1, 'an absent key is remembered');
  t.equal(w1.peek('ban:on:1.2.3.4'), null, 'and peek answers it without a round trip');
  await write(() => w2.set('ban:on:1.2.3.4', '1', 60_000), 'ban:on:1.2.3.4');
  t.equal(w1.peek('ban:on:1.2.3.4'), undefined, 'an invalidated key is not answered locally');
  t.same(await w1.get('ban:on:1.2.3.4'), { value: '1', ttlMs: 60_000 }, 'the ban set by another worker is seen at once');
  t.same(w1.peek('ban:on:1.2.3.4'), { value: '1', ttlMs: 60_000 });
  now += 10_000;
  const before = calls.length;
  t.same(await w1.get('ban:on:1.2.3.4'), { value: '1', ttlMs: 50_000 }, 'a hit keeps counting down');
  t.equal(calls.length, before, 'no round trip');
  now += 50_000;
  t.equal(w1.peek('ban:on:1.2.3.4'), undefined, 'peek does not answer an expired value');
  t.equal(await w1.get('ban:on:1.2.3.4'), null, 'expired with the stored value');
  t.equal(calls.length, before + 1, 'an expired entry is asked again');
  // Unban elsewhere.
  await write(() => w2.set('ban:on:9.9.9.9', '1', 60_000), 'ban:on:9.9.9.9');
  t.ok(await w1.get('ban:on:9.9.9.9'));
  await write(() => w2.delete('ban:on:9.9.9.9'), 'ban:on:9.9.9.9');
  t.equal(await w1.get('ban:on:9.9.9.9'), null, 'an unban is seen at once');
  // Other keys are never cached.
  const n = calls.length;
  await w1.get('rl:x');
  await w1.get('rl:x');
  t.equal(calls.length, n + 2);
  // Bounded: the oldest cached key is forgotten first.
  for (const k of ['a', 'b', 'c', 'd']) await w1.get(`ban:on:${k}`);
  const m = calls.length;
  await w1.get('ban:on:d');
  t.equal(calls.length, m, 'the newest is still cached');
  await w1.get('ban:on:a');
  t.equal(calls.length, m + 1, 'the oldest was evicted');
  // setIfAbsent: atomic at the serving side, and a write to announce.
  t.equal(await w1.get('ban:on:5.5.5.5'), null);
  const won = await Promise.all([w1, w2, w1].map((w) => w.setIfAbsent('ban:on:5.5.5.5', '1', 60_000)));
  t.same(won.filter(Boolean).length, 1, 'of three callers at once, one stores');
  t.equal(writtenKey('state.setIfAbsent', ['ban:on:5.5.5.5', '1', 60_000]), 'ban:on:5.5.5.5', 'so the primary announces it');
  w1.invalidate('ban:on:5.5.5.5');
  t.ok(await w1.get('ban:on:5.5.5.5'));
  t.equal(writtenKey('state.incr', ['k', 1]), 'k');
  t.equal(writtenKey('state.delete', ['k']), 'k');
  t.equal(writtenKey('metrics', ['k']), null);
  t.equal(writtenKey('state.set', [42]), null);
});

// The primary answers worker 1's read of a ban key, then applies worker 2's ban of the same client
// and announces it: both go to worker 1 in one IPC write, the answer first. Worker 1 runs the
// invalidation before its read's continuation, so the read must not then cache the old answer
// (an absent key is cached until the next write to it: the ban would never hold on worker 1).
t.test('a ban written while another worker reads that key is not cached away by the read', async (t) => {
  const p1 = pipe();
  const p2 = pipe();
  const backing = new MemoryStore({ sweepIntervalMs: 0 });
  const servers: RpcPeer[] = [];
  // runPrimary's store branch: serve the call, announce writes to active-ban keys once applied.
  const handle = (method: string, params: unknown): unknown => {
    const answer = serveStoreCall(backing, method, params);
    if (answer === undefined) throw new Error('not a store method');
    const key = writtenKey(method, params);
    if (key !== null && key.startsWith(ACTIVE_BAN_KEY_PREFIX)) {
      answer.then(() => { for (const s of servers) s.notify('state.invalidate', { key }); }, () => undefined);
    }
    return answer;
  };
  servers.push(new RpcPeer(p1.b, handle), new RpcPeer(p2.b, handle));
  const toWorker1: unknown[] = [];
  const send = p1.b.send.bind(p1.b);
  p1.b.send = (m: unknown) => {
    toWorker1.push(m);
    return send(m);
  };
  const workers: RemoteStore[] = [];
  const clients = [p1.a, p2.a].map((port, i) => new RpcPeer(port, (method, params) => {
    if (method === 'state.invalidate') workers[i]!.invalidate((params as { key: string }).key);
  }));
  for (const c of clients) workers.push(new RemoteStore((m, p) => c.call(m, p), { cachePrefixes: [ACTIVE_BAN_KEY_PREFIX] }));
  t.teardown(async () => {
    for (const peer of [...servers, ...clients]) peer.close();
    await backing.close();
  });
  const [w1, w2] = workers as [RemoteStore, RemoteStore];
  const key = `${ACTIVE_BAN_KEY_PREFIX}ip:198.51.100.66`;

  const [read] = await Promise.all([w1.get(key), w2.set(key, '1', 60_000)]);
  t.equal(read, null, 'the read reached the primary before the ban');
  await new Promise((r) => setTimeout(r, 20));
  t.match(toWorker1, [{ b: [{ r: null }, { m: 'state.invalidate', p: { key } }] }], 'the answer and the invalidation came in one write');
  t.ok(await backing.get(key), 'the ban is in the shared store');
  t.match(await w1.get(key), { value: '1' }, 'and worker 1 sees it');
});
