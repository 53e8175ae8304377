/**
 * Process-lifecycle helpers shared by the single-process gateway and the cluster primary:
 * binding and closing plain HTTP listeners, and what triggers a configuration reload.
 */
import { watch } from 'node:fs';
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

/** SIGHUP always reloads; with `watchFile`, so does a change of the file (debounced). */
export function onReloadTriggers(configPath: string, watchFile: boolean, reload: (why: string) => void): void {
  process.on('SIGHUP', () => reload('SIGHUP'));
  if (!watchFile) return;
  let timer: NodeJS.Timeout | undefined;
  // Editors replace files (rename) as often as they write them: watch the directory.
  watch(dirname(configPath), (_event, name) => {
    if (name && !configPath.endsWith(name)) return;
    clearTimeout(timer);
    timer = setTimeout(() => reload('watch'), 200);
  });
}
