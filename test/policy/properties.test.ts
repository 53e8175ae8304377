/**
 * Property-based tests: canonicalization is stable, and no upstream reading of the forwarded path
 * reaches a route less strict than the one the gateway enforced.
 *
 * The upstream models below are written independently of src/policy (no shared matching view) so
 * the property can fail if the implementation's view is narrower than an upstream's reading.
 */
import t from 'tap';
import fc from 'fast-check';
import { canonicalizePath, compileRouteTable, decide, type RouteLike } from '../../src/policy/index.js';
import type { Access } from '../../src/config/types.js';

const TOKENS = [
  '/', '/', '/', '//', '.', '..', '%', '0', '7', 'a', 'F', 'g',
  '%2e', '%2E', '%2f', '%2F', '%5c', '%5C', '%00', '%1f', '%7F', '%41', '%61', '%64', '%3b', '%3B', '%25', '%20', '%e9',
  ';', ';x=1', '\\', 'A', 'D', 'M', 'I', 'N', 'x', 'y', 'admin', 'ADMIN', 'Admin', 'api', 'public', 'PUBLIC', 'v2',
  'é', '日', '😀', ' ', '#', '?', '\t',
  '%E2%84%AA', // KELVIN SIGN, lower-cases to `k`
  '%C5%BF', // LONG S, upper-cases to `S`
  '%C4%B1', // DOTLESS I, upper-cases to `I`
  '%EF%BD%81', // FULLWIDTH a, NFKC → `a`
  '%EF%BC%8E', // FULLWIDTH FULL STOP, NFKC → `.`
  '%EF%BC%8F', // FULLWIDTH SOLIDUS, NFKC → `/`
  '%E2%80%A5', // TWO DOT LEADER, NFKC → `..`
  '..;', '.;x', '．', '／',
];
const token = fc.constantFrom(...TOKENS);
const SEGMENTS = ['admin', 'api', 'public', 'key', 'secret', 'ai'];
const UNICODE_LOOKALIKE: Record<string, string> = { k: '%E2%84%AA', s: '%C5%BF', i: '%C4%B1', a: '%EF%BD%81' };

/** A route word disguised the ways an attacker would: case, escapes, parameters, look-alikes. */
const disguisedSegment = fc
  .tuple(
    fc.constantFrom(...SEGMENTS, 'x', '.', '..', ''),
    fc.array(fc.tuple(fc.constantFrom('upper', 'pct', 'pctLower', 'unicode', 'param', 'encParam', 'dots', 'paramDots', 'wideDots', 'trailingDot'), fc.nat()), { maxLength: 3 }),
  )
  .map(([word, edits]) => {
    let chars = [...word];
    for (const [edit, n] of edits) {
      const k = chars.length === 0 ? 0 : n % chars.length;
      const ch = chars[k] ?? '';
      if (edit === 'upper') chars[k] = ch.toUpperCase();
      else if (edit === 'pct' && ch.length === 1) chars[k] = '%' + ch.charCodeAt(0).toString(16).toUpperCase();
      else if (edit === 'pctLower' && ch.length === 1) chars[k] = '%' + ch.charCodeAt(0).toString(16);
      else if (edit === 'unicode') chars[k] = UNICODE_LOOKALIKE[ch] ?? ch;
      else if (edit === 'param') chars = [...chars, ';', 'v=1'];
      else if (edit === 'encParam') chars = [...chars, '%3B', 'v'];
      else if (edit === 'dots') chars = ['..', '/', ...chars];
      else if (edit === 'paramDots') chars = ['..;', '/', ...chars];
      else if (edit === 'wideDots') chars = ['%EF%BC%8E%EF%BC%8E', '/', ...chars];
      else if (edit === 'trailingDot') chars = [...chars, '.'];
    }
    return chars.join('');
  });

const rawPath = fc.oneof(
  { weight: 5, arbitrary: fc.array(token, { maxLength: 14 }).map((ts) => '/' + ts.join('')) },
  {
    weight: 5,
    arbitrary: fc
      .tuple(fc.array(disguisedSegment, { maxLength: 4 }), fc.boolean())
      .map(([segs, trailing]) => '/' + segs.join('/') + (trailing ? '/' : '')),
  },
  { weight: 1, arbitrary: fc.array(token, { maxLength: 8 }).map((ts) => ts.join('')) },
);

// ---- route tables ---------------------------------------------------------------------------

