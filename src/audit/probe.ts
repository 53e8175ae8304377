/**
 * `portcullis audit`'s I/O: looks at a live deployment the way a client (and an attacker) does,
 * and records what it saw for checks.ts to judge. Nothing here decides anything.
 *
 * `connect` sends every connection to that address while the URL's host is still the SNI name,
 * the Host header and the name the certificate must carry (as curl's `--resolve`): a deployment
 * can be audited before DNS points at it, and the tests audit gateways on loopback.
 */
import tls from 'node:tls';
import http from 'node:http';
import https from 'node:https';
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import type { Exchange, LegacyHandshake, Observations, TlsObservation } from './checks.js';

export interface ProbeOptions {
  readonly url: URL;
  /** The address to connect to instead of resolving the URL's host. */
  readonly connect?: string | undefined;
  /** Extra trusted roots (PEM), trusted besides Node's bundled (Mozilla) roots. */
  readonly ca?: string | undefined;
  /** The plain-HTTP URL whose redirect is checked; null: not checked. */
  readonly httpUrl: URL | null;
  readonly protectedPaths: readonly string[];
  readonly timeoutMs: number;
}

/** Response headers read, as much as Chromium reads (more: it fails with ERR_RESPONSE_HEADERS_TOO_BIG). */
const MAX_HEADERS = 256 * 1024;

/** At most this much of a body is kept: enough to find a stack trace, never a whole download. */
const MAX_BODY = 64 * 1024;

/** The URL's host as a socket takes it: an IPv6 literal without its brackets. */
function hostOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}

/** SNI carries names only (RFC 6066 §3): none for an address. */
function sniOf(url: URL): string | undefined {
  return isIP(hostOf(url)) === 0 ? url.hostname : undefined;
}

function portOf(url: URL): number {
  return url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
}

function trustedRoots(ca: string | undefined): string[] | undefined {
  return ca === undefined ? undefined : [...tls.rootCertificates, ca];
}

function handshake(o: ProbeOptions): Promise<TlsObservation> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: o.connect ?? hostOf(o.url),
      port: portOf(o.url),
      servername: sniOf(o.url),
      ca: trustedRoots(o.ca),
      rejectUnauthorized: false, // judged below, so that an untrusted certificate is a finding, not a crash
    });
    const done = (r: TlsObservation): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    // A deadline for the whole handshake, not an idle timeout: a server dripping a byte at a time
    // must not hold the audit.
    const timer = setTimeout(() => done({ error: 'timed out', protocol: null, authorized: false, authorizationError: null, validFrom: null, validTo: null }), o.timeoutMs);
    // The code, not OpenSSL's multi-line message: one line in the report.
    socket.once('error', (err: Error & { code?: string }) => done({ error: err.code ?? err.message.split('\n')[0]!, protocol: null, authorized: false, authorizationError: null, validFrom: null, validTo: null }));
    socket.once('secureConnect', () => {
      const cert = socket.getPeerCertificate();
      const date = (text: string | undefined): Date | null => (text ? new Date(text) : null);
      // Node gives only a code for a name mismatch; its check's message says which names there are.
      const why = (code: string): string => (code === 'ERR_TLS_CERT_ALTNAME_INVALID' ? (tls.checkServerIdentity(hostOf(o.url), cert)?.message ?? code) : code);
      done({
        error: null,
        protocol: socket.getProtocol(),
        authorized: socket.authorized,
        authorizationError: socket.authorizationError ? why(String(socket.authorizationError)) : null,
        validFrom: date(cert?.valid_from),
        validTo: date(cert?.valid_to),
      });
    });
  });
}

/**
 * What a failed legacy handshake says: only the server's `protocol_version` alert (RFC 8446 §6.2;
 * RFC 8996), or an answer in a newer version, is a refusal of the version. A `handshake_failure`
 * is what a server that speaks the version sends when no offered cipher suits it.
 */
const VERSION_REFUSED = new Set(['ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', 'ERR_SSL_UNSUPPORTED_PROTOCOL', 'ERR_SSL_WRONG_VERSION_NUMBER']);

/**
 * A handshake offering only `version`, with every cipher suite this OpenSSL has (a server still on
 * TLS 1.0 may keep only an old suite: Camellia, 3DES). Our own OpenSSL may refuse to offer the
 * version: then untested.
 */
function legacyHandshake(o: ProbeOptions, version: 'TLSv1' | 'TLSv1.1'): Promise<LegacyHandshake> {
  return new Promise((resolve) => {
    let socket: tls.TLSSocket;
    try {
      socket = tls.connect({
        host: o.connect ?? hostOf(o.url),
        port: portOf(o.url),
        servername: sniOf(o.url),
        minVersion: version,
        maxVersion: version,
        // OpenSSL 3 offers TLS 1.0/1.1 only at security level 0.
        ciphers: 'ALL:@SECLEVEL=0',
        rejectUnauthorized: false,
      });
    } catch (err) {
      resolve({ outcome: 'untested', reason: (err as Error).message });
      return;
    }
    const done = (r: LegacyHandshake): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ outcome: 'unclear', reason: 'no answer' }), o.timeoutMs);
    socket.once('error', (err: Error & { code?: string }) => {
      const reason = err.code ?? err.message.split('\n')[0]!;
      // Errors raised before anything was sent are ours, not the server's refusal.
      if (err.code === 'ERR_SSL_NO_PROTOCOLS_AVAILABLE' || err.code === 'ERR_SSL_NO_CIPHERS_AVAILABLE') done({ outcome: 'untested', reason });
      else done({ outcome: VERSION_REFUSED.has(reason) ? 'refused' : 'unclear', reason });
    });
    socket.once('secureConnect', () => done({ outcome: 'accepted', protocol: socket.getProtocol() ?? version }));
  });
}

