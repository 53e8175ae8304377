/**
 * `@fastify/rate-limit` (v11) wired to the gateway: our {@link Store} as its store, and limits
 * looked up per request from the gateway's own route table.
 *
 * How the plugin works (node_modules/@fastify/rate-limit/index.js), and what it means here:
 * - With `global: true` it adds its handler from an `onRoute` hook as a ROUTE-level hook
 *   (`hook`, default `onRequest`). Register the plugin BEFORE declaring the gateway's wildcard
 *   route, or the route gets no limiter.
 * - Fastify runs route-level hooks after all instance-level hooks of the same name (fastify
 *   lib/route.js builds `context[hook] = instanceHooks.concat(routeOptions[hook])` at preReady).
 *   So the limiter runs after EVERY instance `onRequest` hook — the route resolver and, if it is
 *   an onRequest hook, authentication — whatever their registration order. For `key: user` with
 *   authentication in a later stage, pass `hook: 'preHandler'`.
 * - Per request it calls `keyGenerator(req)`, then `allowList(req, key)` (true = no limit), then
 *   `max(req, key)` and `timeWindow(req, key)`, then `store.incr(key, cb, timeWindow, max)`.
 *   Registered with `global: true`, all four read the route's rules through `getRules(request)`;
 *   a route without a `rate_limit` block (`null`) is allow-listed. The gateway registers it with
 *   `global: false` and builds one limiter per route's rules (`routeLimiterOptions`: numbers, no
 *   allow list), so per request only `keyGenerator` reads the rules.
 * - `enableDraftSpec: true` → `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`
 *   (seconds) on every limited response (draft-ietf-httpapi-ratelimit-headers), and `Retry-After`
 *   (seconds, RFC 9110 §10.2.3) on the 429.
 * - Over the limit it calls `onExceeded(req, key)` and THROWS what `errorResponseBuilder` returns;
 *   by default a `GW_ERR_RATE_LIMITED` GatewayError with `statusCode: 429`, so the gateway's error
 *   handler writes the safe body. Headers set before the throw are kept on the 429.
 * - A store failure rejects the hook (the error handler answers 500) unless `skipOnError`
 *   (fail open) is chosen.
 */

import type { FastifyRequest } from 'fastify';
import type { errorResponseBuilderContext, FastifyRateLimitStore, FastifyRateLimitStoreCtor, RateLimitPluginOptions } from '@fastify/rate-limit';
import { GatewayError } from '../errors.js';
import type { CounterState, Store } from '../state/store.js';
import { rateLimitKey } from './client-key.js';
import type { RateLimitRules } from './types.js';

/** A route's rate-limit rules plus the gateway route id (part of the key: limits are per route). */
export interface RouteRateLimit extends RateLimitRules {
  readonly routeId: string;
}

export interface GatewayRateLimitDeps {
  readonly store: Store;
  /**
   * The rate-limit rules of the gateway route this request was resolved to (by an earlier
   * onRequest hook), or null when the route has none (no limit). Called up to four times per
   * request with `global: true`: keep it a cheap lookup.
   */
  readonly getRules: (request: FastifyRequest) => RouteRateLimit | null;
  /** The trusted client IP. Default `request.ip` (right when Fastify's `trustProxy` mirrors `trusted_proxies`). */
  readonly clientIp?: (request: FastifyRequest) => string;
  /** The authenticated subject, for `key: user`. Default: none (user keys fall back to the ip). */
  readonly subject?: (request: FastifyRequest) => string | null | undefined;
  /** The issuer of that subject (user keys are per issuer). Default: none. */
  readonly issuer?: (request: FastifyRequest) => string | null | undefined;
  /** Called once per refused request, with the full store key (route id + client key). */
  readonly onExceeded?: (request: FastifyRequest, key: string) => void;
  /** Builds the error thrown for a 429. Default: a `GW_ERR_RATE_LIMITED` GatewayError, status 429. */
  readonly errorResponseBuilder?: (request: FastifyRequest, context: errorResponseBuilderContext) => Error;
  /** Lifecycle hook the limiter runs in. Default `onRequest`. */
  readonly hook?: 'onRequest' | 'preParsing' | 'preValidation' | 'preHandler';
  /** Let requests through when the store fails (fail open). Default false: the store error becomes a 500. */
  readonly skipOnError?: boolean;
}

