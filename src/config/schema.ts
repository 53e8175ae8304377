/**
 * The configuration file's schema: the one source of truth for key names, types, defaults and
 * the editor hover text (`config/gateway.schema.json` is generated from it by `write-schema.ts`).
 *
 * Every object is closed (`additionalProperties: false`): a misspelt key must be an error, never a
 * silently ignored line that leaves a protection at its default. Cross-field rules that JSON Schema
 * cannot express well (listen addresses, URLs, host uniqueness, certificate files…) live in
 * `normalize.ts`.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { DURATION_PATTERN, SIZE_PATTERN } from './units.js';

export const RATE_LIMIT_KEY_PATTERN = "^(ip|user|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+)$";
export const SCHEMA_ID = 'https://portcullis.dev/schemas/gateway.schema.json';

/** Defaults, in the file's own notation (the normalizer parses them like user input). */
/** More processes than this is a typo, not a plan (each holds its own caches and upstream pools). */
export const MAX_WORKERS = 64;

export const DEFAULTS = {
  listen: { https: '0.0.0.0:8443', http: '0.0.0.0:8080', admin: '127.0.0.1:9090' },
  tls: {
    min_version: 'TLSv1.2',
    hsts: { max_age: '1y', include_subdomains: true, preload: false },
    storage: './certs',
    acme: { directory: 'letsencrypt', challenge: 'http-01', key_type: 'ec-p256' },
  },
  log: { level: 'info' },
  limits: { max_body_size: '1mb', request_buffer: '1mb', max_header_size: '16kb', headers_timeout: '10s', request_timeout: '60s' },
  timeouts: { connect: '5s', response: '60s', idle: '60s' },
  shutdown_grace: '10s',
  auth: {
    identity_headers: { user: 'X-Auth-User', email: 'X-Auth-Email', roles: 'X-Auth-Roles', issuer: 'X-Auth-Issuer' },
    forward_token: true,
    realm: 'portcullis',
    roles_claim: 'roles',
    clock_skew: '30s',
    introspection_cache: '60s',
  },
  headers: {
    content_security_policy: null,
    csp_report_only: false,
    frame_options: 'DENY',
    referrer_policy: 'strict-origin-when-cross-origin',
    upstream: 'keep',
  },
  cookies: { secure: true, http_only: true, http_only_except: [] as string[], same_site: 'Lax' },
  csrf: { enabled: true, trusted_origins: [] as string[] },
  /** Used for the keys a `rate_limit`/`bans` block leaves out when it turns the feature on. */
  rate_limit: { max: 100, window: '1m', key: 'ip' },
  bans: { auth_failures: 10, window: '5m', duration: '15m' },
} as const;

export const ACME_DIRECTORIES: Readonly<Record<string, string>> = {
  letsencrypt: 'https://acme-v02.api.letsencrypt.org/directory',
  'letsencrypt-staging': 'https://acme-staging-v02.api.letsencrypt.org/directory',
};

const Closed = { additionalProperties: false } as const;

function Duration(description: string, def?: string) {
  return Type.String({ pattern: DURATION_PATTERN, description: `${description} Duration: an integer and a unit (ms, s, m, h, d, y = 365d), e.g. 30s.`, ...(def === undefined ? {} : { default: def }) });
}
function Size(description: string, def?: string) {
  return Type.String({ pattern: SIZE_PATTERN, description: `${description} Size: an integer and a unit (b, kb, mb, gb; 1024-based), e.g. 1mb.`, ...(def === undefined ? {} : { default: def }) });
}
function Nullable<T extends TSchema>(schema: T, description: string, def?: unknown) {
  return Type.Union([schema, Type.Null()], { description, ...(def === undefined ? {} : { default: def }) });
}
const NonEmpty = (description: string) => Type.String({ minLength: 1, description });
const Upstream = (description: string) =>
  Type.Union(
    [
      NonEmpty('Upstream origin: http(s)://host[:port], no path, query or user info.'),
      Type.Array(NonEmpty('Upstream origin: http(s)://host[:port].'), { minItems: 1 }),
    ],
    { description },
  );

