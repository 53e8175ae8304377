/**
 * One issuer's signing keys: a small cache around jose's `createLocalJWKSet`.
 *
 * Why not `createRemoteJWKSet`: it reads `Date.now()` (no injectable clock), its cooldown counts
 * from the last *successful* fetch (so while the IdP is failing every unknown `kid` fetches again),
 * and once `cacheMaxAge` passes it awaits a reload and fails when the IdP is down instead of using
 * the keys it has. Here:
 * - an unknown `kid` triggers at most one fetch per `cooldownMs`, counted from the last *attempt*;
 *   concurrent misses share one request;
 * - keys older than `maxAgeMs` are refreshed in the background; until that succeeds the old keys
 *   keep verifying (an IdP outage does not become a gateway outage);
 * - no keys at all is a technical failure (`KeysUnavailable` → 503), never a 401.
 */
import { createLocalJWKSet, errors as joseErrors } from 'jose';
import type { JSONWebKeySet, JWTVerifyGetKey } from 'jose';
import type { IdpHttp } from './http.js';
import { IdpUnreachable } from './http.js';
import type { AuthLogger } from './types.js';

/** No usable key set (never fetched, or a refresh needed for an unknown kid failed). */
export class KeysUnavailable extends Error {
  override readonly name = 'KeysUnavailable';
}

export interface IssuerKeysOptions {
  readonly issuer: string;
  readonly http: IdpHttp;
  /** Resolves the JWKS URL (config or discovery); may throw when discovery fails. */
  readonly jwksUri: () => Promise<string>;
  readonly now: () => number;
  readonly cooldownMs: number;
  readonly maxAgeMs: number;
  readonly logger: AuthLogger | undefined;
  readonly onRefresh: ((issuer: string, result: 'ok' | 'error') => void) | undefined;
  /**
   * A refresh found a key gone that the previous set had (a rotation, or a key withdrawn after a
   * leak): what was verified with it must not be trusted any longer. Called after the new set is
   * in use. Must not throw.
   */
  readonly onKeysRemoved?: ((issuer: string) => void) | undefined;
}

/**
 * Whether the set holds a key that can verify a signature: an asymmetric key (`oct` never
 * verifies here: the algorithms allowed are asymmetric), for signing (`use` absent or `sig`)
 * and allowed to verify (`key_ops` absent or naming `verify`). A set without one is treated like
 * a failed fetch — the keys already held stay — as Envoy treats a JWKS without valid keys: an
 * IdP answering `{"keys": []}` for a moment is far likelier than one withdrawing every key on
 * purpose, and taking it at its word turned every valid token into a 401.
 */
function hasVerifyingKey(jwks: JSONWebKeySet): boolean {
  return (jwks.keys as unknown as Record<string, unknown>[]).some(
    (k) =>
      (k.kty === 'RSA' || k.kty === 'EC' || k.kty === 'OKP') &&
      (k.use === undefined || k.use === 'sig') &&
      (k.key_ops === undefined || (Array.isArray(k.key_ops) && k.key_ops.includes('verify'))),
  );
}

/** What identifies a public key in a set (the fields jose matches a token's header and signature on). */
function keyIds(jwks: JSONWebKeySet): Set<string> {
  const ids = new Set<string>();
  for (const k of jwks.keys as unknown as Record<string, unknown>[]) {
    ids.add(JSON.stringify([k.kid, k.kty, k.alg, k.use, k.crv, k.x, k.y, k.n, k.e]));
  }
  return ids;
}

type LocalSet = ReturnType<typeof createLocalJWKSet>;

export class IssuerKeys {
  readonly #o: IssuerKeysOptions;
  #local: LocalSet | null = null;
  #lastAttempt = Number.NEGATIVE_INFINITY;
  #lastSuccess = Number.NEGATIVE_INFINITY;
  #lastFailed = false;
  #pending: Promise<boolean> | null = null;
  #ids: Set<string> | null = null;
  #removals = 0;

  constructor(options: IssuerKeysOptions) {
    this.#o = options;
  }

