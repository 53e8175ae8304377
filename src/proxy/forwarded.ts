/**
 * Who is the client, and what the upstream is told about it.
 *
 * X-Forwarded-* and Forwarded are only believed when the TCP peer is one of `trusted_proxies`
 * (proxy-addr walks the X-Forwarded-For chain from the right, stopping at the first untrusted hop).
 * From anybody else the gateway overwrites them, so a client cannot forge its address, scheme or host.
 */
import { isIP } from 'node:net';
import proxyaddr from 'proxy-addr';

export type TrustFn = (addr: string, index: number) => boolean;

const TRUST_NOBODY: TrustFn = () => false;

export function compileTrust(cidrs: readonly string[]): TrustFn {
  if (cidrs.length === 0) return TRUST_NOBODY;
  return proxyaddr.compile([...cidrs]);
}

/** Strips the IPv4-mapped IPv6 prefix so `::ffff:1.2.3.4` logs and keys as `1.2.3.4`. */
export function plainAddress(addr: string | undefined): string {
  if (!addr) return '';
  return addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
}

export interface ForwardedInput {
  /** TCP peer address. */
  readonly peer: string;
  readonly xForwardedFor: string | undefined;
}

// A hop written with a port: `198.51.100.7:40000`, `[2001:db8::1]` or `[2001:db8::1]:443`.
const PORT_FORM = /\]|\.\d+:\d/;
const IPV4_WITH_PORT = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/;
const BRACKETED_IPV6 = /^\[([^\]]+)\](?::\d{1,5})?$/;

/**
 * The X-Forwarded-For list with each hop's port removed. Some proxies write the client's port
 * (Azure Application Gateway writes `ip:port`; RFC 7239 spells IPv6 in brackets): left as they
 * are, the hop is not an address, so proxy-addr can neither match it against `trusted_proxies`
 * nor stop at it as a client, and the client key would change with every source port — a rate
 * limit and a ban dodged by opening new connections. A hop that is still not an address after
 * this is kept as written.
 */
export function withoutPorts(xForwardedFor: string): string {
  if (!PORT_FORM.test(xForwardedFor)) return xForwardedFor;
  return xForwardedFor
    .split(',')
    .map((raw) => {
      const hop = raw.trim();
      const m = IPV4_WITH_PORT.exec(hop) ?? BRACKETED_IPV6.exec(hop);
      return m !== null && isIP(m[1]!) !== 0 ? m[1]! : hop;
    })
    .join(', ');
}

/** The client address: the peer, or — through trusted proxies only — the first untrusted X-Forwarded-For hop. */
export function clientAddress(input: ForwardedInput, trust: TrustFn): string {
  if (trust === TRUST_NOBODY || input.xForwardedFor === undefined) return plainAddress(input.peer);
  const xff = withoutPorts(input.xForwardedFor);
  const req = { connection: { remoteAddress: input.peer }, socket: { remoteAddress: input.peer }, headers: { 'x-forwarded-for': xff } };
  return plainAddress(proxyaddr(req as never, trust));
}