interface TestRoute extends RouteLike {
  readonly id: string;
}
const routeArb = fc.record({
  segs: fc.array(fc.constantFrom(...SEGMENTS), { maxLength: 2 }),
  trailing: fc.boolean(),
  access: fc.constantFrom<Access>('public', 'authenticated', 'deny'),
  methods: fc.constantFrom<readonly string[] | null>(null, null, ['GET'], ['POST'], ['GET', 'POST']),
  roles: fc.subarray(['r1', 'r2']),
});
const siteArb = fc.array(routeArb, { minLength: 1, maxLength: 8 }).map((rs) => ({
  hosts: ['site.test'],
  routes: rs.map((x, i): TestRoute => ({
    id: `r${i}`,
    path: '/' + x.segs.join('/') + (x.trailing && x.segs.length > 0 ? '/' : ''),
    access: x.access,
    methods: x.methods,
    roles: x.roles,
  })),
}));

// ---- upstream models ------------------------------------------------------------------------

type Model = { name: string; segments: (path: string) => string[]; eq: (seg: string, routeSeg: string) => boolean };

const splitPath = (p: string): string[] => p.split('/').slice(1).filter((s, i, all) => s !== '' || i < all.length - 1);
const decodeLatin1 = (s: string): string => s.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
const decodeUtf8 = (s: string): string => {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '%') {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(s.charCodeAt(i));
  }
  return Buffer.from(bytes).toString('utf8');
};
const stripParams = (s: string): string => s.split(';')[0]!;
const same = (a: string, b: string) => a === b;
const asciiCi = (a: string, b: string) => a.replace(/[A-Z]/g, (c) => c.toLowerCase()) === b;

/** RFC 3986 §5.2.4 on segments an upstream has transformed: what `..;` or `．．` become there. */
const resolveDots = (segs: string[]): string[] => {
  const out: string[] = [];
  for (const seg of segs) {
    if (seg === '.') continue;
    if (seg === '..') out.pop();
    else out.push(seg);
  }
  return out;
};
/** Windows and IIS: trailing dots and spaces dropped from each segment. */
const stripTrailing = (s: string): string => s.replace(/[. ]+$/, '');

const MODELS: Model[] = [
  { name: 'plain', segments: splitPath, eq: same },
  // Jetty and Tomcat drop `;` parameters, then resolve dot-segments: `/public/..;/admin` is `/admin`.
  { name: 'tomcat-dots', segments: (p) => resolveDots(splitPath(p).map((s) => decodeLatin1(stripParams(s)))), eq: same },
  // An upstream that applies NFKC to the decoded path, then splits and resolves it again.
  {
    name: 'nfkc-dots',
    segments: (p) => resolveDots(splitPath(p).flatMap((s) => stripParams(decodeUtf8(s)).normalize('NFKC').split('/'))),
    eq: (a, b) => a.toLowerCase() === b,
  },
  { name: 'iis', segments: (p) => resolveDots(splitPath(p).map((s) => stripTrailing(decodeLatin1(s)))), eq: asciiCi },
  // IIS with a best-fit mapping of Unicode look-alikes to ASCII.
  {
    name: 'iis-unicode',
    segments: (p) => resolveDots(splitPath(p).map((s) => stripTrailing(stripParams(decodeUtf8(s).normalize('NFKC'))))),
    eq: (a, b) => a.toLowerCase() === b,
  },
  { name: 'decoded', segments: (p) => splitPath(p).map(decodeLatin1), eq: same },
  { name: 'case-insensitive', segments: splitPath, eq: asciiCi },
  { name: 'tomcat', segments: (p) => splitPath(p).map((s) => decodeLatin1(stripParams(s))), eq: same },
  { name: 'decode-then-strip', segments: (p) => splitPath(p).map((s) => stripParams(decodeLatin1(s))), eq: same },
  {
    name: 'combined',
    segments: (p) => splitPath(p).map((s) => stripTrailing(stripParams(decodeLatin1(s)))),
    eq: asciiCi,
  },
  {
    name: 'unicode-lower (utf-8, String#toLowerCase, tomcat)',
    segments: (p) => splitPath(p).map((s) => decodeUtf8(stripParams(s)).toLowerCase()),
    eq: same,
  },
  {
    name: 'unicode-upper (utf-8, NFKC, String#toUpperCase)',
    segments: (p) => splitPath(p).map((s) => stripParams(decodeUtf8(s)).normalize('NFKC').toUpperCase()),
    eq: (a, b) => a === b.toUpperCase(),
  },
];

