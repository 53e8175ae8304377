/**
 * `${NAME}` substitution in string values, before validation.
 *
 * A missing variable is an error, never an empty string: an empty `client_secret` or
 * `metrics_token` would silently weaken the gateway. `NAME_FILE` (Docker/Kubernetes secrets
 * convention) is read when `NAME` is unset. Messages name variables, never their values.
 */
import type { PathSegments, PendingProblem } from './problems.js';

export type ReadFile = (path: string) => string;

export interface SubstitutionResult {
  readonly value: unknown;
  readonly problems: PendingProblem[];
  /** Dot paths of values that came (partly) from the environment: never quote them in messages. */
  readonly fromEnv: Set<string>;
}

// `$${` is the escape for a literal `${`; anything else starting with `${` must be a reference.
const TOKEN = /\$\$\{|\$\{([^}]*)\}|\$\{/g;
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function substituteString(
  text: string,
  env: NodeJS.ProcessEnv,
  readFile: ReadFile,
  path: PathSegments,
  problems: PendingProblem[],
): { value: string; used: boolean } {
  let used = false;
  const value = text.replace(TOKEN, (match: string, name: string | undefined) => {
    if (match === '$${') return '${';
    if (name === undefined) {
      problems.push({ path, message: 'unterminated "${" (write "$${" for a literal "${")' });
      return match;
    }
    if (!NAME.test(name)) {
      problems.push({ path, message: `invalid environment variable reference "\${${name}}" (names are letters, digits and _; write "$\${" for a literal "\${")` });
      return match;
    }
    used = true;
    const direct = env[name];
    if (direct !== undefined) return direct;
    const file = env[`${name}_FILE`];
    if (file === undefined) {
      problems.push({ path, message: `environment variable ${name} is not set (nor ${name}_FILE)` });
      return match;
    }
    try {
      // Secrets files usually end with a newline that is not part of the secret.
      return readFile(file).replace(/[\r\n]+$/, '');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      problems.push({ path, message: `cannot read ${name}_FILE (${file})${code === undefined ? '' : `: ${code}`}` });
      return match;
    }
  });
  return { value, used };
}

/** Returns a substituted copy of `data` (plain JSON-like data from YAML). */
export function substituteEnv(data: unknown, env: NodeJS.ProcessEnv, readFile: ReadFile): SubstitutionResult {
  const problems: PendingProblem[] = [];
  const fromEnv = new Set<string>();
  const walk = (value: unknown, path: (string | number)[]): unknown => {
    if (typeof value === 'string') {
      if (!value.includes('${')) return value;
      const r = substituteString(value, env, readFile, path, problems);
      if (r.used) fromEnv.add(path.join('.'));
      return r.value;
    }
    if (Array.isArray(value)) return value.map((v, i) => walk(v, [...path, i]));
    if (value !== null && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) {
        // defineProperty: a YAML key named `__proto__` must stay a plain (unknown, refused) key.
        Object.defineProperty(out, k, { value: walk(v, [...path, k]), enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
    return value;
  };
  return { value: walk(data, []), problems, fromEnv };
}
