// Shared pieces for the ACME tests: challenge responders on ephemeral ports, a recording sink and
// event log, and a real TLS check of an issued certificate.
import http from 'node:http';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { Http01Challenges } from '../../src/acme/index.js';
import type { AcmeEvent, AcmeLogger, CertificateSink, TlsAlpn01Responder } from '../../src/acme/index.js';

const say = (level: string) => (obj: object, msg?: string): void => {
  if (process.env.ACME_TEST_LOG) console.error(level, msg, JSON.stringify(obj, (_k, v: unknown) => (v instanceof Error ? v.stack : v)));
};
/** Silent unless ACME_TEST_LOG is set. */
export const quietLogger: AcmeLogger = { debug: say('debug'), info: say('info'), warn: say('warn'), error: say('error') };

/** HTTP-01 responder: what the lead's plain-HTTP listener will do, on 127.0.0.1:0. */
export async function startHttp01(): Promise<{ challenges: Http01Challenges; port: number; close(): Promise<void> }> {
  const challenges = new Http01Challenges();
  const srv = http.createServer((req, res) => {
    const body = challenges.lookupPath(req.url ?? '');
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' }).end(body);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    challenges,
    port: (srv.address() as { port: number }).port,
    close: () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }),
  };
}

/** Dedicated TLS-ALPN-01 responder (RFC 8737); the shared-listener variant belongs to src/tls. */
export async function startTlsAlpn01(): Promise<{ responder: TlsAlpn01Responder; hosts(): string[]; port: number; close(): Promise<void> }> {
  const table = new Map<string, tls.SecureContext>();
  const responder: TlsAlpn01Responder = {
    set: (host, certPem, keyPem) => { table.set(host.toLowerCase(), tls.createSecureContext({ cert: certPem, key: keyPem })); },
    delete: (host) => { table.delete(host.toLowerCase()); },
  };
  const srv = tls.createServer(
    { ALPNProtocols: ['acme-tls/1'], SNICallback: (name, cb) => cb(null, table.get(name.toLowerCase())) },
    (s) => s.end(),
  );
  srv.on('tlsClientError', () => {});
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    responder,
    hosts: () => [...table.keys()],
    port: (srv.address() as { port: number }).port,
    close: () => new Promise<void>((r) => srv.close(() => r())),
  };
}

export interface Installed { siteId: string; hosts: readonly string[]; certPem: string; keyPem: string }

/** Sink that keeps every installation in order. */
export class RecordingSink implements CertificateSink {
  readonly installs: Installed[] = [];
  install(siteId: string, hosts: readonly string[], certPem: string, keyPem: string): void {
    this.installs.push({ siteId, hosts: [...hosts], certPem, keyPem });
  }
  latest(siteId: string): Installed | undefined {
    return this.installs.filter((i) => i.siteId === siteId).at(-1);
  }
}

/** Event log with "wait until an event matching this arrives" (a safety timeout only prevents hangs). */
export class EventLog {
  readonly events: AcmeEvent[] = [];
  private waiters: { pred: (e: AcmeEvent) => boolean; from: number; resolve: (e: AcmeEvent) => void }[] = [];
  readonly push = (e: AcmeEvent): void => {
    this.events.push(e);
    for (const w of [...this.waiters]) {
      if (w.pred(e)) {
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve(e);
      }
    }
  };
  count(name: AcmeEvent['event'], site?: string): number {
    return this.events.filter((e) => e.event === name && (site === undefined || ('site' in e && e.site === site))).length;
  }
  /** Resolves with the first matching event at index >= `from` (default: only future events). */
  waitFor(pred: (e: AcmeEvent) => boolean, from = this.events.length, timeoutMs = 90_000): Promise<AcmeEvent> {
    const seen = this.events.slice(from).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('event did not arrive')), timeoutMs);
      this.waiters.push({ pred, from, resolve: (e) => { clearTimeout(timer); resolve(e); } });
    });
  }
}

export const splitPem = (pem: string): string[] =>
  pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];

/** Serves cert+key from a TLS server and connects by SNI trusting only `rootPem`. */
export async function tlsAuthorized(certPem: string, keyPem: string, servername: string, rootPem: string): Promise<{ authorized: boolean; error: string | null }> {
  const srv = tls.createServer({ cert: certPem, key: keyPem }, (s) => s.end());
  srv.on('tlsClientError', () => {});
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as { port: number };
  try {
    return await new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername, ca: rootPem, rejectUnauthorized: false }, () => {
        resolve({ authorized: s.authorized, error: s.authorizationError ? String(s.authorizationError) : null });
        s.destroy();
      });
      s.on('error', reject);
    });
  } finally {
    await new Promise<void>((r) => srv.close(() => r()));
  }
}

export const serialOf = (certPem: string): string => new X509Certificate(certPem).serialNumber;

/** A self-signed certificate (with an AKI, so RFC 9773 certIDs work) and its PKCS#8 key, as PEM. */
export async function makeCert(opts: { hosts: string[]; notBefore: Date; notAfter: Date; serial?: string }): Promise<{ certPem: string; keyPem: string }> {
  const x509 = await import('@peculiar/x509');
  const { webcrypto } = await import('node:crypto');
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: opts.serial ?? '0a1b2c3d',
    name: `CN=${opts.hosts[0] ?? 'x'}`,
    notBefore: opts.notBefore,
    notAfter: opts.notAfter,
    signingAlgorithm: alg,
    keys,
    extensions: [
      new x509.SubjectAlternativeNameExtension(opts.hosts.map((value) => ({ type: 'dns' as const, value }))),
      new x509.AuthorityKeyIdentifierExtension('69885B6B87464041E1B37B847BA0AE2CDE01C8D4'),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)?.join('\n') ?? ''}\n-----END PRIVATE KEY-----\n`;
  return { certPem: cert.toString('pem'), keyPem };
}
