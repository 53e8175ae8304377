// The main logger's line format: the cached timestamp is pino's isoTime, millisecond for millisecond.
import t from 'tap';
import pino from 'pino';
import { Writable } from 'node:stream';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, isoTimeCached, LOG_FLUSH_MS, redactUrl, writeAccessLine, type AccessLine } from '../../src/observability/logging.js';

/** Date.now() returns one fixed millisecond until the test ends. */
function freezeClock(t: { teardown(fn: () => void): void }): void {
  const realNow = Date.now;
  Date.now = () => 1_764_979_930_123;
  t.teardown(() => {
    Date.now = realNow;
  });
}

/** A destination that keeps each line written to it. */
function captureLines(): { lines: string[]; sink: Writable } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { lines, sink };
}

t.test('isoTimeCached gives what pino.stdTimeFunctions.isoTime gives, for every millisecond', async (t) => {
  const realNow = Date.now;
  t.teardown(() => {
    Date.now = realNow;
  });
  // Same millisecond twice, the next one, a jump back (clock stepped), and a far one.
  for (const ms of [1_764_979_930_123, 1_764_979_930_123, 1_764_979_930_124, 1_764_979_929_000, 4_102_444_800_000]) {
    Date.now = () => ms;
    t.equal(isoTimeCached(), pino.stdTimeFunctions.isoTime(), `at ${ms}`);
  }
});

t.test('log lines carry an ISO time and redact credentials', async (t) => {
  const { lines, sink } = captureLines();
  const logger = createLogger({ level: 'info', file: null }, sink);
  logger.info({ headers: { authorization: 'Bearer SECRET' }, path: redactUrl('/cb?code=SECRET&x=1') }, 'hello');
  const line = JSON.parse(lines[0]!) as { time: string; headers: { authorization: string }; path: string };
  t.match(line.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  t.ok(Math.abs(Date.parse(line.time) - Date.now()) < 5_000, 'the time is now');
  t.equal(line.headers.authorization, '[REDACTED]');
  t.equal(line.path, '/cb?code=[REDACTED]&x=1');
  t.notMatch(lines[0]!, /SECRET/);
});

t.test('redactUrl: credential names in the structured spellings frameworks read as the plain name', async (t) => {
  const cases: [string, string][] = [
    ['/q?access_token[]=S1&x=1', '/q?access_token[]=[REDACTED]&x=1'],
    ['/q?access_token%5B%5D=S2', '/q?access_token%5B%5D=[REDACTED]'],
    ['/q?access_token[0]=S3', '/q?access_token[0]=[REDACTED]'],
    ['/q?auth[access_token]=S4', '/q?auth[access_token]=[REDACTED]'],
    ['/q?user[Password]=S5', '/q?user[Password]=[REDACTED]'],
    ['/q?oauth.refresh_token=S6', '/q?oauth.refresh_token=[REDACTED]'],
    ['/q?a[b][client_secret]=S7', '/q?a[b][client_secret]=[REDACTED]'],
  ];
  for (const [url, want] of cases) t.equal(redactUrl(url), want, url);
  // Names that end in `key` or name an assertion or a one-time password.
  for (const name of ['subscription-key', 'private_key', 'sessionKey', 'access_key', 'api-key', 'key', 'client_assertion', 'otp', 'X-Goog-Credential']) {
    t.equal(redactUrl(`/q?${name}=S&page=2`), `/q?${name}=[REDACTED]&page=2`, name);
  }
  const plain = '/q?page[size]=10&sort=name&filter.kind=x&tags[]=a&keys=3&keyword=x';
  t.equal(redactUrl(plain), plain, 'structured names without a credential part are logged as sent');
});

t.test('log.buffer reaches the destination as batching settings; 0 adds no batching of its own (a window\'s lines are still one write)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-log-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // The logger's stream is the reopenable output; its target the window batcher (log-batch.ts); sonic-boom is behind that.
  const streamOf = (l: pino.Logger) =>
    (l as unknown as Record<symbol, { target: { sink: { minLength: number; _periodicFlush: number } } }>)[pino.symbols.streamSym]!.target.sink;
  const buffered = createLogger({ level: 'info', file: join(dir, 'a.log'), buffer: 8192 });
  t.equal(streamOf(buffered).minLength, 8192);
  t.equal(streamOf(buffered)._periodicFlush, LOG_FLUSH_MS);
  const direct = createLogger({ level: 'info', file: join(dir, 'b.log'), buffer: 0 });
  t.equal(streamOf(direct).minLength, 0);
  t.equal(streamOf(direct)._periodicFlush, 0);
  buffered.info('one line');
  await new Promise<void>((r) => buffered.flush(() => r()));
  t.match(readFileSync(join(dir, 'a.log'), 'utf8'), /one line/, 'flush() writes what waits');
});

