/**
 * Configuration: YAML file → validated, normalized, frozen `GatewayConfig`.
 * Everything else in the gateway consumes `types.ts` and never re-validates.
 */
export { loadConfigFile, parseConfig, parseConfigWith, readFrom, type ConfigInputs, type LoadResult } from './load.js';
export { ConfigError, formatProblems, type ConfigProblem } from './problems.js';
export { parseDuration, parseSize } from './units.js';
export { ALLOWED_ALGORITHMS } from './normalize.js';
export { GatewayFileSchema, type GatewayFile } from './schema.js';
export type * from './types.js';
