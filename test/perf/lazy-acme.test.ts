// acme-client (with axios and its crypto helpers: ~3.6 MB of heap and ~5 MB of memory once the
// gateway's other modules are counted, Node 24) is loaded only when a configuration asks for
// ACME. A static import anywhere on the gateway's import graph would bring it back for everyone.
import t from 'tap';
import { execFileSync } from 'node:child_process';

const probe = `
  const { createRequire } = await import('node:module');
  const acmeLoaded = () => Object.keys(createRequire(import.meta.url).cache).some((k) => /[\\\\/]acme-client[\\\\/]/.test(k));
  await import('./src/gateway.ts');
  await import('./src/server/acme.ts');
  const atStart = acmeLoaded();
  await import('./src/acme/manager.ts');
  console.log(JSON.stringify({ atStart, afterManager: acmeLoaded() }));
`;

t.test('importing the gateway does not load acme-client; the ACME manager does', async (t) => {
  const out = execFileSync(process.execPath, ['--import=tsx', '--input-type=module', '-e', probe], { cwd: new URL('../..', import.meta.url), encoding: 'utf8' });
  const got = JSON.parse(out.trim().split('\n').at(-1)!) as { atStart: boolean; afterManager: boolean };
  t.equal(got.atStart, false, 'not loaded by the gateway and its certificate automation');
  t.equal(got.afterManager, true, 'loaded with the manager (the probe can see it)');
});
