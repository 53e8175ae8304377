/**
 * In-memory HTTP-01 challenge table (RFC 8555 §8.3). The plain-HTTP listener answers
 * `GET /.well-known/acme-challenge/<token>` from `get(token)` before any redirect to HTTPS, with
 * `200 text/plain` and the key authorization, or 404.
 */
import type { Http01Responder } from './types.js';

export const HTTP01_PREFIX = '/.well-known/acme-challenge/';

// RFC 8555 §8.3: the token is base64url without padding; RFC 8555 §11.3 asks for ≥128 bits.
const TOKEN_RE = /^[A-Za-z0-9_-]{16,256}$/;

/**
 * The token in a request path, or null when the path is not an HTTP-01 challenge path.
 * Query strings are ignored; anything else after the token (extra segments, encoded slashes,
 * dots) is rejected, so the table can never be probed with path tricks.
 */
export function matchChallengePath(path: string): string | null {
  const q = path.indexOf('?');
  const p = q === -1 ? path : path.slice(0, q);
  if (!p.startsWith(HTTP01_PREFIX)) return null;
  const token = p.slice(HTTP01_PREFIX.length);
  return TOKEN_RE.test(token) ? token : null;
}

export class Http01Challenges implements Http01Responder {
  private readonly table = new Map<string, string>();

  set(token: string, keyAuthorization: string): void {
    this.table.set(token, keyAuthorization);
  }

  delete(token: string): void {
    this.table.delete(token);
  }

  /** The key authorization to serve for `token`, or undefined (→ 404). */
  get(token: string): string | undefined {
    return TOKEN_RE.test(token) ? this.table.get(token) : undefined;
  }

  /** Convenience for the listener: the body to serve for a request path, or undefined. */
  lookupPath(path: string): string | undefined {
    const token = matchChallengePath(path);
    return token === null ? undefined : this.table.get(token);
  }

  get size(): number {
    return this.table.size;
  }
}
