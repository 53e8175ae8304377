import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import {
  createSecurityEvents,
  openSecurityLog,
  SECURITY_EVENTS,
  COMMON_SECURITY_FIELDS,
  MAX_FIELD_LENGTH,
  type SecurityEventName,
} from '../../src/observability/events.js';
import { isGatewayError } from '../../src/errors.js';

function memoryLogger(level = 'info') {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level }, stream), lines };
}

const ALL: SecurityEventName[] = [
  'auth_failed', 'access_denied', 'rate_limited', 'banned', 'csrf_rejected',
  'config_reloaded', 'config_rejected', 'cert_issued', 'cert_renewal_failed', 'upstream_down',
];

t.test('the table lists exactly the ten events, each with a level, description and fields', async (t) => {
  t.same(SECURITY_EVENTS.map((e) => e.name), ALL);
  for (const e of SECURITY_EVENTS) {
    t.ok(['info', 'warn', 'error'].includes(e.level), e.name);
    t.ok(e.description.length > 10, e.name);
    for (const f of e.fields) t.notOk(COMMON_SECURITY_FIELDS.includes(f), `${e.name}.${f} is not a duplicate of a common field`);
  }
  t.same(COMMON_SECURITY_FIELDS, ['ip', 'user', 'site', 'route', 'reason', 'request_id']);
});

t.test('every event carries event and security: true at its level, with the given fields', async (t) => {
  const { logger, lines } = memoryLogger();
  const ev = createSecurityEvents(logger);
  for (const name of ALL) ev.emit(name, { ip: '203.0.113.7', site: 'app', request_id: 'r1' });
  await new Promise((r) => setImmediate(r));
  t.equal(lines.length, ALL.length);
  const levelNum = { info: 30, warn: 40, error: 50 } as const;
  for (const [i, e] of SECURITY_EVENTS.entries()) {
    const l = lines[i];
    t.equal(l?.event, e.name);
    t.equal(l?.security, true);
    t.equal(l?.msg, e.name);
    t.equal(l?.level, levelNum[e.level], `${e.name} level`);
    t.equal(l?.ip, '203.0.113.7');
    t.equal(l?.request_id, 'r1');
  }
});

t.test('event-specific fields', async (t) => {
  const { logger, lines } = memoryLogger();
  const ev = createSecurityEvents(logger);
  ev.emit('banned', { ip: '198.51.100.1', key: '198.51.100.1', duration_ms: 900_000, failures: 10 });
  ev.emit('config_rejected', { file: '/etc/portcullis/gateway.yml', problems: ['gateway.yml:3:5: sites.0.upsteam: unknown key "upsteam"'] });
  ev.emit('access_denied', { user: 'alice', route: 'app:admin', reason: 'missing_role', required_roles: ['admin'] });
  t.match(lines[0], { event: 'banned', key: '198.51.100.1', duration_ms: 900000, failures: 10 });
  t.match(lines[1], { event: 'config_rejected', problems: ['gateway.yml:3:5: sites.0.upsteam: unknown key "upsteam"'] });
  t.match(lines[2], { user: 'alice', reason: 'missing_role', required_roles: ['admin'] });
});

t.test('attack: fields cannot forge event/security/level/msg, and secrets are not logged', async (t) => {
  const { logger, lines } = memoryLogger();
  const ev = createSecurityEvents(logger);
  const jwt = 'eyJhbGciOiJSUzI1NiJ9.' + 'a'.repeat(600) + '.sig';
  ev.emit('auth_failed', {
    ip: '203.0.113.9',
    reason: jwt, // a careless caller passing the token as the reason
    ...({ event: 'config_reloaded', security: false, level: 10, msg: 'all good', time: 0 } as object),
    ...({ token: 'sekrit-token', authorization: 'Bearer sekrit', client_secret: 'sekrit2', headers: { cookie: 'sid=sekrit3', accept: '*/*' } } as object),
  });
  const l = lines[0]!;
  t.equal(l.event, 'auth_failed');
  t.equal(l.security, true);
  t.equal(l.level, 40);
  t.equal(l.msg, 'auth_failed');
  t.not(l.time, 0);
  t.equal(l.token, '[redacted]');
  t.equal(l.authorization, '[redacted]');
  t.equal(l.client_secret, '[redacted]');
  t.same(l.headers, { cookie: '[redacted]', accept: '*/*' });
  const raw = JSON.stringify(l);
  t.notMatch(raw, /sekrit/);
  t.ok((l.reason as string).length <= MAX_FIELD_LENGTH + 1, 'long strings are truncated');
  t.notMatch(raw, /\.sig/);
});

