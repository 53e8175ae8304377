// `--idle`: how much memory the gateway needs to hold many idle keep-alive TLS connections.
// Each connection does one full request (so it is a real keep-alive connection, past the TLS and
// HTTP parsers) and then stays open and silent while the gateway's RSS is read.
import tls from 'node:tls';
import { systems, HOST } from './systems.mjs';
import { treeRss } from './proc.mjs';

const REQUEST = `GET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;

function openOne(port, sockets) {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: HOST, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    let done = false;
    const finish = (ok) => {
      if (done) return;
      done = true;
      if (ok) sockets.push(socket);
      else socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(30_000, () => finish(false));
    socket.once('secureConnect', () => socket.write(REQUEST));
    socket.once('data', (chunk) => {
      socket.setTimeout(0);
      finish(chunk.toString('latin1').startsWith('HTTP/1.1 200'));
    });
    socket.on('error', () => finish(false));
    socket.on('close', () => {
      if (done) socket.closedEarly = true;
      finish(false);
    });
  });
}

const mb = (b) => (b == null ? null : Math.round((b / 2 ** 20) * 10) / 10);

/** Runs the idle measurement against the proxy-only gateway (and nginx when installed). */
export async function idleBenchmark(ctx, o, log) {
  const n = o.idleConnections;
  // The gateway reaps connections that stay silent (slowloris guard, keep-alive timeout); this
  // measurement is about memory, so those timers are pushed past its duration.
  const extra = 'limits: { headers_timeout: 600s, request_timeout: 900s }\ntimeouts: { idle: 900s }\n';
  const wanted = ['proxy-only', 'nginx'].filter((name) => !o.only || o.only.includes(name));
  const results = [];
  for (const name of wanted) {
    const sys = systems().find((s) => s.name === name);
    const why = sys.available();
    if (why) {
      results.push({ system: name, skipped: why });
      continue;
    }
    const inst = await sys.start({ ...ctx, idleExtra: extra });
    try {
      await inst.check();
      const port = Number(new URL(inst.url).port);
      const before = treeRss(inst.pid);
      const sockets = [];
      const started = Date.now();
      let failed = 0;
      const concurrency = 64;
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < n) {
            next++;
            if (!(await openOne(port, sockets))) failed++;
          }
        }),
      );
      // Let allocation settle (and the gateway's GC run) before reading.
      await new Promise((r) => setTimeout(r, 3000));
      const after = treeRss(inst.pid);
      const stillOpen = sockets.filter((s) => !s.destroyed && !s.closedEarly).length;
      results.push({
        system: name,
        connections: n,
        opened: sockets.length,
        failed,
        stillOpen,
        openSeconds: (Date.now() - started) / 1000,
        rssBeforeMB: mb(before),
        rssAfterMB: mb(after),
        deltaMB: mb(after - before),
        // Per connection still OPEN when RSS was read: connections the server already closed hold nothing.
        perConnectionKB: stillOpen ? Math.round(((after - before) / stillOpen / 1024) * 10) / 10 : null,
      });
      log(`idle ${name}: ${stillOpen}/${n} open, RSS ${mb(before)} MB -> ${mb(after)} MB`);
      for (const s of sockets) s.destroy();
    } finally {
      await inst.stop();
    }
  }
  const lines = ['## idle keep-alive TLS connections', 'system      conns  open  failed  RSS before MB  RSS after MB  delta MB  KB/conn'];
  for (const r of results) {
    if (r.skipped) lines.push(`${r.system.padEnd(10)}  skipped: ${r.skipped}`);
    else lines.push(`${r.system.padEnd(10)}  ${String(r.connections).padStart(5)}  ${String(r.stillOpen).padStart(4)}  ${String(r.failed).padStart(6)}  ${String(r.rssBeforeMB).padStart(13)}  ${String(r.rssAfterMB).padStart(12)}  ${String(r.deltaMB).padStart(8)}  ${String(r.perConnectionKB).padStart(7)}`);
  }
  const gw = results.find((r) => r.system === 'proxy-only' && !r.skipped);
  const target = gw ? { target: `${n} idle keep-alive TLS connections held with <= 200 MB more`, value: gw.deltaMB, met: gw.stillOpen === n && gw.deltaMB <= 200 } : null;
  if (target) lines.push('', `${target.met ? 'MET' : 'MISSED'}  ${target.target} (${gw.deltaMB} MB, ${gw.stillOpen}/${n} still open)`);
  return { mode: 'idle', results, target, text: lines.join('\n') };
}
