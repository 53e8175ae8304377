/**
 * Upstream failures, classified once into a small fixed set: used for the status code
 * (502 vs 504), the log, and the `reason` label of portcullis_upstream_errors_total.
 */
export type UpstreamErrorKind = 'connect_refused' | 'connect_timeout' | 'response_timeout' | 'reset' | 'bad_response' | 'other';

const CONNECT_REFUSED = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);

function codes(err: unknown): string[] {
  const out: string[] = [];
  let e: unknown = err;
  for (let i = 0; i < 6 && e && typeof e === 'object'; i++) {
    const c = (e as { code?: unknown }).code;
    if (typeof c === 'string') out.push(c);
    const name = (e as { name?: unknown }).name;
    if (typeof name === 'string') out.push(name);
    e = (e as { cause?: unknown }).cause;
  }
  return out;
}

export function classifyUpstreamError(err: unknown): UpstreamErrorKind {
  const cs = codes(err);
  if (cs.some((c) => CONNECT_REFUSED.has(c))) return 'connect_refused';
  if (cs.includes('UND_ERR_CONNECT_TIMEOUT') || cs.includes('ConnectTimeoutError')) return 'connect_timeout';
  if (cs.some((c) => c === 'UND_ERR_HEADERS_TIMEOUT' || c === 'UND_ERR_BODY_TIMEOUT')) return 'response_timeout';
  // undici's parser errors carry no code for some llhttp errors (its code table is keyed by name): match the class name too.
  if (cs.some((c) => c.startsWith('HPE_') || c === 'HTTPParserError' || c === 'UND_ERR_INFO' || c === 'GW_UPSTREAM_BAD_STATUS' || c === 'GW_UPSTREAM_BAD_HEADER' || c === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' || c === 'UND_ERR_HEADERS_OVERFLOW' || c === 'HeadersOverflowError')) return 'bad_response';
  if (cs.some((c) => c === 'ECONNRESET' || c === 'UND_ERR_SOCKET' || c === 'EPIPE' || c === 'UND_ERR_CLOSED')) return 'reset';
  return 'other';
}

/** The request never reached the target: safe to try another one, whatever the method. */
export function isConnectFailure(err: unknown): boolean {
  const kind = classifyUpstreamError(err);
  return kind === 'connect_refused' || kind === 'connect_timeout';
}
