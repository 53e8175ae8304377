/**
 * The certificate store: every certificate the HTTPS listener can present, chosen per handshake
 * by SNI (RFC 6066 §3), replaceable at runtime.
 *
 * Hot swap: all lookups go through one immutable {@link Snapshot}; `set`/`remove` build a new one
 * and replace the reference in a single assignment (pomerium's "build aside, swap one pointer").
 * A TLS session keeps the `SecureContext` it was handshaken with, so open connections are never
 * disturbed; only new handshakes see the new certificate. No listener restart is needed.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureContext, type Server as TlsServer, type TlsOptions } from 'node:tls';
import * as x509 from '@peculiar/x509';
import { GatewayError } from '../errors.js';
import { secureContextOptions, tlsServerOptions, type TlsMinVersion } from './policy.js';

export type CertificateSource = 'file' | 'acme' | 'local-ca';

export interface CertificateEntry {
  /** Caller-chosen stable id (file path, ACME site id, `local-ca`); `set` with the same id replaces. */
  readonly id: string;
  /** DNS SANs, lower-case; wildcards as `*.example.com`. */
  readonly hosts: readonly string[];
  /** IP-address SANs (clients connecting by IP send no SNI, RFC 6066 §3, so these are informational). */
  readonly ips: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly source: CertificateSource;
  readonly keyPem: string;
  /** Leaf first, then the chain. */
  readonly certPem: string;
  readonly context: SecureContext;
}

/** One row of {@link CertificateStore.list}, without key material. */
export interface CertificateSummary {
  readonly id: string;
  readonly hosts: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly source: CertificateSource;
  readonly isDefault: boolean;
}

export type CertificateChange =
  | { readonly type: 'set'; readonly id: string; readonly entry: CertificateEntry }
  | { readonly type: 'remove'; readonly id: string }
  | { readonly type: 'default'; readonly id: string | null }
  /** The TLS policy changed (a reload's `tls.min_version`): every context was rebuilt. */
  | { readonly type: 'policy'; readonly minVersion: TlsMinVersion };

export type SniCallback = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void;

export interface CertificateStoreOptions {
  readonly minVersion: TlsMinVersion;
  /** Clock for `hasCertificateFor`; ms since epoch. */
  readonly now?: () => number;
}

/** The immutable lookup structure that is swapped as a whole. */
interface Snapshot {
  /** Insertion order is load order: the first one is the implicit default. */
  readonly entries: ReadonlyMap<string, CertificateEntry>;
  /** host → entries naming it exactly, best (latest notAfter) first. */
  readonly exact: ReadonlyMap<string, readonly CertificateEntry[]>;
  /** parent domain (`example.com` for `*.example.com`) → entries, best first. */
  readonly wildcard: ReadonlyMap<string, readonly CertificateEntry[]>;
  readonly explicitDefault: string | null;
}

const EMPTY: Snapshot = { entries: new Map(), exact: new Map(), wildcard: new Map(), explicitDefault: null };

