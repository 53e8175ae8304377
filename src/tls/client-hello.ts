/**
 * A minimal, bounds-checked reader of the first TLS record of a connection, extracting only the
 * two ClientHello fields the front needs to route TLS-ALPN-01: server_name (RFC 6066 §3) and
 * application_layer_protocol_negotiation (RFC 7301 §3.1).
 *
 * It never decides anything about security: any input it does not fully understand is reported
 * as `invalid`, and the caller passes such connections to the real TLS server unchanged, which
 * then does the authoritative parsing (and rejects garbage). Every length is checked against the
 * enclosing structure before it is used.
 */

/** TLS record header: type(1) version(2) length(2), RFC 8446 §5.1. */
const RECORD_HEADER = 5;
/** RFC 8446 §5.1: a plaintext record fragment MUST NOT exceed 2^14 bytes. */
export const MAX_RECORD_PAYLOAD = 16384;
/** The most bytes the front ever buffers before deciding. */
export const MAX_HELLO_BYTES = RECORD_HEADER + MAX_RECORD_PAYLOAD;

const CONTENT_TYPE_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const SNI_HOST_NAME = 0;

export type ClientHelloResult =
  /** Not enough bytes yet to decide. */
  | { readonly kind: 'incomplete' }
  /** Not a TLS ClientHello we can read in one record (garbage, SSLv2, fragmented, malformed). */
  | { readonly kind: 'invalid'; readonly reason: string }
  | {
      readonly kind: 'hello';
      /** The first host_name entry, as sent (not normalized), or null without SNI. */
      readonly serverName: string | null;
      /** Offered ALPN protocol names in client order; empty without the extension. */
      readonly alpn: readonly string[];
    };

class Malformed extends Error {}

