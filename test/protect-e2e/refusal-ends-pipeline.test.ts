// A request the gateway has refused is finished: no later stage runs for it. A stage that runs
// after the answer is invisible to the client (it already has its 403/429) but not harmless: it
// verifies tokens of banned clients (crypto an attacker can make us do for free), logs
// auth_failed events that never happened, and counts refused requests against a user's rate
// limit. Fastify's reply is a thenable, which once made the gate carry on after the answer had
// been FINISHED; each case below gives that a moment to show before it counts.
import t, { type Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOOPBACK_LISTEN, startUpstream, type ClientResponse } from '../helpers/gateway.js';
import { fakeClock, securityEvents, startGatewayOnClock, startIssuer } from './_helpers.js';

const ATTACKER = '198.51.100.66';
/** Long enough for a stage that wrongly ran after the response to have logged. */
const SETTLE_MS = 150;

async function setup(t: Test) {
  const clock = fakeClock();
  const up = await startUpstream(t);
  const idp = await startIssuer(t);
  const gw = await startGatewayOnClock(t, `${LOOPBACK_LISTEN}${idp.yaml}trusted_proxies: [127.0.0.0/8]
bans: { auth_failures: 2, window: 1m, duration: 1m }
sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes:
      - { id: public, path: /public/, access: public }
      - { id: api, path: /, rate_limit: { max: 2, window: 1m, key: user } }
`, clock);
  const valid = `Bearer ${await idp.token('alice')}`;
  const bad = `Bearer ${await idp.forged('alice')}`;
  const send = (client: string, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<ClientResponse> =>
    gw.request({ method, path, headers: { accept: 'application/json', 'x-forwarded-for': client, ...headers } });
  return { up, gw, valid, bad, send };
}

t.test('a banned client: its tokens are neither verified nor logged, the answer is final', async (t) => {
  const { up, gw, valid, bad, send } = await setup(t);
  for (let i = 0; i < 2; i++) t.equal((await send(ATTACKER, `/api/g${i}`, { authorization: bad })).status, 401);
  t.equal(securityEvents(gw.logs, 'auth_failed').length, 2);

  const refused = [
    await send(ATTACKER, '/api/a', { authorization: bad }),
    await send(ATTACKER, '/api/b', { authorization: valid }),
  ];
  t.same(refused.map((r) => r.status), [429, 429], 'banned');
  await sleep(SETTLE_MS);
  t.equal(securityEvents(gw.logs, 'auth_failed').length, 2, 'no auth_failed for the bad token sent while banned');
  const access = gw.logs.filter((l) => l.type === 'access' && refused.some((r) => r.headers['x-request-id'] === l.request_id));
  t.equal(access.length, 2);
  for (const line of access) t.equal(line.user, undefined, 'the valid token of a banned client was not verified (no user on its access line)');
  t.equal(up.seen.length, 0);
});

t.test('a CSRF refusal does not count against the user rate limit', async (t) => {
  const { up, gw, valid, send } = await setup(t);
  const csrf = { authorization: valid, cookie: 'sid=1', 'sec-fetch-site': 'cross-site', origin: 'https://evil.test' };
  for (let i = 0; i < 3; i++) t.equal((await send('198.51.100.7', `/api/f${i}`, csrf, 'POST')).status, 403, 'cross-site POST with a cookie refused');
  await sleep(SETTLE_MS);
  t.equal(securityEvents(gw.logs, 'rate_limited').length, 0, 'the refused requests were not rate-limited after their answer');
  t.equal((await send('198.51.100.7', '/api/ok1', { authorization: valid })).status, 200, 'alice still has her whole limit');
  t.equal((await send('198.51.100.7', '/api/ok2', { authorization: valid })).status, 200);
  t.equal((await send('198.51.100.7', '/api/ok3', { authorization: valid })).status, 429, 'and it is 2, not less and not more');
  t.same(up.seen.map((r) => r.url), ['/api/ok1', '/api/ok2']);
  t.equal(gw.logs.filter((l) => /already sent/i.test(String(l.msg))).length, 0, 'no stage tried to answer twice');
});

t.test('a misdirected request (421) with a bad token: no token check, no ban progress', async (t) => {
  const { gw, bad, send } = await setup(t);
  for (let i = 0; i < 3; i++) {
    const res = await gw.request({ path: `/x${i}`, host: 'unknown.test', servername: 'app.test', headers: { accept: 'application/json', 'x-forwarded-for': ATTACKER, authorization: bad } });
    t.equal(res.status, 421, 'misdirected: the TLS name is app.test, the Host is not');
  }
  await sleep(SETTLE_MS);
  t.equal(securityEvents(gw.logs, 'auth_failed').length, 0, 'the token of a request that matched no site was never looked at');
  t.equal((await send(ATTACKER, '/public/p')).status, 200, 'and those refusals did not ban the client');
});
