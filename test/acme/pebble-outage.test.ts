// The CA goes away: the installed certificate stays, every failed attempt is reported, the manager
// retries on its own backoff, and once Pebble is back (new root, accounts forgotten) it renews.
import t from 'tap';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { startPebble } from '../helpers/pebble-harness.mjs';
import type { Pebble } from '../helpers/pebble-harness.mjs';
import { createAcmeManager } from '../../src/acme/index.js';
import type { AcmeEvent, AcmeManagerOptions } from '../../src/acme/index.js';
import { EventLog, RecordingSink, quietLogger, serialOf, startHttp01, startTlsAlpn01, tlsAuthorized } from './support.js';
import { requireBinary } from '../helpers/requires.js';

requireBinary(t, '/usr/bin/pebble', 'pebble');

const http01 = await startHttp01();
t.teardown(() => http01.close());
const alpn = await startTlsAlpn01();
t.teardown(() => alpn.close());

const work = mkdtempSync(join(tmpdir(), 'acme-outage-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
// Same listener certificate across restarts, so the configured ca_bundle stays valid.
const certsDir = join(work, 'pebble-certs');
let pebble: Pebble | null = await startPebble({ httpPort: http01.port, tlsPort: alpn.port, certsDir });
t.teardown(() => pebble?.stop());
const { listenPort, managementPort, directoryUrl } = pebble;
const caBundle = join(work, 'ca.pem');
const caBundlePem = pebble.listenerCaPem;
writeFileSync(caBundle, pebble.listenerCaPem);
const firstRoot = await pebble.getRootPem();

function manager(extra: Partial<AcmeManagerOptions>) {
  const sink = new RecordingSink();
  const log = new EventLog();
  const m = createAcmeManager({
    config: {
      email: 'ops@app.test',
      directory: directoryUrl,
      challenge: 'http-01',
      keyType: 'ec-p256',
      caBundle,
      caBundlePem,
      eab: null,
      renewBefore: null,
    },
    storageDir: join(work, 'store'),
    orders: [{ siteId: 'app', hosts: ['app.test', 'www.app.test'] }],
    sink,
    http01: http01.challenges,
    tlsAlpn01: alpn.responder,
    logger: quietLogger,
    events: log.push,
    backoffMin: 50,
    backoffMax: 400,
    pollMin: 50,
    pollMax: 300,
    ...extra,
  });
  t.teardown(() => m.stop());
  return { m, sink, log };
}

await t.test('CA outage keeps the old certificate, retries with backoff, recovers by itself', async (t) => {
  const first = manager({});
  await first.m.start();
  await first.log.waitFor((e) => e.event === 'cert_issued', 0);
  const original = first.sink.latest('app');
  await first.m.stop();
  t.ok(original, 'initial certificate issued');
  const notAfter = Date.parse(new X509Certificate(original?.certPem ?? '').validTo);

  await pebble?.stop();
  pebble = null;

  // The clock says renewal is due, but the CA is down.
  const clock = notAfter - 60_000;
  const { m, sink, log } = manager({ now: () => clock });
  await m.start();
  t.equal(sink.installs.length, 1, 'stored certificate installed at start even though the CA is down');
  t.equal(sink.installs[0]?.certPem, original?.certPem);

  // Three consecutive failures, each reported, each retried by the manager itself. (acme-client's
  // own retry loop would sleep 5+10+15+20+25 s per attempt; the safety timeout would catch that.)
  await log.waitFor((e) => e.event === 'cert_renewal_failed' && e.attempt === 3, 0, 60_000);
  const failures = log.events.filter((e): e is Extract<AcmeEvent, { event: 'cert_renewal_failed' }> => e.event === 'cert_renewal_failed');
  t.same(failures.slice(0, 3).map((f) => f.attempt), [1, 2, 3]);
  for (const f of failures) {
    t.match(f, { site: 'app', hosts: ['app.test', 'www.app.test'], reason: /ECONNREFUSED/, problem: null });
    t.ok(f.retryInMs >= 45 && f.retryInMs <= 400, `backoff within [min-10%, max]: ${f.retryInMs}`);
  }
  t.ok((failures[2]?.retryInMs ?? 0) > (failures[0]?.retryInMs ?? 0), 'backoff grows');
  const st = m.status();
  t.equal(st.ready, true, 'still ready: the old certificate is valid');
  t.equal(st.sites[0]?.notAfter, notAfter, 'status still reports the old certificate');
  t.match(st.sites[0]?.lastError, /ECONNREFUSED/);
  t.equal(sink.installs.length, 1, 'failures never replaced or removed the installed certificate');
  t.equal(log.count('cert_issued'), 0);

  // Pebble comes back on the same ports with a new root and no memory of our account.
  const mark = log.events.length;
  pebble = await startPebble({ httpPort: http01.port, tlsPort: alpn.port, certsDir, listenPort, managementPort });
  const newRoot = await pebble.getRootPem();
  t.not(newRoot, firstRoot, 'Pebble has a new root');
  const issued = await log.waitFor((e) => e.event === 'cert_issued', mark, 60_000);
  t.match(issued, { site: 'app', renewal: true });
  t.equal(log.count('account_registered'), 1, 'lost account registered again with the same key');
  const fresh = sink.latest('app');
  t.not(serialOf(fresh?.certPem ?? ''), serialOf(original?.certPem ?? ''));
  t.same(await tlsAuthorized(fresh?.certPem ?? '', fresh?.keyPem ?? '', 'www.app.test', newRoot), { authorized: true, error: null });
  t.equal((await tlsAuthorized(fresh?.certPem ?? '', fresh?.keyPem ?? '', 'www.app.test', firstRoot)).authorized, false, 'not the old root');
  t.equal(m.status().sites[0]?.lastError, null, 'error cleared');
  t.equal(m.status().sites[0]?.consecutiveFailures, 0);
  await m.stop();
});