t.test('writeAccessLine writes, byte for byte, the line pino writes for the same fields', async (t) => {
  freezeClock(t); // both lines of a pair in the same millisecond
  const { lines, sink } = captureLines();
  const base: AccessLine = {
    request_id: 'b7c1f0e2-6d3a-4c8e-9a41-2f5d7e8c9b10', ip: '203.0.113.7', method: 'GET', host: 'app.example.com', path: '/api/items?page=2',
    status: 200, bytes: 1050, duration_ms: 1.234, site: 'app', route: 'api', upstream: 'http://10.0.0.5:8080', user: 'alice', reason: undefined, http: '1.1',
  };
  const strings = [
    '', 'plain', 'with "quotes"', 'back\\slash', 'new\nline', 'nul\u0000', 'unit\u001f', 'del\u007f', 'tab\tend', 'caf\u00e9', 'emoji \u{1F600}',
    '"'.repeat(120), 'x'.repeat(150), `${'y'.repeat(101)}\n`, '\\'.repeat(99), '</script><script>alert(1)</script>', '\u2028\u2029',
  ];
  const cases: Array<[string, AccessLine]> = [
    ['typical', base],
    ['every optional field left out', { ...base, host: undefined, bytes: undefined, site: undefined, route: undefined, upstream: undefined, user: undefined, reason: undefined }],
    ['a reason, a cut response', { ...base, status: 499, reason: 'client_closed', bytes: 0 }],
    ['HTTP/2, a whole-number duration', { ...base, http: '2.0', duration_ms: 3 }],
    ['non-finite numbers', { ...base, duration_ms: Number.NaN, bytes: Number.POSITIVE_INFINITY }],
  ];
  // Test names in ASCII: a raw U+2028 in a name breaks the TAP stream the runner reads.
  const label = (s: string) => JSON.stringify(s).slice(0, 30).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  for (const s of strings) {
    cases.push([`path ${label(s)}`, { ...base, path: s }]);
    cases.push([`host/user/request id ${label(s)}`, { ...base, host: s, user: s, request_id: s, reason: s }]);
  }
  for (const logger of [createLogger({ level: 'info', file: null }, sink), createLogger({ level: 'info', file: null }, sink).child({ worker: 2 })]) {
    for (const [name, fields] of cases) {
      lines.length = 0;
      logger.info({ type: 'access', ...fields }, 'request');
      writeAccessLine(logger, fields);
      t.equal(lines.length, 2, name);
      t.equal(lines[1], lines[0], name);
    }
  }

  // Lone surrogates: pino passes short strings through raw (the file then holds U+FFFD); the
  // access line escapes them, so the value read back is the value logged.
  for (const s of ['\ud800', 'a\udfffb', `${'z'.repeat(20)}\ud83d`]) {
    lines.length = 0;
    writeAccessLine(createLogger({ level: 'info', file: null }, sink), { ...base, path: s, user: s });
    const line = lines[0]!;
    t.notMatch(line, /\p{Cs}/u, 'no lone surrogate reaches the destination');
    const parsed = JSON.parse(line) as { path: string; user: string };
    t.equal(parsed.path, s);
    t.equal(parsed.user, s);
  }
});

t.test('writeAccessLine falls back to pino for loggers whose format it does not own', async (t) => {
  freezeClock(t); // both lines of a pair in the same millisecond
  const { lines, sink } = captureLines();
  const fields: AccessLine = {
    request_id: 'r1', ip: '127.0.0.1', method: 'POST', host: undefined, path: '/x', status: 201, bytes: undefined, duration_ms: 0.5,
    site: 's', route: 'r', upstream: undefined, user: undefined, reason: undefined, http: '1.1',
  };
  // A logger with other options (here a mixin and pino's numeric levels) keeps its own format.
  writeAccessLine(pino({ mixin: () => ({ extra: 1 }) }, sink), fields);
  const own = JSON.parse(lines[0]!) as Record<string, unknown>;
  t.equal(own.level, 30);
  t.equal(own.extra, 1);
  t.equal(own.type, 'access');
  t.equal(own.status, 201);
  t.equal(own.msg, 'request');
  // A child made with its own options formats lines its own way: redaction, serializers, a
  // message prefix, a log formatter are all honoured (the same line as its info()).
  const root = createLogger({ level: 'info', file: null }, sink);
  const children: Array<[string, pino.Logger]> = [
    ['redact', root.child({}, { redact: ['user', 'path'] })],
    ['serializers', root.child({}, { serializers: { user: (u: string) => `<${u}>` } })],
    ['msgPrefix', root.child({}, { msgPrefix: '[w] ' })],
    ['formatters.log', root.child({}, { formatters: { log: (o: object) => ({ ...o, extra: true }) } })],
  ];
  for (const [name, child] of children) {
    lines.length = 0;
    child.info({ type: 'access', ...fields, user: 'alice' }, 'request');
    writeAccessLine(child, { ...fields, user: 'alice' });
    t.equal(lines.length, 2, name);
    t.equal(lines[1], lines[0], `child with ${name}: the line its own info() writes`);
  }
  t.match(lines[0]!, /"extra":true/);
  lines.length = 0;
  writeAccessLine(root.child({}, { redact: ['user'] }), { ...fields, user: 'alice' });
  t.notMatch(lines[0]!, /alice/, 'a child that redacts the user never writes it');
  // A multistream wants each line's metadata: it gets the ordinary call.
  lines.length = 0;
  const multi = pino.multistream([{ stream: sink, level: 'info' }]);
  writeAccessLine(createLogger({ level: 'info', file: null }, multi), fields);
  t.equal((JSON.parse(lines[0]!) as { path: string }).path, '/x');
  t.equal(lines.length, 1);
});
