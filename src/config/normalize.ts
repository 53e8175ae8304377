/**
 * Schema-valid raw data → `GatewayConfig`: cross-field checks, defaults, units, absolute paths,
 * per-key merging of protection blocks. Pure except for `readFile` (certificates, CA bundles),
 * which the caller injects.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import path from 'node:path';
import { usableCpus } from '../cluster/cpus.js';
import { ACME_DIRECTORIES, DEFAULTS, MAX_WORKERS, type GatewayFile, type RawProtect, type RawRoute, type RawSite } from './schema.js';
import { parseDuration, parseSize } from './units.js';
import { checkCidr, checkHost, checkListen, checkOrigin, checkRoutePath, checkSecureUrl, checkUpstream, isLocalhostName, isLoopbackListen, TOKEN, type Checked } from './checks.js';
import type { PathSegments, PendingProblem } from './problems.js';
import { routeKey } from '../policy/routes.js';
import type { ReadFile } from './env.js';
import type {
  AcmeConfig,
  BansConfig,
  CertificateFileConfig,
  GatewayConfig,
  IssuerConfig,
  ListenAddress,
  ProtectConfig,
  RateLimitConfig,
  RouteConfig,
  SiteConfig,
  TimeoutsConfig,
  UpstreamTarget,
} from './types.js';

export interface NormalizeContext {
  /** Absolute path of the configuration file. */
  readonly filePath: string;
  readonly readFile: ReadFile;
  /** Dot paths whose values came from the environment: never echoed in messages. */
  readonly fromEnv: ReadonlySet<string>;
}

export interface NormalizeResult {
  readonly config: GatewayConfig;
  readonly problems: PendingProblem[];
  readonly warnings: PendingProblem[];
}

/** Algorithms jose verifies with a public key. HS* would make every holder of the secret an issuer. */
export const ALLOWED_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

const ONE_YEAR_S = 365 * 86_400;

