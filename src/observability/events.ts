/**
 * The security-event log: one JSON line per security-relevant decision, separate from the access
 * log so it can be shipped to a SIEM or kept longer.
 *
 * Every line carries `event` (a stable name from `SECURITY_EVENTS`) and `security: true`, plus the
 * common fields `ip`, `user`, `site`, `route`, `reason`, `request_id` when known. The event names
 * and field names are a public interface (alert rules and SIEM queries match on them): add, never
 * rename.
 *
 * Secrets never reach this log: callers pass identifiers, not credentials, and as a second line of
 * defence any field whose NAME looks like a credential is replaced by `[redacted]`, and long
 * strings are truncated (a token pasted into a `reason` must not land in full).
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import { loggerOptions, MAX_PENDING_BYTES, openLogFile, prepareLogOutput, type LogOutputSettings, type PreparedLog } from './logging.js';

export type SecurityEventName =
  | 'auth_failed'
  | 'access_denied'
  | 'rate_limited'
  | 'banned'
  | 'csrf_rejected'
  | 'config_reloaded'
  | 'config_rejected'
  | 'cert_issued'
  | 'cert_renewal_failed'
  | 'upstream_down';

/** Fields any event may carry. `reason` is a short code (e.g. `expired`, `missing_role`), not a message. */
export interface CommonSecurityFields {
  readonly ip?: string;
  readonly user?: string;
  readonly site?: string;
  readonly route?: string;
  readonly reason?: string;
  readonly request_id?: string;
}

/** Event-specific fields, on top of the common ones. */
export interface SecurityEventFieldMap {
  auth_failed: { readonly issuer?: string };
  access_denied: { readonly required_roles?: readonly string[] };
  rate_limited: { readonly key?: string; readonly limit?: number; readonly window_ms?: number };
  banned: { readonly key?: string; readonly duration_ms?: number; readonly failures?: number };
  csrf_rejected: { readonly origin?: string; readonly method?: string };
  config_reloaded: { readonly file?: string };
  config_rejected: { readonly file?: string; readonly problems?: readonly string[] };
  cert_issued: { readonly host?: string; readonly hosts?: readonly string[]; readonly not_after?: string; readonly issuer?: string };
  cert_renewal_failed: { readonly host?: string; readonly hosts?: readonly string[]; readonly error?: string; readonly retry_at?: string };
  upstream_down: { readonly upstream?: string; readonly error?: string };
}

export type SecurityEventFields<E extends SecurityEventName> = CommonSecurityFields & SecurityEventFieldMap[E];

export interface SecurityEventInfo {
  readonly name: SecurityEventName;
  readonly level: 'info' | 'warn' | 'error';
  readonly description: string;
  /** Event-specific fields (the common ones are in `COMMON_SECURITY_FIELDS`). */
  readonly fields: readonly string[];
}

export const COMMON_SECURITY_FIELDS: readonly string[] = Object.freeze(['ip', 'user', 'site', 'route', 'reason', 'request_id']);

