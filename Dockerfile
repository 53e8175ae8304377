# syntax=docker/dockerfile:1
# Portcullis gateway image. Build: docker build -t portcullis .   Run: see docker-compose.yml.

# --- build: compile TypeScript, then drop dev dependencies ------------------------------------
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# --- runtime: only what `node dist/cli.js` needs ----------------------------------------------
FROM node:24-bookworm-slim
# MALLOC_ARENA_MAX=2: glibc gives each thread that allocates (V8's GC helpers, libuv's thread pool)
# an arena of its own; two in all hold ~7 MB less under load, at the same throughput
# (BENCHMARKS.md, session 9). The benchmark harness runs the gateway with this ENV line too.
ENV NODE_ENV=production MALLOC_ARENA_MAX=2
WORKDIR /app
# Code and config stay root-owned: the non-root gateway process can read but not modify them.
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY config/gateway.schema.json ./config/gateway.schema.json
COPY docker/gateway.yml /etc/portcullis/gateway.yml
# Created before VOLUME so a fresh named volume inherits the node user's ownership (keys and
# certificates are written here; nothing else is writable).
RUN mkdir -p /var/lib/portcullis/certs && chown node:node /var/lib/portcullis/certs && chmod 700 /var/lib/portcullis/certs
USER node
# 8080: HTTP -> HTTPS redirect and ACME HTTP-01; 8443: HTTPS; 9090: admin (/healthz /readyz
# /metrics) - publish 9090 only on an internal network, never on the host.
EXPOSE 8080 8443 9090
VOLUME /var/lib/portcullis/certs
# No curl in slim images: node's built-in fetch. A hung admin listener counts as unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9090/healthz',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# The gateway drains in-flight requests on SIGTERM and exits 0. Exec form (no shell, no npm) so
# the signal reaches node directly. Memory flags (BENCHMARKS.md, "Session 3"), inherited by workers:
# --max-semi-space-size=8: V8's young generation otherwise grows to 32 MB (Node 20) / 64+ MB (Node 24)
#   per process under load; capped at 4, RSS under load drops by ~60-90 MB, for up to ~10-20 %
#   throughput. 8 (session 8): 4-5 % more req/s than 4 for 3-6 MB more RSS (Node 24: 144-146 MB);
#   16 measured 163 MB.
# --max-old-space-size=384: V8 sizes its old-generation growth by this limit; with the default
#   (GBs) promoted request garbage piles up to ~100 MB before a full GC (Node 24: 230-245 MB RSS under
#   load, 145-150 MB with the flag, for ~2-3 % more CPU in GC). The gateway's live heap is ~45 MB plus
#   ~6 KB per open connection, so 384 MB is also a hard ceiling: raise it for >50 000 connections.
# CPU-bound rather than memory-bound deployments can drop both.
STOPSIGNAL SIGTERM
CMD ["node", "--max-semi-space-size=8", "--max-old-space-size=384", "dist/cli.js", "start", "--config", "/etc/portcullis/gateway.yml"]
