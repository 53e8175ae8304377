/**
 * `portcullis audit`'s verdicts: what was observed of a live deployment (probe.ts) → one finding
 * per practice. Pure, so that every verdict is tested without a network.
 *
 * The bar is the README's promises, read as a client sees them: TLS 1.2+ only with a trusted,
 * unexpired certificate; HTTP redirected to HTTPS; HSTS; no Server / X-Powered-By; nosniff,
 * framing and CSP headers; cookies Secure; error answers that leak nothing; TRACE refused; and
 * protected paths that refuse a missing or forged token. It holds any server to that bar, not only
 * Portcullis: a failed check names what was seen.
 */

export type Verdict = 'pass' | 'warn' | 'fail';

export interface Finding {
  readonly check: string;
  readonly verdict: Verdict;
  readonly detail: string;
}

/** One HTTP exchange as seen by the client; `error` when there was no answer. */
export type Exchange =
  | { readonly status: number; readonly headers: Readonly<Record<string, string | readonly string[] | undefined>>; readonly body: string }
  | { readonly error: string };

export interface TlsObservation {
  /** The handshake's error (a refused or unreachable server), else null. */
  readonly error: string | null;
  readonly protocol: string | null;
  /** Whether the chain is trusted and names the host (Node's `authorized`). */
  readonly authorized: boolean;
  readonly authorizationError: string | null;
  readonly validFrom: Date | null;
  readonly validTo: Date | null;
}

/** A handshake offering only an old protocol version: accepted, refused, or not testable here. */
export type LegacyHandshake = { readonly outcome: 'accepted'; readonly protocol: string } | { readonly outcome: 'refused'; readonly reason: string } | { readonly outcome: 'untested'; readonly reason: string };

export interface Observations {
  readonly url: URL;
  readonly now: Date;
  readonly tls: TlsObservation;
  readonly legacy: Readonly<Record<'TLSv1' | 'TLSv1.1', LegacyHandshake>>;
  /** GET of the audited URL. */
  readonly page: Exchange;
  /** GET of a path that exists nowhere. */
  readonly missing: Exchange;
  /** GET of a path with a malformed percent-encoding. */
  readonly malformed: Exchange;
  readonly trace: Exchange;
  /** GET of the plain-HTTP URL; null when the audit was told not to try. */
  readonly http: Exchange | null;
  readonly protectedPaths: readonly { readonly path: string; readonly anonymous: Exchange; readonly forged: Exchange }[];
}

/**
 * Automated renewal (this gateway, Caddy, certbot) starts when a third of a certificate's lifetime
 * is left: 30 days of Let's Encrypt's 90. Less than that left means renewal is failing. Without a
 * start date, the bar is this many days.
 */
export const EXPIRY_WARN_DAYS = 14;
/** HSTS shorter than this (180 days) protects little between visits. */
export const HSTS_MIN_SECONDS = 15_552_000;

