/**
 * `npm run demo`: the echo app on 127.0.0.1:3000, a local OpenID provider on 127.0.0.1:3001,
 * then the gateway with config/demo.yml (HTTP 8080 → HTTPS 8443, admin 9090) — all on loopback
 * and unprivileged ports. Ctrl-C stops everything.
 */
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { createEchoServer, listen } from './echo-upstream.js';
import { startDemoIdp, DEMO_CLIENTS } from './idp.js';
import { main } from '../cli.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const configPath = join(root, 'config', 'demo.yml');
const ca = join(root, 'certs', 'local-ca', 'root.crt');

const echo = createEchoServer();
await listen(echo, 3000);
const idp = await startDemoIdp(3001);
const [admin, user] = Object.entries(DEMO_CLIENTS);
process.stdout.write(
  `
Portcullis demo
  echo app (upstream):   http://127.0.0.1:3000
  identity provider:     ${idp.issuer}   (demo callers: ${admin![0]}, ${user![0]})
  gateway:               https://localhost:8443   (http://localhost:8080 redirects there)
  admin:                 http://127.0.0.1:9090/healthz  /readyz  /metrics

Try (the development CA's root is created at ${ca} on first start):
  curl --cacert ${ca} https://localhost:8443/hello               # public: see what the app receives
  curl --cacert ${ca} -i https://localhost:8443/api/orders       # 401: a token is needed
  TOKEN=$(curl -s -u ${user![0]}:${user![1].secret} -d grant_type=client_credentials ${idp.issuer}/token | node -pe 'JSON.parse(require("fs").readFileSync(0)).access_token')
  curl --cacert ${ca} -H "Authorization: Bearer $TOKEN" https://localhost:8443/api/orders   # 200, X-Auth-* headers
  curl --cacert ${ca} -i -H "Authorization: Bearer $TOKEN" https://localhost:8443/admin     # 403: needs role admin
  (use ${admin![0]}:${admin![1].secret} for a token with role admin)
  node dist/cli.js explain -c config/demo.yml --url https://localhost/admin/x --roles user
  curl -i http://localhost:8080/hello                             # 301 to https
  curl -s http://127.0.0.1:9090/metrics | grep portcullis_http_requests_total

`,
);
const code = await main(['start', '--config', configPath]);
echo.close();
await idp.close();
process.exit(code);
