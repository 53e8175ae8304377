/**
 * The validated, normalized configuration every other module consumes.
 *
 * `config/load.ts` turns YAML into this shape once: durations are milliseconds, sizes are bytes,
 * hosts are lower-case, upstreams are parsed, every default is filled in, and the whole object is
 * deep-frozen. Nothing downstream re-validates or re-defaults.
 */

/** `host:port` listener address. `host` may be an IPv4/IPv6 literal or a name. */
export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export interface ListenConfig {
  readonly https: ListenAddress;
  /** `null`: no plain-HTTP listener (no redirect, no HTTP-01). */
  readonly http: ListenAddress | null;
  /** `null`: no admin listener. */
  readonly admin: ListenAddress | null;
  /** Port written into HTTP→HTTPS redirects; defaults to `https.port`. 443 is left out of the URL. */
  readonly publicHttpsPort: number;
}

export interface HstsConfig {
  /** Seconds. 0 disables the header. */
  readonly maxAge: number;
  readonly includeSubdomains: boolean;
  readonly preload: boolean;
}

export interface CertificateFileConfig {
  /** Absolute paths (resolved against the config file's directory). */
  readonly cert: string;
  readonly key: string;
}

export type AcmeKeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-4096';

export interface AcmeConfig {
  readonly email: string;
  /** Resolved directory URL (`letsencrypt` → the production URL). */
  readonly directory: string;
  readonly challenge: 'http-01' | 'tls-alpn-01';
  readonly keyType: AcmeKeyType;
  /** Absolute path of a PEM bundle to trust for the ACME directory, or null. */
  readonly caBundle: string | null;
  /**
   * That bundle's content, read once when the configuration was loaded: what runs is what was
   * validated (a cluster worker never reads the file; a reload notices a new bundle).
   */
  readonly caBundlePem: string | null;
  readonly eab: { readonly kid: string; readonly hmacKey: string } | null;
  /** Milliseconds before `notAfter` at which to renew; null = a third of the lifetime. */
  readonly renewBefore: number | null;
}

export interface TlsConfig {
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
  readonly hsts: HstsConfig;
  /** Absolute path. */
  readonly storage: string;
  readonly certificates: readonly CertificateFileConfig[];
  readonly acme: AcmeConfig | null;
}

export interface TimeoutsConfig {
  /** All milliseconds. */
  readonly connect: number;
  /** Time from sending the request to receiving the upstream's response headers. */
  readonly response: number;
  /** Idle time on an upstream or client keep-alive connection. */
  readonly idle: number;
}

export interface UpstreamTarget {
  /** `http://host:port` or `https://host:port`, no path. */
  readonly origin: string;
  readonly protocol: 'http:' | 'https:';
}

export type Access = 'public' | 'authenticated' | 'deny';

export interface RouteConfig {
  /** Stable id for logs/metrics: `${site.id}:${index}` unless the YAML gives `id`. */
  readonly id: string;
  /** Canonical path prefix, starts with `/`. */
  readonly path: string;
  /** Upper-case methods, or null for any method. */
  readonly methods: readonly string[] | null;
  readonly access: Access;
  /** Non-empty means authenticated + any one of these roles. */
  readonly roles: readonly string[];
  /** Route override, else the site's upstream. */
  readonly upstream: readonly UpstreamTarget[];
  /** Bytes. */
  readonly maxBodySize: number;
  readonly timeouts: TimeoutsConfig;
  /** Protection settings merged top level → site → route, per key (the most specific wins). */
  readonly protect: ProtectConfig;
}

export interface SiteConfig {
  /** Stable id for logs/metrics: YAML `id`, else the first host. */
  readonly id: string;
  /** Lower-case host names, may include one leading `*.` wildcard label; IP literals as `192.0.2.1` or `[::1]` (compressed). */
  readonly hosts: readonly string[];
  readonly upstream: readonly UpstreamTarget[];
  readonly routes: readonly RouteConfig[];
  /** Top level merged with the site's blocks: applies to requests of this site that match no route. */
  readonly protect: ProtectConfig;
}

export interface LogConfig {
  readonly level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** Absolute path, or null for stdout. */
  readonly file: string | null;
  /** Absolute path of the security-event log, or null (events go to the main log). */
  readonly securityFile: string | null;
  /** Bytes of main-log lines collected before a write (also flushed every 250 ms); 0: a turn's lines written as the turn ends. */
  readonly buffer: number;
}

export interface LimitsConfig {
  /** Bytes, default for routes. */
  readonly maxBodySize: number;
  /** Bytes of a request body read before the upstream is contacted (0: none, streamed). */
  readonly requestBuffer: number;
  /** Bytes of request line + headers. */
  readonly maxHeaderSize: number;
  /** Milliseconds to receive the full request headers (slowloris). */
  readonly headersTimeout: number;
  /** Milliseconds to receive the whole request. */
  readonly requestTimeout: number;
}

export interface IntrospectionConfig {
  /** Absolute URL, or null: taken from OIDC discovery (`introspection_endpoint`). */
  readonly endpoint: string | null;
  readonly clientId: string;
  readonly clientSecret: string;
  /** Milliseconds a positive answer may be cached (never past the token's `exp`). */
  readonly cache: number;
}