/** Headers the gateway itself owns: an identity header with one of these names would break HTTP. */
const RESERVED_HEADERS = new Set(['host', 'authorization', 'cookie', 'set-cookie', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive', 'proxy-authorization', 'forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']);

class Collector {
  readonly problems: PendingProblem[] = [];
  readonly warnings: PendingProblem[] = [];
  constructor(readonly ctx: NormalizeContext) {}

  fail(path: PathSegments, message: string): void {
    // Checks quote what they refuse (a DNS label, a CIDR): never a value from the environment.
    this.problems.push({ path, message: this.fromEnv(path) ? message.replace(/"(?:[^"\\]|\\.)*"/g, '(a part of the value)') : message });
  }
  warn(path: PathSegments, message: string): void {
    this.warnings.push({ path, message });
  }
  /** The value in quotes for a message, unless it came from the environment (may be a secret). */
  show(path: PathSegments, value: string): string {
    return this.fromEnv(path) ? 'the value' : JSON.stringify(value);
  }
  take<T>(path: PathSegments, r: Checked<T>, fallback: T): T {
    if (r.ok) return r.value;
    this.fail(path, r.message);
    return fallback;
  }
  fromEnv(path: PathSegments): boolean {
    return this.ctx.fromEnv.has(path.join('.'));
  }
  /**
   * A secret written into the file itself: it ends up in version control, in backups and in every
   * copy of the file. Warned about (never refused: a throwaway local setup may do it), by path only.
   */
  literalSecret(path: PathSegments, value: string | null | undefined): void {
    if (value === undefined || value === null || this.fromEnv(path)) return;
    this.warn(path, 'is a secret written into the file: take it from the environment ("${NAME}") or a Docker secret file (NAME_FILE)');
  }

  duration(path: PathSegments, text: string): number {
    try {
      return parseDuration(text);
    } catch (err) {
      this.fail(path, (err as Error).message.replace(/ ".*"/, ''));
      return 0;
    }
  }
  /**
   * A duration that becomes a Node timer. Node runs a delay over 2^31-1 ms (~24.8 days) as 1 ms
   * (with a warning), so a legal `25d` or `1y` would fire at once: a 504 for every request, or no
   * shutdown grace. `zero: 'off'` where the documentation gives `0s` a meaning; else 0 is refused
   * too (a 0 ms headers deadline answers 408 to everything; Node's 0 keep-alive is no limit).
   */
  timer(path: PathSegments, text: string, zero: 'off' | 'refuse'): number {
    const before = this.problems.length;
    const ms = this.duration(path, text);
    if (this.problems.length > before) return ms;
    if (ms > MAX_TIMER_MS) this.fail(path, 'must be at most 24d (a longer timer fires at once in Node)');
    else if (ms === 0 && zero === 'refuse') this.fail(path, 'must be longer than 0');
    return ms;
  }
  size(path: PathSegments, text: string): number {
    try {
      return parseSize(text);
    } catch (err) {
      this.fail(path, (err as Error).message.replace(/ ".*"/, ''));
      return 0;
    }
  }
  resolve(p: string): string {
    return path.resolve(path.dirname(this.ctx.filePath), p);
  }
  /** Resolved path of a file that must be readable now; its content, or null after a problem. */
  readable(at: PathSegments, p: string): { file: string; text: string | null } {
    const file = this.resolve(p);
    try {
      return { file, text: this.ctx.readFile(file) };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === undefined ? '' : ` (${code})`;
      if (!this.fromEnv(at)) this.fail(at, `cannot read ${file}${why}`);
      // A value from the environment may be the secret itself rather than its file's name.
      else if (p.includes('-----BEGIN')) this.fail(at, 'the value from the environment is a PEM, not a file name: write it to a file and name that file');
      else this.fail(at, `cannot read the file the value from the environment names${why}`);
      return { file, text: null };
    }
  }
}

/**
 * Whether listeners on the two hosts (same port) would take the same address. `::` takes every
 * address of both families (Linux's dual-stack default), `0.0.0.0` every IPv4 one; `localhost`
 * is whichever loopback it resolves to, so it meets both `127.0.0.1` and `::1`. Other names are
 * compared as written (their addresses are not looked up here).
 */
function hostsOverlap(a: string, b: string): boolean {
  const addrs = (h: string): string[] => (h === 'localhost' ? ['127.0.0.1', '::1'] : [h]);
  const isV4 = (h: string): boolean => /^\d+\.\d+\.\d+\.\d+$/.test(h);
  return addrs(a).some((x) => addrs(b).some((y) => x === y || x === '::' || y === '::' || (x === '0.0.0.0' && isV4(y)) || (y === '0.0.0.0' && isV4(x))));
}

/** The longest delay a Node timer honours (2^31-1 ms); the configuration allows up to 24d. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** The largest `limits.request_buffer`: held in memory for every request uploading at once. */
const MAX_REQUEST_BUFFER = 64 * 1024 * 1024;

function requestBuffer(c: Collector, text: string): number {
  const before = c.problems.length;
  const bytes = c.size(['limits', 'request_buffer'], text);
  if (c.problems.length === before && bytes > MAX_REQUEST_BUFFER) c.fail(['limits', 'request_buffer'], 'must be at most 64mb (it is held in memory for each upload at once)');
  return bytes;
}

/** The smallest `limits.max_header_size`: below it a browser's ordinary request is refused. */
const MIN_HEADER_SIZE = 1024;

/** The largest `log.buffer`: what a crash can lose stays small. */
const MAX_LOG_BUFFER = 1024 * 1024;

/** Not a timer (the ACME policy waits in steps), but 0 would renew only once the certificate expired. */
function renewBefore(c: Collector, text: string): number {
  const before = c.problems.length;
  const ms = c.duration(['tls', 'acme', 'renew_before'], text);
  if (c.problems.length === before && ms === 0) c.fail(['tls', 'acme', 'renew_before'], 'must be longer than 0');
  return ms;
}

function headerSize(c: Collector, text: string): number {
  const before = c.problems.length;
  const bytes = c.size(['limits', 'max_header_size'], text);
  // Node reads 0 as "its default" (16 KiB), and a few hundred bytes refuse every browser request.
  if (c.problems.length === before && bytes < MIN_HEADER_SIZE) c.fail(['limits', 'max_header_size'], 'must be at least 1kb');
  return bytes;
}

function logBuffer(c: Collector, text: string): number {
  const bytes = c.size(['log', 'buffer'], text);
  if (bytes > MAX_LOG_BUFFER) c.fail(['log', 'buffer'], 'must be at most 1mb (a crash loses what the buffer holds)');
  return bytes;
}

const FALLBACK_ADDR: ListenAddress = { host: '0.0.0.0', port: 0 };
const FALLBACK_UPSTREAM: UpstreamTarget = { origin: 'http://invalid', protocol: 'http:' };

function upstreams(c: Collector, at: PathSegments, raw: string | string[]): UpstreamTarget[] {
  const list = typeof raw === 'string' ? [raw] : raw;
  const seen = new Set<string>();
  return list.map((u, i) => {
    const p = typeof raw === 'string' ? at : [...at, i];
    const t = c.take(p, checkUpstream(u), FALLBACK_UPSTREAM);
    if (t !== FALLBACK_UPSTREAM) {
      if (seen.has(t.origin)) c.fail(p, 'is listed twice');
      seen.add(t.origin);
    }
    return t;
  });
}

// ---------- protection blocks ----------

type RawHeaders = NonNullable<RawProtect['headers']>;
type RawCookies = NonNullable<RawProtect['cookies']>;
type RawCsrf = NonNullable<RawProtect['csrf']>;
type RawRate = NonNullable<RawProtect['rate_limit']>;
type RawBans = NonNullable<RawProtect['bans']>;

interface MergedRaw {
  headers: RawHeaders;
  cookies: RawCookies;
  csrf: RawCsrf;
  rate_limit: RawRate | null;
  bans: RawBans | null;
}

const TOP_DEFAULTS: MergedRaw = {
  headers: { ...DEFAULTS.headers },
  cookies: { ...DEFAULTS.cookies, http_only_except: [] },
  csrf: { ...DEFAULTS.csrf, trusted_origins: [] },
  rate_limit: null,
  bans: null,
};

/** Most specific wins per key; `null` turns rate_limit/bans off, an object turns them on. */
function mergeRaw(parent: MergedRaw, child: RawProtect): MergedRaw {
  const onOff = <T extends object>(inherited: T | null, own: T | null | undefined, defaults: T): T | null => {
    if (own === undefined) return inherited;
    if (own === null) return null;
    return { ...(inherited ?? defaults), ...own };
  };
  return {
    headers: { ...parent.headers, ...child.headers },
    cookies: { ...parent.cookies, ...child.cookies },
    csrf: { ...parent.csrf, ...child.csrf },
    rate_limit: onOff<RawRate>(parent.rate_limit, child.rate_limit, DEFAULTS.rate_limit),
    bans: onOff<RawBans>(parent.bans, child.bans, DEFAULTS.bans),
  };
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

function csp(value: RawHeaders['content_security_policy']): Checked<string | null> {
  if (value === null || value === undefined) return { ok: true, value: null };
  if (typeof value === 'string') {
    // A newline here would be header injection.
    if (CONTROL.test(value)) return { ok: false, message: 'must not contain control characters' };
    return { ok: true, value };
  }
  const parts: string[] = [];
  for (const [name, sources] of Object.entries(value)) {
    if (!/^[a-z][a-z0-9-]*$/.test(name)) return { ok: false, message: `invalid directive name ${JSON.stringify(name)} (lower-case letters, digits, -)` };
    const list = typeof sources === 'string' ? [sources] : sources;
    for (const s of list) {
      // `;` and `,` would start a new directive or a new policy (CSP3 §2.2).
      if (CONTROL.test(s) || s.includes(';') || s.includes(',')) return { ok: false, message: `directive ${name}: sources must not contain ";", "," or control characters` };
    }
    parts.push([name, ...list].join(' ').trim());
  }
  return { ok: true, value: parts.join('; ') };
}

/** Checks one level's own blocks where they are written, so problems point at the right line. */
function checkProtectLevel(c: Collector, at: PathSegments, own: RawProtect, merged: MergedRaw): void {
  if (own.headers?.content_security_policy !== undefined) {
    c.take([...at, 'headers', 'content_security_policy'], csp(own.headers.content_security_policy), null);
  }
  own.cookies?.http_only_except?.forEach((name, i) => {
    if (!TOKEN.test(name)) c.fail([...at, 'cookies', 'http_only_except', i], 'is not a valid cookie name');
  });
  if (own.cookies !== undefined && merged.cookies.same_site === 'None' && merged.cookies.secure !== true) {
    // Browsers reject SameSite=None cookies without Secure (RFC 6265bis §5.6).
    c.fail([...at, 'cookies', own.cookies.same_site !== undefined ? 'same_site' : 'secure'], 'same_site: None requires secure: true');
  }
  own.csrf?.trusted_origins?.forEach((o, i) => c.take([...at, 'csrf', 'trusted_origins', i], checkOrigin(o), ''));
  if (own.rate_limit) {
    if (own.rate_limit.window !== undefined) {
      const ms = c.duration([...at, 'rate_limit', 'window'], own.rate_limit.window);
      if (ms === 0) c.fail([...at, 'rate_limit', 'window'], 'must be longer than 0');
    }
  }
  if (own.bans) {
    for (const k of ['window', 'duration'] as const) {
      const v = own.bans[k];
      if (v !== undefined && c.duration([...at, 'bans', k], v) === 0) c.fail([...at, 'bans', k], 'must be longer than 0');
    }
  }
}

function toProtect(m: MergedRaw): ProtectConfig {
  const d = (text: string): number => {
    try {
      return parseDuration(text);
    } catch {
      return 0; // already reported where it was written
    }
  };
  const cspValue = csp(m.headers.content_security_policy);
  let rateLimit: RateLimitConfig | null = null;
  if (m.rate_limit !== null) {
    const r = { ...DEFAULTS.rate_limit, ...m.rate_limit };
    const key = r.key === 'ip' ? { type: 'ip' as const } : r.key === 'user' ? { type: 'user' as const } : { type: 'header' as const, header: r.key.slice('header:'.length).toLowerCase() };
    rateLimit = { max: r.max, window: d(r.window), key };
  }
  let bans: BansConfig | null = null;
  if (m.bans !== null) {
    const b = { ...DEFAULTS.bans, ...m.bans };
    bans = { authFailures: b.auth_failures, window: d(b.window), duration: d(b.duration) };
  }
  const h = { ...DEFAULTS.headers, ...m.headers };
  const ck = { ...DEFAULTS.cookies, ...m.cookies };
  const cs = { ...DEFAULTS.csrf, ...m.csrf };
  return {
    headers: {
      contentSecurityPolicy: cspValue.ok ? cspValue.value : null,
      cspReportOnly: h.csp_report_only,
      frameOptions: h.frame_options,
      referrerPolicy: h.referrer_policy,
      upstream: h.upstream,
    },
    cookies: { secure: ck.secure, httpOnly: ck.http_only, httpOnlyExcept: [...new Set(ck.http_only_except)], sameSite: ck.same_site },
    csrf: {
      enabled: cs.enabled,
      trustedOrigins: [...new Set(cs.trusted_origins.map((o) => { const r = checkOrigin(o); return r.ok ? r.value : o; }))],
    },
    rateLimit,
    bans,
  };
}

function pickProtect(raw: RawProtect): RawProtect {
  const out: { -readonly [K in keyof RawProtect]: RawProtect[K] } = {};
  if (raw.headers !== undefined) out.headers = raw.headers;
  if (raw.cookies !== undefined) out.cookies = raw.cookies;
  if (raw.csrf !== undefined) out.csrf = raw.csrf;
  if (raw.rate_limit !== undefined) out.rate_limit = raw.rate_limit;
  if (raw.bans !== undefined) out.bans = raw.bans;
  return out;
}

// ---------- certificates ----------

interface Sans {
  dns: string[];
  ip: string[];
}

function parseSans(cert: X509Certificate): Sans {
  const out: Sans = { dns: [], ip: [] };
  for (const entry of (cert.subjectAltName ?? '').split(', ')) {
    if (entry.startsWith('DNS:')) out.dns.push(entry.slice(4).toLowerCase());
    else if (entry.startsWith('IP Address:')) {
      const r = checkHost(entry.slice('IP Address:'.length));
      if (r.ok) out.ip.push(r.value.host);
    }
  }
  return out;
}

/** RFC 6125 §6.4.3: a wildcard SAN covers exactly one left-most label. */
export function sanCovers(sans: Sans, host: string): boolean {
  if (sans.ip.includes(host) || sans.dns.includes(host)) return true;
  if (host.startsWith('*.')) return false; // a wildcard host needs the same wildcard SAN (checked above)
  const dot = host.indexOf('.');
  return dot > 0 && sans.dns.includes(`*${host.slice(dot)}`);
}

// ---------- main ----------

export function normalize(raw: GatewayFile, ctx: NormalizeContext): NormalizeResult {
  const c = new Collector(ctx);

  // listen
  const listenRaw = raw.listen ?? {};
  const https = c.take(['listen', 'https'], checkListen(listenRaw.https ?? DEFAULTS.listen.https), FALLBACK_ADDR);
  const httpText = listenRaw.http === undefined ? DEFAULTS.listen.http : listenRaw.http;
  const http = httpText === null ? null : c.take(['listen', 'http'], checkListen(httpText), FALLBACK_ADDR);
  const adminText = listenRaw.admin === undefined ? DEFAULTS.listen.admin : listenRaw.admin;
  const admin = adminText === null ? null : c.take(['listen', 'admin'], checkListen(adminText), FALLBACK_ADDR);
  // Two listeners on one address: `validate` would pass and `start` die on EADDRINUSE.
  const bound: [string, ListenAddress][] = [['https', https]];
  for (const [name, addr] of [['http', http], ['admin', admin]] as const) {
    if (addr === null || addr.port === 0) continue;
    const clash = bound.find(([, other]) => other.port === addr.port && hostsOverlap(other.host, addr.host));
    if (clash !== undefined) c.fail(['listen', name], `uses the address of listen.${clash[0]} (port ${addr.port}): each listener needs its own port`);
    bound.push([name, addr]);
  }
  const metricsToken = raw.admin?.metrics_token ?? null;
  c.literalSecret(['admin', 'metrics_token'], raw.admin?.metrics_token);
  if (admin !== null && !isLoopbackListen(admin) && metricsToken === null) {
    c.warn(['listen', 'admin'], 'the admin listener is not bound to a loopback address and admin.metrics_token is not set: anyone who can reach it can read /metrics');
  }

  // tls
  const tlsRaw = raw.tls ?? {};
  const hstsRaw = { ...DEFAULTS.tls.hsts, ...tlsRaw.hsts };
  const hstsMaxAge = Math.floor(c.duration(['tls', 'hsts', 'max_age'], hstsRaw.max_age) / 1000);
  if (hstsRaw.preload && (hstsMaxAge < ONE_YEAR_S || !hstsRaw.include_subdomains)) {
    // https://hstspreload.org/#submission-requirements
    c.fail(['tls', 'hsts', 'preload'], 'preload requires max_age of at least 1y and include_subdomains: true');
  }
  if (hstsMaxAge === 0) c.warn(['tls', 'hsts', 'max_age'], 'max_age 0 disables HSTS: browsers may be downgraded to plain HTTP');

  const certificates: CertificateFileConfig[] = [];
  const sans: Sans[] = [];
  (tlsRaw.certificates ?? []).forEach((entry, i) => {
    const at = ['tls', 'certificates', i];
    const cert = c.readable([...at, 'cert'], entry.cert);
    const key = c.readable([...at, 'key'], entry.key);
    certificates.push({ cert: cert.file, key: key.file });
    let x509: X509Certificate | null = null;
    if (cert.text !== null) {
      try {
        x509 = new X509Certificate(cert.text);
      } catch {
        c.fail([...at, 'cert'], `${cert.file} is not a PEM certificate`);
      }
    }
    if (x509 !== null) {
      const s = parseSans(x509);
      if (s.dns.length === 0 && s.ip.length === 0) c.fail([...at, 'cert'], 'the certificate has no subjectAltName: clients ignore the common name (RFC 6125), so it could never be chosen');
      sans.push(s);
    }
    if (key.text !== null) {
      try {
        const k = createPrivateKey(key.text);
        if (x509 !== null && !x509.checkPrivateKey(k)) c.fail([...at, 'key'], 'the key does not match the certificate');
      } catch {
        c.fail([...at, 'key'], `${key.file} is not a PEM private key (or it is encrypted)`);
      }
    }
  });

  let acme: AcmeConfig | null = null;
  if (tlsRaw.acme) {
    const a = tlsRaw.acme;
    const directoryText = a.directory ?? DEFAULTS.tls.acme.directory;
    const directory = ACME_DIRECTORIES[directoryText] ?? c.take(['tls', 'acme', 'directory'], checkSecureUrl(directoryText), directoryText);
    const challenge = a.challenge ?? DEFAULTS.tls.acme.challenge;
    if (challenge === 'http-01' && http === null) {
      c.fail(['tls', 'acme', 'challenge'], 'http-01 needs the plain HTTP listener (listen.http is null); use tls-alpn-01 or enable listen.http');
    }
    if (!/^[^@\s]+@[^@\s]+$/.test(a.email)) c.fail(['tls', 'acme', 'email'], 'must be an e-mail address');
    const ca = a.ca_bundle ? c.readable(['tls', 'acme', 'ca_bundle'], a.ca_bundle) : null;
    c.literalSecret(['tls', 'acme', 'eab', 'hmac_key'], a.eab?.hmac_key);
    acme = {
      email: a.email,
      directory,
      challenge,
      keyType: a.key_type ?? DEFAULTS.tls.acme.key_type,
      caBundle: ca?.file ?? null,
      caBundlePem: ca?.text ?? null,
      eab: a.eab ? { kid: a.eab.kid, hmacKey: a.eab.hmac_key } : null,
      renewBefore: a.renew_before ? renewBefore(c, a.renew_before) : null,
    };
  }

  // trusted proxies
  const trustedProxies: string[] = [];
  (raw.trusted_proxies ?? []).forEach((entry, i) => {
    const cidr = c.take(['trusted_proxies', i], checkCidr(entry), null);
    if (cidr === null) return;
    if (cidr === '0.0.0.0/0' || cidr === '::/0') {
      c.warn(['trusted_proxies', i], `${cidr} trusts every client to set X-Forwarded-For: client addresses (rate limits, bans, logs) can be forged`);
    }
    if (!trustedProxies.includes(cidr)) trustedProxies.push(cidr);
  });

  // limits and timeouts
  const lim = { ...DEFAULTS.limits, ...raw.limits };
  const limits = {
    maxBodySize: c.size(['limits', 'max_body_size'], lim.max_body_size),
    requestBuffer: requestBuffer(c, lim.request_buffer),
    maxHeaderSize: headerSize(c, lim.max_header_size),
    headersTimeout: c.timer(['limits', 'headers_timeout'], lim.headers_timeout, 'refuse'),
    requestTimeout: c.timer(['limits', 'request_timeout'], lim.request_timeout, 'refuse'),
  };
  const to = { ...DEFAULTS.timeouts, ...raw.timeouts };
  const timeouts: TimeoutsConfig = {
    connect: c.timer(['timeouts', 'connect'], to.connect, 'off'),
    response: c.timer(['timeouts', 'response'], to.response, 'off'),
    idle: c.timer(['timeouts', 'idle'], to.idle, 'refuse'),
  };

  // auth
  const authRaw = raw.auth ?? {};
  const issuers: IssuerConfig[] = [];
  const seenIssuers = new Map<string, number>();
  (authRaw.issuers ?? []).forEach((iss, i) => {
    const at = ['auth', 'issuers', i];
    c.take([...at, 'issuer'], checkSecureUrl(iss.issuer), '');
    const prev = seenIssuers.get(iss.issuer);
    if (prev !== undefined) c.fail([...at, 'issuer'], `issuer is already configured (auth.issuers.${prev})`);
    seenIssuers.set(iss.issuer, i);
    const algorithms: string[] = [];
    iss.algorithms.forEach((alg, j) => {
      const p = [...at, 'algorithms', j];
      if (alg.toLowerCase() === 'none') c.fail(p, '"none" is refused: it accepts unsigned tokens that anyone can forge');
      else if (/^HS\d+$/i.test(alg)) c.fail(p, `${c.show(p, alg)} is refused: HMAC algorithms use a shared secret, so anyone who can verify can also mint tokens (and they invite key confusion attacks)`);
      else if (!(ALLOWED_ALGORITHMS as readonly string[]).includes(alg)) c.fail(p, `unsupported algorithm ${c.show(p, alg)}; allowed: ${ALLOWED_ALGORITHMS.join(', ')}`);
      else if (!algorithms.includes(alg)) algorithms.push(alg);
    });
    const rolesClaim = iss.roles_claim ?? DEFAULTS.auth.roles_claim;
    if (!/^[^.\s]+(\.[^.\s]+)*$/.test(rolesClaim)) c.fail([...at, 'roles_claim'], 'must be a dot path like realm_access.roles');
    const intro = iss.introspection;
    c.literalSecret([...at, 'introspection', 'client_secret'], intro?.client_secret);
    const issuerCa = iss.ca_bundle ? c.readable([...at, 'ca_bundle'], iss.ca_bundle) : null;
    issuers.push({
      issuer: iss.issuer,
      audiences: [...new Set(iss.audiences)],
      algorithms,
      jwksUri: iss.jwks_uri ? c.take([...at, 'jwks_uri'], checkSecureUrl(iss.jwks_uri), null) : null,
      rolesClaim,
      clockSkew: c.duration([...at, 'clock_skew'], iss.clock_skew ?? DEFAULTS.auth.clock_skew),
      caBundle: issuerCa?.file ?? null,
      caBundlePem: issuerCa?.text ?? null,
      introspection: intro
        ? {
            endpoint: intro.endpoint ? c.take([...at, 'introspection', 'endpoint'], checkSecureUrl(intro.endpoint), null) : null,
            clientId: intro.client_id,
            clientSecret: intro.client_secret,
            cache: c.duration([...at, 'introspection', 'cache'], intro.cache ?? DEFAULTS.auth.introspection_cache),
          }
        : null,
    });
  });
  const identityHeaders = { ...DEFAULTS.auth.identity_headers, ...authRaw.identity_headers };
  const seenHeaders = new Set<string>();
  for (const k of ['user', 'email', 'roles', 'issuer'] as const) {
    const p = ['auth', 'identity_headers', k];
    const name = identityHeaders[k];
    if (!TOKEN.test(name)) c.fail(p, 'is not a valid header name');
    else if (RESERVED_HEADERS.has(name.toLowerCase())) c.fail(p, `${name} is reserved and cannot carry identity`);
    else if (seenHeaders.has(name.toLowerCase())) c.fail(p, 'is the same header as another identity header');
    seenHeaders.add(name.toLowerCase());
  }
  const realm = authRaw.realm ?? DEFAULTS.auth.realm;
  // The realm is a quoted-string in WWW-Authenticate (RFC 9110 §11.6.1).
  if (CONTROL.test(realm) || /["\\]/.test(realm)) c.fail(['auth', 'realm'], 'must not contain quotes, backslashes or control characters');

  // protection, top level
  const topOwn = pickProtect(raw);
  const topMerged = mergeRaw(TOP_DEFAULTS, topOwn);
  checkProtectLevel(c, [], topOwn, topMerged);

  // sites
  const sites: SiteConfig[] = [];
  const hostOwner = new Map<string, { site: string; index: number }>();
  const siteIds = new Map<string, number>();
  const routeIds = new Map<string, string>();
  const allHosts: { host: string; ip: boolean; wildcard: boolean; path: PathSegments }[] = [];
  let unauthenticatedWarned = false;
  raw.sites.forEach((site: RawSite, si) => {
    const at = ['sites', si];
    const hosts: string[] = [];
    site.hosts.forEach((h, hi) => {
      const p = [...at, 'hosts', hi];
      const r = checkHost(h);
      if (!r.ok) {
        c.fail(p, r.message);
        return;
      }
      if (hosts.includes(r.value.host)) {
        c.fail(p, `host ${c.show(p, r.value.host)} is listed twice`);
        return;
      }
      hosts.push(r.value.host);
      allHosts.push({ ...r.value, path: p });
    });
    const id = site.id ?? hosts[0] ?? `site${si}`;
    const idPath = site.id !== undefined ? [...at, 'id'] : [...at, 'hosts', 0];
    const prevSite = siteIds.get(id);
    // A defaulted id collides exactly when its first host is taken; that host problem says it all.
    const hostTaken = site.id === undefined && hosts[0] !== undefined && hostOwner.has(hosts[0]);
    if (prevSite !== undefined && !hostTaken) c.fail(idPath, `site id ${c.show(idPath, id)} is already used by sites.${prevSite}`);
    siteIds.set(id, si);
    hosts.forEach((h, hi) => {
      const owner = hostOwner.get(h);
      if (owner !== undefined) c.fail([...at, 'hosts', hi], `host ${c.show([...at, 'hosts', hi], h)} already belongs to site "${owner.site}" (sites.${owner.index})`);
      else hostOwner.set(h, { site: id, index: si });
    });
    const upstream = upstreams(c, [...at, 'upstream'], site.upstream);
    const siteBody = site.max_body_size !== undefined ? c.size([...at, 'max_body_size'], site.max_body_size) : limits.maxBodySize;
    const siteOwn = pickProtect(site);
    const siteMerged = mergeRaw(topMerged, siteOwn);
    checkProtectLevel(c, at, siteOwn, siteMerged);

    const rawRoutes: RawRoute[] = site.routes ?? [{ path: '/' }];
    const routes: RouteConfig[] = [];
    const seenMatch = new Map<string, number>();
    rawRoutes.forEach((route, ri) => {
      const rat = site.routes === undefined ? at : [...at, 'routes', ri];
      const routeId = route.id ?? `${id}:${ri}`;
      const ridPath = route.id !== undefined ? [...rat, 'id'] : rat;
      const prevRoute = routeIds.get(routeId);
      // Defaulted route ids of a duplicate site id collide too: already reported at the site.
      if (prevRoute !== undefined && (route.id !== undefined || prevSite === undefined)) c.fail(ridPath, `route id ${c.show(ridPath, routeId)} is already used by ${prevRoute}`);
      routeIds.set(routeId, rat.join('.'));
      const routePath = c.take(site.routes === undefined ? at : [...rat, 'path'], checkRoutePath(route.path), route.path);
      let methods: string[] | null = null;
      if (route.methods !== undefined) {
        methods = [];
        for (const [mi, m] of route.methods.entries()) {
          const upper = m.toUpperCase();
          if (!TOKEN.test(upper)) c.fail([...rat, 'methods', mi], 'is not a valid HTTP method');
          else if (!methods.includes(upper)) methods.push(upper);
        }
        // RFC 9110 §9.3.2: HEAD is GET without the body; a route that allows GET allows HEAD.
        if (methods.includes('GET') && !methods.includes('HEAD')) methods.push('HEAD');
      }
      const matchKey = `${routeKey(routePath) ?? routePath} ${methods === null ? '*' : [...methods].sort().join(',')}`;
      const prevMatch = seenMatch.get(matchKey);
      if (prevMatch !== undefined) c.fail([...rat, 'path'], `same path and methods as sites.${si}.routes.${prevMatch}: one of them could never match (paths match whatever their case and a trailing /)`);
      seenMatch.set(matchKey, ri);
      const roles = [...new Set(route.roles ?? [])];
      const access = route.access ?? 'authenticated';
      if (roles.length > 0 && access !== 'authenticated') {
        c.fail([...rat, 'roles'], `roles require an authenticated user: they contradict access: ${access}`);
      }
      if (access === 'authenticated' && issuers.length === 0 && !unauthenticatedWarned) {
        unauthenticatedWarned = true;
        c.warn(rat, 'this route requires authentication but auth.issuers is empty: every request to it will get 401');
      }
      const rto = route.timeouts ?? {};
      const own = pickProtect(route);
      const merged = mergeRaw(siteMerged, own);
      checkProtectLevel(c, rat, own, merged);
      routes.push({
        id: routeId,
        path: routePath,
        methods,
        access,
        roles,
        upstream: route.upstream !== undefined ? upstreams(c, [...rat, 'upstream'], route.upstream) : upstream,
        maxBodySize: route.max_body_size !== undefined ? c.size([...rat, 'max_body_size'], route.max_body_size) : siteBody,
        timeouts: {
          connect: timeouts.connect,
          response: rto.response !== undefined ? c.timer([...rat, 'timeouts', 'response'], rto.response, 'off') : timeouts.response,
          idle: timeouts.idle,
        },
        protect: toProtect(merged),
      });
    });
    sites.push({ id, hosts, upstream, routes, protect: toProtect(siteMerged) });
  });

  // Which hosts need certificates from ACME (or the development CA)?
  const uncovered = allHosts.filter((h) => !sans.some((s) => sanCovers(s, h.host)));
  if (acme !== null) {
    for (const h of uncovered) {
      if (h.ip) c.fail(h.path, 'no tls.certificates entry covers this IP address, and ACME cannot issue certificates for IP addresses here');
      else if (isLocalhostName(h.host)) c.fail(h.path, 'no tls.certificates entry covers this name, and no public CA issues certificates for localhost');
      else if (h.wildcard && acme.challenge === 'http-01') c.fail(h.path, 'wildcard certificates cannot be validated with http-01 (RFC 8555 §7.1.3); bring a certificate for it');
    }
  } else if ((tlsRaw.certificates ?? []).length === 0) {
    c.warn(raw.tls === undefined ? [] : ['tls'], 'neither tls.certificates nor tls.acme is configured: certificates come from a local development CA that browsers do not trust (for development only)');
  } else {
    for (const h of uncovered) {
      c.warn(h.path, 'no tls.certificates entry covers this host and tls.acme is off: it gets a development CA certificate (for development only)');
    }
  }

  const config: GatewayConfig = {
    source: ctx.filePath,
    listen: { https, http, admin, publicHttpsPort: listenRaw.public_https_port ?? https.port },
    tls: {
      minVersion: tlsRaw.min_version ?? 'TLSv1.2',
      hsts: { maxAge: hstsMaxAge, includeSubdomains: hstsRaw.include_subdomains, preload: hstsRaw.preload },
      storage: c.resolve(tlsRaw.storage ?? DEFAULTS.tls.storage),
      certificates,
      acme,
    },
    trustedProxies,
    log: {
      level: raw.log?.level ?? 'info',
      file: raw.log?.file ? c.resolve(raw.log.file) : null,
      securityFile: raw.log?.security_file ? c.resolve(raw.log.security_file) : null,
      buffer: logBuffer(c, raw.log?.buffer ?? '0b'),
    } as GatewayConfig['log'],
    limits,
    timeouts,
    shutdownGrace: c.timer(['shutdown_grace'], raw.shutdown_grace ?? DEFAULTS.shutdown_grace, 'off'),
    workers: raw.workers === 'auto' ? Math.min(usableCpus(), MAX_WORKERS) : raw.workers ?? 1,
    auth: { issuers, identityHeaders, forwardToken: authRaw.forward_token ?? DEFAULTS.auth.forward_token, realm },
    sites,
    admin: { metricsToken },
    protect: toProtect(topMerged),
  };
  return { config, problems: c.problems, warnings: c.warnings };
}
