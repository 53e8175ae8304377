import t from 'tap';
import Fastify from 'fastify';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fastifyRateLimit from '@fastify/rate-limit';
import { gatewayRateLimitOptions, rateLimitStoreFor, routeRateLimitKey } from '../../src/protect/index.js';
import type { RouteRateLimit } from '../../src/protect/index.js';
import { MemoryStore, type Store } from '../../src/state/index.js';
import { isGatewayError } from '../../src/errors.js';

// The gateway's own route table, resolved by an onRequest hook (as the lead's pipeline does).
const table: Array<[string, RouteRateLimit | null]> = [
  ['/a', { routeId: 'site:0', max: 2, windowMs: 10_000, key: 'ip' }],
  ['/b', { routeId: 'site:1', max: 3, windowMs: 60_000, key: 'ip' }],
  ['/u', { routeId: 'site:2', max: 1, windowMs: 5_000, key: 'user' }],
  ['/free', null],
];

interface Built { app: FastifyInstance; advance: (ms: number) => void; exceeded: string[] }

async function build(t: { teardown: (fn: () => unknown) => void }, resolverFirst: boolean): Promise<Built> {
  let now = 1_000_000;
  const store = new MemoryStore({ now: () => now, sweepIntervalMs: 0 });
  const app = Fastify();
  t.teardown(async () => { await app.close(); await store.close(); });
  const routeOf = new WeakMap<FastifyRequest, RouteRateLimit | null>();
  const subjectOf = new WeakMap<FastifyRequest, string>();
  const exceeded: string[] = [];

  const addResolver = (): void => {
    app.addHook('onRequest', async function resolveRoute(request) {
      const entry = table.find(([prefix]) => request.url.startsWith(prefix));
      routeOf.set(request, entry?.[1] ?? null);
      const user = request.headers['x-test-user'];
      if (typeof user === 'string') subjectOf.set(request, user); // stands in for token verification
    });
  };
  if (resolverFirst) addResolver();
  await app.register(fastifyRateLimit, gatewayRateLimitOptions({
    store,
    getRules: (request) => {
      if (!routeOf.has(request)) throw new Error('rate limiter ran before the route resolver');
      return routeOf.get(request) ?? null;
    },
    subject: (request) => subjectOf.get(request),
    onExceeded: (_request, key) => exceeded.push(key),
  }));
  if (!resolverFirst) addResolver();
  app.setErrorHandler((err, request, reply) => {
    // Stand-in for the gateway's safe error body.
    const status = isGatewayError(err) ? (err.statusCode ?? 500) : 500;
    void reply.status(status).send({ code: isGatewayError(err) ? err.code : 'GW_ERR_INTERNAL', requestId: request.id });
  });
  app.all('/*', async () => ({ ok: true }));
  await app.ready();
  return { app, advance: (ms) => { now += ms; }, exceeded };
}

for (const resolverFirst of [true, false]) {
  t.test(`per-route limits from a per-request getter (resolver hook registered ${resolverFirst ? 'before' : 'after'} the plugin)`, async (t) => {
    const { app, advance, exceeded } = await build(t, resolverFirst);
    const get = (url: string, remoteAddress = '192.0.2.1', headers: Record<string, string> = {}) =>
      app.inject({ method: 'GET', url, remoteAddress, headers });

    let res = await get('/a/x');
    t.equal(res.statusCode, 200);
    t.equal(res.headers['ratelimit-limit'], '2');
    t.equal(res.headers['ratelimit-remaining'], '1');
    t.equal(res.headers['ratelimit-reset'], '10');
    t.notOk('x-ratelimit-limit' in res.headers, 'draft-spec names only');

    advance(2_500);
    res = await get('/a/y');
    t.equal(res.statusCode, 200);
    t.equal(res.headers['ratelimit-remaining'], '0');
    t.equal(res.headers['ratelimit-reset'], '8', 'fixed window: reset counts down, rounded up');

    res = await get('/a/z');
    t.equal(res.statusCode, 429);
    t.equal(res.headers['retry-after'], '8');
    t.equal(res.headers['ratelimit-limit'], '2');
    t.equal(res.headers['ratelimit-remaining'], '0');
    t.same(res.json(), { code: 'GW_ERR_RATE_LIMITED', requestId: res.json().requestId });
    t.same(exceeded, [routeRateLimitKey('site:0', 'ip:192.0.2.1')], 'onExceeded got the route-scoped key');

    // Another route has its own limit and counter; another client has its own counter.
    res = await get('/b');
    t.equal(res.statusCode, 200);
    t.equal(res.headers['ratelimit-limit'], '3');
    t.equal(res.headers['ratelimit-remaining'], '2');
    t.equal((await get('/a', '192.0.2.2')).statusCode, 200);

    // A route without rate_limit is not limited and gets no headers.
    for (let i = 0; i < 5; i++) {
      res = await get('/free');
      t.equal(res.statusCode, 200);
    }
    t.notOk('ratelimit-limit' in res.headers);

    advance(7_500);
    t.equal((await get('/a')).statusCode, 200, 'a new window after reset');
  });
}

