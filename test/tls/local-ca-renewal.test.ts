// The development CA's certificate is renewed while the gateway runs (its leaves live 7 days: a
// gateway that ran longer served an expired one until a reload or a restart). Against the built
// CLI, one process and `workers: 2`: a leaf issued beforehand (with a clock set back) falls due a
// few seconds after the start; new connections then get a new leaf, in every worker, and the new
// leaf is saved to tls.storage. A worker that is still starting when the renewal is sent gets the
// new leaf with its snapshot.
import t, { type Test as Tap } from 'tap';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startUpstream, until } from '../helpers/gateway.js';
import { childrenOf, holdWhenOpened } from '../helpers/processes.js';
import { logFileLines } from '../helpers/log-file.js';
import { CLI_SKIP, spawnCli } from '../ops-e2e/_support.js';
import { LOCAL_LEAF_LIFETIME_MS, ensureLocalCertificate } from '../../src/tls/index.js';

if (CLI_SKIP) throw new Error(CLI_SKIP);

/** The serial number of the certificate a new TLS connection gets. */
function servedSerial(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'app.test', ca, ALPNProtocols: ['http/1.1'] }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial);
    });
    socket.on('error', reject);
  });
}

/**
 * The CLI on a gateway whose development leaf (issued beforehand, its notBefore backdated 5 min)
 * falls due for renewal — a third of its life left — `dueIn` ms from now.
 */
async function gatewayWithLeafDueIn(t: Tap, dueIn: number, workers: number, options: { logFile?: boolean } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-local-renewal-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const storage = join(dir, 'certs');
  // Where the gateway logs with `logFile` (stdout otherwise).
  const app = join(dir, 'logs', 'app.log');
  const life = LOCAL_LEAF_LIFETIME_MS + 5 * 60_000;
  const old = await ensureLocalCertificate(storage, ['app.test'], () => Date.now() - (LOCAL_LEAF_LIFETIME_MS - life / 3) + dueIn);
  const up = await startUpstream(t);
  const config = join(dir, 'gw.yml');
  writeFileSync(
    config,
    `listen: { https: 127.0.0.1:0, http: null, admin: null }
workers: ${workers}
shutdown_grace: 2s
tls: { storage: ${storage} }
${options.logFile === true ? `log: { file: ${app} }\n` : ''}sites:
  - hosts: [app.test]
    upstream: ${up.origin}
    routes: [{ path: /, access: public }]
`,
  );
  const cli = spawnCli(t, ['start', '--config', config], {}, { gracefulStop: true });
  return { storage, app, old, oldSerial: new X509Certificate(old.certPem).serialNumber, cli };
}

for (const workers of [1, 2]) {
  t.test(`workers: ${workers}: a leaf falling due while the gateway runs is renewed, served to new connections and saved`, async (t) => {
    const dueIn = 8_000;
    const { storage, old, oldSerial, cli } = await gatewayWithLeafDueIn(t, dueIn, workers);
    const started = await cli.waitForLog((l) => l.msg === 'portcullis started', 30_000);
    const port = (started.https as { port: number }).port;
    t.equal(await servedSerial(port, old.rootPem), oldSerial, 'at start: the leaf on disk, not yet due');

    const renewed = await cli.waitForLog((l) => l.msg === 'local CA: certificate renewed', dueIn + 20_000);
    t.ok(new Date(String(renewed.not_after)).getTime() > Date.now() + LOCAL_LEAF_LIFETIME_MS - 60_000, 'a full new lifetime');
    // Every worker (connections spread over them): the new leaf, under the same root.
    const serials = new Set<string>();
    for (let i = 0; i < 8 * workers; i++) serials.add(await servedSerial(port, old.rootPem));
    t.notOk(serials.has(oldSerial), `no connection gets the old leaf (got ${[...serials].join(', ')})`);
    t.equal(serials.size, 1, 'one new leaf, the same in every process');
    const newSerial = [...serials][0]!;
    const onDisk = (): string => new X509Certificate(readFileSync(join(storage, 'local', 'leaf.crt'), 'utf8')).serialNumber;
    t.ok(await until(() => onDisk() === newSerial, 10_000), 'saved to tls.storage');
    t.equal(cli.logs().filter((l) => String(l.msg).startsWith('local CA: renewing')).length, 0, 'no failed attempt');
    // Said once, at start: a renewal of the same hosts' certificate does not repeat it.
    t.equal(cli.logs().filter((l) => /LOCAL DEVELOPMENT CA/.test(String(l.msg))).length, 1, 'the development CA warning is not repeated by the renewal');

    if (workers > 1) {
      // A worker that starts after the renewal (a replacement) serves the renewed leaf too.
      const listening = cli.logs().filter((l) => l.msg === 'worker listening');
      process.kill(listening[0]!.pid as number, 'SIGKILL');
      await cli.waitForLog((l) => l.msg === 'worker listening' && !listening.some((w) => w.pid === l.pid), 20_000);
      const after = new Set<string>();
      for (let i = 0; i < 16; i++) after.add(await servedSerial(port, old.rootPem));
      t.same([...after], [newSerial], 'the replacement serves the renewed leaf');
    }
  });
}

