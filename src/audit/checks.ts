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

import { TOKEN } from '../config/checks.js';
import { parseSetCookie } from '../protect/cookies.js';

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

/**
 * A handshake offering only an old protocol version: accepted; refused (the server said it does not
 * speak that version); untested (this machine could not offer it); or unclear (the server ended the
 * handshake otherwise, as it would for lack of a cipher both sides know, so the version may still be
 * on with a cipher this machine lacks).
 */
export type LegacyHandshake =
  | { readonly outcome: 'accepted'; readonly protocol: string }
  | { readonly outcome: 'refused' | 'untested' | 'unclear'; readonly reason: string };

/** One request to a protected path with an unsigned token (`alg` spelt as given). */
export interface ForgedAttempt {
  readonly alg: string;
  readonly answer: Exchange;
}

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
  readonly protectedPaths: readonly { readonly path: string; readonly anonymous: Exchange; readonly forged: readonly ForgedAttempt[] }[];
}

/**
 * Automated renewal (this gateway, Caddy, certbot) starts when a third of a certificate's lifetime
 * is left: 30 days of Let's Encrypt's 90. Less than that left means renewal is failing. Without a
 * start date, the bar is this many days.
 */
export const EXPIRY_WARN_DAYS = 14;
/** HSTS shorter than this (180 days) protects little between visits. */
export const HSTS_MIN_SECONDS = 15_552_000;

/**
 * What in an answer's body gives away internals: stack frames, tracebacks, server paths. Bodies
 * are read as text with HTML line breaks and spaces undone (an HTML error page renders its stack
 * with `<br>` and `&nbsp;`). A path counts only with a line number or under a server directory,
 * and never as a link's target, so that a page's own `/app/main.js` is not a leak.
 */
