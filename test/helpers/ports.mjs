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

/** The lowest port Linux hands out for `listen(0)` and outgoing connections (32768 by default). */
function ephemeralLow() {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 11000 ? low : 32768;
  } catch {
    return 32768;
  }
}

/**
 * A port for a server a test must name before it starts (Pebble validates the gateway on fixed
 * ports). Picked below the ephemeral range: a port from `listen(0)` can be handed out again, to a
 * parallel test's `listen(0)` or outgoing connection, between this check and the real bind (seen
 * as EADDRINUSE in test/cluster/acme.test.ts). Random, so that parallel suites rarely try the same
 * one, and checked, so that a taken one is skipped.
 */
export async function freePort() {
  const low = 10000;
  const high = ephemeralLow();
  for (let i = 0; i < 100; i++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port found between ${low} and ${high}`);
}
