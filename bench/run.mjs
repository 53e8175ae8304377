#!/usr/bin/env node
// Portcullis benchmark harness (issue 7). Plain ESM JavaScript so that it runs without a TS loader;
// it benchmarks the BUILT gateway (dist/), so run `npm run build` first (`npm run bench` does).
//
//   node bench/run.mjs [--quick] [--json] [--duration 10s] [--rounds 3] [--only a,b]
//                      [--tool wrk|autocannon] [--workers N] [--floor] [--ablate] [--node-flags "..."] [--gateway-env "K=V ..."]
//                      [--idle [--idle-connections 10000]]
//                      [--out FILE] [--cpu-prof DIR]
//
// --cpu-prof DIR: the gateway processes run with `node --cpu-prof`; their profiles land in DIR
// when the run ends (summarize one with `node bench/profile-summary.mjs FILE`).
//
// Systems: direct (the upstream itself, plain HTTP: the ceiling), nginx, caddy (skipped when not
// installed), proxy-only and full (the gateway); with --floor, floor (Fastify + undici and nothing
// else: what the gateway's own work adds to its stack). Scenarios: keep-alive with 64 connections, with
// 1 connection, and a new TLS handshake per request; and, when asked for (`--scenarios …,ws`), 64
// WebSocket sessions echoing one message at a time. Systems run interleaved, round after round;
// the table shows medians.
import { parseArgs } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus, totalmem, release, availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import http from 'node:http';
import { generateKeyPair, exportJWK, SignJWT } from 'jose';
import { clockTicksPerSecond, pinningPlan, sampleRss, treeCpuTicks, treeRss } from './lib/proc.mjs';
import { systems, workerSystems, floorSystem, ablationSystems, baselineSystems, imageNodeFlags, imageEnv, parseEnvList, makeCertificate, startUpstream, ISSUER, AUDIENCE } from './lib/systems.mjs';
import { pickLoadGenerator, runLoad } from './lib/load.mjs';
import { cpuUsPerRequest, summarize, ratios, targets, formatTable, parseDurationMs } from './lib/stats.mjs';
import { idleBenchmark } from './lib/idle.mjs';

const USAGE = `usage: node bench/run.mjs [--quick] [--json] [--duration 10s] [--rounds 3] [--only direct,nginx,caddy,proxy-only,full]
                         [--scenarios c64,c1,handshake,ws] [--tool wrk|autocannon] [--workers N] [--floor] [--ablate] [--node-flags "..."]
                         [--gateway-env "K=V ..."] [--out FILE]
       node bench/run.mjs --idle [--idle-connections 10000] [--json]
       node bench/run.mjs --paired A,B [--ablate] [--baseline DIR [--baseline-node-flags="..."] [--baseline-gateway-env="K=V ..."]]
                          [--rounds 9] [--duration 2s] [--scenarios c64]`;

const SCENARIOS = {
  c64: { connections: 64, close: false },
  c1: { connections: 1, close: false },
  // A fresh TCP connection and TLS handshake for every request.
  handshake: { connections: 16, close: true },
  // Not run unless asked for (`--scenarios c64,ws`): 64 WebSocket sessions, one message of 125
  // bytes echoed by the upstream at a time in each; req/s are messages/s.
  ws: { connections: 64, close: false, websocket: true },
};

function log(...args) {
  process.stderr.write(`[bench] ${args.join(' ')}\n`);
}

