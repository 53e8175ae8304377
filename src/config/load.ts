/**
 * YAML text → validated, normalized, frozen `GatewayConfig`, or a `ConfigError` listing every
 * problem with its file:line:col.
 *
 * Pipeline: parse (syntax errors, duplicate keys) → `${ENV}` substitution → schema → cross-field
 * normalization → deep freeze. Positions come from the YAML document, looked up by path at the
 * end, so each stage can stay a pure function of plain data.
 */
import path from 'node:path';
import { isCollection, isMap, isPair, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import { substituteEnv, type ReadFile } from './env.js';
import { type ConfigFileError, readConfigFile } from './files.js';
import { normalize } from './normalize.js';
import { ConfigError, type ConfigProblem, type PathSegments, type PendingProblem } from './problems.js';
import type { GatewayFile } from './schema.js';
import type { GatewayConfig } from './types.js';
import { validateSchema } from './validate.js';

export interface LoadResult {
  readonly config: GatewayConfig;
  /** Risky but legal settings, formatted like problems (`FILE:LINE:COL: path: message`). */
  readonly warnings: string[];
  /** The YAML text this came from (cluster workers get exactly the text the primary validated). */
  readonly text: string;
  /** What the text was read with (cluster workers parse the text with exactly these). */
  readonly inputs: ConfigInputs;
}

/**
 * What a configuration read besides its text: the environment variables it named, and the files
 * it read (`NAME_FILE` secrets, certificates and keys, CA bundles), by absolute path. A cluster
 * worker parses the primary's text with these, never with its own environment and disk: a secret
 * file removed or a certificate overwritten since must not make a replacement worker run (or fail
 * on) something the primary did not validate.
 */
export interface ConfigInputs {
  readonly env: Readonly<Record<string, string>>;
  readonly files: Readonly<Record<string, string>>;
}

/** A ReadFile that answers from `files` only (ENOENT for any other path). */
export function readFrom(files: ConfigInputs['files']): ReadFile {
  return (file) => {
    if (Object.hasOwn(files, file)) return files[file]!;
    throw Object.assign(new Error(`${file} is not among the files the configuration was validated with`), { code: 'ENOENT' });
  };
}

/** parseConfig with exactly the environment and files of an earlier parse. */
export function parseConfigWith(text: string, filePath: string, inputs: ConfigInputs): LoadResult {
  return parseConfig(text, filePath, inputs.env, readFrom(inputs.files));
}

const defaultReadFile: ReadFile = readConfigFile;

type Positioned = { offset: number };

/** Offset of the node a problem should point at; falls back to the nearest existing ancestor. */
function locate(doc: Document, p: PathSegments, at: PendingProblem['at']): Positioned {
  const parentPath = p.slice(0, -1);
  if (at === 'key' && p.length > 0) {
    const parent = doc.getIn(parentPath, true);
    if (isMap(parent)) {
      const last = p[p.length - 1];
      const pair = parent.items.find((it) => isPair(it) && isScalar(it.key) && String(it.key.value) === String(last));
      const range = pair && isScalar(pair.key) ? pair.key.range : undefined;
      if (range) return { offset: range[0] };
    }
  }
  const target = at === 'parent' ? parentPath : p;
  for (let n = target.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : doc.getIn(target.slice(0, n), true);
    if (node && typeof node === 'object' && 'range' in node) {
      const range = (node as { range?: [number, number, number] | null }).range;
      if (range) {
        // For a map, point at its first key rather than at the whitespace before it.
        if (isCollection(node) && node.items.length > 0) {
          const first = node.items[0];
          const r = isPair(first) && isScalar(first.key) ? first.key.range : undefined;
          if (r) return { offset: r[0] };
        }
        return { offset: range[0] };
      }
    }
  }
  return { offset: 0 };
}

/**
 * Parses and validates configuration text. Pure apart from `readFile` (used for `${NAME_FILE}`
 * secrets, certificates and CA bundles), so tests can pass an in-memory file system.
 *
 * @throws ConfigError `GW_ERR_CONFIG_INVALID` with every problem found.
 */
export function parseConfig(text: string, filePath: string, env: NodeJS.ProcessEnv = process.env, readFile: ReadFile = defaultReadFile): LoadResult {
  const absolute = path.resolve(filePath);
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false, strict: true });
  const at = (offset: number) => lineCounter.linePos(offset);
  const problems: ConfigProblem[] = [];
  const place = (list: readonly PendingProblem[]): ConfigProblem[] =>
    list.map((pr) => {
      const { line, col } = at(locate(doc, pr.path, pr.at).offset);
      return { file: filePath, line, col, path: pr.path.join('.'), message: pr.message };
    });

  for (const err of doc.errors) {
    const offset = err.pos[0];
    const { line, col } = at(offset);
    const message = err.code === 'DUPLICATE_KEY' ? `duplicate key ${JSON.stringify(/^[^:\n]*/.exec(text.slice(offset))?.[0]?.trim() ?? '')}` : `YAML syntax error: ${err.message.split('\n')[0] ?? ''}`;
    problems.push({ file: filePath, line, col, path: '', message });
  }
  // The parser only warns about what it cannot resolve, e.g. an unknown tag (`!env SECRET`), and
  // then loads the plain text (`SECRET`): a value the file did not mean, so refused like an error.
  for (const warning of doc.warnings) {
    const { line, col } = at(warning.pos[0]);
    problems.push({ file: filePath, line, col, path: '', message: `YAML: ${warning.message.split('\n')[0] ?? ''}` });
  }
  if (problems.length > 0) throw new ConfigError('GW_ERR_CONFIG_INVALID', problems);

  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    // e.g. an alias bomb ("billion laughs"): refuse rather than expand.
    throw new ConfigError('GW_ERR_CONFIG_INVALID', [{ file: filePath, line: 1, col: 1, path: '', message: `YAML cannot be loaded: ${(err as Error).message}` }]);
  }
  if (data === null || data === undefined) {
    throw new ConfigError('GW_ERR_CONFIG_INVALID', [{ file: filePath, line: 1, col: 1, path: '', message: 'the configuration is empty' }]);
  }

  // What is read outside the text is recorded as it is read (LoadResult.inputs).
  const usedEnv: Record<string, string> = Object.create(null) as Record<string, string>;
  const readFiles: Record<string, string> = Object.create(null) as Record<string, string>;
  const seenEnv = new Proxy(env, {
    get(target, name) {
      const value: unknown = Reflect.get(target, name);
      if (typeof name === 'string' && typeof value === 'string') usedEnv[name] = value;
      return value;
    },
  });
  const reading: ReadFile = (file) => {
    const content = readFile(file);
    readFiles[file] = content;
    return content;
  };
  const sub = substituteEnv(data, seenEnv, reading);
  const envPaths = new Set(sub.problems.map((p) => p.path.join('.')));
  // A value whose variable is missing still holds `${NAME}`: further complaints about it are noise.
  const notEnv = (list: readonly PendingProblem[]) => list.filter((p) => !envPaths.has(p.path.join('.')));
  const schemaProblems = notEnv(validateSchema(sub.value));
  const pending: PendingProblem[] = [...sub.problems, ...schemaProblems];
  let result: ReturnType<typeof normalize> | null = null;
  // Cross-field checks assume schema-valid data; they run once the shape is right.
  if (schemaProblems.length === 0) {
    result = normalize(sub.value as GatewayFile, { filePath: absolute, readFile: reading, fromEnv: sub.fromEnv });
    pending.push(...notEnv(result.problems));
  }
  problems.push(...place(pending));
  if (problems.length > 0 || result === null) {
    problems.sort((a, b) => a.line - b.line || a.col - b.col);
    throw new ConfigError('GW_ERR_CONFIG_INVALID', problems);
  }
  const warnings = place(result.warnings)
    .sort((a, b) => a.line - b.line || a.col - b.col)
    .map((w) => `${w.file}:${w.line}:${w.col}: ${w.path === '' ? '' : `${w.path}: `}${w.message}`);
  return { config: deepFreeze(result.config), warnings, text, inputs: { env: { ...usedEnv }, files: { ...readFiles } } };
}

/**
 * Reads and parses a configuration file.
 *
 * @throws ConfigError `GW_ERR_CONFIG_READ` when the file cannot be read, else as `parseConfig`.
 */
export async function loadConfigFile(filePath: string, env: NodeJS.ProcessEnv = process.env): Promise<LoadResult> {
  let text: string;
  try {
    // Synchronous and non-blocking (files.ts): a FIFO or device at the path is refused at once; an
    // asynchronous read of a FIFO would hold a thread-pool thread (and every later reload, and the
    // process's exit) until a writer came.
    text = readConfigFile(filePath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | ConfigFileError).code;
    throw new ConfigError('GW_ERR_CONFIG_READ', [{ file: filePath, line: 0, col: 0, path: '', message: `cannot read the file${code === undefined ? '' : ` (${code})`}` }], { cause: err });
  }
  return parseConfig(text, filePath, env);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