const Headers = Type.Partial(Type.Object(
  {
    content_security_policy: Nullable(
      Type.Union([
        NonEmpty('The whole policy as one string.'),
        Type.Record(Type.String(), Type.Union([Type.String(), Type.Array(Type.String())]), {
          description: 'Directive name → source string or list of sources.',
        }),
      ]),
      'Content-Security-Policy: a policy string, or a map of directive → string | list of strings; null: no CSP header (default).',
      null,
    ),
    csp_report_only: Type.Boolean({ description: 'Send the policy as Content-Security-Policy-Report-Only (monitor, do not enforce).', default: false }),
    frame_options: Nullable(Type.Union([Type.Literal('DENY'), Type.Literal('SAMEORIGIN')]), 'X-Frame-Options: DENY | SAMEORIGIN | null (not sent).', 'DENY'),
    referrer_policy: Nullable(
      Type.Union([
        Type.Literal('no-referrer'),
        Type.Literal('no-referrer-when-downgrade'),
        Type.Literal('origin'),
        Type.Literal('origin-when-cross-origin'),
        Type.Literal('same-origin'),
        Type.Literal('strict-origin'),
        Type.Literal('strict-origin-when-cross-origin'),
        Type.Literal('unsafe-url'),
      ]),
      'Referrer-Policy; null: not sent.',
      'strict-origin-when-cross-origin',
    ),
    upstream: Type.Union([Type.Literal('keep'), Type.Literal('override')], {
      description: 'When the upstream sets one of these headers itself: keep its value, or override it with the gateway\'s. HSTS is always the gateway\'s (see tls.hsts.max_age).',
      default: 'keep',
    }),
  },
  { ...Closed, description: 'Security response headers.' },
));

const Cookies = Type.Partial(Type.Object(
  {
    secure: Type.Boolean({ description: 'Add Secure to every Set-Cookie from the upstream.', default: true }),
    http_only: Type.Boolean({ description: 'Add HttpOnly to every Set-Cookie (except http_only_except).', default: true }),
    http_only_except: Type.Array(NonEmpty('Cookie name (exact).'), { description: 'Cookies that scripts must read (e.g. a CSRF token cookie): no HttpOnly added.', default: [] }),
    same_site: Nullable(
      Type.Union([Type.Literal('Strict'), Type.Literal('Lax'), Type.Literal('None')]),
      'SameSite added to cookies that set none: Strict | Lax | None (requires secure) | null (leave alone).',
      'Lax',
    ),
  },
  { ...Closed, description: 'Hardening of upstream Set-Cookie headers.' },
));

const Csrf = Type.Partial(Type.Object(
  {
    enabled: Type.Boolean({ description: 'Refuse cross-site state-changing requests and cookie-carrying WebSocket handshakes (Fetch Metadata / Origin checks).', default: true }),
    trusted_origins: Type.Array(NonEmpty('Origin: scheme://host[:port].'), { description: 'Other origins allowed to send state-changing requests and open WebSockets with cookies, e.g. https://app.example.com.', default: [] }),
  },
  { ...Closed, description: 'Cross-site request forgery protection.' },
));

const RateLimit = Nullable(
  Type.Partial(Type.Object(
    {
      max: Type.Integer({ minimum: 1, description: 'Requests allowed per key per window.', default: 100 }),
      window: Duration('Length of the counting window.', '1m'),
      key: Type.String({
        pattern: RATE_LIMIT_KEY_PATTERN,
        description: 'What is counted: ip (client address, after trusted_proxies), user (the authenticated subject, per issuer), or header:NAME (the header value, kept and logged only as its SHA-256: it is usually an API key).',
        default: 'ip',
      }),
    },
    Closed,
  )),
  'Request rate limit; null: off (default). Keys left out take the inherited value, else max 100, window 1m, key ip.',
  null,
);