/** SNI host names as OpenSSL hands them over: any case, maybe an absolute name with a trailing dot. */
export function normalizeServername(servername: string): string {
  const lower = servername.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

function certError(message: string, cause?: unknown): GatewayError {
  return new GatewayError('GW_ERR_TLS_CERT', message, cause === undefined ? undefined : { cause });
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Parse and check a certificate + key and build its SecureContext. Pure apart from OpenSSL.
 * Throws `GW_ERR_TLS_CERT` naming `id` on bad PEM, a key that does not match, or no SAN.
 */
export function buildCertificateEntry(
  id: string,
  certPem: string,
  keyPem: string,
  source: CertificateSource,
  minVersion: TlsMinVersion,
  keyLabel = 'private key',
): CertificateEntry {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(certPem);
  } catch (err) {
    throw certError(`certificate ${id}: not a valid PEM certificate (${describe(err)})`, err);
  }
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw certError(`certificate ${id}: ${keyLabel} is not a valid unencrypted PEM key (${describe(err)})`, err);
  }
  if (!leaf.checkPrivateKey(key)) {
    throw certError(`certificate ${id}: ${keyLabel} does not match the certificate`);
  }

  const hosts: string[] = [];
  const ips: string[] = [];
  let notBefore: Date;
  let notAfter: Date;
  try {
    // SANs via @peculiar/x509's ASN.1 decoder rather than splitting Node's display string.
    const parsed = new x509.X509Certificate(leaf.raw);
    notBefore = parsed.notBefore;
    notAfter = parsed.notAfter;
    const san = parsed.getExtension(x509.SubjectAlternativeNameExtension);
    for (const name of san?.names.items ?? []) {
      if (name.type === 'dns') hosts.push(name.value.toLowerCase());
      else if (name.type === 'ip') ips.push(name.value);
    }
  } catch (err) {
    throw certError(`certificate ${id}: cannot read its extensions (${describe(err)})`, err);
  }
  // Clients ignore the subject CN when a SAN is present and browsers ignore it entirely
  // (RFC 6125 §6.4.4), so a certificate without SANs cannot be served to anyone.
  if (hosts.length === 0 && ips.length === 0) {
    throw certError(`certificate ${id}: has no DNS subjectAltName`);
  }

  let context: SecureContext;
  try {
    context = createSecureContext({ ...secureContextOptions(minVersion), key: keyPem, cert: certPem });
  } catch (err) {
    throw certError(`certificate ${id}: OpenSSL refused it (${describe(err)})`, err);
  }
  return { id, hosts: [...new Set(hosts)], ips, notBefore, notAfter, source, keyPem, certPem, context };
}

function byNotAfterDesc(a: CertificateEntry, b: CertificateEntry): number {
  return b.notAfter.getTime() - a.notAfter.getTime();
}

function buildSnapshot(entries: ReadonlyMap<string, CertificateEntry>, explicitDefault: string | null): Snapshot {
  const exact = new Map<string, CertificateEntry[]>();
  const wildcard = new Map<string, CertificateEntry[]>();
  for (const entry of entries.values()) {
    for (const host of entry.hosts) {
      if (host.startsWith('*.')) {
        push(wildcard, host.slice(2), entry);
      } else if (!host.includes('*')) {
        // Partial-label wildcards (`f*.example.com`) are allowed by RFC 6125 §6.4.3 but rejected by
        // browsers; we never match them rather than guess.
        push(exact, host, entry);
      }
    }
  }
  for (const list of exact.values()) list.sort(byNotAfterDesc);
  for (const list of wildcard.values()) list.sort(byNotAfterDesc);
  return { entries, exact, wildcard, explicitDefault };
}

function push(map: Map<string, CertificateEntry[]>, key: string, entry: CertificateEntry): void {
  const list = map.get(key);
  if (list === undefined) map.set(key, [entry]);
  else if (!list.includes(entry)) list.push(entry);
}

/** Pure selection over a snapshot; see {@link CertificateStore.select}. */
function selectIn(snapshot: Snapshot, servername: string | null | undefined): CertificateEntry | undefined {
  if (servername) {
    const name = normalizeServername(servername);
    const exact = snapshot.exact.get(name)?.[0];
    if (exact !== undefined) return exact;
    // A wildcard covers exactly one label (RFC 6125 §6.4.3): `*.example.com` matches
    // `a.example.com`, never `example.com` nor `a.b.example.com`.
    const dot = name.indexOf('.');
    if (dot > 0) {
      const wild = snapshot.wildcard.get(name.slice(dot + 1))?.[0];
      if (wild !== undefined) return wild;
    }
  }
  return defaultIn(snapshot);
}

function defaultIn(snapshot: Snapshot): CertificateEntry | undefined {
  if (snapshot.explicitDefault !== null) {
    const chosen = snapshot.entries.get(snapshot.explicitDefault);
    if (chosen !== undefined) return chosen;
  }
  return snapshot.entries.values().next().value;
}

