// The README's reference tables are generated from the schema, the metrics registry and the event
// table: this fails when someone changes one of them without regenerating the README.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { README_FILE, updateReadme } from '../../src/config/write-docs.js';

t.test('README reference tables are up to date', async (t) => {
  const text = readFileSync(README_FILE, 'utf8');
  t.equal(updateReadme(text), text, 'run: node --import=tsx src/config/write-docs.ts');
});

t.test('every configuration key of the schema is in the README', async (t) => {
  const text = readFileSync(README_FILE, 'utf8');
  for (const key of ['listen.public_https_port', 'tls.acme.eab.hmac_key', 'auth.issuers[].introspection.client_secret', 'sites[].routes[].rate_limit.key', 'admin.metrics_token', 'log.security_file']) {
    t.ok(text.includes(`\`${key}\``), key);
  }
});