export interface IssuerConfig {
  /** Compared to the token's `iss` exactly. */
  readonly issuer: string;
  readonly audiences: readonly string[];
  /** JWS algorithm allowlist, e.g. `RS256`, `ES256`; never `none`, never empty. */
  readonly algorithms: readonly string[];
  /** Absolute URL, or null: taken from OIDC discovery (`jwks_uri`). */
  readonly jwksUri: string | null;
  /** Dot path into the claims, e.g. `realm_access.roles`. */
  readonly rolesClaim: string;
  /** Milliseconds. */
  readonly clockSkew: number;
  readonly introspection: IntrospectionConfig | null;
  /** Optional PEM bundle to trust for this issuer's HTTPS endpoints (absolute path), or null. */
  readonly caBundle: string | null;
  /** That bundle's content, read when the configuration was loaded (see AcmeConfig.caBundlePem). */
  readonly caBundlePem: string | null;
}

export interface IdentityHeaders {
  /** Header names as configured (case kept for display; compared case-insensitively). */
  readonly user: string;
  readonly email: string;
  readonly roles: string;
  readonly issuer: string;
}

export interface AuthConfig {
  readonly issuers: readonly IssuerConfig[];
  readonly identityHeaders: IdentityHeaders;
  readonly forwardToken: boolean;
  /** `realm` in WWW-Authenticate. */
  readonly realm: string;
}

export interface GatewayConfig {
  /** Token validation; issuers may be empty (then only public routes can succeed). */
  readonly auth: AuthConfig;
  /** Absolute path of the file this came from (for messages and relative paths). */
  readonly source: string;
  readonly listen: ListenConfig;
  readonly tls: TlsConfig;
  /** CIDR strings (IPv4/IPv6); empty = trust nobody's X-Forwarded-*. */
  readonly trustedProxies: readonly string[];
  readonly log: LogConfig;
  readonly limits: LimitsConfig;
  readonly timeouts: TimeoutsConfig;
  /** Milliseconds to let in-flight requests finish on SIGTERM. */
  readonly shutdownGrace: number;
  /** Gateway processes (node:cluster workers); 1 = the process itself serves. `auto` is resolved at load. */
  readonly workers: number;
  readonly sites: readonly SiteConfig[];
  readonly admin: AdminConfig;
  /** The top-level protection blocks with defaults: applies to requests that match no site. */
  readonly protect: ProtectConfig;
}

export interface AdminConfig {
  /** Bearer token required on `/metrics`, or null (no token). */
  readonly metricsToken: string | null;
}

/** https://developer.mozilla.org/en-US/docs/Web/HTTP/Headers/Referrer-Policy */
export type ReferrerPolicy =
  | 'no-referrer'
  | 'no-referrer-when-downgrade'
  | 'origin'
  | 'origin-when-cross-origin'
  | 'same-origin'
  | 'strict-origin'
  | 'strict-origin-when-cross-origin'
  | 'unsafe-url';

export interface SecurityHeadersConfig {
  /** Serialized policy (`default-src 'self'; img-src 'self' data:`), or null: no CSP header. */
  readonly contentSecurityPolicy: string | null;
  /** Send `Content-Security-Policy-Report-Only` instead of enforcing. */
  readonly cspReportOnly: boolean;
  /** `X-Frame-Options`, or null: not sent. */
  readonly frameOptions: 'DENY' | 'SAMEORIGIN' | null;
  /** `Referrer-Policy`, or null: not sent. */
  readonly referrerPolicy: ReferrerPolicy | null;
  /** `keep`: a security header the upstream sets wins; `override`: the gateway's value replaces it. */
  readonly upstream: 'keep' | 'override';
}

export interface CookiesConfig {
  /** Add `Secure` to upstream `Set-Cookie`. */
  readonly secure: boolean;
  /** Add `HttpOnly`, except to the cookies named in `httpOnlyExcept` (exact, case-sensitive names). */
  readonly httpOnly: boolean;
  readonly httpOnlyExcept: readonly string[];
  /** `SameSite` to add when the upstream set none, or null: leave it alone. */
  readonly sameSite: 'Strict' | 'Lax' | 'None' | null;
}

export interface CsrfConfig {
  readonly enabled: boolean;
  /** Serialized origins (`https://app.example.com`, `https://a.example.com:8443`), lower-case. */
  readonly trustedOrigins: readonly string[];
}

export type RateLimitKey =
  | { readonly type: 'ip' }
  | { readonly type: 'user' }
  /** `header` is lower-case. */
  | { readonly type: 'header'; readonly header: string };

export interface RateLimitConfig {
  /** Requests allowed per key per window. */
  readonly max: number;
  /** Milliseconds. */
  readonly window: number;
  readonly key: RateLimitKey;
}

export interface BansConfig {
  /** Failed authentications within `window` that trigger a ban. */
  readonly authFailures: number;
  /** Milliseconds. */
  readonly window: number;
  /** Milliseconds the ban lasts. */
  readonly duration: number;
}

export interface ProtectConfig {
  readonly headers: SecurityHeadersConfig;
  readonly cookies: CookiesConfig;
  readonly csrf: CsrfConfig;
  /** null: no rate limit. */
  readonly rateLimit: RateLimitConfig | null;
  /** null: no bans. */
  readonly bans: BansConfig | null;
}