/** Every event, its level and fields — the README's table is generated from this. */
export const SECURITY_EVENTS: readonly SecurityEventInfo[] = Object.freeze([
  { name: 'auth_failed', level: 'warn', description: 'A request presented an invalid, expired or malformed token (HTTP 401, or 400 for two Authorization headers). A request without any token is not a failure.', fields: ['issuer'] },
  { name: 'access_denied', level: 'warn', description: 'An authenticated user lacked a required role, or the route is `access: deny` (HTTP 403).', fields: ['required_roles'] },
  { name: 'rate_limited', level: 'warn', description: 'A request exceeded a rate limit (HTTP 429).', fields: ['key', 'limit', 'window_ms'] },
  { name: 'banned', level: 'warn', description: 'A client key was banned after repeated authentication failures (`reason: auth_failures`, with `duration_ms` and `failures`), and each request refused while the ban lasts (`reason: ban_active`, HTTP 429: one event per refusal, as for rate limits).', fields: ['key', 'duration_ms', 'failures'] },
  { name: 'csrf_rejected', level: 'warn', description: 'A cross-site state-changing request was refused (HTTP 403).', fields: ['origin', 'method'] },
  { name: 'config_reloaded', level: 'info', description: 'A new configuration was loaded and is now active.', fields: ['file'] },
  { name: 'config_rejected', level: 'error', description: 'A configuration reload failed validation; the previous configuration stays active.', fields: ['file', 'problems'] },
  { name: 'cert_issued', level: 'info', description: 'A certificate was issued or renewed by ACME (`host`: its first name). The development CA only logs a warning.', fields: ['host', 'hosts', 'not_after', 'issuer'] },
  { name: 'cert_renewal_failed', level: 'error', description: 'A certificate order or renewal failed; the current certificate (if any) stays in use.', fields: ['host', 'hosts', 'error', 'retry_at'] },
  { name: 'upstream_down', level: 'error', description: 'An upstream could not be reached (connection refused, timed out or reset).', fields: ['upstream', 'error'] },
] as const satisfies readonly SecurityEventInfo[]);

const LEVELS: ReadonlyMap<SecurityEventName, SecurityEventInfo['level']> = new Map(SECURITY_EVENTS.map((e) => [e.name, e.level]));

/** Keys pino or this module own: a field must not overwrite them (log forging). */
const RESERVED = new Set(['event', 'security', 'level', 'time', 'msg', 'pid', 'hostname', 'v']);
/** Names that suggest a credential. `key` alone is allowed: it is the rate-limit key (ip/user). */
const SECRET_NAME = /(token|secret|password|passwd|authorization|cookie|credential|hmac|private|api_?key|session)/i;
/** Longer strings are cut: enough for a URL or an error summary, too short for a whole JWT. */
export const MAX_FIELD_LENGTH = 256;

function clean(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return value.length > MAX_FIELD_LENGTH ? `${value.slice(0, MAX_FIELD_LENGTH)}…` : value;
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return value;
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return depth > 2 ? '[array]' : value.slice(0, 50).map((v) => clean(v, depth + 1));
  if (typeof value === 'object') {
    if (depth > 2) return '[object]';
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = SECRET_NAME.test(k) ? '[redacted]' : clean(v, depth + 1);
    return out;
  }
  return undefined; // functions, symbols, bigint: never meaningful in an event
}

export interface SecurityEvents {
  emit<E extends SecurityEventName>(event: E, fields?: SecurityEventFields<E>): void;
}

/**
 * Events are written through `log`: a pino logger, or a SecurityLog (from `openSecurityLog`),
 * whose logger is read at each event since a reload may move it to another file.
 */
export function createSecurityEvents(log: Logger | SecurityLog): SecurityEvents {
  const source = 'prepare' in log ? log : { logger: log };
  return {
    emit(event, fields) {
      const level = LEVELS.get(event);
      if (level === undefined) throw new TypeError(`unknown security event "${String(event)}"`);
      const line: Record<string, unknown> = {};
      if (fields !== undefined) {
        for (const [k, v] of Object.entries(fields)) {
          if (RESERVED.has(k) || v === undefined) continue;
          line[k] = SECRET_NAME.test(k) ? '[redacted]' : clean(v, 0);
        }
      }
      line.event = event;
      line.security = true;
      source.logger[level](line, event);
    },
  };
}

export interface SecurityLog {
  /** The logger events are written through now (a reload may move `log.security_file`). */
  readonly logger: Logger;
  /**
   * A reload's `log.level`, for the main logger. pino hands a logger's new level down to its
   * children, the events' one included: that one is set back, since the events are an audit
   * trail that only `silent` quiets.
   */
  setMainLevel(level: LevelWithSilent): void;
  /**
   * Opens `log.security_file` as a reload (or a SIGHUP, for log rotation) names it: a file anew
   * even at the same path, so a rotated file is left for a new one. Throws a GatewayError when it
   * cannot be written; nothing changes until the commit.
   */
  prepare(file: string | null): PreparedLog;
  /** Flushes and closes the file (no-op for the main-log child). Safe to call twice. */
  close(): Promise<void>;
}

