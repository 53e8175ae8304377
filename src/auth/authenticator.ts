/**
 * Composition: header → verified-token cache → JWT (JWKS) or opaque (introspection) → Principal.
 */
import { hash } from 'node:crypto';
import type { AuthConfig, IntrospectionConfig, IssuerConfig } from '../config/types.js';
import { GatewayError } from '../errors.js';
import { buildPrincipal } from './claims.js';
import { Discovery, DiscoveryInvalid } from './discovery.js';
import { invalidOutcome, parseAuthorization } from './header.js';
import type { IdpHttp } from './http.js';
import { fetchIdpHttp, nodeIdpHttp } from './http.js';
import { basicCredentials, judgeIntrospection, requestIntrospection } from './introspection.js';
import { IssuerKeys } from './jwks.js';
import { createJwtVerifier, looksLikeJwt, unverifiedIssuer } from './jwt.js';
import type { JwtResult } from './jwt.js';
import { ExpiringLru } from './lru.js';
import type {
  AuthFailureReason,
  AuthOutcome,
  Authenticator,
  AuthenticatorOptions,
  InvalidOutcome,
  UnavailableReason,
} from './types.js';

export const DEFAULTS = Object.freeze({
  jwksCooldown: 30_000,
  jwksMaxAge: 600_000,
  httpTimeout: 5_000,
  cacheSize: 10_000,
  negativeCacheTtl: 10_000,
  /** Background retry of a failed start: 1 s, 2 s, 4 s… capped here. */
  maxRetryDelay: 60_000,
});

// Symmetric algorithms would make the IdP's *public* JWKS a signing secret (algorithm confusion);
// `none` is no signature at all (RFC 8725 §2.1, §3.1).
const FORBIDDEN_ALG = /^(none|HS\d+)$/i;

interface IssuerState {
  readonly cfg: IssuerConfig;
  readonly http: IdpHttp;
  readonly discovery: Discovery;
  readonly keys: IssuerKeys;
  readonly verify: (token: string, now: number) => Promise<JwtResult>;
  readonly introspection: {
    readonly cfg: IntrospectionConfig;
    readonly authorization: string;
    endpoint: string | null;
  } | null;
}

const ANONYMOUS: AuthOutcome = Object.freeze({ kind: 'anonymous' });
const UNAVAILABLE: Readonly<Record<UnavailableReason, AuthOutcome>> = Object.freeze({
  jwks_unavailable: Object.freeze({ kind: 'unavailable', reason: 'jwks_unavailable' }),
  discovery_failed: Object.freeze({ kind: 'unavailable', reason: 'discovery_failed' }),
  introspection_failed: Object.freeze({ kind: 'unavailable', reason: 'introspection_failed' }),
  internal_error: Object.freeze({ kind: 'unavailable', reason: 'internal_error' }),
});
const INVALID = new Map<AuthFailureReason, InvalidOutcome>();
function refused(reason: AuthFailureReason): InvalidOutcome {
  let outcome = INVALID.get(reason);
  if (outcome === undefined) {
    outcome = invalidOutcome(401, reason);
    INVALID.set(reason, outcome);
  }
  return outcome;
}

/** The cache key: SHA-256 of the token, so a heap dump of the cache holds no usable token. */
const tokenKey = (token: string): string => hash('sha256', token, 'base64url');

function validate(config: AuthConfig): void {
  const seen = new Set<string>();
  config.issuers.forEach((iss, i) => {
    const where = `auth.issuers[${i}] (${iss.issuer})`;
    if (seen.has(iss.issuer)) throw new GatewayError('GW_ERR_CONFIG_INVALID', `${where}: duplicate issuer`);
    seen.add(iss.issuer);
    if (iss.algorithms.length === 0) throw new GatewayError('GW_ERR_CONFIG_INVALID', `${where}: algorithms must not be empty`);
    const bad = iss.algorithms.find((a) => FORBIDDEN_ALG.test(a));
    if (bad !== undefined) throw new GatewayError('GW_ERR_CONFIG_INVALID', `${where}: algorithm ${bad} is not allowed`);
    if (iss.audiences.length === 0) throw new GatewayError('GW_ERR_CONFIG_INVALID', `${where}: audiences must not be empty`);
  });
}

/**
 * Builds the authenticator. Throws `GatewayError(GW_ERR_CONFIG_INVALID)` for configuration that
 * would be insecure (no audiences, `none`/HS* algorithms, duplicate issuers) or an unreadable
 * `caBundle`. Does no network I/O: call `start()`.
 *
 * Opaque tokens: when several issuers have `introspection`, they are asked in configuration
 * order; the first `active: true` answer wins, `active: false` moves on to the next. Note that
 * this shows the token to every endpoint in the list until one knows it. If none says active and
 * one of them could not be asked, the outcome is `unavailable` (it might have said yes).
 */
