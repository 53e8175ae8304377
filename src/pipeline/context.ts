/**
 * What the gateway knows about a request once it has been resolved. Set by the `resolve` hook
 * (the first hook of the pipeline) on `request.gw` and read by every later stage, so the route is
 * matched exactly once and the same canonical path is used for policy and for the upstream.
 */
import type { RouteConfig, SiteConfig } from '../config/types.js';
import type { Principal } from '../auth/index.js';
import type { RuntimeState } from '../runtime.js';
import type { RouteRateLimit } from '../protect/index.js';

export interface RequestContext {
  /** The runtime state this request started with; a reload never changes it mid-request. */
  readonly state: RuntimeState;
  readonly requestId: string;
  /** The trusted client address (see proxy/forwarded). */
  readonly clientIp: string;
  /** TCP peer is one of trusted_proxies. */
  readonly trustedPeer: boolean;
  readonly startedAt: bigint;
  host: string;
  site: SiteConfig | null;
  route: RouteConfig | null;
  /**
   * The other routes an upstream may read this (ambiguous) path as, or null (a plain path): their
   * rate limits count the request too (policy/routes.ts `matchRoute`).
   */
  otherReadings: readonly RouteConfig[] | null;
  /** While another reading's rate limit counts the request: its rules (what the limiter reads). */
  limiting: RouteRateLimit | null;
  /** Canonical path (no query). */
  path: string;
  /** `?…` exactly as the client sent it, or ''. */
  query: string;
  principal: Principal | null;
  /** Origin of the upstream target that served (or was last tried for) the request. */
  upstream: string | null;
  /** Index of the first target chosen in the route's pool (-1 until chosen). */
  upstreamIndex: number;
  /**
   * The request is (being) forwarded, and the upstream's answer, if any, is the response: its
   * access line is written by the forwarding path. Set back to false when the gateway answers
   * with its own error instead.
   */
  proxied: boolean;
  /** Why the gateway refused the request, for the access log (never sent to the client). */
  reason: string | null;
  /**
   * The access line was written (and the request counted). One per request, whichever path gets
   * there first: an HTTP/2 stream the client cancels while a stage waits for I/O is reported by
   * Fastify's onResponse at once, and again by the stage that resumes afterwards.
   */
  logged: boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    gw: RequestContext;
  }
}
