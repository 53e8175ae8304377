// Pure helpers of the harness: statistics, output parsing, the result table. No I/O here, so the
// smoke test can check them directly.

/** Median of the finite numbers in `values`; null when there are none. */
export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** a / b, or null when either is missing or b is 0. */
export function ratio(a, b) {
  if (a == null || b == null || b === 0) return null;
  return a / b;
}

/** Parses `10s`, `1500ms`, `2m` into milliseconds; throws on anything else. */
export function parseDurationMs(text) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(String(text).trim());
  if (!m) throw new Error(`invalid duration ${JSON.stringify(text)} (use e.g. 10s, 1500ms, 1m)`);
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  return Math.round(unit === 'ms' ? n : unit === 'm' ? n * 60_000 : n * 1000);
}

/**
 * The JSON line our wrk Lua `done()` prints (see load.mjs), e.g.
 * `BENCH_JSON {"requests":..,"duration_us":..,"p50_us":..,"p99_us":..,"errors":{..}}`.
 * Returns null when the output has no such line.
 */
export function parseWrkOutput(stdout) {
  const line = String(stdout).split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (!line) return null;
  const j = JSON.parse(line.slice('BENCH_JSON '.length));
  const seconds = j.duration_us / 1e6;
  const errors = j.errors ?? {};
  const errorCount = (errors.connect ?? 0) + (errors.read ?? 0) + (errors.write ?? 0) + (errors.timeout ?? 0);
  return {
    requests: j.requests,
    // ws-load: the messages of its warm-up too, over which the server's CPU time is read.
    ...(j.all_requests !== undefined ? { cpuRequests: j.all_requests } : {}),
    rps: seconds > 0 ? j.requests / seconds : 0,
    p50Ms: j.p50_us / 1000,
    p99Ms: j.p99_us / 1000,
    non2xx: errors.status ?? 0,
    errors: errorCount,
  };
}

/** autocannon's `--json` result → the same shape as parseWrkOutput. */
export function parseAutocannonOutput(stdout) {
  const text = String(stdout).trim();
  const start = text.indexOf('{');
  if (start < 0) return null;
  const j = JSON.parse(text.slice(start));
  const seconds = j.duration;
  const ok = j['2xx'] ?? 0;
  const total = ok + (j['1xx'] ?? 0) + (j['3xx'] ?? 0) + (j['4xx'] ?? 0) + (j['5xx'] ?? 0);
  return {
    requests: total,
    rps: seconds > 0 ? total / seconds : 0,
    p50Ms: j.latency.p50,
    p99Ms: j.latency.p99,
    non2xx: total - ok - (j['3xx'] ?? 0),
    errors: (j.errors ?? 0) + (j.timeouts ?? 0),
  };
}

/** Reads `VmRSS:  12345 kB` from the text of /proc/PID/status; bytes, or null. */
export function parseVmRss(statusText) {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(String(statusText));
  return m ? Number(m[1]) * 1024 : null;
}

/**
 * utime + stime (clock ticks) from the text of /proc/PID/stat, or null. The command name (field 2)
 * is in parentheses and may itself contain spaces or parentheses: fields are counted after the LAST ')'.
 */
export function parseStatCpuTicks(statText) {
  const text = String(statText);
  const end = text.lastIndexOf(')');
  if (end < 0) return null;
  // After ')': field 3 (state) is index 0, so utime (field 14) is index 11 and stime index 12.
  const f = text.slice(end + 1).trim().split(/\s+/);
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  return Number.isFinite(utime) && Number.isFinite(stime) ? utime + stime : null;
}

/** CPU microseconds the server spent per request: ticks at `hz` over `requests`; null if unknown. */
export function cpuUsPerRequest(ticks, hz, requests) {
  if (ticks == null || !hz || !requests) return null;
  return (ticks * 1e6) / hz / requests;
}

/**
 * Folds the raw samples of every round into medians per system and scenario.
 * `samples`: [{ system, scenario, round, rps, p50Ms, p99Ms, rssBytes, cpuUsPerReq, non2xx, errors }]
 */
