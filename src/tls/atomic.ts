/**
 * Crash-safe file replacement for keys and certificates.
 *
 * A reader (or the gateway after a power cut) must only ever see the old file or the complete new
 * one, never a truncated key: write a temporary file in the SAME directory (rename(2) is only
 * atomic within one filesystem), fsync it, rename it over the target, then fsync the directory so
 * the rename itself is durable.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Atomically write `data` to `path` with permission `mode` (e.g. `0o600` for private keys).
 * Creates the parent directory (mode 0700) when missing. The temp file is created with `mode`
 * from the start, so a key is never readable by others, even briefly.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  // 'wx': never follow or reuse an existing file at the temp name.
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    // open() applies the umask; chmod makes the mode exact (a 0600 key must stay 0600).
    await fh.chmod(mode);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

async function fsyncDir(dir: string): Promise<void> {
  // Directory fsync makes the rename durable on Linux; some platforms refuse to open a
  // directory for it (EISDIR/EPERM on Windows), which only costs durability, not atomicity.
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // best effort, see above
  } finally {
    await fh?.close().catch(() => undefined);
  }
}
