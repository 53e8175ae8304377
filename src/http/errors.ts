/**
 * Safe error responses: the only way the gateway itself answers a client with an error.
 *
 * The body names a stable code, a short fixed message for the status and the request id — never
 * an exception message, a stack, an upstream address or anything the client sent. JSON when the
 * client accepts JSON, plain text otherwise.
 */
import type { GatewayErrorCode } from '../errors.js';

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  413: 'Content Too Large',
  417: 'Expectation Failed',
  421: 'Misdirected Request',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

export function statusText(status: number): string {
  return STATUS_TEXT[status] ?? (status >= 500 ? 'Internal Server Error' : 'Bad Request');
}

export interface ErrorBody {
  readonly contentType: string;
  readonly body: string;
}

/** `accept` is the client's Accept header; JSON wins only when the client asks for it. */
export function renderError(status: number, code: GatewayErrorCode, requestId: string, accept: string | undefined): ErrorBody {
  const message = statusText(status);
  if (accept !== undefined && wantsJson(accept)) {
    return {
      contentType: 'application/json; charset=utf-8',
      body: JSON.stringify({ error: { status, code, message, request_id: requestId } }),
    };
  }
  return { contentType: 'text/plain; charset=utf-8', body: `${status} ${message}\ncode: ${code}\nrequest id: ${requestId}\n` };
}

function wantsJson(accept: string): boolean {
  // A cheap check is enough: the only choice is JSON or text, and text is always acceptable.
  const a = accept.toLowerCase();
  return a.includes('application/json') || a.includes('+json');
}