export function summarize(samples) {
  const groups = new Map();
  for (const s of samples) {
    const key = `${s.system}\u0000${s.scenario}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(s);
  }
  const rows = [];
  for (const list of groups.values()) {
    const first = list[0];
    rows.push({
      system: first.system,
      scenario: first.scenario,
      rounds: list.length,
      rps: median(list.map((s) => s.rps)),
      p50Ms: median(list.map((s) => s.p50Ms)),
      p99Ms: median(list.map((s) => s.p99Ms)),
      rssBytes: median(list.map((s) => s.rssBytes)),
      cpuUsPerReq: median(list.map((s) => s.cpuUsPerReq)),
      non2xx: list.reduce((a, s) => a + (s.non2xx ?? 0), 0),
      errors: list.reduce((a, s) => a + (s.errors ?? 0), 0),
    });
  }
  return rows;
}

function row(rows, system, scenario) {
  return rows.find((r) => r.system === system && r.scenario === scenario);
}

/** The ratios of issue 7 (null where a system did not run). */
export function ratios(rows) {
  const get = (system, scenario, field) => row(rows, system, scenario)?.[field] ?? null;
  const full64 = get('full', 'c64', 'rps');
  const added = (system) => {
    const a = get(system, 'c1', 'p50Ms');
    const d = get('direct', 'c1', 'p50Ms');
    return a == null || d == null ? null : a - d;
  };
  return {
    fullOverProxyOnly: ratio(full64, get('proxy-only', 'c64', 'rps')),
    // The same comparison by CPU time per request (proxy-only / full: > 1 means full costs more).
    // Throughput on a shared VM swings ±15 % between identical runs; CPU per request much less.
    fullOverProxyOnlyByCpu: ratio(get('proxy-only', 'c64', 'cpuUsPerReq'), get('full', 'c64', 'cpuUsPerReq')),
    fullOverNginx: ratio(full64, get('nginx', 'c64', 'rps')),
    fullOverCaddy: ratio(full64, get('caddy', 'c64', 'rps')),
    proxyOnlyOverDirect: ratio(get('proxy-only', 'c64', 'rps'), get('direct', 'c64', 'rps')),
    // `--floor`: the gateway's own work, over the bare stack it runs on (Fastify + undici).
    proxyOnlyOverFloor: ratio(get('proxy-only', 'c64', 'rps'), get('floor', 'c64', 'rps')),
    floorOverNginx: ratio(get('floor', 'c64', 'rps'), get('nginx', 'c64', 'rps')),
    fullP99OverNginxP99: ratio(get('full', 'c64', 'p99Ms'), get('nginx', 'c64', 'p99Ms')),
    handshakesFullOverNginx: ratio(get('full', 'handshake', 'rps'), get('nginx', 'handshake', 'rps')),
    // The `ws` scenario (messages echoed per second through each proxy's WebSocket relay).
    wsFullOverProxyOnly: ratio(get('full', 'ws', 'rps'), get('proxy-only', 'ws', 'rps')),
    wsFullOverNginx: ratio(get('full', 'ws', 'rps'), get('nginx', 'ws', 'rps')),
    wsFullOverCaddy: ratio(get('full', 'ws', 'rps'), get('caddy', 'ws', 'rps')),
    // `--workers N` adds a system `full-wN`: how much N processes gain over one.
    workers: [...new Set(rows.map((x) => x.system).filter((name) => /^full-w\d+$/.test(name)))].map((name) => ({
      system: name,
      overFull: ratio(get(name, 'c64', 'rps'), full64),
      overNginx: ratio(get(name, 'c64', 'rps'), get('nginx', 'c64', 'rps')),
      overCaddy: ratio(get(name, 'c64', 'rps'), get('caddy', 'c64', 'rps')),
    })),
    addedLatencyMs: {
      'proxy-only': added('proxy-only'),
      full: added('full'),
      nginx: added('nginx'),
      caddy: added('caddy'),
    },
  };
}

/** The targets of issue 7 that this run can judge: [{ target, value, met }] (met null = not measured). */
export function targets(rows, rs) {
  const rss = row(rows, 'full', 'c64')?.rssBytes ?? null;
  const judge = (target, value, ok) => ({ target, value, met: value == null ? null : ok(value) });
  return [
    judge('full / proxy-only >= 0.9 (64 conns)', rs.fullOverProxyOnly, (v) => v >= 0.9),
    judge('full / Caddy >= 1.0 (64 conns)', rs.fullOverCaddy, (v) => v >= 1.0),
    judge('full / nginx >= 0.5 (64 conns)', rs.fullOverNginx, (v) => v >= 0.5),
    judge('full p99 <= 2 x nginx p99 (64 conns)', rs.fullP99OverNginxP99, (v) => v <= 2),
    judge('full added latency per hop <= 0.3 ms (1 conn, p50 - direct p50)', rs.addedLatencyMs.full, (v) => v <= 0.3),
    judge('full RSS under load <= 150 MB', rss == null ? null : rss / 2 ** 20, (v) => v <= 150),
  ];
}

const fmt = (v, digits = 0) => (v == null ? '-' : v.toFixed(digits));
const mb = (b) => (b == null ? '-' : (b / 2 ** 20).toFixed(1));

function pad(cells, widths) {
  return cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ');
}

/** The one human-readable table (plus ratios and targets). */
export function formatTable(rows, rs, meta = {}) {
  const scenarioName = { c64: 'keep-alive, 64 conns', c1: 'keep-alive, 1 conn', handshake: 'new TLS handshake per request', ws: 'WebSocket, 64 sessions, a 125-byte message echoed at a time (req/s: messages/s)' };
  const order = ['direct', 'nginx', 'caddy', 'proxy-only', 'full'];
  const header = ['system', 'req/s', 'p50 ms', 'p99 ms', 'CPU µs/req', 'RSS MB', 'non-2xx', 'errors'];
  const lines = [];
  if (meta.title) lines.push(meta.title, '');
  for (const scenario of ['c64', 'c1', 'handshake', 'ws']) {
    const list = rows.filter((r) => r.scenario === scenario).sort((a, b) => order.indexOf(a.system) - order.indexOf(b.system));
    if (list.length === 0) continue;
    const body = list.map((r) => [r.system, fmt(r.rps), fmt(r.p50Ms, 2), fmt(r.p99Ms, 2), fmt(r.cpuUsPerReq, 1), mb(r.rssBytes), r.non2xx, r.errors]);
    const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => String(b[i]).length)));
    lines.push(`## ${scenarioName[scenario] ?? scenario} (median of ${Math.max(...list.map((r) => r.rounds))} rounds)`);
    lines.push(pad(header, widths), widths.map((w) => '-'.repeat(w)).join('  '));
    for (const b of body) lines.push(pad(b, widths));
    lines.push('');
  }
  const r = (v) => (v == null ? '-' : v.toFixed(2));
  lines.push('## ratios (req/s at 64 connections unless stated)');
  lines.push(`full / proxy-only      ${r(rs.fullOverProxyOnly)}   (by CPU per request: ${r(rs.fullOverProxyOnlyByCpu)})`);
  lines.push(`full / nginx           ${r(rs.fullOverNginx)}`);
  lines.push(`full / Caddy           ${r(rs.fullOverCaddy)}`);
  lines.push(`proxy-only / direct    ${r(rs.proxyOnlyOverDirect)}`);
  if (rs.proxyOnlyOverFloor != null || rs.floorOverNginx != null) {
    lines.push(`proxy-only / floor     ${r(rs.proxyOnlyOverFloor)}`);
    lines.push(`floor / nginx          ${r(rs.floorOverNginx)}`);
  }
  lines.push(`full p99 / nginx p99   ${r(rs.fullP99OverNginxP99)}`);
  lines.push(`handshakes full/nginx  ${r(rs.handshakesFullOverNginx)}`);
  if (rs.wsFullOverProxyOnly != null || rs.wsFullOverNginx != null || rs.wsFullOverCaddy != null) {
    lines.push(`WebSocket messages     full / proxy-only ${r(rs.wsFullOverProxyOnly)}, full / nginx ${r(rs.wsFullOverNginx)}, full / Caddy ${r(rs.wsFullOverCaddy)}`);
  }
  for (const w of rs.workers ?? []) {
    lines.push(`${`${w.system} / full`.padEnd(22)} ${r(w.overFull)}   (/ nginx ${r(w.overNginx)}, / Caddy ${r(w.overCaddy)})`);
  }
  const added = Object.entries(rs.addedLatencyMs)
    .filter(([, v]) => v != null)
    .map(([k, v]) => `${k} ${v.toFixed(3)}`)
    .join(', ');
  lines.push(`added latency per hop, ms (1 conn p50 - direct p50): ${added || '-'}`);
  if (meta.targets) {
    lines.push('', '## issue 7 targets');
    for (const t of meta.targets) {
      const verdict = t.met == null ? 'not measured' : t.met ? 'MET' : 'MISSED';
      lines.push(`${verdict.padEnd(12)} ${t.target}  (${t.value == null ? '-' : t.value.toFixed(3)})`);
    }
  }
  return lines.join('\n');
}
