import t from 'tap';
import { MemoryStore } from '../../src/state/index.js';
import { namespaceOf } from '../../src/state/memory.js';

function fakeClock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let now = start;
  return { now: () => now, advance: (ms) => { now += ms; } };
}

t.test('incr is a fixed window: later hits do not extend it', async (t) => {
  const clock = fakeClock();
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  t.same(await store.incr('k', 1000), { count: 1, ttlMs: 1000 });
  clock.advance(400);
  t.same(await store.incr('k', 1000), { count: 2, ttlMs: 600 });
  clock.advance(599);
  t.same(await store.incr('k', 1000), { count: 3, ttlMs: 1 });
  clock.advance(1);
  t.same(await store.incr('k', 1000), { count: 1, ttlMs: 1000 }, 'a new window starts at 1');
});

t.test('keys are independent', async (t) => {
  const store = new MemoryStore({ now: fakeClock().now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  await store.incr('a', 1000);
  await store.incr('a', 1000);
  t.equal((await store.incr('b', 1000)).count, 1);
});

t.test('get/set/delete with expiry', async (t) => {
  const clock = fakeClock();
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  t.equal(await store.get('x'), null);
  await store.set('x', 'v', 500);
  t.same(await store.get('x'), { value: 'v', ttlMs: 500 });
  clock.advance(499);
  t.same(await store.get('x'), { value: 'v', ttlMs: 1 });
  clock.advance(1);
  t.equal(await store.get('x'), null, 'expired exactly at ttl');
  await store.set('y', 'w', 500);
  await store.delete('y');
  t.equal(await store.get('y'), null);
  await store.delete('never-there');
  t.equal((await store.incr('x', 100)).count, 1, 'counter on an expired key restarts');
});

t.test('counters are readable through get; incr on a non-counter is a coded error', async (t) => {
  const store = new MemoryStore({ now: fakeClock().now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  await store.incr('c', 1000);
  await store.incr('c', 1000);
  t.same(await store.get('c'), { value: '2', ttlMs: 1000 });
  await store.set('s', 'banned', 1000);
  await t.rejects(store.incr('s', 1000), { code: 'GW_ERR_INTERNAL' });
  // a counter written as a string counts on, as Redis's INCR does; only decimal integers are counters
  await store.set('n', '41', 1000);
  t.same(await store.incr('n', 1000), { count: 42, ttlMs: 1000 });
  t.same(await store.get('n'), { value: '42', ttlMs: 1000 }, 'read back as a string');
  for (const notCounter of ['', ' 1', '1.5', '0x10', '1e3', '01', '-0', 'NaN']) {
    await store.set('z', notCounter, 1000);
    await t.rejects(store.incr('z', 1000), { code: 'GW_ERR_INTERNAL' }, JSON.stringify(notCounter));
  }
  await store.set('z', '-3', 1000);
  t.equal((await store.incr('z', 1000)).count, -2, 'a negative counter counts up');
});

t.test('bounded: a flood of keys evicts expired first, then the oldest', async (t) => {
  const clock = fakeClock();
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 0, maxEntries: 3 });
  t.teardown(() => store.close());
  await store.set('short', '1', 10);
  await store.set('old', '1', 10_000);
  await store.set('mid', '1', 10_000);
  clock.advance(10);
  await store.set('new1', '1', 10_000);
  t.equal(store.size, 3);
  t.not(await store.get('old'), null, 'the expired entry was dropped instead of a live one');
  for (let i = 0; i < 1000; i++) await store.incr(`flood${i}`, 10_000);
  t.equal(store.size, 3, 'never above maxEntries');
  t.equal(await store.get('old'), null, 'oldest live entries were evicted');
  t.not(await store.get('flood999'), null);
});

t.test('namespaces: a key\'s prefix up to its second colon', async (t) => {
  t.equal(namespaceOf('rl:login:ip:192.0.2.1'), 'rl:login:');
  t.equal(namespaceOf('rl:api%3Av2:hdr:sha256:abc'), 'rl:api%3Av2:');
  t.equal(namespaceOf('ban:on:ip:2001:db8::/64'), 'ban:on:');
  t.equal(namespaceOf('ban:fail:ip:192.0.2.1'), 'ban:fail:');
  t.equal(namespaceOf('one:two'), 'one:');
  t.equal(namespaceOf('plain'), '');
});

t.test('bounded per namespace: a flood in one key space evicts only from that space', async (t) => {
  const clock = fakeClock();
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 0, maxEntries: 10 });
  t.teardown(() => store.close());
  // What one client holds before it floods: a ban, its failure count, its address's login counter.
  await store.set('ban:on:ip:192.0.2.1', '1', 900_000);
  await store.incr('ban:fail:ip:192.0.2.9', 60_000);
  await store.incr('rl:login:ip:192.0.2.1', 3_600_000);
  await store.incr('rl:login:ip:192.0.2.1', 3_600_000);
  for (let i = 0; i < 1000; i++) await store.incr(`rl:keyed:hdr:made-up-${i}`, 60_000);
  t.equal(store.size, 10, 'never above maxEntries');
  t.same(await store.get('ban:on:ip:192.0.2.1'), { value: '1', ttlMs: 900_000 }, 'the ban survived');
  t.equal((await store.get('ban:fail:ip:192.0.2.9'))?.value, '1', 'the failure count survived');
  t.equal((await store.get('rl:login:ip:192.0.2.1'))?.value, '2', 'the other route\'s counter survived');
  t.not(await store.get('rl:keyed:hdr:made-up-999'), null, 'the newest key of the flood is held');
  t.equal(await store.get('rl:keyed:hdr:made-up-0'), null, 'the flood evicted its own oldest keys');
  // A new key in a small space still finds room: the largest space gives it up.
  await store.set('ban:on:ip:192.0.2.2', '1', 900_000);
  t.not(await store.get('ban:on:ip:192.0.2.2'), null);
  t.not(await store.get('ban:on:ip:192.0.2.1'), null);
  t.equal(store.size, 10);
  // Deletes and expiry keep the count right.
  await store.delete('ban:on:ip:192.0.2.2');
  await store.delete('ban:on:ip:192.0.2.2');
  t.equal(store.size, 9);
  clock.advance(60_000);
  t.equal(store.sweep(), 7, 'the six keyed counters left and the failure count expired');
  t.equal(store.size, 2, 'the ban and the login counter are left');
});

