// Test fixtures: a throwaway CA issuing leaves with chosen SANs/validity (via @peculiar/x509, as in
// production code), and small promise wrappers around real TLS handshakes.
import { X509Certificate, randomBytes, webcrypto } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import * as x509 from '@peculiar/x509';

const crypto = webcrypto;
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const RSA = { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' } as const;
const DAY = 86_400_000;

export interface TestCa {
  readonly certPem: string;
  issue(opts: LeafOptions): Promise<{ certPem: string; keyPem: string }>;
}

export interface LeafOptions {
  readonly dns?: readonly string[];
  readonly ips?: readonly string[];
  readonly cn?: string;
  readonly notBefore?: Date;
  readonly notAfter?: Date;
  readonly rsa?: boolean;
}

async function pem(key: webcrypto.CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await crypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

export async function createTestCa(name = 'Test CA'): Promise<TestCa> {
  const keys = await crypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const ca = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: '01' + randomBytes(8).toString('hex'),
      name: `CN=${name}`,
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + 3650 * DAY),
      keys,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
    },
    crypto,
  );
  return {
    certPem: ca.toString('pem'),
    async issue(opts) {
      const leafKeys = await crypto.subtle.generateKey(opts.rsa ? RSA : EC, true, ['sign', 'verify']);
      const names: x509.JsonGeneralName[] = [
        ...(opts.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
        ...(opts.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
      ];
      const extensions: x509.Extension[] = [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      ];
      if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));
      const cert = await x509.X509CertificateGenerator.create(
        {
          serialNumber: '01' + randomBytes(8).toString('hex'),
          subject: `CN=${opts.cn ?? opts.dns?.[0] ?? 'leaf'}`,
          issuer: ca.subject,
          notBefore: opts.notBefore ?? new Date(Date.now() - DAY),
          notAfter: opts.notAfter ?? new Date(Date.now() + 30 * DAY),
          publicKey: leafKeys.publicKey,
          signingKey: keys.privateKey,
          signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
          extensions,
        },
        crypto,
      );
      return { certPem: cert.toString('pem'), keyPem: await pem(leafKeys.privateKey) };
    },
  };
}

export interface Handshake {
  readonly socket: tls.TLSSocket;
  readonly peer: X509Certificate;
  readonly alpn: string | false;
  readonly protocol: string | null;
  readonly cipher: string;
}

/** Connect, wait for the handshake, and return what was negotiated. Rejects on handshake error. */
export function handshake(port: number, opts: tls.ConnectionOptions = {}): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...opts }, () => {
      const raw = socket.getPeerX509Certificate();
      if (raw === undefined) {
        socket.destroy();
        reject(new Error('no peer certificate'));
        return;
      }
      resolve({ socket, peer: raw, alpn: socket.alpnProtocol ?? false, protocol: socket.getProtocol(), cipher: socket.getCipher().name });
    });
    socket.once('error', reject);
  });
}

/** Handshake, record the result, close the socket. */
export async function probe(port: number, opts: tls.ConnectionOptions = {}): Promise<Omit<Handshake, 'socket'>> {
  const h = await handshake(port, opts);
  h.socket.destroy();
  return { peer: h.peer, alpn: h.alpn, protocol: h.protocol, cipher: h.cipher };
}

export function sanOf(cert: X509Certificate): string | undefined {
  return cert.subjectAltName;
}

export function portOf(server: { address(): AddressInfo | string | null }): number {
  const a = server.address();
  if (a === null || typeof a === 'string') throw new Error('not listening');
  return a.port;
}
