/**
 * Durations and sizes as written in the configuration file.
 *
 * Only one integer and one unit: `1h30m` or `1.5h` are refused rather than guessed at, so what
 * the operator wrote is exactly what the gateway enforces.
 */

export const DURATION_PATTERN = '^\\d+(ms|s|m|h|d|y)$';
export const SIZE_PATTERN = '^\\d+(b|kb|mb|gb)$';

const DURATION_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  // A year is 365 days: HSTS preload lists ask for "max-age of at least 31536000 seconds".
  y: 365 * 86_400_000,
};

const SIZE_BYTES: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

function parseUnit(text: string, re: RegExp, table: Record<string, number>, what: string): number {
  const m = re.exec(text);
  const factor = m?.[2] === undefined ? undefined : table[m[2]];
  if (m === null || m[1] === undefined || factor === undefined) {
    throw new TypeError(`invalid ${what} "${text}"`);
  }
  const value = Number(m[1]) * factor;
  if (!Number.isSafeInteger(value)) throw new RangeError(`${what} "${text}" is too large`);
  return value;
}

/** `30s` → 30000. Units: ms, s, m, h, d, y (365 days). Throws TypeError/RangeError. */
export function parseDuration(text: string): number {
  return parseUnit(text, /^(\d+)(ms|s|m|h|d|y)$/, DURATION_MS, 'duration');
}

/** `1mb` → 1048576. Units: b, kb, mb, gb (1024-based). Throws TypeError/RangeError. */
export function parseSize(text: string): number {
  return parseUnit(text, /^(\d+)(b|kb|mb|gb)$/, SIZE_BYTES, 'size');
}
