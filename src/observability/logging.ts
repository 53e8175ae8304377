/**
 * The main pino logger and the redaction rules every log line goes through.
 *
 * Credentials never reach a log: header values are censored by pino's redaction, and token-like
 * query parameters are masked before a path is logged.
 */
import { closeSync, constants, existsSync, fstatSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import pino, { type Logger, type LoggerOptions } from 'pino';
import type { LogConfig } from '../config/types.js';
import { GatewayError } from '../errors.js';
import { LogBatchDestination, type LineSink } from './log-batch.js';

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
  // A URL logged by a library (@fastify/http-proxy's debug line for each proxied WebSocket)
  // keeps its path, with token-like query values redacted as in the access line.
  'url',
];

/** `url` (a string) is logged with its secret-looking query values redacted; the rest is censored. */
function censor(value: unknown, path: string[]): unknown {
  return path.length === 1 && path[0] === 'url' && typeof value === 'string' ? redactUrl(value) : CENSOR;
}

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

/** Where a main log writes: `log.file` (else stdout) and `log.buffer`. */
export interface LogOutputSettings {
  readonly file: string | null;
  readonly buffer?: number;
}

export interface CreateLoggerOptions extends LogOutputSettings {
  readonly level: LogConfig['level'];
  /**
   * stdout written one line per synchronous write: a cluster's processes share the pipe, and
   * only writes up to PIPE_BUF are atomic (a file is opened O_APPEND, where whole writes never
   * interleave).
   */
  readonly linePerWrite?: boolean;
}

/**
 * The main logger. Without `destination`, it writes where `config` says through a
 * {@link LogOutput}, which a reload (and every SIGHUP, for log rotation) reopens or moves with
 * {@link prepareLogOutput}; a log file that cannot be written is a GatewayError now, never a
 * silently empty log.
 */
export function createLogger(config: CreateLoggerOptions, destination?: pino.DestinationStream): Logger {
  return markOurs(pino(loggerOptions(config.level), destination ?? new LogOutput(config, config.linePerWrite === true)));
}

/** The main log's line format (level names, ISO time, redaction); the security file's too. */
export function loggerOptions(level: LogConfig['level']): LoggerOptions {
  return {
    level,
    base: { service: 'portcullis' },
    timestamp: isoTimeCached,
    redact: { paths: REDACT_PATHS, censor },
    formatters: { level: (label) => ({ level: label }) },
    hooks: { streamWrite: escapeRawControls },
  };
}

/**
 * Opens a log file for appending (its directory created) and checks it now, so that a path that
 * cannot be written fails the start or the reload with a message naming `setting`, instead of
 * an asynchronous error after the gateway reported ready (or no log at all). O_NONBLOCK: a FIFO
 * without a reader would block the open, and with it a thread of the pool or the whole process,
 * forever; only a regular file is a log here.
 */
export function openLogFile(file: string, setting: string, mode = 0o666): number {
  let fd: number;
  try {
    makeDirectories(dirname(file));
    fd = openSync(file, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NONBLOCK, mode);
  } catch (cause) {
    throw new GatewayError('GW_ERR_CONFIG_INVALID', `${setting} ${file} cannot be opened for writing (${(cause as NodeJS.ErrnoException).code ?? 'error'})`, { cause });
  }
  let regular = false;
  try {
    regular = fstatSync(fd).isFile();
  } catch {
    // not statable: not a file we write to
  }
  if (!regular) {
    closeSync(fd);
    throw new GatewayError('GW_ERR_CONFIG_INVALID', `${setting} ${file} is not a regular file`);
  }
  return fd;
}

/**
 * `mkdir -p`, one level at a time: Node's recursive mkdir never returns for a path under a
 * directory that refuses new entries with ENOENT (`/proc`, seen on Node 20 and 24).
 */
