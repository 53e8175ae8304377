/**
 * The only I/O towards identity providers: small JSON GET/POST with a hard timeout, a response
 * size cap and no redirects (a redirect from a JWKS or introspection URL is not followed: the
 * configured/discovered URL is the trust anchor).
 */
import http from 'node:http';
import https from 'node:https';

export interface IdpRequest {
  readonly method: 'GET' | 'POST';
  readonly headers: Readonly<Record<string, string>>;
  readonly body?: string;
}

export interface IdpResponse {
  readonly status: number;
  /** Parsed JSON, or `undefined` when the body is not JSON. */
  readonly json: unknown;
}

/** Network error, timeout or oversized answer: the IdP could not be asked. */
export class IdpUnreachable extends Error {
  override readonly name = 'IdpUnreachable';
}

export interface IdpHttp {
  request(url: string, init: IdpRequest): Promise<IdpResponse>;
  close(): void;
}

/** 1 MiB: generous for a JWKS or an introspection answer, small enough to not matter in memory. */
export const MAX_RESPONSE_BYTES = 1 << 20;

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
};

/** node:http(s) client; `ca` (PEM) is trusted in addition to nothing else when given. */
export function nodeIdpHttp(opts: { timeoutMs: number; ca: string | null; maxBytes?: number }): IdpHttp {
  const maxBytes = opts.maxBytes ?? MAX_RESPONSE_BYTES;
  // Own agents so close() can drop keep-alive sockets and never keep the process alive.
  const httpAgent = new http.Agent({ keepAlive: true });
  const httpsAgent = new https.Agent({ keepAlive: true, ...(opts.ca === null ? {} : { ca: opts.ca }) });
  return {
    request(url, init) {
      return new Promise<IdpResponse>((resolve, reject) => {
        let target: URL;
        try {
          target = new URL(url);
        } catch (cause) {
          reject(new IdpUnreachable(`invalid URL ${url}`, { cause }));
          return;
        }
        const isHttps = target.protocol === 'https:';
        if (!isHttps && target.protocol !== 'http:') {
          reject(new IdpUnreachable(`unsupported protocol ${target.protocol}`));
          return;
        }
        const headers: Record<string, string> = { accept: 'application/json', ...init.headers };
        if (init.body !== undefined) headers['content-length'] = String(Buffer.byteLength(init.body));
        const req = (isHttps ? https : http).request(target, {
          method: init.method,
          headers,
          agent: isHttps ? httpsAgent : httpAgent,
        });
        // One timer for connect + headers + body: a slow-drip IdP cannot hold a request forever.
        const timer = setTimeout(() => req.destroy(new IdpUnreachable(`timeout after ${opts.timeoutMs} ms`)), opts.timeoutMs);
        const fail = (err: unknown): void => {
          clearTimeout(timer);
          reject(err instanceof IdpUnreachable ? err : new IdpUnreachable(`request to ${target.origin} failed`, { cause: err }));
        };
        req.once('error', fail);
        req.once('response', (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > maxBytes) {
              req.destroy(new IdpUnreachable(`response larger than ${maxBytes} bytes`));
              return;
            }
            chunks.push(chunk);
          });
          res.once('error', fail);
          res.once('end', () => {
            clearTimeout(timer);
            resolve({ status: res.statusCode ?? 0, json: parseJson(Buffer.concat(chunks).toString('utf8')) });
          });
        });
        req.end(init.body);
      });
    },
    close() {
      httpAgent.destroy();
      httpsAgent.destroy();
    },
  };
}

/** Adapter for an injected `fetch` (tests, custom dispatchers). */
export function fetchIdpHttp(fetchImpl: typeof fetch, opts: { timeoutMs: number; maxBytes?: number }): IdpHttp {
  const maxBytes = opts.maxBytes ?? MAX_RESPONSE_BYTES;
  return {
    async request(url, init) {
      try {
        const res = await fetchImpl(url, {
          method: init.method,
          headers: { accept: 'application/json', ...init.headers },
          ...(init.body === undefined ? {} : { body: init.body }),
          redirect: 'manual',
          signal: AbortSignal.timeout(opts.timeoutMs),
        });
        const text = await res.text();
        if (Buffer.byteLength(text) > maxBytes) throw new IdpUnreachable(`response larger than ${maxBytes} bytes`);
        return { status: res.status, json: parseJson(text) };
      } catch (err) {
        throw err instanceof IdpUnreachable ? err : new IdpUnreachable(`request to ${url} failed`, { cause: err });
      }
    },
    close() {},
  };
}
