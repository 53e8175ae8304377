import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { writeFileAtomic } from '../../src/tls/index.js';

async function tempDir(t: Tap): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-atomic-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}
type Tap = { teardown(fn: () => unknown): void };

t.test('writeFileAtomic: replaces whole files with the requested mode and leaves no temp files', async (t) => {
  const dir = await tempDir(t);
  const p = join(dir, 'sub', 'k.pem');
  await writeFileAtomic(p, 'one', 0o600);
  t.equal(await readFile(p, 'utf8'), 'one');
  t.equal((await stat(p)).mode & 0o777, 0o600, 'mode exact despite umask');
  t.equal((await stat(join(dir, 'sub'))).mode & 0o777, 0o700, 'created directory is private');
  await writeFileAtomic(p, Buffer.from('two'), 0o644);
  t.equal(await readFile(p, 'utf8'), 'two');
  t.equal((await stat(p)).mode & 0o777, 0o644);
  // Many concurrent writers: the result is one complete version, never a mix, and no temp files.
  const versions = Array.from({ length: 20 }, (_, i) => `v${i}-`.repeat(5000));
  await Promise.all(versions.map((v) => writeFileAtomic(p, v, 0o600)));
  t.ok(versions.includes(await readFile(p, 'utf8')), 'content is exactly one of the writes');
  t.same(await readdir(join(dir, 'sub')), ['k.pem']);
  // A failing write (target is a directory) keeps nothing half-done around.
  await t.rejects(writeFileAtomic(join(dir, 'sub'), 'x'));
  t.same((await readdir(dir)).sort(), ['sub']);
});