/** Store key for one client on one route. The route id is URI-encoded so it cannot contain `:`. */
export function routeRateLimitKey(routeId: string, clientKey: string): string {
  return `rl:${encodeURIComponent(routeId)}:${clientKey}`;
}

/**
 * A store class for `@fastify/rate-limit`'s `store` option backed by our {@link Store}. The plugin
 * instantiates it itself (`new Store(globalParams)`). `child()` returns the same instance: keys
 * already carry the gateway route id, so per-route stores are not needed.
 */
export function rateLimitStoreFor(store: Store): FastifyRateLimitStoreCtor {
  class GatewayRateLimitStore implements FastifyRateLimitStore {
    incr(key: string, callback: (error: Error | null, result?: { current: number; ttl: number }) => void, timeWindow: number): void {
      if (store.incrNow !== undefined) {
        // The plugin awaits a promise around this call either way; answering in the same turn
        // saves the store's own promise and its continuation on every limited request.
        let r: CounterState;
        try {
          r = store.incrNow(key, timeWindow);
        } catch (err) {
          callback(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        callback(null, { current: r.count, ttl: r.ttlMs });
        return;
      }
      store.incr(key, timeWindow).then(
        (r) => callback(null, { current: r.count, ttl: r.ttlMs }),
        (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
      );
    }

    /** Non-mutating read, used by the plugin's `createRateLimit(...)(req, { increment: false })`. */
    read(key: string, callback: (error: Error | null, result?: { current: number; ttl: number }) => void): void {
      store.get(key).then(
        (v) => callback(null, v === null ? { current: 0, ttl: 0 } : { current: Number(v.value), ttl: v.ttlMs }),
        (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
      );
    }

    child(): FastifyRateLimitStore {
      return this;
    }
  }
  return GatewayRateLimitStore;
}

function defaultErrorResponse(): Error {
  return new GatewayError('GW_ERR_RATE_LIMITED', undefined, { statusCode: 429 });
}

/**
 * Options for `fastify.rateLimit(options)`: a limiter for one route's rules. `max` and
 * `timeWindow` are numbers (the plugin awaits them when they are functions: two promise turns per
 * request) and no allow list (the route has rules, so it is limited).
 */
export function routeLimiterOptions(rules: RouteRateLimit): { max: number; timeWindow: number; allowList: undefined } {
  return { max: rules.max, timeWindow: rules.windowMs, allowList: undefined };
}

/**
 * Options for registering `@fastify/rate-limit` once, globally, for the gateway:
 *
 * ```ts
 * await app.register(fastifyRateLimit, gatewayRateLimitOptions({ store, getRules }));
 * app.all('/*', proxyHandler); // after the registration: the plugin hooks routes via onRoute
 * ```
 */
export function gatewayRateLimitOptions(deps: GatewayRateLimitDeps): RateLimitPluginOptions {
  const clientIp = deps.clientIp ?? ((request: FastifyRequest) => request.ip);
  const subject = deps.subject ?? (() => undefined);
  const issuer = deps.issuer ?? (() => undefined);
  // With `global: true` the plugin asks for the rules four times per request. `getRules` is a property read on the
  // request's resolved route, cheaper than remembering its answer per request (a WeakMap entry per
  // request showed up in profiles: ~0.5 % of the request's CPU, plus the GC of its ephemerons).
  const rulesOf = deps.getRules;
  const mustRules = (request: FastifyRequest): RouteRateLimit => {
    const rules = rulesOf(request);
    // allowList() has already let rule-less requests through; reaching here without rules is a bug.
    if (rules === null) throw new GatewayError('GW_ERR_INTERNAL', 'rate limit evaluated for a route without rate_limit');
    return rules;
  };

  return {
    global: true,
    hook: deps.hook ?? 'onRequest',
    store: rateLimitStoreFor(deps.store),
    enableDraftSpec: true,
    skipOnError: deps.skipOnError ?? false,
    keyGenerator(request) {
      const rules = rulesOf(request);
      if (rules === null) return '';
      const client = rateLimitKey(rules.key, { ip: clientIp(request), subject: subject(request), issuer: issuer(request), headers: request.headers });
      return routeRateLimitKey(rules.routeId, client);
    },
    allowList: (request) => rulesOf(request) === null,
    max: (request) => mustRules(request).max,
    timeWindow: (request) => mustRules(request).windowMs,
    onExceeded: (request, key) => deps.onExceeded?.(request, key),
    errorResponseBuilder: deps.errorResponseBuilder ?? defaultErrorResponse,
  };
}
