// Shared bits for the edge-protection end-to-end tests (test/protect-e2e/*.test.ts).
import type { LogRecord } from '../helpers/gateway.js';

/** Security-event lines (`security: true`) named `event`, in the order they were logged. */
export function securityEvents(logs: readonly LogRecord[], event: string): LogRecord[] {
  return logs.filter((l) => l.security === true && l.event === event);
}

/** A loopback port nothing listens on (bound, then closed): connecting to it is refused. */
export async function deadPort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = net.createServer().once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Values of a header that may be repeated, as an array. */
export function all(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}