t.test('sweep removes expired entries without reads', async (t) => {
  const clock = fakeClock();
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  await store.set('a', '1', 100);
  await store.set('b', '1', 200);
  clock.advance(150);
  t.equal(store.sweep(), 1);
  t.equal(store.size, 1);
});

t.test('the periodic sweep timer is unref\'d and cleared on close', async (t) => {
  const clock = fakeClock();
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 5 });
  await store.set('a', '1', 1);
  clock.advance(1);
  t.equal(store.size, 1, 'not yet swept: nothing has read the key');
  // Timers fire in deadline order, so the 5 ms sweep runs before this 25 ms timeout resolves.
  await new Promise((resolve) => setTimeout(resolve, 25));
  t.equal(store.size, 0, 'the background sweep dropped the expired key');
  await store.close();
  await t.rejects(store.get('a'), { code: 'GW_ERR_INTERNAL' }, 'closed store refuses use');
});

t.test('rejects nonsensical windows and options', async (t) => {
  const store = new MemoryStore({ sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  await t.rejects(store.incr('k', 0), TypeError);
  await t.rejects(store.incr('k', Number.NaN), TypeError);
  await t.rejects(store.set('k', 'v', -1), TypeError);
  t.throws(() => new MemoryStore({ maxEntries: 0 }), TypeError);
  t.throws(() => new MemoryStore({ sweepIntervalMs: -1 }), TypeError);
});

t.test('peek answers what get answers, without a promise', async (t) => {
  let now = 1_000;
  const store = new MemoryStore({ now: () => now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  t.equal(store.peek('k'), null);
  await store.set('k', 'v', 500);
  t.same(store.peek('k'), { value: 'v', ttlMs: 500 });
  t.same(store.peek('k'), await store.get('k'));
  now += 500;
  t.equal(store.peek('k'), null, 'expired');
  await store.close();
  t.throws(() => store.peek('k'), { code: 'GW_ERR_INTERNAL' }, 'after close, like get');
});

t.test('setIfAbsent: only where no live value is; an expired one counts as absent', async (t) => {
  const clock = fakeClock();
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  t.equal(await store.setIfAbsent('ban:on:x', '1', 1000), true);
  t.equal(await store.setIfAbsent('ban:on:x', '2', 5000), false, 'held: not replaced');
  t.same(await store.get('ban:on:x'), { value: '1', ttlMs: 1000 }, 'neither value nor expiry moved');
  const all = await Promise.all([1, 2, 3].map((i) => store.setIfAbsent('ban:on:y', String(i), 1000)));
  t.same(all.filter(Boolean).length, 1, 'of callers at once, one stores');
  clock.advance(1000);
  t.equal(await store.setIfAbsent('ban:on:x', '3', 1000), true, 'expired: absent');
  await t.rejects(store.setIfAbsent('k', 'v', 0), TypeError);
});
