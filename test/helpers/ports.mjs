// Fixed ports for test servers that must be named before they start.
import { readFileSync } from 'node:fs';
import net from 'node:net';

/** Whether 127.0.0.1:`port` can be listened on right now. */
function canListen(port) {
  return new Promise((resolve) => {
    const s = net.createServer().once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** The ports Linux hands out for `listen(0)` and outgoing connections: [low, high]. */
function ephemeralRange() {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high)) return [low, high];
  } catch {
    // not Linux, or no /proc: Linux's default
  }
  return [32768, 60999];
}

/**
 * A port for a server a test must name before it starts (Pebble validates the gateway on fixed
 * ports). Picked outside the ephemeral range: a port from `listen(0)` can be handed out again, to
 * a parallel test's `listen(0)` or outgoing connection, between this check and the real bind (seen
 * as EADDRINUSE in test/cluster/acme.test.ts). Random, so that parallel suites rarely try the same
 * one, and checked, so that a taken one is skipped.
 */
export async function freePort() {
  const [ephLow, ephHigh] = ephemeralRange();
  // At least 1000 ports below the range (from 10000), or else above it.
  const [low, high] = ephLow - 10000 >= 1000 ? [10000, ephLow] : [ephHigh + 1, 65536];
  if (high - low < 1000) throw new Error(`no room outside the ephemeral port range ${ephLow}-${ephHigh} for fixed test ports`);
  for (let i = 0; i < 100; i++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port found between ${low} and ${high}`);
}
