/**
 * Process-lifecycle helpers shared by the single-process gateway and the cluster primary:
 * binding and closing plain HTTP listeners, and what triggers a configuration reload.
 */
import { realpathSync, statSync, watch } from 'node:fs';
import { dirname } from 'node:path';
import type { Server as HttpServer } from 'node:http';
import type { ListenAddress } from '../config/types.js';

export function listenOn(server: HttpServer, addr: ListenAddress): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Stops accepting and resolves once the open connections are gone (idle ones are closed now). */
export function closeServer(server: HttpServer | null): Promise<void> {
  if (!server || !server.listening) return Promise.resolve();
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}

/**
 * SIGHUPs that arrive while the gateway is starting. SIGHUP's default action ends the process, so
 * one sent between the start of `portcullis start` and the reload handler (certificates, workers,
 * listeners: a second or more) killed the gateway. Held from the first line of `start`,
 * remembered, and handed to {@link onReloadTriggers}, which reloads once for them.
 */
export interface EarlySighup {
  /** A SIGHUP arrived since. */
  pending(): boolean;
  /** Stop holding (the real handler is in place, or the start failed). */
  release(): void;
}

export function holdEarlySighup(): EarlySighup {
  let pending = false;
  const early = (): void => {
    pending = true;
  };
  process.on('SIGHUP', early);
  return { pending: () => pending, release: () => void process.off('SIGHUP', early) };
}

/**
 * What the configuration file is now: a change of any of these is a change of the file, however
 * it came (written in place, renamed over, or a symlink swapped, as Kubernetes updates a mounted
 * ConfigMap by renaming a `..data` link in the same directory).
 */
function fingerprint(file: string): string {
  try {
    const st = statSync(file); // follows symlinks
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
  } catch (err) {
    return `error:${(err as NodeJS.ErrnoException).code ?? ''}`;
  }
}

/**
 * SIGHUP always reloads; with `watchFile`, so does a change of the file (debounced). `early`: the
 * SIGHUPs held while starting (one reload for them, now).
 */
export function onReloadTriggers(configPath: string, watchFile: boolean, reload: (why: string) => void, early?: EarlySighup): void {
  process.on('SIGHUP', () => reload('SIGHUP'));
  if (early !== undefined) {
    early.release();
    if (early.pending()) reload('SIGHUP');
  }
  if (!watchFile) return;
  let last = fingerprint(configPath);
  let timer: NodeJS.Timeout | undefined;
  const check = (): void => {
    const now = fingerprint(configPath);
    if (now === last) return;
    last = now;
    reload('watch');
  };
  const onEvent = (): void => {
    clearTimeout(timer);
    timer = setTimeout(check, 200);
  };
  // Editors replace files (rename) as often as they write them, and Kubernetes swaps a symlink
  // next to the file: the directory is watched, and any event in it checks the file itself.
  // A config that is a symlink into another directory is edited there: that one is watched too.
  const dirs = new Set([dirname(configPath)]);
  try {
    dirs.add(dirname(realpathSync(configPath)));
  } catch {
    // not there (yet): its own directory's events will tell
  }
  // A watched directory that goes away (the old target of a swapped link) just stops reporting.
  for (const dir of dirs) watch(dir, onEvent).on('error', () => undefined).unref();
}