function exchange(o: ProbeOptions, url: URL, method: string, path: string, headers: Record<string, string> = {}): Promise<Exchange> {
  return new Promise((resolve) => {
    const secure = url.protocol === 'https:';
    const options: https.RequestOptions = {
      host: o.connect ?? hostOf(url),
      port: portOf(url),
      method,
      path,
      headers: { host: url.host, 'user-agent': 'portcullis-audit', ...headers },
      agent: false,
      // A big CSP and a few cookies pass Node's 16 KiB default; Chromium takes up to 256 KiB.
      maxHeaderSize: MAX_HEADERS,
      ...(secure ? { servername: sniOf(url), ca: trustedRoots(o.ca), rejectUnauthorized: false } : {}),
    };
    let response: http.IncomingMessage | null = null;
    const req = (secure ? https : http).request(options, (res) => {
      response = res;
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        if (size < MAX_BODY) chunks.push(c);
        size += c.length;
        if (size >= MAX_BODY) res.destroy();
      });
      const finish = (): void => {
        clearTimeout(timer);
        // Every field as sent: Node's `headers` keeps only the first of a repeated Server (and a
        // few others), which would hide a second, versioned one.
        resolve({ status: res.statusCode ?? 0, headers: res.headersDistinct, body: Buffer.concat(chunks).subarray(0, MAX_BODY).toString('utf8') });
      };
      res.once('end', finish);
      res.once('close', finish);
    });
    // One deadline for the whole exchange (a body dripped slowly included); what arrived by then
    // is judged.
    const timer = setTimeout(() => (response === null ? req.destroy(new Error('timed out')) : response.destroy()), o.timeoutMs);
    req.once('error', (err: Error & { code?: string }) => {
      clearTimeout(timer);
      resolve({ error: err.code === 'HPE_HEADER_OVERFLOW' ? `response headers over ${MAX_HEADERS / 1024} KiB (HPE_HEADER_OVERFLOW), more than browsers accept` : (err.code ?? err.message) });
    });
    req.end();
  });
}

/**
 * `alg: none` as libraries have been fooled by it: spelt in other cases, which a case-sensitive
 * deny list lets through to a case-insensitive lookup (RFC 8725 §2.1, §3.1).
 */
const UNSIGNED_ALGS = ['none', 'None', 'NONE', 'nOnE'] as const;

/** A JWT with no signature: a gateway that honours it lets anyone in. */
function unsignedToken(alg: string): string {
  const part = (v: object): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  return `${part({ alg, typ: 'JWT' })}.${part({ sub: 'portcullis-audit', roles: ['admin'], iat: now, exp: now + 300 })}.`;
}

export async function observe(o: ProbeOptions): Promise<Observations> {
  const base = o.url.pathname || '/';
  const nonce = randomBytes(6).toString('hex');
  const [tlsSeen, tls10, tls11, page, missing, malformed, trace, plain] = await Promise.all([
    handshake(o),
    legacyHandshake(o, 'TLSv1'),
    legacyHandshake(o, 'TLSv1.1'),
    exchange(o, o.url, 'GET', base + o.url.search),
    exchange(o, o.url, 'GET', `/portcullis-audit-${nonce}/missing`),
    exchange(o, o.url, 'GET', `/portcullis-audit-${nonce}/%zz%c0%ae`),
    exchange(o, o.url, 'TRACE', base, { 'x-portcullis-audit': nonce }),
    o.httpUrl === null ? Promise.resolve(null) : exchange(o, o.httpUrl, 'GET', o.httpUrl.pathname + o.httpUrl.search),
  ]);
  const protectedPaths = await Promise.all(
    o.protectedPaths.map(async (path) => {
      const [anonymous, ...answers] = await Promise.all([
        exchange(o, o.url, 'GET', path),
        ...UNSIGNED_ALGS.map((alg) => exchange(o, o.url, 'GET', path, { authorization: `Bearer ${unsignedToken(alg)}` })),
      ]);
      return { path, anonymous: anonymous!, forged: UNSIGNED_ALGS.map((alg, i) => ({ alg, answer: answers[i]! })) };
    }),
  );
  return { url: o.url, now: new Date(), tls: tlsSeen, legacy: { TLSv1: tls10, 'TLSv1.1': tls11 }, page, missing, malformed, trace, http: plain, protectedPaths };
}
