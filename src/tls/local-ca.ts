/**
 * A local development CA, like Caddy's `tls internal`: used when the configuration has neither
 * certificate files nor ACME, so the gateway still speaks HTTPS. Browsers only trust it after the
 * user installs the root (`rootPath`) — this is for development only, never for production.
 *
 * Layout: `<storage>/local-ca/root.{key,crt}` (created once, reused across restarts; ECDSA P-256,
 * ~10 years) and `<storage>/local/leaf.{key,crt}` (one leaf for all site hosts, 7 days, re-issued
 * when less than a third of its lifetime is left or when the host set changes). Every write is
 * atomic; keys are mode 0600. A file that is unreadable, corrupt, or does not match its partner is
 * reported in `warnings` and regenerated: the gateway must start, and a dev CA is cheap to replace.
 * A reload asks for a new leaf's writes to wait (`write: false`) until it is accepted: a reload
 * refused for another reason must leave the disk as the running gateway uses it.
 *
 * Certificates are built with @peculiar/x509 over WebCrypto (no hand-written ASN.1).
 */
import { X509Certificate, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { GatewayError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

const crypto = webcrypto;
type CryptoKey = webcrypto.CryptoKey;
const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;

const DAY_MS = 86_400_000;
/** Root lifetime: ~10 years, so a root the user trusted once keeps working. */
export const LOCAL_ROOT_LIFETIME_MS = 3650 * DAY_MS;
/** Leaf lifetime: short, like Caddy's internal issuer, since renewal is automatic and free. */
export const LOCAL_LEAF_LIFETIME_MS = 7 * DAY_MS;
/** Backdating for clocks that are slightly behind ours. */
const BACKDATE_MS = 5 * 60_000;

/** When a leaf is renewed: a third of its life left (at start, on reload, and while running). */
export function localRenewalAt(notBefore: Date, notAfter: Date): number {
  return notAfter.getTime() - (notAfter.getTime() - notBefore.getTime()) / 3;
}

export interface LocalCertificate {
  /** The leaf certificate. The chain is empty: the root signs the leaf directly, and clients must
   * not be sent the trust anchor (RFC 8446 §4.4.2 lets it be omitted). */
  readonly certPem: string;
  readonly keyPem: string;
  readonly rootPem: string;
  /** Where the root certificate is, to tell the user what to trust. */
  readonly rootPath: string;
  readonly notAfter: Date;
  /** True when a new leaf was issued by this call. */
  readonly issued: boolean;
  /** True when a new root was created by this call (previously trusted roots no longer work). */
  readonly rootCreated: boolean;
  /** Files found corrupt and regenerated; the caller logs them. */
  readonly warnings: readonly string[];
  /**
   * Writes the leaf this call issued, once (nothing when it issued none, or when it wrote it
   * already). Rejects with `GW_ERR_TLS_CERT`.
   */
  save(): Promise<void>;
}

export interface LocalCertificateOptions {
  /** Write a new leaf before returning (the default); false: only when `save()` is called. A new root is always written at once. */
  readonly write?: boolean;
}

interface PendingWrite {
  readonly path: string;
  readonly data: string;
  readonly mode: number;
}

/**
 * The saves still writing, per storage directory: a read waits for them, so that it never sees a
 * key already replaced next to the certificate not yet replaced (and re-issues for nothing).
 */
const saving = new Map<string, Promise<void>>();

interface Root {
  readonly cert: X509Certificate;
  readonly certPem: string;
  readonly signingKey: CryptoKey;
  readonly x509: x509.X509Certificate;
}

function randomSerial(): string {
  const bytes = randomBytes(16);
  // RFC 5280 §4.1.2.2: positive, ≤ 20 octets; clear the top bit so DER needs no sign byte.
  bytes[0] = (bytes[0] as number) & 0x7f;
  return bytes.toString('hex');
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await crypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

/** Sorted, de-duplicated, lower-case: the host set a leaf must cover exactly. */
function normalizeHosts(hosts: readonly string[]): string[] {
  return [...new Set(hosts.map((h) => h.toLowerCase().replace(/^\[(.*)\]$/, '$1')))].sort();
}

function sanNames(hosts: readonly string[]): x509.JsonGeneralName[] {
  // IP literals need an iPAddress SAN: a dNSName "127.0.0.1" never matches (RFC 6125 §6.2.1).
  return hosts.map((h) => (isIP(h) !== 0 ? { type: 'ip', value: h } : { type: 'dns', value: h }));
}

/** The host set a stored leaf covers, from its SAN, normalized like {@link normalizeHosts}. */
function leafHosts(cert: X509Certificate): string[] {
  const san = new x509.X509Certificate(cert.raw).getExtension(x509.SubjectAlternativeNameExtension);
  return normalizeHosts((san?.names.items ?? []).filter((n) => n.type === 'dns' || n.type === 'ip').map((n) => n.value));
}

type Loaded<T> = { ok: true; value: T } | { ok: false; missing: boolean; reason: string };

async function readOptional(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new GatewayError('GW_ERR_TLS_CERT', `local CA: cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

async function loadRoot(keyPath: string, certPath: string, now: number): Promise<Loaded<Root>> {
  const [keyPem, certPem] = await Promise.all([readOptional(keyPath), readOptional(certPath)]);
  if (keyPem === null && certPem === null) return { ok: false, missing: true, reason: 'no root yet' };
  if (keyPem === null || certPem === null) return { ok: false, missing: false, reason: `${keyPem === null ? keyPath : certPath} is missing` };
  try {
    const cert = new X509Certificate(certPem);
    if (!cert.ca) return { ok: false, missing: false, reason: `${certPath} is not a CA certificate` };
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return { ok: false, missing: false, reason: `${keyPath} does not match ${certPath}` };
    const parsed = new x509.X509Certificate(certPem);
    // A leaf must fit inside the root's validity (RFC 5280 §6.1.3 checks each certificate).
    if (parsed.notAfter.getTime() - now < LOCAL_LEAF_LIFETIME_MS) return { ok: false, missing: false, reason: `${certPath} is (nearly) expired` };
    const signingKey = await crypto.subtle.importKey('pkcs8', x509.PemConverter.decodeFirst(keyPem), EC_P256, false, ['sign']);
    return { ok: true, value: { cert, certPem, signingKey, x509: parsed } };
  } catch (err) {
    return { ok: false, missing: false, reason: `${certPath}/${keyPath} cannot be parsed (${(err as Error).message})` };
  }
}

async function createRoot(keyPath: string, certPath: string, now: number): Promise<{ root: Root; writes: PendingWrite[] }> {
  const keys = await crypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const id = randomBytes(4).toString('hex');
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomSerial(),
      name: `CN=Portcullis Local CA ${id} (development only), O=Portcullis`,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + LOCAL_ROOT_LIFETIME_MS),
      keys,
      signingAlgorithm: SIGNING,
      extensions: [
        // pathLen 0: this root signs leaves only (RFC 5280 §4.2.1.9).
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  const certPem = cert.toString('pem') + '\n';
  // Key first: a crash between the writes leaves a mismatch that the next start regenerates.
  const writes = [
    { path: keyPath, data: await exportKeyPem(keys.privateKey), mode: 0o600 },
    { path: certPath, data: certPem, mode: 0o644 },
  ];
  return { root: { cert: new X509Certificate(certPem), certPem, signingKey: keys.privateKey, x509: cert }, writes };
}

interface Leaf {
  readonly certPem: string;
  readonly keyPem: string;
  readonly notAfter: Date;
}

async function loadLeaf(keyPath: string, certPath: string, root: Root, hosts: readonly string[], now: number): Promise<Loaded<Leaf>> {
  const [keyPem, certPem] = await Promise.all([readOptional(keyPath), readOptional(certPath)]);
  if (keyPem === null && certPem === null) return { ok: false, missing: true, reason: 'no leaf yet' };
  if (keyPem === null || certPem === null) return { ok: false, missing: false, reason: `${keyPem === null ? keyPath : certPath} is missing` };
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return { ok: false, missing: false, reason: `${keyPath} does not match ${certPath}` };
  } catch (err) {
    return { ok: false, missing: false, reason: `${certPath}/${keyPath} cannot be parsed (${(err as Error).message})` };
  }
  // Not corrupt from here on: these are ordinary reasons to re-issue, not warnings.
  if (!cert.checkIssued(root.cert) || !cert.verify(root.cert.publicKey)) return { ok: false, missing: true, reason: 'issued by another root' };
  const parsed = new x509.X509Certificate(certPem);
  if (parsed.notBefore.getTime() > now || now > localRenewalAt(parsed.notBefore, parsed.notAfter)) return { ok: false, missing: true, reason: 'renewal due' };
  const have = leafHosts(cert);
  if (have.length !== hosts.length || have.some((h, i) => h !== hosts[i])) return { ok: false, missing: true, reason: 'host set changed' };
  return { ok: true, value: { certPem, keyPem, notAfter: parsed.notAfter } };
}

async function issueLeaf(keyPath: string, certPath: string, root: Root, hosts: readonly string[], now: number): Promise<{ leaf: Leaf; writes: PendingWrite[] }> {
  const keys = await crypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const notAfter = new Date(now + LOCAL_LEAF_LIFETIME_MS);
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: `CN=${hosts[0] ?? 'localhost'}`,
      issuer: root.x509.subject,
      // Backdated like the root, but never before the root itself.
      notBefore: new Date(Math.max(now - BACKDATE_MS, root.x509.notBefore.getTime())),
      notAfter,
      publicKey: keys.publicKey,
      signingKey: root.signingKey,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        // RFC 5280 §4.2.1.6: critical when the subject is empty-ish; we keep a CN, so non-critical.
        new x509.SubjectAlternativeNameExtension(sanNames(hosts), false),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
        await x509.AuthorityKeyIdentifierExtension.create(root.x509, false, crypto),
      ],
    },
    crypto,
  );
  const certPem = cert.toString('pem') + '\n';
  const keyPem = await exportKeyPem(keys.privateKey);
  const writes = [
    { path: keyPath, data: keyPem, mode: 0o600 },
    { path: certPath, data: certPem, mode: 0o644 },
  ];
  return { leaf: { certPem, keyPem, notAfter }, writes };
}

/** `save()` for `writes` (in order), done at most once, and waited for by the next read of `storageDir`. */
function saver(storageDir: string, writes: readonly PendingWrite[]): () => Promise<void> {
  let done: Promise<void> | null = null;
  return () => {
    if (done !== null) return done;
    if (writes.length === 0) return (done = Promise.resolve());
    const previous = saving.get(storageDir) ?? Promise.resolve();
    const run = (async () => {
      await previous.catch(() => undefined);
      try {
        for (const w of writes) await writeFileAtomic(w.path, w.data, w.mode);
      } catch (err) {
        throw new GatewayError('GW_ERR_TLS_CERT', `local CA in ${storageDir}: ${(err as Error).message}`, { cause: err });
      }
    })();
    const settled = run.catch(() => undefined);
    saving.set(storageDir, settled);
    void settled.then(() => {
      if (saving.get(storageDir) === settled) saving.delete(storageDir);
    });
    return (done = run);
  };
}

/**
 * Make sure a local-CA leaf covering exactly `hosts` exists under `storageDir` and return it.
 *
 * @param storageDir the gateway's TLS storage directory (`tls.storage`)
 * @param hosts site hosts (DNS names, `*.x` wildcards, IP literals); must not be empty
 * @param now clock in ms since epoch (injectable for tests)
 * @param options `write: false` to write only on `save()`
 * @throws GatewayError `GW_ERR_TLS_CERT` when `hosts` is empty or storage cannot be read/written
 */
export async function ensureLocalCertificate(storageDir: string, hosts: readonly string[], now: () => number = Date.now, options: LocalCertificateOptions = {}): Promise<LocalCertificate> {
  const wanted = normalizeHosts(hosts);
  if (wanted.length === 0) throw new GatewayError('GW_ERR_TLS_CERT', 'local CA: no hosts to issue a certificate for');
  const t = now();
  const warnings: string[] = [];
  const caDir = join(storageDir, 'local-ca');
  const rootKeyPath = join(caDir, 'root.key');
  const rootPath = join(caDir, 'root.crt');
  const leafDir = join(storageDir, 'local');
  const leafKeyPath = join(leafDir, 'leaf.key');
  const leafPath = join(leafDir, 'leaf.crt');

  let result: LocalCertificate;
  try {
    await saving.get(storageDir);
    let root: Root;
    let rootCreated = false;
    const writes: PendingWrite[] = [];
    const loadedRoot = await loadRoot(rootKeyPath, rootPath, t);
    if (loadedRoot.ok) {
      root = loadedRoot.value;
    } else {
      if (!loadedRoot.missing) warnings.push(`local CA root regenerated (trust the new ${rootPath}): ${loadedRoot.reason}`);
      const created = await createRoot(rootKeyPath, rootPath, t);
      root = created.root;
      // A new root is written at once, whatever `write` says: the old one is gone from the disk
      // already (missing or unusable), a root is useless to users until they can trust the file,
      // and a storage that cannot take it fails here, refusing the reload that asked for it.
      await saver(storageDir, created.writes)();
      rootCreated = true;
    }

    const loadedLeaf = await loadLeaf(leafKeyPath, leafPath, root, wanted, t);
    if (loadedLeaf.ok) {
      const { certPem, keyPem, notAfter } = loadedLeaf.value;
      result = { certPem, keyPem, notAfter, rootPem: root.certPem, rootPath, issued: false, rootCreated, warnings, save: saver(storageDir, writes) };
    } else {
      if (!loadedLeaf.missing) warnings.push(`local certificate re-issued: ${loadedLeaf.reason}`);
      const issued = await issueLeaf(leafKeyPath, leafPath, root, wanted, t);
      writes.push(...issued.writes);
      result = { ...issued.leaf, rootPem: root.certPem, rootPath, issued: true, rootCreated, warnings, save: saver(storageDir, writes) };
    }
  } catch (err) {
    if (err instanceof GatewayError) throw err;
    throw new GatewayError('GW_ERR_TLS_CERT', `local CA in ${storageDir}: ${(err as Error).message}`, { cause: err });
  }
  if (options.write !== false) await result.save();
  return result;
}