t.test('unknown event names are refused (untyped callers)', async (t) => {
  const { logger } = memoryLogger();
  const ev = createSecurityEvents(logger);
  t.throws(() => ev.emit('login_ok' as SecurityEventName, {}), TypeError);
});

t.test('openSecurityLog(null) is a child of the main logger', async (t) => {
  const { logger, lines } = memoryLogger();
  const sec = openSecurityLog(null, logger);
  createSecurityEvents(sec.logger).emit('csrf_rejected', { site: 'app', origin: 'https://evil.example', method: 'POST' });
  await sec.close();
  t.match(lines[0], { log: 'security', event: 'csrf_rejected', security: true, origin: 'https://evil.example' });
});

t.test('openSecurityLog(file) writes JSON lines to the file, creates the directory, flushes on close', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pc-events-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nested', 'deeper', 'security.log');
  const main = memoryLogger();
  const sec = openSecurityLog(file, main.logger);
  const ev = createSecurityEvents(sec.logger);
  for (let i = 0; i < 100; i++) ev.emit('rate_limited', { ip: `192.0.2.${i}`, site: 'app', route: 'app:0', limit: 100, window_ms: 60000 });
  ev.emit('cert_issued', { host: 'app.example.com', not_after: '2030-01-01T00:00:00.000Z' });
  await sec.close();
  await sec.close(); // idempotent
  const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(lines.length, 101, 'everything flushed');
  t.match(lines[0], { event: 'rate_limited', security: true, log: 'security', ip: '192.0.2.0' });
  t.match(lines[100], { event: 'cert_issued', level: 'info', service: 'portcullis' });
  t.match(lines[100]!.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'ISO time, as in the main log');
  t.equal(main.lines.length, 0, 'nothing leaked into the main log');

  // Appends, never truncates, on a second open (restart).
  const again = openSecurityLog(file, main.logger);
  createSecurityEvents(again.logger).emit('config_reloaded', { file: '/etc/portcullis/gateway.yml' });
  await again.close();
  t.equal(readFileSync(file, 'utf8').trim().split('\n').length, 102);
});

t.test('an unwritable security_file fails at open with a GatewayError', { skip: process.getuid?.() === 0 ? 'running as root: file permissions are not enforced' : false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pc-events-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'ro.log');
  writeFileSync(file, '');
  chmodSync(file, 0o400);
  t.throws(() => openSecurityLog(file, memoryLogger().logger), (e: unknown) => isGatewayError(e) && e.code === 'GW_ERR_CONFIG_INVALID');
});

t.test('a security_file path under a regular file fails at open with a GatewayError', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pc-events-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const blocker = join(dir, 'not-a-dir');
  writeFileSync(blocker, '');
  let err: unknown;
  try {
    openSecurityLog(join(blocker, 'security.log'), memoryLogger().logger);
  } catch (e) {
    err = e;
  }
  t.ok(isGatewayError(err) && err.code === 'GW_ERR_CONFIG_INVALID');
  t.match((err as Error).message, /log\.security_file/);
});

t.test('openSecurityLog: a FIFO (or anything but a regular file) is refused at once, never waited on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-secfifo-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'events.fifo');
  execFileSync('mkfifo', [fifo]);
  const started = Date.now();
  t.throws(() => openSecurityLog(fifo, pino({ level: 'silent' })), /log\.security_file .* cannot be opened for writing/, 'no reader: refused (ENXIO), not a blocked open');
  t.ok(Date.now() - started < 1000, 'at once');
  t.throws(() => openSecurityLog('/dev/null', pino({ level: 'silent' })), /is not a regular file/, 'a device is no audit log');
});
