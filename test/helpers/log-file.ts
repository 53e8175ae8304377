// Reading a JSON-lines log file that a running gateway is still writing to: the last line may be
// only partly written when the file is read (seen in CI), so it is left for the next read. A
// complete line that is not one JSON object is a defect the tests look for (cut or interleaved).
import { existsSync, readFileSync } from 'node:fs';

export type LogLine = Record<string, unknown>;

export interface ParsedLog {
  readonly lines: LogLine[];
  /** Complete lines (ended by \n) that are not one JSON object. */
  readonly broken: string[];
}

export function parseLogText(text: string): ParsedLog {
  const parts = text.split('\n');
  parts.pop(); // what follows the last \n: empty, or a line still being written
  const lines: LogLine[] = [];
  const broken: string[] = [];
  for (const p of parts) {
    if (p === '') continue;
    try {
      const v = JSON.parse(p) as unknown;
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) lines.push(v as LogLine);
      else broken.push(p);
    } catch {
      broken.push(p);
    }
  }
  return { lines, broken };
}

export function readLogFile(file: string): ParsedLog {
  if (!existsSync(file)) return { lines: [], broken: [] };
  return parseLogText(readFileSync(file, 'utf8'));
}

/** The complete JSON lines of `file` so far (none while it does not exist); throws on a broken one. */
export function logFileLines(file: string): LogLine[] {
  const { lines, broken } = readLogFile(file);
  if (broken.length > 0) throw new Error(`${file}: a complete line that is not one JSON object: ${broken[0]!.slice(0, 300)}`);
  return lines;
}
