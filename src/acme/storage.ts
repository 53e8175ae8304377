/**
 * On-disk state of the ACME module, under `<storageDir>/acme/<directory host>/`:
 *
 *   account.key          account private key (PEM, 0600), created once per CA and reused
 *   account.json         { directory, url } — the account URL (RFC 8555 §7.3, the JWS `kid`)
 *   <site>.key           certificate private key (PEM, 0600)
 *   <site>.crt           leaf + chain (PEM)
 *   <site>.json          { hosts, notBefore, notAfter } — checked against the certificate
 *
 * Every write is atomic (temp file in the same directory, fsync, rename) so a crash leaves either
 * the old or the new file, never half of one. The three site files are not written as one unit;
 * a crash between them leaves a key/certificate mismatch, which `loadSite` detects and reports
 * like any other corruption: the site is simply ordered again.
 */
import { createPrivateKey, X509Certificate as NodeX509 } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { directoryFolder, safeName, sameHosts } from './policy.js';
import { writeFileAtomic } from '../tls/atomic.js';


export interface StoredCert {
  readonly certPem: string;
  readonly keyPem: string;
  readonly hosts: readonly string[];
  readonly notBefore: number;
  readonly notAfter: number;
}

export type LoadResult =
  | { kind: 'ok'; cert: StoredCert }
  | { kind: 'missing' }
  | { kind: 'invalid'; file: string; reason: string }
  | { kind: 'hosts_changed'; cert: StoredCert };

/** DNS names in the certificate's subjectAltName, lower-case. */
export function certDnsNames(certPem: string): string[] {
  const cert = new x509.X509Certificate(certPem);
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  if (!san) return [];
  return san.names.items.filter((n) => n.type === 'dns').map((n) => n.value.toLowerCase());
}

/** Validity of the first (leaf) certificate in a PEM chain, epoch ms. */
export function certValidity(certPem: string): { notBefore: number; notAfter: number } {
  const leaf = new NodeX509(certPem);
  return { notBefore: Date.parse(leaf.validFrom), notAfter: Date.parse(leaf.validTo) };
}

