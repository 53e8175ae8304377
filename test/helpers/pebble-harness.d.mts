// Types for pebble-harness.mjs (plain JS helper).
export interface PebbleOptions {
  listenPort?: number;
  managementPort?: number;
  httpPort?: number;
  tlsPort?: number;
  dnsRecords?: Record<string, string>;
  authzReuse?: number;
  env?: Record<string, string>;
  binary?: string;
  log?: boolean;
  /** Reuse (or create) the listener TLS cert here, so it survives restarts. */
  certsDir?: string | null;
}
export interface Pebble {
  directoryUrl: string;
  managementUrl: string;
  listenerCaPem: string;
  listenPort: number;
  managementPort: number;
  dnsPort: number;
  pid: number;
  stop(): Promise<void>;
  getRootPem(): Promise<string>;
  getIntermediatePem(): Promise<string>;
}
export function freePort(): Promise<number>;
export function startPebble(opts?: PebbleOptions): Promise<Pebble>;
