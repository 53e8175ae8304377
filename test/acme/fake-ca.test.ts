// Behaviour Pebble 2.4 cannot show: RFC 9773 renewalInfo, a rate-limited CA with Retry-After, and
// a CA that never answers. A tiny scripted ACME server on 127.0.0.1:0 plays the CA.
import t, { type Test } from 'tap';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { flattenedVerify, base64url } from 'jose';
import { createAcmeManager } from '../../src/acme/index.js';
import type { AcmeEvent, AcmeManagerOptions } from '../../src/acme/index.js';
import { AcmeStorage, certValidity } from '../../src/acme/storage.js';
import { Http01Challenges } from '../../src/acme/index.js';
import { EventLog, RecordingSink, makeCert, quietLogger } from './support.js';

const DAY = 86_400_000;
const NOW = Date.parse('2030-06-01T00:00:00Z');
const HOSTS = ['app.test', 'www.app.test'];
// RFC 9773 §4.1 certID of the test certificate (AKI from the RFC example, serial 0a1b2c3d).
const CERT_ID = 'aYhba4dGQEHhs3uEe6CuLN4ByNQ.ChssPQ';

interface FakeCa { url: string; seen: string[]; close(): Promise<void> }

async function fakeCa(handler: (req: http.IncomingMessage, res: http.ServerResponse, base: string, body: string) => void): Promise<FakeCa> {
  const seen: string[] = [];
  let base = '';
  const srv = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { body += c; });
    req.on('end', () => handler(req, res, base, body));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
  return {
    url: `${base}/dir`,
    seen,
    close: () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }),
  };
}

const json = (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
  res.writeHead(status, { 'content-type': status >= 400 ? 'application/problem+json' : 'application/json', 'replay-nonce': `n${Math.random()}`, ...headers });
  res.end(JSON.stringify(body));
};

function directory(base: string, withAri: boolean) {
  return {
    newNonce: `${base}/nonce`,
    newAccount: `${base}/acct`,
    newOrder: `${base}/order`,
    ...(withAri ? { renewalInfo: `${base}/ari/` } : {}),
  };
}

async function setup(t: Test, ca: FakeCa, extra: Partial<AcmeManagerOptions> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'acme-fake-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // A valid stored certificate: 90 days, issued 10 days before NOW (not due by our own margin).
  const { certPem, keyPem } = await makeCert({ hosts: HOSTS, notBefore: new Date(NOW - 10 * DAY), notAfter: new Date(NOW + 80 * DAY) });
  const storage = new AcmeStorage(dir, ca.url);
  await storage.saveSite('app', { certPem, keyPem, hosts: HOSTS, ...certValidity(certPem) });
  const sink = new RecordingSink();
  const log = new EventLog();
  const m = createAcmeManager({
    config: { email: 'ops@app.test', directory: ca.url, challenge: 'http-01', keyType: 'ec-p256', caBundle: null, caBundlePem: null, eab: null, renewBefore: null },
    storageDir: dir,
    orders: [{ siteId: 'app', hosts: HOSTS }],
    sink,
    http01: new Http01Challenges(),
    logger: quietLogger,
    events: log.push,
    now: () => NOW,
    random: () => 0.5,
    backoffMin: 50,
    backoffMax: 400,
    checkInterval: 30 * DAY,
    ...extra,
  });
  t.teardown(() => m.stop());
  return { m, sink, log, certPem };
}

t.test('ARI window reached → renewal ordered early; rateLimited + Retry-After sets the next attempt', async (t) => {
  const ca = await fakeCa((req, res, base) => {
    const url = req.url ?? '';
    if (url === '/dir') return json(res, 200, directory(base, true));
    if (url.startsWith('/ari/')) {
      // the CA wants this certificate replaced now (e.g. ahead of a revocation)
      return json(res, 200, { suggestedWindow: { start: new Date(NOW - 2 * DAY).toISOString(), end: new Date(NOW - DAY).toISOString() } }, { 'retry-after': '21600' });
    }
    if (url === '/nonce') return json(res, 200, {});
    return json(res, 429, { type: 'urn:ietf:params:acme:error:rateLimited', detail: 'too many new accounts' }, { 'retry-after': '120' });
  });
  t.teardown(() => ca.close());
  const { m, sink, log, certPem } = await setup(t, ca);
  await m.start();
  t.equal(sink.installs[0]?.certPem, certPem, 'stored certificate installed at start');
  const failed = (await log.waitFor((e) => e.event === 'cert_renewal_failed', 0)) as Extract<AcmeEvent, { event: 'cert_renewal_failed' }>;
  t.ok(ca.seen.includes(`GET /ari/${CERT_ID}`), 'renewalInfo asked with the RFC 9773 certID');
  t.match(log.events.find((e) => e.event === 'order_started'), { reason: 'ari' });
  t.match(failed, { problem: 'urn:ietf:params:acme:error:rateLimited', reason: 'too many new accounts', attempt: 1, retryInMs: 120_000 });
  t.equal(m.status().sites[0]?.nextCheckAt, NOW + 120_000, 'next attempt waits for Retry-After, not the 50 ms backoff');
  t.equal(sink.installs.length, 1, 'old certificate kept');
  t.equal(m.status().ready, true);
  await m.stop();
});

