import { GatewayError } from '../errors.js';

/** One thing wrong with the configuration, at the YAML node that caused it. */
export interface ConfigProblem {
  readonly file: string;
  /** 1-based. */
  readonly line: number;
  /** 1-based. */
  readonly col: number;
  /** Dot path of the offending key, e.g. `sites.0.routes.1.path`; '' for the whole document. */
  readonly path: string;
  readonly message: string;
}

/** Path segments as found in the parsed data: object keys and array indexes. */
export type PathSegments = readonly (string | number)[];

/**
 * A problem before it has a position: `at` says which YAML node to point at — the value, the key
 * itself (unknown keys), or the enclosing map (missing keys).
 */
export interface PendingProblem {
  readonly path: PathSegments;
  readonly message: string;
  readonly at?: 'value' | 'key' | 'parent';
}

/** `FILE:LINE:COL: path.to.key: message`, one line per problem. */
export function formatProblems(problems: readonly ConfigProblem[]): string {
  return problems.map((p) => `${p.file}:${p.line}:${p.col}: ${p.path === '' ? '' : `${p.path}: `}${p.message}`).join('\n');
}

/**
 * The configuration cannot be used. `problems` lists everything found (never just the first);
 * the message is the formatted list, ready for a terminal.
 */
export class ConfigError extends GatewayError {
  readonly problems: readonly ConfigProblem[];

  constructor(code: 'GW_ERR_CONFIG_INVALID' | 'GW_ERR_CONFIG_READ', problems: readonly ConfigProblem[], options?: { cause?: unknown }) {
    const head = code === 'GW_ERR_CONFIG_READ' ? 'configuration file cannot be read' : `configuration is invalid (${problems.length} problem${problems.length === 1 ? '' : 's'})`;
    super(code, `${head}:\n${formatProblems(problems)}`, options);
    this.name = 'ConfigError';
    this.problems = Object.freeze([...problems]);
  }
}

export function dotPath(path: PathSegments): string {
  return path.join('.');
}