t.test('attack: X-Forwarded-For rotation does not reset the counter; IPv6 /64 shares one', async (t) => {
  const { app } = await build(t, true);
  const get = (remoteAddress: string, xff?: string) =>
    app.inject({ method: 'GET', url: '/a', remoteAddress, headers: xff === undefined ? {} : { 'x-forwarded-for': xff } });
  t.equal((await get('198.51.100.9', '203.0.113.1')).statusCode, 200);
  t.equal((await get('198.51.100.9', '203.0.113.2')).statusCode, 200);
  t.equal((await get('198.51.100.9', '203.0.113.3')).statusCode, 429);
  t.equal((await get('2001:db8:5:6::1')).statusCode, 200);
  t.equal((await get('2001:db8:5:6::2')).statusCode, 200);
  t.equal((await get('2001:db8:5:6:ffff::3')).statusCode, 429, 'same /64');
  t.equal((await get('2001:db8:5:7::1')).statusCode, 200, 'other /64');
});

t.test('user key: the limit follows the principal set by an onRequest hook registered after the plugin', async (t) => {
  const { app } = await build(t, false);
  const get = (remoteAddress: string, user?: string) =>
    app.inject({ method: 'GET', url: '/u', remoteAddress, headers: user === undefined ? {} : { 'x-test-user': user } });
  t.equal((await get('192.0.2.1', 'alice')).statusCode, 200);
  t.equal((await get('192.0.2.99', 'alice')).statusCode, 429, 'changing ip does not help alice');
  t.equal((await get('192.0.2.1', 'bob')).statusCode, 200, 'bob is counted separately');
  t.equal((await get('192.0.2.1')).statusCode, 200, 'anonymous falls back to the ip key');
  t.equal((await get('192.0.2.1')).statusCode, 429);
});

t.test('a failing store is a 500 (fail closed), or passes with skipOnError', async (t) => {
  for (const skipOnError of [false, true]) {
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    await store.close(); // every call now rejects
    const app = Fastify();
    t.teardown(() => app.close());
    await app.register(fastifyRateLimit, gatewayRateLimitOptions({
      store,
      getRules: () => ({ routeId: 'r', max: 1, windowMs: 1000, key: 'ip' }),
      skipOnError,
    }));
    app.get('/', async () => 'ok');
    const res = await app.inject({ method: 'GET', url: '/' });
    t.equal(res.statusCode, skipOnError ? 200 : 500, `skipOnError=${String(skipOnError)}`);
  }
});

t.test("the plugin's store answers in the same turn when our store can (incrNow), and through incr's promise otherwise", async (t) => {
  const memory = new MemoryStore({ sweepIntervalMs: 0 });
  t.teardown(() => memory.close());
  type Answer = { error: Error | null; result?: { current: number; ttl: number } };
  const ask = (store: Store, key: string): { answered: () => Answer | null; done: Promise<Answer> } => {
    const Ctor = rateLimitStoreFor(store);
    let answer: Answer | null = null;
    const done = new Promise<Answer>((resolve) => {
      new Ctor({} as never).incr(key, (error, result) => {
        answer = { error, result };
        resolve(answer);
      }, 1000, 5);
    });
    return { answered: () => answer, done };
  };
  const now = ask(memory, 'k');
  t.same(now.answered(), { error: null, result: { current: 1, ttl: 1000 } }, 'answered before incr returned');
  // A store with only the promise API (a remote one): the same answers, a turn later.
  const remoteLike: Store = { incr: (k, w) => memory.incr(k, w), get: (k) => memory.get(k), set: (k, v, ttl) => memory.set(k, v, ttl), setIfAbsent: (k, v, ttl) => memory.setIfAbsent(k, v, ttl), delete: (k) => memory.delete(k), close: async () => undefined };
  const later = ask(remoteLike, 'k');
  t.equal(later.answered(), null, 'not answered in the same turn');
  t.same((await later.done).result?.current, 2, 'the same counter');
  // A key holding something else than a counter: an error either way, never a throw.
  await memory.set('text', 'abc', 1000);
  t.match((await ask(memory, 'text').done).error?.message, /does not hold a counter/);
  t.match((await ask(remoteLike, 'text').done).error?.message, /does not hold a counter/);
});