const LEAKS: readonly [RegExp, string][] = [
  [/\bat (?:[\w$.<>[\] ]+ )?\(?(?:(?:\/|[A-Za-z]:\\|file:\/\/)[^\s()?]*\.\w+|node:[\w/]+):\d+:\d+\)?/, 'a JavaScript stack frame'],
  [/Traceback \(most recent call last\)/, 'a Python traceback'],
  [/\bat (?:[\w$-]+(?:\.[\w$-]+)*\/)?[\w$.]+\([\w$]+\.(?:java|kt|scala|groovy):\d+\)/, 'a JVM stack frame'],
  [/\bat [\w$.`<>[\],]+\([^()\n]*\) in [^\n]*?:line \d+/, 'a .NET stack frame'],
  [/\.rb:\d+:in [`']/, 'a Ruby stack frame'],
  [/\bgoroutine \d+ \[|\.go:\d+ \+0x[0-9a-f]+/, 'a Go panic'],
  [/\.php(?::\d+|\s+on line\s+\d+)|\bPHP (?:Fatal error|Warning|Parse error):/, 'a PHP error'],
  [/\b(?:ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH)\b/, 'a socket error code'],
  [/(?:^|[\s(])\/[\w.-]+(?:\/[\w.-]+)*\.(?:js|mjs|cjs|ts|py|rb|php|java|go|kt|cs|rs):\d+/m, 'a server file path'],
  [/(?:^|[\s(]|(?<!=)["'])\/(?:usr|home|var|opt|srv|root|etc)\/[\w.-]+\//m, 'a server file path'],
  [/node_modules[/\\]/, 'a node_modules path'],
  [/<address>[^<]*(?:Apache|nginx)[^<]*<\/address>|<center>nginx\/\d/i, "a web server's version banner"],
  [/Werkzeug Debugger|Django Version:|Whoops, looks like something went wrong/i, "a framework's debug page"],
];

/**
 * An error body as the text a reader sees: an HTML page's line breaks and non-breaking spaces
 * undone, and a JSON body's escapes (a stack trace in a JSON field arrives as `\n\tat …`, a PHP
 * path as `\/var\/www\/…`).
 */
function asText(body: string): string {
  return body
    .replace(/<br\s*\/?>/gi, '\n')
    .replace(/&nbsp;|&#160;|&#xa0;/gi, ' ')
    .replace(/&#x2f;|&#47;|&sol;/gi, '/')
    .replace(/\\(?:u([0-9a-fA-F]{4})|([nrt"/\\]))/g, (_, hex: string | undefined, c: string | undefined) =>
      hex !== undefined ? String.fromCharCode(parseInt(hex, 16)) : c === 'n' ? '\n' : c === 'r' ? '\r' : c === 't' ? '\t' : c!,
    );
}

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

/** Every answer the audit saw: the plain-HTTP one and the protected paths' included. */
function everyAnswer(o: Observations): Exchange[] {
  const all = [o.page, o.missing, o.malformed, o.trace];
  if (o.http !== null) all.push(o.http);
  for (const p of o.protectedPaths) all.push(p.anonymous, ...p.forged.map((f) => f.answer));
  return all;
}

/**
 * A header's values, one per comma-separated item: Node joins a repeated header with ", " (an
 * nginx `add_header` in front of an app that sets the same header sends it twice).
 */
function items(e: Exchange, name: string): string[] {
  const v = header(e, name);
  return v === undefined ? [] : v.split(',').map((x) => x.trim()).filter((x) => x !== '');
}

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
  // A server that answers no handshake at all also "refuses" the old ones: that proves nothing.
  if (o.tls.error !== null) return { check: 'legacy-tls', verdict: 'warn', detail: 'not judged: no TLS handshake succeeded' };
  const notKnown: string[] = [];
  for (const [version, h] of Object.entries(o.legacy)) {
    if (h.outcome === 'untested') notKnown.push(`${version}: this machine could not offer it (${h.reason})`);
    if (h.outcome === 'unclear') notKnown.push(`${version}: the server ended the handshake with ${h.reason}, not a protocol_version alert, so it may accept ${version} with a cipher this machine cannot offer`);
  }
  if (notKnown.length > 0) return { check: 'legacy-tls', verdict: 'warn', detail: `not known: ${notKnown.join('; ')}` };
  return { check: 'legacy-tls', verdict: 'pass', detail: 'TLS 1.0 and 1.1 refused (protocol_version)' };
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

/**
 * A Strict-Transport-Security value as RFC 6797 §6.1 has browsers read it: `max-age` (required, digits,
 * quoted or not), `includeSubDomains` (no value); each directive at most once; other directives
 * ignored. A header breaking any of these is ignored whole (Chromium's parser does the same), so
 * the reason is returned instead of a max-age.
 */
export function parseHsts(value: string): { readonly maxAge: number } | { readonly invalid: string } {
  const seen = new Set<string>();
  let maxAge: number | null = null;
  for (const raw of value.split(';')) {
    const directive = raw.trim();
    if (directive === '') continue;
    const eq = directive.indexOf('=');
    const spelt = (eq === -1 ? directive : directive.slice(0, eq)).trim();
    if (!TOKEN.test(spelt)) return { invalid: `a malformed directive: ${directive}` };
    const name = spelt.toLowerCase();
    if (seen.has(name)) return { invalid: `${spelt} appears twice` };
    seen.add(name);
    const given = eq === -1 ? undefined : directive.slice(eq + 1).trim();
    // token or quoted-string (RFC 9110 §5.6); an unbalanced quote is neither.
    const text = given === undefined ? undefined : /^"[^"]*"$/.test(given) ? given.slice(1, -1) : TOKEN.test(given) ? given : null;
    if (text === null) return { invalid: `${spelt} has a malformed value: ${given}` };
    if (name === 'max-age') {
      if (text === undefined || !/^\d+$/.test(text)) return { invalid: `max-age is not a number of seconds: ${directive}` };
      maxAge = Number(text);
    } else if (name === 'includesubdomains' && text !== undefined) {
      return { invalid: `includeSubDomains takes no value: ${directive}` };
    }
  }
  return maxAge === null ? { invalid: 'no max-age' } : { maxAge };
}

function checkHsts(o: Observations): Finding {
  if (!answered(o.page)) return { check: 'hsts', verdict: 'fail', detail: `no answer: ${o.page.error}` };
  // Sent twice (joined with ", "): browsers honour the first (RFC 6797 §8.1).
  const value = header(o.page, 'strict-transport-security')?.split(',')[0]!.trim();
  if (value === undefined) return { check: 'hsts', verdict: 'fail', detail: 'no Strict-Transport-Security header' };
  const parsed = parseHsts(value);
  if ('invalid' in parsed) return { check: 'hsts', verdict: 'fail', detail: `Strict-Transport-Security: ${value}: ${parsed.invalid}, so browsers ignore it` };
  const maxAge = parsed.maxAge;
  if (maxAge === 0) return { check: 'hsts', verdict: 'fail', detail: 'max-age=0: browsers are told to forget HSTS' };
  if (maxAge < HSTS_MIN_SECONDS) return { check: 'hsts', verdict: 'warn', detail: `max-age=${maxAge}: shorter than 180 days` };
  return { check: 'hsts', verdict: 'pass', detail: value };
}

/**
 * Software named by a header, on every answer seen (error answers are where it usually slips out).
 * A version fails; a bare product name (`Server: cloudflare`, which a CDN's customers cannot
 * remove) warns. X-Powered-By and its kind name the app's own stack: they fail.
 */
function checkBanners(o: Observations): Finding {
  const fails = new Set<string>();
  const warns = new Set<string>();
  for (const e of everyAnswer(o)) {
    const server = header(e, 'server');
    if (server !== undefined) (/\d/.test(server) ? fails : warns).add(`server: ${server}`);
    for (const name of ['x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version', 'x-runtime', 'x-generator']) {
      const v = header(e, name);
      if (v !== undefined) fails.add(`${name}: ${v}`);
    }
  }
  if (fails.size > 0) return { check: 'server-banner', verdict: 'fail', detail: `answers name their software: ${[...fails, ...warns].join('; ')}` };
  if (warns.size > 0) return { check: 'server-banner', verdict: 'warn', detail: `answers name their server, without a version: ${[...warns].join('; ')}` };
  return { check: 'server-banner', verdict: 'pass', detail: 'no Server, X-Powered-By or similar header' };
}

/**
 * Whether a frame-ancestors source list lets any site frame the page: `*`, a bare scheme
 * (`https:`), or a host of `*` (`https://*`, `*:443`; CSP3's host-part `*` matches every host).
 * `https://*.example.com` is one site's subdomains, not anyone.
 */
function framesForAnyone(sources: readonly string[]): boolean {
  return sources.some((src) => /^[a-z][a-z0-9+.-]*:$/i.test(src) || /^(?:[a-z][a-z0-9+.-]*:\/\/)?\*(?::(?:\d+|\*))?(?:\/.*)?$/i.test(src));
}

/**
 * Whether browsers refuse to be framed by other sites under these X-Frame-Options values (HTML's
 * "check a navigation response's adherence to X-Frame-Options"): one value, `DENY` or
 * `SAMEORIGIN`; several different values, framing is refused when any is `deny`, `sameorigin` or
 * `allowall` (the header looks confused), and allowed otherwise.
 */
function xfoRefusesFraming(distinct: ReadonlySet<string>): boolean {
  if (distinct.size > 1) return distinct.has('deny') || distinct.has('sameorigin') || distinct.has('allowall');
  return distinct.has('deny') || distinct.has('sameorigin');
}

/** The Referrer-Policy values browsers know: of several, the last one known applies. */
const REFERRER_POLICIES = new Set(['no-referrer', 'no-referrer-when-downgrade', 'same-origin', 'origin', 'strict-origin', 'origin-when-cross-origin', 'strict-origin-when-cross-origin', 'unsafe-url']);

function checkSecurityHeaders(o: Observations): Finding[] {
  if (!answered(o.page)) {
    const why = `not judged: no answer (${o.page.error})`;
    return ['nosniff', 'framing', 'csp', 'referrer-policy'].map((check) => ({ check, verdict: 'warn', detail: why }));
  }
  const out: Finding[] = [];
  // Repeated (nginx and the app both set it): browsers take the first value.
  const nosniff = items(o.page, 'x-content-type-options')[0];
  out.push(
    nosniff?.toLowerCase() === 'nosniff'
      ? { check: 'nosniff', verdict: 'pass', detail: 'X-Content-Type-Options: nosniff' }
      : { check: 'nosniff', verdict: 'fail', detail: nosniff === undefined ? 'no X-Content-Type-Options header' : `X-Content-Type-Options: ${nosniff}` },
  );
  // Several CSP headers are several policies, all enforced; they arrive joined with ", ". A policy
  // without a directive (`;`) is no policy.
  const policies = items(o.page, 'content-security-policy').filter((p) => p.split(';').some((d) => d.trim() !== ''));
  const ancestors = policies
    .map((p) => p.split(';').map((d) => d.trim().split(/\s+/)).find(([name]) => name?.toLowerCase() === 'frame-ancestors'))
    .filter((d): d is string[] => d !== undefined)
    .map((d) => d.slice(1));
  if (ancestors.length > 0) {
    // With frame-ancestors present, browsers ignore X-Frame-Options: the directive alone decides.
    const closed = ancestors.find((sources) => !framesForAnyone(sources));
    out.push(
      closed !== undefined
        ? { check: 'framing', verdict: 'pass', detail: `CSP frame-ancestors ${closed.join(' ') || "(empty: 'none')"}` }
        : { check: 'framing', verdict: 'fail', detail: `CSP frame-ancestors ${ancestors[0]!.join(' ')} lets any site frame the pages (clickjacking); browsers then ignore X-Frame-Options` },
    );
  } else {
    const xfo = items(o.page, 'x-frame-options');
    const distinct = new Set(xfo.map((v) => v.toLowerCase()));
    out.push(
      xfoRefusesFraming(distinct)
        ? { check: 'framing', verdict: 'pass', detail: `X-Frame-Options: ${xfo.join(', ')}${distinct.size > 1 ? ' (conflicting values: browsers refuse framing)' : ''}` }
        : { check: 'framing', verdict: 'fail', detail: xfo.length === 0 ? 'neither X-Frame-Options (DENY or SAMEORIGIN) nor CSP frame-ancestors: the pages can be framed (clickjacking)' : `X-Frame-Options: ${header(o.page, 'x-frame-options')}: not DENY or SAMEORIGIN, so browsers ignore it` },
    );
  }
  const csp = header(o.page, 'content-security-policy');
  out.push(
    policies.length > 0
      ? { check: 'csp', verdict: 'pass', detail: `Content-Security-Policy: ${csp}` }
      : { check: 'csp', verdict: 'warn', detail: csp === undefined ? 'no Content-Security-Policy header' : 'an empty Content-Security-Policy header' },
  );
  // The last policy a browser knows is the one it applies; these two send full URLs to other sites.
  const sent = header(o.page, 'referrer-policy');
  const referrer = items(o.page, 'referrer-policy')
    .map((v) => v.toLowerCase())
    .filter((v) => REFERRER_POLICIES.has(v))
    .at(-1);
  out.push(
    referrer === undefined
      ? { check: 'referrer-policy', verdict: 'warn', detail: sent === undefined ? 'no Referrer-Policy header' : `Referrer-Policy: ${sent}: no value browsers know` }
      : referrer === 'unsafe-url' || referrer === 'no-referrer-when-downgrade'
        ? { check: 'referrer-policy', verdict: 'warn', detail: `Referrer-Policy: ${referrer} sends full URLs (paths, queries) to other sites` }
        : { check: 'referrer-policy', verdict: 'pass', detail: `Referrer-Policy: ${header(o.page, 'referrer-policy')}` },
  );
  return out;
}

/**
 * Whether a Set-Cookie line expires its cookie at once (`Max-Age` ≤ 0, or an `Expires` past): it
 * deletes a cookie and is never stored (RFC 6265bis §5.7). Max-Age wins over Expires (§5.6.2).
 */
function deletes(line: string, now: Date): boolean {
  let maxAge: number | null = null;
  let expires = NaN;
  for (const attr of line.split(';').slice(1)) {
    const eq = attr.indexOf('=');
    if (eq === -1) continue;
    const key = attr.slice(0, eq).trim().toLowerCase();
    const value = attr.slice(eq + 1).trim();
    if (key === 'max-age' && /^-?\d+$/.test(value)) maxAge = Number(value);
    else if (key === 'expires') expires = Date.parse(value);
  }
  if (maxAge !== null) return maxAge <= 0;
  return !Number.isNaN(expires) && expires <= now.getTime();
}

/** Every cookie set on the answers seen: Secure is a must over HTTPS; HttpOnly and SameSite are advised. */
function checkCookies(o: Observations): Finding {
  // The same cookie on several answers is one finding, and counted once.
  const problems = new Set<string>();
  const advice = new Set<string>();
  const names = new Set<string>();
  for (const e of everyAnswer(o)) {
    for (const line of headerList(e, 'set-cookie')) {
      // Read as the gateway reads the app's cookies; a line browsers ignore, or one that deletes a
      // cookie, stores nothing.
      const cookie = parseSetCookie(line);
      if (cookie === null || deletes(line, o.now)) continue;
      names.add(cookie.name);
      if (!cookie.secure) problems.add(`${cookie.name} without Secure`);
      if (!cookie.httpOnly) advice.add(`${cookie.name} without HttpOnly`);
      if (cookie.sameSite === null) advice.add(`${cookie.name} without SameSite`);
    }
  }
  const count = names.size;
  if (count === 0) return { check: 'cookies', verdict: 'pass', detail: 'no cookie set on the answers seen' };
  if (problems.size > 0) return { check: 'cookies', verdict: 'fail', detail: [...problems, ...advice].join('; ') };
  if (advice.size > 0) return { check: 'cookies', verdict: 'warn', detail: [...advice].join('; ') };
  return { check: 'cookies', verdict: 'pass', detail: `${count} cookie${count === 1 ? '' : 's'}, each Secure, HttpOnly and SameSite` };
}

function checkErrorLeaks(o: Observations): Finding {
  const leaks: string[] = [];
  for (const [what, e] of [['missing path', o.missing], ['malformed path', o.malformed], ['TRACE', o.trace]] as const) {
    if (!answered(e)) continue;
    const text = asText(e.body);
    for (const [re, name] of LEAKS) if (re.test(text) && !leaks.includes(`${what} (${e.status}): ${name}`)) leaks.push(`${what} (${e.status}): ${name}`);
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

/**
 * A protected path must refuse a request without a token and every unsigned (`alg: none`) one. A
 * refusal of those shows that much only: not that real tokens' signatures, issuer and audience are
 * checked (the audit holds no real token), which the pass says.
 */
function checkProtected(o: Observations): Finding[] {
  return o.protectedPaths.map(({ path, anonymous, forged }) => {
    const check = `protected ${path}`;
    const status = (e: Exchange): string => (answered(e) ? `${e.status}${e.status >= 300 && e.status < 400 ? ` to ${header(e, 'location') ?? '(no Location)'}` : ''}` : `no answer (${e.error})`);
    // A redirect (to a login page, as oauth2-proxy answers browsers) serves nothing by itself: it
    // warns below, with where it leads, rather than failing.
    const letsIn = (e: Exchange): boolean => answered(e) && e.status < 300;
    const bad: string[] = [];
    if (letsIn(anonymous)) bad.push(`without a token: ${status(anonymous)}`);
    for (const f of forged) if (letsIn(f.answer)) bad.push(`with an unsigned token (alg "${f.alg}"): ${status(f.answer)}`);
    if (bad.length > 0) return { check, verdict: 'fail', detail: `not refused ${bad.join(', ')}` };
    const all = [anonymous, ...forged.map((f) => f.answer)];
    const algs = forged.map((f) => `"${f.alg}"`).join(', ');
    const statuses = [...new Set(forged.map((f) => status(f.answer)))].join(', ');
    // No answer is not a refusal: nothing was learned.
    if (all.some((e) => !answered(e))) return { check, verdict: 'warn', detail: `not judged: without a token ${status(anonymous)}; unsigned tokens (alg ${algs}): ${statuses}` };
    const unauthorized = (e: Exchange): boolean => answered(e) && (e.status === 401 || e.status === 403);
    if (!all.every(unauthorized)) return { check, verdict: 'warn', detail: `refused, but not with 401/403: without a token ${status(anonymous)}, unsigned tokens ${statuses}` };
    return { check, verdict: 'pass', detail: `without a token ${status(anonymous)}, unsigned tokens (alg ${algs}) ${statuses}; real tokens' signature, issuer and audience checks are not tested` };
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
