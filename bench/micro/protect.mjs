// rateLimitKey and buildUpstreamHeaders: per-request work of the protections and the proxy.
import { dist, newBench, runSuite } from './common.mjs';

const { rateLimitKey } = await dist('protect/client-key.js');
const { buildUpstreamHeaders } = await dist('proxy/headers.js');

const clientHeaders = {
  host: 'app.example.com',
  'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) bench',
  accept: 'application/json',
  'accept-encoding': 'gzip, br',
  authorization: 'Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig',
  cookie: 'session=abc; theme=dark',
  'x-forwarded-for': '203.0.113.9',
  'x-auth-user': 'spoofed',
  te: 'trailers',
};
const input = {
  peer: '::ffff:198.51.100.7',
  trustedPeer: false,
  requestId: '0f4c1c1e-8d9b-4c1e-9a57-0b4c8d9b4c1e',
  host: 'app.example.com',
  publicPort: 443,
  gatewayOwned: new Set(['x-auth-user', 'x-auth-email', 'x-auth-roles', 'x-auth-issuer', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'forwarded', 'x-real-ip', 'x-request-id']),
  identityHeaders: ['x-auth-user', 'x-auth-email', 'x-auth-roles', 'x-auth-issuer'],
  // A Principal as the verified-token cache hands it out: the same object for every request.
  identity: { subject: 'alice', email: 'alice@example.com', roles: ['admin', 'user'], issuer: 'https://idp.example.com' },
  forwardToken: false,
  websocket: false,
  received: clientHeaders,
};
const built = buildUpstreamHeaders(input);
if (built['x-auth-user'] !== 'alice' || built['x-auth-issuer'] !== 'https://idp.example.com' || built['x-forwarded-for'] !== '198.51.100.7' || 'authorization' in built || 'te' in built) throw new Error('buildUpstreamHeaders did not sanitize as expected');

export const bench = newBench('protections and headers');
bench
  .add('rateLimitKey ip (IPv4)', () => rateLimitKey('ip', { ip: '198.51.100.7', headers: clientHeaders }))
  .add('rateLimitKey ip (IPv6 /64)', () => rateLimitKey('ip', { ip: '2001:db8:1:2:3:4:5:6', headers: clientHeaders }))
  .add('rateLimitKey user', () => rateLimitKey('user', { ip: '198.51.100.7', subject: 'alice', headers: clientHeaders }))
  .add('rateLimitKey header', () => rateLimitKey({ header: 'X-Api-Key' }, { ip: '198.51.100.7', headers: { 'x-api-key': 'k-123' } }))
  .add('buildUpstreamHeaders', () => buildUpstreamHeaders(input));

if (import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href) await runSuite(bench, import.meta.url);