const Bans = Nullable(
  Type.Partial(Type.Object(
    {
      auth_failures: Type.Integer({ minimum: 1, description: 'Failed authentications within window that ban the client address.', default: 10 }),
      window: Duration('Window in which failures are counted.', '5m'),
      duration: Duration('How long a ban lasts.', '15m'),
    },
    Closed,
  )),
  'Temporary bans of client addresses after repeated authentication failures; null: off (default).',
  null,
);

/** The protection blocks, allowed at top level, on a site and on a route. */
const protectionProperties = () => ({
  headers: Type.Optional(Headers),
  cookies: Type.Optional(Cookies),
  csrf: Type.Optional(Csrf),
  rate_limit: Type.Optional(RateLimit),
  bans: Type.Optional(Bans),
});

const Timeouts = (top: boolean) =>
  top
    ? Type.Object(
        {
          connect: Type.Optional(Duration('Time to open a connection to the upstream; `0s`: no deadline but the system\'s own. At most 24d.', DEFAULTS.timeouts.connect)),
          response: Type.Optional(Duration("Time from sending the request to receiving the upstream's response headers, the longest pause while its body streams, and the longest a client may read nothing of a response (then it is cut). `0s`: none of these deadlines. At most 24d.", DEFAULTS.timeouts.response)),
          idle: Type.Optional(Duration('Idle time of a keep-alive client connection; more than 0, at most 24d. Upstream connections are kept idle at most 4s (or this, when shorter), so that an app closing its idle connections (Node: after 5s) never closes one as the gateway reuses it.', DEFAULTS.timeouts.idle)),
        },
        { ...Closed, description: 'Upstream timeouts.' },
      )
    : // Connections are pooled per upstream, not per route: only the per-request timeout can differ.
      Type.Object(
        { response: Type.Optional(Duration("Time from sending the request to receiving the upstream's response headers, the longest pause while its body streams, and the longest a client may read nothing of a response (then it is cut). `0s`: none of these deadlines. At most 24d.")) },
        { ...Closed, description: 'Per-route override of timeouts.response (connect and idle are per upstream connection: top level only).' },
      );

const Route = Type.Object(
  {
    id: Type.Optional(NonEmpty('Stable id for logs and metrics; default `<site id>:<index>`. Unique.')),
    path: NonEmpty('Path prefix, canonical: starts with /, no . or .. segments, no //, no %, \\, ?, #, no * (a prefix: /admin covers /admin/panel).'),
    methods: Type.Optional(Type.Array(NonEmpty('HTTP method.'), { minItems: 1, description: 'Methods this route matches (upper-cased; GET implies HEAD); default: any.' })),
    access: Type.Optional(
      Type.Union([Type.Literal('public'), Type.Literal('authenticated'), Type.Literal('deny')], {
        description: 'public: no token needed; authenticated: a valid token (default); deny: always refused.',
        default: 'authenticated',
      }),
    ),
    roles: Type.Optional(Type.Array(NonEmpty('Role name.'), { description: 'Any one of these roles is required (implies authenticated).' })),
    upstream: Type.Optional(Upstream("Override of the site's upstream: one origin or a list.")),
    max_body_size: Type.Optional(Size('Largest request body accepted on this route.')),
    timeouts: Type.Optional(Timeouts(false)),
    ...protectionProperties(),
  },
  { ...Closed, description: 'A path prefix (and optionally methods) with its access rule.' },
);

const Site = Type.Object(
  {
    id: Type.Optional(NonEmpty('Stable id for logs and metrics; default: the first host. Unique.')),
    hosts: Type.Array(NonEmpty('Host name (lower-cased), optionally with one leading *. label, or an IP literal.'), {
      minItems: 1,
      description: 'Host names this site answers for; a host belongs to one site only.',
    }),
    upstream: Upstream('Where requests are forwarded: one origin or a list.'),
    max_body_size: Type.Optional(Size('Default largest request body for this site\'s routes.')),
    routes: Type.Optional(Type.Array(Route, { minItems: 1, description: 'Routes, matched by longest path prefix; default: one authenticated route `{ path: / }`.' })),
    ...protectionProperties(),
  },
  { ...Closed, description: 'A virtual host: its names, upstream and routes.' },
);

