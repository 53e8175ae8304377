// Test certificates made with @peculiar/x509 (self-signed, ECDSA P-256).
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export interface TestCert {
  cert: string;
  key: string;
}

export async function makeCert(sans: { dns?: string[]; ip?: string[] }): Promise<TestCert> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const names = [...(sans.dns ?? []).map((value) => ({ type: 'dns' as const, value })), ...(sans.ip ?? []).map((value) => ({ type: 'ip' as const, value }))];
  const extensions = names.length > 0 ? [new x509.SubjectAlternativeNameExtension(names)] : [];
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=portcullis test',
    notBefore: new Date('2020-01-01T00:00:00Z'),
    notAfter: new Date('2100-01-01T00:00:00Z'),
    keys,
    signingAlgorithm: alg,
    extensions,
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  const key = x509.PemConverter.encode(pkcs8, 'PRIVATE KEY');
  return { cert: cert.toString('pem'), key };
}

/** An in-memory file system for `parseConfig`'s `readFile`. */
export function memFs(files: Record<string, string>): (p: string) => string {
  return (p: string) => {
    const v = files[p];
    if (v === undefined) throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' });
    return v;
  };
}
