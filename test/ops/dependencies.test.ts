/**
 * Supply-chain checks of what `npm ci` installs, offline (the CI machines cannot reach npm's
 * advisory service; README, Development): every package comes from the npm registry, pinned by a
 * SHA-512 integrity hash, and nothing that ships runs an install script.
 *
 * A lockfile edited to fetch a package from elsewhere (a git URL, a tarball on another host, a
 * path on disk), or without a hash to check the download against, fails here before it is
 * installed anywhere else.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const REGISTRY_TARBALL = /^https:\/\/registry\.npmjs\.org\/(?:@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*\/-\/[\w.-]+\.tgz$/;
const SEMVER_RANGE = /^[\^~]?\d+\.\d+\.\d+(?:-[\w.]+)?$/;

interface LockEntry {
  readonly version?: string;
  readonly resolved?: string;
  readonly integrity?: string;
  readonly link?: boolean;
  readonly dev?: boolean;
  readonly optional?: boolean;
  readonly hasInstallScript?: boolean;
}
interface Lockfile {
  readonly lockfileVersion: number;
  readonly packages: Record<string, LockEntry>;
}
interface Manifest {
  readonly dependencies?: Record<string, string>;
  readonly devDependencies?: Record<string, string>;
}

const readJson = <T>(path: string): T => JSON.parse(readFileSync(`${ROOT}/${path}`, 'utf8')) as T;

/** Every problem of one lockfile, one line each (an empty list: it is sound). */
function lockfileProblems(lock: Lockfile): string[] {
  const problems: string[] = [];
  if (lock.lockfileVersion < 2) problems.push(`lockfileVersion ${lock.lockfileVersion}: npm 7 or later writes 2 or 3`);
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (path === '') continue; // the project itself
    if (entry.link === true) {
      problems.push(`${path}: a link to a directory, not a registry package`);
      continue;
    }
    // npm leaves `resolved` out for registry packages when `omit-lockfile-registry-resolved` is set.
    if (entry.resolved !== undefined && !REGISTRY_TARBALL.test(entry.resolved)) problems.push(`${path}: resolved from ${entry.resolved}`);
    if (entry.integrity === undefined || !/^sha512-[A-Za-z0-9+/]{86}==$/.test(entry.integrity)) problems.push(`${path}: no SHA-512 integrity (${entry.integrity ?? 'none'})`);
    if (entry.hasInstallScript === true && entry.dev !== true) problems.push(`${path}: runs an install script and ships`);
  }
  return problems;
}

/** Dependencies declared as anything but a registry version range (git, file:, URLs, tags, *). */
function manifestProblems(manifest: Manifest): string[] {
  const problems: string[] = [];
  for (const [field, deps] of [['dependencies', manifest.dependencies], ['devDependencies', manifest.devDependencies]] as const) {
    for (const [name, range] of Object.entries(deps ?? {})) {
      if (!SEMVER_RANGE.test(range)) problems.push(`${field}.${name}: ${range} is not a registry version range`);
    }
  }
  return problems;
}

for (const dir of ['', 'bench/']) {
  t.test(`${dir || './'}: package.json and package-lock.json install registry packages only`, async (t) => {
    const manifest = readJson<Manifest>(`${dir}package.json`);
    const lock = readJson<Lockfile>(`${dir}package-lock.json`);
    t.same(manifestProblems(manifest), []);
    t.same(lockfileProblems(lock), []);
    // Everything declared is locked (npm ci refuses otherwise, but say which one).
    for (const name of [...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.devDependencies ?? {})]) {
      t.ok(lock.packages[`node_modules/${name}`], `${name} is in the lockfile`);
    }
  });
}

t.test('the checks catch what they are for', async (t) => {
  const ok: LockEntry = { version: '1.0.0', integrity: `sha512-${'A'.repeat(86)}==` };
  const lock = (entry: LockEntry): Lockfile => ({ lockfileVersion: 3, packages: { '': {}, 'node_modules/x': entry } });
  t.same(lockfileProblems(lock(ok)), []);
  t.same(lockfileProblems(lock({ ...ok, resolved: 'https://registry.npmjs.org/x/-/x-1.0.0.tgz' })), []);
  t.same(lockfileProblems(lock({ ...ok, resolved: 'https://registry.npmjs.org/@s/x/-/x-1.0.0.tgz' })), []);
  for (const resolved of [
    'https://evil.example/x/-/x-1.0.0.tgz',
    'http://registry.npmjs.org/x/-/x-1.0.0.tgz',
    'https://registry.npmjs.org.evil.example/x/-/x-1.0.0.tgz',
    'https://registry.npmjs.org@evil.example/x/-/x-1.0.0.tgz',
    'git+ssh://git@github.com/a/x.git#abc',
    'file:../x',
  ]) {
    t.match(lockfileProblems(lock({ ...ok, resolved })), [/resolved from/], resolved);
  }
  t.match(lockfileProblems(lock({ version: '1.0.0' })), [/no SHA-512 integrity/]);
  t.match(lockfileProblems(lock({ ...ok, integrity: 'sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=' })), [/no SHA-512 integrity/]);
  t.match(lockfileProblems(lock({ link: true })), [/a link to a directory/]);
  t.match(lockfileProblems(lock({ ...ok, hasInstallScript: true })), [/runs an install script and ships/]);
  t.same(lockfileProblems(lock({ ...ok, hasInstallScript: true, dev: true })), []);
  t.match(lockfileProblems({ lockfileVersion: 1, packages: {} }), [/lockfileVersion 1/]);

  t.same(manifestProblems({ dependencies: { a: '^1.2.3', b: '~0.34.52', c: '1.0.0', d: '^2.0.0-rc.1' } }), []);
  for (const range of ['github:a/x', 'git+https://github.com/a/x.git', 'file:../x', 'https://evil.example/x.tgz', 'latest', '*', '>=1.0.0', 'npm:other@1.0.0']) {
    t.match(manifestProblems({ devDependencies: { x: range } }), [/is not a registry version range/], range);
  }
});
