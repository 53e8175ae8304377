/** Shared state for protections (rate limits, bans): the `Store` interface and its implementations. */
export type { CounterState, Store, StoredValue } from './store.js';
export { DEFAULT_MAX_ENTRIES, DEFAULT_SWEEP_INTERVAL_MS, MemoryStore } from './memory.js';
export type { MemoryStoreOptions } from './memory.js';
export { RemoteStore, serveStoreCall, writtenKey } from './remote.js';
export type { RemoteCall, RemoteStoreOptions } from './remote.js';