function options() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean' },
      json: { type: 'boolean' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      rounds: { type: 'string' },
      only: { type: 'string' },
      scenarios: { type: 'string' },
      tool: { type: 'string' },
      workers: { type: 'string' },
      ablate: { type: 'boolean' },
      floor: { type: 'boolean' },
      'node-flags': { type: 'string' },
      'gateway-env': { type: 'string' },
      out: { type: 'string' },
      'cpu-prof': { type: 'string' },
      idle: { type: 'boolean' },
      paired: { type: 'string' },
      baseline: { type: 'string' },
      'baseline-node-flags': { type: 'string' },
      'baseline-gateway-env': { type: 'string' },
      'idle-connections': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const quick = values.quick ?? false;
  const o = {
    quick,
    json: values.json ?? false,
    durationMs: parseDurationMs(values.duration ?? (quick ? '1s' : '10s')),
    warmupMs: parseDurationMs(values.warmup ?? (quick ? '1s' : '3s')),
    rounds: Number(values.rounds ?? 3),
    only: values.only ? values.only.split(',').map((s) => s.trim()).filter(Boolean) : null,
    scenarios: (values.scenarios ?? 'c64,c1,handshake').split(',').map((s) => s.trim()),
    tool: values.tool ?? null,
    workers: values.workers ? Number(values.workers) : 0,
    ablate: values.ablate ?? false,
    floor: values.floor ?? false,
    nodeFlags: values['node-flags'] === undefined ? imageNodeFlags() : values['node-flags'].split(' ').filter(Boolean),
    gatewayEnv: values['gateway-env'] === undefined ? imageEnv() : parseEnvList(values['gateway-env']),
    out: values.out ?? null,
    cpuProfDir: values['cpu-prof'] ? resolve(values['cpu-prof']) : null,
    idle: values.idle ?? false,
    baseline: values.baseline ?? null,
    baselineNodeFlags: values['baseline-node-flags'] === undefined ? null : values['baseline-node-flags'].split(' ').filter(Boolean),
    baselineGatewayEnv: values['baseline-gateway-env'] === undefined ? null : parseEnvList(values['baseline-gateway-env']),
    paired: values.paired ? values.paired.split(',').map((x) => x.trim()).filter(Boolean) : null,
    idleConnections: Number(values['idle-connections'] ?? 10_000),
  };
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new Error('--rounds must be a positive integer');
  if (o.paired && o.paired.length !== 2) throw new Error('--paired takes two system names: --paired A,B');
  if (o.paired) o.only = o.paired;
  for (const s of o.scenarios) if (!SCENARIOS[s]) throw new Error(`unknown scenario ${s} (known: ${Object.keys(SCENARIOS).join(', ')})`);
  return o;
}

function machine() {
  const cpu = cpus()[0]?.model ?? 'unknown';
  return {
    cpu,
    cores: availableParallelism(),
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    kernel: release(),
  };
}

