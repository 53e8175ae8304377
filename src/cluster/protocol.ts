/**
 * What the primary and its workers say to each other (over {@link RpcPeer}).
 *
 * Worker → primary: `hello` (→ {@link WorkerHello}), `snapshot` (→ {@link Snapshot}), `listening`,
 * and the `state.*` calls of {@link RemoteStore}.
 * Primary → worker: `state.invalidate`, `tls.install`, `tls.alpnSet`, `tls.alpnClear`, `tls.ticketKeys`, `acme.http01Set`,
 * `acme.http01Delete` (notifications), and the calls `metrics`, `ready`, `reload` (→
 * {@link ReloadResult}) and the notification `shutdown`.
 */
import { ConfigError, formatProblems } from '../config/index.js';

export interface WorkerHello {
  /** The configuration text the primary validated last; the worker parses exactly this. */
  readonly text: string;
}

export interface PemPair {
  readonly certPem: string;
  readonly keyPem: string;
}

/** What a worker joining late must apply before it listens. */
export interface Snapshot {
  readonly certificates: ReadonlyArray<{ readonly id: string } & PemPair>;
  readonly alpn: ReadonlyArray<{ readonly host: string } & PemPair>;
  readonly http01: ReadonlyArray<readonly [token: string, keyAuthorization: string]>;
  /** TLS session-ticket keys, base64 (48 bytes): the same in every worker, so resumption works across them. */
  readonly ticketKeys: string;
}

export type ReloadResult = { readonly ok: true } | { readonly ok: false; readonly problems: string[] };

export function problemsOf(err: unknown): string[] {
  return err instanceof ConfigError ? formatProblems(err.problems).split('\n') : [(err as Error).message];
}