t.test('workers: 2, the renewal reaches a worker that said hello but has not pulled its snapshot: its snapshot carries the new leaf', async (t) => {
  // Due long enough after the start for a replacement worker to be forked and held first.
  const dueIn = 25_000;
  const { app, old, oldSerial, cli } = await gatewayWithLeafDueIn(t, dueIn, 2, { logFile: true });
  t.ok(await until(() => logFileLines(app).some((l) => l.msg === 'portcullis started'), 30_000), 'started');
  const port = (logFileLines(app).find((l) => l.msg === 'portcullis started')!.https as { port: number }).port;
  // Each process writes its own lines to the file, asynchronously: a worker's 'worker listening'
  // can land after the primary's 'portcullis started'.
  const listening = (): number[] => logFileLines(app).filter((l) => l.msg === 'worker listening').map((l) => l.pid as number);
  t.ok(await until(() => listening().length === 2, 10_000), 'both workers listen');
  const workers = listening();

  // A replacement, stopped as soon as it opens its log file: it has had its hello (which gave it
  // the old leaf) and builds its gateway before it asks for the snapshot. On a loaded machine this
  // test may look too late, when the replacement listens already: then that one is replaced too.
  const renewedMsg = (l: Record<string, unknown>): boolean => l.msg === 'local CA: certificate renewed';
  const known = [...workers];
  let victim = workers[0]!;
  let fresh: number | undefined;
  let cont: (() => void) | null = null;
  for (let attempt = 0; attempt < 3 && cont === null; attempt++) {
    process.kill(victim, 'SIGKILL');
    t.ok(await until(() => (fresh = childrenOf(cli.child.pid!).find((p) => !known.includes(p))) !== undefined, 10_000), 'a replacement is forked');
    known.push(fresh!);
    const held = await holdWhenOpened(fresh!, app);
    t.ok(held, 'the replacement opened its log file, and is held');
    if (held === null) break;
    if (logFileLines(app).some((l) => l.msg === 'worker listening' && l.pid === fresh)) {
      held();
      victim = fresh!;
      continue;
    }
    cont = held;
  }
  t.teardown(() => cont?.());
  t.ok(cont, 'a replacement held before it listened');
  t.notOk(logFileLines(app).some(renewedMsg), 'held before the renewal');

  // The renewal now: the primary sends it to the workers in sync; the held one is not yet.
  t.ok(await until(() => logFileLines(app).some(renewedMsg), dueIn + 20_000), 'the primary renewed the leaf meanwhile');
  cont!();
  t.ok(await until(() => logFileLines(app).some((l) => l.msg === 'worker listening' && l.pid === fresh), 20_000), 'the replacement listens');

  const serials = new Set<string>();
  for (let i = 0; i < 16; i++) serials.add(await servedSerial(port, old.rootPem));
  t.notOk(serials.has(oldSerial), `no connection gets the old leaf (got ${[...serials].join(', ')})`);
  t.equal(serials.size, 1, 'one renewed leaf in both workers, the replacement too');
});