/** A tiny JWKS endpoint and an ES256 token it verifies (roles: [admin]). */
async function startJwks() {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'bench-1', alg: 'ES256', use: 'sig' };
  const body = JSON.stringify({ keys: [jwk] });
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=3600' });
    res.end(body);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const token = await new SignJWT({ roles: ['admin'], email: 'bench@example.com' })
    .setProtectedHeader({ alg: 'ES256', kid: 'bench-1', typ: 'JWT' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setSubject('bench-user')
    .setIssuedAt()
    .setExpirationTime('6h')
    .sign(privateKey);
  return {
    uri: `http://127.0.0.1:${server.address().port}/jwks`,
    token,
    stop: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/**
 * `--paired A,B`: both systems under load AT THE SAME TIME, on the same (pinned) server core, one
 * wrk each. The scheduler splits the core between them, so B's req/s over A's is A's CPU cost per
 * request over B's, and whatever slows this shared VM down (it swings ±15 % between identical
 * sequential runs) slows both alike. For A/B comparisons of the gateway against itself; the
 * per-round ratios and their median are reported.
 */
async function pairedRuns(running, load, o) {
  const [a, b] = running;
  const rounds = [];
  for (let round = 1; round <= o.rounds; round++) {
    const scenario = o.scenarios[0];
    // The load generator started first gets a head start; alternate which one it is, so that the
    // head start favours each system in every other round instead of A always.
    const [ra, rb] = round % 2 === 1
      ? await Promise.all([load(a, scenario, o.durationMs), load(b, scenario, o.durationMs)])
      : (await Promise.all([load(b, scenario, o.durationMs), load(a, scenario, o.durationMs)])).reverse();
    const r = { round, scenario, [a.name]: ra, [b.name]: rb, ratio: rb.rps / ra.rps };
    rounds.push(r);
    log(`round ${round} ${scenario}: ${a.name} ${ra.rps.toFixed(0)} req/s, ${b.name} ${rb.rps.toFixed(0)} req/s, ratio ${r.ratio.toFixed(3)}`);
  }
  const ratios = rounds.map((r) => r.ratio);
  const sorted = [...ratios].sort((x, y) => x - y);
  const med = sorted.length % 2 ? sorted[sorted.length >> 1] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
  const errors = rounds.reduce((n, r) => n + r[a.name].errors + r[a.name].non2xx + r[b.name].errors + r[b.name].non2xx, 0);
  const text = [
    `paired: ${a.name} and ${b.name} under load together on one core (${o.scenarios[0]}, ${o.rounds} rounds of ${o.durationMs / 1000} s)`,
    `${b.name} / ${a.name} req/s per round: ${ratios.map((x) => x.toFixed(3)).join(' ')}`,
    `median ${med.toFixed(3)}  (min ${sorted[0].toFixed(3)}, max ${sorted[sorted.length - 1].toFixed(3)}); non-2xx + errors: ${errors}`,
  ].join('\n');
  return { paired: [a.name, b.name], rounds, medianRatio: med, text };
}

async function main() {
  const o = options();
  const plan = pinningPlan();
  const tool = pickLoadGenerator(o.tool);
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-bench-'));
  const cleanups = [];
  const cleanup = async () => {
    while (cleanups.length) {
      try {
        await cleanups.pop()();
      } catch (err) {
        log(`cleanup: ${err.message}`);
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  process.once('SIGTERM', () => void cleanup().then(() => process.exit(143)));
  try {
    const cert = await makeCertificate(dir);
    // The shared upstream runs on the load generator's core: the server under test gets its
    // core to itself, and every proxied system pays the same upstream cost.
    const upstream = await startUpstream(plan, plan ? 'client' : null);
    cleanups.push(() => upstream.stop());
    const jwks = await startJwks();
    cleanups.push(() => jwks.stop());
    const ctx = { plan, dir, cert, upstream, jwks, cpuProfDir: o.cpuProfDir, nodeFlags: o.nodeFlags, gatewayEnv: o.gatewayEnv };

    if (o.idle) {
      const result = await idleBenchmark(ctx, o, log);
      result.machine = machine();
      if (o.out) writeFileSync(o.out, `${JSON.stringify(result, null, 2)}\n`);
      process.stdout.write(o.json ? `${JSON.stringify(result, null, 2)}\n` : `${result.text}\n`);
      return 0;
    }

    if (!tool) throw new Error('no load generator: install wrk (Debian: wrk) or run `npm install` in bench/ for autocannon');
    const all = [...systems(), ...(o.workers > 0 ? workerSystems(o.workers) : []), ...(o.floor || o.only?.includes('floor') ? [floorSystem()] : []), ...(o.ablate ? ablationSystems() : []), ...(o.baseline ? baselineSystems(o.baseline, o.baselineNodeFlags, o.baselineGatewayEnv) : [])];
    if (o.only) {
      const unknown = o.only.filter((n) => !all.some((s) => s.name === n));
      if (unknown.length) throw new Error(`unknown system(s) in --only: ${unknown.join(', ')} (known: ${all.map((s) => s.name).join(', ')})`);
    }
    const wanted = all.filter((s) => !o.only || o.only.includes(s.name));
    const skipped = [];
    const running = [];
    for (const s of wanted) {
      const why = s.available();
      if (why) {
        skipped.push({ system: s.name, reason: why });
        log(`skip ${s.name}: ${why}`);
        continue;
      }
      try {
        const inst = await s.start(ctx);
        cleanups.push(() => inst.stop());
        await inst.check();
        running.push({ name: s.name, ...inst });
        log(`started ${s.name} at ${inst.url} (pid ${inst.pid})`);
      } catch (err) {
        skipped.push({ system: s.name, reason: err.message });
        log(`FAILED ${s.name}: ${err.message}`);
      }
    }
    if (running.length === 0) throw new Error('no system could be started');

    const clientCores = plan ? plan.clientCores : 1;
    const load = (inst, scenario, durationMs) =>
      runLoad({ tool, plan, dir, url: inst.url, headers: inst.headers, ...SCENARIOS[scenario], durationMs, clientCores });

    if (o.paired) {
      // Warmed up together, as they will be measured: neither starts the first round hotter.
      log(`warm-up ${running.map((inst) => inst.name).join(' and ')}, together`);
      await Promise.all(running.map((inst) => load(inst, 'c64', o.warmupMs)));
    } else {
      for (const inst of running) {
        log(`warm-up ${inst.name}`);
        await load(inst, 'c64', o.warmupMs);
      }
    }

    if (o.paired) {
      if (running.length !== 2) throw new Error(`--paired needs both systems running (skipped: ${skipped.map((x) => x.system).join(', ')})`);
      // In the order given: the ratio is the second over the first.
      running.sort((x, y) => o.paired.indexOf(x.name) - o.paired.indexOf(y.name));
      const result = await pairedRuns(running, load, o);
      result.machine = machine();
      result.skipped = skipped;
      if (o.out) writeFileSync(o.out, `${JSON.stringify(result, null, 2)}\n`);
      process.stdout.write(o.json ? `${JSON.stringify(result, null, 2)}\n` : `${result.text}\n`);
      return 0;
    }

    const hz = clockTicksPerSecond();
    const samples = [];
    for (let round = 1; round <= o.rounds; round++) {
      // Rotate the start so that no system always runs first (or right after the same one).
      const order = running.map((_, i) => running[(i + round - 1) % running.length]);
      for (const scenario of o.scenarios) {
        for (const inst of order) {
          const sampler = sampleRss(inst.pid);
          const ticksBefore = treeCpuTicks(inst.pid);
          const r = await load(inst, scenario, o.durationMs);
          const ticksAfter = treeCpuTicks(inst.pid);
          const rssBytes = sampler.stop();
          // The server's own CPU time per request (the direct upstream is measured on its copy).
          const cpuUsPerReq = cpuUsPerRequest(ticksBefore == null || ticksAfter == null ? null : ticksAfter - ticksBefore, hz, r.cpuRequests ?? r.requests);
          samples.push({ system: inst.name, scenario, round, ...r, rssBytes, cpuUsPerReq });
          log(`round ${round} ${scenario} ${inst.name}: ${r.rps.toFixed(0)} req/s p50 ${r.p50Ms.toFixed(2)} ms p99 ${r.p99Ms.toFixed(2)} ms CPU ${cpuUsPerReq == null ? '-' : cpuUsPerReq.toFixed(1)} µs/req RSS ${rssBytes == null ? '-' : (rssBytes / 2 ** 20).toFixed(1)} MB non-2xx ${r.non2xx} errors ${r.errors}`);
        }
      }
    }
    const idleRss = Object.fromEntries(running.map((i) => [i.name, treeRss(i.pid)]));
    const rows = summarize(samples);
    const rs = ratios(rows);
    const tg = targets(rows, rs);
    const m = machine();
    const result = {
      machine: m,
      settings: {
        tool,
        pinning: plan ? { server: plan.server, client: plan.client } : null,
        durationMs: o.durationMs,
        warmupMs: o.warmupMs,
        rounds: o.rounds,
        scenarios: Object.fromEntries(o.scenarios.map((s) => [s, SCENARIOS[s]])),
        upstreamBodyBytes: upstream.bodyBytes,
        gatewayNodeFlags: o.nodeFlags,
        gatewayEnv: o.gatewayEnv,
      },
      skipped,
      rows,
      ratios: rs,
      targets: tg,
      rssAfterLoadBytes: idleRss,
      samples,
    };
    const title = `Portcullis benchmark — ${m.cpu}, ${m.cores} cores, Node ${m.node}, ${tool}${plan ? `, server on CPU ${plan.server}, load on CPU ${plan.client}` : ', no CPU pinning'}${o.nodeFlags.length ? `, gateway run as node ${o.nodeFlags.join(' ')} (the image's CMD)` : ''}${Object.keys(o.gatewayEnv).length ? ` with ${Object.entries(o.gatewayEnv).map(([k, v]) => `${k}=${v}`).join(' ')}` : ''}`;
    result.text = `${formatTable(rows, rs, { title, targets: tg })}${skipped.length ? `\n\nskipped:\n${skipped.map((s) => `- ${s.system}: ${s.reason}`).join('\n')}` : ''}`;
    if (o.out) writeFileSync(o.out, `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(o.json ? `${JSON.stringify(result, null, 2)}\n` : `${result.text}\n`);
    return 0;
  } finally {
    await cleanup();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench: ${err.stack ?? err}\n`);
    process.exit(1);
  },
);
