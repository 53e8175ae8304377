/**
 * The main pino logger and the redaction rules every log line goes through.
 *
 * Credentials never reach a log: header values are censored by pino's redaction, and token-like
 * query parameters are masked before a path is logged.
 */
import pino, { type Logger, type LoggerOptions } from 'pino';
import type { LogConfig } from '../config/types.js';

export type { Logger };

const CENSOR = '[REDACTED]';

/** Paths in logged objects whose values are secrets. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  'req.headers["x-api-key"]',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers.cookie',
  'headers["set-cookie"]',
  'headers["proxy-authorization"]',
  'authorization',
  'cookie',
  'token',
  'client_secret',
];

let cachedMs = -1;
let cachedTime = '';

/**
 * pino's `isoTime` (same output: `,"time":"2026-12-05T23:12:10.123Z"`), formatted once per
 * millisecond instead of once per line: under load many access lines share a millisecond, and
 * `Date#toISOString` was a measurable part of each line (BENCHMARKS.md, session 3).
 */
export function isoTimeCached(): string {
  const now = Date.now();
  if (now !== cachedMs) {
    cachedMs = now;
    cachedTime = `,"time":"${new Date(now).toISOString()}"`;
  }
  return cachedTime;
}

/** How often a buffered main log (`log.buffer`) writes what waits, whatever its size. */
export const LOG_FLUSH_MS = 250;

export function createLogger(config: Pick<LogConfig, 'level' | 'file'> & { readonly buffer?: number }, destination?: pino.DestinationStream): Logger {
  const options: LoggerOptions = {
    level: config.level,
    base: { service: 'portcullis' },
    timestamp: isoTimeCached,
    redact: { paths: REDACT_PATHS, censor: CENSOR },
    formatters: { level: (label) => ({ level: label }) },
  };
  if (destination) return pino(options, destination);
  // `log.buffer`: fewer, larger writes. Each write is a thread-pool job and its completion on the
  // event loop; one per access line cost the full pipeline ~5 % of its throughput on one core
  // (BENCHMARKS.md, session 4).
  const buffer = config.buffer ?? 0;
  // sonic-boom wants its largest single write (`maxWrite`, 16 KiB by default) above `minLength`.
  const batching = buffer > 0 ? { minLength: buffer, maxWrite: buffer + 16_384, periodicFlush: LOG_FLUSH_MS } : {};
  if (config.file) return pino(options, pino.destination({ dest: config.file, mkdir: true, sync: false, ...batching }));
  return pino(options, pino.destination({ dest: 1, sync: false, ...batching }));
}

/**
 * Query parameters that carry credentials in the wild (OAuth codes and tokens, API keys,
 * pre-signed URL signatures). Compared case-insensitively.
 */
const SECRET_PARAMS = new Set([
  'access_token', 'id_token', 'refresh_token', 'token', 'code', 'client_secret', 'password', 'passwd',
  'pwd', 'secret', 'api_key', 'apikey', 'key', 'auth', 'authorization', 'session', 'sessionid', 'sig',
  'signature', 'x-amz-signature', 'x-amz-credential', 'x-amz-security-token', 'jwt', 'assertion',
]);

/** `path?query` with secret-looking query values replaced; the path itself is logged as is. */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q === -1) return url;
  const parts = url.slice(q + 1).split('&');
  let changed = false;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    let name = part.slice(0, eq);
    try {
      name = decodeURIComponent(name.replace(/\+/g, ' '));
    } catch {
      // keep the raw name; an undecodable name is not one of ours
    }
    if (SECRET_PARAMS.has(name.toLowerCase())) {
      parts[i] = `${part.slice(0, eq)}=${CENSOR}`;
      changed = true;
    }
  }
  return changed ? `${url.slice(0, q)}?${parts.join('&')}` : url;
}
