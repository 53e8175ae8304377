/**
 * The precompiled route table: host → site, (method, canonical path) → route.
 *
 * Matching compares path segments through a *matching view* at least as broad as any upstream's
 * reading of the forwarded path: fully percent-decoded, case-folded, cut at the first `;`
 * (Tomcat/Jetty path parameters) and without trailing dots and spaces (Windows, IIS). `canonicalizePath` has already refused `%2F`, `%5C` and control
 * characters, so decoding cannot create a segment boundary.
 *
 * A broad view alone is not enough: when a segment only matches through the view (`/admin/PUBLIC`
 * against a `/admin/public` route), a stricter upstream (case-sensitive, no `;` parameters) stops
 * one level higher and serves a resource of the parent route. The table then returns whichever of
 * the possible routes is strictest, or nothing (404) when none of them is. Strictest by access
 * (`isAtLeastAsStrict`) unless the caller gives its own order: the gateway's also weighs every
 * protection a route sets (policy/protection.ts).
 */
import type { RouteConfig, SiteConfig } from '../config/types.js';
import { GatewayError } from '../errors.js';
import { isAtLeastAsStrict } from './decision.js';
import { canonicalizePath, segmentBytes } from './path.js';

/** What the table reads from a route; anything else the route carries is returned untouched. */
export type RouteLike = Pick<RouteConfig, 'path' | 'methods' | 'access' | 'roles'>;

/** What the table reads from a site (a `SiteConfig` fits as is). */
export interface SiteLike<R extends RouteLike = RouteLike> extends Pick<SiteConfig, 'hosts'> {
  readonly routes: readonly R[];
}

export type RouteOf<S extends SiteLike> = S['routes'][number];

export interface RouteTable<S extends SiteLike> {
  /** `host` as returned by `normalizeHost`. Exact names first, then `*.parent` (one label only). */
  matchSite(host: string): S | undefined;
  /**
   * `canonicalPath` as returned by `canonicalizePath`; `method` as sent (case-sensitive, RFC 9110
   * §9.1). `undefined`: no route (answer 404). `readings`, when given, receives the other routes an
   * upstream may read an ambiguous path as (nothing for a plain path): what is counted per route
   * (rate limits) is counted under each of them too.
   */
  matchRoute(site: S, method: string, canonicalPath: string, readings?: RouteOf<S>[]): RouteOf<S> | undefined;
}

interface Node<R> {
  children: Map<string, Node<R>> | null;
  /** First route at this prefix listing the method. */
  byMethod: Map<string, R> | null;
  /** First route at this prefix with `methods: null`. */
  anyMethod: R | undefined;
}

function newNode<R>(): Node<R> {
  return { children: null, byMethod: null, anyMethod: undefined };
}

function pick<R>(node: Node<R>, method: string): R | undefined {
  // A route listing the method beats a route for any method at the same prefix length; a route
  // whose list excludes the method is invisible.
  return node.byMethod?.get(method) ?? node.anyMethod;
}

const UTF8 = new TextDecoder('utf-8');
// Only used on ASCII bytes (no byte >= 0x80), where latin1 and ASCII agree.
const LATIN1 = new TextDecoder('latin1');

/** A canonical segment every upstream reads the same way: no escape, no upper case, no `;`, no trailing dot. */
function isPlainSegment(seg: string): boolean {
  for (let i = 0; i < seg.length; i++) {
    const c = seg.charCodeAt(i);
    if (c === 0x25 || c === 0x3b || (c >= 0x41 && c <= 0x5a)) return false;
  }
  return seg.charCodeAt(seg.length - 1) !== 0x2e;
}

/**
 * The matching view of one canonical segment (exported for tests of the view itself).
 *
 * Escaped non-ASCII bytes are read as UTF-8, NFKC-normalized and case-folded through upper then
 * lower case, because Unicode-aware upstreams equate `ſ` with `s`, `K` (U+212A) with `k` and
 * full-width letters with ASCII ones. A segment whose view would be a dot-segment or hold a `/`
 * never gets here: `canonicalizePath` refuses it (`ambiguous_segment`).
 */
export function matchingView(seg: string): string {
  if (isPlainSegment(seg)) return seg;
  let s = seg;
  if (s.includes('%')) {
    const decoded = segmentBytes(s);
    s = decoded.some((b) => b >= 0x80) ? UTF8.decode(decoded).normalize('NFKC').toUpperCase().toLowerCase() : LATIN1.decode(decoded);
  }
  const semi = s.indexOf(';');
  if (semi >= 0) s = s.slice(0, semi);
  // Windows and IIS drop trailing dots and spaces: `admin.` and `admin%20` are `admin` there.
  // (A segment that would be left empty never gets here: canonicalizePath refuses it.)
  let end = s.length;
  while (end > 1 && (s.charCodeAt(end - 1) === 0x2e || s.charCodeAt(end - 1) === 0x20)) end--;
  if (end < s.length) s = s.slice(0, end);
  return s.toLowerCase();
}

/**
 * The node a route path lands on, as a string: its segments through the matching view. Two
 * routes with the same key (and methods) are the same route to the table (`/Admin` and `/admin`,
 * `/admin/` and `/admin`): the configuration refuses the second, which could never decide.
 * `null` when the path is not canonical.
 */
