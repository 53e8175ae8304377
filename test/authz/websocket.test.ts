// WebSocket upgrades go through the same token validation and route policy as plain requests:
// a refused upgrade never reaches the upstream, an allowed one carries the identity headers.
import t from 'tap';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { WebSocketServer, WebSocket } from 'ws';
import { startGateway } from '../helpers/gateway.js';
import { ADMIN_CLAIMS, USER_CLAIMS, bearer, idpToken, policyYaml, sign, goodClaims, privateKey, startIdp } from './_support.js';

const idp = await startIdp();
t.teardown(() => idp.close());
const adminToken = await idpToken(idp, { claims: ADMIN_CLAIMS });
const userToken = await idpToken(idp, { claims: USER_CLAIMS });

interface WsUpstream {
  origin: string;
  /** Every upgrade request the upstream accepted. */
  upgrades: Array<{ url: string; headers: IncomingHttpHeaders }>;
  /** Every HTTP request (upgrade or not) that reached the upstream's HTTP server. */
  requests: number;
}

async function startWsUpstream(t: Tap): Promise<WsUpstream> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const out: WsUpstream = { origin: '', upgrades: [], requests: 0 };
  // Count at the socket level: an upgrade refused by the gateway must not even be attempted here.
  const raw = (wss as unknown as { _server: import('node:http').Server })._server;
  raw.on('upgrade', () => out.requests++);
  raw.on('request', (_req: IncomingMessage, res: import('node:http').ServerResponse) => {
    out.requests++;
    res.writeHead(426).end();
  });
  wss.on('connection', (ws, req) => {
    out.upgrades.push({ url: req.url ?? '', headers: req.headers });
    ws.on('message', (m) => ws.send(`echo:${m.toString()}`));
  });
  t.teardown(() => new Promise<void>((r) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => r());
  }));
  out.origin = `http://127.0.0.1:${(wss.address() as { port: number }).port}`;
  return out;
}
type Tap = { teardown(fn: () => unknown): void };

/** Opens a WebSocket through the gateway: 'open' or the HTTP status the gateway refused it with. */
function connect(t: Tap, port: number, ca: string, path: string, headers: Record<string, string>): Promise<{ ws: WebSocket | null; status: number; wwwAuthenticate?: string }> {
  return new Promise((resolve, reject) => {
    // `servername` is a tls.connect option ws passes through; its typings do not list it.
    const options = { ca, servername: 'app.test', headers: { host: 'app.test', ...headers } };
    const ws = new WebSocket(`wss://127.0.0.1:${port}${path}`, options);
    t.teardown(() => ws.terminate());
    ws.once('open', () => resolve({ ws, status: 101 }));
    ws.once('unexpected-response', (_req, res) => {
      resolve({ ws: null, status: res.statusCode ?? 0, wwwAuthenticate: res.headers['www-authenticate'] });
      res.resume();
      ws.terminate();
    });
    ws.once('error', (err) => reject(err));
  });
}

t.test('refused upgrades never reach the upstream', async (t) => {
  const up = await startWsUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const forged = await sign(privateKey(idp, 'ES256'), goodClaims(idp, { exp: Math.floor(Date.now() / 1000) - 120 }));

  const cases: Array<{ name: string; path: string; headers: Record<string, string>; status: number }> = [
    { name: 'no token, authenticated route', path: '/chat', headers: {}, status: 401 },
    { name: 'no token, admin route', path: '/admin/ws', headers: {}, status: 401 },
    { name: 'expired token', path: '/chat', headers: bearer(forged), status: 401 },
    { name: 'token in the query string', path: `/chat?access_token=${adminToken}`, headers: {}, status: 401 },
    { name: 'user on the admin route', path: '/admin/ws', headers: bearer(userToken), status: 403 },
    { name: 'user on a spelling of the admin route', path: '//ADMIN;x/../admin/ws', headers: bearer(userToken), status: 403 },
    { name: 'user on %61dmin', path: '/%61dmin/ws', headers: bearer(userToken), status: 403 },
  ];
  for (const c of cases) {
    const res = await connect(t, gw.port, gw.ca, c.path, c.headers);
    t.equal(res.status, c.status, `${c.name}: ${c.status}`);
    if (c.status === 401) t.match(res.wwwAuthenticate, /^Bearer realm="portcullis"/, `${c.name}: WWW-Authenticate`);
  }
  t.equal(up.requests, 0, 'the upstream saw no upgrade attempt and no request');
  t.equal(up.upgrades.length, 0);
});

t.test('an allowed upgrade carries the gateway identity, not the client one', async (t) => {
  const up = await startWsUpstream(t);
  const gw = await startGateway(t, policyYaml(idp.issuer, up.origin));
  const res = await connect(t, gw.port, gw.ca, '/Admin/./ws?room=1', { ...bearer(adminToken), 'x-auth-user': 'mallory', 'X-Auth-Roles': 'root' });
  t.equal(res.status, 101);
  const ws = res.ws!;
  ws.send('hi');
  t.equal(await new Promise<string>((r) => ws.once('message', (m) => r(m.toString()))), 'echo:hi');
  t.equal(up.upgrades.length, 1);
  const seen = up.upgrades[0]!;
  t.equal(seen.url, '/Admin/ws?room=1', 'canonical path');
  t.equal(seen.headers['x-auth-user'], 'svc');
  t.equal(seen.headers['x-auth-roles'], 'admin,ops');
  t.equal(seen.headers['x-auth-email'], 'svc@app.test');

  const user = await connect(t, gw.port, gw.ca, '/chat', bearer(userToken));
  t.equal(user.status, 101, 'a user may open a socket on an authenticated route');
  // The gateway answers 101 to the client and then dials the upstream: wait for a round trip.
  user.ws!.send('x');
  await new Promise((r) => user.ws!.once('message', r));
  t.equal(up.upgrades[1]?.headers['x-auth-roles'], 'user');
});