/** An upstream routing the segments it sees with the configured prefixes, naively. */
function modelRoute(model: Model, routes: readonly TestRoute[], method: string, path: string): TestRoute | undefined {
  const segs = model.segments(path);
  let best: TestRoute | undefined;
  let bestLen = -1;
  let bestListed = false;
  for (const route of routes) {
    if (route.methods !== null && !route.methods.includes(method)) continue;
    const rsegs = route.path.split('/').filter((s) => s !== '');
    if (rsegs.length > segs.length) continue;
    if (!rsegs.every((rs, k) => model.eq(segs[k]!, rs))) continue;
    const listed = route.methods !== null;
    if (rsegs.length > bestLen || (rsegs.length === bestLen && listed && !bestListed)) {
      best = route;
      bestLen = rsegs.length;
      bestListed = listed;
    }
  }
  return best;
}

const PRINCIPALS = [null, { roles: [] }, { roles: ['r1'] }, { roles: ['r2'] }, { roles: ['r1', 'r2'] }, { roles: ['other'] }];
const allows = (r: TestRoute | undefined, p: (typeof PRINCIPALS)[number]) => r !== undefined && decide(r, p).allow;

// ---- properties -----------------------------------------------------------------------------

t.test('(a) canonicalization is idempotent and WHATWG-stable', async (t) => {
  const inputs = fc.oneof(rawPath, fc.string({ unit: 'binary' }).map((s) => '/' + s), fc.string({ unit: 'grapheme-ascii' }));
  fc.assert(
    fc.property(inputs, (raw) => {
      const r = canonicalizePath(raw);
      if (!r.ok) return;
      const again = canonicalizePath(r.path);
      if (!again.ok || again.path !== r.path) throw new Error(`not idempotent: ${JSON.stringify(r.path)} → ${JSON.stringify(again)}`);
      const whatwg = new URL(r.path, 'http://x').pathname;
      if (whatwg !== r.path) throw new Error(`WHATWG changed ${JSON.stringify(r.path)} into ${JSON.stringify(whatwg)}`);
      if (!/^\/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*$/.test(r.path)) throw new Error(`not pchar-only: ${r.path}`);
      if (/\/\/|\/\.\.?(?:\/|$)/.test(r.path)) throw new Error(`dot-segment or // left in ${r.path}`);
    }),
    { numRuns: 6000 },
  );
  t.pass('6000 runs');
});

t.test('(b) no upstream reading reaches a less strict route than the enforced one', async (t) => {
  let ambiguous = 0;
  fc.assert(
    fc.property(siteArb, rawPath, fc.constantFrom('GET', 'POST', 'DELETE'), (site, raw, method) => {
      const c = canonicalizePath(raw);
      if (!c.ok) return;
      const table = compileRouteTable([site]);
      const enforced = table.matchRoute(site, method, c.path);
      const plain = splitPath(c.path).every((s) => !/[%;A-Z]|\.$/.test(s));
      if (!plain) ambiguous++;
      for (const model of MODELS) {
        const reached = modelRoute(model, site.routes, method, c.path);
        if (plain && reached !== enforced) {
          throw new Error(`${model.name}: ${c.path} reaches ${reached?.id} but gateway matched ${enforced?.id}`);
        }
        for (const p of PRINCIPALS) {
          if (allows(enforced, p) && !allows(reached, p)) {
            throw new Error(
              `${model.name}: ${method} ${c.path} (raw ${JSON.stringify(raw)}) enforced ${JSON.stringify(enforced)} ` +
                `but the upstream reads it as ${JSON.stringify(reached)}; principal ${JSON.stringify(p)} gets through`,
            );
          }
        }
      }
    }),
    { numRuns: 5000 },
  );
  t.ok(ambiguous > 500, `ambiguous paths were exercised (${ambiguous})`);
});

