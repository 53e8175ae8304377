/**
 * What the primary and its workers say to each other (over {@link RpcPeer}).
 *
 * Worker → primary: `hello` (→ {@link WorkerHello}), `snapshot` (→ {@link Snapshot}), `listening`,
 * and the `state.*` calls of {@link RemoteStore}.
 * Primary → worker: `state.invalidate`, `tls.install`, `tls.alpnSet`, `tls.alpnClear`, `tls.ticketKeys`, `acme.http01Set`,
 * `acme.http01Delete` (notifications), and the calls `metrics`, `ready`, `reload` (→
 * {@link ReloadResult}) and the notification `shutdown`.
 */
import { ConfigError, formatProblems, type ConfigInputs } from '../config/index.js';
import type { RestartOnlySettings } from '../gateway.js';

/** A configuration as the primary validated it: the worker parses exactly this text with these inputs. */
export interface ValidatedConfig {
  readonly text: string;
  readonly inputs: ConfigInputs;
  /** The local development CA's certificate the primary serves for it (null: none). */
  readonly local: PemPair | null;
}

export interface WorkerHello extends ValidatedConfig {
  /**
   * The restart-only settings the host runs (from the configuration it started with): a worker
   * started after a reload changed one runs what its siblings run, not what the file says now.
   */
  readonly running: RestartOnlySettings;
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
  /** The development CA's certificate now (renewed since the hello, perhaps). */
  readonly local: PemPair | null;
}

export type ReloadResult = { readonly ok: true } | { readonly ok: false; readonly problems: string[] };

export function problemsOf(err: unknown): string[] {
  return err instanceof ConfigError ? formatProblems(err.problems).split('\n') : [(err as Error).message];
}