interface OpenedSecurityLog {
  readonly logger: Logger;
  readonly file: string | null;
  close(): Promise<void>;
}

/**
 * The logger security events go to: a dedicated file when `log.security_file` is set (appended,
 * parent directory created), else a child of the main logger tagged `log: "security"`.
 */
export function openSecurityLog(file: string | null, mainLogger: Logger, level: LevelWithSilent = 'info'): SecurityLog {
  // The events are an audit trail: `log.level: error` quiets the main log, not them (only
  // `silent` does, as it silences everything).
  const levelFor = (main: string): LevelWithSilent => (main === 'silent' ? 'silent' : level);
  let current = openOne(file, mainLogger, levelFor(mainLogger.level));
  let closed: Promise<void> | null = null;
  return {
    get logger() {
      return current.logger;
    },
    setMainLevel(main) {
      mainLogger.level = main;
      current.logger.level = levelFor(main);
    },
    prepare(next) {
      if (next === null && current.file === null) return { commit() {}, discard() {} };
      const opened = openOne(next, mainLogger, levelFor(mainLogger.level));
      let done = false;
      return {
        commit() {
          if (done) return;
          done = true;
          const old = current;
          current = opened;
          void old.close().catch(() => undefined);
        },
        discard() {
          if (done) return;
          done = true;
          void opened.close().catch(() => undefined);
        },
      };
    },
    close() {
      closed ??= current.close();
      return closed;
    },
  };
}

function openOne(file: string | null, mainLogger: Logger, level: LevelWithSilent): OpenedSecurityLog {
  if (file === null) return { logger: mainLogger.child({ log: 'security' }, { level }), file, close: () => Promise.resolve() };
  // Opened and checked synchronously: an unwritable path fails the start (or the reload) with a
  // clear error, instead of as an asynchronous 'error' event after the gateway reported ready.
  const fd = openLogFile(file, 'log.security_file', 0o640);
  const dest = pino.destination({ dest: fd, sync: false, maxLength: MAX_PENDING_BYTES });
  // A later write failure (disk full) must not crash the gateway through an unhandled 'error'
  // event: report it on the main log, which has a different destination.
  let failed = false;
  dest.on('error', (err: unknown) => {
    if (!failed) mainLogger.error({ err, file }, 'security log write failed');
    failed = true;
  });
  // The main log's format (level names, ISO time): an event reads the same wherever it is written.
  // The pid tells a cluster's processes apart in the one file they all append to.
  const logger = pino({ ...loggerOptions(level), base: { service: 'portcullis', pid: process.pid, log: 'security' } }, dest);
  let closed: Promise<void> | null = null;
  return {
    logger,
    file,
    close() {
      closed ??= new Promise<void>((resolve, reject) => {
        dest.once('close', () => resolve());
        // After a failed write end() would wait forever (at shutdown too): closed at once.
        if (failed) {
          dest.destroy();
          return;
        }
        dest.once('error', reject);
        // end() flushes the buffer before closing.
        dest.end();
      });
      return closed;
    },
  };
}

/**
 * The main log's output and the security log, opened as `settings` name them, for one commit:
 * both are opened (or neither, when one cannot be) before either is used.
 */
export function prepareLogFiles(
  mainLogger: Logger,
  securityLog: SecurityLog,
  settings: LogOutputSettings & { readonly securityFile: string | null },
): PreparedLog {
  const main = prepareLogOutput(mainLogger, settings);
  let security: PreparedLog;
  try {
    security = securityLog.prepare(settings.securityFile);
  } catch (err) {
    main.discard();
    throw err;
  }
  return {
    commit() {
      main.commit();
      security.commit();
    },
    discard() {
      main.discard();
      security.discard();
    },
  };
}