  hasKeys(): boolean {
    return this.#local !== null;
  }

  /**
   * How many refreshes so far removed a key. A verification that started under one count and
   * ended under another may have used a key that is gone.
   */
  get removals(): number {
    return this.#removals;
  }

  #coolingDown(): boolean {
    return this.#o.now() - this.#lastAttempt < this.#o.cooldownMs;
  }

  /**
   * Fetches the key set again if it is older than `maxAgeMs` (and no fetch was tried within the
   * cooldown). Called on a timer: with every token answered from the verified-token cache nothing
   * else would look at the set, and a withdrawn key would go unnoticed.
   */
  refreshIfStale(): void {
    if (this.#local === null || this.#pending !== null || this.#coolingDown()) return;
    if (this.#o.now() - this.#lastSuccess >= this.#o.maxAgeMs) void this.refresh();
  }

  /** Fetches the key set now (coalesced with a fetch in flight). Never throws. */
  refresh(): Promise<boolean> {
    this.#pending ??= this.#fetch().finally(() => {
      this.#pending = null;
    });
    return this.#pending;
  }

  async #fetch(): Promise<boolean> {
    this.#lastAttempt = this.#o.now();
    try {
      const uri = await this.#o.jwksUri();
      const res = await this.#o.http.request(uri, { method: 'GET', headers: { accept: 'application/json, application/jwk-set+json' } });
      if (res.status !== 200) throw new IdpUnreachable(`JWKS answered ${res.status}`);
      // createLocalJWKSet validates the shape (throws JWKSInvalid) and only ever uses public keys.
      const jwks = res.json as JSONWebKeySet;
      const local = createLocalJWKSet(jwks);
      if (!hasVerifyingKey(jwks)) throw new KeysUnavailable('the JWKS has no key that can verify a signature');
      this.#local = local;
      const ids = keyIds(jwks);
      const before = this.#ids;
      this.#ids = ids;
      this.#lastSuccess = this.#o.now();
      this.#lastFailed = false;
      this.#o.onRefresh?.(this.#o.issuer, 'ok');
      if (before !== null && [...before].some((id) => !ids.has(id))) {
        this.#removals++;
        this.#o.logger?.info({ issuer: this.#o.issuer }, 'auth: JWKS no longer has a key it had; tokens verified with the old set are verified again');
        this.#o.onKeysRemoved?.(this.#o.issuer);
      }
      this.#o.logger?.debug({ issuer: this.#o.issuer }, 'auth: JWKS refreshed');
      return true;
    } catch (err) {
      this.#lastFailed = true;
      this.#o.onRefresh?.(this.#o.issuer, 'error');
      this.#o.logger?.warn({ issuer: this.#o.issuer, err }, 'auth: JWKS fetch failed');
      return false;
    }
  }

  /** Key resolver for `jwtVerify`. Throws jose errors (→ 401) or `KeysUnavailable` (→ 503). */
  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    let local = this.#local;
    if (local === null) {
      if (!this.#coolingDown() || this.#pending !== null) await this.refresh();
      local = this.#local;
      if (local === null) throw new KeysUnavailable(`no keys for ${this.#o.issuer}`);
    } else if (this.#o.now() - this.#lastSuccess >= this.#o.maxAgeMs && !this.#coolingDown() && this.#pending === null) {
      void this.refresh(); // stale-while-revalidate: this request uses the keys we have
    }
    try {
      return await local(header, token);
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err;
      // A kid we do not know: maybe the IdP rotated. Refresh at most once per cooldown; callers
      // arriving while that fetch runs wait for it instead of starting their own.
      if (this.#pending !== null || !this.#coolingDown()) {
        await this.refresh();
        const next = this.#local;
        if (next !== null && next !== local) return next(header, token);
      }
      // Could not ask the IdP: we cannot tell a rotated key from a forged kid, so no "denied".
      if (this.#lastFailed) throw new KeysUnavailable(`unknown kid and ${this.#o.issuer} JWKS unreachable`, { cause: err });
      throw err;
    }
  };
}
