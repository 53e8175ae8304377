/**
 * The `WWW-Authenticate` value for 401/403 answers (RFC 6750 §3, RFC 9110 §11.6.1).
 */
import type { AuthOutcome } from './types.js';

// Generic on purpose: the precise reason (expired, bad signature, unknown issuer…) is logged
// only, so a client cannot use the answer as an oracle for forging tokens.
const DESCRIPTIONS = {
  invalid_request: 'The request is malformed',
  invalid_token: 'The access token is invalid',
  insufficient_scope: 'The access token does not grant access to this resource',
} as const;

/**
 * RFC 9110 §5.6.4 quoted-string. Controls (CR/LF: header injection) and non-ASCII are replaced
 * by `?` since RFC 6750 §3 limits these values to visible ASCII; `"` and `\` become quoted-pairs.
 */
function quote(value: string): string {
  let out = '"';
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x22 || c === 0x5c) out += '\\' + value[i];
    else if (c < 0x20 || c > 0x7e) out += '?';
    else out += value[i];
  }
  return out + '"';
}

/**
 * `null` (or an outcome without an error, e.g. anonymous): only the realm, since RFC 6750 §3.1
 * says a request without credentials SHOULD NOT get an error code. `'insufficient_scope'`: for
 * 403 answers from the policy layer.
 */
export function wwwAuthenticate(realm: string, outcome: AuthOutcome | 'insufficient_scope' | null): string {
  let error: keyof typeof DESCRIPTIONS | null = null;
  if (outcome === 'insufficient_scope') error = 'insufficient_scope';
  else if (outcome !== null && outcome.kind === 'invalid') error = outcome.error;
  const head = `Bearer realm=${quote(realm)}`;
  if (error === null) return head;
  return `${head}, error="${error}", error_description="${DESCRIPTIONS[error]}"`;
}
