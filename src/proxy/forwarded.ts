/**
 * Who is the client, and what the upstream is told about it.
 *
 * X-Forwarded-* and Forwarded are only believed when the TCP peer is one of `trusted_proxies`
 * (proxy-addr walks the X-Forwarded-For chain from the right, stopping at the first untrusted hop).
 * From anybody else the gateway overwrites them, so a client cannot forge its address, scheme or host.
 */
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

/** The client address: the peer, or — through trusted proxies only — the first untrusted X-Forwarded-For hop. */
export function clientAddress(input: ForwardedInput, trust: TrustFn): string {
  if (trust === TRUST_NOBODY || input.xForwardedFor === undefined) return plainAddress(input.peer);
  const req = { connection: { remoteAddress: input.peer }, socket: { remoteAddress: input.peer }, headers: { 'x-forwarded-for': input.xForwardedFor } };
  return plainAddress(proxyaddr(req as never, trust));
}
