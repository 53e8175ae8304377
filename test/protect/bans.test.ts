import t from 'tap';
import { BanList } from '../../src/protect/index.js';
import type { BanRules } from '../../src/protect/index.js';
import { MemoryStore } from '../../src/state/index.js';

const rules: BanRules = { authFailures: 3, windowMs: 60_000, durationMs: 300_000 };

function setup(t: { teardown: (fn: () => unknown) => void }) {
  let now = 5_000_000;
  const clock = { now: () => now, advance: (ms: number) => { now += ms; } };
  const store = new MemoryStore({ now: clock.now, sweepIntervalMs: 0 });
  t.teardown(() => store.close());
  return { clock, store, bans: new BanList({ store, now: clock.now }) };
}

t.test('the Nth failure in the window bans; the ban expires by itself', async (t) => {
  const { clock, bans } = setup(t);
  t.same(await bans.recordAuthFailure('ip:192.0.2.1', rules), { banned: false, failures: 1, overLimit: false });
  t.same(await bans.recordAuthFailure('ip:192.0.2.1', rules), { banned: false, failures: 2, overLimit: false });
  t.same(await bans.isBanned('ip:192.0.2.1'), { banned: false });
  t.same(await bans.recordAuthFailure('ip:192.0.2.1', rules), { banned: true, failures: 3, retryAfterMs: 300_000, overLimit: false });
  t.same(await bans.isBanned('ip:192.0.2.1'), { banned: true, retryAfterMs: 300_000 });
  t.same(await bans.isBanned('ip:192.0.2.2'), { banned: false }, 'other clients unaffected');
  t.equal(bans.activeBans(), 1);
  clock.advance(299_999);
  t.same(await bans.isBanned('ip:192.0.2.1'), { banned: true, retryAfterMs: 1 });
  clock.advance(1);
  t.same(await bans.isBanned('ip:192.0.2.1'), { banned: false });
  t.equal(bans.activeBans(), 0);
  t.same(await bans.recordAuthFailure('ip:192.0.2.1', rules), { banned: false, failures: 1, overLimit: false }, 'counting starts afresh');
});

t.test('a burst of failures recorded together: one ban, one "banned" result, its end not moved', async (t) => {
  const { clock, bans } = setup(t);
  const results = await Promise.all(Array.from({ length: 20 }, () => bans.recordAuthFailure('ip:192.0.2.7', rules)));
  t.equal(results.filter((r) => r.banned).length, 1, 'exactly one failure of the burst bans');
  t.same(await bans.isBanned('ip:192.0.2.7'), { banned: true, retryAfterMs: 300_000 });
  clock.advance(100_000);
  for (let i = 0; i < 5; i++) t.equal((await bans.recordAuthFailure('ip:192.0.2.7', rules)).banned, false, 'failures while banned ban nobody again');
  t.same(await bans.isBanned('ip:192.0.2.7'), { banned: true, retryAfterMs: 200_000 }, 'the ban ends when it was set to');
  clock.advance(200_000);
  t.same(await bans.recordAuthFailure('ip:192.0.2.7', rules), { banned: false, failures: 1, overLimit: false }, 'after the ban, counting starts afresh');
});

t.test('failures spread over more than the window do not ban (slow guessing is the window\'s job)', async (t) => {
  const { clock, bans } = setup(t);
  await bans.recordAuthFailure('c', rules);
  await bans.recordAuthFailure('c', rules);
  clock.advance(60_000);
  t.same(await bans.recordAuthFailure('c', rules), { banned: false, failures: 1, overLimit: false });
  t.same(await bans.isBanned('c'), { banned: false });
});

t.test('an attacker spreading failures over many keys is counted per key; bans:null records nothing', async (t) => {
  const { bans } = setup(t);
  for (let i = 0; i < 10; i++) await bans.recordAuthFailure(`ip:192.0.2.${i}`, rules);
  t.equal(bans.activeBans(), 0);
  t.same(await bans.recordAuthFailure('x', null), { banned: false, failures: 0, overLimit: false });
  for (let i = 0; i < 5; i++) await bans.recordAuthFailure('x', null);
  t.same(await bans.isBanned('x'), { banned: false });
});

t.test('unban lifts the ban and the failure count', async (t) => {
  const { bans } = setup(t);
  for (let i = 0; i < 3; i++) await bans.recordAuthFailure('c', rules);
  await bans.unban('c');
  t.same(await bans.isBanned('c'), { banned: false });
  t.equal(bans.activeBans(), 0);
});

t.test('the gauge is bounded', async (t) => {
  const { store, clock } = setup(t);
  const bans = new BanList({ store, now: clock.now, maxTracked: 2 });
  const one = { ...rules, authFailures: 1 };
  for (const k of ['a', 'b', 'c']) await bans.recordAuthFailure(k, one);
  t.equal(bans.activeBans(), 2);
  t.same(await bans.isBanned('a'), { banned: true, retryAfterMs: 300_000 }, 'the ban itself is unaffected');
});

t.test('invalid rules are misuse', async (t) => {
  const { bans } = setup(t);
  await t.rejects(bans.recordAuthFailure('c', { ...rules, authFailures: 0 }), TypeError);
  await t.rejects(bans.recordAuthFailure('c', { ...rules, windowMs: 0 }), TypeError);
  await t.rejects(bans.recordAuthFailure('c', { ...rules, durationMs: Number.NaN }), TypeError);
});