const Introspection = Nullable(
  Type.Object(
    {
      endpoint: Type.Optional(Nullable(NonEmpty('URL.'), 'RFC 7662 introspection endpoint; default: from OIDC discovery.', null)),
      client_id: NonEmpty('Client id the gateway authenticates with.'),
      client_secret: NonEmpty('Client secret; use ${ENV} or ${ENV} with ENV_FILE, never a literal.'),
      cache: Type.Optional(Duration('How long a positive answer is cached (never past the token exp).', DEFAULTS.auth.introspection_cache)),
    },
    Closed,
  ),
  'Validate opaque (non-JWT) tokens with RFC 7662 introspection; null: off. An answer is accepted only if its `aud` names one of `audiences` and, where it gives a token type (`token_type`, `token_use`, `typ`), that type is a bearer access token (not a refresh, ID or DPoP-bound token).',
  null,
);

const Issuer = Type.Object(
  {
    issuer: NonEmpty('Issuer URL; must equal the token\'s iss claim exactly.'),
    audiences: Type.Array(NonEmpty('Audience.'), { minItems: 1, description: 'Accepted aud values (at least one must match).' }),
    algorithms: Type.Array(NonEmpty('JWS algorithm.'), {
      minItems: 1,
      description: 'Allowed JWS algorithms: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA (never none or HS*).',
    }),
    jwks_uri: Type.Optional(Nullable(NonEmpty('URL.'), 'JWKS URL; default: jwks_uri from OIDC discovery.', null)),
    roles_claim: Type.Optional(NonEmpty('Dot path of the roles claim, e.g. realm_access.roles (default: roles).')),
    clock_skew: Type.Optional(Duration('Tolerance for exp and nbf (iat is only checked to be a number: a token the IdP dated in the future is still bounded by its exp).', DEFAULTS.auth.clock_skew)),
    ca_bundle: Type.Optional(Nullable(NonEmpty('Path.'), 'PEM file of CAs to trust for this issuer\'s HTTPS endpoints; null: system CAs.', null)),
    introspection: Type.Optional(Introspection),
  },
  { ...Closed, description: 'A trusted token issuer.' },
);

const Acme = Type.Object(
  {
    email: NonEmpty('Contact e-mail for the ACME account.'),
    directory: Type.Optional(
      NonEmpty('letsencrypt | letsencrypt-staging | https URL of any RFC 8555 directory (default: letsencrypt).'),
    ),
    challenge: Type.Optional(
      Type.Union([Type.Literal('http-01'), Type.Literal('tls-alpn-01')], { description: 'Challenge type (http-01 needs the http listener reachable on port 80).', default: 'http-01' }),
    ),
    key_type: Type.Optional(
      Type.Union([Type.Literal('ec-p256'), Type.Literal('ec-p384'), Type.Literal('rsa-2048'), Type.Literal('rsa-4096')], { description: 'Key type of the certificates.', default: 'ec-p256' }),
    ),
    ca_bundle: Type.Optional(Nullable(NonEmpty('Path.'), 'PEM file to trust for a private ACME directory; null: system CAs.', null)),
    eab: Type.Optional(
      Nullable(
        Type.Object({ kid: NonEmpty('Key id.'), hmac_key: NonEmpty('Base64url HMAC key; use ${ENV}.') }, Closed),
        'External account binding (RFC 8555 §7.3.4); null: none.',
        null,
      ),
    ),
    renew_before: Type.Optional(Nullable(Duration('Renew this long before expiry (more than 0).'), 'Renew this long before expiry (more than 0); null: a third of the lifetime.', null)),
  },
  { ...Closed, description: 'Obtain certificates automatically (RFC 8555) for hosts no tls.certificates entry covers.' },
);

