/**
 * Pure parsing of the Authorization header (RFC 6750 §2.1, RFC 9110 §11.6.2). No I/O, no crypto.
 */
import type { InvalidOutcome } from './types.js';

/** Tokens longer than this are refused before any decoding or crypto. */
export const MAX_TOKEN_LENGTH = 8192;

// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
// Linear: the two parts use disjoint character classes, so no backtracking blow-up.
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

const invalid = (status: 400 | 401, reason: InvalidOutcome['reason']): InvalidOutcome =>
  Object.freeze({
    kind: 'invalid',
    status,
    error: status === 400 ? 'invalid_request' : 'invalid_token',
    reason,
  });

// Shared frozen outcomes: the refusal path allocates nothing.
const MULTIPLE = invalid(400, 'multiple_headers');
const MALFORMED = invalid(401, 'malformed_header');
const NOT_BEARER = invalid(401, 'not_bearer');
const TOO_LARGE = invalid(401, 'token_too_large');

export type HeaderResult = { readonly token: string } | InvalidOutcome | null;

/**
 * Extracts the bearer token. Returns `null` when there is no header (anonymous), an `invalid`
 * outcome when the header cannot be used, else the token (not yet validated in any other way).
 *
 * - Several Authorization headers are ambiguous (which one does the upstream see?): 400
 *   invalid_request (RFC 6750 §3.1). Node keeps a repeated Authorization as an array, or a
 *   proxy may have joined them with a comma; a comma cannot occur in a b64token, so both mean
 *   "more than one".
 * - The scheme is case-insensitive (RFC 9110 §11.1); one or more spaces separate it (RFC 9110
 *   §11.4 `1*SP`).
 */
export function parseAuthorization(header: string | readonly string[] | undefined): HeaderResult {
  if (header === undefined) return null;
  let value: string;
  if (typeof header === 'string') {
    value = header;
  } else {
    if (header.length === 0) return null;
    if (header.length > 1) return MULTIPLE;
    value = header[0] as string;
  }
  // Bounded before any regex: "Bearer " + token + a little slack for extra spaces.
  if (value.length > MAX_TOKEN_LENGTH + 64) return TOO_LARGE;
  if (value.includes(',')) return MULTIPLE;
  const space = value.indexOf(' ');
  if (space <= 0) {
    // "Bearer" without a token is malformed; "Basic", "Negotiate"… are another scheme.
    if (value.length === 0 || value.toLowerCase() === 'bearer' || !/^[A-Za-z][A-Za-z0-9-]*$/.test(value)) return MALFORMED;
    return NOT_BEARER;
  }
  const scheme = value.slice(0, space);
  if (scheme.length !== 6 || scheme.toLowerCase() !== 'bearer') return NOT_BEARER;
  let start = space + 1;
  while (value.charCodeAt(start) === 0x20) start++;
  const token = value.slice(start);
  if (token.length > MAX_TOKEN_LENGTH) return TOO_LARGE;
  if (!B64TOKEN.test(token)) return MALFORMED;
  return { token };
}

export { invalid as invalidOutcome };
