/**
 * `npm run demo`: the echo app on 127.0.0.1:3000, then the gateway with config/demo.yml
 * (HTTP 8080 → HTTPS 8443, admin 9090), all on loopback and unprivileged ports.
 */
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { createEchoServer, listen } from './echo-upstream.js';
import { main } from '../cli.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const configPath = join(root, 'config', 'demo.yml');

const echo = createEchoServer();
await listen(echo, 3000);
process.stdout.write(
  [
    '',
    'Portcullis demo',
    '  echo app (upstream):  http://127.0.0.1:3000',
    '  gateway:              https://localhost:8443   (http://localhost:8080 redirects there)',
    '  admin:                http://127.0.0.1:9090/healthz  /readyz',
    '',
    'Try:',
    `  curl --cacert ${join(root, 'certs', 'local-ca', 'root.crt')} https://localhost:8443/hello?x=1`,
    '  curl -i http://localhost:8080/hello',
    `  curl --cacert ${join(root, 'certs', 'local-ca', 'root.crt')} https://localhost:8443/internal   # 403`,
    '',
  ].join('\n') + '\n',
);
const code = await main(['start', '--config', configPath]);
echo.close();
process.exit(code);