function makeDirectories(dir: string): void {
  const missing: string[] = [];
  for (let d = dir; !existsSync(d) && dirname(d) !== d; d = dirname(d)) missing.push(d);
  for (const d of missing.reverse()) {
    try {
      mkdirSync(d);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

/** What a {@link LogOutput} writes to at a time. */
interface Target extends pino.DestinationStream {
  flush?(cb?: (err?: Error) => void): void;
  flushSync?(): void;
  end?(): void;
}

/**
 * A log output opened but not yet in use: a reload opens every file it will write before it
 * changes anything, and commits them only once the whole configuration is applied.
 */
export interface PreparedLog {
  commit(): void;
  discard(): void;
}

const NOTHING_TO_DO: PreparedLog = { commit() {}, discard() {} };

/** A main log's writes failed (disk full, file system gone): said once on stderr, never a crash. */
function reportWriteFailure(file: string | null): (err: Error) => void {
  let said = false;
  return (err) => {
    if (said) return;
    said = true;
    process.stderr.write(`portcullis: writing the log to ${file ?? 'stdout'} failed: ${err.message}\n`);
  };
}

function openTarget(settings: LogOutputSettings, linePerWrite: boolean): Target {
  // (`file` left out by a JavaScript caller: stdout, as null.)
  const file = settings.file ?? null;
  if (file === null && linePerWrite) return pino.destination({ dest: 1, sync: true });
  // `log.buffer`: fewer, larger writes. Each write is a thread-pool job and its completion on the
  // event loop; one per access line cost the full pipeline ~5 % of its throughput on one core
  // (BENCHMARKS.md, session 4).
  const buffer = settings.buffer ?? 0;
  // sonic-boom wants its largest single write (`maxWrite`, 16 KiB by default) above `minLength`.
  const batching = buffer > 0 ? { minLength: buffer, maxWrite: buffer + 16_384, periodicFlush: LOG_FLUSH_MS } : {};
  const fd = file === null ? 1 : openLogFile(file, 'log.file');
  // Either way, the lines of a few milliseconds reach sonic-boom as one write, as Buffers, not
  // strings (log-batch.ts).
  const sink = pino.destination({ dest: fd, sync: false, contentMode: 'buffer', maxLength: MAX_PENDING_BYTES, ...batching });
  let failed = false;
  const report = reportWriteFailure(file);
  sink.on('error', (err: Error) => {
    failed = true;
    report(err);
  });
  // Typed for strings; in buffer mode sonic-boom's write takes the Buffers LogBatchDestination hands it.
  const batched = new LogBatchDestination(sink as unknown as LineSink);
  // A file that failed a write never finishes an end() (sonic-boom waits for the write it will
  // not retry): replaced by a reload or rotation, it is closed at once and what it holds dropped,
  // so that its descriptor (and a deleted file's disk space) is given back.
  const end = batched.end.bind(batched);
  batched.end = (): void => (failed ? sink.destroy() : end());
  return batched;
}

/**
 * What a log destination holds while its writes do not keep up, at most: past it, lines are
 * dropped rather than held (a full disk must not grow the gateway's memory without bound).
 */
export const MAX_PENDING_BYTES = 16 * 1024 * 1024;

/**
 * The main log's destination, whose target (a file or stdout, and its batching) can be replaced
 * while the process runs: every logger and child keeps writing here, and lines go to the new
 * target from the commit on. The old target is ended, which writes what it still holds and
 * closes its file.
 */
export class LogOutput implements pino.DestinationStream {
  #target: Target;
  #settings: LogOutputSettings;
  readonly #linePerWrite: boolean;

  constructor(settings: LogOutputSettings, linePerWrite: boolean) {
    this.#target = openTarget(settings, linePerWrite);
    this.#settings = { file: settings.file ?? null, buffer: settings.buffer ?? 0 };
    this.#linePerWrite = linePerWrite;
  }

  /** The target's own object (for tests: the sonic-boom behind the batching). */
  get target(): unknown {
    return this.#target;
  }

  write(line: string): void {
    this.#target.write(line);
  }

  flush(cb?: (err?: Error) => void): void {
    if (this.#target.flush) this.#target.flush(cb);
    else cb?.();
  }

  flushSync(): void {
    this.#target.flushSync?.();
  }

  end(): void {
    this.#target.end?.();
  }

  /**
   * Opens what `settings` name: a file is opened anew even when its path is the same, so a
   * rotated file (moved away, logrotate's `create`) is left for a new one at the path.
   * stdout with the same batching has nothing to reopen.
   */
  prepare(settings: LogOutputSettings): PreparedLog {
    const next = { file: settings.file ?? null, buffer: settings.buffer ?? 0 };
    if (next.file === null && this.#settings.file === null && next.buffer === this.#settings.buffer) return NOTHING_TO_DO;
    const target = openTarget(next, this.#linePerWrite);
    let done = false;
    return {
      commit: () => {
        if (done) return;
        done = true;
        const old = this.#target;
        this.#target = target;
        this.#settings = next;
        old.end?.();
      },
      discard: () => {
        if (done) return;
        done = true;
        target.end?.();
      },
    };
  }
}

/**
 * Opens the output `settings` name for `logger`'s (a createLogger logger's, or one of its
 * children's) destination; a logger given its own destination has nothing to reopen.
 */
export function prepareLogOutput(logger: Logger, settings: LogOutputSettings): PreparedLog {
  const stream = (logger as unknown as PinoInternals)[streamSym];
  return stream instanceof LogOutput ? stream.prepare(settings) : NOTHING_TO_DO;
}

/**
 * Query parameter names that carry credentials in the wild and contain none of the words of
 * {@link SECRET_PART} (OAuth codes, API keys, pre-signed URL signatures), compacted.
 */
const SECRET_PARAMS = new Set(['code', 'pwd', 'auth', 'authorization', 'session', 'sessionid', 'sig', 'jwt', 'otp']);
/**
 * What a name that carries a credential contains, once compacted (lower case, without `-`, `_`
 * and spaces): `accessToken`, `access-token`, `oauth_token`, `client_secret`, `X-Goog-Signature`,
 * `X-Amz-Credential`, `client_assertion`, `passwd`…, or how it ends: `key`, `api-key`,
 * `subscription-key` (Azure API Management), `private_key`, `sessionKey`. An over-eager match
 * only hides a value from the log.
 */
const SECRET_PART = /token|secret|passw|signature|credential|assertion|key$/;

function secretPart(part: string): boolean {
  const compact = part.replace(/[-_ ]/g, '');
  return SECRET_PARAMS.has(compact) || SECRET_PART.test(compact);
}

/**
 * Whether a (decoded) query parameter name carries a credential. Frameworks read structured
 * names (PHP, Rails and `qs`: `access_token[]`, `access_token[0]`, `auth[access_token]`; `qs`
 * with `allowDots`: `auth.access_token`) as the plain one, so each part of such a name counts;
 * and PHP reads `access token` and ` password` as `access_token` and `password` (spaces and dots
 * become `_`, leading spaces go), which the compaction covers.
 */
function secretName(name: string): boolean {
  const lower = name.toLowerCase();
  if (secretPart(lower)) return true;
  if (!/[[\].]/.test(lower)) return false;
  for (const part of lower.split(/[[\].]+/)) if (part !== '' && secretPart(part)) return true;
  return false;
}

// DEL, the C1 controls (U+0085 NEL and U+009B CSI among them) and the Unicode line and paragraph
// separators: JSON.stringify and pino leave them raw, and log readers split lines at them
// (Python's splitlines) or terminals obey them.
const RAW_CONTROL = /[\u007f-\u009f\u2028\u2029]/;
const RAW_CONTROLS = /[\u007f-\u009f\u2028\u2029]/g;
const escapeControl = (ch: string): string => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;

/**
 * A JSON text with those characters escaped (`\u0085`): it decodes to the same value. Every log
 * line goes through it (pino's `streamWrite` hook, and the access line's own writer).
 */
export function escapeRawControls(json: string): string {
  return RAW_CONTROL.test(json) ? json.replace(RAW_CONTROLS, escapeControl) : json;
}

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
    if (secretName(name)) {
      parts[i] = `${part.slice(0, eq)}=${CENSOR}`;
      changed = true;
    }
  }
  return changed ? `${url.slice(0, q)}?${parts.join('&')}` : url;
}

/** The fields of one access line, in the order they are written; `undefined` ones are left out. */
export interface AccessLine {
  readonly request_id: string;
  readonly ip: string;
  readonly method: string;
  readonly host: string | undefined;
  readonly path: string;
  readonly status: number;
  readonly bytes: number | undefined;
  readonly duration_ms: number;
  readonly site: string | undefined;
  readonly route: string | undefined;
  readonly upstream: string | undefined;
  readonly user: string | undefined;
  readonly reason: string | undefined;
  readonly http: string;
}

/**
 * The logger `createLogger` made, on it and (through the prototype) on its children: the loggers
 * whose line format `writeAccessLine` reproduces.
 */
const OURS = Symbol('portcullis.logger');

function markOurs(logger: Logger): Logger {
  (logger as unknown as Record<symbol, Logger>)[OURS] = logger;
  return logger;
}

interface PinoInternals {
  [key: symbol]: unknown;
}
const { streamSym, chindingsSym, timeSym } = pino.symbols;
// What changes a line's format. A child made with options (`redact`, `serializers`, `formatters`,
// `msgPrefix`…) gets its own value of one of these; a child with bindings only shares its root's.
const FORMAT_SYMBOLS: readonly symbol[] = (['serializersSym', 'stringifiersSym', 'formattersSym', 'msgPrefixSym', 'mixinSym', 'hooksSym', 'messageKeySym'] as const).map(
  (name) => (pino.symbols as unknown as Record<string, symbol>)[name]!,
);
// pino marks multistream destinations with this global symbol: they want the line's metadata.
const NEEDS_METADATA = Symbol.for('pino.metadata');

function formatIsOurs(l: PinoInternals): boolean {
  const root = l[OURS] as PinoInternals | undefined;
  if (root === undefined) return false;
  if (root === l) return true;
  for (let i = 0; i < FORMAT_SYMBOLS.length; i++) if (l[FORMAT_SYMBOLS[i]!] !== root[FORMAT_SYMBOLS[i]!]) return false;
  return true;
}

/**
 * One access line (`"type":"access"`, message `request`) at level info, byte for byte the line
 * `logger.info({ type: 'access', ...fields }, 'request')` writes, but serialized by V8's
 * JSON.stringify instead of pino's generic object walk. There is one per request, and pino's walk
 * allocated ~4 KB for it (this ~1 KB), the largest single share of the full pipeline's garbage
 * (BENCHMARKS.md, session 5). Any other logger (a test's own pino, a child made with its own
 * options, a multistream) gets the ordinary `logger.info` call. The caller checks the level first.
 *
 * Strings come out as pino writes them, except lone surrogates: JSON.stringify escapes them
 * (`\ud800`) where pino passes short strings through raw, to reach the file as U+FFFD.
 */
export function writeAccessLine(logger: Logger, f: AccessLine): void {
  const l = logger as unknown as PinoInternals;
  const stream = l[streamSym] as { write(s: string): unknown; [NEEDS_METADATA]?: boolean };
  if (stream[NEEDS_METADATA] === true || !formatIsOurs(l)) {
    logger.info({ type: 'access', ...f }, 'request');
    return;
  }
  // pino's key order; JSON.stringify leaves out undefined values and writes non-finite numbers
  // as null, as pino does.
  const json = escapeRawControls(JSON.stringify({
    type: 'access',
    request_id: f.request_id,
    ip: f.ip,
    method: f.method,
    host: f.host,
    path: f.path,
    status: f.status,
    bytes: f.bytes,
    duration_ms: f.duration_ms,
    site: f.site,
    route: f.route,
    upstream: f.upstream,
    user: f.user,
    reason: f.reason,
    http: f.http,
    msg: 'request',
  }));
  stream.write(`{"level":"info"${(l[timeSym] as () => string)()}${l[chindingsSym] as string},${json.slice(1)}\n`);
}