export interface AlpnChallengeCertificate {
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * Holds the certificates, answers SNI, and holds TLS-ALPN-01 challenge certificates
 * (RFC 8737) that {@link createTlsFront} serves to `acme-tls/1` clients.
 *
 * Default certificate (served when the client sends no SNI, e.g. connects by IP, or names a host
 * no certificate covers): the one set with {@link setDefault}, else the first one loaded that is
 * still present. We serve a certificate rather than abort the handshake so that a client gets a
 * clear name-mismatch error and the HTTP layer can answer 421 (RFC 9110 §15.5.20); the cost is that
 * the default certificate's names are visible to anyone who connects.
 */
export class CertificateStore {
  #minVersion: TlsMinVersion;
  #snapshot: Snapshot = EMPTY;
  #alpn: ReadonlyMap<string, SecureContext> = new Map();
  /** The certificates behind #alpn, to build their contexts again under a new policy. */
  #alpnCerts: ReadonlyMap<string, AlpnChallengeCertificate> = new Map();
  readonly #listeners = new Set<(change: CertificateChange) => void>();
  readonly #now: () => number;

  constructor(options: CertificateStoreOptions) {
    this.#minVersion = options.minVersion;
    this.#now = options.now ?? Date.now;
  }

  /** The lowest TLS version of every context the store builds (`tls.min_version`). */
  get minVersion(): TlsMinVersion {
    return this.#minVersion;
  }