t.test('check(): the same answers as isBanned, synchronously when the store knows them locally', async (t) => {
  const { clock, store, bans } = setup(t);
  const sync = bans.check('ip:192.0.2.9');
  t.notOk(sync instanceof Promise, 'an in-memory store answers without a promise');
  t.same(sync, { banned: false });
  for (let i = 0; i < 3; i++) await bans.recordAuthFailure('ip:192.0.2.9', rules);
  t.same(bans.check('ip:192.0.2.9'), { banned: true, retryAfterMs: 300_000 });
  clock.advance(300_000);
  t.same(bans.check('ip:192.0.2.9'), { banned: false }, 'expired');

  // A store that knows nothing locally (no peek): the answer comes from get(), as a promise.
  const remoteLike = new BanList({
    store: {
      get: (k: string) => store.get(k),
      incr: (k: string, w: number) => store.incr(k, w),
      set: (k: string, v: string, ttl: number) => store.set(k, v, ttl),
      setIfAbsent: (k: string, v: string, ttl: number) => store.setIfAbsent(k, v, ttl),
      delete: (k: string) => store.delete(k),
      close: async () => {},
    },
  });
  await store.set('ban:on:ip:192.0.2.10', '1', 1000);
  const pending = remoteLike.check('ip:192.0.2.10');
  t.ok(pending instanceof Promise);
  t.same(await pending, { banned: true, retryAfterMs: 1000 });
});

t.test('thresholds per route share one failure count: failures on a laxer route count towards a stricter one', async (t) => {
  const { bans } = setup(t);
  const lax: BanRules = { authFailures: 10, windowMs: 60_000, durationMs: 300_000 };
  for (let i = 1; i <= 3; i++) t.same(await bans.recordAuthFailure('ip:192.0.2.20', lax), { banned: false, failures: i, overLimit: false });
  const r = await bans.recordAuthFailure('ip:192.0.2.20', rules);
  t.same(r, { banned: true, failures: 4, retryAfterMs: 300_000, overLimit: true }, 'the strict route bans at once: its three are used up');
  t.same(await bans.isBanned('ip:192.0.2.20'), { banned: true, retryAfterMs: 300_000 });
});

t.test('a threshold failure whose ban was never written (its store call lost): the next failure bans', async (t) => {
  const { store, bans } = setup(t);
  // Three failures counted by the store, the ban not written (a worker timed out or died between).
  for (let i = 0; i < 3; i++) await store.incr('ban:fail:ip:192.0.2.21', 60_000);
  const r = await bans.recordAuthFailure('ip:192.0.2.21', rules);
  t.same(r, { banned: true, failures: 4, retryAfterMs: 300_000, overLimit: true });
  t.equal((await bans.recordAuthFailure('ip:192.0.2.21', rules)).overLimit, true, 'and the ones after it are over the limit');
});

t.test('checkAfterVerification: banned; or the failures of the window used up, and then the ban is written by it, once', async (t) => {
  const { store, bans } = setup(t);
  t.same(bans.checkAfterVerification('ip:192.0.2.22', rules), { banned: false });
  await store.incr('ban:fail:ip:192.0.2.22', 60_000);
  await store.incr('ban:fail:ip:192.0.2.22', 60_000);
  t.same(bans.checkAfterVerification('ip:192.0.2.22', rules), { banned: false }, 'two of three used');
  await store.incr('ban:fail:ip:192.0.2.22', 60_000);
  t.same(await bans.checkAfterVerification('ip:192.0.2.22', rules), { banned: true, retryAfterMs: 300_000, issued: true }, 'three used, no ban yet: this check writes it');
  t.same(await bans.isBanned('ip:192.0.2.22'), { banned: true, retryAfterMs: 300_000 }, 'a real ban (its end, its gauge)');
  t.equal(bans.activeBans(), 1);
  t.same(bans.checkAfterVerification('ip:192.0.2.22', rules), { banned: true, retryAfterMs: 300_000 }, 'then the ban answers, not issued again');
  // Of a check and a failure racing to write the same ban, one writes it.
  for (let i = 0; i < 3; i++) await store.incr('ban:fail:ip:192.0.2.24', 60_000);
  const [check, failure] = await Promise.all([bans.checkAfterVerification('ip:192.0.2.24', rules), bans.recordAuthFailure('ip:192.0.2.24', rules)]);
  t.equal(Number('issued' in check) + Number(failure.banned), 1, 'one ban issued');
  // A store without local answers: the same, as a promise.
  const remoteLike = new BanList({ store: { get: (k: string) => store.get(k), incr: (k: string, w: number) => store.incr(k, w), set: (k: string, v: string, ttl: number) => store.set(k, v, ttl), setIfAbsent: (k: string, v: string, ttl: number) => store.setIfAbsent(k, v, ttl), delete: (k: string) => store.delete(k), close: async () => undefined } });
  for (let i = 0; i < 3; i++) await store.incr('ban:fail:ip:192.0.2.25', 60_000);
  const answer = remoteLike.checkAfterVerification('ip:192.0.2.25', rules);
  t.ok(answer instanceof Promise);
  t.same(await answer, { banned: true, retryAfterMs: 300_000, issued: true });
});
