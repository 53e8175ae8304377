// Tests that start a real peer from a Debian package skip (loudly) on a machine without it;
// `.ci/run` installs every one of them, so in CI they always run.
import { existsSync } from 'node:fs';

interface Plannable {
  plan(n: number, comment?: string): void;
}

export function requireBinary(t: Plannable, path: string, debianPackage: string): void {
  if (existsSync(path)) return;
  t.plan(0, `${path} is missing: install the Debian package ${debianPackage} (.ci/run does)`);
  process.exit(0);
}
