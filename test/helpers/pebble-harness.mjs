// Start/stop Debian's /usr/bin/pebble for tests: throwaway TLS cert for its listeners,
// in-process fake DNS (every name -> 127.0.0.1), no VA sleeps. Nonce rejection stays at Pebble's
// default (5 % of good nonces are refused) so clients must cope with badNonce (RFC 8555 §6.5).
//
//   import { startPebble } from './pebble-harness.mjs';
//   // start your HTTP-01 / TLS-ALPN-01 responders first (port 0 is fine), then:
//   const pebble = await startPebble({ httpPort: httpSrv.address().port, tlsPort: tlsSrv.address().port });
//   // acme-client: new acme.Client({ directoryUrl: pebble.directoryUrl, ... }) after
//   //   acme.axios.defaults.httpsAgent = new https.Agent({ ca: pebble.listenerCaPem })
//   const rootPem = await pebble.getRootPem(); // issuing root; changes on every start
//   await pebble.stop();
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startFakeDns } from './fake-dns.mjs';

const here = dirname(fileURLToPath(import.meta.url));

import { freePort } from './ports.mjs';

export { freePort };

function get(url, ca) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${url}: ${res.statusCode}`))));
    }).on('error', reject);
  });
}

export async function startPebble({
  listenPort = 0, managementPort = 0, httpPort = 5002, tlsPort = 5001, // 0 = pick a free port
  dnsRecords = {}, authzReuse = 0, env = {}, binary = '/usr/bin/pebble', log = false,
  certsDir = null, // reuse the listener TLS cert across restarts (clients keep trusting it)
} = {}) {
  listenPort ||= await freePort();
  managementPort ||= await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pebble-'));
  const certs = certsDir ?? join(dir, 'certs');
  execFileSync('sh', [join(here, 'pebble', 'gen-tls.sh'), certs], { stdio: 'ignore' });
  writeFileSync(join(dir, 'pebble-config.json'), JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${listenPort}`,
      managementListenAddress: `127.0.0.1:${managementPort}`,
      certificate: join(certs, 'cert.pem'),
      privateKey: join(certs, 'key.pem'),
      httpPort, tlsPort,
      ocspResponderURL: '',
      externalAccountBindingRequired: false,
    },
  }));
  const dns = await startFakeDns({ port: 0, records: dnsRecords });
  const listenerCaPem = readFileSync(join(certs, 'ca.pem'), 'utf8');
  const child = spawn(binary, ['-config', 'pebble-config.json', '-dnsserver', `127.0.0.1:${dns.port}`, '-strict=false'], {
    cwd: dir,
    env: {
      ...process.env,
      PEBBLE_VA_NOSLEEP: '1',
      PEBBLE_AUTHZREUSE: String(authzReuse), // default 50 -> flaky "no challenge needed" orders
      ...env,
    },
    stdio: ['ignore', log ? 'inherit' : 'pipe', log ? 'inherit' : 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (c) => { output = (output + c).slice(-4000); });
  child.stderr?.on('data', (c) => { output = (output + c).slice(-4000); });
  const exited = new Promise((r) => child.once('exit', r));
  // never leave an orphaned pebble behind if the test process dies before teardown
  const killOnExit = () => { child.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); };
  process.once('exit', killOnExit);
  const directoryUrl = `https://localhost:${listenPort}/dir`;
  const managementUrl = `https://localhost:${managementPort}`;
  let stopping = null;
  const stop = () => (stopping ??= (async () => {
    process.removeListener('exit', killOnExit);
    if (child.exitCode === null && child.signalCode === null) { child.kill('SIGTERM'); await exited; }
    await dns.close();
    rmSync(dir, { recursive: true, force: true });
  })());
  for (let i = 0; ; i++) {
    try { await get(directoryUrl, listenerCaPem); await get(`${managementUrl}/roots/0`, listenerCaPem); break; } catch (err) {
      if (child.exitCode !== null || i > 100) {
        await stop();
        throw new Error(`pebble did not start (${child.exitCode === null ? 'timeout' : `exit ${child.exitCode}`}): ${err.message}\n${output}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    directoryUrl, managementUrl, listenerCaPem, listenPort, managementPort, dnsPort: dns.port, pid: child.pid, stop,
    getRootPem: () => get(`${managementUrl}/roots/0`, listenerCaPem),
    getIntermediatePem: () => get(`${managementUrl}/intermediates/0`, listenerCaPem),
  };
}