  /**
   * A reload's `tls.min_version`: every certificate's context (and every pending TLS-ALPN-01
   * challenge's) is built again with it, and a bound server's base context too ({@link bindServer}),
   * which is where OpenSSL reads the version bounds of a new connection. Handshakes already done
   * keep the version they negotiated.
   */
  setMinVersion(minVersion: TlsMinVersion): void {
    if (minVersion === this.#minVersion) return;
    const entries = new Map<string, CertificateEntry>();
    for (const [id, e] of this.#snapshot.entries) entries.set(id, buildCertificateEntry(id, e.certPem, e.keyPem, e.source, minVersion));
    const alpn = new Map<string, SecureContext>();
    for (const [host, c] of this.#alpnCerts) alpn.set(host, createSecureContext({ ...secureContextOptions(minVersion), key: c.keyPem, cert: c.certPem }));
    this.#minVersion = minVersion;
    this.#snapshot = buildSnapshot(entries, this.#snapshot.explicitDefault);
    this.#alpn = alpn;
    this.#emit({ type: 'policy', minVersion });
  }

  /** Parse, check and install a certificate (replacing one with the same id). */
  loadFromPem(id: string, certPem: string, keyPem: string, source: CertificateSource): CertificateEntry {
    const entry = buildCertificateEntry(id, certPem, keyPem, source, this.#minVersion);
    this.set(entry);
    return entry;
  }

  /**
   * Read and install certificate files (`id` = the certificate path). All files are checked before
   * any is installed, so a bad file leaves the store as it was. Errors name the file.
   */
  async loadFiles(files: readonly { readonly cert: string; readonly key: string }[]): Promise<CertificateEntry[]> {
    const built = await this.readFiles(files);
    for (const entry of built) this.set(entry);
    return built;
  }

  /** Read and check certificate files into entries, installing none (then {@link set} each). */
  async readFiles(files: readonly { readonly cert: string; readonly key: string }[], read: PemReader = readFile): Promise<CertificateEntry[]> {
    const built: CertificateEntry[] = [];
    for (const file of files) {
      const certPem = await readPem(read, file.cert, 'certificate');
      const keyPem = await readPem(read, file.key, 'private key');
      built.push(buildCertificateEntry(file.cert, certPem, keyPem, 'file', this.#minVersion, `private key ${file.key}`));
    }
    return built;
  }

  /** Install or replace (same id) an entry; new handshakes see it immediately. */
  set(entry: CertificateEntry): void {
    const entries = new Map(this.#snapshot.entries);
    entries.set(entry.id, entry); // an existing id keeps its position, so the default stays stable
    this.#snapshot = buildSnapshot(entries, this.#snapshot.explicitDefault);
    this.#emit({ type: 'set', id: entry.id, entry });
  }

  /** Remove an entry; returns false when there was none. */
  remove(id: string): boolean {
    if (!this.#snapshot.entries.has(id)) return false;
    const entries = new Map(this.#snapshot.entries);
    entries.delete(id);
    const explicitDefault = this.#snapshot.explicitDefault === id ? null : this.#snapshot.explicitDefault;
    this.#snapshot = buildSnapshot(entries, explicitDefault);
    this.#emit({ type: 'remove', id });
    return true;
  }

  /** Choose the default certificate explicitly (null: back to "first loaded"). */
  setDefault(id: string | null): void {
    if (id !== null && !this.#snapshot.entries.has(id)) {
      throw new GatewayError('GW_ERR_TLS_CERT', `certificate ${id}: cannot be the default, it is not loaded`);
    }
    this.#snapshot = buildSnapshot(this.#snapshot.entries, id);
    this.#emit({ type: 'default', id });
  }

  get(id: string): CertificateEntry | undefined {
    return this.#snapshot.entries.get(id);
  }

  /** The default entry (see class comment), or undefined when the store is empty. */
  defaultEntry(): CertificateEntry | undefined {
    return defaultIn(this.#snapshot);
  }

  /**
   * The certificate for a handshake: an exact SAN match, else a wildcard SAN covering exactly the
   * first label; among several matches the latest `notAfter` wins (a renewed certificate beats an
   * old one that is still loaded). No SNI or no match: the default.
   */
  select(servername?: string | null): CertificateEntry | undefined {
    return selectIn(this.#snapshot, servername);
  }

  /** For `tls.createServer({ SNICallback })`: bound, never throws. */
  readonly sniCallback: SniCallback = (servername, cb) => {
    const entry = this.select(servername);
    // No certificate at all: fail this handshake only (the listener stays up).
    if (entry === undefined) cb(new GatewayError('GW_ERR_TLS_CERT', 'no certificate loaded'));
    else cb(null, entry.context);
  };

  /** For metrics and logs: one row per certificate, no key material. */
  list(): CertificateSummary[] {
    const def = this.defaultEntry();
    return [...this.#snapshot.entries.values()].map((e) => ({
      id: e.id,
      hosts: e.hosts,
      notBefore: e.notBefore,
      notAfter: e.notAfter,
      source: e.source,
      isDefault: e === def,
    }));
  }

  /** host → latest notAfter among the certificates naming it (exact or wildcard SAN). */
  expiries(): Map<string, Date> {
    const out = new Map<string, Date>();
    for (const e of this.#snapshot.entries.values()) {
      for (const h of e.hosts) {
        const prev = out.get(h);
        if (prev === undefined || prev < e.notAfter) out.set(h, e.notAfter);
      }
    }
    return out;
  }

  /**
   * Readiness: is there a certificate that names `host` (not the default fallback) and is valid
   * now?
   */
  hasCertificateFor(host: string): boolean {
    const name = normalizeServername(host);
    const now = this.#now();
    const valid = (e: CertificateEntry): boolean => e.notBefore.getTime() <= now && now < e.notAfter.getTime();
    if ((this.#snapshot.exact.get(name) ?? []).some(valid)) return true;
    const dot = name.indexOf('.');
    return dot > 0 && (this.#snapshot.wildcard.get(name.slice(dot + 1)) ?? []).some(valid);
  }

  get size(): number {
    return this.#snapshot.entries.size;
  }

  /** Subscribe to changes; returns the unsubscribe function. A throwing listener is isolated. */
  onChange(listener: (change: CertificateChange) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /**
   * Options for the HTTPS listener (`https.createServer`, `http2.createSecureServer`, Fastify's
   * `https`): the policy, ALPN, the SNICallback and the current default certificate (served to
   * clients without SNI). Pair with {@link bindServer} so a later default change reaches it.
   */
  serverOptions(): TlsOptions {
    const def = this.defaultEntry();
    return {
      ...tlsServerOptions(this.#minVersion),
      SNICallback: this.sniCallback,
      ...(def === undefined ? {} : { key: def.keyPem, cert: def.certPem }),
    };
  }

  /**
   * Keep `server`'s base context equal to the default certificate and the policy. The base context
   * serves clients without SNI (Node only calls SNICallback when the client sent SNI, so without
   * this a replaced default would keep being served to IP clients), and OpenSSL takes a new
   * connection's version bounds from it, whatever context SNI then selects. The server's session
   * ticket keys are kept (Node gives a new context new random ones): tickets issued before stay
   * good, and with workers the keys the primary shares stay shared. Returns the unsubscribe function.
   */
  bindServer(server: Pick<TlsServer, 'setSecureContext' | 'getTicketKeys' | 'setTicketKeys'>): () => void {
    let current = this.defaultEntry();
    let policy = this.#minVersion;
    return this.onChange(() => {
      const def = this.defaultEntry();
      if (def === undefined || (def === current && policy === this.#minVersion)) return;
      current = def;
      policy = this.#minVersion;
      const keys = server.getTicketKeys();
      server.setSecureContext({ ...secureContextOptions(this.#minVersion), key: def.keyPem, cert: def.certPem });
      server.setTicketKeys(keys);
    });
  }

  // --- TLS-ALPN-01 (RFC 8737) -------------------------------------------------------------

  /** Serve `cert` to `acme-tls/1` clients asking for `host` until cleared. Throws GW_ERR_TLS_CERT. */
  setAlpnChallenge(host: string, cert: AlpnChallengeCertificate): void {
    const name = normalizeServername(host);
    let leaf: X509Certificate;
    try {
      leaf = new X509Certificate(cert.certPem);
      if (!leaf.checkPrivateKey(createPrivateKey(cert.keyPem))) throw new Error('private key does not match');
    } catch (err) {
      throw certError(`tls-alpn-01 challenge certificate for ${name}: ${describe(err)}`, err);
    }
    // The challenge context only needs the certificate; policy still applies (RFC 8737 §3 requires
    // TLS 1.2 or later, which the policy guarantees).
    const context = createSecureContext({ ...secureContextOptions(this.#minVersion), key: cert.keyPem, cert: cert.certPem });
    const next = new Map(this.#alpn);
    next.set(name, context);
    this.#alpn = next;
    this.#alpnCerts = new Map(this.#alpnCerts).set(name, cert);
  }

  clearAlpnChallenge(host: string): void {
    const name = normalizeServername(host);
    if (!this.#alpn.has(name)) return;
    const next = new Map(this.#alpn);
    next.delete(name);
    this.#alpn = next;
    const certs = new Map(this.#alpnCerts);
    certs.delete(name);
    this.#alpnCerts = certs;
  }

  /** The challenge context for `host`, if a TLS-ALPN-01 challenge is pending for it. */
  alpnChallengeContext(host: string): SecureContext | undefined {
    return this.#alpn.get(normalizeServername(host));
  }

  /** Fast path for the front: no pending challenge means no ClientHello needs peeking at. */
  hasAlpnChallenges(): boolean {
    return this.#alpn.size > 0;
  }

  #emit(change: CertificateChange): void {
    for (const listener of this.#listeners) {
      try {
        listener(change);
      } catch {
        // A broken observer (metrics, logging) must not undo or block a certificate swap.
      }
    }
  }
}

/** How certificate files are read: from disk, or (a cluster worker) from what the primary read. */
export type PemReader = (path: string, encoding: 'utf8') => Promise<string> | string;

async function readPem(read: PemReader, path: string, what: string): Promise<string> {
  try {
    return await read(path, 'utf8');
  } catch (err) {
    throw certError(`cannot read ${what} file ${path}: ${describe(err)}`, err);
  }
}