export function createAuthenticator(config: AuthConfig, options: AuthenticatorOptions = {}): Authenticator {
  validate(config);
  const now = options.now ?? Date.now;
  const logger = options.logger;
  const timeoutMs = options.httpTimeout ?? DEFAULTS.httpTimeout;
  const cooldownMs = options.jwksCooldown ?? DEFAULTS.jwksCooldown;
  const maxAgeMs = options.jwksMaxAge ?? DEFAULTS.jwksMaxAge;
  const negativeTtl = options.negativeCacheTtl ?? DEFAULTS.negativeCacheTtl;
  const cache = new ExpiringLru<AuthOutcome>(options.cacheSize ?? DEFAULTS.cacheSize);
  const negative = new ExpiringLru<AuthOutcome>(options.cacheSize ?? DEFAULTS.cacheSize);
  const inflight = new Map<string, Promise<AuthOutcome>>();
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;

  const states = new Map<string, IssuerState>();
  for (const cfg of config.issuers) {
    // The bundle as the configuration was validated with (never read again here: a cluster
    // worker must trust what its siblings trust).
    const ca = options.fetch === undefined ? cfg.caBundlePem : null;
    const http = options.fetch === undefined ? nodeIdpHttp({ timeoutMs, ca }) : fetchIdpHttp(options.fetch, { timeoutMs });
    const discovery = new Discovery(cfg.issuer, http, now);
    const keys = new IssuerKeys({
      issuer: cfg.issuer,
      http,
      now,
      cooldownMs,
      maxAgeMs,
      logger,
      onRefresh: options.onJwksRefresh,
      // A key gone from the set: cached outcomes of this issuer's JWTs are dropped (they are
      // verified again, against the new set, on their next use).
      onKeysRemoved: (issuer) => {
        cache.deleteWhere((o) => o.kind === 'authenticated' && o.principal.tokenType === 'jwt' && o.principal.issuer === issuer);
      },
      // Keys are rate-limited by their own cooldown, so they may bypass discovery's.
      jwksUri: async () => {
        if (cfg.jwksUri !== null) return cfg.jwksUri;
        const uri = (await discovery.metadata(true)).jwksUri;
        if (uri === null) throw new DiscoveryInvalid('discovery has no jwks_uri');
        return uri;
      },
    });
    states.set(cfg.issuer, {
      cfg,
      http,
      discovery,
      keys,
      verify: createJwtVerifier(cfg, keys),
      introspection:
        cfg.introspection === null
          ? null
          : { cfg: cfg.introspection, authorization: basicCredentials(cfg.introspection), endpoint: cfg.introspection.endpoint },
    });
  }
  const introspectors = [...states.values()].filter((s) => s.introspection !== null);

  async function introspectionEndpoint(st: IssuerState, force: boolean): Promise<string> {
    const intro = st.introspection;
    if (intro === null) throw new Error('unreachable: issuer without introspection');
    if (intro.endpoint !== null) return intro.endpoint;
    const endpoint = (await st.discovery.metadata(force)).introspectionEndpoint;
    if (endpoint === null) throw new DiscoveryInvalid('discovery has no introspection_endpoint');
    intro.endpoint = endpoint;
    return endpoint;
  }

  async function authenticateJwt(token: string, key: string, at: number): Promise<AuthOutcome> {
    const iss = unverifiedIssuer(token);
    if (iss === undefined) return refused('malformed_token');
    // Unknown issuer: refused before any network I/O, so tokens naming arbitrary issuers cannot
    // make the gateway fetch anything.
    const st = iss === null ? undefined : states.get(iss);
    if (st === undefined) return refused('unknown_issuer');
    const removals = st.keys.removals;
    let result = await st.verify(token, at);
    // A refresh removed a key while this token was being verified: it may have been verified with
    // that key, and its outcome would then outlive the cache's invalidation. Verified again.
    if (st.keys.removals !== removals) result = await st.verify(token, at);
    if (!result.ok) {
      if (result.reason === 'jwks_unavailable') return UNAVAILABLE.jwks_unavailable;
      return refused(result.reason);
    }
    const exp = result.claims.exp as number; // required and checked numeric by jwtVerify
    const principal = buildPrincipal(result.claims, {
      issuer: st.cfg.issuer,
      rolesClaim: st.cfg.rolesClaim,
      tokenType: 'jwt',
      expiresAt: exp * 1000,
    });
    if (typeof principal === 'string') return refused(principal);
    const outcome: AuthOutcome = Object.freeze({ kind: 'authenticated', principal });
    cache.set(key, outcome, principal.expiresAt);
    return outcome;
  }

  async function introspectAll(token: string, key: string): Promise<AuthOutcome> {
    let unreachable = false;
    for (const st of introspectors) {
      const intro = st.introspection;
      if (intro === null) continue;
      let answer: unknown;
      try {
        const endpoint = await introspectionEndpoint(st, false);
        answer = await requestIntrospection(st.http, endpoint, intro.authorization, token);
      } catch (err) {
        logger?.warn({ issuer: st.cfg.issuer, err }, 'auth: introspection failed');
        unreachable = true;
        continue;
      }
      const at = now();
      const verdict = judgeIntrospection(answer, st.cfg, intro.cfg, at);
      if (verdict.ok) {
        const outcome: AuthOutcome = Object.freeze({ kind: 'authenticated', principal: verdict.principal });
        cache.set(key, outcome, verdict.cacheUntil);
        return outcome;
      }
      if (verdict.reason === 'introspection_failed') {
        logger?.warn({ issuer: st.cfg.issuer }, 'auth: introspection answer is not RFC 7662');
        unreachable = true;
        continue;
      }
      if (verdict.reason === 'inactive_token') continue;
      const outcome = refused(verdict.reason);
      negative.set(key, outcome, at + negativeTtl);
      return outcome;
    }
    if (unreachable) return UNAVAILABLE.introspection_failed;
    const outcome = refused('inactive_token');
    negative.set(key, outcome, now() + negativeTtl);
    return outcome;
  }

  function authenticateOpaque(token: string, key: string, at: number): Promise<AuthOutcome> | AuthOutcome {
    if (introspectors.length === 0) return refused('malformed_token');
    const known = negative.get(key, at);
    if (known !== undefined) return known;
    // Identical tokens arriving together (a page load firing ten API calls) share one request.
    let pending = inflight.get(key);
    if (pending === undefined) {
      pending = introspectAll(token, key).finally(() => inflight.delete(key));
      inflight.set(key, pending);
    }
    return pending;
  }

  async function warm(st: IssuerState, attempt: number): Promise<boolean> {
    let ok = await st.keys.refresh();
    if (st.introspection !== null) {
      try {
        await introspectionEndpoint(st, true);
      } catch (err) {
        ok = false;
        logger?.warn({ issuer: st.cfg.issuer, err }, 'auth: introspection endpoint unknown');
      }
    }
    if (!ok && !closed) {
      const delay = Math.min(1000 * 2 ** attempt, DEFAULTS.maxRetryDelay);
      logger?.warn({ issuer: st.cfg.issuer, retryInMs: delay }, 'auth: issuer not ready, retrying in the background');
      const timer = setTimeout(() => {
        timers.delete(timer);
        if (!closed && !ready(st)) void warm(st, attempt + 1);
      }, delay);
      timer.unref(); // never keeps the process alive
      timers.add(timer);
    }
    return ok;
  }

  /**
   * What is known without I/O: no header, a malformed one, or a cached outcome (the hot path: one
   * hash, one Map lookup, the same frozen object every time); otherwise the token and its cache key.
   */
  function lookup(authorization: string | string[] | undefined, at: number): AuthOutcome | { readonly token: string; readonly key: string } {
    const parsed = parseAuthorization(authorization);
    if (parsed === null) return ANONYMOUS;
    if ('kind' in parsed) return parsed;
    const key = tokenKey(parsed.token);
    return cache.get(key, at) ?? { token: parsed.token, key };
  }

  /** The outcome of this Authorization header: synchronous when `lookup` knows it, else verified once. */
  function check(authorization: string | string[] | undefined): AuthOutcome | Promise<AuthOutcome> {
    const at = now();
    let found: ReturnType<typeof lookup>;
    try {
      found = lookup(authorization, at);
    } catch (err) {
      return unexpected(err);
    }
    return 'kind' in found ? found : verify(found.token, found.key, at);
  }

  async function verify(token: string, key: string, at: number): Promise<AuthOutcome> {
    try {
      return await (looksLikeJwt(token) ? authenticateJwt(token, key, at) : authenticateOpaque(token, key, at));
    } catch (err) {
      return unexpected(err);
    }
  }

  function unexpected(err: unknown): AuthOutcome {
    logger?.warn({ err }, 'auth: unexpected error');
    return UNAVAILABLE.internal_error;
  }

  const ready = (st: IssuerState): boolean =>
    st.keys.hasKeys() && (st.introspection === null || st.introspection.endpoint !== null);

  return {
    async start() {
      // The key sets are looked at on a timer too (see IssuerKeys.refreshIfStale), so that a key
      // withdrawn at the IdP stops the cached tokens it signed within about jwksMaxAge.
      if (!closed && timers.size === 0) {
        const every = Math.max(1_000, Math.min(maxAgeMs / 2, 60_000));
        const timer = setInterval(() => {
          for (const st of states.values()) st.keys.refreshIfStale();
        }, every);
        timer.unref();
        timers.add(timer);
      }
      const results = await Promise.all([...states.values()].map((st) => warm(st, 0)));
      logger?.info({ issuers: states.size, ready: results.every(Boolean) }, 'auth: started');
    },
    ready() {
      for (const st of states.values()) if (!ready(st)) return false;
      return true;
    },
    check,
    async authenticate(authorization) {
      return check(authorization);
    },
    async close() {
      closed = true;
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      cache.clear();
      negative.clear();
      for (const st of states.values()) st.http.close();
    },
  };
}