/** Lines of an answer that give away internals: stack frames, interpreter tracebacks, paths. */
const LEAKS: readonly [RegExp, string][] = [
  [/^\s+at .+:\d+:\d+\)?$/m, 'a JavaScript stack frame'],
  [/Traceback \(most recent call last\)/, 'a Python traceback'],
  [/\bat [\w$.]+\([\w$]+\.java:\d+\)/, 'a Java stack frame'],
  [/\b(?:ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH)\b/, 'a socket error code'],
  [/(?:^|[\s"'(])\/(?:usr|home|var|opt|srv|app)\/[\w./-]+\.(?:js|ts|py|rb|php|java|go)\b/m, 'a server file path'],
  [/node_modules[/\\]/, 'a node_modules path'],
  [/<address>[^<]*(?:Apache|nginx)[^<]*<\/address>|<center>nginx\/\d/i, "a web server's version banner"],
  [/Werkzeug Debugger|Django Version:|Whoops, looks like something went wrong/i, "a framework's debug page"],
];

function header(e: Exchange, name: string): string | undefined {
  if ('error' in e) return undefined;
  const v = e.headers[name];
  if (v === undefined) return undefined;
  return typeof v === 'string' ? v : v.join(', ');
}

function headerList(e: Exchange, name: string): readonly string[] {
  if ('error' in e) return [];
  const v = e.headers[name];
  if (v === undefined) return [];
  return typeof v === 'string' ? [v] : v;
}

const answered = (e: Exchange): e is Exclude<Exchange, { error: string }> => !('error' in e);

function checkTls(o: Observations): Finding {
  const { tls } = o;
  if (tls.error !== null) return { check: 'tls', verdict: 'fail', detail: `no TLS handshake: ${tls.error}` };
  if (!tls.authorized) return { check: 'tls', verdict: 'fail', detail: `the certificate is not trusted for ${o.url.hostname}: ${tls.authorizationError ?? 'unknown reason'}` };
  if (tls.protocol !== 'TLSv1.2' && tls.protocol !== 'TLSv1.3') return { check: 'tls', verdict: 'fail', detail: `negotiated ${tls.protocol ?? 'an unknown protocol'}, below TLS 1.2` };
  return { check: 'tls', verdict: 'pass', detail: `${tls.protocol}, certificate trusted for ${o.url.hostname}` };
}

function checkExpiry(o: Observations): Finding {
  const end = o.tls.validTo;
  if (o.tls.error !== null || end === null) return { check: 'certificate-expiry', verdict: 'fail', detail: 'no certificate was seen' };
  const days = Math.floor((end.getTime() - o.now.getTime()) / 86_400_000);
  const until = end.toISOString().slice(0, 10);
  if (days < 0) return { check: 'certificate-expiry', verdict: 'fail', detail: `expired on ${until}` };
  const start = o.tls.validFrom;
  const renewBy = start === null ? end.getTime() - EXPIRY_WARN_DAYS * 86_400_000 : end.getTime() - (end.getTime() - start.getTime()) / 3;
  if (o.now.getTime() > renewBy) return { check: 'certificate-expiry', verdict: 'warn', detail: `expires on ${until}, in ${days} days: it should have been renewed by now` };
  return { check: 'certificate-expiry', verdict: 'pass', detail: `valid until ${until} (${days} days)` };
}

function checkLegacyTls(o: Observations): Finding {
  const accepted = Object.entries(o.legacy).filter(([, h]) => h.outcome === 'accepted').map(([v]) => v);
  if (accepted.length > 0) return { check: 'legacy-tls', verdict: 'fail', detail: `accepts ${accepted.join(' and ')} (deprecated by RFC 8996)` };
  const untested = Object.entries(o.legacy).filter(([, h]) => h.outcome === 'untested');
  if (untested.length > 0) return { check: 'legacy-tls', verdict: 'warn', detail: `could not offer ${untested.map(([v, h]) => `${v} (${(h as { reason: string }).reason})`).join(', ')} from this machine` };
  return { check: 'legacy-tls', verdict: 'pass', detail: 'TLS 1.0 and 1.1 refused' };
}

function checkRedirect(o: Observations): Finding {
  const e = o.http;
  if (e === null) return { check: 'http-redirect', verdict: 'warn', detail: 'not checked (--no-http)' };
  if (!answered(e)) return { check: 'http-redirect', verdict: 'warn', detail: `no plain-HTTP answer (${e.error}): clients typing http:// get no redirect to HTTPS` };
  const location = header(e, 'location') ?? '';
  let target: URL | null = null;
  try {
    target = new URL(location);
  } catch {
    // relative or malformed: not a redirect to HTTPS
  }
  if (e.status < 300 || e.status > 399 || target === null || target.protocol !== 'https:') {
    return { check: 'http-redirect', verdict: 'fail', detail: `plain HTTP answered ${e.status}${location ? ` to ${location}` : ''}, not a redirect to https://` };
  }
  if (target.hostname !== o.url.hostname) return { check: 'http-redirect', verdict: 'fail', detail: `plain HTTP redirects to another host: ${location}` };
  if (e.status !== 301 && e.status !== 308) return { check: 'http-redirect', verdict: 'warn', detail: `redirects with ${e.status}; 301 or 308 (permanent) lets browsers remember it` };
  return { check: 'http-redirect', verdict: 'pass', detail: `${e.status} to ${location}` };
}

function checkHsts(o: Observations): Finding {
  if (!answered(o.page)) return { check: 'hsts', verdict: 'fail', detail: `no answer: ${o.page.error}` };
  const value = header(o.page, 'strict-transport-security');
  if (value === undefined) return { check: 'hsts', verdict: 'fail', detail: 'no Strict-Transport-Security header' };
  const m = /(?:^|;)\s*max-age\s*=\s*"?(\d+)"?\s*(?:;|$)/i.exec(value);
  if (!m) return { check: 'hsts', verdict: 'fail', detail: `Strict-Transport-Security without a valid max-age: ${value}` };
  const maxAge = Number(m[1]);
  if (maxAge < HSTS_MIN_SECONDS) return { check: 'hsts', verdict: 'warn', detail: `max-age=${maxAge}: shorter than 180 days` };
  return { check: 'hsts', verdict: 'pass', detail: value };
}

/** Server and X-Powered-By, on every answer seen: error answers are where they usually slip out. */
function checkBanners(o: Observations): Finding {
  const seen = new Set<string>();
  for (const e of [o.page, o.missing, o.malformed, o.trace]) {
    for (const name of ['server', 'x-powered-by', 'x-aspnet-version', 'x-runtime']) {
      const v = header(e, name);
      if (v !== undefined) seen.add(`${name}: ${v}`);
    }
  }
  if (seen.size > 0) return { check: 'server-banner', verdict: 'fail', detail: `answers name their software: ${[...seen].join('; ')}` };
  return { check: 'server-banner', verdict: 'pass', detail: 'no Server, X-Powered-By or similar header' };
}

function checkSecurityHeaders(o: Observations): Finding[] {
  if (!answered(o.page)) return [];
  const out: Finding[] = [];
  const nosniff = header(o.page, 'x-content-type-options');
  out.push(
    nosniff?.trim().toLowerCase() === 'nosniff'
      ? { check: 'nosniff', verdict: 'pass', detail: 'X-Content-Type-Options: nosniff' }
      : { check: 'nosniff', verdict: 'fail', detail: nosniff === undefined ? 'no X-Content-Type-Options header' : `X-Content-Type-Options: ${nosniff}` },
  );
  const csp = header(o.page, 'content-security-policy');
  const xfo = header(o.page, 'x-frame-options');
  const frameAncestors = csp !== undefined && /(?:^|;)\s*frame-ancestors\s/i.test(csp);
  out.push(
    frameAncestors || (xfo !== undefined && /^\s*(?:deny|sameorigin)\s*$/i.test(xfo))
      ? { check: 'framing', verdict: 'pass', detail: frameAncestors ? 'CSP frame-ancestors' : `X-Frame-Options: ${xfo}` }
      : { check: 'framing', verdict: 'fail', detail: 'neither X-Frame-Options (DENY or SAMEORIGIN) nor CSP frame-ancestors: the pages can be framed (clickjacking)' },
  );
  out.push(csp !== undefined ? { check: 'csp', verdict: 'pass', detail: `Content-Security-Policy: ${csp}` } : { check: 'csp', verdict: 'warn', detail: 'no Content-Security-Policy header' });
  const referrer = header(o.page, 'referrer-policy');
  out.push(referrer !== undefined ? { check: 'referrer-policy', verdict: 'pass', detail: `Referrer-Policy: ${referrer}` } : { check: 'referrer-policy', verdict: 'warn', detail: 'no Referrer-Policy header' });
  return out;
}

/** Every cookie set on the answers seen: Secure is a must over HTTPS; HttpOnly and SameSite are advised. */
function checkCookies(o: Observations): Finding {
  const problems: string[] = [];
  const advice: string[] = [];
  let count = 0;
  for (const e of [o.page, o.missing]) {
    for (const cookie of headerList(e, 'set-cookie')) {
      count++;
      const [pair = '', ...attrs] = cookie.split(';');
      const name = pair.split('=')[0]!.trim();
      const has = (a: string): boolean => attrs.some((x) => x.trim().toLowerCase().split('=')[0] === a);
      if (!has('secure')) problems.push(`${name} without Secure`);
      if (!has('httponly')) advice.push(`${name} without HttpOnly`);
      if (!has('samesite')) advice.push(`${name} without SameSite`);
    }
  }
  if (count === 0) return { check: 'cookies', verdict: 'pass', detail: 'no cookie set on the answers seen' };
  if (problems.length > 0) return { check: 'cookies', verdict: 'fail', detail: [...problems, ...advice].join('; ') };
  if (advice.length > 0) return { check: 'cookies', verdict: 'warn', detail: advice.join('; ') };
  return { check: 'cookies', verdict: 'pass', detail: `${count} cookie${count === 1 ? '' : 's'}, each Secure, HttpOnly and SameSite` };
}

function checkErrorLeaks(o: Observations): Finding {
  const leaks: string[] = [];
  for (const [what, e] of [['missing path', o.missing], ['malformed path', o.malformed], ['TRACE', o.trace]] as const) {
    if (!answered(e)) continue;
    for (const [re, name] of LEAKS) if (re.test(e.body)) leaks.push(`${what} (${e.status}): ${name}`);
  }
  if (leaks.length > 0) return { check: 'error-pages', verdict: 'fail', detail: `error answers leak internals: ${leaks.join('; ')}` };
  const status = (e: Exchange): string => (answered(e) ? String(e.status) : e.error);
  return { check: 'error-pages', verdict: 'pass', detail: `missing path ${status(o.missing)}, malformed path ${status(o.malformed)}: nothing internal in their bodies` };
}

function checkTrace(o: Observations): Finding {
  const e = o.trace;
  if (!answered(e)) return { check: 'trace', verdict: 'pass', detail: `TRACE not answered (${e.error})` };
  if (e.status >= 200 && e.status < 300) return { check: 'trace', verdict: 'fail', detail: `TRACE answered ${e.status}${/^TRACE /m.test(e.body) ? ', echoing the request (cross-site tracing)' : ''}` };
  return { check: 'trace', verdict: 'pass', detail: `TRACE refused with ${e.status}` };
}

function checkProtected(o: Observations): Finding[] {
  return o.protectedPaths.map(({ path, anonymous, forged }) => {
    // A redirect (to a login page, as oauth2-proxy answers browsers) serves nothing by itself: it
    // warns below, with where it leads, rather than failing.
    const letsIn = (e: Exchange): boolean => answered(e) && e.status < 300;
    const bad: string[] = [];
    if (letsIn(anonymous)) bad.push(`without a token: ${(anonymous as { status: number }).status}`);
    if (letsIn(forged)) bad.push(`with a forged token (alg none): ${(forged as { status: number }).status}`);
    if (bad.length > 0) return { check: `protected ${path}`, verdict: 'fail', detail: `not refused ${bad.join(', ')}` };
    const status = (e: Exchange): string => (answered(e) ? `${e.status}${e.status >= 300 && e.status < 400 ? ` to ${header(e, 'location') ?? '(no Location)'}` : ''}` : `no answer (${e.error})`);
    const unauthorized = (e: Exchange): boolean => answered(e) && (e.status === 401 || e.status === 403);
    if (!unauthorized(anonymous) || !unauthorized(forged)) {
      return { check: `protected ${path}`, verdict: 'warn', detail: `refused, but not with 401/403: without a token ${status(anonymous)}, forged token ${status(forged)}` };
    }
    return { check: `protected ${path}`, verdict: 'pass', detail: `without a token ${status(anonymous)}, forged token ${status(forged)}` };
  });
}

/** Every finding, in a fixed order: transport first, then what the answers show. */
export function judge(o: Observations): Finding[] {
  return [
    checkTls(o),
    checkExpiry(o),
    checkLegacyTls(o),
    checkRedirect(o),
    checkHsts(o),
    checkBanners(o),
    ...checkSecurityHeaders(o),
    checkCookies(o),
    checkErrorLeaks(o),
    checkTrace(o),
    ...checkProtected(o),
  ];
}

export function formatFindings(findings: readonly Finding[]): string {
  const width = Math.max(...findings.map((f) => f.check.length));
  const lines = findings.map((f) => `${f.verdict.toUpperCase().padEnd(4)}  ${f.check.padEnd(width)}  ${f.detail}`);
  const count = (v: Verdict): number => findings.filter((f) => f.verdict === v).length;
  const warnings = count('warn');
  lines.push('', `${count('fail')} failed, ${warnings} ${warnings === 1 ? 'warning' : 'warnings'}, ${count('pass')} passed`);
  return `${lines.join('\n')}\n`;
}
