/**
 * OIDC Discovery 1.0 (§4): `jwks_uri` and `introspection_endpoint` when the config leaves them out.
 */
import { checkSecureUrl } from '../config/checks.js';
import type { IdpHttp } from './http.js';
import { IdpUnreachable } from './http.js';

export interface ProviderMetadata {
  readonly jwksUri: string | null;
  readonly introspectionEndpoint: string | null;
}

/** The document was fetched but cannot be trusted or used. */
export class DiscoveryInvalid extends Error {
  override readonly name = 'DiscoveryInvalid';
}

/**
 * An endpoint taken from discovery is held to the rule an endpoint written in the configuration
 * is (`checkSecureUrl`): https, or http on a loopback address only, no user info, no fragment;
 * and https whenever the issuer is.
 * A tampered or sloppy document must not move key or token transport to cleartext — not even
 * for an issuer that is itself plain http on loopback (a local IdP naming a host elsewhere).
 */
export function checkEndpoint(issuer: string, value: unknown, name: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string') throw new DiscoveryInvalid(`${name} is not a string`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new DiscoveryInvalid(`${name} is not an absolute URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new DiscoveryInvalid(`${name} must be http(s)`);
  if (url.protocol === 'http:' && issuer.startsWith('https:')) throw new DiscoveryInvalid(`${name} must be https for an https issuer`);
  const checked = checkSecureUrl(value);
  if (!checked.ok) throw new DiscoveryInvalid(`${name} ${checked.message}`);
  return url.href;
}

export function discoveryUrl(issuer: string): string {
  // OIDC Discovery §4: a trailing "/" of the issuer is removed before appending.
  return `${issuer.endsWith('/') ? issuer.slice(0, -1) : issuer}/.well-known/openid-configuration`;
}

/** Milliseconds after a failed discovery during which callers get the failure without a fetch. */
export const DISCOVERY_RETRY_AFTER = 5000;

/**
 * Fetches once, caches success forever (per authenticator), coalesces concurrent callers, and
 * after a failure answers from that failure for a few seconds so a flood of requests for an
 * issuer whose IdP is down does not become a flood of discovery requests.
 */
export class Discovery {
  readonly #issuer: string;
  readonly #http: IdpHttp;
  readonly #now: () => number;
  #result: ProviderMetadata | null = null;
  #pending: Promise<ProviderMetadata> | null = null;
  #failure: { at: number; err: unknown } | null = null;

  constructor(issuer: string, httpClient: IdpHttp, now: () => number) {
    this.#issuer = issuer;
    this.#http = httpClient;
    this.#now = now;
  }

  get cached(): ProviderMetadata | null {
    return this.#result;
  }

  /** Throws `IdpUnreachable` or `DiscoveryInvalid`. */
  /** `force`: ignore a recent failure (callers with their own rate limit, background retries). */
  metadata(force = false): Promise<ProviderMetadata> {
    if (this.#result !== null) return Promise.resolve(this.#result);
    const failure = this.#failure;
    if (!force && this.#pending === null && failure !== null && this.#now() - failure.at < DISCOVERY_RETRY_AFTER) {
      return Promise.reject(failure.err);
    }
    this.#pending ??= this.#fetch().then(
      (result) => {
        this.#pending = null;
        this.#failure = null;
        return result;
      },
      (err: unknown) => {
        this.#pending = null;
        this.#failure = { at: this.#now(), err };
        throw err;
      },
    );
    return this.#pending;
  }

  async #fetch(): Promise<ProviderMetadata> {
    const res = await this.#http.request(discoveryUrl(this.#issuer), { method: 'GET', headers: {} });
    if (res.status !== 200) throw new IdpUnreachable(`discovery answered ${res.status}`);
    const doc = res.json;
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new DiscoveryInvalid('discovery document is not a JSON object');
    const d = doc as Record<string, unknown>;
    // OIDC Discovery §4.3: the issuer in the document MUST be identical to the one used to build
    // the URL, else an attacker controlling one document could mint tokens for another issuer.
    if (d['issuer'] !== this.#issuer) throw new DiscoveryInvalid('discovery issuer does not match the configured issuer');
    this.#result = Object.freeze({
      jwksUri: checkEndpoint(this.#issuer, d['jwks_uri'], 'jwks_uri'),
      introspectionEndpoint: checkEndpoint(this.#issuer, d['introspection_endpoint'], 'introspection_endpoint'),
    });
    return this.#result;
  }
}
