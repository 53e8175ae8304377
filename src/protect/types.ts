/**
 * Per-route protection rules, as the config engineer resolves them (YAML snake_case → camelCase,
 * most specific level wins per key, durations in milliseconds). Everything in `protect/` takes
 * these plain objects; nothing here reads YAML.
 */

/** CSP directives as a map: `{ 'default-src': "'self'", 'img-src': ["'self'", 'data:'] }`. */
export type CspDirectives = Readonly<Record<string, string | readonly string[]>>;

export interface HeadersRules {
  /** `null`: the gateway sends no CSP (the app may send its own). A string is a whole policy. */
  readonly contentSecurityPolicy: string | CspDirectives | null;
  /** Send the policy as `Content-Security-Policy-Report-Only` instead. */
  readonly cspReportOnly: boolean;
  /** `null`: no `X-Frame-Options` and no automatic `frame-ancestors`. */
  readonly frameOptions: 'DENY' | 'SAMEORIGIN' | null;
  /** One token or a comma-separated fallback list (W3C Referrer Policy §4.1), e.g. `strict-origin-when-cross-origin`. */
  readonly referrerPolicy: string;
  /** `keep`: a header the app sets itself wins. `override`: the gateway's value wins. */
  readonly upstream: 'keep' | 'override';
}

export interface CookieRules {
  /** Add `Secure` (only over HTTPS). */
  readonly secure: boolean;
  /** Add `HttpOnly` unless the cookie name is in `httpOnlyExcept`. */
  readonly httpOnly: boolean;
  /** Cookie names (case-sensitive, RFC 6265 §5.3) that script must be able to read, e.g. `csrftoken`. */
  readonly httpOnlyExcept: readonly string[];
  /** Added when the app set no SameSite; `null`: add none. */
  readonly sameSite: 'Lax' | 'Strict' | 'None' | null;
}

export interface CsrfRules {
  readonly enabled: boolean;
  /** Origins (`scheme://host[:port]`) allowed to send cookie-bearing unsafe requests. */
  readonly trustedOrigins: readonly string[];
}

/** `ip` | `user` | `header:NAME` (the config engineer turns `header:NAME` into `{ header: NAME }`). */
export type RateLimitKeySpec = 'ip' | 'user' | { readonly header: string };

export interface RateLimitRules {
  /** Requests allowed per window. */
  readonly max: number;
  /** Milliseconds. */
  readonly windowMs: number;
  readonly key: RateLimitKeySpec;
}

export interface BanRules {
  /** Number of 401s within `windowMs` that triggers a ban. */
  readonly authFailures: number;
  /** Milliseconds. */
  readonly windowMs: number;
  /** Milliseconds a ban lasts. */
  readonly durationMs: number;
}

/** The resolved protection block for one route. */
export interface ProtectRules {
  readonly headers: HeadersRules;
  readonly cookies: CookieRules;
  readonly csrf: CsrfRules;
  readonly rateLimit: RateLimitRules | null;
  readonly bans: BanRules | null;
}