t.test('ARI window in the future → no order; next check at the picked time', async (t) => {
  const start = NOW + 20 * DAY;
  const end = NOW + 22 * DAY;
  const ca = await fakeCa((req, res, base) => {
    const url = req.url ?? '';
    if (url === '/dir') return json(res, 200, directory(base, true));
    if (url.startsWith('/ari/')) return json(res, 200, { suggestedWindow: { start: new Date(start).toISOString(), end: new Date(end).toISOString() } });
    return json(res, 500, { type: 'urn:ietf:params:acme:error:serverInternal', detail: 'unexpected' });
  });
  t.teardown(() => ca.close());
  const { m, log } = await setup(t, ca);
  await m.start();
  await m.checkNow();
  t.equal(log.count('order_started'), 0);
  t.equal(m.status().sites[0]?.nextCheckAt, start + (end - start) / 2, 'random 0.5 → middle of the window');
  await m.stop();
});

t.test('broken renewalInfo is advisory only; without ARI our own margin decides', async (t) => {
  const ca = await fakeCa((req, res, base) => {
    const url = req.url ?? '';
    if (url === '/dir') return json(res, 200, directory(base, true));
    if (url.startsWith('/ari/')) return json(res, 200, { suggestedWindow: { start: 'x', end: 'y' } });
    return json(res, 500, {});
  });
  t.teardown(() => ca.close());
  const { m, log } = await setup(t, ca, { checkInterval: 100 * DAY });
  await m.start();
  await m.checkNow();
  t.match(log.events.filter((e) => e.event === 'ari_failed'), [{ site: 'app', reason: /not a timestamp/ }]);
  t.equal(log.count('order_started'), 0);
  // renewAt = notAfter - lifetime/3 = NOW + 80d - 30d
  t.equal(m.status().sites[0]?.nextCheckAt, NOW + 50 * DAY);
  await m.stop();
});

t.test('a CA that never answers blocks neither start() nor stop()', async (t) => {
  const ca = await fakeCa(() => { /* never respond */ });
  t.teardown(() => ca.close());
  // Certificate is missing here (fresh storage dir), so the manager orders at once.
  const dir = mkdtempSync(join(tmpdir(), 'acme-hang-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = new EventLog();
  const m = createAcmeManager({
    config: { email: 'ops@app.test', directory: ca.url, challenge: 'http-01', keyType: 'ec-p256', caBundle: null, caBundlePem: null, eab: null, renewBefore: null },
    storageDir: dir,
    orders: [{ siteId: 'app', hosts: HOSTS }],
    sink: new RecordingSink(),
    http01: new Http01Challenges(),
    logger: quietLogger,
    events: log.push,
  });
  await m.start();
  await log.waitFor((e) => e.event === 'order_started', 0);
  // wait until the request is actually hanging at the CA
  while (ca.seen.length === 0) await new Promise((r) => setImmediate(r));
  t.equal(m.status().ready, false);
  await m.stop();
  t.equal(log.count('cert_renewal_failed'), 0, 'an order aborted by stop() is not reported as a CA failure');
  t.equal(m.status().sites[0]?.nextCheckAt, null, 'stopped');
});

t.test('EAB (RFC 8555 §7.3.4) is sent with the account request, ToS agreed, contact set', async (t) => {
  const hmacKey = Buffer.from('a'.repeat(32)).toString('base64url');
  let accountRequest: { payload?: string } | null = null;
  const ca = await fakeCa((req, res, base, body) => {
    const url = req.url ?? '';
    if (url === '/dir') return json(res, 200, { ...directory(base, false), meta: { externalAccountRequired: true } });
    if (url === '/nonce') return json(res, 200, {});
    if (url === '/acct') accountRequest = JSON.parse(body) as { payload?: string };
    return json(res, 403, { type: 'urn:ietf:params:acme:error:unauthorized', detail: 'stop here' });
  });
  t.teardown(() => ca.close());
  const dir = mkdtempSync(join(tmpdir(), 'acme-eab-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = new EventLog();
  const m = createAcmeManager({
    config: { email: 'ops@app.test', directory: ca.url, challenge: 'http-01', keyType: 'ec-p256', caBundle: null, caBundlePem: null, eab: { kid: 'kid-123', hmacKey }, renewBefore: null },
    storageDir: dir,
    orders: [{ siteId: 'app', hosts: HOSTS }],
    sink: new RecordingSink(),
    http01: new Http01Challenges(),
    logger: quietLogger,
    events: log.push,
  });
  t.teardown(() => m.stop());
  await m.start();
  const failed = await log.waitFor((e) => e.event === 'cert_renewal_failed', 0);
  t.match(failed, { problem: 'urn:ietf:params:acme:error:unauthorized', reason: 'stop here' });
  const payloadB64 = (accountRequest as { payload?: string } | null)?.payload ?? '';
  const payload = JSON.parse(Buffer.from(payloadB64, 'base64url').toString()) as {
    termsOfServiceAgreed?: boolean; contact?: string[]; externalAccountBinding?: { protected: string; payload: string; signature: string };
  };
  t.equal(payload.termsOfServiceAgreed, true);
  t.same(payload.contact, ['mailto:ops@app.test']);
  const eab = payload.externalAccountBinding;
  t.ok(eab, 'externalAccountBinding present');
  if (!eab) return;
  const { protectedHeader } = await flattenedVerify(eab, base64url.decode(hmacKey), { algorithms: ['HS256'] });
  t.match(protectedHeader, { alg: 'HS256', kid: 'kid-123', url: /\/acct$/ });
  await t.rejects(flattenedVerify(eab, Buffer.from('wrong key, wrong key, wrong key!'), { algorithms: ['HS256'] }), 'signed with the configured key only');
  await m.stop();
});
