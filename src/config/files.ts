/**
 * Reading the files a configuration names (`NAME_FILE` secrets, certificates, CA bundles) at load
 * time, synchronously: only regular files, and only up to a size no such file needs. A FIFO or a
 * character device would block the read — forever, and on a SIGHUP reload with the whole gateway's
 * event loop — and `/dev/zero` would never end.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';

/** Far above any certificate chain, CA bundle or secret. */
export const MAX_CONFIG_FILE_BYTES = 16 * 1024 * 1024;

/** Why a file named by the configuration was not read; `code` is what problems print. */
export class ConfigFileError extends Error {
  constructor(
    readonly code: 'EISDIR' | 'not a regular file' | 'larger than 16mb',
    file: string,
  ) {
    super(`${file}: ${code}`);
    this.name = 'ConfigFileError';
  }
}

/** The file's text (UTF-8). Throws Node's errors (`code` ENOENT, EACCES…) or a {@link ConfigFileError}. */
export function readConfigFile(file: string): string {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  const fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const stat = fstatSync(fd);
    if (stat.isDirectory()) throw new ConfigFileError('EISDIR', file);
    if (!stat.isFile()) throw new ConfigFileError('not a regular file', file);
    if (stat.size > MAX_CONFIG_FILE_BYTES) throw new ConfigFileError('larger than 16mb', file);
    return readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
}