t.test('(b) liveness: when one reading is the strictest, the gateway enforces exactly that much', async (t) => {
  // Without this, (b) would pass for a table answering 404 to every ambiguous path. Limited to
  // paths with at most one ambiguous segment: with several, the table also guards against mixed
  // readings (case-insensitive at one level, not at the next) that none of these models make, and
  // may then enforce a stricter route than any model reaches (`/Api/Public` → `/api`).
  const sameAccess = (x: TestRoute | undefined, y: TestRoute | undefined) => PRINCIPALS.every((p) => allows(x, p) === allows(y, p));
  const stricter = (x: TestRoute | undefined, y: TestRoute | undefined) => PRINCIPALS.every((p) => !allows(x, p) || allows(y, p));
  fc.assert(
    fc.property(siteArb, rawPath, fc.constantFrom('GET', 'POST'), (site, raw, method) => {
      const c = canonicalizePath(raw);
      if (!c.ok) return;
      // One ambiguity at most: one segment, read one way (an escape, a `;`, upper case or a trailing
      // dot). `adm%C4%B1n.` is two at once (a dotless ı that case-folds to `i`, and a trailing
      // dot): the table folds both, each model only one, and the table is then stricter than any.
      const ambiguities = splitPath(c.path).reduce((n, seg) => n + [/%/, /;/, /[A-Z]/, /\.$/].filter((re) => re.test(seg)).length, 0);
      if (ambiguities > 1) return;
      const enforced = compileRouteTable([site]).matchRoute(site, method, c.path);
      const readings = MODELS.map((m) => modelRoute(m, site.routes, method, c.path));
      const strictest = readings.find((r) => readings.every((o) => stricter(r, o)));
      if (strictest !== undefined && !sameAccess(enforced, strictest)) {
        throw new Error(`${method} ${c.path}: strictest reading ${JSON.stringify(strictest)}, gateway matched ${JSON.stringify(enforced)}`);
      }
    }),
    { numRuns: 4000 },
  );
  t.pass('4000 runs');
});

/** Independent of src/policy: how a raw segment reads when everything an upstream may do is done. */
function ambiguousSegment(raw: string): boolean {
  if (raw === '') return false;
  const unreserved = raw.replace(/%(2[dD]|2[eE]|5[fF]|7[eE]|3[0-9]|4[1-9a-fA-F]|5[0-9aA]|6[1-9a-fA-F]|7[0-9aA])/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
  if (unreserved === '.' || unreserved === '..') return false; // a dot-segment, resolved by the gateway
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const h = /^%[0-9a-fA-F]{2}/.test(raw.slice(i, i + 3)) ? parseInt(raw.slice(i + 1, i + 3), 16) : -1;
    if (h >= 0) {
      bytes.push(h);
      i += 2;
      continue;
    }
    const cp = raw.codePointAt(i)!;
    if (cp <= 0xff) bytes.push(cp);
    else {
      bytes.push(...Buffer.from(String.fromCodePoint(cp), 'utf8'));
      if (cp > 0xffff) i++;
    }
  }
  const read = stripTrailing(Buffer.from(bytes).toString('utf8').normalize('NFKC').split(';')[0]!);
  return read === '' || read.includes('/') || read.includes('\\');
}

t.test('(c) a path is refused exactly when it holds a refused construct', async (t) => {
  const constructs = {
    not_origin_form: (s: string) => !s.startsWith('/'),
    encoded_slash: (s: string) => /%2f/i.test(s),
    backslash: (s: string) => s.includes('\\') || /%5c/i.test(s),
    // eslint-disable-next-line no-control-regex
    control_char: (s: string) => /[\x00-\x1f\x7f]/.test(s) || /%(?:[01][0-9a-f]|7f)/i.test(s),
    bad_encoding: (s: string) => /%(?![0-9a-f]{2})/i.test(s) || /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s),
    // after decoding escapes of hex digits (`%25%36%31` is `%2561` once `%36%31` are decoded)
    double_encoding: (s: string) => /%25[0-9a-f]{2}/i.test(s.replace(/%(3[0-9]|4[1-6]|6[1-6])/gi, (_m, h: string) => String.fromCharCode(parseInt(h, 16)))),
    // A segment some upstream reads as `.`/`..`/nothing or as holding a separator (see the models
    // above), though it is not a dot-segment here.
    ambiguous_segment: (s: string) => s.split('/').some(ambiguousSegment),
  };
  fc.assert(
    fc.property(fc.oneof(rawPath, fc.string({ unit: 'binary' }).map((s) => '/' + s)), (raw) => {
      const r = canonicalizePath(raw);
      const present = Object.values(constructs).some((has) => has(raw));
      if (r.ok && present) throw new Error(`accepted ${JSON.stringify(raw)} despite a refused construct`);
      if (!r.ok && !constructs[r.reason](raw)) throw new Error(`refused ${JSON.stringify(raw)} as ${r.reason} without that construct`);
    }),
    { numRuns: 6000 },
  );
  t.pass('6000 runs');
});