/** A cursor that refuses to read past `end`. */
class Reader {
  pos: number;
  constructor(
    private readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }
  get remaining(): number {
    return this.end - this.pos;
  }
  need(n: number, what: string): void {
    if (n < 0 || this.pos + n > this.end) throw new Malformed(`truncated ${what}`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++] as number;
  }
  u16(what: string): number {
    this.need(2, what);
    const v = ((this.buf[this.pos] as number) << 8) | (this.buf[this.pos + 1] as number);
    this.pos += 2;
    return v;
  }
  u24(what: string): number {
    this.need(3, what);
    const v = ((this.buf[this.pos] as number) << 16) | ((this.buf[this.pos + 1] as number) << 8) | (this.buf[this.pos + 2] as number);
    this.pos += 3;
    return v;
  }
  skip(n: number, what: string): void {
    this.need(n, what);
    this.pos += n;
  }
  /** A sub-reader over the next `n` bytes; this reader moves past them. */
  sub(n: number, what: string): Reader {
    this.need(n, what);
    const r = new Reader(this.buf, this.pos, this.pos + n);
    this.pos += n;
    return r;
  }
  bytes(n: number, what: string): Uint8Array {
    this.need(n, what);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

// RFC 6066 §3: HostName is ASCII, "without a trailing dot" (tolerated anyway: normalization strips
// it). We accept LDH plus `_` (seen in the wild) and reject anything else, including NUL bytes
// that could make names compare differently in C and JavaScript.
function isHostName(bytes: Uint8Array): boolean {
  if (bytes.length === 0 || bytes.length > 255) return false;
  for (const b of bytes) {
    const ok = (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || (b >= 0x30 && b <= 0x39) || b === 0x2d || b === 0x2e || b === 0x5f;
    if (!ok) return false;
  }
  return true;
}

function latin1(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

/**
 * Parse the first record of `buf` (the bytes received so far). Pure; never throws.
 * A ClientHello split over several records is reported as `invalid` (fragmentation is legal but
 * no ACME validator does it; such connections simply go to the normal listener).
 */
export function parseClientHello(buf: Uint8Array): ClientHelloResult {
  if (buf.length < RECORD_HEADER) {
    // Decide early on an obviously non-TLS first byte rather than waiting for 5 bytes.
    if (buf.length >= 1 && buf[0] !== CONTENT_TYPE_HANDSHAKE) return { kind: 'invalid', reason: 'not a handshake record' };
    return { kind: 'incomplete' };
  }
  if (buf[0] !== CONTENT_TYPE_HANDSHAKE) return { kind: 'invalid', reason: 'not a handshake record' };
  // legacy_record_version: 0x0301 for compatibility, 0x0300..0x0304 seen; the major is always 3.
  if (buf[1] !== 3) return { kind: 'invalid', reason: 'record version is not 3.x' };
  const recordLength = ((buf[3] as number) << 8) | (buf[4] as number);
  if (recordLength === 0 || recordLength > MAX_RECORD_PAYLOAD) return { kind: 'invalid', reason: 'bad record length' };
  if (buf.length < RECORD_HEADER + recordLength) return { kind: 'incomplete' };

  try {
    const record = new Reader(buf, RECORD_HEADER, RECORD_HEADER + recordLength);
    if (record.u8('handshake type') !== HANDSHAKE_CLIENT_HELLO) throw new Malformed('not a ClientHello');
    const helloLength = record.u24('handshake length');
    if (helloLength > record.remaining) throw new Malformed('ClientHello continues in another record');
    const hello = record.sub(helloLength, 'ClientHello');
    // RFC 8446 §4.1.2 structure (same layout in TLS 1.2, RFC 5246 §7.4.1.2).
    hello.skip(2, 'legacy_version');
    hello.skip(32, 'random');
    const sessionIdLength = hello.u8('session id length');
    if (sessionIdLength > 32) throw new Malformed('session id too long');
    hello.skip(sessionIdLength, 'session id');
    const suitesLength = hello.u16('cipher suites length');
    if (suitesLength < 2 || suitesLength % 2 !== 0) throw new Malformed('bad cipher suites length');
    hello.skip(suitesLength, 'cipher suites');
    const compressionLength = hello.u8('compression methods length');
    if (compressionLength < 1) throw new Malformed('no compression method');
    hello.skip(compressionLength, 'compression methods');

    let serverName: string | null = null;
    let alpn: string[] = [];
    if (hello.remaining > 0) {
      const extensionsLength = hello.u16('extensions length');
      if (extensionsLength !== hello.remaining) throw new Malformed('extensions length mismatch');
      const exts = hello.sub(extensionsLength, 'extensions');
      const seen = new Set<number>();
      while (exts.remaining > 0) {
        const type = exts.u16('extension type');
        const body = exts.sub(exts.u16('extension length'), 'extension body');
        // RFC 8446 §4.2: "There MUST NOT be more than one extension of the same type".
        if (seen.has(type)) throw new Malformed(`duplicate extension ${type}`);
        seen.add(type);
        if (type === EXT_SERVER_NAME) serverName = readServerName(body);
        else if (type === EXT_ALPN) alpn = readAlpn(body);
      }
    }
    return { kind: 'hello', serverName, alpn };
  } catch (err) {
    if (err instanceof Malformed) return { kind: 'invalid', reason: err.message };
    throw err;
  }
}

function readServerName(body: Reader): string | null {
  const list = body.sub(body.u16('server name list length'), 'server name list');
  if (body.remaining !== 0) throw new Malformed('trailing bytes after server name list');
  if (list.remaining === 0) throw new Malformed('empty server name list');
  let host: string | null = null;
  while (list.remaining > 0) {
    const nameType = list.u8('name type');
    const name = list.bytes(list.u16('host name length'), 'host name');
    if (nameType !== SNI_HOST_NAME) continue;
    // RFC 6066 §3: "MUST NOT contain more than one name of the same name_type".
    if (host !== null) throw new Malformed('more than one host_name');
    if (!isHostName(name)) throw new Malformed('host name is not an LDH string');
    host = latin1(name);
  }
  return host;
}

function readAlpn(body: Reader): string[] {
  const list = body.sub(body.u16('protocol list length'), 'protocol list');
  if (body.remaining !== 0) throw new Malformed('trailing bytes after protocol list');
  if (list.remaining === 0) throw new Malformed('empty protocol list');
  const out: string[] = [];
  while (list.remaining > 0) {
    const length = list.u8('protocol name length');
    // RFC 7301 §3.1: "Empty strings MUST NOT be included".
    if (length === 0) throw new Malformed('empty protocol name');
    out.push(latin1(list.bytes(length, 'protocol name')));
  }
  return out;
}