export function routeKey(routePath: string): string | null {
  const canon = canonicalizePath(routePath);
  if (!canon.ok) return null;
  return canon.path
    .split('/')
    .filter((seg) => seg !== '')
    .map(matchingView)
    .join('/');
}

function configError(message: string): GatewayError {
  return new GatewayError('GW_ERR_CONFIG_INVALID', message);
}

function compileSite<R extends RouteLike>(site: SiteLike<R>, siteIndex: number): Node<R> {
  const root = newNode<R>();
  site.routes.forEach((route, i) => {
    const canon = canonicalizePath(route.path);
    if (!canon.ok) {
      throw configError(`sites[${siteIndex}].routes[${i}].path ${JSON.stringify(route.path)}: ${canon.reason}`);
    }
    let node = root;
    for (const seg of canon.path.split('/')) {
      if (seg === '') continue; // leading and trailing slash: `/admin/` is the same prefix as `/admin`
      const key = matchingView(seg);
      node.children ??= new Map();
      let child = node.children.get(key);
      if (child === undefined) {
        child = newNode<R>();
        node.children.set(key, child);
      }
      node = child;
    }
    if (route.methods === null) {
      node.anyMethod ??= route; // config order breaks ties
    } else {
      node.byMethod ??= new Map();
      for (const m of route.methods) if (!node.byMethod.has(m)) node.byMethod.set(m, route);
    }
  });
  return root;
}

/** "`a` lets through no request `b` refuses"; `undefined` is no route (404). */
export type StrictnessOrder<R> = (a: R | undefined, b: R | undefined) => boolean;

/**
 * Of the routes a request may be read under, the one at least as strict as all others, else
 * `undefined` (404, which is stricter than any route).
 */
function strictest<R>(deepest: R | undefined, shallower: readonly (R | undefined)[], atLeast: StrictnessOrder<R>): R | undefined {
  if (shallower.every((r) => atLeast(deepest, r))) return deepest;
  for (const candidate of shallower) {
    if (atLeast(candidate, deepest) && shallower.every((r) => atLeast(candidate, r))) {
      return candidate;
    }
  }
  return undefined;
}

/**
 * Compile the sites into lookup structures once (at startup or reload).
 *
 * Throws `GW_ERR_CONFIG_INVALID` for a host claimed by two sites, a malformed wildcard, or a route
 * path that is not a valid path.
 */
export function compileRouteTable<S extends SiteLike>(sites: readonly S[], atLeast: StrictnessOrder<RouteOf<S>> = isAtLeastAsStrict): RouteTable<S> {
  const exact = new Map<string, S>();
  const wildcard = new Map<string, S>(); // keyed by the parent: `*.example.com` → `example.com`
  const tries = new Map<S, Node<RouteOf<S>>>();

  sites.forEach((site, si) => {
    for (const rawHost of site.hosts) {
      const host = rawHost.toLowerCase();
      const isWildcard = host.startsWith('*.');
      const name = isWildcard ? host.slice(2) : host;
      if (name.length === 0 || name.includes('*') || name.startsWith('.') || name.endsWith('.')) {
        throw configError(`sites[${si}].hosts: invalid host ${JSON.stringify(rawHost)}`);
      }
      const map = isWildcard ? wildcard : exact;
      if (map.has(name)) throw configError(`sites[${si}].hosts: ${JSON.stringify(rawHost)} is used by two sites`);
      map.set(name, site);
    }
    tries.set(site, compileSite(site as SiteLike<RouteOf<S>>, si));
  });

  return {
    matchSite(host: string): S | undefined {
      const hit = exact.get(host);
      if (hit !== undefined) return hit;
      const dot = host.indexOf('.');
      return dot > 0 ? wildcard.get(host.slice(dot + 1)) : undefined;
    },

    matchRoute(site: S, method: string, canonicalPath: string, readings?: RouteOf<S>[]): RouteOf<S> | undefined {
      const root = tries.get(site);
      if (root === undefined) throw new TypeError('matchRoute: site does not belong to this route table');
      let node = root;
      let best = pick(root, method);
      // Routes a stricter upstream may read the request under; allocated only for ambiguous paths.
      let shallower: (RouteOf<S> | undefined)[] | undefined;
      const n = canonicalPath.length;
      let i = 1;
      while (i < n && node.children !== null) {
        let j = canonicalPath.indexOf('/', i);
        if (j < 0) j = n;
        if (j === i) break; // the trailing empty segment
        const seg = canonicalPath.slice(i, j);
        const plain = isPlainSegment(seg);
        const child = node.children.get(plain ? seg : matchingView(seg));
        if (child === undefined) break;
        if (!plain) (shallower ??= []).push(best);
        node = child;
        best = pick(child, method) ?? best;
        i = j + 1;
      }
      if (shallower === undefined) return best;
      const chosen = strictest(best, shallower, atLeast);
      if (readings !== undefined && chosen !== undefined) {
        for (const r of [best, ...shallower]) if (r !== undefined && r !== chosen && !readings.includes(r)) readings.push(r);
      }
      return chosen;
    },
  };
}
