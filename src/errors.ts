/**
 * The one table of gateway error codes.
 *
 * Every error the gateway raises carries a stable `GW_ERR_*` code. Codes are never reused for a
 * different meaning; tests assert on `err.code`, never on message text. Errors with an HTTP
 * `statusCode` may reach a client, but only through `proxy/errors`' safe body (code + request id),
 * never with their message.
 */

export const ErrorCodes = {
  // configuration (startup / reload)
  GW_ERR_CONFIG_INVALID: 'configuration is invalid',
  GW_ERR_CONFIG_READ: 'configuration file cannot be read',
  // request hygiene
  GW_ERR_BAD_REQUEST: 'bad request',
  GW_ERR_BAD_PATH: 'request path is not acceptable',
  GW_ERR_METHOD_NOT_ALLOWED: 'method not allowed',
  GW_ERR_MISDIRECTED: 'misdirected request',
  GW_ERR_NO_ROUTE: 'no route',
  GW_ERR_BODY_TOO_LARGE: 'request body too large',
  GW_ERR_HEADERS_TOO_LARGE: 'request headers too large',
  GW_ERR_REQUEST_TIMEOUT: 'request timeout',
  GW_ERR_NOT_IMPLEMENTED: 'transfer coding not implemented',
  GW_ERR_EXPECTATION_FAILED: 'expectation not supported',
  // upstream
  GW_ERR_UPSTREAM_UNAVAILABLE: 'upstream unavailable',
  GW_ERR_UPSTREAM_TIMEOUT: 'upstream timed out',
  GW_ERR_UPSTREAM_BAD_RESPONSE: 'upstream sent an invalid response',
  // auth / policy
  GW_ERR_UNAUTHENTICATED: 'authentication required',
  GW_ERR_INVALID_TOKEN: 'invalid token',
  GW_ERR_FORBIDDEN: 'forbidden',
  GW_ERR_AUTH_UNAVAILABLE: 'authentication service unavailable',
  // protections
  GW_ERR_CSRF: 'cross-site request refused',
  GW_ERR_RATE_LIMITED: 'too many requests',
  GW_ERR_BANNED: 'too many requests',
  // tls / certificates
  GW_ERR_TLS_CERT: 'certificate cannot be loaded',
  GW_ERR_ACME: 'certificate order failed',
  GW_ERR_SHUTTING_DOWN: 'the gateway is shutting down',
  GW_ERR_INTERNAL: 'internal error',
} as const;

export type GatewayErrorCode = keyof typeof ErrorCodes;

/** Base class: a stable code, an optional HTTP status, and an optional cause that is only logged. */
export class GatewayError extends Error {
  readonly code: GatewayErrorCode;
  readonly statusCode: number | undefined;

  constructor(code: GatewayErrorCode, message?: string, options?: { statusCode?: number; cause?: unknown }) {
    super(message ?? ErrorCodes[code], options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.statusCode = options?.statusCode;
  }
}

export function isGatewayError(err: unknown): err is GatewayError {
  return err instanceof GatewayError;
}