const errMsg = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export class AcmeStorage {
  readonly dir: string;

  constructor(storageDir: string, directoryUrl: string) {
    this.dir = join(storageDir, 'acme', directoryFolder(directoryUrl));
  }

  async ensureDir(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  private sitePath(siteId: string, ext: 'crt' | 'key' | 'json'): string {
    return join(this.dir, `${safeName(siteId)}.${ext}`);
  }

  /** The account key PEM, or null when there is none (or it cannot be parsed: reported via `onInvalid`). */
  async loadAccountKey(onInvalid: (file: string, reason: string) => void): Promise<string | null> {
    const file = join(this.dir, 'account.key');
    const pem = await readOrNull(file);
    if (pem === null) return null;
    try {
      createPrivateKey(pem);
      return pem;
    } catch (err) {
      onInvalid(file, errMsg(err));
      return null;
    }
  }

  async saveAccountKey(pem: string): Promise<void> {
    await this.ensureDir();
    await writeFileAtomic(join(this.dir, 'account.key'), pem, 0o600);
  }

  /** The stored account URL for this directory, or null. */
  async loadAccountUrl(directoryUrl: string, onInvalid: (file: string, reason: string) => void): Promise<string | null> {
    const file = join(this.dir, 'account.json');
    const raw = await readOrNull(file);
    if (raw === null) return null;
    try {
      const j = JSON.parse(raw) as { directory?: unknown; url?: unknown };
      if (typeof j.url !== 'string' || !/^https?:\/\//.test(j.url)) throw new Error('no account url');
      // Same host, different directory path (e.g. two CA profiles): the URL belongs to another CA.
      if (j.directory !== directoryUrl) return null;
      return j.url;
    } catch (err) {
      onInvalid(file, errMsg(err));
      return null;
    }
  }

  async saveAccountUrl(directoryUrl: string, url: string): Promise<void> {
    await this.ensureDir();
    await writeFileAtomic(join(this.dir, 'account.json'), `${JSON.stringify({ directory: directoryUrl, url }, null, 2)}\n`, 0o600);
  }

  /** Forgets the account URL (the CA lost the account); the key stays and is registered again. */
  async clearAccountUrl(): Promise<void> {
    await fs.rm(join(this.dir, 'account.json'), { force: true });
  }

  /** Reads and cross-checks the three files of a site. Never throws for bad content. */
  async loadSite(siteId: string, hosts: readonly string[]): Promise<LoadResult> {
    const crtFile = this.sitePath(siteId, 'crt');
    const keyFile = this.sitePath(siteId, 'key');
    const metaFile = this.sitePath(siteId, 'json');
    const [certPem, keyPem, metaRaw] = await Promise.all([readOrNull(crtFile), readOrNull(keyFile), readOrNull(metaFile)]);
    if (certPem === null && keyPem === null && metaRaw === null) return { kind: 'missing' };
    if (certPem === null) return { kind: 'invalid', file: crtFile, reason: 'missing' };
    if (keyPem === null) return { kind: 'invalid', file: keyFile, reason: 'missing' };
    if (metaRaw === null) return { kind: 'invalid', file: metaFile, reason: 'missing' };

    let leaf: NodeX509;
    try {
      leaf = new NodeX509(certPem);
    } catch (err) {
      return { kind: 'invalid', file: crtFile, reason: `unparseable certificate: ${errMsg(err)}` };
    }
    let names: string[];
    try {
      names = certDnsNames(certPem);
    } catch (err) {
      return { kind: 'invalid', file: crtFile, reason: `unparseable certificate: ${errMsg(err)}` };
    }
    try {
      if (!leaf.checkPrivateKey(createPrivateKey(keyPem))) return { kind: 'invalid', file: keyFile, reason: 'key does not match certificate' };
    } catch (err) {
      return { kind: 'invalid', file: keyFile, reason: `unparseable key: ${errMsg(err)}` };
    }
    let meta: { hosts?: unknown; notAfter?: unknown };
    try {
      meta = JSON.parse(metaRaw) as typeof meta;
    } catch (err) {
      return { kind: 'invalid', file: metaFile, reason: `unparseable: ${errMsg(err)}` };
    }
    const { notBefore, notAfter } = certValidity(certPem);
    if (!Array.isArray(meta.hosts) || !meta.hosts.every((h) => typeof h === 'string') || meta.notAfter !== notAfter) {
      return { kind: 'invalid', file: metaFile, reason: 'does not describe the stored certificate' };
    }
    if (!sameHosts(meta.hosts as string[], names)) {
      return { kind: 'invalid', file: metaFile, reason: 'hosts differ from the certificate SANs' };
    }
    const cert: StoredCert = { certPem, keyPem, hosts: names, notBefore, notAfter };
    return sameHosts(names, hosts) ? { kind: 'ok', cert } : { kind: 'hosts_changed', cert };
  }

  async saveSite(siteId: string, cert: StoredCert): Promise<void> {
    await this.ensureDir();
    await writeFileAtomic(this.sitePath(siteId, 'key'), cert.keyPem, 0o600);
    await writeFileAtomic(this.sitePath(siteId, 'crt'), cert.certPem, 0o644);
    const meta = { hosts: cert.hosts, notBefore: cert.notBefore, notAfter: cert.notAfter };
    await writeFileAtomic(this.sitePath(siteId, 'json'), `${JSON.stringify(meta, null, 2)}\n`, 0o644);
  }

  /** Absolute paths of a site's files (for tests and operators). */
  siteFiles(siteId: string): { crt: string; key: string; json: string } {
    return { crt: this.sitePath(siteId, 'crt'), key: this.sitePath(siteId, 'key'), json: this.sitePath(siteId, 'json') };
  }
}

async function readOrNull(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}