export const GatewayFileSchema = Type.Object(
  {
    listen: Type.Optional(
      Type.Object(
        {
          https: Type.Optional(Type.String({ minLength: 1, description: 'TLS listener host:port ([::1]:8443 for IPv6).', default: DEFAULTS.listen.https })),
          http: Type.Optional(Nullable(NonEmpty('host:port.'), 'Plain HTTP listener (HTTPS redirect, ACME HTTP-01); null: off.', DEFAULTS.listen.http)),
          admin: Type.Optional(Nullable(NonEmpty('host:port.'), 'Admin listener (/healthz /readyz /metrics); null: off.', DEFAULTS.listen.admin)),
          public_https_port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, description: 'Port written into HTTPS redirects; default: the https listener\'s port.' })),
        },
        { ...Closed, description: 'Listener addresses.' },
      ),
    ),
    tls: Type.Optional(
      Type.Object(
        {
          min_version: Type.Optional(Type.Union([Type.Literal('TLSv1.2'), Type.Literal('TLSv1.3')], { description: 'Lowest TLS version accepted.', default: 'TLSv1.2' })),
          hsts: Type.Optional(
            Type.Object(
              {
                max_age: Type.Optional(Duration('Strict-Transport-Security max-age (0: the gateway sends none, and an app\'s own passes through). When set, the gateway\'s header replaces one the app sends, whatever headers.upstream says: an app\'s max-age=0 would make browsers forget the host\'s HSTS.', '1y')),
                include_subdomains: Type.Optional(Type.Boolean({ description: 'Add includeSubDomains.', default: true })),
                preload: Type.Optional(Type.Boolean({ description: 'Add preload (needs max_age ≥ 1y and include_subdomains).', default: false })),
              },
              { ...Closed, description: 'HTTP Strict Transport Security (RFC 6797).' },
            ),
          ),
          storage: Type.Optional(NonEmpty('Directory for generated keys and certificates, relative to this file (default ./certs).')),
          certificates: Type.Optional(
            Type.Array(
              Type.Object({ cert: NonEmpty('PEM certificate chain file.'), key: NonEmpty('PEM private key file.') }, { ...Closed, description: 'A certificate you bring.' }),
              { description: 'Certificates you bring, chosen by SNI against their SANs. Paths relative to this file.', default: [] },
            ),
          ),
          acme: Type.Optional(Nullable(Acme, 'Automatic certificates; null: off.', null)),
        },
        { ...Closed, description: 'TLS termination.' },
      ),
    ),
    trusted_proxies: Type.Optional(
      Type.Array(NonEmpty('IPv4/IPv6 address or CIDR.'), { description: 'Proxies allowed to set X-Forwarded-*/Forwarded; empty: trust nobody. An X-Forwarded-For hop written with a port (`ip:port`, `[ipv6]:port`) counts as its address.', default: [] }),
    ),
    log: Type.Optional(
      Type.Object(
        {
          level: Type.Optional(
            Type.Union(
              ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
              { description: 'Log level.', default: 'info' },
            ),
          ),
          file: Type.Optional(Nullable(NonEmpty('Path.'), 'Log file (relative to this file); null: stdout.', null)),
          security_file: Type.Optional(Nullable(NonEmpty('Path.'), 'Security-event log file; null: the main log.', null)),
          buffer: Type.Optional(
            Size(
              'Main log lines are written in batches of at least this many bytes, and whatever waits at least every 250 ms and at shutdown; 0b: lines wait at most 10 ms (or until 64K characters wait) and are written together; at most 1mb. A crash (a killed process) loses what waits; an exit, even on an uncaught error, writes it (security events in security_file never wait). With workers and no log.file, each line is written at once whatever this says: batches on the stdout pipe the workers share could interleave mid-line.',
              '0b',
            ),
          ),
        },
        { ...Closed, description: 'Logging.' },
      ),
    ),
    limits: Type.Optional(
      Type.Object(
        {
          max_body_size: Type.Optional(Size('Default largest request body.', DEFAULTS.limits.max_body_size)),
          request_buffer: Type.Optional(
            Size(
              'A request body is read whole, up to this size, before the upstream is contacted: a client that sends its body slowly never holds an upstream connection (nginx: proxy_request_buffering). A larger body is read up to this size, then streamed; 0b: every body is streamed as it comes. At most 64mb.',
              DEFAULTS.limits.request_buffer,
            ),
          ),
          max_header_size: Type.Optional(Size('Largest request line + headers; at least 1kb.', DEFAULTS.limits.max_header_size)),
          headers_timeout: Type.Optional(Duration('Time to receive the request headers (slowloris), and the longest a TLS handshake may take from the TCP accept; more than 0, at most 24d.', DEFAULTS.limits.headers_timeout)),
          request_timeout: Type.Optional(Duration('Time to receive the whole request; more than 0, at most 24d.', DEFAULTS.limits.request_timeout)),
        },
        { ...Closed, description: 'Client request limits.' },
      ),
    ),
    timeouts: Type.Optional(Timeouts(true)),
    shutdown_grace: Type.Optional(Duration('Time in-flight requests get to finish on SIGTERM; at most 24d.', DEFAULTS.shutdown_grace)),
    workers: Type.Optional(
      Type.Union([Type.Integer({ minimum: 1, maximum: MAX_WORKERS }), Type.Literal('auto')], {
        description:
          'Gateway processes sharing the listeners (1: a single process; auto: one per CPU the process may run on, capped by its cgroup CPU quota, e.g. docker run --cpus). Rate limits, bans and ACME stay global. Changes need a restart.',
        default: 1,
      }),
    ),
    admin: Type.Optional(
      Type.Object(
        { metrics_token: Type.Optional(Nullable(NonEmpty('Token.'), 'Bearer token required on /metrics; null: none. Use ${ENV}.', null)) },
        { ...Closed, description: 'Admin listener settings.' },
      ),
    ),
    auth: Type.Optional(
      Type.Object(
        {
          issuers: Type.Optional(Type.Array(Issuer, { description: 'Trusted token issuers; empty: only public routes can succeed.', default: [] })),
          identity_headers: Type.Optional(
            Type.Object(
              {
                user: Type.Optional(NonEmpty('Header carrying the subject (default X-Auth-User).')),
                email: Type.Optional(NonEmpty('Header carrying the e-mail (default X-Auth-Email).')),
                roles: Type.Optional(NonEmpty('Header carrying the roles (default X-Auth-Roles).')),
                issuer: Type.Optional(NonEmpty('Header carrying the issuer that vouched for the token (default X-Auth-Issuer): with several issuers, the subject is only unique together with it.')),
              },
              { ...Closed, description: 'Headers the gateway sets upstream (client-sent copies are always removed).' },
            ),
          ),
          forward_token: Type.Optional(Type.Boolean({ description: 'Send the Authorization header upstream; false strips it. On public routes the gateway does not look at it, so it is forwarded unverified: an app must not trust a token it did not get through an authenticated route (use the identity headers).', default: true })),
          realm: Type.Optional(NonEmpty('WWW-Authenticate realm (default portcullis).')),
        },
        { ...Closed, description: 'Token authentication.' },
      ),
    ),
    ...protectionProperties(),
    sites: Type.Array(Site, { minItems: 1, description: 'Virtual hosts.' }),
  },
  { ...Closed, $id: SCHEMA_ID, title: 'Portcullis gateway configuration' },
);

export type GatewayFile = Static<typeof GatewayFileSchema>;
export type RawSite = GatewayFile['sites'][number];
export type RawRoute = NonNullable<RawSite['routes']>[number];
export type RawProtect = Pick<GatewayFile, 'headers' | 'cookies' | 'csrf' | 'rate_limit' | 'bans'>;

/** The JSON Schema document written to `config/gateway.schema.json` (symbols dropped by JSON). */
export function jsonSchemaDocument(): Record<string, unknown> {
  const plain = JSON.parse(JSON.stringify(GatewayFileSchema)) as Record<string, unknown>;
  return { $schema: 'http://json-schema.org/draft-07/schema#', ...plain };
}
