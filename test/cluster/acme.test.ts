// ACME with `workers: 2` against a real Pebble, through the built CLI: one manager (in the primary)
// orders for the whole host, while the CA's validation connections land on whichever worker the
// cluster picks — so every worker must answer the HTTP-01 / TLS-ALPN-01 challenge, and every worker
// must then serve the issued certificate. A worker that starts later (replacing a crashed one)
// must serve it too, without a new order.
import t from 'tap';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startPebble } from '../helpers/pebble-harness.mjs';
import { startUpstream, tlsPeer } from '../helpers/gateway.js';
import { requireBinary } from '../helpers/requires.js';
import { CLI_SKIP, parseExposition, scrape, spawnCli, total } from '../ops-e2e/_support.js';

requireBinary(t, '/usr/bin/pebble', 'pebble');
// npm test builds dist/ first: a missing build is a failure here, not a reason to skip.
if (CLI_SKIP) throw new Error(CLI_SKIP);

const work = mkdtempSync(join(tmpdir(), 'portcullis-workers-acme-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

for (const challenge of ['http-01', 'tls-alpn-01'] as const) {
  await t.test(`${challenge}: every worker answers challenges and serves the issued certificate`, async (t) => {
    const httpPort = await freePort();
    const httpsPort = await freePort();
    const pebble = await startPebble({ httpPort, tlsPort: httpsPort });
    t.teardown(() => pebble.stop());
    const root = await pebble.getRootPem();
    const caBundle = join(work, `pebble-ca-${challenge}.pem`);
    writeFileSync(caBundle, pebble.listenerCaPem);
    const up = await startUpstream(t);
    const file = join(work, `gw-${challenge}.yml`);
    // Five hosts, one order each: five validations spread over both workers.
    writeFileSync(
      file,
      `listen: { https: 127.0.0.1:${httpsPort}, http: 127.0.0.1:${httpPort}, admin: 127.0.0.1:0 }
workers: 2
tls:
  storage: ${join(work, `storage-${challenge}`)}
  acme: { email: ops@app.test, directory: ${pebble.directoryUrl}, challenge: ${challenge}, ca_bundle: ${caBundle} }
sites:
${['a', 'b', 'c', 'd', 'e'].map((h) => `  - { id: ${h}, hosts: [${h}.test], upstream: ${up.origin}, routes: [{ path: /, access: public }] }`).join('\n')}
`,
    );
    const cli = spawnCli(t, ['start', '--config', file], {});
    const started = await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
    const adminPort = (started.admin as { port: number }).port;
    await cli.waitForLog(() => cli.logs().filter((l) => l.event === 'cert_issued').length === 5, 90_000);

    // Each new connection goes to the next worker: eight in a row cover both, for every host.
    for (const host of ['a.test', 'b.test', 'c.test', 'd.test', 'e.test']) {
      const seen = [];
      for (let i = 0; i < 8; i++) seen.push(await tlsPeer(httpsPort, host, root));
      t.ok(seen.every((s) => s.authorized), `${host}: every connection gets the certificate chaining to Pebble's root`);
      t.equal(new Set(seen.map((s) => s.serial)).size, 1, `${host}: one certificate, the same in every worker`);
    }
    if (challenge === 'http-01') {
      const answeredBy = new Set(cli.logs().filter((l) => l.reason === 'acme_http01' && l.status === 200).map((l) => l.worker));
      // Pebble opens a connection per validation; round robin hands them to both workers.
      t.same([...answeredBy].sort(), [1, 2], 'HTTP-01 answered by both workers');
    } else {
      const servedBy = new Set(cli.logs().filter((l) => l.event === 'tls_alpn_challenge_served').map((l) => l.worker));
      t.same([...servedBy].sort(), [1, 2], 'TLS-ALPN-01 answered by both workers');
    }
    const m = parseExposition((await scrape(adminPort)).body);
    t.equal(total(m, 'portcullis_acme_orders_total', { result: 'success' }), 5, 'five orders, made once for the host (not once per worker)');
    const ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
    t.equal(ready.status, 200, 'ready: every worker has every certificate');

    // A replacement worker gets the certificates from the primary, not from a new order.
    const victim = cli.logs().find((l) => l.msg === 'worker listening')!;
    process.kill(victim.pid as number, 'SIGKILL');
    await cli.waitForLog((l) => l.msg === 'worker listening' && l.worker === 3, 20_000);
    for (let i = 0; i < 6; i++) t.ok((await tlsPeer(httpsPort, 'c.test', root)).authorized, `connection ${i} after the restart`);
    t.equal(cli.logs().filter((l) => l.event === 'cert_issued').length, 5, 'no new order');

    cli.child.kill('SIGTERM');
    t.equal((await cli.exited).code, 0);
  });
}
